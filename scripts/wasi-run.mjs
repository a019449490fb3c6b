// Runs a wasm32-wasip1 program (the kernel test binaries of scripts/test-wasm.sh) under Node's
// WASI, as cargo's target runner: `node scripts/wasi-run.mjs prog.wasm [args...]`.
//
// The programs are linked against Debian's wasi-libc (bookworm: a 2022 snapshot), which
// predates the single-threaded pthread stubs that Rust's std calls to spawn a thread. They are
// left as imports (`--allow-undefined`) and provided here the way newer wasi-libc does:
// attributes succeed, `pthread_create` fails with ENOTSUP, which std reports as
// `ErrorKind::Unsupported` (rayon then runs its global pool on the calling thread, and the
// kernels' own pool has one thread on wasm32). Any other missing import traps if called.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';

const [file, ...args] = process.argv.slice(2);
if (!file) {
    console.error('usage: node wasi-run.mjs PROGRAM.wasm [ARGS...]');
    process.exit(2);
}
const wasi = new WASI({
    version: 'preview1',
    args: [file, ...args],
    env: process.env,
    preopens: { '/': '/', '.': process.cwd() },
    returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(file));
const ENOTSUP = 58; // WASI errno `notsup`
const stubs = {
    pthread_attr_init: () => 0,
    pthread_attr_destroy: () => 0,
    pthread_attr_setstacksize: () => 0,
    pthread_create: () => ENOTSUP,
};
const env = {};
for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.module !== 'env') continue;
    env[imp.name] = stubs[imp.name] ?? (() => {
        throw new Error(`wasi-run: ${imp.name} was called, but no WASI libc provides it`);
    });
}
// Each WASI function behind a plain JS function: called directly from wasm, Node 20's bindings
// (V8 fast API calls) crashed Node with SIGSEGV at the end of some test binaries (dense_q8,
// always, after its last test passed); behind a JS call the same programs exit cleanly.
const wasiImport = {};
for (const [name, f] of Object.entries(wasi.wasiImport)) {
    wasiImport[name] = (...args) => f(...args);
}
const instance = await WebAssembly.instantiate(module, {
    wasi_snapshot_preview1: wasiImport,
    env,
});
process.exitCode = wasi.start(instance);
