// The chat page of `bitnet serve`: streams from POST v1/chat/completions (server-sent events
// read through fetch + ReadableStream) and keeps the conversation in memory. No build step,
// no dependencies. Model output is only ever inserted as text (Text nodes), never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model"),
    system: $("system"),
    temperature: $("temperature"),
    maxTokens: $("max-tokens"),
    key: $("api-key"),
    reset: $("reset"),
    settings: $("settings"),
    log: $("log"),
    empty: $("empty"),
    error: $("error"),
    composer: $("composer"),
    input: $("input"),
    send: $("send"),
    stop: $("stop"),
  };

  // Settings survive a reload; the conversation does not (a reload is a fresh start).
  const STORE = {
    key: "bitnet-chat.api-key",
    system: "bitnet-chat.system",
    temperature: "bitnet-chat.temperature",
    maxTokens: "bitnet-chat.max-tokens",
  };
  const store = {
    get(k) {
      try {
        return localStorage.getItem(k);
      } catch {
        return null; // storage disabled (private mode, file://): settings just do not persist
      }
    },
    set(k, v) {
      try {
        localStorage.setItem(k, v);
      } catch {
        /* as above */
      }
    },
  };

  /** The conversation sent with every request (the system prompt is added in front). */
  let messages = [];
  /** The AbortController of the request in flight, or null. */
  let inFlight = null;
  /** Bumped by "New conversation", so an answer that ends after a reset leaves no trace. */
  let epoch = 0;

  for (const [field, k] of [
    ["key", STORE.key],
    ["system", STORE.system],
    ["temperature", STORE.temperature],
    ["maxTokens", STORE.maxTokens],
  ]) {
    const saved = store.get(k);
    if (saved !== null) el[field].value = saved;
    el[field].addEventListener("change", () => store.set(k, el[field].value));
  }
  el.key.addEventListener("change", loadModel);

  function authHeaders() {
    const h = {};
    const key = el.key.value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  /** A readable sentence for a failed response, from OpenAI's error JSON where there is one. */
  async function describe(resp) {
    let detail = "";
    try {
      const text = await resp.text();
      try {
        detail = JSON.parse(text)?.error?.message || text;
      } catch {
        detail = text;
      }
    } catch {
      /* the body could not be read: the status says enough */
    }
    let msg = `${resp.status} ${resp.statusText || "error"}`;
    detail = detail.trim().slice(0, 500);
    if (detail) msg += `: ${detail}${/[.!?]$/.test(detail) ? "" : "."}`;
    if (resp.status === 401) {
      msg += " Enter the server's API key under Settings.";
    } else if (resp.status === 503) {
      const after = resp.headers.get("Retry-After");
      msg += after ? ` The server is busy: try again in ${after} s.` : " The server is busy.";
    }
    return msg;
  }

  function showError(msg) {
    el.error.textContent = msg;
    el.error.hidden = false;
  }

  function hideError() {
    el.error.hidden = true;
    el.error.textContent = "";
  }

  async function loadModel() {
    try {
      const r = await fetch("v1/models", { headers: authHeaders() });
      if (r.ok) {
        const j = await r.json();
        el.model.textContent = "model: " + (j?.data?.[0]?.id ?? "?");
      } else if (r.status === 401) {
        el.model.textContent = "API key needed (Settings)";
      } else {
        el.model.textContent = `server answered ${r.status}`;
      }
    } catch {
      el.model.textContent = "server not reachable";
    }
  }

  /** Appends a message to the log; returns its parts. The text is a Text node. */
  function addMessage(role, text) {
    el.empty.hidden = true;
    const root = document.createElement("article");
    root.className = `msg ${role}`;
    const who = document.createElement("h3");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const body = document.createElement("div");
    body.className = "text";
    const node = document.createTextNode(text);
    body.append(node);
    root.append(who, body);
    let stats = null;
    if (role === "assistant") {
      stats = document.createElement("p");
      stats.className = "stats";
      root.append(stats);
    }
    el.log.append(root);
    scrollToEnd(true);
    return { root, node, stats };
  }

  function scrollToEnd(force) {
    const nearEnd = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 80;
    if (force || nearEnd) el.log.scrollTop = el.log.scrollHeight;
  }

  function setStreaming(on) {
    el.composer.dataset.state = on ? "streaming" : "idle";
    el.send.disabled = on;
    el.stop.disabled = !on;
  }

  function readNumber(input, name) {
    if (!input.checkValidity() || input.value.trim() === "") {
      throw new Error(`${name} must be a number from ${input.min} to ${input.max}.`);
    }
    return Number(input.value);
  }

  /** Yields the data of each server-sent event in `body` (a ReadableStream of bytes). */
  async function* sseData(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let m;
        while ((m = /\r\n\r\n|\n\n|\r\r/.exec(buf))) {
          const block = buf.slice(0, m.index);
          buf = buf.slice(m.index + m[0].length);
          const data = block
            .split(/\r\n|\n|\r/)
            .filter((l) => l.startsWith("data:")) // ":" lines are keep-alive comments
            .map((l) => l.slice(5).replace(/^ /, ""))
            .join("\n");
          if (data) yield data;
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  function fmtStats(s) {
    const parts = [`${s.tokens} token${s.tokens === 1 ? "" : "s"}`];
    if (s.rate !== null) parts.push(`${s.rate.toFixed(1)} tokens/s`);
    if (s.ttft !== null) parts.push(`first token ${Math.round(s.ttft)} ms`);
    if (s.end) parts.push(s.end);
    return parts.join(" · ");
  }

  async function send() {
    const text = el.input.value.trim();
    if (!text || inFlight) return;
    hideError();
    let temperature, maxTokens;
    try {
      temperature = readNumber(el.temperature, "Temperature");
      maxTokens = readNumber(el.maxTokens, "Max tokens");
    } catch (e) {
      showError(e.message);
      return;
    }

    messages.push({ role: "user", content: text });
    const userMsg = addMessage("user", text);
    el.input.value = "";
    const answer = addMessage("assistant", "");
    answer.root.setAttribute("aria-busy", "true");
    answer.stats.textContent = "waiting…";
    setStreaming(true);

    const system = el.system.value.trim();
    const body = {
      messages: system ? [{ role: "system", content: system }, ...messages] : [...messages],
      stream: true,
      stream_options: { include_usage: true },
      temperature,
      max_tokens: maxTokens,
    };
    const controller = new AbortController();
    inFlight = controller;
    const myEpoch = epoch;
    const t0 = performance.now();
    let tFirst = null;
    let tLast = null;
    let chunks = 0;
    let usage = null;
    let finish = null;
    let content = "";
    let failure = null;
    const stats = (end) => {
      const tokens = usage?.completion_tokens ?? chunks;
      const rate =
        tokens > 1 && tLast > tFirst ? ((tokens - 1) * 1000) / (tLast - tFirst) : null;
      return { tokens, rate, ttft: tFirst === null ? null : tFirst - t0, end };
    };

    // Text is put on screen at most once per frame: a fast server sends hundreds of pieces a
    // second, and laying the page out for each would fall behind (and delay the Stop click).
    let unshown = "";
    let frame = 0;
    const flush = () => {
      frame = 0;
      if (unshown) {
        answer.node.appendData(unshown);
        unshown = "";
      }
      answer.stats.textContent = fmtStats(stats("streaming…"));
      scrollToEnd(false);
    };
    const show = (delta) => {
      unshown += delta;
      if (!frame) frame = requestAnimationFrame(flush);
    };

    try {
      const resp = await fetch("v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!resp.ok) throw new Error(await describe(resp));
      if (!resp.body) throw new Error("the response has no body to stream");
      let done = false;
      for await (const data of sseData(resp.body)) {
        if (data === "[DONE]") {
          done = true;
          break;
        }
        const ev = JSON.parse(data);
        if (ev.error) throw new Error(`the server ended the answer: ${ev.error.message}`);
        if (ev.usage) usage = ev.usage;
        const choice = ev.choices?.[0];
        if (!choice) continue;
        const delta = choice.delta?.content;
        if (delta) {
          const now = performance.now();
          if (tFirst === null) tFirst = now;
          tLast = now;
          chunks += 1;
          content += delta;
          show(delta);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      if (!done) throw new Error("the stream ended before [DONE]");
    } catch (e) {
      failure = controller.signal.aborted ? "stopped" : e;
    } finally {
      inFlight = null;
      if (frame) cancelAnimationFrame(frame);
      flush();
    }

    setStreaming(false);
    if (myEpoch !== epoch) return; // the conversation was reset meanwhile
    answer.root.removeAttribute("aria-busy");
    let end;
    if (failure === "stopped") {
      end = "stopped";
    } else if (failure) {
      end = "failed";
      const msg = failure instanceof TypeError ? `cannot reach the server (${failure.message})` : failure.message;
      showError(msg);
    } else {
      end = finish === "length" ? "max tokens reached" : finish === "stop" ? "done" : finish || "done";
    }
    if (failure && failure !== "stopped" && content === "") {
      // Nothing was answered: take the question back so it can be sent again as it was.
      messages.pop();
      userMsg.root.remove();
      answer.root.remove();
      if (!el.input.value) el.input.value = text;
      el.empty.hidden = el.log.querySelector(".msg") !== null;
    } else {
      // What was shown is what the model said: a stopped or cut answer stays in the history.
      messages.push({ role: "assistant", content });
      answer.stats.textContent = fmtStats(stats(end));
      answer.root.dataset.done = end;
    }
    el.input.focus();
  }

  function reset() {
    epoch += 1;
    if (inFlight) inFlight.abort();
    messages = [];
    for (const m of el.log.querySelectorAll(".msg")) m.remove();
    el.empty.hidden = false;
    hideError();
    el.input.focus();
  }

  el.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  el.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      el.composer.requestSubmit();
    }
  });
  el.stop.addEventListener("click", () => inFlight?.abort());
  el.reset.addEventListener("click", reset);
  el.settings.addEventListener("submit", (e) => e.preventDefault());

  loadModel();
  el.input.focus();
})();
