#!/usr/bin/env python3
"""Load generator for OpenAI-compatible streaming servers (bitnet serve, llama.cpp's
llama-server, ik_llama.cpp's llama-server), standard library only.

For each client count N (e.g. 1,4,16,64) it runs N concurrent clients on loopback; each sends
streaming requests back to back (POST /v1/completions, or /v1/chat/completions with --chat),
a fixed number per client (--requests) or until a deadline (--duration), with a prompt of about
--prompt-tokens tokens, max_tokens = --max-tokens, temperature 0 and ignore_eos. It reads the
server-sent events, timestamps every chunk that carries text, and reports per N:

  agg tok/s   generated tokens per second over the window in which all N clients are busy: from
              the moment the last client sent its first request to the moment the first client
              received the end of its last one; tokens are counted by the time their chunk
              arrived. (The tails, where fewer clients are left, are not in the window.)
  run tok/s   all generated tokens / the level's whole wall time (tails included)
  req/s       completed requests / the level's whole wall time
  TTFT        time to first token: request sent -> first chunk carrying text (p50, p99)
  ITL         inter-token latency: gaps between consecutive text chunks of one request, pooled
              over all requests (p50, p99)
  errors      failed requests (HTTP status, timeout, reset, bad stream); a sample is printed

Tokens are counted as text-carrying chunks (llama-server and bitnet serve send one token per
chunk); when the server reports usage (stream_options.include_usage), usage.completion_tokens
is the count and the number of requests where the two disagree is reported.

  scripts/loadgen.py --url http://127.0.0.1:8080 -N 1,4,16,64 --prompt-tokens 128 \\
      --max-tokens 128 --requests 4 [--json out.json]
  scripts/loadgen.py --self-test          # offline checks of the HTTP/SSE parsing and the stats

Only loopback addresses are accepted. Every socket operation has a timeout and every loop
is bounded.
"""

import argparse
import asyncio
import ipaddress
import json
import math
import os
import socket
import sys
import time
import urllib.parse

# --------------------------------------------------------------------------------------------
# Limits (every loop and buffer is bounded)
MAX_HEADER_LINES = 200
MAX_LINE = 1 << 20          # one header line, one chunk-size line, one SSE line
MAX_BODY = 64 << 20         # one response body
MAX_EVENTS_PER_TOKEN = 8    # SSE events allowed per requested token (plus a fixed slack)
EVENT_SLACK = 64


class LoadgenError(Exception):
    """An error that ends one request (or the run, when raised before it starts)."""


# --------------------------------------------------------------------------------------------
# Statistics


def percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * (q / 100.0)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return float(xs[lo] + (xs[hi] - xs[lo]) * frac)


def summarize(values):
    if not values:
        return {"p50": None, "p99": None, "mean": None, "n": 0}
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": sum(values) / len(values),
        "n": len(values),
    }


class RequestResult:
    __slots__ = ("client", "index", "t_send", "t_first", "t_end", "chunk_times", "usage",
                 "finish_reason", "error", "text_len")

    def __init__(self, client, index, t_send):
        self.client = client
        self.index = index
        self.t_send = t_send
        self.t_first = None
        self.t_end = None
        self.chunk_times = []     # arrival time of every chunk that carried text
        self.usage = None
        self.finish_reason = None
        self.error = None
        self.text_len = 0

    @property
    def chunk_tokens(self):
        return len(self.chunk_times)

    @property
    def tokens(self):
        """Generated tokens: usage.completion_tokens when reported, else text chunks."""
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return self.usage["completion_tokens"]
        return len(self.chunk_times)

    @property
    def prompt_tokens(self):
        if self.usage and isinstance(self.usage.get("prompt_tokens"), int):
            return self.usage["prompt_tokens"]
        return None


def level_stats(n_clients, results, t0, t1, max_tokens=None):
    """Aggregate one level's results. t0/t1: the level's wall-clock start and end."""
    ok = [r for r in results if r.error is None]
    errs = [r for r in results if r.error is not None]
    wall = max(t1 - t0, 1e-9)

    # The window in which every client is busy: from the last client's first send to the first
    # client's last end (each client sends back to back, so inside it all N have a request in
    # flight, up to the client's own turnaround of a few microseconds).
    by_client = {}
    for r in results:
        by_client.setdefault(r.client, []).append(r)
    window = None
    if len(by_client) == n_clients and all(by_client.values()):
        ws = max(min(r.t_send for r in rs) for rs in by_client.values())
        we = min(max((r.t_end if r.t_end is not None else r.t_send) for r in rs)
                 for rs in by_client.values())
        if we > ws:
            window = (ws, we)

    def tokens_between(a, b):
        total = 0.0
        for r in ok:
            if not r.chunk_times:
                continue
            # each chunk weighs tokens/chunks, so a server that packs several tokens in one
            # chunk (and says so in usage) is still counted in tokens
            w = r.tokens / len(r.chunk_times)
            total += w * sum(1 for t in r.chunk_times if a <= t <= b)
        return total

    total_tokens = sum(r.tokens for r in ok)
    if window is not None:
        agg = tokens_between(*window) / (window[1] - window[0])
    else:
        agg = None
    ttft = [(r.t_first - r.t_send) * 1e3 for r in ok if r.t_first is not None]
    itl = []
    stream_rates = []
    for r in ok:
        ct = r.chunk_times
        for a, b in zip(ct, ct[1:]):
            itl.append((b - a) * 1e3)
        if len(ct) >= 2 and ct[-1] > ct[0]:
            stream_rates.append((len(ct) - 1) / (ct[-1] - ct[0]))
    mismatch = sum(1 for r in ok if r.usage and isinstance(r.usage.get("completion_tokens"), int)
                   and r.usage["completion_tokens"] != r.chunk_tokens)
    prompt_tokens = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    # requests that ended before max_tokens (by count: ik_llama.cpp says finish_reason "stop"
    # even when it stops at max_tokens)
    if max_tokens:
        short = sum(1 for r in ok if r.tokens < max_tokens)
    else:
        short = sum(1 for r in ok if r.finish_reason not in (None, "length"))
    samples = []
    for r in errs:
        if len(samples) >= 5:
            break
        samples.append(f"client {r.client} request {r.index}: {r.error}")
    return {
        "clients": n_clients,
        "requests_ok": len(ok),
        "errors": len(errs),
        "error_samples": samples,
        "wall_s": wall,
        "window_s": (window[1] - window[0]) if window else None,
        "agg_tok_s": agg,
        "run_tok_s": total_tokens / wall,
        "req_s": len(ok) / wall,
        "tokens": total_tokens,
        "chunk_tokens": sum(r.chunk_tokens for r in ok),
        "usage_mismatch": mismatch,
        "stopped_early": short,
        "completion_tokens_mean": (total_tokens / len(ok)) if ok else None,
        "prompt_tokens_mean": (sum(prompt_tokens) / len(prompt_tokens)) if prompt_tokens else None,
        "ttft_ms": summarize(ttft),
        "itl_ms": summarize(itl),
        "stream_tok_s": summarize(stream_rates),
    }


# --------------------------------------------------------------------------------------------
# HTTP/1.1 over asyncio streams


def parse_url(url):
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        raise LoadgenError(f"only plain http:// URLs are supported, not {url!r}")
    host = u.hostname or "127.0.0.1"
    port = u.port or 80
    if host != "localhost":
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise LoadgenError(f"host {host!r}: give a loopback address (127.0.0.1, ::1)") from None
        if not ip.is_loopback:
            raise LoadgenError(f"host {host}: this load generator only talks to loopback addresses")
    return host, port, (u.path.rstrip("/") or "")


async def _readline(reader, timeout):
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except asyncio.LimitOverrunError:
        raise LoadgenError("line too long in response") from None
    except ValueError:  # StreamReader turns an overrun into ValueError in readline
        raise LoadgenError("line too long in response") from None
    return line


async def read_head(reader, timeout):
    """Status code and lower-cased headers of a response."""
    status_line = await _readline(reader, timeout)
    if not status_line:
        raise LoadgenError("connection closed before the response")
    parts = status_line.decode("latin-1").strip().split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise LoadgenError(f"bad status line {status_line[:80]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise LoadgenError(f"bad status line {status_line[:80]!r}") from None
    headers = {}
    for _ in range(MAX_HEADER_LINES):
        line = await _readline(reader, timeout)
        if not line:
            raise LoadgenError("connection closed inside the response headers")
        line = line.rstrip(b"\r\n")
        if not line:
            return status, headers
        k, sep, v = line.decode("latin-1").partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    raise LoadgenError("too many response header lines")


async def _read_some(reader, timeout, n=65536):
    """Whatever the socket has (up to 64 KiB), waiting at most `timeout` for the first byte.

    asyncio.timeout (3.11+) only arms a timer; wait_for on 3.11 wraps the read in a new task,
    which at thousands of events per second cost this process a large share of a core that
    the server being measured needed (the load generator shares the machine)."""
    if _TIMEOUT is not None:
        async with _TIMEOUT(timeout):
            return await reader.read(n)
    return await asyncio.wait_for(reader.read(n), timeout)


_TIMEOUT = getattr(asyncio, "timeout", None)


async def body_chunks(reader, headers, timeout):
    """Yield the raw body bytes as they arrive (chunked, Content-Length or until close).

    Chunked bodies are de-chunked from whatever each socket read returned: every chunk that
    is complete after a read is yielded at once (as one piece), so a server that sends one
    token per chunk costs one read and one yield per token, and the chunks that arrive
    together are timestamped together, as they arrived."""
    te = headers.get("transfer-encoding", "").lower()
    total = 0
    if "chunked" in te:
        buf = b""
        pos = 0

        async def more():
            nonlocal buf, pos
            data = await _read_some(reader, timeout)
            buf = buf[pos:] + data
            pos = 0
            return bool(data)

        for _ in range(MAX_BODY):
            # the chunk-size line
            i = buf.find(b"\n", pos)
            while i < 0:
                if len(buf) - pos > MAX_LINE:
                    raise LoadgenError("line too long in response")
                if not await more():
                    raise LoadgenError("connection closed inside a chunked body")
                i = buf.find(b"\n", pos)
            size_line = buf[pos:i + 1]
            pos = i + 1
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise LoadgenError(f"bad chunk size line {size_line[:40]!r}") from None
            if size < 0:
                raise LoadgenError(f"bad chunk size line {size_line[:40]!r}")
            if size == 0:
                # trailers up to the blank line; a server that just closes is fine too
                for _ in range(MAX_HEADER_LINES):
                    i = buf.find(b"\n", pos)
                    while i < 0:
                        if len(buf) - pos > MAX_LINE:
                            raise LoadgenError("line too long in response")
                        if not await more():
                            return
                        i = buf.find(b"\n", pos)
                    line = buf[pos:i + 1]
                    pos = i + 1
                    if line in (b"\r\n", b"\n"):
                        return
                return
            total += size
            if total > MAX_BODY:
                raise LoadgenError("response body too large")
            # the data and the line end after it
            while len(buf) - pos < size:
                if not await more():
                    raise LoadgenError("connection closed inside a chunk")
            data = buf[pos:pos + size]
            pos += size
            while True:
                if buf.startswith(b"\r\n", pos):
                    pos += 2
                    break
                if buf.startswith(b"\n", pos):
                    pos += 1
                    break
                if len(buf) - pos >= 2 or buf[pos:] not in (b"", b"\r"):
                    raise LoadgenError("missing CRLF after a chunk")
                if not await more():
                    raise LoadgenError("missing CRLF after a chunk")
            # every further chunk already complete in the buffer goes out with this one
            pieces = [data]
            while True:
                i = buf.find(b"\n", pos)
                if i < 0:
                    break
                try:
                    n = int(buf[pos:i + 1].split(b";", 1)[0].strip(), 16)
                except ValueError:
                    break  # reported by the loop above, after this piece
                end = i + 1 + n
                if n <= 0 or total + n > MAX_BODY or not (
                        buf.startswith(b"\r\n", end) or buf.startswith(b"\n", end)):
                    break
                pieces.append(buf[i + 1:end])
                total += n
                pos = end + (2 if buf.startswith(b"\r\n", end) else 1)
            yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
        raise LoadgenError("too many chunks")
    elif "content-length" in headers:
        try:
            left = int(headers["content-length"])
        except ValueError:
            raise LoadgenError("bad Content-Length") from None
        if left > MAX_BODY:
            raise LoadgenError("response body too large")
        while left > 0:
            data = await _read_some(reader, timeout, min(left, 65536))
            if not data:
                raise LoadgenError("connection closed before Content-Length bytes")
            left -= len(data)
            yield data
    else:
        while True:
            data = await _read_some(reader, timeout)
            if not data:
                return
            total += len(data)
            if total > MAX_BODY:
                raise LoadgenError("response body too large")
            yield data


class SSEParser:
    """Incremental server-sent-events parser: feed bytes, get the data of complete events.

    Follows the HTML spec's field rules for `data:` (one optional space after the colon,
    several data lines joined with newlines, events ended by a blank line; comments and
    other fields ignored). A bare `error:` line (llama-server's stream error) is returned as
    an event of kind "error".
    """

    def __init__(self):
        self.buf = b""
        self.data = []
        self.kind = "message"

    def feed(self, chunk):
        self.buf += chunk
        if len(self.buf) > MAX_LINE and b"\n" not in self.buf:
            raise LoadgenError("SSE line too long")
        events = []
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                break
            line = self.buf[:i]
            self.buf = self.buf[i + 1:]
            if line.endswith(b"\r"):
                line = line[:-1]
            ev = self._line(line.decode("utf-8", errors="replace"))
            if ev is not None:
                events.append(ev)
        return events

    def finish(self):
        """Events still pending when the body ends (a last event without its blank line)."""
        events = []
        if self.buf:
            ev = self._line(self.buf.decode("utf-8", errors="replace").rstrip("\r"))
            self.buf = b""
            if ev is not None:
                events.append(ev)
        ev = self._line("")
        if ev is not None:
            events.append(ev)
        return events

    def _line(self, line):
        if line == "":
            if not self.data:
                self.kind = "message"
                return None
            ev = (self.kind, "\n".join(self.data))
            self.data = []
            self.kind = "message"
            return ev
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self.data.append(value)
        elif field == "event":
            self.kind = value or "message"
        elif field == "error":
            self.kind = "error"
            self.data.append(value)
        return None


def chunk_text(obj, chat):
    """The generated text carried by one chunk object ('' when none)."""
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return "", None
    c = choices[0]
    if not isinstance(c, dict):
        return "", None
    if chat:
        d = c.get("delta") or {}
        text = d.get("content") or ""
        if not text:
            text = d.get("reasoning_content") or ""
    else:
        text = c.get("text") or ""
        if not text and isinstance(c.get("delta"), dict):
            text = c["delta"].get("content") or ""
    return (text if isinstance(text, str) else ""), c.get("finish_reason")


async def consume_stream(reader, headers, res, chat, timeout, max_events, clock):
    """Read one streaming response into `res` (chunk times, usage, finish reason)."""
    parser = SSEParser()
    n_events = 0
    done = False

    def handle(events):
        nonlocal n_events, done
        for kind, data in events:
            n_events += 1
            if n_events > max_events:
                raise LoadgenError(f"more than {max_events} events in one response")
            if kind == "error":
                raise LoadgenError(f"stream error: {data[:200]}")
            if data.strip() == "[DONE]":
                done = True
                return
            try:
                obj = json.loads(data)
            except ValueError:
                raise LoadgenError(f"bad JSON in event: {data[:120]!r}") from None
            if not isinstance(obj, dict):
                raise LoadgenError(f"event is not an object: {data[:120]!r}")
            if "error" in obj and "choices" not in obj:
                raise LoadgenError(f"stream error: {json.dumps(obj['error'])[:200]}")
            text, finish = chunk_text(obj, chat)
            if text:
                t = clock()
                if res.t_first is None:
                    res.t_first = t
                res.chunk_times.append(t)
                res.text_len += len(text)
            if finish:
                res.finish_reason = finish
            if isinstance(obj.get("usage"), dict):
                res.usage = obj["usage"]

    async for data in body_chunks(reader, headers, timeout):
        handle(parser.feed(data))
        if done:
            break
    if not done:
        handle(parser.finish())
    if not done:
        raise LoadgenError("stream ended without data: [DONE]")


async def http_request(host, port, method, path, body, timeout, headers=None):
    """One request on a fresh connection; returns (status, headers, reader, writer)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=MAX_LINE), timeout)
    except ConnectionRefusedError:
        raise LoadgenError(f"connection refused by {host}:{port} (is the server running?)") from None
    except asyncio.TimeoutError:
        raise LoadgenError(f"connecting to {host}:{port} timed out after {timeout:g} s") from None
    except OSError as e:
        raise LoadgenError(f"cannot connect to {host}:{port}: {e}") from None
    hdrs = {
        "Host": f"{host}:{port}",
        "User-Agent": "bitnet-rs-loadgen/1",
        "Accept": "text/event-stream, application/json",
        "Connection": "close",
    }
    if headers:
        hdrs.update(headers)
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
        hdrs["Content-Length"] = str(len(payload))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    try:
        writer.write(head.encode("latin-1") + payload)
        await asyncio.wait_for(writer.drain(), timeout)
        status, rh = await read_head(reader, timeout)
    except BaseException:
        writer.close()
        raise
    return status, rh, reader, writer


async def close_writer(writer):
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2.0)
    except (asyncio.TimeoutError, OSError, ConnectionError):
        pass


async def read_all(reader, headers, timeout):
    parts = []
    async for data in body_chunks(reader, headers, timeout):
        parts.append(data)
    return b"".join(parts)


async def get_json(host, port, method, path, body, timeout, extra_headers=None):
    status, rh, reader, writer = await http_request(host, port, method, path, body, timeout,
                                                    extra_headers)
    try:
        raw = await read_all(reader, rh, timeout)
    finally:
        await close_writer(writer)
    try:
        obj = json.loads(raw.decode("utf-8", errors="replace")) if raw.strip() else None
    except ValueError:
        obj = None
    return status, obj, raw


# --------------------------------------------------------------------------------------------
# Prompts

# Public-domain English prose (the opening of the King James Bible's Genesis and of Psalm 23,
# plus a plain paragraph); repeated as needed. Any text works: only its token count matters.
BASE_TEXT = (
    "In the beginning God created the heaven and the earth. And the earth was without form, "
    "and void; and darkness was upon the face of the deep. And the Spirit of God moved upon the "
    "face of the waters. And God said, Let there be light: and there was light. And God saw the "
    "light, that it was good: and God divided the light from the darkness. And God called the "
    "light Day, and the darkness he called Night. And the evening and the morning were the "
    "first day. The LORD is my shepherd; I shall not want. He maketh me to lie down in green "
    "pastures: he leadeth me beside the still waters. He restoreth my soul: he leadeth me in the "
    "paths of righteousness for his name's sake. The river ran along the edge of the town, past "
    "the mill and the old stone bridge, and the children of the village walked there in the "
    "evening to watch the boats come home with the last of the light. "
)
WORDS = BASE_TEXT.split()


def make_prompt(n_words, tag=""):
    n_words = max(1, int(n_words))
    words = [WORDS[i % len(WORDS)] for i in range(n_words)]
    text = " ".join(words)
    return f"{tag} {text}" if tag else text


def request_body(args, model, prompt, max_tokens, stream=True):
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        # llama-server's and bitnet serve's way to run to max_tokens; others ignore it
        "ignore_eos": True,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if args.chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if args.extra_json:
        body.update(args.extra_json)
    return body


def endpoint(args):
    return args.base_path + ("/v1/chat/completions" if args.chat else "/v1/completions")


async def count_prompt_tokens(args, model, prompt):
    """The server's count of a prompt's tokens (usage of a 1-token request; else /tokenize).
    Returns (count, how); count is None when the server tells neither, and -1 when it rejects
    the prompt with HTTP 400 (too long for its context)."""
    body = request_body(args, model, prompt, 1, stream=False)
    status, obj, raw = await get_json(args.host, args.port, "POST", endpoint(args), body,
                                      args.timeout, args.auth_headers)
    if status == 400:
        return -1, raw[:300].decode("utf-8", "replace")
    if status != 200:
        raise LoadgenError(f"calibration request: HTTP {status}: {raw[:300]!r}")
    if isinstance(obj, dict) and isinstance(obj.get("usage"), dict) \
            and isinstance(obj["usage"].get("prompt_tokens"), int):
        return obj["usage"]["prompt_tokens"], "usage"
    if not args.chat:
        status, obj, _ = await get_json(args.host, args.port, "POST", args.base_path + "/tokenize",
                                        {"content": prompt, "add_special": True}, args.timeout,
                                        args.auth_headers)
        if status == 200 and isinstance(obj, dict) and isinstance(obj.get("tokens"), list):
            return len(obj["tokens"]), "/tokenize"
    return None, None


async def calibrate(args, model):
    """Words of BASE_TEXT giving about --prompt-tokens tokens, and the measured count.

    Starts from a short prompt and grows it at most 4x a step, so it never sends a prompt far
    beyond the target (a server may reject it, or, like ik_llama.cpp, silently truncate it to
    its context and so report a misleading count); keeps the closest (words, tokens) pair."""
    target = args.prompt_tokens
    tag = "(0.0.0)"
    words = max(1, min(8, target // 4))
    best = None
    for _ in range(12):
        measured, how = await count_prompt_tokens(args, model, make_prompt(words, tag))
        if measured is None:
            # ~4 characters per token
            chars_per_word = len(BASE_TEXT) / len(WORDS)
            return max(1, int(target * 4 / chars_per_word)), None, "estimate (server reports no usage)"
        if measured < 0:
            if words == 1:
                raise LoadgenError(f"the server rejects even a 1-word prompt: {how}")
            words = max(1, words // 2)
            continue
        if best is None or abs(measured - target) < abs(best[1] - target):
            best = (words, measured, how)
        if abs(measured - target) <= max(1, target // 50):
            break
        nxt = int(round(words * target / max(measured, 1)))
        nxt = max(1, min(nxt, words * 4), words // 4)
        if nxt == words:
            nxt = words + (1 if measured < target else -1)
            if nxt < 1:
                break
        words = nxt
    if best is None:
        raise LoadgenError("could not size the prompt: every calibration prompt was rejected")
    return best


# --------------------------------------------------------------------------------------------
# Load


async def one_request(args, model, client, index, words, level, clock):
    tag = "" if args.shared_prompt else f"({level}.{client}.{index})"
    prompt = make_prompt(words, tag)
    body = request_body(args, model, prompt, args.max_tokens)
    res = RequestResult(client, index, clock())
    writer = None
    max_events = args.max_tokens * MAX_EVENTS_PER_TOKEN + EVENT_SLACK

    async def run():
        nonlocal writer
        status, rh, reader, writer = await http_request(
            args.host, args.port, "POST", endpoint(args), body, args.timeout, args.auth_headers)
        if status != 200:
            raw = b""
            try:
                raw = await read_all(reader, rh, args.timeout)
            except LoadgenError:
                pass
            raise LoadgenError(f"HTTP {status}: {raw[:200].decode('utf-8', 'replace')}")
        await consume_stream(reader, rh, res, args.chat, args.timeout, max_events, clock)

    try:
        await asyncio.wait_for(run(), args.request_timeout)
    except asyncio.TimeoutError:
        res.error = f"timed out (no data for {args.timeout:g} s, or over {args.request_timeout:g} s in all)"
    except LoadgenError as e:
        res.error = str(e)
    except (ConnectionError, OSError) as e:
        res.error = f"{type(e).__name__}: {e}"
    finally:
        if writer is not None:
            await close_writer(writer)
    res.t_end = clock()
    return res


async def run_level(args, model, n, words, clock=time.perf_counter):
    results = []
    t0 = clock()
    deadline = t0 + args.duration if args.duration else None
    per_client_cap = args.requests if args.requests else 1_000_000

    async def client(c):
        if args.ramp > 0 and n > 1:
            await asyncio.sleep(args.ramp * c / n)
        for k in range(per_client_cap):
            if deadline is not None and clock() >= deadline:
                break
            r = await one_request(args, model, c, k, words, n, clock)
            results.append(r)
            if r.error and args.stop_on_error:
                break
            if r.error and "connection refused" in r.error:
                break

    await asyncio.gather(*(client(c) for c in range(n)))
    t1 = clock()
    return level_stats(n, results, t0, t1, args.max_tokens)


async def wait_ready(args):
    """Wait (at most --wait seconds) until /health answers 200; raise on connection refused
    when not waiting."""
    deadline = time.monotonic() + args.wait
    last = None
    for _ in range(100000):
        try:
            status, _, raw = await get_json(args.host, args.port, "GET", args.base_path + "/health",
                                            None, min(args.timeout, 10.0))
            if status == 200:
                return
            last = f"/health answered HTTP {status}: {raw[:120]!r}"
        except LoadgenError as e:
            last = str(e)
            if args.wait <= 0:
                raise
        if time.monotonic() >= deadline:
            raise LoadgenError(f"server not ready after {args.wait:g} s: {last}")
        await asyncio.sleep(0.25)
    raise LoadgenError(f"server not ready: {last}")


async def find_model(args):
    if args.model:
        return args.model
    try:
        status, obj, _ = await get_json(args.host, args.port, "GET", args.base_path + "/v1/models",
                                        None, args.timeout, args.auth_headers)
    except LoadgenError:
        raise
    if status == 200 and isinstance(obj, dict) and isinstance(obj.get("data"), list) and obj["data"]:
        first = obj["data"][0]
        if isinstance(first, dict) and isinstance(first.get("id"), str):
            return first["id"]
    return "default"


async def main_async(args):
    await wait_ready(args)
    model = await find_model(args)
    words, measured, how = await calibrate(args, model)
    info = {
        "url": args.url,
        "endpoint": endpoint(args),
        "model": model,
        "label": args.label,
        "prompt_tokens_target": args.prompt_tokens,
        "prompt_tokens_calibrated": measured,
        "prompt_calibration": how,
        "prompt_words": words,
        "shared_prompt": args.shared_prompt,
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests,
        "duration_s": args.duration,
        "levels": [],
    }
    log(args, f"model {model!r}, prompt {words} words = {measured} tokens ({how}), "
              f"max_tokens {args.max_tokens}")
    for i in range(args.warmup):
        r = await one_request(args, model, 0, i, words, 0, time.perf_counter)
        if r.error:
            raise LoadgenError(f"warm-up request failed: {r.error}")
    for n in args.clients:
        log(args, f"N={n}: {n} clients x "
                  + (f"{args.requests} requests" if args.requests else f"{args.duration:g} s"))
        st = await run_level(args, model, n, words)
        info["levels"].append(st)
        log(args, f"N={n}: {st['requests_ok']} ok, {st['errors']} errors, "
                  f"{fmt(st['agg_tok_s'])} tok/s, {st['wall_s']:.1f} s")
        for s in st["error_samples"]:
            log(args, f"  error: {s}")
        if st["requests_ok"] == 0 and st["errors"] and args.stop_on_error:
            break
        if args.pause > 0:
            await asyncio.sleep(args.pause)
    return info


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def table(info):
    head = ["N", "ok", "err", "agg tok/s", "run tok/s", "req/s", "TTFT p50 ms", "TTFT p99 ms",
            "ITL p50 ms", "ITL p99 ms", "stream tok/s", "prompt tok", "gen tok"]
    rows = []
    for s in info["levels"]:
        rows.append([
            str(s["clients"]), str(s["requests_ok"]), str(s["errors"]),
            fmt(s["agg_tok_s"]), fmt(s["run_tok_s"]), fmt(s["req_s"], 2),
            fmt(s["ttft_ms"]["p50"]), fmt(s["ttft_ms"]["p99"]),
            fmt(s["itl_ms"]["p50"]), fmt(s["itl_ms"]["p99"]),
            fmt(s["stream_tok_s"]["p50"]),
            fmt(s["prompt_tokens_mean"], 0), fmt(s["completion_tokens_mean"], 0),
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    for r in rows:
        out.append("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    notes = []
    for s in info["levels"]:
        if s["usage_mismatch"]:
            notes.append(f"N={s['clients']}: {s['usage_mismatch']} requests where usage "
                         f"completion_tokens differs from the text chunks")
        if s["stopped_early"]:
            notes.append(f"N={s['clients']}: {s['stopped_early']} requests stopped before "
                         f"max_tokens (their tokens are counted as received)")
        if s["agg_tok_s"] is None and s["requests_ok"]:
            notes.append(f"N={s['clients']}: no window with all clients busy (agg tok/s: -)")
    return "\n".join(out + notes)


def log(args, msg):
    if not args.quiet:
        print(f"[loadgen {args.label or ''}] {msg}".replace(" ]", "]"), file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Streaming load generator for OpenAI-compatible servers (loopback only).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL (loopback)")
    p.add_argument("-N", "--clients", default="1,4,16,64",
                   help="comma-separated concurrent client counts [1,4,16,64]")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per client per level [4, unless --duration]")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per level: clients start new requests until then")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length in tokens [128]")
    p.add_argument("--max-tokens", type=int, default=128, help="max_tokens of each request [128]")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    p.add_argument("--model", default=None, help="model field [first id of /v1/models]")
    p.add_argument("--api-key", default=os.environ.get("LOADGEN_API_KEY"),
                   help="bearer token [env LOADGEN_API_KEY]")
    p.add_argument("--shared-prompt", action="store_true",
                   help="every request sends the same prompt (exercises prefix caches); by "
                        "default each starts with a unique tag so no cache can reuse it")
    p.add_argument("--extra-json", default=None, help="JSON object merged into every request body")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured requests first [1]")
    p.add_argument("--ramp", type=float, default=0.0,
                   help="spread the clients' starts over this many seconds [0]")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between levels [1]")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds any single socket operation may wait [120]")
    p.add_argument("--request-timeout", type=float, default=1800.0,
                   help="seconds one request may take in all [1800]")
    p.add_argument("--wait", type=float, default=0.0,
                   help="wait up to this many seconds for /health to answer 200 [0: fail at once]")
    p.add_argument("--stop-on-error", action="store_true",
                   help="a client stops at its first failed request")
    p.add_argument("--label", default="", help="a name for this run (in the JSON and logs)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON ('-': stdout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--self-test", action="store_true", help="run the offline self-test and exit")
    a = p.parse_args(argv)
    if a.self_test:
        return a
    try:
        a.clients = [int(x) for x in a.clients.replace(" ", ",").split(",") if x]
    except ValueError:
        p.error("--clients: comma-separated integers")
    if not a.clients or any(n < 1 or n > 4096 for n in a.clients):
        p.error("--clients: each between 1 and 4096")
    if a.requests is not None and a.requests < 1:
        p.error("--requests must be at least 1")
    if a.duration is not None and a.duration <= 0:
        p.error("--duration must be positive")
    if a.requests is None and a.duration is None:
        a.requests = 4
    if a.prompt_tokens < 1 or a.max_tokens < 1:
        p.error("--prompt-tokens and --max-tokens must be at least 1")
    if a.timeout <= 0 or a.request_timeout <= 0:
        p.error("timeouts must be positive")
    if a.extra_json:
        try:
            a.extra_json = json.loads(a.extra_json)
        except ValueError:
            p.error("--extra-json: not JSON")
        if not isinstance(a.extra_json, dict):
            p.error("--extra-json: give a JSON object")
    try:
        a.host, a.port, a.base_path = parse_url(a.url)
    except LoadgenError as e:
        p.error(str(e))
    a.auth_headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else None
    return a


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.self_test:
        return self_test()
    try:
        info = asyncio.run(main_async(args))
    except LoadgenError as e:
        print(f"loadgen: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loadgen: interrupted", file=sys.stderr)
        return 130
    print(table(info))
    if args.json:
        text = json.dumps(info, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return exit_status(info)


def exit_status(info):
    """1 when a level had no successful request at all (errors alone are data, e.g. 503s)."""
    return 1 if any(s["requests_ok"] == 0 for s in info["levels"]) else 0


# --------------------------------------------------------------------------------------------
# Self-test: offline (an in-process fake server on an ephemeral loopback port)


def _sse_body(tokens, chat=False, usage=True, extra_empty=True, crlf=False):
    nl = "\r\n" if crlf else "\n"
    events = []
    for i, t in enumerate(tokens):
        if chat:
            choice = {"index": 0, "delta": {"content": t}, "finish_reason": None}
        else:
            choice = {"index": 0, "text": t, "finish_reason": None}
        events.append({"id": "x", "object": "chunk", "choices": [choice]})
    last = {"index": 0, "finish_reason": "length"}
    last.update({"delta": {}} if chat else {"text": ""})
    if extra_empty:
        events.append({"id": "x", "choices": [last]})
    if usage:
        events.append({"id": "x", "choices": [], "usage": {
            "prompt_tokens": 7, "completion_tokens": len(tokens), "total_tokens": 7 + len(tokens)}})
    out = "".join(f"data: {json.dumps(e)}{nl}{nl}" for e in events) + f"data: [DONE]{nl}{nl}"
    return out.encode()


def _chunked(body, sizes):
    out, i, k = b"", 0, 0
    while i < len(body):
        n = min(sizes[k % len(sizes)], len(body) - i)
        k += 1
        out += f"{n:x}\r\n".encode() + body[i:i + n] + b"\r\n"
        i += n
    return out + b"0\r\n\r\n"


class _FakeServer:
    """A tiny streaming server: one token per chunk with a delay, like llama-server."""

    def __init__(self, delay=0.002, mode="ok"):
        self.delay = delay
        self.mode = mode
        self.active = 0
        self.max_active = 0
        self.requests = 0

    async def handle(self, reader, writer):
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            hdrs = {k.strip().lower(): v.strip() for k, _, v in
                    (ln.partition(":") for ln in lines[1:] if ln)}
            body = b""
            if "content-length" in hdrs:
                body = await asyncio.wait_for(reader.readexactly(int(hdrs["content-length"])), 5)
            if path == "/health":
                return await self._json(writer, 200, {"status": "ok"})
            if path == "/v1/models":
                return await self._json(writer, 200, {"data": [{"id": "fake"}]})
            req = json.loads(body)
            if req.get("model") != "fake":
                return await self._json(writer, 404, {"error": {"message": "unknown model"}})
            prompt = req.get("prompt") or req["messages"][0]["content"]
            n_prompt = len(prompt.split()) + 1
            if not req.get("stream"):
                return await self._json(writer, 200, {"choices": [{"text": "x"}], "usage": {
                    "prompt_tokens": n_prompt, "completion_tokens": 1}})
            if self.mode == "500":
                return await self._json(writer, 500, {"error": {"message": "boom"}})
            self.requests += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                n = int(req["max_tokens"])
                stop = n if self.mode != "early" else max(1, n // 2)
                chat = "messages" in req
                for i in range(stop):
                    await asyncio.sleep(self.delay)
                    if self.mode == "cut" and i == 2:
                        writer.write(b"5\r\ndata:")
                        await writer.drain()
                        return
                    choice = ({"delta": {"content": f" t{i}"}} if chat else {"text": f" t{i}"})
                    choice["finish_reason"] = None
                    ev = f"data: {json.dumps({'choices': [choice]})}\n\n".encode()
                    writer.write(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
                    await writer.drain()
                fin = "length" if stop == n else "stop"
                tail = (f"data: {json.dumps({'choices': [{'text': '', 'finish_reason': fin}]})}\n\n"
                        f"data: {json.dumps({'choices': [], 'usage': {'prompt_tokens': n_prompt, 'completion_tokens': stop}})}\n\n"
                        "data: [DONE]\n\n").encode()
                writer.write(f"{len(tail):x}\r\n".encode() + tail + b"\r\n0\r\n\r\n")
                await writer.drain()
            finally:
                self.active -= 1
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def _json(self, writer, status, obj):
        b = json.dumps(obj).encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(b)}\r\n\r\n".encode() + b)
        await writer.drain()


def self_test():
    passed, failed = 0, 0

    def check(name, cond, detail=""):
        nonlocal passed, failed
        if cond:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {name} {detail}", file=sys.stderr)

    # --- statistics
    check("percentile p50 odd", percentile([3, 1, 2], 50) == 2.0)
    check("percentile p50 even", percentile([1, 2, 3, 4], 50) == 2.5)
    check("percentile p99", abs(percentile(list(range(101)), 99) - 99.0) < 1e-9)
    check("percentile p99 interp", abs(percentile([0, 10], 99) - 9.9) < 1e-9)
    check("percentile empty", percentile([], 50) is None)
    check("percentile single", percentile([5], 99) == 5.0)

    # two clients: client 0 busy 0..10 with two requests, client 1 busy 1..12; window = [1, 10]
    def mk(client, idx, t_send, times, usage=None, err=None):
        r = RequestResult(client, idx, t_send)
        r.chunk_times = list(times)
        r.t_first = times[0] if times else None
        r.t_end = (times[-1] + 0.1) if times else t_send + 0.1
        r.usage = usage
        r.error = err
        r.finish_reason = "length"
        return r
    rs = [mk(0, 0, 0.0, [0.5 + i for i in range(5)]),            # 0.5..4.5
          mk(0, 1, 4.6, [5.0 + i for i in range(5)]),            # 5.0..9.0, ends 9.1
          mk(1, 0, 1.0, [2.0 + 2 * i for i in range(5)],         # 2,4,..,10, ends 10.1
             usage={"completion_tokens": 10, "prompt_tokens": 3}),
          mk(1, 1, 10.2, [11.0], err="HTTP 503: busy")]
    st = level_stats(2, rs, 0.0, 12.0)
    check("stats ok/err", st["requests_ok"] == 3 and st["errors"] == 1, st)
    check("stats window", abs(st["window_s"] - (9.1 - 1.0)) < 1e-9, st["window_s"])
    # tokens in [1, 9.1]: client0 r0: 1.5,2.5,3.5,4.5 = 4; r1: 5..9 = 5; client1 r0 chunks at
    # 2,4,6,8 = 4 chunks x weight 2 (usage says 10 tokens in 5 chunks) = 8 -> 17 tokens
    check("stats agg", abs(st["agg_tok_s"] - 17 / 8.1) < 1e-9, st["agg_tok_s"])
    check("stats tokens (usage preferred)", st["tokens"] == 5 + 5 + 10, st["tokens"])
    check("stats chunk tokens", st["chunk_tokens"] == 15)
    check("stats mismatch", st["usage_mismatch"] == 1)
    check("stats ttft", st["ttft_ms"]["n"] == 3 and abs(st["ttft_ms"]["p50"] - 500.0) < 1e-6,
          st["ttft_ms"])
    check("stats itl", st["itl_ms"]["n"] == 12 and abs(st["itl_ms"]["p50"] - 1000.0) < 1e-6,
          st["itl_ms"])
    check("stats error sample", st["error_samples"] and "503" in st["error_samples"][0])
    check("stats prompt mean", st["prompt_tokens_mean"] == 3)
    st1 = level_stats(3, rs, 0.0, 12.0)   # a client that never ran: no window
    check("stats no window", st1["agg_tok_s"] is None)

    # --- SSE parser
    p = SSEParser()
    evs = p.feed(b": comment\n\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: a\ndata:b\n\n") + p.finish()
    check("sse basic", evs == [("message", '{"a":1}'), ("x", "a\nb")], evs)
    p = SSEParser()
    evs = p.feed(b"error: {\"message\":\"bad\"}\n\n")
    check("sse error line", evs == [("error", '{"message":"bad"}')], evs)
    p = SSEParser()
    evs = p.feed(b"data: [DONE]")
    evs += p.finish()
    check("sse unterminated last event", evs == [("message", "[DONE]")], evs)

    # --- full response parsing from bytes split at every size 1..7, chunked and not
    async def parse_bytes(raw, pieces, chat=False, trickle=False):
        """Parses `raw` split into `pieces`; all buffered up front, or (trickle) each piece
        arriving after the parser has waited for it."""
        reader = asyncio.StreamReader(limit=MAX_LINE)

        async def feed():
            i, k = 0, 0
            while i < len(raw):
                n = pieces[k % len(pieces)]
                reader.feed_data(raw[i:i + n])
                i += n
                k += 1
                if trickle:
                    for _ in range(3):
                        await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.ensure_future(feed())
        if not trickle:
            await feeder
        try:
            status, hdrs = await read_head(reader, 1.0)
            res = RequestResult(0, 0, 0.0)
            ticks = iter(range(1, 10 ** 6))
            await consume_stream(reader, hdrs, res, chat, 1.0, 1000, lambda: float(next(ticks)))
        finally:
            feeder.cancel()
        return status, res

    toks = ["In", " the", " begin", "ning", " \u00e9t\u00e9", " \U0001f600", "\n", " God"]
    for chat in (False, True):
        for crlf in (False, True):
            body = _sse_body(toks, chat=chat, crlf=crlf)
            for te in ("chunked", "length", "close"):
                for sizes, trickle in (([1], False), ([2, 3], False), ([7], False),
                                       ([1000], False), ([1], True), ([2, 3], True),
                                       ([7], True)):
                    if te == "chunked":
                        raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                               + _chunked(body, [5, 11, 64]))
                    elif te == "length":
                        raw = (b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode()
                               + b"\r\n\r\n" + body)
                    else:
                        raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
                    try:
                        status, res = asyncio.run(parse_bytes(raw, sizes, chat, trickle))
                        good = (status == 200 and res.chunk_tokens == len(toks)
                                and res.tokens == len(toks) and res.finish_reason == "length"
                                and res.usage["prompt_tokens"] == 7
                                and res.text_len == len("".join(toks)))
                        check(f"parse chat={chat} crlf={crlf} {te} {sizes} {trickle}", good,
                              (status, res.chunk_tokens, res.usage, res.finish_reason))
                    except Exception as e:  # noqa: BLE001
                        check(f"parse chat={chat} crlf={crlf} {te} {sizes} {trickle}", False, repr(e))

    def expect_error(name, raw, needle):
        for trickle in (False, True):
            try:
                asyncio.run(parse_bytes(raw, [3], trickle=trickle))
                check(f"{name} {trickle}", False, "no error")
            except LoadgenError as e:
                check(f"{name} {trickle}", needle in str(e), str(e))

    expect_error("no [DONE]", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndata: {\"choices\":[]}\n\n",
                 "without data: [DONE]")
    expect_error("bad json", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndata: {nope\n\n", "bad JSON")
    expect_error("stream error obj",
                 b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndata: {\"error\":{\"message\":\"x\"}}\n\n",
                 "stream error")
    expect_error("truncated chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\ndata: ",
                 "closed inside a chunk")
    expect_error("bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                 "bad chunk size")
    expect_error("no status", b"", "closed before the response")
    expect_error("garbage status", b"SSH-2.0-OpenSSH\r\n\r\n", "bad status line")

    # --- URL rules
    try:
        parse_url("http://10.0.0.1:80")
        check("non-loopback refused", False)
    except LoadgenError:
        check("non-loopback refused", True)
    check("loopback ok", parse_url("http://127.0.0.1:9/x/") == ("127.0.0.1", 9, "/x"))
    check("ipv6 loopback ok", parse_url("http://[::1]:9")[0] == "::1")

    # --- prompts
    check("prompt words", len(make_prompt(300).split()) == 300)
    check("prompt tag", make_prompt(3, "(1.2.3)").startswith("(1.2.3) In the"))

    # --- prompt calibration: 5 tokens a word, a server that truncates at 120 tokens and
    # rejects (400) anything past 300
    async def fake_count(args, model, prompt):
        n = 5 * len(prompt.split()) + 1
        if n > 300:
            return -1, "too long"
        return min(n, 120), "usage"

    real_count = globals()["count_prompt_tokens"]
    globals()["count_prompt_tokens"] = fake_count
    try:
        for target in (1, 64, 100, 500):
            a = argparse.Namespace(prompt_tokens=target)
            words, measured, how = asyncio.run(calibrate(a, "m"))
            want = min(target, 120) if target < 500 else 120
            check(f"calibrate {target}", abs(measured - want) <= 3 or (target == 1 and measured == 11),
                  (words, measured, how))
    finally:
        globals()["count_prompt_tokens"] = real_count

    # --- end to end against the fake server
    async def e2e():
        results = {}
        for mode in ("ok", "early", "500", "cut"):
            fake = _FakeServer(mode=mode)
            extra = [] if mode in ("ok", "early") else ["--warmup", "0"]
            srv = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
            try:
                args = parse_args(["--url", f"http://127.0.0.1:{port}", "-N", "1,4", "--requests", "3",
                                   "--max-tokens", "12", "--prompt-tokens", "40", "--pause", "0",
                                   "--timeout", "5", "-q"] + extra)
                info = await main_async(args)
                results[mode] = (info, fake)
            except LoadgenError as e:
                results[mode] = (e, fake)
            finally:
                srv.close()
                await srv.wait_closed()
        # a port nobody listens on
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
        s.close()
        args = parse_args(["--url", f"http://127.0.0.1:{free}", "-N", "1", "-q", "--timeout", "2"])
        try:
            await main_async(args)
            results["refused"] = None
        except LoadgenError as e:
            results["refused"] = e
        return results

    r = asyncio.run(e2e())
    info, fake = r["ok"]
    lv = {s["clients"]: s for s in info["levels"]} if isinstance(info, dict) else {}
    check("e2e levels", set(lv) == {1, 4}, info)
    if set(lv) == {1, 4}:
        check("e2e calibrated prompt", abs(info["prompt_tokens_calibrated"] - 40) <= 1, info["prompt_tokens_calibrated"])
        check("e2e requests", lv[1]["requests_ok"] == 3 and lv[4]["requests_ok"] == 12
              and lv[4]["errors"] == 0, (lv[1]["requests_ok"], lv[4]["requests_ok"]))
        check("e2e tokens", lv[4]["tokens"] == 12 * 12 and lv[4]["chunk_tokens"] == 144
              and lv[4]["usage_mismatch"] == 0)
        check("e2e concurrency", fake.max_active == 4, fake.max_active)
        check("e2e throughput", lv[4]["agg_tok_s"] and lv[4]["agg_tok_s"] > lv[1]["agg_tok_s"] * 1.5,
              (lv[1]["agg_tok_s"], lv[4]["agg_tok_s"]))
        check("e2e ttft/itl", lv[1]["ttft_ms"]["p50"] > 0 and lv[1]["itl_ms"]["p50"] >= 1.0,
              (lv[1]["ttft_ms"], lv[1]["itl_ms"]))
        check("e2e unique prompts", lv[4]["prompt_tokens_mean"] is not None)
        tbl = table(info).splitlines()
        check("e2e table", len(tbl) == 3 and "agg tok/s" in tbl[0]
              and tbl[2].split()[:3] == ["4", "12", "0"], tbl)
    info, _ = r["early"]
    if isinstance(info, dict):
        s = info["levels"][0]
        check("e2e early stop counted", s["stopped_early"] == 3 and s["tokens"] == 3 * 6, s)
    else:
        check("e2e early stop counted", False, info)
    for mode, needle in (("500", "HTTP 500"), ("cut", "missing CRLF")):
        info, _ = r[mode]
        if isinstance(info, dict):
            s = info["levels"][1]
            check(f"e2e errors counted ({mode})", s["errors"] == 12 and s["requests_ok"] == 0
                  and needle in s["error_samples"][0], s)
            check(f"e2e exit status ({mode})", exit_status(info) == 1)
        else:
            check(f"e2e errors counted ({mode})", False, info)
    check("e2e refused", isinstance(r["refused"], LoadgenError)
          and "connection refused" in str(r["refused"]), r["refused"])

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
