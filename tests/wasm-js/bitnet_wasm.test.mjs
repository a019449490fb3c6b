// The WebAssembly module (scripts/build-wasm.sh) in Node 20, through its JS API, against the
// shared transformers reference: the greedy continuation of "In the beginning" token for token,
// streaming, cancelling, and bad input that must throw, never trap.
//
// usage: node --test tests/wasm-js/   (after scripts/build-wasm.sh; scripts/test-wasm.sh runs it)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../', import.meta.url));
const { initSync, Model, GenerateOptions } = await import(`${root}target/wasm32/pkg/bitnet_wasm.js`);
initSync({ module: readFileSync(`${root}target/wasm32/pkg/bitnet_wasm_bg.wasm`) });

const modelBytes = readFileSync(`${root}models/bitnet-b1.58-kjv-i2_s.gguf`);
const reference = JSON.parse(readFileSync(
    `${root}../shared/models/bitnet-b1.58-kjv/reference/reference.json`, 'utf8'))
    .prompts.find((p) => p.name === 'in_the_beginning');
const model = new Model(new Uint8Array(modelBytes));

function greedy(maxTokens) {
    const o = new GenerateOptions();
    o.maxTokens = maxTokens;
    o.temperature = 0;
    return o;
}

const config = JSON.parse(readFileSync(`${root}../shared/models/bitnet-b1.58-kjv/config.json`, 'utf8'));

test('the module runs the SIMD128 kernels on the loaded model', () => {
    assert.equal(model.isa, 'simd128');
    assert.equal(model.vocabSize, config.vocab_size);
});

test('tokenize matches the reference ids', () => {
    assert.deepEqual(Array.from(model.tokenize('In the beginning', true)), reference.token_ids);
});

test('greedy 32 tokens equal the transformers reference, streamed piece by piece', () => {
    const pieces = [];
    const g = model.generate('In the beginning', greedy(32), (p) => { pieces.push(p); });
    assert.deepEqual(Array.from(g.tokens), reference.greedy_new_token_ids);
    assert.equal(g.text, reference.greedy_text);
    assert.equal(pieces.join(''), g.text);
    assert.ok(pieces.length > 10, `only ${pieces.length} pieces: not streamed`);
    assert.equal(g.finish, 'length');
    assert.equal(g.promptTokens, 4);
    assert.ok(g.generationMs > 0);
});

test('a callback returning false stops generation', () => {
    let calls = 0;
    const g = model.generate('In the beginning', greedy(32), () => { calls += 1; return false; });
    assert.equal(g.finish, 'cancelled');
    assert.equal(calls, 1);
    assert.ok(g.tokens.length < 32);
});

test('an exception in the callback stops generation and reaches the caller', () => {
    assert.throws(
        () => model.generate('In the beginning', greedy(8), () => { throw new RangeError('enough'); }),
        { name: 'RangeError', message: 'enough' });
    // The model is still usable afterwards.
    const g = model.generate('In the beginning', greedy(4));
    assert.deepEqual(Array.from(g.tokens), reference.greedy_new_token_ids.slice(0, 4));
});

test('seeded sampling is reproducible', () => {
    const o = new GenerateOptions();
    o.maxTokens = 16;
    o.temperature = 0.9;
    o.seed = 7;
    const a = model.generate('And God said', o);
    const b = model.generate('And God said', o);
    assert.deepEqual(Array.from(a.tokens), Array.from(b.tokens));
});

test('bad model bytes throw an Error that names the problem', () => {
    assert.throws(() => new Model(new TextEncoder().encode('not a gguf file')), (e) => {
        assert.ok(e instanceof Error);
        assert.match(e.message, /gguf/i);
        return true;
    });
    assert.throws(() => new Model(new Uint8Array(0)), Error);
    assert.throws(() => new Model(new Uint8Array(modelBytes.subarray(0, modelBytes.length >> 1))), Error);
    // Flip bytes in the tensor-info area: still an Error, not a trap.
    const corrupt = new Uint8Array(modelBytes);
    corrupt.fill(0xff, 24, 4096);
    assert.throws(() => new Model(corrupt), Error);
});

test('bad requests throw', () => {
    const o = greedy(4);
    o.addBos = false;
    assert.throws(() => model.generate('', o), /empty prompt/);
    const t = greedy(4);
    t.temperature = -1;
    assert.throws(() => model.generate('In', t), Error);
});
