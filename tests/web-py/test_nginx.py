"""deploy/nginx/bitnet.conf in front of two `bitnet serve` replicas, all on 127.0.0.1.

usage: .venv/bin/python -m pytest -q tests/web-py/test_nginx.py   (scripts/test.sh runs it;
       needs scripts/setup-nginx.sh)

The shipped file is used as it is, only its listen port and the replicas' ports rewritten,
inside a minimal main config in a temporary prefix (nginx -p DIR -c FILE, `daemon off`, run
as a child of the test and stopped at the end). Checks: both replicas serve; streams come
through token by token; nginx's own errors are OpenAI JSON; and when one replica is stopped
(SIGTERM) while clients keep sending, no request fails: the ones in flight on it finish
there, the rest go to the other replica.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from webtest_util import ROOT, Server, free_port, wait_until

CONF = ROOT / "deploy" / "nginx" / "bitnet.conf"
CHAT = "/v1/chat/completions"
REQ_TIMEOUT_S = 60
LOAD_CLIENTS = 4


def nginx_binary() -> str:
    for p in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if p and os.access(p, os.X_OK):
            return p
    pytest.fail("no nginx: run scripts/setup-nginx.sh")


class Nginx:
    def __init__(self, prefix: Path, port: int, replicas: list[int]) -> None:
        site = CONF.read_text()
        # The shipped file's placeholders: listen 8080, replicas on 8081 and 8082.
        assert site.count("listen 8080;") == 1
        site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
        for shipped, real in zip((8081, 8082), replicas, strict=True):
            assert site.count(f"server 127.0.0.1:{shipped} ") == 1
            site = site.replace(f"server 127.0.0.1:{shipped} ", f"server 127.0.0.1:{real} ")
        (prefix / "bitnet.conf").write_text(site)
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / d).mkdir()
        self.access_log = prefix / "access.log"
        self.error_log = prefix / "error.log"
        # As root, nginx's workers would switch to user `nobody`, group `nobody` (which Debian
        # does not have) and could not reach the temporary prefix: keep them as root.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 256; }}
http {{
    log_format upstreams '$msec $status "$request" upstream=[$upstream_addr] '
                         'statuses=[$upstream_status] phase=$http_x_test_phase';
    access_log {self.access_log} upstreams;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/bitnet.conf;
}}
""")
        cmd = [nginx_binary(), "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"),
               "-e", str(self.error_log)]
        test = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
        assert test.returncode == 0, test.stderr
        # Its own session, so its workers can be killed with it if it must be killed.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.port = port
        wait_until(lambda: self.proc.poll() is not None or self._health() == 200, 20,
                   "nginx to answer")
        assert self.proc.poll() is None, self.error_log.read_text()

    def _health(self) -> int | None:
        try:
            return request(self.port, "GET", "/health", timeout=5)[0]
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def log(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []


def request(port: int, method: str, path: str, body: bytes | None = None,
            timeout: float = REQ_TIMEOUT_S) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def chat_body(max_tokens: int, stream: bool, text: str = "In the beginning") -> bytes:
    # Greedy on this prompt runs to max_tokens (the model does not end it early).
    return json.dumps({"messages": [{"role": "user", "content": text}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": stream}).encode()


def stream_chat(port: int, max_tokens: int, phase: str = "-") -> dict:
    """A streaming chat request through nginx; returns what came back and when."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=REQ_TIMEOUT_S)
    out = {"start": t0, "status": None, "text": "", "done": False, "first": None, "error": None}
    try:
        c.request("POST", CHAT, chat_body(max_tokens, True),
                  {"Content-Type": "application/json", "X-Test-Phase": phase})
        r = c.getresponse()
        out["status"] = r.status
        if r.status != 200:
            out["error"] = r.read().decode(errors="replace")
            return out
        for raw in r:  # one line at a time, as it arrives
            line = raw.decode().rstrip("\r\n")
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                out["done"] = True
                break
            ev = json.loads(data)
            if "error" in ev:
                out["error"] = ev["error"]
                break
            delta = ev["choices"][0]["delta"].get("content") if ev["choices"] else None
            if delta:
                if out["first"] is None:
                    out["first"] = time.monotonic()
                out["text"] += delta
    except (OSError, http.client.HTTPException, ValueError) as e:
        out["error"] = repr(e)
    finally:
        c.close()
        out["end"] = time.monotonic()
    return out


def chat_200s(replica: Server) -> float:
    return replica.metrics().get(f'bitnet_requests_total{{endpoint="{CHAT}",status="200"}}', 0)


@pytest.fixture
def cluster(tmp_path):
    replicas: list[Server] = []
    nginx = None
    try:
        for _ in range(2):
            replicas.append(Server("-c", "1024", "--parallel", "8", "--shutdown-timeout", "30"))
        nginx = Nginx(tmp_path, free_port(), [r.port for r in replicas])
        yield nginx, replicas
    finally:
        if nginx:
            nginx.stop()
        for r in replicas:
            r.terminate()
        for r in replicas:
            if r.proc.poll() is None:
                r.wait()


def test_two_replicas_behind_nginx(cluster):
    nginx, (a, b) = cluster

    # Both replicas serve: concurrent requests spread over them (least_conn; at equal load
    # nginx takes them in turn).
    results: list[tuple[int, dict, bytes]] = []
    threads = [threading.Thread(target=lambda: results.append(
        request(nginx.port, "POST", CHAT, chat_body(4, False)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(REQ_TIMEOUT_S)
    assert len(results) == 8 and all(s == 200 for s, _, _ in results), results
    for _, _, body in results:
        assert json.loads(body)["choices"][0]["message"]["content"]
    served = (chat_200s(a), chat_200s(b))
    assert sum(served) == 8 and min(served) >= 1, served

    # Streams are passed on as they are generated: the first text arrives early in a long
    # answer (900 tokens: seconds here, still far longer than one token on a fast machine),
    # not when it ends.
    s = stream_chat(nginx.port, 900)
    assert s["status"] == 200 and s["done"] and s["text"], s
    assert s["first"] - s["start"] < (s["end"] - s["start"]) / 4, s

    # nginx's own refusals have OpenAI's error shape: a body over the replicas' 4 MiB limit.
    st, _, body = request(nginx.port, "POST", CHAT, b"x" * (4 << 20 | 1))
    assert st == 413 and json.loads(body)["error"]["code"] == "request_too_large", body

    # Stop replica A while clients keep sending. Every request must succeed: those running
    # on A finish there (graceful shutdown), those not yet started go to B.
    done: list[dict] = []
    lock = threading.Lock()
    stop_load = threading.Event()
    load_deadline = time.monotonic() + 120

    def client() -> None:
        while not stop_load.is_set() and time.monotonic() < load_deadline:
            r = stream_chat(nginx.port, 48, phase="load")
            with lock:
                done.append(r)

    workers = [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
    for w in workers:
        w.start()
    try:
        wait_until(lambda: a.metrics().get("bitnet_sequences_running", 0) >= 1, 60,
                   "a request running on replica A")
        t_term = time.monotonic()
        a.terminate()
        assert a.wait() == 0, "".join(a.log)
        t_gone = time.monotonic()
        b_before = chat_200s(b)
        # Keep going until B has taken a few requests on its own.
        wait_until(lambda: chat_200s(b) >= b_before + 2 * LOAD_CLIENTS, 90,
                   "replica B to take the requests A no longer can")
    finally:
        stop_load.set()
        for w in workers:
            w.join(REQ_TIMEOUT_S + 5)
    assert not any(w.is_alive() for w in workers)

    failed = [r for r in done if r["status"] != 200 or not r["done"] or r["error"]]
    assert not failed, f"{len(failed)} of {len(done)} requests failed: {failed[:3]}"
    assert all(r["text"] for r in done)
    # Requests were in flight on A when it got SIGTERM, and they completed.
    assert any(r["start"] < t_term and r["end"] > t_term for r in done), "none in flight"
    assert any(r["start"] > t_gone for r in done), "no request after A was gone"

    # What nginx saw: A's in-flight answers ended after SIGTERM with 200; after that the
    # requests went to B, some after A refused them (two upstream addresses).
    a_addr = f"127.0.0.1:{a.port}"
    def load_lines():
        return [line for line in nginx.log() if line.endswith(" phase=load")]

    # nginx writes a request's line when it finalizes the request, which can come just after
    # the client has read the stream's last byte (seen in CI: 15 lines for 16 answers).
    chats = wait_until(lambda: len(load_lines()) >= len(done) and load_lines(), 10,
                       f"nginx to log all {len(done)} load requests")
    assert len(chats) == len(done), (len(chats), len(done))
    assert chats and all(re.match(r"\S+ 200 ", line) for line in chats), chats[-5:]
    finished_on_a = [line for line in chats if re.search(rf"upstream=\[{a_addr}\]", line)
                     and float(line.split()[0]) > time.time() - (time.monotonic() - t_term)]
    assert finished_on_a, "no request was finished by A after its SIGTERM"
    # Once A was gone, least_conn still chose it (fewest connections) until max_fails: those
    # requests failed on A and were passed to B, unseen by the client.
    retried = [line for line in chats if re.search(rf"upstream=\[{a_addr}, [^]]+\] "
                                                   r"statuses=\[5\d\d, 200\]", line)]
    assert retried, "no request was retried on B"

    # With no replica left, nginx answers 503 (OpenAI JSON, Retry-After) instead of a 502.
    b.terminate()
    assert b.wait() == 0, "".join(b.log)
    st, headers, body = request(nginx.port, "POST", CHAT, chat_body(4, False))
    assert st == 503 and headers.get("retry-after") == "5", (st, headers, body)
    assert json.loads(body)["error"]["type"] == "server_error"
