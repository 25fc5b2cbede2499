"""matrix-nio helpers shared by the interop scenarios.

Owns: a nio AsyncClient that attaches the raw HTTP exchange (request and response)
to every response it returns, `expect()` which turns an unexpected response into
an assertion failure quoting that exchange, and `SyncFollower`, which follows
/sync with long-polling and accumulates what one user has seen per room.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import nio
from nio import AsyncClient, AsyncClientConfig

# Large enough that no incremental sync in the scenarios should be `limited`.
SYNC_FILTER = {"room": {"timeline": {"limit": 300}}}


@dataclass
class Exchange:
    """One HTTP request/response pair, for failure reports."""

    method: str
    path: str
    request_body: Any
    status: int | None = None
    response_body: Any = None

    def describe(self, limit: int = 3000) -> str:
        def show(body: Any) -> str:
            if body is None:
                return "(none)"
            text = body if isinstance(body, str) else json.dumps(body, sort_keys=True)
            return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"

        return (
            f"    request:  {self.method} {self.path}\n"
            f"              {show(self.request_body)}\n"
            f"    response: HTTP {self.status}\n"
            f"              {show(self.response_body)}"
        )


class RecordingClient(AsyncClient):
    """An AsyncClient whose responses carry `.exchange` (the raw HTTP exchange).

    Rate-limit responses are returned instead of retried (max_limit_exceeded=0)
    and connection errors are raised instead of retried, so neither is hidden.
    """

    def __init__(self, homeserver: str, user: str = ""):
        config = AsyncClientConfig(
            encryption_enabled=False,
            store_sync_tokens=False,
            max_limit_exceeded=0,
            max_timeouts=0,
            request_timeout=30,
        )
        super().__init__(homeserver, user=user, config=config)

    async def send(self, method, path, data=None, headers=None, trace_context=None,
                   timeout=None):
        response = await super().send(method, path, data, headers, trace_context, timeout)
        try:
            request_body = json.loads(data) if isinstance(data, (str, bytes)) else data
        except ValueError:
            request_body = data
        response.ieum_exchange = Exchange(method, path, request_body)
        return response

    async def create_matrix_response(self, response_class, transport_response, data=None,
                                     save_to=None):
        exchange = getattr(transport_response, "ieum_exchange", None)
        try:
            resp = await super().create_matrix_response(
                response_class, transport_response, data, save_to
            )
        except Exception as exc:
            # nio raises (instead of returning an error) when a body breaks its schemas.
            if exchange is not None:
                await self._fill(exchange, transport_response)
            first_line = (str(exc).splitlines() or [""])[0]
            raise AssertionError(
                f"matrix-nio could not parse the response as {response_class.__name__} "
                f"({type(exc).__name__}: {first_line})\n"
                + (exchange.describe() if exchange else "")
            ) from exc
        if exchange is not None:
            await self._fill(exchange, transport_response)
            resp.exchange = exchange
        return resp

    @staticmethod
    async def _fill(exchange: Exchange, transport_response) -> None:
        exchange.status = transport_response.status
        try:
            raw = await transport_response.read()  # cached by aiohttp after parsing
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            exchange.response_body = f"(body unavailable: {exc!r})"
            return
        try:
            exchange.response_body = json.loads(raw)
        except ValueError:
            exchange.response_body = raw.decode(errors="replace")


def exchange_of(resp: Any) -> str:
    exchange = getattr(resp, "exchange", None)
    return exchange.describe() if exchange else "    (no HTTP exchange recorded)"


def expect(resp: Any, cls: type, what: str):
    """Return resp if it is a `cls`, else fail with the HTTP exchange that produced it."""
    if not isinstance(resp, cls):
        raise AssertionError(
            f"{what}: expected {cls.__name__}, got {type(resp).__name__}: {resp}\n"
            + exchange_of(resp)
        )
    return resp


def error_of(resp: Any) -> tuple[int | None, str | None]:
    """(HTTP status, errcode) of a response that should be an error."""
    exchange = getattr(resp, "exchange", None)
    status = exchange.status if exchange else None
    body = exchange.response_body if exchange else None
    errcode = body.get("errcode") if isinstance(body, dict) else None
    return status, errcode


@dataclass
class Receipt:
    event_id: str
    receipt_type: str
    user_id: str
    ts: Any
    thread_id: str | None


@dataclass
class SeenRoom:
    """Everything one user has received about one room via /sync (raw JSON events)."""

    timeline: list[dict] = field(default_factory=list)  # in order
    state: list[dict] = field(default_factory=list)  # `state` section events
    typing: list[list[str]] = field(default_factory=list)  # user_ids of each m.typing
    receipts: list[Receipt] = field(default_factory=list)
    invite_state: list[dict] | None = None  # stripped state, once invited
    left_timeline: list[dict] | None = None  # timeline of the `leave` section, once left
    limited: int = 0  # how many syncs had `limited: true` for this room
    nio_rejected: list[dict] = field(default_factory=list)  # events nio could not parse


class SyncFollower:
    """Follows /sync for one client (since = previous next_batch) and accumulates rooms.

    Observations come from the raw JSON body (nio rewrites some parsed events in
    place, e.g. it pops `content` from stripped state); nio's own parse is used to
    check that the library accepts the response and every event in it.
    """

    def __init__(self, client: AsyncClient, who: str):
        self.client = client
        self.who = who
        self.since: str | None = None
        self.rooms: dict[str, SeenRoom] = {}
        self.syncs = 0
        self.last_response: Any = None

    def room(self, room_id: str) -> SeenRoom:
        return self.rooms.setdefault(room_id, SeenRoom())

    async def sync(self, timeout_ms: int = 0) -> nio.SyncResponse:
        resp = await self.client.sync(
            timeout=timeout_ms, since=self.since, sync_filter=SYNC_FILTER
        )
        self.last_response = resp
        expect(resp, nio.SyncResponse, f"{self.who}: /sync since={self.since}")
        raw = resp.exchange.response_body
        self.syncs += 1
        self.since = resp.next_batch
        rooms = raw.get("rooms") or {}
        for room_id, section in (rooms.get("invite") or {}).items():
            self.room(room_id).invite_state = list(
                (section.get("invite_state") or {}).get("events") or []
            )
        for room_id, section in (rooms.get("join") or {}).items():
            self._absorb(self.room(room_id), section, resp.rooms.join.get(room_id))
        for room_id, section in (rooms.get("leave") or {}).items():
            seen = self.room(room_id)
            self._absorb(seen, section, resp.rooms.leave.get(room_id))
            seen.left_timeline = list((section.get("timeline") or {}).get("events") or [])
        return resp

    @staticmethod
    def _absorb(seen: SeenRoom, section: dict, parsed: Any) -> None:
        timeline = section.get("timeline") or {}
        if timeline.get("limited"):
            seen.limited += 1
        seen.state.extend((section.get("state") or {}).get("events") or [])
        seen.timeline.extend(timeline.get("events") or [])
        ephemeral = (section.get("ephemeral") or {}).get("events") or []
        for ev in ephemeral:
            content = ev.get("content") or {}
            if ev.get("type") == "m.typing":
                seen.typing.append(list(content.get("user_ids") or []))
            elif ev.get("type") == "m.receipt":
                for event_id, by_type in content.items():
                    for receipt_type, by_user in (by_type or {}).items():
                        for user_id, data in (by_user or {}).items():
                            data = data or {}
                            seen.receipts.append(Receipt(event_id, receipt_type, user_id,
                                                         data.get("ts"), data.get("thread_id")))
        # nio's view: events it turned into BadEvent, or ephemeral events it dropped.
        if parsed is None:
            seen.nio_rejected.append({"room section": "nio did not parse this room"})
            return
        for ev in parsed.timeline.events:
            if isinstance(ev, (nio.BadEvent, nio.UnknownBadEvent)):
                seen.nio_rejected.append(ev.source)
        known = [ev for ev in ephemeral if ev.get("type") in ("m.typing", "m.receipt")]
        if len(parsed.ephemeral) < len(known):
            seen.nio_rejected.extend(known)

    async def until(self, what: str, predicate: Callable[["SyncFollower"], Any],
                    deadline_s: float = 30.0, poll_ms: int = 10_000) -> Any:
        """Long-poll /sync until predicate(self) is truthy; return its value.

        Fails after deadline_s with the last sync exchange, so a server that never
        delivers is reported with what it did send.
        """
        end = time.monotonic() + deadline_s
        result = predicate(self)
        while not result:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.who}: /sync never showed {what} within {deadline_s:.0f}s "
                    f"({self.syncs} syncs). Last sync:\n{exchange_of(self.last_response)}"
                )
            await self.sync(timeout_ms=int(min(poll_ms, max(remaining, 0.1) * 1000)))
            result = predicate(self)
        return result
