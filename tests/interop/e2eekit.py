"""matrix-nio helpers for the end-to-end encryption scenarios (test_e2ee_nio.py).

Owns: `E2EEClient`, a RecordingClient with encryption enabled and its own store
directory that also keeps every HTTP exchange it made (so a scenario can inspect
e.g. the /sendToDevice bodies it sent), and `E2EEUser`, which drives one device
the way a real E2EE client does after each /sync (upload keys when nio asks,
query keys of changed users, send queued to-device messages) and accumulates what
that device saw: raw timeline events per room, decrypted messages, undecryptable
megolm events, `device_lists.changed/left` and to-device events.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nio
from nio import AsyncClient, AsyncClientConfig
from nio.api import Api

from nioclient import RecordingClient, exchange_of, expect

MEGOLM = "m.megolm.v1.aes-sha2"
ENCRYPTION_STATE = {"type": "m.room.encryption", "state_key": "",
                    "content": {"algorithm": MEGOLM}}
#: seconds a scenario waits for something to show up in /sync
DEADLINE = 20.0


class E2EEClient(RecordingClient):
    """RecordingClient with encryption enabled and a private nio store directory."""

    def __init__(self, homeserver: str, user: str, store_path: Path):
        store_path.mkdir(parents=True, exist_ok=True)
        config = AsyncClientConfig(
            encryption_enabled=True,
            store_sync_tokens=False,
            max_limit_exceeded=0,
            max_timeouts=0,
            request_timeout=30,
        )
        # Skip RecordingClient.__init__ (it disables encryption); keep its overrides.
        AsyncClient.__init__(self, homeserver, user=user, store_path=str(store_path),
                             config=config)
        self.exchanges: list = []

    async def send(self, method, path, data=None, headers=None, trace_context=None,
                   timeout=None):
        response = await super().send(method, path, data, headers, trace_context, timeout)
        exchange = getattr(response, "ieum_exchange", None)
        if exchange is not None:
            self.exchanges.append(exchange)
        return response

    def to_device_requests(self, since: int = 0) -> list:
        """Exchanges of PUT /sendToDevice made after self.exchanges[since]."""
        return [ex for ex in self.exchanges[since:]
                if ex.method == "PUT" and "/sendToDevice/" in ex.path]


@dataclass
class Decrypted:
    room_id: str
    event_id: str
    sender: str
    body: str
    session_id: str | None


@dataclass
class E2EEUser:
    """One logged-in device of one user, plus everything its /syncs showed."""

    who: str  # label for messages, e.g. "alice" / "bob#2"
    client: E2EEClient
    password: str
    raw_timeline: dict[str, list[dict]] = field(default_factory=dict)
    decrypted: list[Decrypted] = field(default_factory=list)
    undecrypted: dict[str, nio.MegolmEvent] = field(default_factory=dict)  # event_id ->
    changed: list[str] = field(default_factory=list)  # device_lists.changed, in order
    left: list[str] = field(default_factory=list)
    to_device: list[dict] = field(default_factory=list)  # raw to_device events
    syncs: int = 0
    last_sync: Any = None

    @property
    def user_id(self) -> str:
        return self.client.user_id

    @property
    def device_id(self) -> str:
        return self.client.device_id

    def __str__(self) -> str:
        return f"{self.who} ({self.user_id} device {self.device_id})"

    async def close(self) -> None:
        await self.client.close()

    # -- sync ---------------------------------------------------------------

    async def sync(self, timeout_ms: int = 0) -> nio.SyncResponse:
        resp = await self.client.sync(timeout=timeout_ms, full_state=False)
        self.last_sync = resp
        expect(resp, nio.SyncResponse, f"{self}: /sync")
        self.syncs += 1
        raw = resp.exchange.response_body
        for room_id, section in ((raw.get("rooms") or {}).get("join") or {}).items():
            events = (section.get("timeline") or {}).get("events") or []
            self.raw_timeline.setdefault(room_id, []).extend(events)
        lists = raw.get("device_lists") or {}
        self.changed.extend(lists.get("changed") or [])
        self.left.extend(lists.get("left") or [])
        self.to_device.extend((raw.get("to_device") or {}).get("events") or [])

        for room_id, room in resp.rooms.join.items():
            for event in room.timeline.events:
                self._absorb(room_id, event)
        self._retry_undecrypted()
        await self.housekeeping()
        return resp

    def _absorb(self, room_id: str, event: Any) -> None:
        if isinstance(event, nio.MegolmEvent):
            self.undecrypted[event.event_id] = event
        elif isinstance(event, nio.RoomMessageText) and event.decrypted:
            self.decrypted.append(Decrypted(room_id, event.event_id, event.sender, event.body,
                                            event.session_id))
            self.undecrypted.pop(event.event_id, None)

    def _retry_undecrypted(self) -> None:
        """A room key may arrive after the event it unlocks; try those again."""
        for event_id, event in list(self.undecrypted.items()):
            try:
                plain = self.client.decrypt_event(event)
            except nio.EncryptionError:
                continue
            self._absorb(event.room_id, plain)

    async def housekeeping(self) -> None:
        """What an E2EE client does between syncs (cf. nio's sync_forever)."""
        if self.client.should_upload_keys:
            expect(await self.client.keys_upload(), nio.KeysUploadResponse,
                   f"{self}: /keys/upload")
        if self.client.should_query_keys:
            expect(await self.client.keys_query(), nio.KeysQueryResponse,
                   f"{self}: /keys/query")
        for resp in await self.client.send_to_device_messages():
            expect(resp, nio.ToDeviceResponse, f"{self}: queued /sendToDevice")

    async def until(self, what: str, predicate: Callable[["E2EEUser"], Any],
                    deadline_s: float = DEADLINE, poll_ms: int = 1000) -> Any:
        end = time.monotonic() + deadline_s
        result = predicate(self)
        while not result:
            if time.monotonic() >= end:
                raise AssertionError(
                    f"{self}: never saw {what} within {deadline_s:.0f}s ({self.syncs} syncs). "
                    f"Decrypted so far: {[d.body for d in self.decrypted]}; undecryptable "
                    f"megolm events: {list(self.undecrypted)}; device_lists.changed: "
                    f"{self.changed}; to-device events: "
                    f"{json.dumps(self.to_device)[:1500]}\nLast sync:\n"
                    f"{exchange_of(self.last_sync)}"
                )
            await self.sync(timeout_ms=poll_ms)
            result = predicate(self)
        return result

    # -- scenario steps ----------------------------------------------------------

    def decrypted_body(self, body: str) -> Callable[["E2EEUser"], Decrypted | None]:
        def predicate(user: "E2EEUser") -> Decrypted | None:
            return next((d for d in user.decrypted if d.body == body), None)
        return predicate

    def raw_event(self, room_id: str, event_id: str) -> dict | None:
        return next((ev for ev in self.raw_timeline.get(room_id, [])
                     if ev.get("event_id") == event_id), None)

    def uploaded_one_time_keys(self) -> int:
        """How many one-time keys this device sent in all its /keys/upload requests."""
        return sum(len((ex.request_body or {}).get("one_time_keys") or {})
                   for ex in self.client.exchanges
                   if ex.method == "POST" and ex.path.startswith("/_matrix/client/v3/keys/upload"))

    async def send_encrypted(self, room_id: str, body: str) -> str:
        resp = await self.client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body},
            ignore_unverified_devices=True,
        )
        expect(resp, nio.RoomSendResponse, f"{self}: encrypted send of {body!r}")
        sent = resp.exchange.request_body or {}
        assert "/send/m.room.encrypted/" in resp.exchange.path, \
            f"{self}: nio did not encrypt {body!r}:\n{exchange_of(resp)}"
        assert sent.get("algorithm") == MEGOLM and "ciphertext" in sent, sent
        assert body not in json.dumps(sent), f"{body!r} went out in clear text: {sent}"
        return resp.event_id

    async def wait_joined(self, room_id: str, user_id: str) -> None:
        def joined(user: "E2EEUser"):
            room = user.client.rooms.get(room_id)
            return room is not None and user_id in room.users and room.encrypted
        await self.until(f"{user_id} joined to the encrypted room {room_id}", joined)


async def login_device(homeserver: str, localpart: str, password: str, who: str,
                       store_path: Path) -> E2EEUser:
    """Password login as a new device with encryption, upload its keys, initial sync."""
    client = E2EEClient(homeserver, localpart, store_path)
    expect(await client.login(password, device_name=who), nio.LoginResponse,
           f"{who}: password login as {localpart}")
    assert client.olm is not None, f"{who}: nio did not load an olm machine after login"
    user = E2EEUser(who, client, password)
    await user.housekeeping()  # uploads the device keys and one-time keys
    await user.sync()
    return user


async def raw_call(client: E2EEClient, method: str, path: list[str], body: dict | None = None,
                   query: dict | None = None) -> tuple[int, Any]:
    """One client-server API call outside nio's API (v3 path parts); (status, JSON body)."""
    url = Api._build_path(path, {**(query or {}), "access_token": client.access_token})
    data = None if body is None else json.dumps(body)
    resp = await client.send(method, url, data,
                             headers={"Content-Type": "application/json"})
    try:
        parsed = await resp.json(content_type=None)
    except ValueError:
        parsed = await resp.text()
    return resp.status, parsed


async def delete_device(owner: E2EEUser, device_id: str) -> None:
    """DELETE /devices/{id} through user-interactive auth with the owner's password."""
    path = ["devices", device_id]
    what = f"{owner}: DELETE /_matrix/client/v3/devices/{device_id}"
    status, body = await raw_call(owner.client, "DELETE", path, {})
    assert status == 401 and isinstance(body, dict) and body.get("session"), \
        f"{what} without auth: expected a 401 UIA challenge with a session, got HTTP {status} {body}"
    flows = [flow.get("stages") for flow in body.get("flows") or []]
    assert ["m.login.password"] in flows, f"{what}: no m.login.password flow in {body}"
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": owner.user_id},
        "password": owner.password,
        "session": body["session"],
    }
    status, body = await raw_call(owner.client, "DELETE", path, {"auth": auth})
    assert status == 200, f"{what} with password auth: HTTP {status} {body}"
