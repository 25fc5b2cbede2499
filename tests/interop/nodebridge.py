"""The matrix-appservice-bridge process of the npm-based appservice scenario.

Owns: finding node and the npm packages tests/interop/run installed outside the clone
($IEUM_INTEROP_NODE_MODULES), starting tests/interop/node/bridge.js for one
registration on a loopback port, its line protocol (requests on stdin, `IEUM-IPC `
lines on stdout: answers by id, plus every event, ephemeral event and transaction the
framework saw, collected here in arrival order), waiting with deadlines, and stopping
it. Everything else the process prints goes to its log file, quoted on failures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
BRIDGE_JS = HERE / "node" / "bridge.js"
PREFIX = "IEUM-IPC "


class NodeBridgeUnavailable(RuntimeError):
    """node or the npm packages are missing (the message says how to get them)."""


class BridgeCallError(AssertionError):
    """An operation of the bridge failed; `error` is what the framework reported
    (message, and for homeserver answers `status`, `errcode`, `body`)."""

    def __init__(self, op: str, args: dict, error: dict, log_tail: str):
        self.op = op
        self.error = error
        super().__init__(f"bridge {op} {json.dumps(args)} failed: {json.dumps(error)[:2000]}"
                         f"\n--- bridge log tail ---\n{log_tail}")

    @property
    def outcome(self) -> list:
        """[status, errcode] of the homeserver's answer (None where there was none)."""
        return [self.error.get("status"), self.error.get("errcode")]


def node_modules() -> str:
    path = os.environ.get("IEUM_INTEROP_NODE_MODULES", "").strip()
    if not path:
        problem = os.environ.get("IEUM_INTEROP_NODE_ERROR")
        raise NodeBridgeUnavailable(
            problem or "IEUM_INTEROP_NODE_MODULES is not set: run the suite through "
                       "tests/interop/run, which installs tests/interop/node with npm")
    if not Path(path, "matrix-appservice-bridge", "package.json").is_file():
        raise NodeBridgeUnavailable(f"{path} has no matrix-appservice-bridge: "
                                    "remove it and run tests/interop/run again")
    return path


class NodeBridge:
    def __init__(self, registration: Path, homeserver_url: str, domain: str, port: int,
                 log_path: Path):
        self.args = [str(registration), homeserver_url, domain, str(port)]
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.events: list[dict] = []      # onEvent, in arrival order
        self.ephemeral: list[dict] = []   # onEphemeralEvent
        self.txns: list[dict] = []        # each transaction request
        self.ready: dict | None = None
        self._answers: dict[int, dict] = {}
        self._next_id = 0
        self._cond = threading.Condition()
        self._fatal: dict | None = None
        self._log = None

    # -- process ------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> dict:
        node = shutil.which("node")
        if not node:
            raise NodeBridgeUnavailable("node is not installed (tests/interop/run installs it)")
        env = dict(os.environ, NODE_PATH=node_modules(), NODE_NO_WARNINGS="1")
        self._log = open(self.log_path, "a", buffering=1)
        self.proc = subprocess.Popen([node, str(BRIDGE_JS), *self.args], env=env, cwd=HERE,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True, name="node-bridge-reader").start()
        self.wait("the bridge to listen", lambda: self.ready, timeout)
        return self.ready

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            if not line.startswith(PREFIX):
                self._log.write(line)
                continue
            try:
                msg = json.loads(line[len(PREFIX):])
            except ValueError:
                self._log.write(f"(unparsable protocol line) {line}")
                continue
            with self._cond:
                if "id" in msg:
                    self._answers[msg["id"]] = msg
                elif "event" in msg:
                    self.events.append(msg["event"])
                elif "ephemeral" in msg:
                    self.ephemeral.append(msg["ephemeral"])
                elif "txn" in msg:
                    self.txns.append(msg["txn"])
                elif "ready" in msg:
                    self.ready = msg["ready"]
                elif "fatal" in msg:
                    self._fatal = msg["fatal"]
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the bridge exits when stdin closes
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self._log:
            self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- protocol -------------------------------------------------------------------

    def wait(self, what: str, found: Callable[[], Any], timeout: float) -> Any:
        """Wait until found() is truthy (checked whenever the bridge reports something)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = found()
                if value:
                    return value
                if self._fatal is not None:
                    raise AssertionError(f"the bridge failed: {json.dumps(self._fatal)}\n"
                                         f"--- bridge log tail ---\n{self.log_tail()}")
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"waiting for {what}: the bridge exited with status "
                                         f"{self.proc.returncode}\n--- bridge log tail ---\n"
                                         f"{self.log_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what}: not within {timeout:.0f}s\n"
                                         f"--- bridge log tail ---\n{self.log_tail()}")
                self._cond.wait(min(left, 0.5))

    def call(self, op: str, timeout: float = 20.0, **args) -> Any:
        """Run one operation in the bridge; its result, or BridgeCallError."""
        with self._cond:
            self._next_id += 1
            call_id = self._next_id
        line = json.dumps({"id": call_id, "op": op, **args})
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise AssertionError(f"bridge {op}: cannot write to the bridge ({exc})\n"
                                 f"--- bridge log tail ---\n{self.log_tail()}") from None
        answer = self.wait(f"the bridge's answer to {op} {json.dumps(args)}",
                           lambda: self._answers.pop(call_id, None), timeout)
        if not answer.get("ok"):
            raise BridgeCallError(op, args, answer.get("error") or {}, self.log_tail())
        return answer.get("result")

    def outcome(self, op: str, **args) -> list:
        """[status, errcode] of an operation ([200, None] if it succeeded)."""
        try:
            self.call(op, **args)
        except BridgeCallError as exc:
            return exc.outcome
        return [200, None]
