// Decode speed of the WebAssembly module in Node (one thread, SIMD128 kernels), with and
// without a JS callback per piece, for the README's WebAssembly section. Compare with the
// native engine on one thread: `bitnet run --greedy -n 128 -t 1` (its "generation" figure).
//
// usage: node scripts/bench-wasm.mjs [tokens=128] [reps=3]   (after scripts/build-wasm.sh)
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../', import.meta.url));
const { initSync, Model, GenerateOptions } = await import(`${root}target/wasm32/pkg/bitnet_wasm.js`);
initSync({ module: readFileSync(`${root}target/wasm32/pkg/bitnet_wasm_bg.wasm`) });
const tokens = Number(process.argv[2] || 128);
const reps = Number(process.argv[3] || 3);

let t0 = performance.now();
const model = new Model(new Uint8Array(readFileSync(`${root}models/bitnet-b1.58-kjv-i2_s.gguf`)));
console.log(`load: ${(performance.now() - t0).toFixed(0)} ms, kernels ${model.isa}, node ${process.version}`);
const o = new GenerateOptions();
o.maxTokens = tokens;
o.temperature = 0;

for (const [name, cb] of [['no callback', undefined], ['callback per piece', () => {}]]) {
    const rates = [];
    let prompt = 0;
    for (let r = 0; r < reps; r++) {
        t0 = performance.now();
        const g = model.generate('In the beginning', o, cb);
        const wall = performance.now() - t0;
        rates.push({ tps: g.tokens.length / (g.generationMs / 1000), n: g.tokens.length,
                     wallPerToken: wall / g.tokens.length });
        prompt = g.promptMs;
    }
    const best = rates.reduce((a, b) => (b.tps > a.tps ? b : a));
    console.log(`${name}: ${best.n} tokens, best of ${reps}: ${best.tps.toFixed(1)} tokens/s `
        + `(${(1000 / best.tps).toFixed(2)} ms/token; wall incl. prompt ${best.wallPerToken.toFixed(2)} `
        + `ms/token; prompt ${prompt.toFixed(1)} ms)`);
}
