// Runs the model off the page's thread: generation is synchronous, so on the page itself no
// piece would be drawn before the last one. Messages in: {type: 'load', url | bytes},
// {type: 'generate', prompt, maxTokens, temperature, seed}. Out: loaded, piece, done, error.
import init, { Model, GenerateOptions } from './pkg/bitnet_wasm.js';

let model = null;
const ready = init();

async function load(msg) {
    await ready;
    const t0 = performance.now();
    let bytes = msg.bytes;
    if (!bytes) {
        const r = await fetch(msg.url);
        if (!r.ok) throw new Error(`fetching ${msg.url}: HTTP ${r.status}`);
        bytes = new Uint8Array(await r.arrayBuffer());
    }
    model?.free();
    model = null;
    model = new Model(bytes);
    postMessage({ type: 'loaded', isa: model.isa, vocabSize: model.vocabSize,
                  bytes: bytes.length, ms: performance.now() - t0 });
}

function generate(msg) {
    if (!model) throw new Error('no model loaded');
    const o = new GenerateOptions();
    o.maxTokens = msg.maxTokens;
    o.temperature = msg.temperature;
    if (msg.seed !== null) o.seed = msg.seed;
    const g = model.generate(msg.prompt, o, (piece) => { postMessage({ type: 'piece', text: piece }); });
    postMessage({ type: 'done', text: g.text, tokens: Array.from(g.tokens), finish: g.finish,
                  promptTokens: g.promptTokens, promptMs: g.promptMs, generationMs: g.generationMs });
    g.free();
    o.free();
}

onmessage = async (e) => {
    try {
        if (e.data.type === 'load') await load(e.data);
        else if (e.data.type === 'generate') generate(e.data);
    } catch (err) {
        postMessage({ type: 'error', message: String(err && err.message ? err.message : err) });
    }
};
