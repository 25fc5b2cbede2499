#!/usr/bin/env python3
"""Writes the benchmark's Synapse config (used by scripts/bench; owned by tests/load).

Reuses the interop suite's launcher (tests/interop/peers/synapse.py) for the test
settings — a plain-HTTP client listener on 127.0.0.1 only, open m.login.dummy
registration, every rate limit raised, no outbound key servers — and adds what the
benchmark chooses: the database (SQLite, or PostgreSQL on the private loopback cluster
the script runs), cheap password hashing for the setup phase (bcrypt_rounds: 4; no
measured request hashes a password), and for W4/W5/W8 a TLS federation listener (the
interop suite's federation settings: self-signed certificate, peers' certificates not
verified, loopback peers allowed) and the W8 appservice registration. Prints the path of
the written homeserver.yaml.

Run it with the Python of the venv Synapse is installed in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "interop"))

from peers.synapse import SynapseServer  # noqa: E402  (needs the path above)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="directory for config, keys and data")
    parser.add_argument("--port", required=True, type=int, help="client port on 127.0.0.1")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-port", type=int, help="PostgreSQL port on 127.0.0.1")
    parser.add_argument("--pg-user", default="synapse")
    parser.add_argument("--pg-database", default="synapse")
    parser.add_argument("--federation-port", type=int,
                        help="also serve federation over TLS (self-signed) on this port; the server "
                             "name stays localhost:<port>, peer certificates are not verified and "
                             "loopback peers are allowed (the interop suite's federation settings)")
    parser.add_argument("--appservice", action="append", default=[],
                        help="an appservice registration file (repeatable)")
    args = parser.parse_args()

    extra: dict = {"bcrypt_rounds": 4}
    if args.db == "postgres":
        if not args.pg_port:
            parser.error("--db postgres needs --pg-port")
        extra["database"] = {
            "name": "psycopg2",
            "args": {
                "user": args.pg_user,
                "dbname": args.pg_database,
                "host": "127.0.0.1",
                "port": args.pg_port,
                # Synapse's documented example pool size.
                "cp_min": 5,
                "cp_max": 10,
            },
        }
    if args.appservice:
        extra["app_service_config_files"] = list(args.appservice)
    server = SynapseServer(args.port, args.dir, extra_config=extra,
                           federation_port=args.federation_port, server_name=f"localhost:{args.port}")
    server.prepare()
    print(server.config_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
