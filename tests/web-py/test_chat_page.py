"""The chat page at `/` of `bitnet serve`, used in headless Chromium like a person would.

usage: .venv/bin/python -m pytest -q tests/web-py/test_chat_page.py   (scripts/test.sh runs it;
       needs scripts/setup-browser.sh)

Starts the server with an API key on the committed default model, opens the page, sends a
message without the key (a 401 is shown and the question is given back), enters the key,
sends again and waits (bounded) for the streamed answer and its tokens/s; a second turn is
stopped mid-stream. Writes the screenshot to target/web-chat.png.
"""
from __future__ import annotations

import http.client
import json
import re
import time

import pytest

from cdp import Browser, png_summary
from webtest_util import ROOT, Server, wait_until

KEY = "page-key"
ANSWER_TIMEOUT_S = 120
SCREENSHOT = ROOT / "target" / "web-chat.png"
SCREENSHOT_401 = ROOT / "target" / "web-chat-401.png"

STATE_JS = """(() => {
  const answers = [...document.querySelectorAll('.msg.assistant')];
  const last = answers[answers.length - 1];
  const err = document.getElementById('error');
  return {
    state: document.getElementById('composer').dataset.state,
    messages: document.querySelectorAll('.msg').length,
    answers: answers.length,
    text: last ? last.querySelector('.text').textContent : null,
    stats: last ? last.querySelector('.stats').textContent : null,
    done: last ? (last.dataset.done || null) : null,
    error: err.hidden ? null : err.textContent,
    input: document.getElementById('input').value,
    model: document.getElementById('model').textContent,
  };
})()"""


@pytest.fixture(scope="module")
def server():
    s = Server("-c", "4096", "--model-alias", "kjv", key=KEY)
    try:
        yield s
    finally:
        code = s.stop()
    assert code == 0, "".join(s.log)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


def save_screenshot(page, path, browser) -> None:
    """Writes a PNG of the page to `path` and checks that it is one, of the window's size,
    and not blank."""
    time.sleep(0.3)  # let the last layout settle before the picture
    png = page.screenshot()
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(png)
    w, h, colours = png_summary(png)
    assert (w, h) == (browser.width, browser.height)
    assert colours >= 16, f"{path} looks blank ({colours} colours)"


def state(page) -> dict:
    return page.eval(STATE_JS)


# Records when the answers' text changes (each streamed piece is appended to a Text node),
# however fast the server is: polling from here could miss the pieces of a quick answer.
WATCH_JS = """(() => {
  window.__pieces = [];
  new MutationObserver((ms) => {
    for (const m of ms) if (m.type === 'characterData') window.__pieces.push(performance.now());
  }).observe(document.getElementById('log'), {subtree: true, characterData: true});
})()"""


def wait_answer(page, answers: int) -> dict:
    """Waits until the `answers`-th answer has ended; returns the final state."""
    def finished():
        s = state(page)
        return s if s["state"] == "idle" and s["answers"] == answers and s["done"] else None

    return wait_until(finished, ANSWER_TIMEOUT_S, f"answer {answers} to finish", interval=0.02)


def chat_requests(page) -> list[dict]:
    return [r["request"] for r in page.events("Network.requestWillBeSent")
            if r["request"]["url"].endswith("/v1/chat/completions")]


def test_chat_page_streams_an_answer(server, browser):
    page = browser.new_page()
    page.navigate(server.url + "/")
    assert page.eval("document.title") == "bitnet chat"
    wait_until(lambda: state(page)["model"] == "API key needed (Settings)", 10,
               "the page to see that the server wants a key")

    # Without the key: the 401 is explained and the question is given back to be sent again.
    page.fill("#input", "In the beginning")
    page.click("#send")
    s = wait_until(lambda: (st := state(page))["error"] and st, 30, "the 401 error")
    assert s["error"].startswith("401") and "API key" in s["error"], s
    assert s["messages"] == 0 and s["input"] == "In the beginning" and s["state"] == "idle", s
    save_screenshot(page, SCREENSHOT_401, browser)

    # With the key typed into its field (kept in localStorage), a system prompt and settings.
    page.fill("#api-key", KEY)
    page.fill("#system", "You are a scribe of the King James Bible.")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "200")
    page.eval(WATCH_JS)
    page.click("#send")
    s = wait_answer(page, 1)
    assert s["error"] is None, s
    assert s["text"].strip(), s
    # The text arrived piece by piece, not at once at the end.
    pieces = page.eval("window.__pieces")
    assert len(pieces) >= 2 and pieces[-1] > pieces[0], pieces
    assert s["done"] in ("max tokens reached", "done"), s
    assert re.search(r"^\d+ tokens · \d+\.\d tokens/s · first token \d+ ms · ", s["stats"]), s
    tokens = int(s["stats"].split()[0])
    assert 1 <= tokens <= 200, s
    assert page.eval("localStorage.getItem('bitnet-chat.api-key')") == KEY
    wait_until(lambda: state(page)["model"] == "model: kjv", 10, "the model name")

    # A second turn, stopped while it streams (4000 tokens take seconds even at full speed).
    page.fill("#max-tokens", "4000")
    page.fill("#input", "And God said")
    page.click("#send")
    wait_until(lambda: (st := state(page))["answers"] == 2 and len(st["text"] or "") >= 20,
               ANSWER_TIMEOUT_S, "the second answer to get going")
    page.click("#stop")
    s = wait_until(lambda: (st := state(page))["state"] == "idle" and st, 10, "the stop")
    assert s["done"] == "stopped" and s["text"] and s["error"] is None, s
    assert re.search(r"tokens/s · first token \d+ ms · stopped$", s["stats"]), s
    # The server saw the client go away and cancelled the generation.
    wait_until(lambda: server.metrics().get("bitnet_requests_cancelled_total", 0) >= 1, 10,
               "the server to cancel the stopped request")

    # What the page sent: no key at first, then the key, and the whole conversation each time.
    reqs = chat_requests(page)
    assert len(reqs) == 3, reqs
    assert "Authorization" not in reqs[0]["headers"]
    assert all(r["headers"].get("Authorization") == f"Bearer {KEY}" for r in reqs[1:])
    first, second = (json.loads(r["postData"]) for r in reqs[1:])
    assert first["stream"] is True and first["temperature"] == 0 and first["max_tokens"] == 200
    answer1 = state_text(page, 0)
    assert second["messages"] == [
        {"role": "system", "content": "You are a scribe of the King James Bible."},
        {"role": "user", "content": "In the beginning"},
        {"role": "assistant", "content": answer1},
        {"role": "user", "content": "And God said"},
    ]

    save_screenshot(page, SCREENSHOT, browser)

    # "New conversation" empties the log.
    page.click("#reset")
    assert state(page)["messages"] == 0

    # Nothing went wrong in the page itself: no exceptions, no console errors, nothing
    # refused by the content security policy; the only failed load is the deliberate 401.
    assert page.events("Runtime.exceptionThrown") == []
    assert [e for e in page.events("Runtime.consoleAPICalled") if e["type"] in ("error", "warning")] == []
    logged = [e["entry"] for e in page.events("Log.entryAdded") if e["entry"]["level"] == "error"]
    assert all(e["source"] == "network" and "401" in e["text"] for e in logged), logged


def state_text(page, i: int) -> str:
    return page.eval(f"document.querySelectorAll('.msg.assistant .text')[{i}].textContent")


def test_chat_page_shows_a_full_queue(browser):
    """503 with Retry-After when the one sequence and the one queue place are taken."""
    s = Server("-c", "2048", "--parallel", "1", "--max-queue", "1")
    conns = []
    try:
        # Greedy on this prompt runs to max_tokens (no EOS): seconds even at full speed.
        body = json.dumps({"messages": [{"role": "user", "content": "In the beginning"}],
                           "max_tokens": 2000, "temperature": 0, "stream": True})
        # One after the other: the second must find the first admitted, not still queued.
        for want in ("bitnet_sequences_running", "bitnet_queue_waiting"):
            c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
            c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            conns.append(c)
            wait_until(lambda: s.metrics().get(want) == 1, 30, f"{want} to reach 1")
        assert s.metrics().get("bitnet_sequences_running") == 1
        page = browser.new_page()
        page.navigate(s.url + "/")
        page.fill("#input", "In the beginning")
        page.click("#send")
        st = wait_until(lambda: (x := state(page))["error"] and x, 30, "the 503 error")
        assert re.match(r"503 Service Unavailable: .*try again in \d+ s\.$", st["error"]), st
        assert st["messages"] == 0 and st["input"] == "In the beginning", st
    finally:
        for c in conns:
            c.close()
        code = s.stop()
    assert code == 0, "".join(s.log)
