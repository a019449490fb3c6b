"""Shared by the chat-page and nginx tests: start and stop `bitnet serve`, read its metrics.

The binary is BITNET_BIN, else target/debug/bitnet (which `cargo test` builds), else
target/release/bitnet. Every wait here has a deadline.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "bitnet-b1.58-kjv-i2_s.gguf"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 40


def binary() -> Path:
    if os.environ.get("BITNET_BIN"):
        return Path(os.environ["BITNET_BIN"])
    for p in (ROOT / "target" / "debug" / "bitnet", ROOT / "target" / "release" / "bitnet"):
        if p.exists():
            return p
    pytest.fail("no bitnet binary: build it with `cargo build -p bitnet-cli` or set BITNET_BIN")


def free_port() -> int:
    """A loopback port free right now (for processes that cannot be told to pick one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bitnet serve` on 127.0.0.1; `port=0` lets it pick one (read back from its stderr)."""

    def __init__(self, *extra: str, port: int = 0, key: str | None = None,
                 defaults: bool = True) -> None:
        """`defaults=False`: `extra` are all the arguments after `serve` (model, threads and
        port included)."""
        self.key = key
        base = ["-m", str(MODEL), "-t", "2", "--port", str(port)] if defaults else []
        cmd = [str(binary()), "serve", *base, *(["--api-key", key] if key else []), *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        found = threading.Event()
        self.url = ""

        def pump() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()
            found.set()  # it exited (stderr closed): no need to wait out the timeout

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(START_TIMEOUT_S) or not self.url:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail("server did not start:\n" + "".join(self.log))
        self.port = int(self.url.rsplit(":", 1)[1])

    def metrics(self) -> dict[str, float]:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        req = urllib.request.Request(f"{self.url}/metrics", headers=headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def terminate(self) -> None:
        """Sends SIGTERM (graceful: stop accepting, finish requests in flight, exit 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail("server did not stop on SIGTERM:\n" + "".join(self.log))

    def stop(self) -> int:
        self.terminate()
        return self.wait()

    def kill(self) -> None:
        """For clean-up after a failure: never leaves the process behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    """Polls `pred` until it returns something truthy (returned) or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
