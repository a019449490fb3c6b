"""The WebAssembly page (crates/bitnet-wasm/www, built by scripts/build-wasm.sh into
target/wasm32/site) in headless Chromium, used as a person would: it loads the default model in
a worker, a greedy generation streams into the page piece by piece and must equal the
transformers reference token for token, Stop ends a long generation, and a file that is not a
model is reported on the page. Writes the screenshot to target/wasm-page.png.

usage: .venv/bin/python -m pytest -q tests/web-py/test_wasm_page.py   (scripts/test-wasm.sh runs
       it; needs scripts/setup-browser.sh and scripts/build-wasm.sh)
"""
from __future__ import annotations

import functools
import http.server
import json
import threading
import time

import pytest

from cdp import Browser, png_summary
from webtest_util import ROOT, wait_until

SITE = ROOT / "target" / "wasm32" / "site"
SCREENSHOT = ROOT / "target" / "wasm-page.png"
REFERENCE = ROOT.parent / "shared" / "models" / "bitnet-b1.58-kjv" / "reference" / "reference.json"
LOAD_TIMEOUT_S = 60
GENERATE_TIMEOUT_S = 120

STATE_JS = """(() => ({
  state: document.body.dataset.state,
  isa: document.body.dataset.isa || null,
  pieces: Number(document.body.dataset.pieces || 0),
  tokens: document.body.dataset.tokens ? JSON.parse(document.body.dataset.tokens) : null,
  generated: document.getElementById('generated')?.textContent ?? null,
  status: document.getElementById('status').textContent,
  stats: document.getElementById('stats').textContent,
  error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
}))()"""


class Handler(http.server.SimpleHTTPRequestHandler):
    # Served as application/wasm, wasm-bindgen's loader compiles the module while it downloads.
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript"}

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site():
    if not (SITE / "pkg" / "bitnet_wasm_bg.wasm").exists():
        pytest.fail(f"{SITE} is not built: run scripts/build-wasm.sh")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(SITE)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


def reference() -> dict:
    prompts = json.loads(REFERENCE.read_text())["prompts"]
    return next(p for p in prompts if p["name"] == "in_the_beginning")


def state(page) -> dict:
    return page.eval(STATE_JS)


def wait_state(page, want: str, timeout: float) -> dict:
    def check():
        s = state(page)
        if s["state"] == "error" and want != "error":
            pytest.fail(f"the page shows an error: {s}")
        return s if s["state"] == want else None
    return wait_until(check, timeout, f"the page to be {want}")


def test_page_streams_the_reference_greedy_text(site, browser):
    ref = reference()
    page = browser.new_page()
    page.navigate(site + "/")
    assert page.eval("document.title") == "bitnet-rs in the browser"
    s = wait_state(page, "ready", LOAD_TIMEOUT_S)
    assert s["isa"] == "simd128", s
    assert "kernels simd128" in s["status"] and "vocabulary 4096" in s["status"], s

    page.fill("#prompt", ref["text"])
    page.fill("#max-tokens", "32")
    page.fill("#temperature", "0")
    # Record how the generated text grows, to see it arrive in pieces rather than at the end.
    page.eval("""window.__lengths = [];
        new MutationObserver(() => window.__lengths.push(
            document.getElementById('generated')?.textContent.length ?? 0))
        .observe(document.getElementById('output'), {childList: true, subtree: true, characterData: true});""")
    page.click("#generate")
    s = wait_state(page, "done", GENERATE_TIMEOUT_S)
    assert s["tokens"] == ref["greedy_new_token_ids"], s
    assert s["generated"] == ref["greedy_text"], s
    assert s["pieces"] > 10, s
    lengths = [n for n in page.eval("window.__lengths") if n > 0]
    assert len(set(lengths)) > 10, lengths
    assert s["stats"].startswith("4 prompt tokens") and "32 tokens generated" in s["stats"], s
    assert "finish: length" in s["stats"], s
    assert page.eval("document.querySelector('#output .prompt').textContent") == ref["text"]

    time.sleep(0.3)  # let the last layout settle before the picture
    png = page.screenshot()
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(png)
    w, h, colours = png_summary(png)
    assert (w, h) == (browser.width, browser.height)
    assert colours >= 16, f"{SCREENSHOT} looks blank ({colours} colours)"

    # Stop: a long generation is ended, and the model is loaded again, ready for the next one.
    page.fill("#max-tokens", "1000")
    page.click("#generate")
    wait_until(lambda: state(page)["pieces"] >= 5, GENERATE_TIMEOUT_S, "the long generation to stream")
    page.click("#stop")
    s = wait_state(page, "ready", LOAD_TIMEOUT_S)
    assert s["stats"] == "stopped" and len(s["generated"]) > 0, s

    assert page.events("Runtime.exceptionThrown") == []
    assert [e for e in page.events("Runtime.consoleAPICalled") if e["type"] in ("error", "warning")] == []


def test_page_reports_a_file_that_is_not_a_model(site, browser):
    page = browser.new_page()
    page.navigate(site + "/?model=index.html")
    s = wait_state(page, "error", LOAD_TIMEOUT_S)
    assert "gguf" in s["error"].lower(), s
    assert page.eval("document.getElementById('generate').disabled") is True
