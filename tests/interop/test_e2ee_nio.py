"""End-to-end encryption with matrix-nio (vodozemac-backed, encryption enabled).

Owns the E2EE interop scenarios:
  * two users on one server (run against Synapse as the reference and against
    ieum) exchange megolm-encrypted messages and each decrypts the other's;
  * a user deletes one of two devices; the sender sees the device-list change,
    re-queries keys and no longer shares room keys with the deleted device, while
    the remaining device still decrypts;
  * one user on ieum and one on Synapse (a federating pair) do the same across
    federation (/user/keys/query, /user/keys/claim, m.direct_to_device), and a new
    device of the ieum user reaches Synapse as m.device_list_update, so the Synapse
    user encrypts to it;
  * across federation in both directions (owner of two devices on ieum or on
    Synapse): a new device is encrypted to, a deleted one no longer is;
  * an ieum user creates an encrypted room with a Synapse user in createRoom's
    `invite` list (how clients start an encrypted DM).

Each client has its own nio store in a temporary directory and behaves like a
real E2EE client between syncs (e2eekit.E2EEUser.housekeeping). Assertions look
at what is on the wire (the raw /sync and request bodies) as well as at nio's
crypto state; waits are bounded polls of /sync (e2eekit.DEADLINE).
"""

from __future__ import annotations

import asyncio
import json
import secrets

import nio
import pytest

from e2eekit import (
    ENCRYPTION_STATE,
    MEGOLM,
    E2EEUser,
    delete_device,
    login_device,
    raw_call,
)
from fedkit import (
    PASSWORD,
    FederationPair,
    register_ieum,
    register_synapse,
    start_federation_pair,
)
from nioclient import RecordingClient, expect

SCENARIO_TIMEOUT = 240


def localpart(role: str) -> str:
    return f"{role}-e2ee-{secrets.token_hex(4)}"


async def register(server, role: str) -> tuple[str, str]:
    """Register a fresh account with m.login.dummy; return (localpart, password)."""
    name = localpart(role)
    password = secrets.token_urlsafe(18)
    client = RecordingClient(server.base_url)
    try:
        expect(await client.register(name, password, device_name=f"{role} (register)"),
               nio.RegisterResponse, f"{role}: register {name}")
    finally:
        await client.close()
    return name, password


async def encrypted_room(alice: E2EEUser, members: list[E2EEUser],
                         invite_in_create: bool = True) -> str:
    """alice creates a megolm room and invites every member; they join; all see it.

    invite_in_create: invite through createRoom's `invite` list, else by /invite after."""
    invitees = sorted({m.user_id for m in members})
    created = expect(
        await alice.client.room_create(
            name="e2ee interop", initial_state=[ENCRYPTION_STATE],
            invite=invitees if invite_in_create else (),
        ),
        nio.RoomCreateResponse, f"{alice}: create an encrypted room",
    )
    room_id = created.room_id
    if not invite_in_create:
        for user_id in invitees:
            expect(await alice.client.room_invite(room_id, user_id), nio.RoomInviteResponse,
                   f"{alice}: invite {user_id} to {room_id}")
    joined_users = set()
    for member in members:
        await member.until(f"the invite to {room_id}",
                           lambda u: room_id in u.client.invited_rooms
                           or room_id in u.client.rooms)
        if member.user_id not in joined_users:
            expect(await member.client.join(room_id), nio.JoinResponse,
                   f"{member}: join {room_id}")
            joined_users.add(member.user_id)
    for member in members:
        await member.wait_joined(room_id, member.user_id)
    for user_id in joined_users:
        await alice.wait_joined(room_id, user_id)
    for member in members:
        for user_id in joined_users | {alice.user_id}:
            await member.wait_joined(room_id, user_id)
    return room_id


def assert_encrypted_on_wire(receiver: E2EEUser, room_id: str, event_id: str, body: str) -> None:
    raw = receiver.raw_event(room_id, event_id)
    assert raw is not None, f"{receiver}: {event_id} never appeared in the raw /sync timeline"
    assert raw.get("type") == "m.room.encrypted", \
        f"{receiver}: {event_id} arrived as {raw.get('type')!r}, not m.room.encrypted: {raw}"
    content = raw.get("content") or {}
    assert content.get("algorithm") == MEGOLM and content.get("ciphertext"), raw
    assert body not in json.dumps(raw), f"the plaintext {body!r} is on the wire: {raw}"


async def send_and_decrypt(sender: E2EEUser, receivers: list[E2EEUser], room_id: str,
                           body: str) -> str:
    event_id = await sender.send_encrypted(room_id, body)
    for receiver in receivers:
        got = await receiver.until(f"{body!r} decrypted", receiver.decrypted_body(body))
        assert got.event_id == event_id, f"{receiver} decrypted {body!r} as {got}"
        assert got.sender == sender.user_id, f"{receiver}: {body!r} has sender {got.sender}"
        assert_encrypted_on_wire(receiver, room_id, event_id, body)
    return event_id


def session_shared_with(sender: E2EEUser, room_id: str) -> set[tuple[str, str]]:
    session = sender.client.olm.outbound_group_sessions.get(room_id)
    assert session is not None, f"{sender} has no outbound megolm session for {room_id}"
    return set(session.users_shared_with)


def to_device_targets(sender: E2EEUser, since: int) -> set[tuple[str, str]]:
    """(user, device) pairs addressed by sender's /sendToDevice requests since exchange #since."""
    targets = set()
    for exchange in sender.client.to_device_requests(since):
        messages = (exchange.request_body or {}).get("messages") or {}
        for user_id, devices in messages.items():
            targets.update((user_id, device_id) for device_id in devices)
    return targets


async def close_all(users: list[E2EEUser]) -> None:
    for user in users:
        await user.close()


# -- 1. two users on one server ----------------------------------------------------


async def two_users(server, tmp_path) -> None:
    users: list[E2EEUser] = []
    try:
        alice_name, alice_pw = await register(server, "alice")
        bob_name, bob_pw = await register(server, "bob")
        alice = await login_device(server.base_url, alice_name, alice_pw, "alice",
                                   tmp_path / "alice")
        users.append(alice)
        bob = await login_device(server.base_url, bob_name, bob_pw, "bob", tmp_path / "bob")
        users.append(bob)

        # /sync counts the one-time keys nio uploaded (nothing was claimed yet).
        for user in (alice, bob):
            await user.sync()
            counts = user.last_sync.exchange.response_body.get("device_one_time_keys_count")
            uploaded = user.uploaded_one_time_keys()
            assert uploaded > 0, f"{user}: nio uploaded no one-time keys"
            assert (counts or {}).get("signed_curve25519") == uploaded, \
                f"{user}: /sync device_one_time_keys_count is {counts}, but {uploaded} " \
                f"signed_curve25519 keys were uploaded"

        room_id = await encrypted_room(alice, [bob])
        for user in (alice, bob):
            await user.housekeeping()

        await send_and_decrypt(alice, [bob], room_id, f"hello bob {secrets.token_hex(3)}")
        assert (bob.user_id, bob.device_id) in session_shared_with(alice, room_id)
        await send_and_decrypt(bob, [alice], room_id, f"hello alice {secrets.token_hex(3)}")
        assert (alice.user_id, alice.device_id) in session_shared_with(bob, room_id)
        # Olm worked both ways: each side has an Olm session with the other's device.
        for me, other in ((alice, bob), (bob, alice)):
            device = me.client.device_store[other.user_id].get(other.device_id)
            assert device is not None, f"{me} has no device keys for {other}"
            assert me.client.olm.session_store.get(device.curve25519), \
                f"{me} has no Olm session with {other}"
    finally:
        await close_all(users)


@pytest.mark.asyncio
async def test_encrypted_messages_between_two_users(homeserver, tmp_path):
    await asyncio.wait_for(two_users(homeserver, tmp_path), timeout=SCENARIO_TIMEOUT)


# -- 2. a deleted device is no longer encrypted to ------------------------------------


async def deleted_device(server, tmp_path) -> None:
    users: list[E2EEUser] = []
    try:
        alice_name, alice_pw = await register(server, "alice")
        bob_name, bob_pw = await register(server, "bob")
        alice = await login_device(server.base_url, alice_name, alice_pw, "alice",
                                   tmp_path / "alice")
        users.append(alice)
        bob1 = await login_device(server.base_url, bob_name, bob_pw, "bob#1", tmp_path / "bob1")
        users.append(bob1)
        bob2 = await login_device(server.base_url, bob_name, bob_pw, "bob#2", tmp_path / "bob2")
        users.append(bob2)
        assert bob1.device_id != bob2.device_id

        room_id = await encrypted_room(alice, [bob1, bob2])
        for user in users:
            await user.housekeeping()

        # alice knows both of bob's devices and encrypts to both.
        alice_devices = {d.id for d in alice.client.device_store.active_user_devices(bob1.user_id)}
        assert {bob1.device_id, bob2.device_id} <= alice_devices, \
            f"alice's /keys/query knows bob's devices {alice_devices}, expected both of " \
            f"{bob1.device_id}, {bob2.device_id}"
        await send_and_decrypt(alice, [bob1, bob2], room_id, f"to both {secrets.token_hex(3)}")
        shared = session_shared_with(alice, room_id)
        assert {(bob1.user_id, bob1.device_id), (bob2.user_id, bob2.device_id)} <= shared, shared
        first_session = alice.client.olm.outbound_group_sessions[room_id].id

        # bob deletes his second device.
        token_before = alice.client.next_batch
        await delete_device(bob1, bob2.device_id)
        gone = await bob2.client.sync(timeout=0)
        assert isinstance(gone, nio.SyncError) and gone.status_code == "M_UNKNOWN_TOKEN", \
            f"the deleted device's token still works for /sync: {gone}"

        # alice's /sync reports bob's device list as changed; she re-queries his keys.
        changed_before = len(alice.changed)
        await alice.until(f"{bob1.user_id} in device_lists.changed after the deletion",
                          lambda u: bob1.user_id in u.changed[changed_before:])
        await alice.housekeeping()  # nio queries the changed user's keys
        status, changes = await raw_call(alice.client, "GET", ["keys", "changes"],
                                         query={"from": token_before,
                                                "to": alice.client.next_batch})
        assert status == 200 and bob1.user_id in (changes or {}).get("changed", []), \
            f"GET /keys/changes from before to after the deletion: HTTP {status} {changes}"

        def marked_deleted(user: E2EEUser):
            device = user.client.device_store[bob1.user_id].get(bob2.device_id)
            return device is not None and device.deleted
        await alice.until(f"bob's device {bob2.device_id} marked deleted by /keys/query",
                          marked_deleted)
        active = {d.id for d in alice.client.device_store.active_user_devices(bob1.user_id)}
        assert active == {bob1.device_id}, \
            f"alice's active devices of bob after the deletion: {active}, " \
            f"expected only {bob1.device_id}"

        # alice's next message uses a new megolm session shared only with bob#1.
        since = len(alice.client.exchanges)
        body = f"to bob#1 only {secrets.token_hex(3)}"
        await send_and_decrypt(alice, [bob1], room_id, body)
        second_session = alice.client.olm.outbound_group_sessions[room_id].id
        assert second_session != first_session, \
            "alice did not rotate her megolm session after bob's device list changed"
        shared = session_shared_with(alice, room_id)
        assert (bob1.user_id, bob1.device_id) in shared, shared
        assert (bob1.user_id, bob2.device_id) not in shared, \
            f"the new session was shared with the deleted device {bob2.device_id}: {shared}"
        targets = to_device_targets(alice, since)
        assert (bob1.user_id, bob1.device_id) in targets, \
            f"alice sent the new room key to {targets}, not to bob#1"
        assert (bob1.user_id, bob2.device_id) not in targets, \
            f"alice sent a to-device message to the deleted device: {targets}"
        got = bob1.decrypted_body(body)(bob1)
        assert got.session_id == second_session, got
    finally:
        await close_all(users)


@pytest.mark.asyncio
async def test_deleted_device_is_no_longer_encrypted_to(homeserver, tmp_path):
    await asyncio.wait_for(deleted_device(homeserver, tmp_path), timeout=SCENARIO_TIMEOUT)


# -- 3. across federation: alice on ieum, bob on Synapse --------------------------------


@pytest.fixture(scope="module")
def federation_pair(request, tmp_path_factory) -> FederationPair:
    return start_federation_pair(request, tmp_path_factory, "e2ee")


async def across_federation(pair: FederationPair, tmp_path) -> None:
    users: list[E2EEUser] = []
    try:
        alice_name = localpart("alice")
        register_ieum(pair.ieum, alice_name)
        bob_name = localpart("bob")
        register_synapse(pair.synapse, bob_name)
        alice = await login_device(pair.ieum.base_url, alice_name, PASSWORD, "alice (ieum)",
                                   tmp_path / "alice")
        users.append(alice)
        bob = await login_device(pair.synapse.base_url, bob_name, PASSWORD, "bob (synapse)",
                                 tmp_path / "bob")
        users.append(bob)

        # Invited by /invite: createRoom's `invite` list is covered by
        # test_create_encrypted_room_inviting_remote_user.
        room_id = await encrypted_room(alice, [bob], invite_in_create=False)
        for user in users:
            await user.housekeeping()

        # Both ways; each sender needs the other's keys over federation.
        await send_and_decrypt(alice, [bob], room_id, f"ieum to synapse {secrets.token_hex(3)}")
        await send_and_decrypt(bob, [alice], room_id, f"synapse to ieum {secrets.token_hex(3)}")
        await send_and_decrypt(alice, [bob], room_id, f"ieum again {secrets.token_hex(3)}")

        # alice logs in a second device on ieum; Synapse learns it through
        # m.device_list_update and bob encrypts his next message to both devices.
        changed_before = len(bob.changed)
        alice2 = await login_device(pair.ieum.base_url, alice_name, PASSWORD, "alice#2 (ieum)",
                                    tmp_path / "alice2")
        users.append(alice2)
        await bob.until(f"{alice.user_id} in device_lists.changed after her new device",
                        lambda u: alice.user_id in u.changed[changed_before:])
        await bob.housekeeping()

        def knows_alice2(user: E2EEUser):
            return user.client.device_store[alice.user_id].get(alice2.device_id)
        await bob.until(f"alice's new device {alice2.device_id} via /keys/query", knows_alice2)

        await alice2.until(f"the room {room_id}", lambda u: room_id in u.client.rooms
                           and u.client.rooms[room_id].encrypted)
        since = len(bob.client.exchanges)
        await send_and_decrypt(bob, [alice, alice2], room_id,
                               f"to both of alice's devices {secrets.token_hex(3)}")
        shared = session_shared_with(bob, room_id)
        for device in (alice, alice2):
            assert (alice.user_id, device.device_id) in shared, \
                f"bob's megolm session was not shared with {device}: {shared}"
        targets = to_device_targets(bob, since)
        assert (alice.user_id, alice2.device_id) in targets, \
            f"bob's /sendToDevice requests addressed {targets}"
    finally:
        await close_all(users)


@pytest.mark.asyncio
async def test_encrypted_messages_across_federation(federation_pair, tmp_path):
    await asyncio.wait_for(across_federation(federation_pair, tmp_path),
                           timeout=SCENARIO_TIMEOUT)


async def create_inviting_remote(pair: FederationPair, tmp_path) -> None:
    users: list[E2EEUser] = []
    try:
        alice_name = localpart("alice")
        register_ieum(pair.ieum, alice_name)
        bob_name = localpart("bob")
        register_synapse(pair.synapse, bob_name)
        alice = await login_device(pair.ieum.base_url, alice_name, PASSWORD, "alice (ieum)",
                                   tmp_path / "alice")
        users.append(alice)
        bob = await login_device(pair.synapse.base_url, bob_name, PASSWORD, "bob (synapse)",
                                 tmp_path / "bob")
        users.append(bob)
        room_id = await encrypted_room(alice, [bob], invite_in_create=True)
        await send_and_decrypt(alice, [bob], room_id, f"created with invite {secrets.token_hex(3)}")
    finally:
        await close_all(users)


@pytest.mark.asyncio
async def test_create_encrypted_room_inviting_remote_user(federation_pair, tmp_path):
    """How Element starts an encrypted DM: createRoom with the remote user in `invite`."""
    await asyncio.wait_for(create_inviting_remote(federation_pair, tmp_path),
                           timeout=SCENARIO_TIMEOUT)


# -- 4. device changes across federation, in both directions ------------------------------


async def device_changes_across_federation(pair: FederationPair, tmp_path,
                                           owner_on: str) -> None:
    """`owner` (two devices, one added then deleted) on owner_on; `peer` on the other server.

    The peer must see each change in device_lists.changed (carried by m.device_list_update),
    encrypt to the new device, and stop encrypting to the deleted one."""
    users: list[E2EEUser] = []
    owner_server = pair.ieum if owner_on == "ieum" else pair.synapse
    peer_server = pair.synapse if owner_on == "ieum" else pair.ieum
    try:
        names = {}
        for role, server in (("owner", owner_server), ("peer", peer_server)):
            names[role] = localpart(role)
            if server is pair.ieum:
                register_ieum(server, names[role])
            else:
                register_synapse(server, names[role])
        owner1 = await login_device(owner_server.base_url, names["owner"], PASSWORD,
                                    f"owner#1 ({owner_on})", tmp_path / "owner1")
        users.append(owner1)
        peer = await login_device(peer_server.base_url, names["peer"], PASSWORD,
                                  f"peer ({peer_server.name})", tmp_path / "peer")
        users.append(peer)
        if owner_on == "ieum":
            room_id = await encrypted_room(owner1, [peer], invite_in_create=False)
        else:
            room_id = await encrypted_room(peer, [owner1], invite_in_create=False)
        for user in users:
            await user.housekeeping()
        await send_and_decrypt(peer, [owner1], room_id, f"before {secrets.token_hex(3)}")
        await send_and_decrypt(owner1, [peer], room_id, f"reply {secrets.token_hex(3)}")

        # A new device of the owner: the peer's server must learn it over federation.
        changed_before = len(peer.changed)
        owner2 = await login_device(owner_server.base_url, names["owner"], PASSWORD,
                                    f"owner#2 ({owner_on})", tmp_path / "owner2")
        users.append(owner2)
        await peer.until(f"{owner1.user_id} in device_lists.changed after a new device",
                         lambda u: owner1.user_id in u.changed[changed_before:])
        await peer.housekeeping()
        await peer.until(f"the owner's new device {owner2.device_id} via /keys/query",
                         lambda u: u.client.device_store[owner1.user_id].get(owner2.device_id))
        await owner2.until(f"the room {room_id}", lambda u: room_id in u.client.rooms
                           and u.client.rooms[room_id].encrypted)
        await send_and_decrypt(peer, [owner1, owner2], room_id, f"to both {secrets.token_hex(3)}")
        shared = session_shared_with(peer, room_id)
        assert (owner1.user_id, owner2.device_id) in shared, \
            f"the peer's megolm session was not shared with the new device: {shared}"
        first_session = peer.client.olm.outbound_group_sessions[room_id].id

        # The owner deletes the new device: the peer must stop encrypting to it.
        changed_before = len(peer.changed)
        await delete_device(owner1, owner2.device_id)
        await peer.until(f"{owner1.user_id} in device_lists.changed after the deletion",
                         lambda u: owner1.user_id in u.changed[changed_before:])
        await peer.housekeeping()

        def marked_deleted(user: E2EEUser):
            device = user.client.device_store[owner1.user_id].get(owner2.device_id)
            return device is not None and device.deleted
        await peer.until(f"the owner's device {owner2.device_id} marked deleted by /keys/query",
                         marked_deleted)
        active = {d.id for d in peer.client.device_store.active_user_devices(owner1.user_id)}
        assert active == {owner1.device_id}, \
            f"the peer's active devices of the owner after the deletion: {active}, " \
            f"expected only {owner1.device_id}"
        since = len(peer.client.exchanges)
        body = f"to owner#1 only {secrets.token_hex(3)}"
        await send_and_decrypt(peer, [owner1], room_id, body)
        assert peer.client.olm.outbound_group_sessions[room_id].id != first_session, \
            "the peer did not rotate its megolm session after the owner's device list changed"
        shared = session_shared_with(peer, room_id)
        assert (owner1.user_id, owner2.device_id) not in shared, \
            f"the new session was shared with the deleted device {owner2.device_id}: {shared}"
        targets = to_device_targets(peer, since)
        assert (owner1.user_id, owner1.device_id) in targets, targets
        assert (owner1.user_id, owner2.device_id) not in targets, \
            f"the peer sent a to-device message to the deleted device: {targets}"
    finally:
        await close_all(users)


@pytest.mark.asyncio
@pytest.mark.parametrize("owner_on", ["ieum", "synapse"])
async def test_device_changes_across_federation(federation_pair, tmp_path, owner_on):
    await asyncio.wait_for(device_changes_across_federation(federation_pair, tmp_path, owner_on),
                           timeout=SCENARIO_TIMEOUT)
