"""Scenario "appservice_bridge_js": a matrix-appservice-bridge (npm) bridge against each server.

Owns the scenario: one homeserver per server kind started with an appservice
registration written here (sender_localpart `jsbot`, exclusive users `@jsb_.*` and
aliases `#jsb_.*`, ephemeral events asked for under both names: `receive_ephemeral` and
the pre-merge `de.sorunome.msc2409.push_ephemeral`, which is what this framework's own
AppServiceRegistration writes), and the bridge of tests/interop/node/bridge.js (the
framework's `Bridge`, `Intent` and AppService HTTP listener on loopback; see
nodebridge.py) doing what bridges do: ghosts registered through the framework
(`intent.ensureRegistered`, m.login.application_service), a display name set, a room
joined and messages sent as a ghost (`?user_id=` masquerading), messages with massaged
timestamps (`?ts=`; the framework's Intent has no parameter for it, so a raw request
through the ghost's framework client), an alias created in the namespace, and every
event its onEvent / onEphemeralEvent handlers receive recorded. A normal user (plain
HTTP, fedkit.Client) reads the ghost's messages through /messages, talks to the ghost
(her message must reach the bridge in a transaction exactly once) and is refused the
exclusive namespaces (M_EXCLUSIVE). Runs against Synapse (the reference) and ieum;
each run records normalized observations and the last test of this module compares them.
"""

from __future__ import annotations

import json
import re
import secrets
import time

import pytest

from fedkit import Client, MatrixError, appservice_registration, q, start_appservice_homeserver
from nodebridge import NodeBridge, NodeBridgeUnavailable
from peers.process import free_port
from test_appservice_mautrix import AnonClient

SCENARIO = "appservice_bridge_js"
SERVERS = ["synapse", "ieum"]
AS_ID = "js-bridge-interop"
BOT_LOCALPART = "jsbot"
GHOST_LOCALPART = "jsb_ghost"
OTHER_GHOST_LOCALPART = "jsb_other"
GHOST_DISPLAYNAME = "JS Bridged Ghost"
#: massaged timestamps of the ghost's messages (well in the past, one minute apart)
MASSAGED_TS = [1_500_000_000_000 + i * 60_000 for i in range(2)]
#: seconds to wait for something to reach the bridge
DEADLINE = 10.0
#: seconds to wait for typing and a receipt to reach the bridge
EPHEMERAL_DEADLINE = 5.0
#: seconds to keep listening after an event arrived (to catch duplicates)
SETTLE = 2.0

#: server kind -> normalized observations (compared by test_zz_bridge_js_agrees)
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module", params=SERVERS)
def homeserver(request, tmp_path_factory):
    """Named like conftest's fixture so failures carry this server's log tail."""
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"as-js-{kind}")
    port, as_port = free_port(), free_port()
    registration = appservice_registration(AS_ID, f"localhost:{port}", as_port, BOT_LOCALPART, "jsb_",
                                           ephemeral=True, legacy_ephemeral=True)
    server = start_appservice_homeserver(request, kind, port, tmp, registration)
    server.as_port = as_port
    server.bridge_log = tmp / "bridge.log"
    return server


def register_user(server, localpart: str) -> Client:
    """A normal user through POST /register with m.login.dummy (UIA session if asked)."""
    anon = AnonClient(server)
    body = {"username": localpart, "password": "interop-password-1",
            "auth": {"type": "m.login.dummy"}, "initial_device_display_name": "interop"}
    try:
        resp = anon.call("POST", "/register", body)
    except MatrixError as exc:
        if exc.status != 401 or not isinstance(exc.body, dict) or "session" not in exc.body:
            raise
        body["auth"]["session"] = exc.body["session"]
        resp = anon.call("POST", "/register", body)
    return Client(server, resp["user_id"], resp["access_token"])


def register_outcome(server, localpart: str) -> list:
    """[status, errcode] of a normal user's POST /register (m.login.dummy) for localpart."""
    anon = AnonClient(server)
    body = {"username": localpart, "password": "interop-password-1",
            "auth": {"type": "m.login.dummy"}}
    try:
        anon.call("POST", "/register", body)
    except MatrixError as exc:
        if exc.status == 401 and isinstance(exc.body, dict) and "session" in exc.body \
                and "errcode" not in exc.body:
            body["auth"]["session"] = exc.body["session"]
            return outcome(anon, "POST", "/register", body)
        return [exc.status, exc.body.get("errcode") if isinstance(exc.body, dict) else None]
    return [200, None]


def outcome(client: Client, method: str, path: str, body=None, query=None) -> list:
    """[status, errcode] of a plain request ([200, None] if it succeeded)."""
    try:
        client.call(method, path, body, query)
    except MatrixError as exc:
        return [exc.status, exc.body.get("errcode") if isinstance(exc.body, dict) else None]
    return [200, None]


def test_bridge_js_appservice(homeserver, observations, request):
    server = homeserver
    obs = observations.record(SCENARIO, server.name)
    notes = observations.note(SCENARIO, server.name)
    obs["steps"] = []
    RESULTS[server.name] = obs
    bridge = NodeBridge(server.registration_path, server.base_url, server.server_name,
                        server.as_port, server.bridge_log)
    request.addfinalizer(bridge.stop)
    try:
        ready = bridge.start()
    except NodeBridgeUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)  # never skip: the npm side must be installed
    notes["framework"] = f"matrix-appservice-bridge {ready.get('framework')}"
    try:
        _scenario(server, bridge, obs, notes)
    except BaseException:
        request.node.add_report_section("call", "bridge log tail", bridge.log_tail(60))
        raise


def _scenario(server, bridge: NodeBridge, obs: dict, notes: dict) -> None:
    domain = server.server_name
    bot_id = f"@{BOT_LOCALPART}:{domain}"
    ghost_id = f"@{GHOST_LOCALPART}:{domain}"
    other_id = f"@{OTHER_GHOST_LOCALPART}:{domain}"
    names = {bot_id: "@bot", ghost_id: "@ghost", other_id: "@other"}

    def label(user_id):
        if user_id is None:
            return None
        return names.get(user_id) or re.sub(r":.*$", ":<server>", user_id)

    # 1. the bot (sender_localpart) through the framework's bot intent
    whoami = bridge.call("botWhoami")
    assert whoami.get("user_id") == bot_id, f"the as_token resolves to {whoami}, not {bot_id}"
    obs["bot_whoami"] = label(whoami["user_id"])
    obs["steps"].append("bot")

    # 2. ghosts registered through the framework (POST /register,
    #    m.login.application_service), each then known to the server as itself
    registered = {}
    for user in (ghost_id, other_id):
        registered[label(user)] = bridge.call("ensureRegistered", user=user)
        me = bridge.call("whoami", user=user)
        assert me.get("user_id") == user, f"whoami as {user} through the framework: {me}"
    obs["ghosts_registered"] = registered
    # registering an existing ghost again (what a restarted bridge's first ensureRegistered
    # sends; the framework takes M_USER_IN_USE as "already registered"): plain HTTP, since
    # the running framework remembers the ghost and sends nothing
    as_client = Client(server, bot_id, server.registration["as_token"])
    obs["register_existing_ghost"] = outcome(
        as_client, "POST", "/register",
        {"type": "m.login.application_service", "username": GHOST_LOCALPART})
    obs["steps"].append("ghosts")

    # 3. a normal user sees the ghost's display name
    bridge.call("setDisplayName", user=ghost_id, name=GHOST_DISPLAYNAME)
    alice = register_user(server, f"alice{secrets.token_hex(3)}")
    alice_id = alice.user_id
    names[alice_id] = "@alice"

    profile = alice.call("GET", f"/profile/{q(ghost_id)}")
    obs["ghost_profile"] = profile
    assert profile.get("displayname") == GHOST_DISPLAYNAME, f"ghost's profile: {profile}"
    obs["steps"].append("display name")

    # 4. the normal user's room; she invites the ghost, the ghost joins through the framework
    room_id = alice.create_room(preset="private_chat", name="JS bridge room",
                                power_level_content_override={"users": {ghost_id: 50}})
    alice.invite(room_id, ghost_id)
    joined = bridge.call("join", user=ghost_id, room=room_id)
    assert joined == room_id, f"the ghost's join answered {joined}, not {room_id}"
    member = alice.state(room_id, "m.room.member", ghost_id)
    obs["ghost_member"] = {k: member.get(k) for k in ("membership", "displayname")}
    assert obs["ghost_member"] == {"membership": "join", "displayname": GHOST_DISPLAYNAME}, \
        f"the ghost's m.room.member as the normal user reads it: {member}"
    obs["steps"].append("ghost joined")

    # 5. messages from the ghost: one plain, then with massaged timestamps
    plain_text = "plain from the js ghost"
    sent = [(bridge.call("sendText", user=ghost_id, room=room_id, text=plain_text),
             plain_text, None)]
    for i, ts in enumerate(MASSAGED_TS):
        text = f"massaged from the js ghost {i}"
        event_id = bridge.call("sendMassaged", user=ghost_id, room=room_id, text=text, ts=ts,
                               txn=f"jsb{secrets.token_hex(6)}")
        sent.append((event_id, text, ts))
    history = alice.messages(room_id)
    history.reverse()  # chronological
    ghost_msgs = [ev for ev in history
                  if ev.get("type") == "m.room.message" and ev.get("sender") == ghost_id]
    now_ms = time.time() * 1000
    seen = [(ev["event_id"], ev["content"].get("body"),
             ev["origin_server_ts"] if ev["event_id"] != sent[0][0] else None)
            for ev in ghost_msgs]
    assert seen == sent, (f"the ghost's messages in /messages (event id, body, "
                          f"origin_server_ts): {seen}; sent: {sent}")
    plain_ts = ghost_msgs[0]["origin_server_ts"]
    assert abs(plain_ts - now_ms) < 300_000, f"the plain message's origin_server_ts {plain_ts}"
    obs["ghost_messages"] = [[label(ev["sender"]), ev["content"].get("body"),
                              "recent" if ev["event_id"] == sent[0][0]
                              else ev["origin_server_ts"]]
                             for ev in ghost_msgs]
    obs["steps"].append("ghost messages")

    # 6. the normal user's message reaches the bridge in a transaction, exactly once
    text = f"hello js bridge {secrets.token_hex(4)}"
    event_id = alice.send_text(room_id, text)
    bridge.wait(f"{alice_id}'s message {event_id} in the bridge's onEvent",
                lambda: any(ev.get("event_id") == event_id for ev in bridge.events), DEADLINE)
    time.sleep(SETTLE)
    got = [ev for ev in bridge.events if ev.get("event_id") == event_id]
    txn_requests = [t for t in bridge.txns if event_id in t["event_ids"]]
    assert len(got) == 1, (f"the bridge's onEvent saw {event_id} {len(got)} times; "
                           f"transaction requests: {json.dumps(bridge.txns)[-3000:]}")
    ev = got[0]
    assert (ev.get("sender"), ev.get("room_id"), (ev.get("content") or {}).get("body")) == \
        (alice_id, room_id, text), f"the event as the bridge received it: {ev}"
    assert len({t["txn_id"] for t in txn_requests}) == 1, \
        f"{event_id} came in transactions {[t['txn_id'] for t in txn_requests]}"
    assert all(t["auth_header_ok"] and t["method"] == "PUT"
               and t["path"].startswith("/_matrix/app/v1/transactions/") for t in bridge.txns), \
        f"transactions not PUT /_matrix/app/v1/transactions/ with Bearer hs_token: {bridge.txns}"
    obs["user_message_deliveries"] = len(got)
    obs["user_message_as_received"] = [label(ev.get("sender")), ev.get("type"),
                                       (ev.get("content") or {}).get("body") == text]
    notes["transactions"] = (f"{len(bridge.txns)} requests, "
                             f"{len({t['txn_id'] for t in bridge.txns})} txn ids, "
                             f"access_token query also sent: "
                             f"{any(t['access_token_query'] for t in bridge.txns)}")
    obs["steps"].append("transaction")

    # 7. ephemeral events: her typing and her read receipt in the ghost's room. The
    #    framework (matrix-appservice 2.0.0, also 3.0.0) reads them only from the
    #    pre-merge key `de.sorunome.msc2409.ephemeral` of a transaction.
    alice.typing(room_id, True)
    alice.read_receipt(room_id, sent[-1][0])

    def ephemeral_in_room():
        return sorted({e.get("type") for e in bridge.ephemeral
                       if e.get("room_id") == room_id and e.get("type") in ("m.typing",
                                                                          "m.receipt")})
    try:
        bridge.wait("typing and receipt in onEphemeralEvent",
                    lambda: len(ephemeral_in_room()) == 2, EPHEMERAL_DEADLINE)
    except AssertionError:
        pass  # recorded below and compared with the reference
    alice.typing(room_id, False)
    obs["ephemeral_received"] = ephemeral_in_room()
    with_ephemeral = [t for t in bridge.txns
                      if t["ephemeral_types"] or t["unstable_ephemeral_types"]]
    obs["ephemeral_transaction_keys"] = sorted(
        {k for t in with_ephemeral for k in t["keys"] if "ephemeral" in k})
    notes["transaction_body_keys"] = sorted({k for t in bridge.txns for k in t["keys"]})
    notes["ephemeral_types_by_key"] = {
        "ephemeral": sorted({x for t in bridge.txns for x in t["ephemeral_types"]}),
        "de.sorunome.msc2409.ephemeral": sorted(
            {x for t in bridge.txns for x in t["unstable_ephemeral_types"]})}
    obs["steps"].append("ephemeral")

    # 8. an alias in the namespace, created by the ghost through the framework
    alias = f"#jsb_room{secrets.token_hex(3)}:{domain}"
    bridge.call("createAlias", user=ghost_id, alias=alias, room=room_id)
    resolved = alice.resolve_alias(alias)
    obs["alias_by_ghost"] = "resolves" if resolved.get("room_id") == room_id \
        else f"resolves to {resolved}"
    assert obs["alias_by_ghost"] == "resolves", f"{alias}: {resolved}"
    obs["steps"].append("alias")

    # 9. exclusivity: every check runs, then all disagreements are reported at once
    problems: list[str] = []

    def expect(key: str, got: list, want: list, what: str) -> None:
        obs[key] = got
        if got[:len(want)] != want:
            problems.append(f"{what}: expected {want}, got {got}")

    expect("register_reserved", register_outcome(server, "jsb_x"),
           [400, "M_EXCLUSIVE"], "normal user POST /register username=jsb_x")
    expect("available_reserved", outcome(AnonClient(server), "GET", "/register/available",
                                         query={"username": "jsb_x"}),
           [400, "M_EXCLUSIVE"], "GET /register/available?username=jsb_x")
    other_alias = f"#jsb_mine{secrets.token_hex(3)}:{domain}"
    expect("alias_by_user", outcome(alice, "PUT", f"/directory/room/{q(other_alias)}",
                                    {"room_id": room_id}),
           [400, "M_EXCLUSIVE"], f"normal user PUT /directory/room/{other_alias}")
    # the framework registering a user outside its namespace: the server refuses
    expect("framework_register_outside", bridge.outcome(
        "ensureRegistered", user=f"@outsider{secrets.token_hex(2)}:{domain}"),
        [400, "M_EXCLUSIVE"], "the framework's ensureRegistered for @outsider…")
    assert not problems, "exclusivity:\n  " + "\n  ".join(problems)
    obs["steps"].append("exclusivity")

    # what the bridge heard about the room (a set: batching may differ between servers)
    obs["room_events_received"] = sorted({
        json.dumps([e.get("type"), label(e.get("sender")),
                    label(e.get("state_key")) if e.get("state_key") else e.get("state_key"),
                    (e.get("content") or {}).get("membership")])
        for e in bridge.events if e.get("room_id") == room_id})
    obs["completed"] = True


def test_zz_bridge_js_agrees():
    """ieum's normalized observations equal Synapse's (runs after both scenarios)."""
    missing = [s for s in SERVERS if s not in RESULTS]
    if missing:
        pytest.fail(f"the scenario did not run against {missing} in this session",
                    pytrace=False)
    ref, cand = RESULTS["synapse"], RESULTS["ieum"]
    if not ref.get("completed"):
        pytest.fail("the scenario failed against Synapse: the reference is untrusted",
                    pytrace=False)
    if not cand.get("completed"):
        unreached = sorted(set(ref) - set(cand))
        ref = {k: v for k, v in ref.items() if k in cand}
    else:
        unreached = []
    diffs = [f"  {key}:\n    synapse: {json.dumps(ref.get(key, '<missing>'))}\n"
             f"    ieum:    {json.dumps(cand.get(key, '<missing>'))}"
             for key in sorted(set(ref) | set(cand)) if ref.get(key) != cand.get(key)]
    if unreached:
        diffs.append(f"  never reached by ieum (its scenario stopped after steps "
                     f"{cand.get('steps')}): {', '.join(unreached)}")
    assert not diffs, "ieum differs from Synapse:\n" + "\n".join(diffs)
