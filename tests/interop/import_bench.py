"""Import throughput: `ieum-bridge import kakaotalk` of a generated export into ieum and
Synapse (same machine, same run), messages per second through the appservice API with
timestamp massaging. Run by scripts/bench-import (which prepares the interop venv).

    scripts/bench-import --messages 100000 --synapse-messages 5000

Synapse is slow enough that a 100,000-message import would take hours here, so it may be
given fewer messages (`--synapse-messages`): the rate is what is compared, and the table
says how many messages each server was given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers.ieum import IeumServer  # noqa: E402
from peers.process import free_port  # noqa: E402
from peers.synapse import SynapseServer  # noqa: E402
from test_bridge_import import write_registration  # noqa: E402


def run_import(kind: str, bridge: str, ieum: str, export: Path, messages: int, tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server_name = f"localhost:{port}"
    registration, _ = write_registration(tmp, server_name)
    # The bridge keeps its resume file next to the export: each run imports its own copy.
    own_export = tmp / export.name
    own_export.write_bytes(export.read_bytes())
    export = own_export
    if kind == "synapse":
        server = SynapseServer(port, tmp / "synapse", extra_config={"app_service_config_files": [str(registration)]})
    else:
        server = IeumServer(port, tmp / "ieum", binary=ieum, extra_env={
            "IEUM_APPSERVICES__REGISTRATIONS": json.dumps([str(registration)]),
            "RUST_LOG": "warn",
        })
    server.start()
    try:
        command = [bridge, "import", "kakaotalk", "--homeserver", server.base_url, "--registration",
                   str(registration), "--server-name", server_name, "--quiet", "--limit", str(messages), str(export)]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"{kind}: import failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return {"server": kind, "messages": messages, "seconds": round(seconds, 2),
                "msg_per_s": round(messages / seconds, 1), "summary": done.stdout.strip().splitlines()[-3:]}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000, help="messages imported into ieum")
    parser.add_argument("--synapse-messages", type=int, default=5_000, help="messages imported into Synapse")
    parser.add_argument("--skip-synapse", action="store_true")
    args = parser.parse_args()
    bridge, ieum = os.environ["IEUM_BRIDGE_BIN"], os.environ["IEUM_BIN"]
    with tempfile.TemporaryDirectory(prefix="ieum-import-bench-") as tmp:
        tmp = Path(tmp)
        export = tmp / "generated-kakaotalk.txt"
        biggest = max(args.messages, 0 if args.skip_synapse else args.synapse_messages)
        with export.open("w") as out:
            subprocess.run([bridge, "gen-kakaotalk", str(biggest)], stdout=out, check=True)
        results = [run_import("ieum", bridge, ieum, export, args.messages, tmp / "ieum-run")]
        if not args.skip_synapse:
            results.append(run_import("synapse", bridge, ieum, export, args.synapse_messages, tmp / "synapse-run"))
    print(f"machine: {os.cpu_count()} CPU(s), {platform.platform()}")
    print(f"ieum: {ieum}\nbridge: {bridge}")
    print(f"{'server':<8} {'messages':>9} {'seconds':>9} {'msg/s':>8}")
    for r in results:
        print(f"{r['server']:<8} {r['messages']:>9} {r['seconds']:>9} {r['msg_per_s']:>8}")
    if len(results) == 2:
        print(f"ieum vs synapse: {results[0]['msg_per_s'] / results[1]['msg_per_s']:.1f}x the rate")
    print(json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    main()
