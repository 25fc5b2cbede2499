"""A server that was down catches up: ieum and a real Synapse, in both directions.

Owns: its own Synapse + ieum pair (fedkit.start_federation_pair), with Synapse
set to give a transaction up after one retry (`federation: max_long_retries: 1`;
its back-off between attempts at a destination is already 1 s to 5 s there), and
three outage scenarios, each in a fresh room version 12 room created on Synapse
and joined from ieum:

- ieum is stopped (SIGTERM), the Synapse user sends 3 messages, and ieum stays
  down until Synapse's admin API reports it as failing (`failure_ts`: Synapse
  gave the transaction up and backs off). ieum is started again on the same data
  directory, configuration and ports; the ieum user sends "back" (an inbound
  request ends Synapse's back-off for ieum, which then sends what it queued).
  Synapse must show "back", and ieum's /messages (dir=b, limit=50) must hold the
  3 messages in the order sent, none missing, none twice.
- Synapse is stopped, the ieum user sends 3 messages (ieum's attempts fail and
  it backs off: 1 s doubling to 1 h), Synapse is started again on the same
  config and data; the Synapse user sends "back" (an inbound request ends ieum's
  back-off for Synapse). ieum must show "back", and Synapse's /messages must hold
  the 3 messages in order.
- As the first, but Synapse is also restarted while ieum is down, losing its
  in-memory queue: it then "catches up" ieum by sending only the newest event ieum
  missed in the room, so ieum must fetch the two before it (/get_missing_events).

Assertions poll with a deadline (OUTAGE_DEADLINE), never sleep.
"""

from __future__ import annotations

from typing import Any

import pytest

from fedkit import (
    PASSWORD,
    Client,
    FederationPair,
    fail,
    has_message,
    messages_both_ways,
    q,
    register_ieum,
    register_synapse,
    start_federation_pair,
    start_server,
    synapse_room_joined_from_ieum,
    unique,
    wait_for,
)
from peers.process import ServerProcess

#: seconds the catch-up after a restart may take (retries, back-off, gap filling)
OUTAGE_DEADLINE = 60.0


@pytest.fixture(scope="module")
def federation_pair(request, tmp_path_factory) -> FederationPair:
    return start_federation_pair(request, tmp_path_factory, "outage",
                                 synapse_config={"federation": {"max_long_retries": 1}})


@pytest.fixture(scope="module")
def s_admin(federation_pair) -> Client:
    """A Synapse server admin, to read Synapse's view of ieum's reachability."""
    resp = federation_pair.synapse.register_user(unique("admin"), PASSWORD, admin=True)
    return Client(federation_pair.synapse, resp["user_id"], resp["access_token"])


@pytest.fixture
def s_alice(federation_pair) -> Client:
    return register_synapse(federation_pair.synapse, unique("alice"))


@pytest.fixture
def i_bob(federation_pair) -> Client:
    return register_ieum(federation_pair.ieum, unique("bob"))


def joined_v12_room(pair: FederationPair, s_user: Client, i_user: Client) -> str:
    """A v12 room on Synapse that i_user joined; one message each way went through."""
    room_id = synapse_room_joined_from_ieum(pair, s_user, i_user, room_version="12")
    create = i_user.state(room_id, "m.room.create")
    assert create.get("room_version") == "12", f"ieum's m.room.create content: {create}"
    messages_both_ways(pair, s_user, i_user, room_id)
    return room_id


def stop(pair: FederationPair, server: ServerProcess) -> None:
    status = server.stop()
    if status != 0:
        fail(pair, f"{server.name} did not exit cleanly on SIGTERM (status {status})")


class NotYet:
    """A falsy probe result that still says what was seen (wait_for reports it)."""

    def __init__(self, seen: Any):
        self.seen = seen

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"seen: {self.seen!r}"


def synapse_gave_up_on(admin: Client, destination: str):
    """A probe: Synapse's admin API reports `destination` as failing (in back-off)."""
    def probe():
        info = admin.call("GET", f"/federation/destinations/{q(destination)}",
                          prefix="/_synapse/admin/v1")
        return info if info.get("failure_ts") else NotYet(info)
    return probe


def texts_from(client: Client, room_id: str, sender: str) -> list[str]:
    """Bodies of sender's m.room.message events in client's /messages (dir=b, limit 50),
    oldest first."""
    chunk = client.messages(room_id, limit=50)
    return [ev["content"].get("body") for ev in reversed(chunk)
            if ev.get("type") == "m.room.message" and ev.get("sender") == sender]


def caught_up(client: Client, room_id: str, sender: str, sent: list[str]):
    """A probe: sender's messages in client's /messages contain `sent` consecutively,
    in order (no gap, no duplicate). Returns the list seen, or a falsy NotYet."""
    def probe():
        seen = texts_from(client, room_id, sender)
        if not all(text in seen for text in sent):
            return NotYet(seen)
        first = seen.index(sent[0])
        assert seen[first:first + len(sent)] == sent and \
            all(seen.count(text) == 1 for text in sent), \
            f"{client.server.name} /messages holds {sender}'s messages out of order " \
            f"or with a gap: {seen} (sent while the peer was down: {sent})"
        return seen
    return probe


def test_ieum_catches_up_after_its_outage(federation_pair, s_admin, s_alice, i_bob):
    pair = federation_pair
    room_id = joined_v12_room(pair, s_alice, i_bob)

    stop(pair, pair.ieum)
    sent = [unique(f"while ieum was down {n} ") for n in (1, 2, 3)]
    for text in sent:
        s_alice.send_text(room_id, text)
    wait_for(pair, f"Synapse's admin API reports {pair.ieum.server_name} as failing",
             synapse_gave_up_on(s_admin, pair.ieum.server_name), OUTAGE_DEADLINE)
    start_server(pair.ieum)  # same data directory, environment and ports

    back = unique("ieum back ")
    i_bob.send_text(room_id, back)
    wait_for(pair, f"Synapse /messages shows ieum's {back!r}",
             has_message(s_alice, room_id, back, i_bob.user_id), OUTAGE_DEADLINE)
    seen = wait_for(pair, f"ieum /messages (dir=b, limit=50) of {i_bob.user_id} shows the 3 "
                          f"messages {s_alice.user_id} sent while ieum was down, in order",
                    caught_up(i_bob, room_id, s_alice.user_id, sent), OUTAGE_DEADLINE)
    assert seen[-3:] == sent, f"ieum shows Synapse's messages {seen}"


def test_synapse_catches_up_after_its_outage(federation_pair, s_alice, i_bob):
    pair = federation_pair
    room_id = joined_v12_room(pair, s_alice, i_bob)

    stop(pair, pair.synapse)
    sent = [unique(f"while synapse was down {n} ") for n in (1, 2, 3)]
    for text in sent:
        i_bob.send_text(room_id, text)
    start_server(pair.synapse)  # same config, data and ports

    back = unique("synapse back ")
    s_alice.send_text(room_id, back)
    wait_for(pair, f"ieum /messages shows Synapse's {back!r}",
             has_message(i_bob, room_id, back, s_alice.user_id), OUTAGE_DEADLINE)
    seen = wait_for(pair, f"Synapse /messages (dir=b, limit=50) of {s_alice.user_id} shows "
                          f"the 3 messages {i_bob.user_id} sent while Synapse was down, in order",
                    caught_up(s_alice, room_id, i_bob.user_id, sent), OUTAGE_DEADLINE)
    assert seen[-3:] == sent, f"Synapse shows ieum's messages {seen}"


def test_ieum_fills_the_gap_when_synapse_sends_only_the_newest(federation_pair, s_admin,
                                                              s_alice, i_bob):
    """Synapse loses its queue for ieum (restarted while ieum is down): on restart it is
    in catch-up mode and sends ieum only the newest event ieum missed in the room, so
    ieum has to fetch the two before it (/get_missing_events) to show all three."""
    pair = federation_pair
    room_id = joined_v12_room(pair, s_alice, i_bob)

    stop(pair, pair.ieum)
    sent = [unique(f"while ieum was down {n} ") for n in (1, 2, 3)]
    for text in sent:
        s_alice.send_text(room_id, text)
    wait_for(pair, f"Synapse's admin API reports {pair.ieum.server_name} as failing",
             synapse_gave_up_on(s_admin, pair.ieum.server_name), OUTAGE_DEADLINE)
    stop(pair, pair.synapse)
    start_server(pair.synapse)
    start_server(pair.ieum)

    back = unique("ieum back ")
    i_bob.send_text(room_id, back)
    wait_for(pair, f"Synapse /messages shows ieum's {back!r}",
             has_message(s_alice, room_id, back, i_bob.user_id), OUTAGE_DEADLINE)
    seen = wait_for(pair, f"ieum /messages (dir=b, limit=50) of {i_bob.user_id} shows the 3 "
                          f"messages {s_alice.user_id} sent while ieum was down, in order",
                    caught_up(i_bob, room_id, s_alice.user_id, sent), OUTAGE_DEADLINE)
    assert seen[-3:] == sent, f"ieum shows Synapse's messages {seen}"
