"""ieum-bridge webhook against a real homeserver (issue 4): Slack-compatible incoming webhooks.

Owns the scenario: the registration is given to the server (as in test_bridge_import.py), a
normal user creates a room with an alias and invites the bridge bot, `ieum-bridge webhook add`
prints two hook URLs (one for the alias, one for the room id with a default display name),
`ieum-bridge webhook` serves them, and Slack payloads are POSTed with urllib (JSON, a form
with `payload=`, attachments, raw HTML that must arrive escaped). The user reads the room
back through `/messages`: bodies, formatted_body, m.mentions and the ghosts' display names.
A wrong secret is 404 `no_service`, a body over the limit 413, bad payloads 400; a removed
hook stops working while the server runs; the homeserver stopped is a 503 and its restart is
picked up; the log names hooks, never secrets.

The bridge binary comes from $IEUM_BRIDGE_BIN (default $CARGO_TARGET_DIR/debug/ieum-bridge).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from peers.process import free_port
from test_bridge_import import bridge_binary, call, q, register, start_server


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def post_json(url: str, payload) -> tuple[int, str]:
    return post(url, json.dumps(payload, ensure_ascii=False).encode())


def webhook_cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([bridge_binary(), "webhook", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"ieum-bridge webhook {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def messages(base: str, token: str, room_id: str) -> list[dict]:
    path = f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=f&limit=100"
    return [e for e in call(base, "GET", path, token)["chunk"] if e["type"] == "m.room.message"]


@pytest.mark.parametrize("kind", ["synapse", "ieum"])
def test_bridge_webhook(kind, tmp_path, request):
    server, registration = start_server(kind, tmp_path, request)
    base = server.base_url
    reader, token = register(base, "reader" + secrets.token_hex(3))
    bot = f"@bridgebot:{server.server_name}"
    alias_local = "alerts" + secrets.token_hex(3)
    room_id = call(base, "POST", "/_matrix/client/v3/createRoom", token,
                   {"preset": "private_chat", "name": "경보", "room_alias_name": alias_local,
                    "invite": [bot]})["room_id"]
    alias = f"#{alias_local}:{server.server_name}"

    hooks = tmp_path / "hooks.toml"
    port = free_port()
    listen = f"127.0.0.1:{port}"
    grafana_url = webhook_cli("add", "grafana", "--hooks", str(hooks), "--room", alias,
                              "--listen", listen).stdout.strip()
    assert grafana_url.startswith(f"http://{listen}/hooks/") and len(grafana_url.rsplit("/", 1)[1]) == 64
    nagios_url = webhook_cli("add", "nagios", "--hooks", str(hooks), "--room", room_id,
                             "--display-name", "Nagios", "--listen", listen).stdout.strip()
    listed = webhook_cli("list", "--hooks", str(hooks)).stdout
    assert listed.splitlines() == [f"grafana\t{alias}", f"nagios\t{room_id}\tdisplay name \"Nagios\""]
    grafana_secret = grafana_url.rsplit("/", 1)[1]
    assert grafana_secret not in hooks.read_text()

    log_path = tmp_path / "webhook.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [bridge_binary(), "webhook", "--registration", str(registration), "--homeserver", base,
         "--listen", listen, "--hooks", str(hooks), "--retry-for", "3"],
        stdout=log, stderr=subprocess.STDOUT)

    def stop():
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    request.addfinalizer(stop)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://{listen}/health", timeout=2) as resp:
                assert resp.read() == b"ok"
            break
        except (urllib.error.URLError, ConnectionError):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "ieum-bridge webhook did not start:\n" + log_path.read_text()
            time.sleep(0.1)

    # 1. JSON as a ghost named by `username`, mrkdwn, @room.
    alert = {"text": "*디스크* 사용률 95% <!here>\n<https://grafana.example/d/1?a=1&amp;b=2|대시보드> `web-1`",
             "username": "Grafana", "icon_emoji": ":fire:", "channel": "#ignored"}
    assert post_json(grafana_url, alert) == (200, "ok")
    # 2. A form with payload=, attachments, the hook's default display name.
    payload = {"attachments": [{"fallback": "CPU high", "color": "danger", "title": "CPU 높음",
                                "title_link": "https://nagios.example/host/web-1",
                                "text": "load _12.5_", "fields": [{"title": "Host", "value": "web-1"}]}]}
    form = urllib.parse.urlencode({"payload": json.dumps(payload, ensure_ascii=False)}).encode()
    assert post(nagios_url, form, "application/x-www-form-urlencoded") == (200, "ok")
    # 3. Raw HTML arrives escaped; no username and no default: the bridge bot posts.
    assert post_json(grafana_url, {"text": "<b>not bold</b> &lt;i&gt; & done"}) == (200, "ok")
    # 4. The same payload twice is two messages (Slack has no idempotency key).
    assert post_json(grafana_url, {"text": "repeat", "username": "Grafana"}) == (200, "ok")
    assert post_json(grafana_url, {"text": "repeat", "username": "Grafana"}) == (200, "ok")

    # Refusals: none of them posts anything.
    wrong = grafana_url.rsplit("/", 1)[0] + "/" + secrets.token_hex(32)
    assert post_json(wrong, {"text": "x"}) == (404, "no_service")
    assert post_json(grafana_url, {"text": "가" * 30000}) == (413, "request_too_large")
    assert post_json(grafana_url, {}) == (400, "no_text")
    assert post(grafana_url, b"{not json") == (400, "invalid_payload")
    assert post(grafana_url, b"text=hi", "application/x-www-form-urlencoded") == (400, "invalid_payload")

    events = messages(base, token, room_id)
    names = {e["state_key"]: e["content"].get("displayname")
             for e in call(base, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/members", token)["chunk"]}
    assert len(events) == 5, [e["content"] for e in events]
    first, second, third, fourth, fifth = events

    assert names[first["sender"]] == "Grafana"
    assert first["sender"].startswith("@bridge_webhook_")
    assert first["content"]["msgtype"] == "m.text"
    assert first["content"]["body"] == \
        "디스크 사용률 95% @room\n대시보드 (https://grafana.example/d/1?a=1&b=2) `web-1`"
    assert first["content"]["format"] == "org.matrix.custom.html"
    assert first["content"]["formatted_body"] == (
        "<strong>디스크</strong> 사용률 95% @room<br>"
        "<a href=\"https://grafana.example/d/1?a=1&amp;b=2\">대시보드</a> <code>web-1</code>")
    assert first["content"]["m.mentions"] == {"room": True}

    assert names[second["sender"]] == "Nagios"
    assert second["content"]["body"] == "CPU 높음 (https://nagios.example/host/web-1)\nload 12.5\nHost: web-1"
    assert second["content"]["formatted_body"] == (
        "<blockquote><strong><a href=\"https://nagios.example/host/web-1\">CPU 높음</a></strong><br>"
        "load <em>12.5</em><br><strong>Host</strong>: web-1</blockquote>")

    assert third["sender"] == bot
    assert third["content"]["body"] == "<b>not bold</b> <i> & done"
    assert third["content"]["formatted_body"] == "&lt;b&gt;not bold&lt;/b&gt; &lt;i&gt; &amp; done"

    assert fourth["sender"] == fifth["sender"] == first["sender"]
    assert fourth["content"]["body"] == fifth["content"]["body"] == "repeat"
    assert fourth["event_id"] != fifth["event_id"]

    # A removed hook stops working without a restart.
    webhook_cli("remove", "grafana", "--hooks", str(hooks))
    assert post_json(grafana_url, {"text": "after removal"}) == (404, "no_service")
    assert post_json(nagios_url, {"text": "still here"}) == (200, "ok")
    assert [e["content"]["body"] for e in messages(base, token, room_id)][-1] == "still here"

    # The homeserver down: 503 (the sender retries), never an `ok` for a message not stored;
    # back up: the same hook posts again.
    server.stop()
    started = time.monotonic()
    assert post_json(nagios_url, {"text": "while down"}) == (503, "homeserver_unavailable")
    assert time.monotonic() - started < 30
    server.start()
    assert post_json(nagios_url, {"text": "back up"}) == (200, "ok")
    bodies = [e["content"]["body"] for e in messages(base, token, room_id)]
    assert bodies[-2:] == ["still here", "back up"] and "while down" not in bodies

    # One log line per request, naming the hook, never a secret.
    text = log_path.read_text()
    assert text.count("webhook message posted") == 7, text
    assert "homeserver_unavailable" in text
    assert "hook=\"grafana\"" in text or "hook=grafana" in text, text
    assert "no_service" in text and "request_too_large" in text
    assert grafana_secret not in text and nagios_url.rsplit("/", 1)[1] not in text
