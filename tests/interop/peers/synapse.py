"""Launcher for a real Synapse homeserver (SQLite) on loopback, used as the reference peer.

Owns: generating Synapse's config with `--generate-config`, rewriting it for tests
(loopback-only listeners, open registration without verification, no rate limits,
no outbound key servers, a registration shared secret), optionally a TLS
client+federation listener for the federation suite, starting/stopping the
process, and creating users through the shared-secret admin API.

Synapse must be importable by `python` (default: the interpreter running the
tests, i.e. the suite's venv).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .process import LOOPBACK, ServerProcess

# Every client-side rc_* rate limiter Synapse 1.163 reads (synapse/config/ratelimiting.py).
_RATE_LIMITERS = [
    "rc_message",
    "rc_registration",
    "rc_registration_token_validity",
    "rc_login.address",
    "rc_login.account",
    "rc_login.failed_attempts",
    "rc_admin_redaction",
    "rc_joins.local",
    "rc_joins.remote",
    "rc_joins_per_room",
    "rc_key_requests",
    "rc_3pid_validation",
    "rc_invites.per_room",
    "rc_invites.per_user",
    "rc_invites.per_issuer",
    "rc_third_party_invite",
    "rc_media_create",
    "rc_presence.per_user",
    "rc_delayed_event_mgmt",
    "rc_room_creation",
    "rc_reports",
    "rc_user_directory",
    "rc_profile",
]
_UNLIMITED = {"per_second": 100000, "burst_count": 1000000}

_LOG_CONFIG = """\
version: 1
formatters:
  precise:
    format: '%(asctime)s %(name)s %(levelname)s %(request)s %(message)s'
handlers:
  console:
    class: logging.StreamHandler
    formatter: precise
    stream: ext://sys.stderr
loggers:
  synapse.storage.SQL:
    level: WARNING
root:
  level: INFO
  handlers: [console]
disable_existing_loggers: false
"""


class SynapseServer(ServerProcess):
    """One Synapse process.

    port: plain-HTTP client listener on 127.0.0.1 (what test clients use).
    federation_port: if given, also a TLS listener (client + federation resources)
        on 127.0.0.1 with a self-signed certificate, and the server name becomes
        `localhost:<federation_port>` so federation peers reach it directly.
    extra_config: top-level keys applied last (e.g. {"default_room_version": "11"}); a
        mapping is merged into the same key's mapping (e.g. {"federation": {...}} only
        changes the settings it names).
    """

    name = "synapse"

    def __init__(
        self,
        port: int,
        tmpdir: str | os.PathLike,
        *,
        federation_port: int | None = None,
        server_name: str | None = None,
        extra_config: dict[str, Any] | None = None,
        python: str = sys.executable,
    ):
        super().__init__(port, tmpdir)
        self.federation_port = federation_port
        self._server_name = server_name or f"localhost:{federation_port or port}"
        self.extra_config = dict(extra_config or {})
        self.python = python
        self.config_path = self.tmpdir / "homeserver.yaml"
        self.data_dir = self.tmpdir / "data"
        self.shared_secret = secrets.token_hex(16)

    @property
    def server_name(self) -> str:
        return self._server_name

    # -- config -----------------------------------------------------------

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            subprocess.run(
                [
                    self.python, "-m", "synapse.app.homeserver",
                    "--server-name", self.server_name,
                    "--config-path", str(self.config_path),
                    "--data-directory", str(self.data_dir),
                    "--generate-config",
                    "--report-stats=no",
                ],
                cwd=self.tmpdir,
                check=True,
                capture_output=True,
            )
        # The generated file is loaded and rewritten rather than appended to: it
        # ends without a newline (an appended key would join its last comment
        # line) and already defines keys we override (listeners, secrets, ...).
        config = yaml.safe_load(self.config_path.read_text())
        config.update(self._test_settings())
        if self.federation_port is not None:
            config.update(self._federation_settings())
        for key, value in self.extra_config.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}  # e.g. a few `federation` settings
            else:
                config[key] = value
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _test_settings(self) -> dict[str, Any]:
        log_config = self.tmpdir / "log.config.yaml"
        log_config.write_text(_LOG_CONFIG)
        settings: dict[str, Any] = {
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": [LOOPBACK],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "log_config": str(log_config),
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "registration_shared_secret": self.shared_secret,
            "report_stats": False,
            "enable_metrics": False,
            # The default notary (matrix.org) is unreachable here.
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "url_preview_enabled": False,
        }
        for dotted in _RATE_LIMITERS:
            outer, _, inner = dotted.partition(".")
            if inner:
                settings.setdefault(outer, {})[inner] = dict(_UNLIMITED)
            else:
                settings[outer] = dict(_UNLIMITED)
        settings["rc_federation"] = {
            "window_size": 1000,
            "sleep_limit": 10000,
            "sleep_delay": 1,
            "reject_limit": 100000,
            "concurrent": 1000,
        }
        settings["federation_rr_transactions_per_room_per_second"] = 10000
        return settings

    def _federation_settings(self) -> dict[str, Any]:
        from synapse.config.server import DEFAULT_IP_RANGE_BLOCKLIST

        cert, key = self._self_signed_certificate()
        loopback = {"127.0.0.0/8", "::1/128"}
        return {
            "tls_certificate_path": str(cert),
            "tls_private_key_path": str(key),
            "listeners": self._test_settings()["listeners"] + [
                {
                    "port": self.federation_port,
                    "bind_addresses": [LOOPBACK],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [{"names": ["client", "federation"], "compress": False}],
                }
            ],
            "federation_verify_certificates": False,
            # The whitelist alone does not cover IP-literal server names: the
            # loopback ranges must also leave the blacklist.
            "ip_range_whitelist": sorted(loopback),
            "ip_range_blacklist": [r for r in DEFAULT_IP_RANGE_BLOCKLIST if r not in loopback],
            "federation": {
                "destination_min_retry_interval": "1s",
                "destination_max_retry_interval": "5s",
                "max_short_retry_delay": 500,  # ms; "500ms" does not parse
                "max_long_retry_delay": "2s",
            },
        }

    def _self_signed_certificate(self) -> tuple[Path, Path]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        import ipaddress

        cert_path = self.tmpdir / "tls.crt"
        key_path = self.tmpdir / "tls.key"
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def command(self) -> tuple[list[str], Path, dict[str, str]]:
        argv = [self.python, "-m", "synapse.app.homeserver", "--config-path", str(self.config_path)]
        # cwd must not be inside the synapse package (its `types` module would
        # shadow the standard library's).
        return argv, self.tmpdir, dict(os.environ)

    # -- admin helpers ----------------------------------------------------

    def register_user(self, localpart: str, password: str, admin: bool = False) -> dict:
        """Create a user via /_synapse/admin/v1/register (shared-secret HMAC)."""
        url = f"{self.base_url}/_synapse/admin/v1/register"
        with urllib.request.urlopen(url, timeout=10) as resp:
            nonce = json.loads(resp.read())["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([
            nonce.encode(), localpart.encode(), password.encode(),
            b"admin" if admin else b"notadmin",
        ]))
        body = json.dumps({
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }).encode()
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())
