"""Federation between ieum and a real Synapse, in both directions.

Owns: one Synapse + ieum pair per module (built by fedkit.py: TLS federation
listeners on the ports in the server names, ieum pointed at Synapse through
`federation.overrides` + `skip_verify`) and the scenarios: joins by room id and
by alias, invites, messages, typing, read receipts and leaving, each across the
two servers. Every scenario uses fresh users and rooms and asserts on what the
*other* server reports, polling with a deadline (no sleeps as assertions).

Plain client-server HTTP (fedkit.Client, urllib) is used on both sides, so every
failure can quote the exact request and answer. ieum runs with
RUST_LOG=info,ieum=debug; on failure the log tails of both servers are attached
(conftest.py), and the full logs stay in pytest's temporary directory (paths
printed in the failure).
"""

from __future__ import annotations

import pytest

from fedkit import (
    Client,
    FederationPair,
    Syncer,
    ephemeral,
    has_message,
    membership_is,
    messages_both_ways,
    register_ieum,
    register_synapse,
    start_federation_pair,
    synapse_room_joined_from_ieum,
    unique,
    wait_for,
)


# -- servers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def federation_pair(request, tmp_path_factory) -> FederationPair:
    return start_federation_pair(request, tmp_path_factory, "fed")


# -- fixtures per test ---------------------------------------------------------


@pytest.fixture
def s_alice(federation_pair) -> Client:
    return register_synapse(federation_pair.synapse, unique("alice"))


@pytest.fixture
def i_bob(federation_pair) -> Client:
    return register_ieum(federation_pair.ieum, unique("bob"))


# -- scenarios -----------------------------------------------------------------


@pytest.mark.parametrize("room_version", ["1", "2", "10", "11", "12"])
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


def test_synapse_reads_history_of_an_ieum_only_room(federation_pair, s_alice, i_bob):
    """Events of a room only ieum is in are stored unsigned and signed as they leave:
    Synapse must accept the room's state in the join and the older messages it
    backfills (it checks ieum's signature on each)."""
    pair = federation_pair
    room_id = i_bob.create_room(preset="public_chat")
    texts = [unique("before the join ") for _ in range(3)]
    for text in texts:
        i_bob.send_text(room_id, text)
    assert s_alice.join(room_id, via=[pair.ieum.server_name]) == room_id
    wait_for(pair, f"ieum lists {s_alice.user_id} as joined",
             membership_is(i_bob, room_id, s_alice.user_id, "join"))
    for text in texts:
        wait_for(pair, f"Synapse /messages shows ieum's earlier message {text!r}",
                 has_message(s_alice, room_id, text, i_bob.user_id))
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
