// Decode cost of the WebAssembly module in Node (one thread, SIMD128 kernels), with and without
// a JS callback per piece, against the native engine on one thread (the `bitnet` binary given),
// for the README's WebAssembly section.
//
// Figures are CPU time per generated token (user + system), not wall time: on a shared machine
// wall time mostly measures the other processes. The wasm side times `generate` alone; the
// native side runs `bitnet run --greedy -t 1 --ignore-eos` for 1 and 1 + N tokens under
// /usr/bin/time and divides the difference (load and prompt cancel out). Best of `reps`.
//
// usage: node scripts/bench-wasm.mjs [path/to/bitnet] [tokens=256] [reps=3]
//        (after scripts/build-wasm.sh; without a binary only the wasm figures)
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../', import.meta.url));
const { initSync, Model, GenerateOptions } = await import(`${root}target/wasm32/pkg/bitnet_wasm.js`);
initSync({ module: readFileSync(`${root}target/wasm32/pkg/bitnet_wasm_bg.wasm`) });
const [native, tokens = 256, reps = 3] = [process.argv[2], Number(process.argv[3] || 256), Number(process.argv[4] || 3)];
const modelPath = `${root}models/bitnet-b1.58-kjv-i2_s.gguf`;
const prompt = 'In the beginning';

const cpuMs = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
const model = new Model(new Uint8Array(readFileSync(modelPath)));
console.log(`wasm: kernels ${model.isa}, node ${process.version}; ${tokens} tokens, best of ${reps}`);
const o = new GenerateOptions();
o.maxTokens = tokens;
o.temperature = 0;

const results = {};
for (const [name, cb] of [['wasm, no callback', undefined], ['wasm, callback per piece', () => {}]]) {
    let best = Infinity;
    for (let r = 0; r < reps; r++) {
        const t0 = cpuMs();
        const g = model.generate(prompt, o, cb);
        best = Math.min(best, (cpuMs() - t0) / g.tokens.length);
    }
    results[name] = best;
}

function nativeCpuMs(n) {
    const r = spawnSync('/usr/bin/time', ['-f', '%U %S', native, 'run', '-m', modelPath, '-p', prompt,
        '--greedy', '--ignore-eos', '-t', '1', '-n', String(n), '-q', '--no-echo'], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${native}: ${r.stderr}`);
    const [u, s] = r.stderr.trim().split('\n').pop().split(' ').map(Number);
    return (u + s) * 1000;
}
if (native) {
    let best = Infinity;
    for (let r = 0; r < reps; r++) best = Math.min(best, (nativeCpuMs(1 + tokens) - nativeCpuMs(1)) / tokens);
    results['native (bitnet run -t 1)'] = best;
}
for (const [name, ms] of Object.entries(results)) {
    const vs = results['native (bitnet run -t 1)'];
    console.log(`${name}: ${ms.toFixed(3)} ms CPU/token (${(1000 / ms).toFixed(0)} tokens/s of CPU)`
        + (vs && !name.startsWith('native') ? `, ${(ms / vs).toFixed(2)}x native` : ''));
}
