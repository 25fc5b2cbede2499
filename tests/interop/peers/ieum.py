"""Launcher for the ieum homeserver under test.

Owns: locating the binary (env IEUM_BIN, required), running `$IEUM_BIN serve` in a
fresh working directory with configuration passed purely through IEUM_* environment
variables (no config file: ieum then serves a dev server with open m.login.dummy
registration on loopback), optionally a federation TLS listener with a self-signed
certificate plus per-peer overrides/skip_verify (for the federation suites), and
stopping it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .process import LOOPBACK, ServerProcess


class IeumBinaryMissing(RuntimeError):
    """IEUM_BIN is unset or does not point at an executable."""


def ieum_binary() -> str:
    """The ieum binary from $IEUM_BIN, or a clear error saying how to provide it."""
    path = os.environ.get("IEUM_BIN", "").strip()
    if not path:
        raise IeumBinaryMissing(
            "IEUM_BIN is not set: point it at an ieum binary, e.g. "
            "IEUM_BIN=/root/.cache/ieum-target/debug/ieum tests/interop/run "
            "(use `-k synapse` to run only the Synapse side)"
        )
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise IeumBinaryMissing(f"IEUM_BIN={path!r} is not an executable file")
    return path


def _toml_string(text: str) -> str:
    # A JSON string of printable ASCII is also a valid TOML basic string.
    return json.dumps(text)


class IeumServer(ServerProcess):
    """One ieum process with its data under <tmpdir>/data, serving clients on port.

    federation_port: if given, ieum also serves TLS (federation + client API) on
        127.0.0.1:<federation_port> with a self-signed certificate, and the server
        name defaults to `localhost:<federation_port>` so peers connect straight to it.
    server_name: overrides the server name (e.g. `127.0.0.1:<federation_port>`).
    federation_overrides: peer server name -> "host:port" to connect to.
    skip_verify: peer server names whose (self-signed) certificates are not verified.
    """

    name = "ieum"

    def __init__(self, port: int, tmpdir: str | os.PathLike, *, binary: str | None = None,
                 extra_env: dict[str, str] | None = None,
                 federation_port: int | None = None,
                 server_name: str | None = None,
                 federation_overrides: dict[str, str] | None = None,
                 skip_verify: list[str] | None = None):
        super().__init__(port, tmpdir)
        self.binary = binary or ieum_binary()
        self.extra_env = dict(extra_env or {})
        self.workdir = self.tmpdir / "cwd"
        self.data_dir = self.tmpdir / "data"
        self.federation_port = federation_port
        self._server_name = server_name or f"localhost:{federation_port or port}"
        self.federation_overrides = dict(federation_overrides or {})
        self.skip_verify = list(skip_verify or [])

    @property
    def server_name(self) -> str:
        return self._server_name

    def _federation_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.federation_port is not None:
            env["IEUM_FEDERATION__LISTEN"] = f'["{LOOPBACK}:{self.federation_port}"]'
            env["IEUM_FEDERATION__SELF_SIGNED"] = "true"
        if self.federation_overrides:
            pairs = ", ".join(f"{_toml_string(name)} = {_toml_string(target)}"
                              for name, target in self.federation_overrides.items())
            env["IEUM_FEDERATION__OVERRIDES"] = "{ " + pairs + " }"
        if self.skip_verify:
            env["IEUM_FEDERATION__SKIP_VERIFY"] = \
                "[" + ", ".join(_toml_string(name) for name in self.skip_verify) + "]"
        return env

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> tuple[list[str], Path, dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IEUM_")}
        env.update({
            "IEUM_SERVER_NAME": self.server_name,
            "IEUM_HTTP__LISTEN": f"{LOOPBACK}:{self.port}",
            "IEUM_STORAGE__PATH": str(self.data_dir),
            "IEUM_REGISTRATION__ENABLED": "true",
            "RUST_LOG": os.environ.get("IEUM_INTEROP_RUST_LOG", "info"),
            "NO_COLOR": "1",  # plain log file (tracing colours output even when not a tty)
        })
        env.update(self._federation_env())
        env.update(self.extra_env)
        return [self.binary, "serve"], self.workdir, env
