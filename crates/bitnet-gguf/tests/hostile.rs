//! Corrupt and malicious files: every one must give the right error, quickly, without a panic
//! or a large allocation.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use bitnet_gguf::{GgufError, GgufFile, MetadataValue, Storage, ValueType};
use common::Raw;
use proptest::prelude::*;

/// Records the largest single allocation made by the current thread, so the tests can prove
/// that absurd counts are rejected before anything is reserved for them.
struct PeakAlloc;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator, which meets the
// GlobalAlloc contract; the bookkeeping only reads sizes and does not allocate.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(layout.size())));
        // SAFETY: the caller's layout contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from System (every allocation here does) with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new_size)));
        // SAFETY: as in dealloc, plus the caller's new_size contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Parses `bytes` (copied before measuring), asserting it fails fast with a small footprint.
fn parse_err(bytes: &[u8]) -> GgufError {
    let storage = Storage::from_vec(bytes.to_vec());
    LARGEST.with(|m| m.set(0));
    let start = Instant::now();
    let result = GgufFile::from_storage(storage);
    let elapsed = start.elapsed();
    let largest = LARGEST.with(Cell::get);
    let err = match result {
        Ok(f) => panic!("expected an error, parsed {f:?}"),
        Err(e) => e,
    };
    assert!(
        elapsed < Duration::from_millis(200),
        "took {elapsed:?}: {err}"
    );
    assert!(
        largest <= 64 * 1024 + 16 * bytes.len(),
        "allocated {largest} bytes at once: {err}"
    );
    // Every error renders to a readable message.
    assert!(!err.to_string().is_empty());
    err
}

fn parse_ok(bytes: &[u8]) -> GgufFile {
    GgufFile::from_storage(Storage::from_vec(bytes.to_vec())).unwrap()
}

/// A tensorless file around custom metadata bytes (`n_kv` entries already encoded in `kv`),
/// with trailing zeros so that the entry-count sanity check does not fire first.
fn with_kv(n_kv: u64, kv: &Raw) -> Vec<u8> {
    let mut r = Raw::header(3, 0, n_kv);
    r.bytes(&kv.0).bytes(&[0; 64]);
    r.0
}

fn one_tensor(dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", dims, ty, offset).data(32, data);
    r.0
}

#[test]
fn every_truncation_of_a_small_file_fails() {
    let bytes = common::small_file();
    let f = parse_ok(&bytes);
    let last_end = f
        .tensors()
        .iter()
        .map(|t| f.data_offset() + t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    let full = Storage::from_vec(bytes.clone());
    for len in 0..last_end {
        let cut = full.slice(0, len).unwrap();
        match GgufFile::from_storage(cut) {
            Ok(_) => panic!("truncation to {len} bytes was accepted"),
            Err(
                GgufError::Truncated { .. }
                | GgufError::TooLarge { .. }
                | GgufError::TensorOutOfBounds { .. },
            ) => {}
            Err(e) => panic!("truncation to {len} bytes: unexpected error {e}"),
        }
    }
    // Only the padding after the last tensor may go.
    for len in last_end..=bytes.len() {
        assert!(
            GgufFile::from_storage(full.slice(0, len).unwrap()).is_ok(),
            "{len}"
        );
    }
}

#[test]
fn truncations_of_the_reference_file_fail() {
    let Some(path) = common::reference_file() else {
        return;
    };
    let full = Storage::map_file(&path).unwrap();
    let f = GgufFile::from_storage(full.clone()).unwrap();
    let data_offset = f.data_offset() as usize;
    // Each attempt re-parses everything before the cut (~8000 vocabulary strings), so sample:
    // every byte of the fixed header and first metadata entries, a prime stride through the
    // token and merge arrays, a denser stride through the tensor infos and the padding after
    // them (they start within 31 bytes of `ti_start`), and the data offset itself. The synthetic
    // file above gets the exhaustive treatment.
    let ti_bytes: usize = f
        .tensors()
        .iter()
        .map(|t| 8 + t.name.len() + 4 + 8 * t.dims.len() + 4 + 8)
        .sum();
    let ti_start = data_offset - ti_bytes - 31;
    let dense = (0..4096)
        .chain((ti_start..data_offset).step_by(5))
        .chain([data_offset - 1, data_offset]);
    let sparse = (4096..ti_start).step_by(211);
    // And several points inside the tensor data, including just before the last byte.
    let last_end = f
        .tensors()
        .iter()
        .map(|t| data_offset as u64 + t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    let in_data = [
        data_offset + 1,
        data_offset + 4096,
        last_end / 2,
        last_end - 32,
        last_end - 1,
    ];
    for len in dense.chain(sparse).chain(in_data) {
        assert!(
            GgufFile::from_storage(full.slice(0, len).unwrap()).is_err(),
            "truncated to {len}"
        );
    }
}

#[test]
fn bad_magic_and_versions() {
    assert!(matches!(
        parse_err(b""),
        GgufError::Truncated {
            offset: 0,
            needed: 4,
            available: 0,
            ..
        }
    ));
    assert!(matches!(parse_err(b"GGU"), GgufError::Truncated { .. }));
    assert!(
        matches!(parse_err(b"GGML\x03\0\0\0"), GgufError::BadMagic { found } if &found == b"GGML")
    );
    assert!(matches!(
        parse_err(b"GGUF\x03\0"),
        GgufError::Truncated { .. }
    ));

    let mut v1 = Raw::header(1, 0, 0);
    v1.bytes(&[0; 64]);
    assert!(matches!(
        parse_err(&v1.0),
        GgufError::UnsupportedVersion { version: 1 }
    ));
    assert!(matches!(
        parse_err(&Raw::header(99, 0, 0).0),
        GgufError::UnsupportedVersion { version: 99 }
    ));
    assert!(matches!(
        parse_err(&Raw::header(0, 0, 0).0),
        GgufError::UnsupportedVersion { version: 0 }
    ));
    // A big-endian v3 file: the version reads as 0x03000000.
    let mut be = b"GGUF".to_vec();
    be.extend_from_slice(&3u32.to_be_bytes());
    be.extend_from_slice(&[0; 16]);
    let err = parse_err(&be);
    assert!(matches!(err, GgufError::BigEndian { .. }));
    assert!(err.to_string().contains("big-endian"), "{err}");

    // v2 has the same layout as v3 and is accepted; an empty v3 file is fine.
    assert_eq!(parse_ok(&Raw::header(2, 0, 0).0).version(), 2);
    assert!(parse_ok(&Raw::header(3, 0, 0).0).tensors().is_empty());
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    let err = parse_err(&Raw::header(3, 0, 1 << 60).0);
    assert!(
        matches!(err, GgufError::TooLarge { count, offset: 16, .. } if count == 1 << 60),
        "{err}"
    );
    assert!(matches!(
        parse_err(&Raw::header(3, 1 << 60, 0).0),
        GgufError::TooLarge { offset: 8, .. }
    ));
    assert!(matches!(
        parse_err(&Raw::header(3, u64::MAX, u64::MAX).0),
        GgufError::TooLarge { .. }
    ));
    // A tensor count that would fit in the file size but not after the metadata.
    let mut r = Raw::header(3, 2, 1);
    r.kv_u32("k", 1).bytes(&[0; 30]);
    assert!(matches!(
        parse_err(&r.0),
        GgufError::TooLarge { max: 1, .. }
    ));

    // A key, a string value and a tensor name claiming 2^60 bytes.
    let mut r = Raw::default();
    r.u64(1 << 60).bytes(b"key");
    let err = parse_err(&with_kv(1, &r));
    assert!(
        matches!(&err, GgufError::Truncated { what, needed, .. } if what == "metadata key" && *needed == 1 << 60)
    );
    let mut r = Raw::default();
    r.str("k")
        .u32(ValueType::String.id())
        .u64(1 << 60)
        .bytes(b"abc");
    let err = parse_err(&with_kv(1, &r));
    assert!(err.to_string().contains("\"k\""), "names the key: {err}");
    let mut r = Raw::header(3, 1, 0);
    r.u64(u64::MAX).bytes(&[0; 40]);
    assert!(matches!(parse_err(&r.0), GgufError::Truncated { .. }));

    // Arrays of 2^62 elements, of each element type.
    for elem in ValueType::ALL {
        let mut r = Raw::default();
        r.str("arr")
            .u32(ValueType::Array.id())
            .u32(elem.id())
            .u64(1 << 62)
            .bytes(&[0; 64]);
        let err = parse_err(&with_kv(1, &r));
        assert!(
            matches!(err, GgufError::TooLarge { count, .. } if count == 1 << 62),
            "{elem}: {err}"
        );
    }
    // An array of (empty) arrays whose outer count just exceeds what fits.
    let mut r = Raw::header(3, 0, 1);
    r.str("arr")
        .u32(ValueType::Array.id())
        .u32(ValueType::Array.id())
        .u64(3);
    for _ in 0..2 {
        r.u32(ValueType::U8.id()).u64(0);
    }
    assert!(matches!(
        parse_err(&r.0),
        GgufError::TooLarge {
            count: 3,
            max: 2,
            ..
        }
    ));
}

#[test]
fn metadata_arrays_are_bounded_by_their_items_not_only_the_file_size() {
    // One byte of file per u8 element, 32 bytes of memory once decoded: a 16 MiB array would
    // take 512 MiB. One element past the limit is refused before anything is reserved.
    let n = bitnet_gguf::MAX_METADATA_ITEMS + 1;
    let mut r = Raw::default();
    r.str("blob")
        .u32(ValueType::Array.id())
        .u32(ValueType::U8.id())
        .u64(n)
        .bytes(&vec![7; n as usize]);
    let err = parse_err(&with_kv(1, &r));
    assert!(
        matches!(err, GgufError::TooManyItems { count, .. } if count == n),
        "{err}"
    );
    assert!(err.to_string().contains("\"blob\""), "names the key: {err}");
    // The limit counts every array of the file: nested ones add up.
    let mut r = Raw::default();
    r.str("nested")
        .u32(ValueType::Array.id())
        .u32(ValueType::Array.id())
        .u64(2)
        .u32(ValueType::U8.id())
        .u64(1)
        .bytes(&[1])
        .u32(ValueType::U8.id())
        .u64(n - 3)
        .bytes(&vec![2; (n - 3) as usize]);
    let err = parse_err(&with_kv(1, &r));
    assert!(
        matches!(err, GgufError::TooManyItems { count, .. } if count == n - 3),
        "{err}"
    );
}

#[test]
fn nesting_is_bounded() {
    let nested = |depth: usize| {
        let mut r = Raw::default();
        r.str("n").u32(ValueType::Array.id());
        for _ in 1..depth {
            r.u32(ValueType::Array.id()).u64(1);
        }
        r.u32(ValueType::U8.id()).u64(0);
        with_kv(1, &r)
    };
    let f = parse_ok(&nested(bitnet_gguf::MAX_ARRAY_DEPTH));
    let mut v = f.get("n").unwrap();
    for _ in 1..bitnet_gguf::MAX_ARRAY_DEPTH {
        v = &v.as_array().unwrap()[0];
    }
    assert_eq!(
        v,
        &MetadataValue::Array {
            elem: ValueType::U8,
            items: vec![]
        }
    );
    assert!(matches!(
        parse_err(&nested(bitnet_gguf::MAX_ARRAY_DEPTH + 1)),
        GgufError::NestingTooDeep { .. }
    ));
    // Deep enough to overflow the stack if recursion were unbounded.
    assert!(matches!(
        parse_err(&nested(1_000_000)),
        GgufError::NestingTooDeep { .. }
    ));
}

#[test]
fn bad_tensor_infos() {
    // A tensor claiming 4 TiB.
    let err = parse_err(&one_tensor(&[1 << 20, 1 << 20], 0, 0, 64));
    assert!(
        matches!(&err, GgufError::TensorOutOfBounds { tensor, size, data_size: 64, .. } if tensor == "w" && *size == 1 << 42),
        "{err}"
    );
    // Offset past the end, and an offset so large that offset + size overflows.
    assert!(matches!(
        parse_err(&one_tensor(&[4], 0, 64, 64)),
        GgufError::TensorOutOfBounds { offset: 64, .. }
    ));
    assert!(matches!(
        parse_err(&one_tensor(&[4], 0, 32, 47)),
        GgufError::TensorOutOfBounds { .. }
    ));
    assert!(matches!(
        parse_err(&one_tensor(&[4], 0, u64::MAX - 31, 64)),
        GgufError::TensorOutOfBounds { .. }
    ));
    // Misaligned offset.
    let err = parse_err(&one_tensor(&[4], 0, 8, 64));
    assert!(
        matches!(
            err,
            GgufError::MisalignedTensor {
                offset: 8,
                alignment: 32,
                ..
            }
        ),
        "{err}"
    );
    // Unknown type ids (37 = bitnet.cpp's I8_S, never stored; 39 = TL2 / MXFP4).
    for id in [4, 37, 39, 1000, u32::MAX] {
        let err = parse_err(&one_tensor(&[4], id, 0, 64));
        assert!(
            matches!(&err, GgufError::UnknownTensorType { tensor, id: i } if tensor == "w" && *i == id),
            "{err}"
        );
    }
    // Too many dims, including a count that would make a naive reader allocate 32 GiB.
    for n_dims in [5u32, u32::MAX] {
        let mut r = Raw::header(3, 1, 0);
        r.str("w").u32(n_dims).bytes(&[1; 80]);
        assert!(
            matches!(parse_err(&r.0), GgufError::TooManyDims { n_dims: n, max: 4, .. } if n == n_dims)
        );
    }
    // Element counts that overflow.
    assert!(matches!(
        parse_err(&one_tensor(&[1 << 32, 1 << 32], 0, 0, 64)),
        GgufError::InvalidShape { .. }
    ));
    assert!(matches!(
        parse_err(&one_tensor(&[u64::MAX], 24, 0, 64)),
        GgufError::InvalidShape { .. }
    ));
    // A row that is not a whole number of blocks (Q8_0 blocks are 32), an I2_S count not /4.
    let err = parse_err(&one_tensor(&[33], 8, 0, 64));
    assert!(
        matches!(&err, GgufError::InvalidShape { tensor, .. } if tensor == "w"),
        "{err}"
    );
    assert!(matches!(
        parse_err(&one_tensor(&[6], 36, 0, 64)),
        GgufError::InvalidShape { .. }
    ));
    // A zero dim is fine: an empty tensor.
    let f = parse_ok(&one_tensor(&[0, 5], 0, 0, 0));
    assert_eq!(f.tensors()[0].n_bytes, 0);
    assert!(f.tensor_data(&f.tensors()[0]).is_empty());
    // Tensors need their data section to exist, even if empty, once the padding is cut off.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[0], 0, 0);
    assert!(matches!(parse_err(&r.0), GgufError::Truncated { .. }));

    // Duplicate tensor names.
    let mut r = Raw::header(3, 2, 0);
    r.tensor("w", &[4], 0, 0)
        .tensor("w", &[4], 0, 32)
        .data(32, 64);
    assert!(matches!(parse_err(&r.0), GgufError::DuplicateTensor { name } if name == "w"));
}

/// Tensors must not share bytes: an alias at another tensor's offset, or one relabelled to a
/// wider type so that it reads across its neighbours, is an error naming both.
#[test]
fn overlapping_tensors_are_rejected() {
    // attn_k at attn_q's offset (64 f32 = 256 bytes each).
    let mut r = Raw::header(3, 2, 0);
    r.tensor("attn_q", &[64], 0, 0)
        .tensor("attn_k", &[64], 0, 0)
        .data(32, 512);
    let err = parse_err(&r.0);
    assert!(
        matches!(&err, GgufError::OverlappingTensors { first, second, .. }
            if first == "attn_q" && second == "attn_k"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("attn_q") && msg.contains("attn_k") && msg.contains("overlap"),
        "{msg}"
    );
    // A tensor relabelled F32 over three F16 neighbours: it starts first and reaches over
    // all of them; the first one it covers is named.
    let mut r = Raw::header(3, 4, 0);
    r.tensor("wide", &[64], 0, 0)
        .tensor("n1", &[32], 1, 64)
        .tensor("n2", &[32], 1, 128)
        .tensor("n3", &[32], 1, 192)
        .data(32, 256);
    let err = parse_err(&r.0);
    assert!(
        matches!(&err, GgufError::OverlappingTensors { first, second, first_range: (0, 256), second_range: (64, 128) }
            if first == "wide" && second == "n1"),
        "{err}"
    );
    // Listed out of file order, the overlap is still found.
    let mut r = Raw::header(3, 3, 0);
    r.tensor("c", &[8], 0, 64)
        .tensor("a", &[8], 0, 0)
        .tensor("b", &[16], 0, 32)
        .data(32, 128);
    assert!(matches!(
        parse_err(&r.0),
        GgufError::OverlappingTensors { .. }
    ));
    // Back to back (aligned) and an empty tensor anywhere are fine.
    let mut r = Raw::header(3, 3, 0);
    r.tensor("a", &[8], 0, 0)
        .tensor("b", &[8], 0, 32)
        .tensor("empty", &[0], 0, 32)
        .data(32, 64);
    assert_eq!(parse_ok(&r.0).tensors().len(), 3);
}

#[test]
fn bad_metadata() {
    // Non-UTF-8 key, string value, string inside an array, tensor name.
    let mut r = Raw::default();
    r.u64(2)
        .bytes(&[0xff, 0xfe])
        .u32(ValueType::U8.id())
        .bytes(&[0]);
    assert!(matches!(
        parse_err(&with_kv(1, &r)),
        GgufError::InvalidUtf8 { offset: 32, .. }
    ));
    let mut r = Raw::default();
    r.str("k").u32(ValueType::String.id()).u64(1).bytes(&[0x80]);
    let err = parse_err(&with_kv(1, &r));
    assert!(
        matches!(&err, GgufError::InvalidUtf8 { what, .. } if what.contains("\"k\"")),
        "{err}"
    );
    let mut r = Raw::default();
    r.str("a")
        .u32(ValueType::Array.id())
        .u32(ValueType::String.id())
        .u64(2)
        .str("ok")
        .u64(2)
        .bytes(&[0xc3, 0x28]);
    assert!(matches!(
        parse_err(&with_kv(1, &r)),
        GgufError::InvalidUtf8 { .. }
    ));
    let mut r = Raw::header(3, 1, 0);
    r.u64(1)
        .bytes(&[0xff])
        .u32(1)
        .u64(4)
        .u32(0)
        .u64(0)
        .data(32, 64);
    assert!(matches!(parse_err(&r.0), GgufError::InvalidUtf8 { .. }));

    // Unknown value types, at the top level and as an array element type.
    let mut r = Raw::default();
    r.str("k").u32(13).u64(0);
    assert!(matches!(
        parse_err(&with_kv(1, &r)),
        GgufError::UnknownValueType {
            id: 13,
            offset: 33,
            ..
        }
    ));
    let mut r = Raw::default();
    r.str("k").u32(ValueType::Array.id()).u32(0xdead).u64(0);
    assert!(matches!(
        parse_err(&with_kv(1, &r)),
        GgufError::UnknownValueType { id: 0xdead, .. }
    ));

    // Duplicate keys.
    let mut r = Raw::default();
    r.kv_u32("dup", 1).kv_u32("dup", 2);
    assert!(matches!(parse_err(&with_kv(2, &r)), GgufError::DuplicateKey { key } if key == "dup"));

    // Bad alignment values and types.
    for v in [0u32, 3, 48, 1 << 31 | 1] {
        let mut r = Raw::default();
        r.kv_u32("general.alignment", v);
        let err = parse_err(&with_kv(1, &r));
        assert!(
            matches!(err, GgufError::BadAlignment { value } if value == i128::from(v)),
            "{v}"
        );
    }
    let mut r = Raw::default();
    r.str("general.alignment")
        .u32(ValueType::I64.id())
        .u64((-32i64) as u64);
    assert!(matches!(
        parse_err(&with_kv(1, &r)),
        GgufError::BadAlignment { value: -32 }
    ));
    let mut r = Raw::default();
    r.str("general.alignment")
        .u32(ValueType::U64.id())
        .u64(1 << 40);
    assert!(matches!(
        parse_err(&with_kv(1, &r)),
        GgufError::BadAlignment { .. }
    ));
    let mut r = Raw::default();
    r.str("general.alignment")
        .u32(ValueType::String.id())
        .str("32");
    assert!(matches!(
        parse_err(&with_kv(1, &r)),
        GgufError::BadMetadataType { .. }
    ));
    // A valid non-default alignment of another integer type is honoured.
    let mut r = Raw::header(3, 1, 1);
    r.str("general.alignment")
        .u32(ValueType::U16.id())
        .bytes(&8u16.to_le_bytes());
    r.tensor("w", &[2], 0, 8).data(8, 16);
    let f = parse_ok(&r.0);
    assert_eq!((f.alignment(), f.data_offset() % 8), (8, 0));
    assert_eq!(f.tensors()[0].offset, 8);

    // A bool byte other than 0/1 reads as true, as in llama.cpp.
    let mut r = Raw::default();
    r.str("b").u32(ValueType::Bool.id()).bytes(&[2]);
    assert_eq!(
        parse_ok(&with_kv(1, &r)).get("b"),
        Some(&MetadataValue::Bool(true))
    );
}

// ---- random corruption ----

#[derive(Debug, Clone)]
enum Mutation {
    Byte(usize, u8),
    /// Overwrite 8 bytes with an extreme value, to hit counts and lengths more often.
    Word(usize, u64),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop::sample::select(vec![
        0,
        1,
        3,
        4,
        5,
        36,
        255,
        1 << 31,
        1 << 32,
        1 << 62,
        1 << 63,
        u64::MAX,
    ]);
    prop_oneof![
        6 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        3 => (any::<usize>(), extreme).prop_map(|(i, v)| Mutation::Word(i, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_corruption_never_panics(muts in prop::collection::vec(mutation(), 1..12)) {
        let mut bytes = common::small_file();
        // Corrupt mostly the header (where the structure is), sometimes the data.
        let header = GgufFile::from_storage(Storage::from_vec(bytes.clone())).unwrap().data_offset() as usize;
        for m in muts {
            let len = bytes.len();
            match m {
                Mutation::Byte(i, b) => bytes[i % header.min(len)] = b,
                Mutation::Word(i, v) => {
                    let at = i % header.min(len).saturating_sub(8).max(1);
                    if at + 8 <= len {
                        bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
                    }
                }
                Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            }
            if bytes.is_empty() {
                break;
            }
        }
        let start = Instant::now();
        if let Ok(f) = GgufFile::from_storage(Storage::from_vec(bytes)) {
            for t in f.tensors() {
                prop_assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
            }
        }
        prop_assert!(start.elapsed() < Duration::from_millis(200));
    }
}
