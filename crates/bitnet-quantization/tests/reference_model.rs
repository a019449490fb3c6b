//! Checks against the shared KJV model (skipped when /work/shared is absent, e.g. in plain CI):
//! - `ternarize_absmean` on the bf16 master weights reproduces transformers' per-tensor absmean
//!   and -1/0/+1 counts (reference.json -> weight_quant),
//! - every I2_S tensor of the bitnet.cpp GGUF decodes to exactly those codes and that scale.

use bitnet_quantization::{i2s, ternarize_absmean};
use std::collections::HashMap;
use std::path::Path;

const MODEL_DIR: &str = "/work/shared/models/bitnet-b1.58-kjv";

fn model_dir() -> Option<&'static Path> {
    let p = Path::new(MODEL_DIR);
    if p.join("model.safetensors").exists() {
        Some(p)
    } else {
        eprintln!("skipping: {MODEL_DIR} not present");
        None
    }
}

/// Ternarizes every BitLinear weight of the safetensors checkpoint.
fn ternarized(dir: &Path) -> HashMap<String, (Vec<usize>, Vec<i8>, f32)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.shape().len() != 2 || name.contains("embed_tokens") {
            continue;
        }
        assert_eq!(view.dtype(), safetensors::Dtype::BF16);
        let mut w = vec![0.0f32; view.data().len() / 2];
        bitnet_quantization::float::bf16_to_f32(view.data(), &mut w);
        let (codes, scale) = ternarize_absmean(&w);
        out.insert(name.to_string(), (view.shape().to_vec(), codes, scale));
    }
    out
}

#[test]
fn ternarization_matches_transformers_counts() {
    let Some(dir) = model_dir() else { return };
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference/reference.json")).unwrap())
            .unwrap();
    let wq = reference["weight_quant"].as_object().unwrap();
    let ours = ternarized(dir);
    assert_eq!(wq.len(), 42);
    assert_eq!(ours.len(), 42);
    let mut max_ulps = 0u32;
    for (name, r) in wq {
        let (shape, codes, scale) = &ours[name];
        assert_eq!(
            shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
            r["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect::<Vec<_>>()
        );
        let count = |t: i8| codes.iter().filter(|&&c| c == t).count() as u64;
        assert_eq!(
            (count(-1), count(0), count(1)),
            (
                r["n_minus1"].as_u64().unwrap(),
                r["n_zero"].as_u64().unwrap(),
                r["n_plus1"].as_u64().unwrap()
            ),
            "{name}"
        );
        let ref_scale = r["absmean"].as_f64().unwrap() as f32; // an f32 printed exactly
        max_ulps = max_ulps.max(scale.to_bits().abs_diff(ref_scale.to_bits()));
    }
    // torch's f32 mean and our f64-accumulated one agree to the last bit or one ulp.
    assert!(
        max_ulps <= 1,
        "absmean differs from torch by {max_ulps} ulps"
    );
    eprintln!("absmean max difference vs torch: {max_ulps} ulp");
}

/// Just enough GGUF v3 to locate tensors (the real reader lives in bitnet-gguf).
struct Gguf<'a> {
    b: &'a [u8],
    off: usize,
}

impl Gguf<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.off..self.off + n];
        self.off += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn skip_value(&mut self, ty: u32) {
        match ty {
            0 | 1 | 7 => self.off += 1,
            2 | 3 => self.off += 2,
            4..=6 => self.off += 4,
            10..=12 => self.off += 8,
            8 => {
                self.string();
            }
            9 => {
                let et = self.u32();
                for _ in 0..self.u64() {
                    self.skip_value(et);
                }
            }
            _ => panic!("unknown gguf value type {ty}"),
        }
    }
}

fn hf_name(gguf: &str) -> Option<String> {
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, t) = rest.split_once('.')?;
    let hf = match t {
        "attn_q.weight" => "self_attn.q_proj",
        "attn_k.weight" => "self_attn.k_proj",
        "attn_v.weight" => "self_attn.v_proj",
        "attn_output.weight" => "self_attn.o_proj",
        "ffn_gate.weight" => "mlp.gate_proj",
        "ffn_up.weight" => "mlp.up_proj",
        "ffn_down.weight" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.weight"))
}

#[test]
fn gguf_i2s_tensors_decode_to_the_same_ternary_weights() {
    let Some(dir) = model_dir() else { return };
    let file = dir.join("gguf/bitnet-b1.58-kjv-i2_s.gguf");
    let bytes = std::fs::read(&file).unwrap();
    let mut g = Gguf { b: &bytes, off: 0 };
    assert_eq!(g.take(4), b"GGUF");
    assert_eq!(g.u32(), 3);
    let n_tensors = g.u64();
    for _ in 0..g.u64() {
        g.string();
        let ty = g.u32();
        g.skip_value(ty);
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = g.string();
        let dims: Vec<u64> = (0..g.u32()).map(|_| g.u64()).collect();
        let ty = g.u32();
        let off = g.u64() as usize;
        infos.push((name, dims, ty, off));
    }
    let data_start = g.off.div_ceil(32) * 32; // no general.alignment key -> 32
    let ours = ternarized(dir);
    let mut checked = 0;
    for (name, dims, ty, off) in infos {
        if ty != 36 {
            continue;
        }
        let n = (dims[0] * dims[1]) as usize;
        let t = &bytes[data_start + off..][..i2s::nbytes(n)];
        let (codes, scale) = i2s::decode(t, n).unwrap();
        // The converter replicates the scale over the whole 32-byte tail.
        for k in 1..8 {
            assert_eq!(i2s::scale(&t[4 * k..], n).unwrap(), scale);
        }
        let (shape, ref_codes, ref_scale) = &ours[&hf_name(&name).unwrap()];
        // GGUF ne = [in, out]; the flattened order is HF's row-major [out, in].
        assert_eq!((dims[0] as usize, dims[1] as usize), (shape[1], shape[0]));
        assert!(codes == *ref_codes, "{name}: codes differ");
        assert!(
            (scale - ref_scale).abs() <= ref_scale * 1e-6,
            "{name}: {scale} vs {ref_scale}"
        );
        checked += 1;
    }
    assert_eq!(checked, 42);
}
