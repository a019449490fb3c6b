//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

use bitnet_gguf::{GgmlType, GgufWriter, MetadataValue, ValueType};

/// The bitnet.cpp-written reference model, or `None` (test skipped, with a note) when the shared
/// models directory is not mounted. `BITNET_GGUF_TEST_FILE` overrides the path.
pub fn reference_file() -> Option<PathBuf> {
    let path = std::env::var_os("BITNET_GGUF_TEST_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from("/work/shared/models/bitnet-b1.58-kjv/gguf/bitnet-b1.58-kjv-i2_s.gguf")
        });
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipping: reference GGUF {} not found", path.display());
        None
    }
}

/// One value of every metadata type, including empty and nested arrays.
pub fn every_value_type() -> Vec<(String, MetadataValue)> {
    use MetadataValue as V;
    vec![
        ("t.u8".into(), V::U8(0xfe)),
        ("t.i8".into(), V::I8(-7)),
        ("t.u16".into(), V::U16(0xbeef)),
        ("t.i16".into(), V::I16(-12345)),
        ("t.u32".into(), V::U32(0xdead_beef)),
        ("t.i32".into(), V::I32(i32::MIN)),
        ("t.f32".into(), V::F32(-1.5e-7)),
        ("t.bool".into(), V::Bool(true)),
        ("t.bool_false".into(), V::Bool(false)),
        (
            "t.string".into(),
            V::String("héllo, 世界 \0 with nul".into()),
        ),
        ("t.empty_string".into(), V::String(String::new())),
        ("t.u64".into(), V::U64(u64::MAX)),
        ("t.i64".into(), V::I64(i64::MIN)),
        ("t.f64".into(), V::F64(std::f64::consts::PI)),
        (
            "t.arr_u8".into(),
            V::Array {
                elem: ValueType::U8,
                items: vec![V::U8(1), V::U8(2), V::U8(255)],
            },
        ),
        (
            "t.arr_f32".into(),
            V::Array {
                elem: ValueType::F32,
                items: vec![V::F32(0.5), V::F32(f32::INFINITY)],
            },
        ),
        (
            "t.arr_str".into(),
            MetadataValue::string_array(["a", "", "ccc"]),
        ),
        (
            "t.arr_empty".into(),
            V::Array {
                elem: ValueType::I64,
                items: vec![],
            },
        ),
        (
            "t.arr_nested".into(),
            V::Array {
                elem: ValueType::Array,
                items: vec![
                    V::Array {
                        elem: ValueType::Bool,
                        items: vec![V::Bool(true), V::Bool(false)],
                    },
                    V::Array {
                        elem: ValueType::String,
                        items: vec![],
                    },
                    V::Array {
                        elem: ValueType::Array,
                        items: vec![V::Array {
                            elem: ValueType::U16,
                            items: vec![V::U16(9)],
                        }],
                    },
                ],
            },
        ),
    ]
}

/// Deterministic filler bytes for tensor data.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A small but complete file: every metadata type and a few tensors of different types
/// (a few KB, so that exhaustive truncation tests stay fast).
pub fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetadataValue::from("bitnet-b1.58"))
        .unwrap();
    for (k, v) in every_value_type() {
        w.add_metadata(k, v).unwrap();
    }
    let tensors: [(&str, Vec<u64>, GgmlType); 4] = [
        ("token_embd.weight", vec![32, 4], GgmlType::F16),
        ("blk.0.attn_q.weight", vec![128, 2], GgmlType::I2S),
        ("blk.0.attn_norm.weight", vec![32], GgmlType::F32),
        ("blk.0.ffn_up.weight", vec![64, 2], GgmlType::Q8_0),
    ];
    for (i, (name, dims, ty)) in tensors.into_iter().enumerate() {
        let n = ty.tensor_nbytes(&dims).unwrap() as usize;
        w.add_tensor(name, dims, ty, pattern(n, i as u8)).unwrap();
    }
    let mut out = Vec::new();
    w.write_to(&mut out).unwrap();
    out
}

/// Hand-assembles raw GGUF bytes, for headers no well-behaved writer would produce.
#[derive(Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    /// Magic, version, tensor count, metadata count.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A metadata entry with a u32 value.
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(ValueType::U32.id()).u32(v)
    }
    /// A tensor info entry.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Zero padding up to a multiple of `align`, then `n` data bytes.
    pub fn data(&mut self, align: usize, n: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0xab, n));
        self
    }
}

/// Compares metadata values treating floats bit-for-bit (so NaN payloads count as equal only if
/// they were preserved exactly).
pub fn same_value(a: &MetadataValue, b: &MetadataValue) -> bool {
    use MetadataValue as V;
    match (a, b) {
        (V::F32(x), V::F32(y)) => x.to_bits() == y.to_bits(),
        (V::F64(x), V::F64(y)) => x.to_bits() == y.to_bits(),
        (
            V::Array {
                elem: ea,
                items: ia,
            },
            V::Array {
                elem: eb,
                items: ib,
            },
        ) => ea == eb && ia.len() == ib.len() && ia.iter().zip(ib).all(|(x, y)| same_value(x, y)),
        _ => a == b,
    }
}

pub fn same_metadata(a: &[(String, MetadataValue)], b: &[(String, MetadataValue)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}
