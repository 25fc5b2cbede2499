"""pytest wiring for the interop suite.

Owns: starting each homeserver once per session (Synapse from the venv, ieum from
$IEUM_BIN) on free loopback ports, the `homeserver` fixture that runs every
scenario against both, the session-wide store of normalized observations that
test_zz_differential.py compares (written as JSON to $IEUM_INTEROP_OBSERVATIONS
if set), and attaching server log tails to failures.
"""

from __future__ import annotations

import json
import os

import pytest

from peers.ieum import IeumBinaryMissing, IeumServer, ieum_binary
from peers.process import ServerStartError, free_port
from peers.synapse import SynapseServer

SERVERS = ["synapse", "ieum"]


def _start(server, request):
    try:
        server.start()
    except ServerStartError as exc:
        problem = f"{server.name} failed to start:\n{exc}"
    else:
        request.addfinalizer(server.stop)
        return server
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def synapse_server(request, tmp_path_factory):
    return _start(SynapseServer(free_port(), tmp_path_factory.mktemp("synapse")), request)


@pytest.fixture(scope="session")
def ieum_server(request, tmp_path_factory):
    try:
        binary = ieum_binary()
    except IeumBinaryMissing as exc:
        problem = str(exc)
    else:
        return _start(IeumServer(free_port(), tmp_path_factory.mktemp("ieum"), binary=binary),
                      request)
    # Never skip: a missing binary must make the ieum side visibly fail.
    pytest.fail(problem, pytrace=False)


@pytest.fixture(params=SERVERS)
def homeserver(request):
    """The server under test; every scenario runs once per entry of SERVERS."""
    return request.getfixturevalue(f"{request.param}_server")


class Observations:
    """Normalized observations per scenario and server, plus informational notes.

    `record(scenario, server)` returns the dict a scenario fills in as it goes, so
    a scenario that fails half-way still leaves what it saw for the comparison.
    `notes` hold raw details that are reported but deliberately not compared.
    """

    def __init__(self):
        self.by_scenario: dict[str, dict[str, dict]] = {}
        self.notes: dict[str, dict[str, dict]] = {}

    def record(self, scenario: str, server: str) -> dict:
        self.by_scenario.setdefault(scenario, {})[server] = {}
        return self.by_scenario[scenario][server]

    def note(self, scenario: str, server: str) -> dict:
        return self.notes.setdefault(scenario, {}).setdefault(server, {})


_OBSERVATIONS = Observations()


@pytest.fixture(scope="session")
def observations() -> Observations:
    return _OBSERVATIONS


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        server = item.funcargs.get("homeserver")
        if server is not None:
            state = "still running" if server.is_running() else \
                f"exited with status {server.proc.returncode}"
            report.sections.append((f"{server.name} log tail ({state})", server.log_tail(80)))
        pair = item.funcargs.get("federation_pair")  # test_federation_*.py: both peers
        for server in getattr(pair, "servers", ()):
            state = "still running" if server.is_running() else \
                f"exited with status {server.proc.returncode}"
            report.sections.append((f"{server.name} log tail ({state})", server.log_tail(60)))


def pytest_terminal_summary(terminalreporter):
    if not _OBSERVATIONS.notes:
        return
    terminalreporter.section("interop notes (reported, not compared)")
    for scenario, servers in sorted(_OBSERVATIONS.notes.items()):
        for server, notes in servers.items():
            for key, value in sorted(notes.items()):
                terminalreporter.write_line(f"{scenario} [{server}] {key}: {value}")


def pytest_sessionfinish(session):
    path = os.environ.get("IEUM_INTEROP_OBSERVATIONS")
    if path and _OBSERVATIONS.by_scenario:
        with open(path, "w") as out:
            json.dump({"observations": _OBSERVATIONS.by_scenario, "notes": _OBSERVATIONS.notes},
                      out, indent=1, sort_keys=True)
