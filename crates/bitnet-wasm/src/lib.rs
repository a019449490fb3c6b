//! bitnet-rs in WebAssembly. Built for `wasm32-unknown-unknown` with `+simd128` and
//! post-processed by `wasm-bindgen --target web` (scripts/build-wasm.sh), it gives JS:
//!
//! ```js
//! import init, { Model, GenerateOptions } from './bitnet_wasm.js';
//! await init();                                   // or initSync({ module: bytes }) in Node
//! const model = new Model(new Uint8Array(gguf));  // throws an Error on a bad file
//! const opts = new GenerateOptions();             // greedy unless temperature is set
//! opts.maxTokens = 32;
//! const g = model.generate('In the beginning', opts, (piece) => { show(piece); });
//! g.text; g.tokens; g.finish; g.generationMs;
//! ```
//!
//! The callback gets each piece of text as it becomes final; returning `false` stops
//! generation, and an exception thrown in it stops generation and is re-thrown by `generate`.
//! Generation is synchronous: in a page, run it in a worker (www/worker.js) so the page can draw
//! the pieces as they arrive.

mod runner;

pub use runner::{Output, Request, Runner};
use wasm_bindgen::prelude::*;

/// Logs Rust panics to `console.error` with their message (by default a panic is only an
/// `unreachable` trap).
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// Sampling settings for [`Model::generate`]. Defaults: greedy, 128 tokens, BOS added.
#[wasm_bindgen]
#[derive(Clone, Copy, Debug)]
pub struct GenerateOptions {
    #[wasm_bindgen(js_name = maxTokens)]
    pub max_tokens: u32,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 disables.
    #[wasm_bindgen(js_name = topK)]
    pub top_k: u32,
    /// 1 disables.
    #[wasm_bindgen(js_name = topP)]
    pub top_p: f32,
    /// Fixed seed for reproducible sampling; unset: random.
    pub seed: Option<u32>,
    #[wasm_bindgen(js_name = addBos)]
    pub add_bos: bool,
}

#[wasm_bindgen]
impl GenerateOptions {
    #[wasm_bindgen(constructor)]
    pub fn new() -> GenerateOptions {
        let d = Request::default();
        GenerateOptions {
            max_tokens: d.max_tokens as u32,
            temperature: 0.0,
            top_k: d.top_k as u32,
            top_p: d.top_p,
            seed: None,
            add_bos: d.add_bos,
        }
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions::new()
    }
}

impl From<&GenerateOptions> for Request {
    fn from(o: &GenerateOptions) -> Request {
        Request {
            max_tokens: o.max_tokens as usize,
            temperature: o.temperature,
            top_k: o.top_k as usize,
            top_p: o.top_p,
            seed: o.seed.map(u64::from),
            add_bos: o.add_bos,
            ctx: None,
        }
    }
}

/// The result of [`Model::generate`].
#[wasm_bindgen(getter_with_clone)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    /// `eos`, `stop`, `length`, `context_full` or `cancelled`.
    pub finish: String,
    #[wasm_bindgen(js_name = promptTokens)]
    pub prompt_tokens: u32,
    #[wasm_bindgen(js_name = promptMs)]
    pub prompt_ms: f64,
    /// Time from the first sampled token to the last (the prompt's evaluation excluded).
    #[wasm_bindgen(js_name = generationMs)]
    pub generation_ms: f64,
}

/// A model loaded from the bytes of a GGUF file.
#[wasm_bindgen]
pub struct Model {
    runner: Runner,
}

#[wasm_bindgen]
impl Model {
    /// Parses and loads the model; a file that is not a usable GGUF model throws an Error
    /// naming the problem.
    #[wasm_bindgen(constructor)]
    pub fn new(bytes: Vec<u8>) -> Result<Model, JsError> {
        let runner = Runner::load(bytes, "model.gguf").map_err(|e| JsError::new(&e))?;
        Ok(Model { runner })
    }

    /// The kernel instruction set in use (`simd128`).
    #[wasm_bindgen(getter)]
    pub fn isa(&self) -> String {
        Runner::isa().to_string()
    }

    #[wasm_bindgen(getter, js_name = vocabSize)]
    pub fn vocab_size(&self) -> u32 {
        self.runner.vocab_size() as u32
    }

    /// Token ids of `text` (with BOS first when `add_bos` and the model wants one).
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, JsError> {
        self.runner
            .tokenize(text, add_bos)
            .map_err(|e| JsError::new(&e))
    }

    /// Generates a continuation of `prompt`, calling `on_text(piece)` (if given) as text
    /// becomes final.
    pub fn generate(
        &self,
        prompt: &str,
        options: &GenerateOptions,
        on_text: Option<js_sys::Function>,
    ) -> Result<Generation, JsValue> {
        let mut thrown: Option<JsValue> = None;
        let out = self.runner.generate(prompt, &options.into(), |piece| {
            let Some(f) = &on_text else { return true };
            // The engine still hands over the text it held back after a stop; a callback that
            // threw is not called again.
            if thrown.is_some() {
                return false;
            }
            match f.call1(&JsValue::NULL, &JsValue::from_str(piece)) {
                Ok(v) => v.as_bool() != Some(false),
                Err(e) => {
                    thrown = Some(e);
                    false
                }
            }
        });
        if let Some(e) = thrown {
            return Err(e);
        }
        let o = out.map_err(|e| JsValue::from(JsError::new(&e)))?;
        Ok(Generation {
            text: o.text,
            tokens: o.tokens,
            finish: o.finish.to_string(),
            prompt_tokens: o.prompt_tokens as u32,
            prompt_ms: o.prompt_ms,
            generation_ms: o.generation_ms,
        })
    }
}
