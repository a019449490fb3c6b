"""The official `openai` Python client against `bitnet serve` on 127.0.0.1.

usage: .venv/bin/python -m pytest -q tests/server-py        (scripts/test.sh runs it)

Starts the `bitnet` binary (BITNET_BIN, else target/debug/bitnet, which `cargo test` builds,
else target/release/bitnet) on the committed default model with --port 0, reads the bound
address from its stderr, and stops it with SIGTERM at the end, which must exit 0.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "bitnet-b1.58-kjv-i2_s.gguf"
KEY = "test-key"
PROMPT = "In the beginning"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def binary() -> Path:
    if os.environ.get("BITNET_BIN"):
        return Path(os.environ["BITNET_BIN"])
    for p in (ROOT / "target" / "debug" / "bitnet", ROOT / "target" / "release" / "bitnet"):
        if p.exists():
            return p
    pytest.fail("no bitnet binary: build it with `cargo build -p bitnet-cli` or set BITNET_BIN")


class Server:
    def __init__(self, *extra: str) -> None:
        cmd = [str(binary()), "serve", "-m", str(MODEL), "-t", "2", "--port", "0",
               "--api-key", KEY, "--model-alias", "kjv", *extra]
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

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(START_TIMEOUT_S):
            self.proc.kill()
            pytest.fail("server did not start:\n" + "".join(self.log))
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0,
                                    timeout=60)

    def metrics(self) -> dict[str, float]:
        req = urllib.request.Request(f"{self.url}/metrics",
                                     headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def wait_metric(self, name: str, pred, what: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if pred(self.metrics().get(name, -1)):
                return
            time.sleep(0.02)
        pytest.fail(f"{what}: {name} = {self.metrics().get(name)}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("server did not stop on SIGTERM:\n" + "".join(self.log))


@pytest.fixture(scope="module")
def server():
    s = Server("-c", "1024", "--max-body-bytes", "65536")
    yield s
    assert s.stop() == 0, "".join(s.log)


@pytest.fixture(scope="module")
def greedy_run() -> str:
    """What `bitnet run --greedy -n 32` prints after the prompt."""
    out = subprocess.run([str(binary()), "run", "-m", str(MODEL), "-t", "2", "--greedy",
                          "-n", "32", "--no-echo", "-q", "-p", PROMPT],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.endswith("\n")
    return out.stdout[:-1]


def test_models(server):
    assert [m.id for m in server.client.models.list()] == ["kjv"]


def test_completion_matches_bitnet_run(server, greedy_run):
    r = server.client.completions.create(model="kjv", prompt=PROMPT, max_tokens=32,
                                         temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text == greedy_run
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 32
    assert r.usage.total_tokens == r.usage.prompt_tokens + 32
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_streaming_completion(server, greedy_run):
    stream = server.client.completions.create(model="kjv", prompt=PROMPT, max_tokens=32,
                                              temperature=0, stream=True,
                                              stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == greedy_run
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 32
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])


def test_chat_and_streaming_chat(server):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Who is the Lord?"}]
    r = server.client.chat.completions.create(model="kjv", messages=messages, max_tokens=12,
                                              temperature=0)
    assert r.object == "chat.completion"
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content
    assert r.usage.completion_tokens <= 12
    stream = server.client.chat.completions.create(model="kjv", messages=messages,
                                                   max_completion_tokens=12, temperature=0,
                                                   stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == msg.content
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens


def test_stop_and_max_tokens(server, greedy_run):
    r = server.client.completions.create(model="kjv", prompt=PROMPT, max_tokens=32,
                                         temperature=0, stop=["his people", "nowhere"])
    assert r.choices[0].text == greedy_run[: greedy_run.index("his people")]
    assert r.choices[0].finish_reason == "stop"
    r = server.client.completions.create(model="kjv", prompt=PROMPT, max_tokens=3,
                                         temperature=0, stop="zzz")
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    assert greedy_run.startswith(r.choices[0].text)


def test_seed_and_n(server):
    def sample(seed: int, n: int = 1):
        return server.client.completions.create(model="kjv", prompt="And God said",
                                                max_tokens=12, temperature=1.0, top_p=0.95,
                                                presence_penalty=0.5, frequency_penalty=0.2,
                                                seed=seed, n=n)
    a, b = sample(11), sample(11)
    assert a.choices[0].text == b.choices[0].text
    many = sample(11, 3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.choices[0].text == a.choices[0].text
    assert many.choices[1].text == sample(12).choices[0].text
    assert 3 <= many.usage.completion_tokens <= 36  # all choices' tokens together
    assert many.usage.prompt_tokens == a.usage.prompt_tokens
    chat = server.client.chat.completions.create(
        model="kjv", messages=[{"role": "user", "content": "Sing"}], max_tokens=6, n=2, seed=3)
    assert [c.index for c in chat.choices] == [0, 1]


def test_logprobs(server):
    r = server.client.chat.completions.create(
        model="kjv", messages=[{"role": "user", "content": "Who is the Lord?"}], max_tokens=4,
        temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token  # greedy takes the most likely token
        assert t.logprob <= 0 and abs(t.logprob - t.top_logprobs[0].logprob) < 1e-6
    assert bytes(b for t in content for b in t.bytes).decode(errors="replace") == \
        r.choices[0].message.content
    r = server.client.completions.create(model="kjv", prompt=PROMPT, max_tokens=3,
                                         temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 3 and len(lp.token_logprobs) == 3 and len(lp.top_logprobs[0]) == 2


def test_error_statuses(server):
    c = server.client
    bad_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        c.post("/no/such/route", cast_to=object, body={})
    with pytest.raises(openai.APIStatusError) as e:
        c.get("/completions", cast_to=object)
    assert e.value.status_code == 405
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="kjv", prompt="x", max_tokens=1, temperature=5)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="kjv", prompt="x", max_tokens=-1)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="kjv", prompt="", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="kjv", prompt="And it came to pass " * 300, max_tokens=1)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.APIStatusError) as e:
        c.completions.create(model="kjv", prompt="x" * 70_000, max_tokens=1)
    assert e.value.status_code == 413
    # The server is unharmed.
    assert c.completions.create(model="kjv", prompt=PROMPT, max_tokens=2).usage.total_tokens


def test_disconnect_mid_stream_frees_the_sequence(server):
    before = server.metrics()["bitnet_requests_cancelled_total"]
    stream = server.client.completions.create(model="kjv", prompt=PROMPT, max_tokens=1000,
                                              temperature=0, stream=True,
                                              extra_body={"ignore_eos": True})
    next(iter(stream))
    stream.close()
    server.wait_metric("bitnet_requests_cancelled_total", lambda v: v >= before + 1,
                       "the dropped stream was not cancelled")
    server.wait_metric("bitnet_sequences_running", lambda v: v == 0, "a sequence still runs")
    server.wait_metric("bitnet_kv_blocks_used", lambda v: v == 0, "KV blocks still held")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_returns_after_bursts(server):
    """Bursts of concurrent requests, some cut off mid-stream: after a warm-up burst (which
    touches the KV pages and allocator arenas once), further bursts must not grow the server."""
    def one(i: int) -> None:
        if i % 4 == 0:
            stream = server.client.completions.create(
                model="kjv", prompt=f"And the {i} day", max_tokens=64, stream=True)
            next(iter(stream))
            stream.close()
        else:
            server.client.completions.create(model="kjv", prompt=f"Verse {i}", max_tokens=8)

    def burst() -> None:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(one, range(96)))
        server.wait_metric("bitnet_sequences_running", lambda v: v == 0, "sequences left")
        server.wait_metric("bitnet_kv_blocks_used", lambda v: v == 0, "KV blocks left")

    burst()
    base = rss_mib(server.proc.pid)
    for _ in range(3):
        burst()
    grown = rss_mib(server.proc.pid) - base
    print(f"server RSS {base:.1f} MiB after the warm-up burst, {grown:+.1f} MiB after three more")
    assert grown < 16, f"RSS grew {grown:.1f} MiB over three bursts (from {base:.1f} MiB)"


def test_full_queue_is_503_with_retry_after():
    s = Server("-c", "1024", "--parallel", "1", "--max-queue", "1")
    try:
        long = dict(model="kjv", prompt=PROMPT, max_tokens=1000, temperature=0, stream=True,
                    extra_body={"ignore_eos": True})
        running = s.client.completions.create(**long)
        next(iter(running))
        queued = s.client.completions.create(**long)  # headers come back once it is queued
        s.wait_metric("bitnet_queue_waiting", lambda v: v == 1, "the second request is not queued")
        with pytest.raises(openai.APIStatusError) as e:
            s.client.completions.create(model="kjv", prompt=PROMPT, max_tokens=1)
        assert e.value.status_code == 503
        assert int(e.value.response.headers["retry-after"]) >= 1
        running.close()
        queued.close()
    finally:
        assert s.stop() == 0, "".join(s.log)


def test_health_is_open():
    # /health needs no key (load balancers probe it).
    s = Server()
    try:
        with urllib.request.urlopen(f"{s.url}/health", timeout=10) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{s.url}/v1/models", timeout=10)
        assert e.value.code == 401
    finally:
        assert s.stop() == 0, "".join(s.log)


def test_settings_file_gives_the_defaults_of_requests(tmp_path):
    # `serve` reads the sampling keys and max_tokens of its settings file (and BITNET_*
    # variables) as `run` does: they fill the fields a request leaves out, and a request's own
    # values still win.
    cfg = tmp_path / "serve.toml"
    cfg.write_text("max_tokens = 3\n[sampling]\ntemperature = 0.0\n")
    s = Server("--config", str(cfg))
    try:
        def ask(**kw):
            return s.client.completions.create(model="kjv", prompt=PROMPT,
                                               extra_body={"ignore_eos": True}, **kw)
        a, b = ask(), ask()
        assert a.usage.completion_tokens == 3
        assert a.choices[0].text == b.choices[0].text  # temperature 0 from the file: greedy
        assert ask(max_tokens=5).usage.completion_tokens == 5
    finally:
        assert s.stop() == 0, "".join(s.log)
