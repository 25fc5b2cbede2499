"""Federation between ieum and a real Synapse, in both directions.

Owns: starting one Synapse and one ieum per module, each with a TLS federation
listener on the port in its server name (Synapse `localhost:PORT`, ieum
`127.0.0.1:PORT`, so Synapse connects to ieum by IP literal without SNI), ieum
pointed at Synapse through `federation.overrides` + `skip_verify`; and the
scenarios: joins by room id and by alias, invites, messages, typing, read
receipts and leaving, each across the two servers. Every scenario uses fresh
users and rooms and asserts on what the *other* server reports, polling with a
deadline (no sleeps as assertions).

Plain client-server HTTP (urllib) is used on both sides, so every failure can
quote the exact request and answer. ieum runs with RUST_LOG=info,ieum=debug; on
failure the log tails of both servers are attached (conftest.py), and the full
logs stay in pytest's temporary directory (paths printed in the failure).
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

import pytest

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


def _start(server: ServerProcess, request) -> None:
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(f"{server.name} failed to start:\n{exc}", pytrace=False)
    request.addfinalizer(server.stop)


@pytest.fixture(scope="module")
def federation_pair(request, tmp_path_factory) -> FederationPair:
    try:
        binary = ieum_binary()
    except IeumBinaryMissing as exc:
        pytest.fail(str(exc), pytrace=False)  # never skip: the ieum side must visibly fail

    synapse_tls = free_port()
    synapse = SynapseServer(free_port(), tmp_path_factory.mktemp("fed-synapse"),
                            federation_port=synapse_tls)
    ieum_tls = free_port()
    ieum = IeumServer(
        free_port(),
        tmp_path_factory.mktemp("fed-ieum"),
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
    _start(synapse, request)
    _start(ieum, request)
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
             timeout: float = 30.0) -> dict:
        url = f"{self.server.base_url}/_matrix/client/v3{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
        })
        what = f"{self} {method} {path}{'?' + urllib.parse.urlencode(query, doseq=True) if query else ''}" \
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


def wait_for(pair: FederationPair, what: str, probe: Callable[[], Any]) -> Any:
    """Call probe() until it returns something truthy, at most DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    last: Any = None
    while True:
        try:
            last = probe()
        except MatrixError as exc:  # e.g. 403 while a join is still propagating
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() >= deadline:
            fail(pair, f"{what}: not reported within {DEADLINE:.0f}s; last observation: {last!r}")
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


# -- fixtures per test ---------------------------------------------------------


@pytest.fixture
def s_alice(federation_pair) -> Client:
    return register_synapse(federation_pair.synapse, unique("alice"))


@pytest.fixture
def i_bob(federation_pair) -> Client:
    return register_ieum(federation_pair.ieum, unique("bob"))


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


# -- scenarios -----------------------------------------------------------------


@pytest.mark.parametrize("room_version", ["10", "11", "12"])
def test_ieum_joins_synapse_room_by_id(federation_pair, s_alice, i_bob, room_version):
    pair = federation_pair
    room_id = synapse_room_joined_from_ieum(pair, s_alice, i_bob, room_version=room_version)
    create = i_bob.state(room_id, "m.room.create")
    assert create.get("room_version", "1") == room_version, \
        f"ieum holds the room's create event with room_version {create.get('room_version')!r}"
    messages_both_ways(pair, s_alice, i_bob, room_id)


def test_synapse_joins_ieum_room_by_id(federation_pair, s_alice, i_bob):
    pair = federation_pair
    room_id = i_bob.create_room(preset="public_chat")
    joined = s_alice.join(room_id, via=[pair.ieum.server_name])
    assert joined == room_id
    wait_for(pair, f"ieum lists {s_alice.user_id} as joined",
             membership_is(i_bob, room_id, s_alice.user_id, "join"))
    # Synapse itself must consider the room state complete (creator from ieum, joined).
    members = s_alice.memberships(room_id)
    assert members.get(i_bob.user_id) == "join", f"Synapse's member list: {members}"
    messages_both_ways(pair, s_alice, i_bob, room_id)


def test_ieum_invites_synapse_user(federation_pair, s_alice, i_bob):
    pair = federation_pair
    room_id = i_bob.create_room(preset="private_chat")
    alice_sync = Syncer(s_alice)
    i_bob.invite(room_id, s_alice.user_id)

    def invited(resp):
        return ((resp.get("rooms") or {}).get("invite") or {}).get(room_id)

    section = alice_sync.wait(f"invite to {room_id}", invited, pair)
    stripped = section.get("invite_state", {}).get("events", [])
    assert any(ev.get("type") == "m.room.member" and ev.get("state_key") == s_alice.user_id
               and ev["content"].get("membership") == "invite" for ev in stripped), stripped
    s_alice.join(room_id)  # no via: Synapse joins through the inviting server
    wait_for(pair, f"ieum lists {s_alice.user_id} as joined",
             membership_is(i_bob, room_id, s_alice.user_id, "join"))
    messages_both_ways(pair, s_alice, i_bob, room_id)


def test_synapse_invites_ieum_user(federation_pair, s_alice, i_bob):
    pair = federation_pair
    room_id = s_alice.create_room(preset="private_chat")
    bob_sync = Syncer(i_bob)
    s_alice.invite(room_id, i_bob.user_id)

    def invited(resp):
        return ((resp.get("rooms") or {}).get("invite") or {}).get(room_id)

    section = bob_sync.wait(f"invite to {room_id}", invited, pair)
    stripped = section.get("invite_state", {}).get("events", [])
    assert any(ev.get("type") == "m.room.member" and ev.get("state_key") == i_bob.user_id
               and ev["content"].get("membership") == "invite" for ev in stripped), stripped
    # As a client would: join an invited room by id alone; ieum must use the inviter's server.
    i_bob.join(room_id)
    wait_for(pair, f"Synapse lists {i_bob.user_id} as joined",
             membership_is(s_alice, room_id, i_bob.user_id, "join"))
    messages_both_ways(pair, s_alice, i_bob, room_id)


def test_ieum_joins_synapse_alias(federation_pair, s_alice, i_bob):
    pair = federation_pair
    localpart = unique("fedalias")
    room_id = s_alice.create_room(preset="public_chat", room_alias_name=localpart)
    alias = f"#{localpart}:{pair.synapse.server_name}"
    assert i_bob.join(alias) == room_id  # ieum asks Synapse's /query/directory
    wait_for(pair, f"Synapse lists {i_bob.user_id} as joined",
             membership_is(s_alice, room_id, i_bob.user_id, "join"))


def test_ieum_resolves_synapse_alias(federation_pair, s_alice, i_bob):
    pair = federation_pair
    localpart = unique("fedalias")
    room_id = s_alice.create_room(preset="public_chat", room_alias_name=localpart)
    alias = f"#{localpart}:{pair.synapse.server_name}"
    resolved = i_bob.resolve_alias(alias)
    assert resolved.get("room_id") == room_id, f"ieum resolved {alias} to {resolved}"
    assert pair.synapse.server_name in resolved.get("servers", []), resolved


def test_synapse_joins_ieum_alias(federation_pair, s_alice, i_bob):
    pair = federation_pair
    localpart = unique("fedalias")
    room_id = i_bob.create_room(preset="public_chat", room_alias_name=localpart)
    alias = f"#{localpart}:{pair.ieum.server_name}"
    resolved = s_alice.resolve_alias(alias)  # Synapse asks ieum's /query/directory
    assert resolved.get("room_id") == room_id, f"Synapse resolved {alias} to {resolved}"
    assert pair.ieum.server_name in resolved.get("servers", []), resolved
    assert s_alice.join(alias) == room_id
    wait_for(pair, f"ieum lists {s_alice.user_id} as joined",
             membership_is(i_bob, room_id, s_alice.user_id, "join"))


def _typing_and_receipt(pair: FederationPair, actor: Client, observer: Client, room_id: str):
    """actor types and sends a read receipt; observer's /sync on the other server sees both."""
    observer_sync = Syncer(observer)
    text = unique("read me ")
    event_id = actor.send_text(room_id, text)
    observer_sync.wait(f"message {text!r}", lambda r: any(
        ev.get("event_id") == event_id
        for ev in ((((r.get("rooms") or {}).get("join") or {}).get(room_id) or {})
                   .get("timeline") or {}).get("events") or []), pair)

    actor.typing(room_id, True)
    observer_sync.wait(f"m.typing with {actor.user_id}", lambda r: any(
        actor.user_id in ev["content"].get("user_ids", [])
        for ev in ephemeral(r, room_id, "m.typing")), pair)
    actor.typing(room_id, False)
    observer_sync.wait(f"m.typing without {actor.user_id}", lambda r: any(
        actor.user_id not in ev["content"].get("user_ids", [])
        for ev in ephemeral(r, room_id, "m.typing")), pair)

    actor.read_receipt(room_id, event_id)

    def receipt(r):
        for ev in ephemeral(r, room_id, "m.receipt"):
            reads = (ev["content"].get(event_id) or {}).get("m.read") or {}
            if actor.user_id in reads:
                return reads[actor.user_id]
        return None

    data = observer_sync.wait(f"m.read receipt of {actor.user_id} on {event_id}", receipt, pair)
    assert isinstance(data.get("ts"), int), f"receipt without an integer ts: {data}"


def test_typing_and_receipt_synapse_to_ieum(federation_pair, s_alice, i_bob):
    pair = federation_pair
    room_id = synapse_room_joined_from_ieum(pair, s_alice, i_bob)
    _typing_and_receipt(pair, actor=s_alice, observer=i_bob, room_id=room_id)


def test_typing_and_receipt_ieum_to_synapse(federation_pair, s_alice, i_bob):
    pair = federation_pair
    room_id = synapse_room_joined_from_ieum(pair, s_alice, i_bob)
    _typing_and_receipt(pair, actor=i_bob, observer=s_alice, room_id=room_id)


def test_ieum_leaves_synapse_room(federation_pair, s_alice, i_bob):
    pair = federation_pair
    room_id = synapse_room_joined_from_ieum(pair, s_alice, i_bob)
    i_bob.leave(room_id)
    wait_for(pair, f"Synapse lists {i_bob.user_id} as left",
             membership_is(s_alice, room_id, i_bob.user_id, "leave"))
