//! The other Hugging Face layouts of the shared KJV model load to the same weights as its bf16
//! master checkpoint:
//! - the PACKED layout of microsoft/bitnet-b1.58-2B-4T (uint8 `[out/4, in]` BitLinear weights
//!   plus a multiplicative `weight_scale`, `quantization_mode: offline`), with an F32 or a BF16
//!   scale;
//! - a SHARDED copy of the bf16 checkpoint (`model-0000N-of-00002.safetensors` + index).
//!
//! The end-to-end logits of these layouts are checked in bitnet-cli's `hf_layouts_logits.rs`
//! (bitnet-inference depends on this crate, so it cannot be a dev-dependency here).

mod common;

use bitnet_models::{LoadedModel, ModelWeights, SourceFormat};
use common::*;
use half::bf16;
use std::sync::OnceLock;

fn load(path: &std::path::Path) -> LoadedModel {
    bitnet_models::load(path, None).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn original() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load(&kjv_dir()))
}

/// Compares every ternary matrix code by code; `scale_eq(original, other)` decides the scales.
fn assert_same_ternaries(
    label: &str,
    a: &ModelWeights,
    b: &ModelWeights,
    scale_eq: impl Fn(f32) -> f32,
) {
    assert_eq!(a.layers.len(), b.layers.len(), "{label}: layer count");
    let mut matrices = 0;
    for (l, (la, lb)) in a.layers.iter().zip(&b.layers).enumerate() {
        for ((role, ma), (_, mb)) in la.ternaries(l).into_iter().zip(lb.ternaries(l)) {
            assert_eq!(
                (ma.rows(), ma.cols()),
                (mb.rows(), mb.cols()),
                "{label}: {role:?} shape"
            );
            for r in 0..ma.rows() {
                assert!(
                    ma.codes_row(r) == mb.codes_row(r),
                    "{label}: {role:?} row {r} codes differ"
                );
            }
            assert_eq!(
                mb.scale().to_bits(),
                scale_eq(ma.scale()).to_bits(),
                "{label}: {role:?} scale {} vs original {}",
                mb.scale(),
                ma.scale()
            );
            matrices += 1;
        }
    }
    assert_eq!(matrices, 42, "{label}: every BitLinear compared");
}

/// Embedding, head and norms are copied unchanged by both layouts.
fn assert_same_full_precision(label: &str, a: &ModelWeights, b: &ModelWeights) {
    assert_eq!(a.config, b.config, "{label}: config");
    assert_eq!(
        a.token_embd.ty(),
        b.token_embd.ty(),
        "{label}: embedding type"
    );
    assert!(
        a.token_embd.data().as_bytes() == b.token_embd.data().as_bytes(),
        "{label}: embedding bytes"
    );
    assert!(
        a.output.is_none() && b.output.is_none(),
        "{label}: tied head"
    );
    assert_eq!(a.output_norm, b.output_norm, "{label}: output norm");
    for (l, (la, lb)) in a.layers.iter().zip(&b.layers).enumerate() {
        for ((role, va), (_, vb)) in la.norms(l).into_iter().zip(lb.norms(l)) {
            assert_eq!(va, vb, "{label}: {role:?}");
        }
    }
}

#[test]
fn original_scales_are_the_reference_absmeans() {
    // Anchors the comparisons below: the bf16 folder itself ternarizes like transformers.
    let wq = &reference_json()["weight_quant"];
    let m = original();
    for (l, layer) in m.weights.layers.iter().enumerate() {
        for (role, t) in layer.ternaries(l) {
            let name = role.hf_names()[0].clone();
            let want = wq[&name]["absmean"].as_f64().expect("absmean") as f32;
            let rel = ((t.scale() - want) / want).abs();
            assert!(
                rel < 1e-6,
                "{name}: scale {} vs reference {want}",
                t.scale()
            );
            let mut counts = [0usize; 3];
            for r in 0..t.rows() {
                for c in t.codes_row(r) {
                    counts[(c + 1) as usize] += 1;
                }
            }
            let want_counts =
                ["n_minus1", "n_zero", "n_plus1"].map(|k| wq[&name][k].as_u64().unwrap() as usize);
            assert_eq!(counts, want_counts, "{name}: -1/0/+1 counts");
        }
    }
}

#[test]
fn packed_layout_with_f32_scale_loads_identical_weights() {
    let dir = tempdir();
    write_packed_dir(dir.path(), ScaleType::F32);
    let m = load(dir.path());
    assert_eq!(m.format, SourceFormat::HfFolder);
    let o = original();
    assert_same_full_precision("packed-f32", &o.weights, &m.weights);
    assert_same_ternaries("packed-f32", &o.weights, &m.weights, |s| s);
    // The packed weights are 4x smaller than bf16 on disk.
    assert!(
        m.file_bytes < o.file_bytes,
        "{} vs {}",
        m.file_bytes,
        o.file_bytes
    );
    let tok_ids = m.tokenizer.encode("In the beginning", true).unwrap();
    assert_eq!(
        tok_ids,
        ids_of(&ref_prompt("in_the_beginning")["token_ids"])
    );
}

#[test]
fn packed_layout_with_bf16_scale_loads_identical_codes_and_rounded_scales() {
    let dir = tempdir();
    write_packed_dir(dir.path(), ScaleType::BF16);
    let m = load(dir.path());
    let o = original();
    assert_same_full_precision("packed-bf16", &o.weights, &m.weights);
    // The only change is the scale's rounding to bf16 (nearest even), as torch stores it.
    assert_same_ternaries("packed-bf16", &o.weights, &m.weights, |s| {
        bf16::from_f32(s).to_f32()
    });
}

#[test]
fn packed_layout_matches_transformers_pack_weights_formula() {
    // Independent of hf_packed::pack: byte P[r, k] holds rows r, R+r, 2R+r, 3R+r of column k
    // in bits 1:0, 3:2, 5:4, 7:6 as t + 1 (transformers' pack_weights).
    let name = "model.layers.3.self_attn.k_proj.weight";
    let src = &kjv_tensors()[name];
    let packed = packed_tensors(
        &std::iter::once((name.to_string(), src.clone())).collect(),
        ScaleType::F32,
    );
    let p = &packed[name];
    let (rows, cols) = (src.shape[0], src.shape[1]);
    assert_eq!(p.shape, vec![rows / 4, cols]);
    let r_rows = rows / 4;
    let mat = &original().weights.layers[3].wk;
    for i in 0..4 {
        for r in 0..r_rows {
            let want = mat.codes_row(i * r_rows + r);
            for (k, &t) in want.iter().enumerate() {
                let code = (p.data[r * cols + k] >> (2 * i)) & 3;
                assert_eq!(code as i8 - 1, t, "row {} col {k}", i * r_rows + r);
            }
        }
    }
}

#[test]
fn sharded_checkpoint_loads_identical_weights() {
    let dir = tempdir();
    write_sharded_dir(dir.path(), kjv_tensors(), 2);
    let names: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names,
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    let m = load(dir.path());
    let o = original();
    assert_same_full_precision("sharded", &o.weights, &m.weights);
    assert_same_ternaries("sharded", &o.weights, &m.weights, |s| s);
    // file_bytes counts every shard (each has its own header, so slightly more than one file).
    let on_disk: u64 = names
        .iter()
        .map(|n| std::fs::metadata(dir.path().join(n)).unwrap().len())
        .sum();
    assert_eq!(m.file_bytes, on_disk);
}

#[test]
fn sharded_packed_checkpoint_loads_identical_weights() {
    // Shards and packing together, with every weight and its `_scale` in different shards.
    let dir = tempdir();
    let packed = packed_tensors(kjv_tensors(), ScaleType::F32);
    write_sharded_dir_with(dir.path(), &packed, 2, |n| {
        usize::from(n.ends_with("_scale"))
    });
    write_json(&dir.path().join("config.json"), &offline_config());
    let m = load(dir.path());
    assert_same_ternaries("sharded-packed", &original().weights, &m.weights, |s| s);
}

#[test]
fn index_takes_precedence_and_unlisted_files_are_ignored() {
    // A stray model.safetensors beside an index must not be loaded on top of the shards (that
    // would be a duplicate-tensor error).
    let dir = tempdir();
    write_sharded_dir(dir.path(), kjv_tensors(), 2);
    std::os::unix::fs::symlink(
        kjv_dir().join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let m = load(dir.path());
    assert_same_ternaries("index+stray", &original().weights, &m.weights, |s| s);
}

#[test]
fn shards_without_an_index_are_all_loaded() {
    let dir = tempdir();
    write_sharded_dir(dir.path(), kjv_tensors(), 2);
    std::fs::remove_file(dir.path().join("model.safetensors.index.json")).unwrap();
    let m = load(dir.path());
    assert_same_ternaries("no-index", &original().weights, &m.weights, |s| s);
}
