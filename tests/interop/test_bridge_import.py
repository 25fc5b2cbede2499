"""ieum-bridge legacy imports against a real homeserver (issue 4).

Owns the scenarios: an appservice registration is written and given to the server
(Synapse: `app_service_config_files`; ieum: `IEUM_APPSERVICES__REGISTRATIONS`, wired by the
owner), `ieum-bridge import kakaotalk <fixture>` replays a KakaoTalk export, and a normal
user reads the room back through `/messages`: count, order, senders (display names),
`origin_server_ts` and text match the source; a second run adds nothing; a run killed
mid-way resumes without duplicates or gaps.

The bridge binary comes from $IEUM_BRIDGE_BIN (default $CARGO_TARGET_DIR/debug/ieum-bridge).
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from peers.ieum import IeumBinaryMissing, IeumServer, ieum_binary
from peers.process import ServerStartError, free_port
from peers.synapse import SynapseServer

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "appservices" / "tests" / "fixtures"
KST = datetime.timezone(datetime.timedelta(hours=9))


def bridge_binary() -> str:
    path = os.environ.get("IEUM_BRIDGE_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", str(REPO / "target")), "debug", "ieum-bridge")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"ieum-bridge binary {path!r} not found: build it with "
                    "`cargo build -p ieum-appservices --bin ieum-bridge` or set IEUM_BRIDGE_BIN",
                    pytrace=False)
    return path


def write_registration(directory: Path, server_name: str) -> tuple[Path, str]:
    as_token = "as_" + secrets.token_hex(16)
    regex = "@bridge_.*:" + server_name.replace(".", "\\\\.")
    path = directory / "bridge-registration.yaml"
    path.write_text(
        "id: ieum-bridge-test\n"
        "url: null\n"
        f"as_token: {as_token}\n"
        f"hs_token: hs_{secrets.token_hex(16)}\n"
        "sender_localpart: bridgebot\n"
        "rate_limited: false\n"
        "namespaces:\n"
        "  users:\n"
        "    - exclusive: true\n"
        f"      regex: \"{regex}\"\n"
        "  aliases: []\n"
        "  rooms: []\n"
    )
    return path, as_token


def start_server(kind: str, tmp: Path, request) -> tuple[object, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server_name = f"localhost:{port}"
    registration, _ = write_registration(tmp, server_name)
    if kind == "synapse":
        server = SynapseServer(port, tmp / "synapse",
                               extra_config={"app_service_config_files": [str(registration)]})
    else:
        try:
            binary = ieum_binary()
        except IeumBinaryMissing as exc:
            pytest.fail(str(exc), pytrace=False)
        server = IeumServer(port, tmp / "ieum", binary=binary, extra_env={
            "IEUM_APPSERVICES__REGISTRATIONS": json.dumps([str(registration)]),
        })
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(f"{kind} failed to start:\n{exc}", pytrace=False)
    request.addfinalizer(server.stop)
    return server, registration


def call(base: str, method: str, path: str, token: str | None = None, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None


def register(base: str, username: str) -> tuple[str, str]:
    body = {"username": username, "password": "pw-" + secrets.token_hex(8), "inhibit_login": False}
    req = urllib.request.Request(base + "/_matrix/client/v3/register", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            out = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        assert exc.code == 401, exc.read()
        session = json.loads(exc.read()).get("session")
        body["auth"] = {"type": "m.login.dummy", "session": session}
        out = call(base, "POST", "/_matrix/client/v3/register", body=body)
    return out["user_id"], out["access_token"]


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def read_room(base: str, token: str, room_id: str) -> tuple[list[dict], dict[str, str]]:
    """All m.room.message events oldest first, and display names from member state."""
    events, frm = [], None
    while True:
        path = f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=f&limit=500"
        if frm:
            path += f"&from={q(frm)}"
        page = call(base, "GET", path, token)
        chunk = page.get("chunk", [])
        events.extend(e for e in chunk if e["type"] == "m.room.message")
        frm = page.get("end")
        if not chunk or not frm:
            break
    names = {}
    for e in call(base, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/members", token)["chunk"]:
        names[e["state_key"]] = e["content"].get("displayname") or ""
    return events, names


def run_bridge(server, registration: Path, files: list[Path], *extra: str, check=True, retry_for="20",
               **popen):
    argv = [bridge_binary(), "import", "kakaotalk", *map(str, files),
            "--homeserver", server.base_url, "--registration", str(registration),
            "--server-name", server.server_name, "--retry-for", retry_for, *extra]
    if popen:
        return subprocess.Popen(argv, **popen)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"ieum-bridge failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def kst_ms(y, mo, d, h, mi) -> int:
    return int(datetime.datetime(y, mo, d, h, mi, tzinfo=KST).timestamp() * 1000)


# What kakao_android_ko.txt holds: (sender display name or None for system lines, ts, text).
EXPECTED = [
    (None, kst_ms(2015, 7, 9, 20, 34) + 0, "박영우님이 김민기님과 강수지님을 초대했습니다."),
    ("박영우", kst_ms(2015, 7, 9, 20, 34) + 1, "안녕하세요 다들 반갑습니다"),
    ("김민기", kst_ms(2015, 7, 9, 20, 34) + 2, "네 안녕하세요!"),
    ("회원님", kst_ms(2015, 7, 9, 20, 44), "네 맞아요\n내일 회의는 10시입니다\n\n장소는 3층 회의실"),
    ("강수지", kst_ms(2015, 7, 14, 21, 0), "<사진>"),
    ("강수지", kst_ms(2015, 7, 14, 21, 1), "자료 올렸습니다 : 확인 부탁드려요"),
    ("박영우", kst_ms(2015, 7, 15, 0, 5), "늦은 시간 죄송합니다"),
    (None, kst_ms(2015, 7, 15, 9, 10), "김민기님이 나갔습니다."),
]


@pytest.mark.parametrize("kind", ["synapse", "ieum"])
def test_bridge_import_kakaotalk(kind, tmp_path, request):
    server, registration = start_server(kind, tmp_path, request)
    base = server.base_url
    reader, token = register(base, "reader" + secrets.token_hex(3))
    export = tmp_path / "kakao_android_ko.txt"
    shutil.copy(FIXTURES / "kakao_android_ko.txt", export)

    run_bridge(server, registration, [export], "--invite", reader, "--quiet")
    progress = json.loads((tmp_path / "kakao_android_ko.txt.ieum-import.json").read_text())
    (conv,) = progress["conversations"].values()
    room_id = conv["room_id"]
    assert conv["next_index"] == len(EXPECTED)
    call(base, "POST", f"/_matrix/client/v3/join/{q(room_id)}", token, {})
    events, names = read_room(base, token, room_id)
    bot = f"@bridgebot:{server.server_name}"
    seen = [(None if e["sender"] == bot else names.get(e["sender"]), e["origin_server_ts"], e["content"]["body"])
            for e in events]
    assert seen == EXPECTED
    kinds = [e["content"]["msgtype"] for e in events]
    assert kinds == ["m.notice", "m.text", "m.text", "m.text", "m.notice", "m.text", "m.text", "m.notice"]
    senders = {e["sender"] for e in events if e["sender"] != bot}
    assert all(s.startswith("@bridge_kakao_") for s in senders) and len(senders) == 4
    name = call(base, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.name/", token)
    assert name["name"] == "박영우, 김민기, 강수지"

    # A second run adds nothing.
    again = run_bridge(server, registration, [export], "--quiet")
    assert "0 messages sent" in again.stdout, again.stdout
    assert len(read_room(base, token, room_id)[0]) == len(EXPECTED)

    # Progress lost (reset to the start of the same room): every message is sent again with
    # the same transaction id, and the homeserver answers with the events it already has.
    progress_path = tmp_path / "kakao_android_ko.txt.ieum-import.json"
    progress = json.loads(progress_path.read_text())
    (conv,) = progress["conversations"].values()
    conv["next_index"] = 0
    progress_path.write_text(json.dumps(progress))
    resent = run_bridge(server, registration, [export], "--quiet")
    assert f"{len(EXPECTED)} messages sent" in resent.stdout, resent.stdout
    events_after, _ = read_room(base, token, room_id)
    assert [e["event_id"] for e in events_after] == [e["event_id"] for e in events]


@pytest.mark.parametrize("kind", ["synapse", "ieum"])
def test_bridge_import_killed_midway_resumes(kind, tmp_path, request):
    server, registration = start_server(kind, tmp_path, request)
    base = server.base_url
    reader, token = register(base, "reader" + secrets.token_hex(3))
    n = 600
    export = tmp_path / "generated.txt"
    export.write_text(subprocess.run([bridge_binary(), "gen-kakaotalk", str(n)], capture_output=True,
                                     text=True, check=True).stdout)
    progress_path = tmp_path / "generated.txt.ieum-import.json"
    proc = run_bridge(server, registration, [export], "--invite", reader, "--quiet",
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        if progress_path.exists():
            try:
                (conv,) = json.loads(progress_path.read_text())["conversations"].values()
            except (ValueError, KeyError):
                conv = {}
            if conv.get("next_index", 0) >= 100:
                # Progress is saved every 100 messages: kill between two saves, so the
                # re-run also re-sends messages the homeserver already has.
                time.sleep(1.0)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = conv["next_index"]
                break
        time.sleep(0.02)
    assert killed_at is not None and killed_at < n, "the import finished before it could be interrupted"

    done = run_bridge(server, registration, [export], "--quiet")
    assert "already imported" in done.stdout
    (conv,) = json.loads(progress_path.read_text())["conversations"].values()
    assert conv["next_index"] == n
    call(base, "POST", f"/_matrix/client/v3/join/{q(conv['room_id'])}", token, {})
    events, _ = read_room(base, token, conv["room_id"])
    numbers = [int(e["content"]["body"].rsplit("#", 1)[1]) for e in events]
    assert numbers == list(range(n)), f"killed at {killed_at}: gaps or duplicates"
    ts = [e["origin_server_ts"] for e in events]
    assert ts == sorted(ts) and len(set(ts)) == n


def slack_zip(path: Path) -> None:
    import zipfile
    members = {
        "users.json": [{"id": "U01", "name": "minki", "real_name": "Kim Minki", "profile": {"display_name": "김민기"}},
                       {"id": "U02", "name": "suji", "real_name": "Kang Suji", "profile": {"display_name": ""}}],
        "channels.json": [{"id": "C01", "name": "general", "members": ["U01", "U02"]}],
        "dms.json": [],
        "general/2020-01-01.json": [
            {"type": "message", "user": "U01", "text": "회의 자료 봐주세요 <@U02>", "ts": "1577836860.000200",
             "thread_ts": "1577836860.000200",
             "reactions": [{"name": "+1", "users": ["U02"], "count": 1}]},
            {"type": "message", "user": "U02", "text": "확인했습니다", "ts": "1577836920.123456",
             "thread_ts": "1577836860.000200", "edited": {"user": "U02", "ts": "1577837000.000000"}},
        ],
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, value in members.items():
            z.writestr(name, json.dumps(value, ensure_ascii=False))


def all_events(base: str, token: str, room_id: str) -> list[dict]:
    out, frm = [], None
    while True:
        path = f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=f&limit=500" + (f"&from={q(frm)}" if frm else "")
        page = call(base, "GET", path, token)
        out.extend(page.get("chunk", []))
        frm = page.get("end")
        if not page.get("chunk") or not frm:
            return out


@pytest.mark.parametrize("kind", ["synapse", "ieum"])
def test_bridge_import_slack_and_mbox(kind, tmp_path, request):
    server, registration = start_server(kind, tmp_path, request)
    base = server.base_url
    reader, token = register(base, "reader" + secrets.token_hex(3))
    common = ["--homeserver", base, "--registration", str(registration), "--server-name", server.server_name,
              "--invite", reader, "--quiet", "--retry-for", "20"]

    export = tmp_path / "slack.zip"
    slack_zip(export)
    proc = subprocess.run([bridge_binary(), "import", "slack", str(export), *common], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (conv,) = json.loads((tmp_path / "slack.zip.ieum-import.json").read_text())["conversations"].values()
    call(base, "POST", f"/_matrix/client/v3/join/{q(conv['room_id'])}", token, {})
    events = all_events(base, token, conv["room_id"])
    msgs = [e for e in events if e["type"] == "m.room.message"]
    assert [m["content"]["body"] for m in msgs] == ["회의 자료 봐주세요 @Kang Suji", "확인했습니다"]
    assert [m["origin_server_ts"] for m in msgs] == [1577836860000, 1577836920123]
    root, reply = msgs
    assert reply["content"]["m.relates_to"]["rel_type"] == "m.thread"
    assert reply["content"]["m.relates_to"]["event_id"] == root["event_id"]
    assert "matrix.to/#/@bridge_slack_" in root["content"]["formatted_body"]
    assert reply["content"]["ieum.import"]["edited_ts"] == 1577837000000
    (reaction,) = [e for e in events if e["type"] == "m.reaction"]
    assert reaction["content"]["m.relates_to"] == {"rel_type": "m.annotation", "event_id": root["event_id"], "key": "👍"}
    assert reaction["sender"] == reply["sender"]

    mbox = tmp_path / "mail.mbox"
    shutil.copy(FIXTURES / "mail.mbox", mbox)
    proc = subprocess.run([bridge_binary(), "import", "mbox", str(mbox), *common], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (conv,) = json.loads((tmp_path / "mail.mbox.ieum-import.json").read_text())["conversations"].values()
    call(base, "POST", f"/_matrix/client/v3/join/{q(conv['room_id'])}", token, {})
    msgs = [e for e in all_events(base, token, conv["room_id"]) if e["type"] == "m.room.message"]
    assert [m["content"]["msgtype"] for m in msgs] == ["m.text", "m.file", "m.text", "m.text", "m.text"]
    assert msgs[0]["content"]["body"].startswith("2025년 예산 협의\n\n안녕하세요")
    assert msgs[1]["content"]["body"] == "budget.xls" and msgs[1]["content"]["url"].startswith("mxc://")
    server_name, media_id = msgs[1]["content"]["url"][len("mxc://"):].split("/", 1)
    req = urllib.request.Request(f"{base}/_matrix/client/v1/media/download/{server_name}/{media_id}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.read() == b"PK fake xlsx bytes \x00\x01\x02 budget"
    thread = [m for m in msgs[2:4]]
    assert all(m["content"]["m.relates_to"]["event_id"] == msgs[0]["event_id"] for m in thread)
    assert "m.relates_to" not in msgs[4]["content"]


@pytest.mark.parametrize("kind", ["synapse", "ieum"])
def test_bridge_import_homeserver_down_midway(kind, tmp_path, request):
    """The homeserver restarts mid-import: the bridge retries with back-off and finishes; a
    homeserver that stays down ends the run with a clear error, and a re-run completes."""
    server, registration = start_server(kind, tmp_path, request)
    base = server.base_url
    reader, token = register(base, "reader" + secrets.token_hex(3))
    n = 400
    export = tmp_path / "generated.txt"
    export.write_text(subprocess.run([bridge_binary(), "gen-kakaotalk", str(n)], capture_output=True,
                                     text=True, check=True).stdout)
    progress_path = tmp_path / "generated.txt.ieum-import.json"
    proc = subprocess.Popen(
        [bridge_binary(), "import", "kakaotalk", str(export), "--homeserver", base,
         "--registration", str(registration), "--server-name", server.server_name,
         "--invite", reader, "--quiet", "--retry-for", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    restarted = False
    while time.monotonic() < deadline and proc.poll() is None:
        if progress_path.exists():
            try:
                (conv,) = json.loads(progress_path.read_text())["conversations"].values()
            except (ValueError, KeyError):
                conv = {}
            if conv.get("next_index", 0) >= 100:
                server.stop()
                time.sleep(2)
                server.start()
                restarted = True
                break
        time.sleep(0.02)
    assert restarted, "the import finished before the homeserver could be stopped"
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    (conv,) = json.loads(progress_path.read_text())["conversations"].values()
    call(base, "POST", f"/_matrix/client/v3/join/{q(conv['room_id'])}", token, {})
    events, _ = read_room(base, token, conv["room_id"])
    numbers = [int(e["content"]["body"].rsplit("#", 1)[1]) for e in events]
    # No gaps, in order. A request in flight when the server went down may have been stored
    # without its answer arriving; Synapse keeps appservice transaction ids in memory only, so
    # its retry after the restart can store it a second time (at most that one message).
    assert sorted(set(numbers)) == list(range(n))
    assert len(numbers) - n <= 1, f"{len(numbers) - n} duplicates"
    assert numbers == sorted(numbers)

    # Down for good: a clear error within --retry-for, then a re-run after the restart works.
    server.stop()
    small = tmp_path / "kakao_android_ko.txt"
    shutil.copy(FIXTURES / "kakao_android_ko.txt", small)
    started = time.monotonic()
    failed = run_bridge(server, registration, [small], "--quiet", retry_for="3", check=False)
    assert failed.returncode != 0
    assert "did not answer" in failed.stderr and "re-run the same command to resume" in failed.stderr, failed.stderr
    assert time.monotonic() - started < 60
    server.start()
    run_bridge(server, registration, [small], "--quiet")
    (conv,) = json.loads((tmp_path / "kakao_android_ko.txt.ieum-import.json").read_text())["conversations"].values()
    assert conv["next_index"] == len(EXPECTED)
