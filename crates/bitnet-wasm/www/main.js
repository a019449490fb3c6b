// The page: a worker (worker.js) holds the model; this draws what it sends. Stop terminates
// the worker (a synchronous generation cannot be interrupted by a message) and starts a new
// one with the same model. `?model=URL` loads another GGUF file than the default.
const $ = (id) => document.getElementById(id);
const DEFAULT_MODEL = 'bitnet-b1.58-kjv-i2_s.gguf';
const modelUrl = new URLSearchParams(location.search).get('model') || DEFAULT_MODEL;

let worker = null;
let source = { url: modelUrl };
let pieces = 0;

function setState(state) {
    document.body.dataset.state = state;
    $('generate').disabled = state !== 'ready' && state !== 'done';
    $('stop').disabled = state !== 'generating';
}

function showError(message) {
    $('error').textContent = message;
    $('error').hidden = false;
}

function startWorker() {
    worker?.terminate();
    worker = new Worker('worker.js', { type: 'module' });
    worker.onmessage = (e) => handle(e.data);
    worker.onerror = (e) => { setState('error'); showError(`worker: ${e.message}`); };
    setState('loading');
    $('status').textContent = `Loading ${source.name || source.url}…`;
    worker.postMessage({ type: 'load', ...source });
}

function handle(m) {
    if (m.type === 'loaded') {
        $('status').textContent = `${source.name || source.url}: ${(m.bytes / 1048576).toFixed(1)} MiB, `
            + `vocabulary ${m.vocabSize}, kernels ${m.isa}, loaded in ${(m.ms / 1000).toFixed(2)} s`;
        document.body.dataset.isa = m.isa;
        setState('ready');
    } else if (m.type === 'piece') {
        pieces += 1;
        document.body.dataset.pieces = pieces;
        $('generated').textContent += m.text;
    } else if (m.type === 'done') {
        const n = m.tokens.length;
        // As the engine's own figure (Timings::generation_tps): tokens over the time from the
        // first sampled token to the last.
        const tps = m.generationMs > 0 ? (n / (m.generationMs / 1000)).toFixed(1) : '-';
        $('stats').textContent = `${m.promptTokens} prompt tokens in ${m.promptMs.toFixed(0)} ms · `
            + `${n} tokens generated, ${tps} tokens/s · finish: ${m.finish}`;
        document.body.dataset.tokens = JSON.stringify(m.tokens);
        setState('done');
    } else if (m.type === 'error') {
        setState('error');
        showError(m.message);
    }
}

$('form').addEventListener('submit', (e) => {
    e.preventDefault();
    $('error').hidden = true;
    $('stats').textContent = '';
    pieces = 0;
    document.body.dataset.pieces = 0;
    const prompt = $('prompt').value;
    const out = $('output');
    out.textContent = '';
    const p = document.createElement('span');
    p.className = 'prompt';
    p.textContent = prompt;
    const g = document.createElement('span');
    g.id = 'generated';
    out.append(p, g);
    const seed = $('seed').value === '' ? null : Number($('seed').value);
    setState('generating');
    worker.postMessage({ type: 'generate', prompt, maxTokens: Number($('max-tokens').value),
                         temperature: Number($('temperature').value), seed });
});

$('stop').addEventListener('click', () => {
    $('stats').textContent = 'stopped';
    startWorker();
});

$('file').addEventListener('change', async () => {
    const f = $('file').files[0];
    if (!f) return;
    $('error').hidden = true;
    source = { bytes: new Uint8Array(await f.arrayBuffer()), name: f.name };
    startWorker();
});

startWorker();
