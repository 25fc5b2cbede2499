"""Shared kit of the federation suites that pair ieum with a real Synapse.

Owns: building one Synapse + one ieum pair (each with a TLS federation listener on
the port in its server name: Synapse `localhost:PORT`, ieum `127.0.0.1:PORT`, so
Synapse connects to ieum by IP literal without SNI; ieum pointed at Synapse through
`federation.overrides` + `skip_verify`), stopping and restarting either server on
the same data, config and ports, a plain client-server API client (urllib, so every
failure can quote the exact request and answer), user registration on both sides,
and polling helpers that fail with both servers' log paths.

The test modules own their module-scoped `federation_pair` fixtures (conftest.py
attaches both servers' log tails to failures of tests using a fixture of that
name) and build them with `start_federation_pair`.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import yaml

from peers.ieum import IeumBinaryMissing, IeumServer, ieum_binary
from peers.process import LOOPBACK, ServerProcess, ServerStartError, free_port
from peers.synapse import SynapseServer

#: seconds a scenario waits for the other server to report something
DEADLINE = 20.0
PASSWORD = "interop-password-1"


# -- servers -----------------------------------------------------------------


@dataclass
class FederationPair:
    synapse: SynapseServer
    ieum: IeumServer

    @property
    def servers(self) -> list[ServerProcess]:
        return [self.synapse, self.ieum]


def start_server(server: ServerProcess) -> None:
    """Start (or start again, on the same data, config and ports) or fail the test."""
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(f"{server.name} failed to start:\n{exc}", pytrace=False)


def appservice_registration(as_id: str, server_name: str, as_port: int, sender_localpart: str,
                            prefix: str, *, aliases: bool = True, ephemeral: bool = False,
                            legacy_ephemeral: bool = False) -> dict:
    """An appservice registration (fresh random tokens) whose url is a listener on
    `as_port`, with exclusive `@{prefix}.*` users (and `#{prefix}.*` aliases)."""
    domain = re.escape(server_name)
    registration = {
        "id": as_id,
        "url": f"http://{LOOPBACK}:{as_port}",
        "as_token": "as_" + secrets.token_hex(16),
        "hs_token": "hs_" + secrets.token_hex(16),
        "sender_localpart": sender_localpart,
        "rate_limited": False,
    }
    if ephemeral:
        registration["receive_ephemeral"] = True
    if legacy_ephemeral:
        # The pre-merge name that mautrix and matrix-appservice-bridge still write.
        registration["de.sorunome.msc2409.push_ephemeral"] = True
    registration["namespaces"] = {
        "users": [{"exclusive": True, "regex": f"@{prefix}.*:{domain}"}],
        "aliases": [{"exclusive": True, "regex": f"#{prefix}.*:{domain}"}] if aliases else [],
        "rooms": [],
    }
    return registration


def start_appservice_homeserver(request, kind: str, port: int, tmp, registration: dict,
                                synapse_extra: dict | None = None) -> ServerProcess:
    """Synapse or ieum on `port`, given `registration` (written to tmp/registration.yaml)
    from the start; stopped when the requesting fixture ends. The server carries
    `registration` and `registration_path`."""
    reg_path = tmp / "registration.yaml"
    reg_path.write_text(yaml.safe_dump(registration, sort_keys=False))
    if kind == "synapse":
        server = SynapseServer(port, tmp / "server", extra_config={
            "app_service_config_files": [str(reg_path)], **(synapse_extra or {})})
    else:
        try:
            binary = ieum_binary()
        except IeumBinaryMissing as exc:
            pytest.fail(str(exc), pytrace=False)  # never skip the ieum side
        server = IeumServer(port, tmp / "server", binary=binary, extra_env={
            "RUST_LOG": "info,ieum=debug",
            "IEUM_RATE_LIMITS__ENABLED": "false",
            "IEUM_APPSERVICES__REGISTRATIONS": json.dumps([str(reg_path)]),
        })
    assert server.server_name == f"localhost:{port}"
    start_server(server)
    request.addfinalizer(server.stop)
    server.registration = registration
    server.registration_path = reg_path
    return server


def start_federation_pair(request, tmp_path_factory, prefix: str = "fed", *,
                          synapse_config: dict[str, Any] | None = None) -> FederationPair:
    """Start one Synapse and one ieum that federate; both are stopped at the fixture's end.

    synapse_config: extra Synapse settings (SynapseServer's extra_config)."""
    try:
        binary = ieum_binary()
    except IeumBinaryMissing as exc:
        pytest.fail(str(exc), pytrace=False)  # never skip: the ieum side must visibly fail

    synapse_tls = free_port()
    synapse = SynapseServer(free_port(), tmp_path_factory.mktemp(f"{prefix}-synapse"),
                            federation_port=synapse_tls, extra_config=synapse_config)
    ieum_tls = free_port()
    ieum = IeumServer(
        free_port(),
        tmp_path_factory.mktemp(f"{prefix}-ieum"),
        binary=binary,
        federation_port=ieum_tls,
        server_name=f"{LOOPBACK}:{ieum_tls}",
        federation_overrides={synapse.server_name: f"{LOOPBACK}:{synapse_tls}"},
        skip_verify=[synapse.server_name],
        extra_env={
            "RUST_LOG": "info,ieum=debug",
            "IEUM_RATE_LIMITS__ENABLED": "false",
            "IEUM_FEDERATION__REQUEST_TIMEOUT_MS": "10000",
        },
    )
    for server in (synapse, ieum):
        start_server(server)
        request.addfinalizer(server.stop)  # stops whichever process runs at the end
    return FederationPair(synapse, ieum)


# -- a plain client-server API client ------------------------------------------


class MatrixError(AssertionError):
    def __init__(self, what: str, status: int, body: Any):
        self.status = status
        self.body = body
        super().__init__(f"{what}: HTTP {status} {json.dumps(body)[:2000]}")


class Client:
    """One logged-in user on one server (client API over plain HTTP)."""

    def __init__(self, server: ServerProcess, user_id: str, token: str):
        self.server = server
        self.user_id = user_id
        self.token = token
        self._txn = 0

    def __repr__(self) -> str:
        return f"<{self.server.name} {self.user_id}>"

    def call(self, method: str, path: str, body: Any = None, query: dict | None = None,
             timeout: float = 30.0, prefix: str = "/_matrix/client/v3") -> dict:
        url = f"{self.server.base_url}{prefix}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
        })
        what = f"{self} {method} {prefix}{path}{'?' + urllib.parse.urlencode(query, doseq=True) if query else ''}" \
               f" {json.dumps(body) if body is not None else ''}"
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise MatrixError(what, exc.code, parsed) from None

    # -- rooms ------------------------------------------------------------

    def create_room(self, **body) -> str:
        return self.call("POST", "/createRoom", body)["room_id"]

    def join(self, room: str, via: list[str] | None = None) -> str:
        query = {"server_name": via} if via else None
        return self.call("POST", f"/join/{q(room)}", {}, query=query, timeout=60)["room_id"]

    def invite(self, room_id: str, user_id: str) -> None:
        self.call("POST", f"/rooms/{q(room_id)}/invite", {"user_id": user_id}, timeout=60)

    def leave(self, room_id: str) -> None:
        self.call("POST", f"/rooms/{q(room_id)}/leave", {}, timeout=60)

    def send_text(self, room_id: str, text: str) -> str:
        self._txn += 1
        txn = f"fed{self._txn}-{secrets.token_hex(4)}"
        return self.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/{txn}",
                         {"msgtype": "m.text", "body": text})["event_id"]

    def state(self, room_id: str, event_type: str, state_key: str = "") -> dict:
        return self.call("GET", f"/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}")

    def memberships(self, room_id: str) -> dict[str, str]:
        """user id -> membership, from GET /rooms/{id}/members."""
        chunk = self.call("GET", f"/rooms/{q(room_id)}/members")["chunk"]
        return {ev["state_key"]: ev["content"].get("membership") for ev in chunk}

    def messages(self, room_id: str, limit: int = 100) -> list[dict]:
        return self.call("GET", f"/rooms/{q(room_id)}/messages",
                         query={"dir": "b", "limit": limit})["chunk"]

    def typing(self, room_id: str, typing: bool) -> None:
        body = {"typing": typing, "timeout": 30000} if typing else {"typing": False}
        self.call("PUT", f"/rooms/{q(room_id)}/typing/{q(self.user_id)}", body)

    def read_receipt(self, room_id: str, event_id: str) -> None:
        self.call("POST", f"/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", {})

    def set_alias(self, alias: str, room_id: str) -> None:
        self.call("PUT", f"/directory/room/{q(alias)}", {"room_id": room_id})

    def resolve_alias(self, alias: str) -> dict:
        return self.call("GET", f"/directory/room/{q(alias)}", timeout=30)


def q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def register_synapse(synapse: SynapseServer, localpart: str) -> Client:
    resp = synapse.register_user(localpart, PASSWORD)
    return Client(synapse, resp["user_id"], resp["access_token"])


def register_ieum(ieum: IeumServer, localpart: str) -> Client:
    anon = Client(ieum, "", "")
    body = {"username": localpart, "password": PASSWORD, "auth": {"type": "m.login.dummy"},
            "initial_device_display_name": "interop"}
    try:
        resp = anon.call("POST", "/register", body)
    except MatrixError as exc:
        # A server may insist on a UIA session first (401 with a session id).
        if exc.status != 401 or not isinstance(exc.body, dict) or "session" not in exc.body:
            raise
        body["auth"]["session"] = exc.body["session"]
        resp = anon.call("POST", "/register", body)
    return Client(ieum, resp["user_id"], resp["access_token"])


class Syncer:
    """Incremental /sync for one client: each poll continues from the last next_batch."""

    def __init__(self, client: Client):
        self.client = client
        self.since: str | None = None
        self.responses: list[dict] = []
        self.sync(0)  # start from "now": later polls see only what happens next

    def sync(self, timeout_ms: int = 1000) -> dict:
        query = {"timeout": timeout_ms}
        if self.since:
            query["since"] = self.since
        resp = self.client.call("GET", "/sync", query=query, timeout=timeout_ms / 1000 + 30)
        self.since = resp["next_batch"]
        self.responses.append(resp)
        return resp

    def wait(self, what: str, found: Callable[[dict], Any], pair: FederationPair) -> Any:
        """Sync until found(response) is truthy for one response; return that value."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            value = found(self.sync(1000))
            if value:
                return value
        tail = json.dumps(self.responses[-3:])[-3000:]
        fail(pair, f"{self.client}: {what} not seen in /sync within {DEADLINE:.0f}s; "
                   f"last responses (tail): {tail}")


def ephemeral(resp: dict, room_id: str, event_type: str) -> list[dict]:
    room = ((resp.get("rooms") or {}).get("join") or {}).get(room_id) or {}
    return [ev for ev in (room.get("ephemeral") or {}).get("events") or []
            if ev.get("type") == event_type]


def fail(pair: FederationPair, message: str):
    logs = ", ".join(f"{s.name}: {s.log_path}" for s in pair.servers)
    pytest.fail(f"{message}\n(full logs: {logs})", pytrace=False)


def wait_for(pair: FederationPair, what: str, probe: Callable[[], Any],
             seconds: float = DEADLINE) -> Any:
    """Call probe() until it returns something truthy, at most `seconds` seconds."""
    deadline = time.monotonic() + seconds
    last: Any = None
    while True:
        try:
            last = probe()
        except MatrixError as exc:  # e.g. 403 while a join is still propagating
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() >= deadline:
            fail(pair, f"{what}: not reported within {seconds:.0f}s; last observation: {last!r}")
        time.sleep(0.25)


def has_message(client: Client, room_id: str, text: str, sender: str) -> Callable[[], Any]:
    def probe():
        for ev in client.messages(room_id):
            if ev.get("type") == "m.room.message" and (ev.get("content") or {}).get("body") == text:
                assert ev.get("sender") == sender, f"{text!r} arrived with sender {ev.get('sender')}"
                return ev
        return None
    return probe


def membership_is(client: Client, room_id: str, user_id: str, membership: str) -> Callable[[], Any]:
    def probe():
        found = client.memberships(room_id).get(user_id)
        return found == membership or None
    return probe


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


# -- scenario building blocks ----------------------------------------------------


def messages_both_ways(pair: FederationPair, s_user: Client, i_user: Client, room_id: str) -> None:
    text = unique("from synapse ")
    s_user.send_text(room_id, text)
    wait_for(pair, f"ieum /messages shows Synapse's message {text!r}",
             has_message(i_user, room_id, text, s_user.user_id))
    text = unique("from ieum ")
    event_id = i_user.send_text(room_id, text)
    ev = wait_for(pair, f"Synapse /messages shows ieum's message {text!r}",
                  has_message(s_user, room_id, text, i_user.user_id))
    assert ev["event_id"] == event_id, "Synapse knows ieum's message under another event id"


def synapse_room_joined_from_ieum(pair: FederationPair, s_user: Client, i_user: Client,
                                  **create) -> str:
    """A public room on Synapse that i_user joined by id via Synapse; Synapse confirms."""
    room_id = s_user.create_room(preset="public_chat", **create)
    joined = i_user.join(room_id, via=[pair.synapse.server_name])
    assert joined == room_id
    wait_for(pair, f"Synapse lists {i_user.user_id} as joined",
             membership_is(s_user, room_id, i_user.user_id, "join"))
    return room_id
