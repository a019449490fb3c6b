"""Headless Chromium driven over the Chrome DevTools Protocol, with the standard library only.

Chromium is started with `--remote-debugging-pipe`: it reads protocol messages (JSON, each
ended by a NUL byte) on its fd 3 and writes its own on fd 4. No port, no WebSocket client,
nothing to pin. Pages are attached with `flatten`, so one pipe carries every session.

Chromium may reach nothing but 127.0.0.1: every other host name fails to resolve
(`--host-resolver-rules`), and the background services that phone home are off.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

CALL_TIMEOUT_S = 30


class CdpError(RuntimeError):
    pass


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    raise FileNotFoundError("no chromium: run scripts/setup-browser.sh")


class Browser:
    def __init__(self, profile_dir: Path, width: int = 1280, height: int = 800) -> None:
        self.width, self.height = width, height
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        flags = [
            "--headless", "--remote-debugging-pipe", f"--user-data-dir={profile_dir}",
            # CI runs as root, where Chromium's sandbox cannot start; the browser only ever
            # loads the page of the server the test started.
            "--no-sandbox",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-domain-reliability", "--no-pings",
            "--disable-client-side-phishing-detection", "--metrics-recording-only",
            "--disable-features=Translate,MediaRouter,OptimizationHints,DialMediaRouteProvider",
            "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            # Small containers have a small /dev/shm, which Chromium would otherwise fill.
            "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
            "--force-color-profile=srgb", "--lang=en-US", f"--window-size={width},{height}",
            "about:blank",
        ]
        # bash puts the pipe ends on the fds Chromium expects (3: commands in, 4: replies out).
        launcher = 'exec "$@" 3<&"$CDP_IN" 4>&"$CDP_OUT"'
        env = dict(os.environ, CDP_IN=str(to_chrome_r), CDP_OUT=str(from_chrome_w))
        self.proc = subprocess.Popen(
            ["bash", "-c", launcher, "chromium", chromium_path(), *flags],
            pass_fds=(to_chrome_r, from_chrome_w), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._closed = False
        threading.Thread(target=self._read_loop, daemon=True).start()
        self.call("Browser.getVersion")

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            with self._cond:
                for m in msgs:
                    msg = json.loads(m)
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = CALL_TIMEOUT_S) -> dict:
        with self._cond:
            self._next_id += 1
            mid = self._next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._w, data):]
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise CdpError(f"{method}: no reply ({'browser gone' if self._closed else 'timeout'})"
                                   f"\n{''.join(self.stderr[-20:])}")
                self._cond.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def new_page(self) -> "Page":
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, session)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except CdpError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)  # its own session: the renderers and the GPU process too
            self.proc.wait(10)
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": browser.width, "height": browser.height, "deviceScaleFactor": 1,
                   "mobile": False})

    def call(self, method: str, params: dict | None = None, timeout: float = CALL_TIMEOUT_S) -> dict:
        return self.browser.call(method, params, self.session, timeout)

    def events(self, method: str) -> list[dict]:
        with self.browser._lock:
            return [e["params"] for e in self.browser.events
                    if e.get("sessionId") == self.session and e["method"] == method]

    def eval(self, expression: str):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            raise CdpError(f"{expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def navigate(self, url: str, timeout: float = 30) -> None:
        self.call("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while self.eval(f"location.href === {json.dumps(url)} && document.readyState === 'complete'") is not True:
            if time.monotonic() > deadline:
                raise CdpError(f"{url} did not load within {timeout} s")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element (which must be visible)."""
        box = self.eval(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block: "nearest"}});
            const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2, r.width * r.height];
        }})()""")
        x, y, area = box
        if area <= 0:
            raise CdpError(f"{selector} is not visible")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                   "clickCount": 1})

    def fill(self, selector: str, text: str) -> None:
        """Clicks into a field, empties it, and types `text` (input events as from a keyboard;
        `change` fires when focus moves on)."""
        self.click(selector)
        self.eval(f"document.querySelector({json.dumps(selector)}).value = ''")
        self.call("Input.insertText", {"text": text})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])


def png_summary(data: bytes) -> tuple[int, int, int]:
    """Decodes an 8-bit RGB/RGBA PNG (what Chromium writes), checking every chunk's CRC;
    returns (width, height, number of distinct colours)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, idat, ihdr, seen_end = 8, bytearray(), None, False
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(ctype + body) == crc, f"bad CRC in {ctype!r}"
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat += body
        elif ctype == b"IEND":
            seen_end = True
            break
        pos += 12 + length
    assert ihdr and seen_end, "IHDR or IEND missing"
    w, h, depth, color, _, _, interlace = ihdr
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unexpected PNG format {ihdr}"
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = w * bpp
    assert len(raw) == h * (stride + 1), "image data has the wrong size"
    prev = bytearray(stride)
    colours = set()
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif f == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        else:
            assert f == 0, f"bad filter type {f}"
        colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp * 4))
        prev = line
    return w, h, len(colours)
