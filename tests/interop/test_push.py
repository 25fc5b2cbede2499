"""Scenario "push": a matrix-nio client sets an HTTP pusher pointing at a stub push gateway
(Python http.server on loopback) and another user mentions them; the gateway must receive
the notification within one second. Run against Synapse (the reference) and ieum.

Owns: the stub gateway, the Synapse instance that may push to loopback (Synapse refuses
outbound requests to 127.0.0.0/8 unless `ip_range_whitelist` allows it), the scenario.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nio
import pytest

from nioclient import RecordingClient, expect
from peers.process import ServerStartError, free_port
from peers.synapse import SynapseServer


class Gateway:
    """A push gateway stub on 127.0.0.1: records (arrival time, body) of every notify POST."""

    def __init__(self):
        self.received: queue.Queue = queue.Queue()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                received.put((time.monotonic(), self.path, parsed))
                answer = json.dumps({"rejected": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/_matrix/push/v1/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def push_synapse(request, tmp_path_factory):
    # Loopback is in Synapse's default outbound blocklist; the gateway lives there.
    extra = {"ip_range_whitelist": ["127.0.0.0/8"]}
    server = SynapseServer(free_port(), tmp_path_factory.mktemp("synapse-push"), extra_config=extra)
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(f"synapse failed to start:\n{exc}", pytrace=False)
    request.addfinalizer(server.stop)
    return server


@pytest.fixture(params=["synapse", "ieum"])
def push_server(request):
    if request.param == "synapse":
        return request.getfixturevalue("push_synapse")
    return request.getfixturevalue("ieum_server")


async def account(server, role: str) -> tuple[RecordingClient, str]:
    localpart = f"{role}-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(18)
    client = RecordingClient(server.base_url)
    expect(await client.register(localpart, password, device_name=role), nio.RegisterResponse,
           f"{role}: register")
    return client, f"@{localpart}:{server.server_name}"


@pytest.mark.asyncio
async def test_push_reaches_the_gateway_within_a_second(push_server):
    gateway = Gateway()
    alice, alice_id = await account(push_server, "alice")
    bob, _ = await account(push_server, "bob")
    try:
        created = expect(await alice.room_create(preset=nio.RoomPreset.public_chat), nio.RoomCreateResponse,
                         "alice: create a public room")
        room_id = created.room_id
        expect(await bob.join(room_id), nio.JoinResponse, "bob: join")

        pusher = {
            "kind": "http", "app_id": "org.example.interop", "pushkey": "interop-key",
            "app_display_name": "Interop", "device_display_name": "Test phone", "lang": "en",
            "data": {"url": gateway.url},
        }
        response = await alice.send(
            "POST", "/_matrix/client/v3/pushers/set", json.dumps(pusher),
            headers={"Authorization": f"Bearer {alice.access_token}", "Content-Type": "application/json"},
        )
        assert response.status == 200, f"pushers/set: {response.status} {await response.text()}"
        response = await alice.send(
            "GET", "/_matrix/client/v3/pushers", None,
            headers={"Authorization": f"Bearer {alice.access_token}"},
        )
        listed = await response.json()
        assert [p["pushkey"] for p in listed["pushers"]] == ["interop-key"], listed

        content = {"msgtype": "m.text", "body": f"{alice_id}: ping", "m.mentions": {"user_ids": [alice_id]}}
        sent_at = time.monotonic()
        sent = expect(await bob.room_send(room_id, "m.room.message", content), nio.RoomSendResponse,
                      "bob: mention alice")
        deadline = sent_at + 1.0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{push_server.name}: no push for {sent.event_id} within 1 s")
            try:
                arrived, path, body = gateway.received.get(timeout=remaining)
            except queue.Empty:
                pytest.fail(f"{push_server.name}: no push for {sent.event_id} within 1 s")
            notification = (body or {}).get("notification", {})
            if notification.get("event_id") == sent.event_id:
                break
        assert path == "/_matrix/push/v1/notify"
        assert arrived - sent_at < 1.0
        assert notification["room_id"] == room_id
        assert notification["devices"][0]["pushkey"] == "interop-key"
        assert notification["devices"][0]["app_id"] == "org.example.interop"
        assert notification["content"]["body"] == content["body"]
        assert notification["counts"]["unread"] >= 1
        assert notification["prio"] == "high"
    finally:
        await alice.close()
        await bob.close()
        gateway.close()
