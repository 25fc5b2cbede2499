"""Process plumbing shared by the homeserver launchers.

Owns: picking a free loopback port, running a server as a subprocess with its
output in a log file, waiting until its client API answers, stopping it
(SIGTERM, then SIGKILL) and reading the tail of its log for failure reports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class ServerStartError(RuntimeError):
    """The server process exited or never answered; the message holds its log tail."""


class ServerProcess:
    """A homeserver subprocess listening for clients on http://127.0.0.1:<port>.

    Subclasses prepare their config in `prepare()` and return the command line,
    working directory and environment from `command()`.
    """

    #: short name used in reports ("synapse", "ieum")
    name = "server"
    #: seconds to wait for /_matrix/client/versions after spawning
    startup_timeout = 60.0
    #: seconds to wait after SIGTERM before SIGKILL
    stop_timeout = 10.0

    def __init__(self, port: int, tmpdir: str | os.PathLike):
        self.port = port
        self.tmpdir = Path(tmpdir)
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.tmpdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    # -- to be provided by subclasses -------------------------------------

    @property
    def server_name(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files etc. Called once before the process is spawned."""

    def command(self) -> tuple[list[str], Path, dict[str, str]]:
        raise NotImplementedError

    # -- common behaviour -------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> "ServerProcess":
        self.prepare()
        argv, cwd, env = self.command()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> dict:
        """Poll GET /_matrix/client/versions until it answers 200 with JSON."""
        url = f"{self.base_url}/_matrix/client/versions"
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with status {self.proc.returncode} "
                    f"before answering {url}\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    body = json.loads(resp.read())
                    if resp.status == 200 and isinstance(body.get("versions"), list):
                        return body
                    last_error = f"HTTP {resp.status}: {body!r}"
            except (urllib.error.URLError, ConnectionError, OSError, ValueError) as exc:
                last_error = repr(exc)
            time.sleep(0.1)
        raise ServerStartError(
            f"{self.name} did not answer {url} within {self.startup_timeout:.0f}s "
            f"(last error: {last_error})\n{self.log_tail()}"
        )

    def stop(self) -> int | None:
        """Stop the process: SIGTERM, wait, then SIGKILL. Returns its exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        tail = text.splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
