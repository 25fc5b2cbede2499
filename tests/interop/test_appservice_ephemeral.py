"""Scenario "appservice_ephemeral": ephemeral data and to-device messages in transactions.

Owns the scenario: a mautrix-python `AppService` registered with `receive_ephemeral`
(MSC2409, in the spec since v1.13) against Synapse (the reference, with its
`msc2409_to_device_messages_enabled` experimental flag for to-device) and ieum. A normal
user shares a room with a ghost; her typing, her read receipt and her presence reach the
appservice in `ephemeral` (with `room_id` for typing and receipts), and a to-device
message for the ghost's device reaches it once, with `to_user_id` and `to_device_id`
(MSC4203's `de.sorunome.msc2409.to_device`). Typing in a room without any of the
appservice's users does not. Both servers must agree on what arrived.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time

import pytest
from mautrix.appservice import AppService
from mautrix.types import UserID

from fedkit import Client, appservice_registration, q, start_appservice_homeserver
from peers.process import LOOPBACK, free_port
from test_appservice_mautrix import call, register_user

SCENARIO = "appservice_ephemeral"
SERVERS = ["synapse", "ieum"]
AS_ID = "mautrix-ephemeral"
BOT_LOCALPART = "edubot"
GHOST_LOCALPART = "edu_ghost"
GHOST_DEVICE = "GHOSTDEVICE"
DEADLINE = 15.0
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module", params=SERVERS)
def homeserver(request, tmp_path_factory):
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"as-edu-{kind}")
    port, as_port = free_port(), free_port()
    registration = appservice_registration(AS_ID, f"localhost:{port}", as_port, BOT_LOCALPART, "edu_",
                                           aliases=False, ephemeral=True)
    server = start_appservice_homeserver(
        request, kind, port, tmp, registration,
        synapse_extra={"experimental_features": {"msc2409_to_device_messages_enabled": True}})
    server.as_port = as_port
    return server


async def wait_until(what: str, check) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_ephemeral_and_to_device_reach_the_appservice(homeserver, observations):
    server = homeserver
    reg = server.registration
    domain = server.server_name
    obs = observations.record(SCENARIO, server.name)
    RESULTS[server.name] = obs
    ghost_id = UserID(f"@{GHOST_LOCALPART}:{domain}")

    ephemeral: list[dict] = []
    to_device: list[dict] = []
    appserv = AppService(
        server=server.base_url, domain=domain, as_token=reg["as_token"], hs_token=reg["hs_token"],
        bot_localpart=BOT_LOCALPART, id=AS_ID, log=logging.getLogger(f"mautrix.edu.{server.name}"),
        ephemeral_events=True, encryption_events=True,
    )

    @appserv.matrix_event_handler
    async def on_event(evt):
        if evt.type.is_ephemeral:
            ephemeral.append(evt.serialize())

    async def on_to_device(evt):
        to_device.append(evt.serialize())

    appserv.to_device_handler = on_to_device
    await appserv.start(host=LOOPBACK, port=server.as_port)
    try:
        # The ghost, logged in with a device (as an encrypting bridge does).
        as_client = Client(server, f"@{BOT_LOCALPART}:{domain}", reg["as_token"])
        ghost_login = await call(as_client, "POST", "/register", {
            "type": "m.login.application_service", "username": GHOST_LOCALPART, "device_id": GHOST_DEVICE})
        assert ghost_login["user_id"] == ghost_id and ghost_login.get("device_id") == GHOST_DEVICE, ghost_login

        alice = await register_user(server, "edualice" + secrets.token_hex(3))
        room = (await call(alice, "POST", "/createRoom", {"preset": "public_chat"}))["room_id"]
        lonely = (await call(alice, "POST", "/createRoom", {}))["room_id"]
        await appserv.intent.user(ghost_id).join_room(room)

        # typing where the ghost is (and, first, where it is not)
        for target in (lonely, room):
            await call(alice, "PUT", f"/rooms/{q(target)}/typing/{q(alice.user_id)}",
                       {"typing": True, "timeout": 30000})

        def typing_in(target):
            return [e for e in ephemeral if e.get("type") == "m.typing" and e.get("room_id") == target
                    and alice.user_id in e.get("content", {}).get("user_ids", [])]

        await wait_until("m.typing", lambda: typing_in(room))
        obs["typing"] = "room_id and user_ids"
        obs["typing_elsewhere"] = len(typing_in(lonely))

        # a read receipt
        sent = await call(alice, "PUT", f"/rooms/{q(room)}/send/m.room.message/edu1",
                          {"msgtype": "m.text", "body": "읽어 주세요"})
        event_id = sent["event_id"]
        await call(alice, "POST", f"/rooms/{q(room)}/receipt/m.read/{q(event_id)}", {})

        def receipts():
            return [e for e in ephemeral if e.get("type") == "m.receipt" and e.get("room_id") == room
                    and alice.user_id in e.get("content", {}).get(event_id, {}).get("m.read", {})]

        await wait_until("m.receipt", receipts)
        obs["receipt"] = "room_id, event, m.read, user, ts" if \
            isinstance(receipts()[0]["content"][event_id]["m.read"][alice.user_id].get("ts"), int) else "no ts"

        # a to-device message for the ghost's device
        await call(alice, "PUT", "/sendToDevice/m.ieum.test/edu-td1",
                   {"messages": {ghost_id: {GHOST_DEVICE: {"secret": "for the bridge"}}}})
        await wait_until("the to-device message", lambda: to_device)
        await asyncio.sleep(1.5)  # a duplicate would arrive by now
        message = to_device[0]
        obs["to_device"] = {
            "count": len(to_device),
            "type": message.get("type"),
            "sender_is_alice": message.get("sender") == alice.user_id,
            "to_user_id": message.get("to_user_id") == ghost_id,
            "to_device_id": message.get("to_device_id"),
            "content": message.get("content"),
        }
    finally:
        await appserv.stop()

    assert obs["typing_elsewhere"] == 0, "typing in a room without the appservice's users"
    assert obs["receipt"] == "room_id, event, m.read, user, ts"
    assert obs["to_device"] == {"count": 1, "type": "m.ieum.test", "sender_is_alice": True, "to_user_id": True,
                                "to_device_id": GHOST_DEVICE, "content": {"secret": "for the bridge"}}, obs


def test_zz_appservice_ephemeral_agrees():
    """Both servers delivered the same things (run after both parametrisations)."""
    if set(RESULTS) != set(SERVERS):
        pytest.fail(f"scenario ran only on {sorted(RESULTS)}", pytrace=False)
    assert RESULTS["ieum"] == RESULTS["synapse"], json.dumps(RESULTS, indent=1, ensure_ascii=False)
