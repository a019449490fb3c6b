//! Writer -> reader round trips, writer validation, and the exact byte layout.

mod common;

use bitnet_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetadataValue, Storage, ValueType};
use common::{pattern, same_metadata, Raw};
use proptest::prelude::*;

fn write(w: &GgufWriter) -> Vec<u8> {
    let mut out = Vec::new();
    w.write_to(&mut out).unwrap();
    out
}

fn read(bytes: Vec<u8>) -> GgufFile {
    GgufFile::from_storage(Storage::from_vec(bytes)).unwrap()
}

#[test]
fn every_value_type_round_trips() {
    let mut w = GgufWriter::new();
    let kvs = common::every_value_type();
    for (k, v) in &kvs {
        w.add_metadata(k.clone(), v.clone()).unwrap();
    }
    let f = read(write(&w));
    assert_eq!(f.metadata(), &kvs[..]);
    let seen: Vec<ValueType> = kvs.iter().map(|(_, v)| v.value_type()).collect();
    for ty in ValueType::ALL {
        assert!(seen.contains(&ty), "{ty} not covered");
    }
    assert_eq!(f.get("t.i32"), Some(&MetadataValue::I32(i32::MIN)));
    assert_eq!(
        f.get("t.arr_str").unwrap().as_string_array(),
        Some(vec!["a", "", "ccc"])
    );
    assert_eq!(f.alignment(), 32);
    assert!(
        f.get("general.alignment").is_none(),
        "default alignment is implicit"
    );
}

#[test]
fn every_tensor_type_round_trips() {
    let mut w = GgufWriter::new();
    let mut expected = Vec::new();
    for (i, ty) in GgmlType::ALL.into_iter().enumerate() {
        let row = if ty == GgmlType::I2S {
            128
        } else {
            ty.block_size() as u64 * 2
        };
        let dims = vec![row, 3];
        let n = ty.tensor_nbytes(&dims).unwrap();
        let data = pattern(n as usize, i as u8);
        w.add_tensor(format!("t.{}", ty.name()), dims.clone(), ty, data.clone())
            .unwrap();
        expected.push((ty, dims, data));
    }
    // Shapes at the edges: a scalar, a 4-d tensor, an empty one.
    w.add_tensor(
        "scalar",
        vec![],
        GgmlType::F32,
        1.5f32.to_le_bytes().to_vec(),
    )
    .unwrap();
    w.add_tensor("four_d", vec![2, 1, 3, 2], GgmlType::I8, pattern(12, 9))
        .unwrap();
    w.add_tensor("empty", vec![0, 7], GgmlType::Q4_0, vec![])
        .unwrap();

    let f = read(write(&w));
    assert_eq!(f.tensors().len(), GgmlType::ALL.len() + 3);
    for (t, (ty, dims, data)) in f.tensors().iter().zip(&expected) {
        assert_eq!((t.ty, &t.dims), (*ty, dims));
        assert_eq!(t.n_bytes, data.len() as u64);
        assert_eq!(t.offset % 32, 0);
        assert_eq!(&f.tensor_data(t)[..], &data[..], "{}", t.name);
    }
    assert_eq!(
        &f.tensor_data(f.tensor("scalar").unwrap())[..],
        &1.5f32.to_le_bytes()
    );
    assert_eq!(f.tensor("scalar").unwrap().n_elements(), 1);
    assert_eq!(f.tensor("four_d").unwrap().n_elements(), 12);
    assert_eq!(f.tensor("empty").unwrap().n_bytes, 0);
}

#[test]
fn type_tables() {
    for ty in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        assert_eq!(ty.to_string(), ty.name());
    }
    assert_eq!(GgmlType::from_id(36), Some(GgmlType::I2S));
    assert_eq!(GgmlType::I2S.name(), "I2_S");
    assert_eq!(GgmlType::Q4K.name(), "Q4_K");
    for id in [4, 5, 16, 23, 29, 31, 33, 37, 38, 39, 40, u32::MAX] {
        assert_eq!(GgmlType::from_id(id), None, "{id}");
    }
    for (i, ty) in ValueType::ALL.into_iter().enumerate() {
        assert_eq!(ty.id(), i as u32);
        assert_eq!(ValueType::from_id(i as u32), Some(ty));
    }
    assert_eq!(ValueType::from_id(13), None);

    // Sizes ggml gives (type_traits) for one row of 256 elements.
    let row256 = [
        (GgmlType::F32, 1024),
        (GgmlType::F16, 512),
        (GgmlType::BF16, 512),
        (GgmlType::Q4_0, 144),
        (GgmlType::Q4_1, 160),
        (GgmlType::Q5_0, 176),
        (GgmlType::Q5_1, 192),
        (GgmlType::Q8_0, 272),
        (GgmlType::Q8_1, 288),
        (GgmlType::Q2K, 84),
        (GgmlType::Q3K, 110),
        (GgmlType::Q4K, 144),
        (GgmlType::Q5K, 176),
        (GgmlType::Q6K, 210),
        (GgmlType::Q8K, 292),
        (GgmlType::TQ1_0, 54),
        (GgmlType::TQ2_0, 66),
        (GgmlType::I8, 256),
        (GgmlType::I16, 512),
        (GgmlType::I32, 1024),
        (GgmlType::I64, 2048),
        (GgmlType::F64, 2048),
        (GgmlType::I2S, 64),
    ];
    for (ty, bytes) in row256 {
        assert_eq!(ty.row_nbytes(256).unwrap(), bytes, "{ty}");
    }
    assert_eq!(
        GgmlType::I2S.tensor_nbytes(&[2560, 6912]).unwrap(),
        2560 * 6912 / 4 + 32
    );
    assert_eq!(
        GgmlType::TQ2_0.tensor_nbytes(&[2560, 2]).unwrap(),
        10 * 66 * 2
    );
}

#[test]
fn tensor_nbytes_rejects_bad_shapes() {
    let shape_err = |r: bitnet_gguf::Result<u64>| matches!(r, Err(GgufError::InvalidShape { .. }));
    assert!(shape_err(GgmlType::Q8_0.tensor_nbytes(&[33, 2])));
    assert!(shape_err(GgmlType::TQ2_0.tensor_nbytes(&[128])));
    assert!(shape_err(GgmlType::I2S.tensor_nbytes(&[3, 3])));
    assert!(shape_err(GgmlType::F32.tensor_nbytes(&[1, 1, 1, 1, 1])));
    assert!(shape_err(GgmlType::F32.tensor_nbytes(&[1 << 32, 1 << 32])));
    assert!(shape_err(GgmlType::F32.tensor_nbytes(&[u64::MAX])));
    assert!(shape_err(GgmlType::I8.tensor_nbytes(&[1 << 63])));
    // Largest legal element count: fine for bytes-per-element types, no overflow for the others.
    assert_eq!(
        GgmlType::I8.tensor_nbytes(&[i64::MAX as u64]).unwrap(),
        i64::MAX as u64
    );
    assert!(GgmlType::F64.tensor_nbytes(&[i64::MAX as u64]).is_err());
    assert!(GgmlType::Q8K
        .tensor_nbytes(&[(i64::MAX as u64) / 256 * 256])
        .is_ok());
    assert_eq!(GgmlType::I2S.tensor_nbytes(&[0, 5]).unwrap(), 32);
    assert_eq!(GgmlType::Q4_0.tensor_nbytes(&[0, 5]).unwrap(), 0);
    assert_eq!(GgmlType::F16.tensor_nbytes(&[]).unwrap(), 2);
}

#[test]
fn accessors() {
    use MetadataValue as V;
    assert_eq!(V::I32(-1).as_u64(), None);
    assert_eq!(V::I8(5).as_u64(), Some(5));
    assert_eq!(V::U64(u64::MAX).as_u64(), Some(u64::MAX));
    assert_eq!(V::U64(u64::MAX).as_i64(), None);
    assert_eq!(V::I16(-3).as_i64(), Some(-3));
    assert_eq!(V::F32(1.0).as_u64(), None);
    assert_eq!(V::U32(500_000).as_f64(), Some(500_000.0));
    assert_eq!(V::I64(-2).as_f64(), Some(-2.0));
    assert_eq!(V::F32(0.25).as_f64(), Some(0.25));
    assert_eq!(V::String("x".into()).as_f64(), None);
    assert_eq!(V::Bool(true).as_bool(), Some(true));
    assert_eq!(V::U8(1).as_bool(), None);
    assert_eq!(V::from("s").as_str(), Some("s"));
    assert_eq!(V::U8(1).as_str(), None);
    let arr = V::Array {
        elem: ValueType::U8,
        items: vec![V::U8(1)],
    };
    assert_eq!(arr.as_array().map(<[_]>::len), Some(1));
    assert_eq!(arr.as_string_array(), None);
    assert_eq!(
        V::Array {
            elem: ValueType::String,
            items: vec![]
        }
        .as_string_array(),
        Some(vec![])
    );
    assert_eq!(V::from(3u32).value_type(), ValueType::U32);
}

#[test]
fn alignment_handling() {
    // Explicit alignment: written as u32 general.alignment, data and offsets aligned to it.
    let mut w = GgufWriter::new();
    w.add_metadata("a", MetadataValue::U8(1)).unwrap();
    w.set_alignment(64).unwrap();
    w.add_tensor("x", vec![3], GgmlType::F32, vec![0; 12])
        .unwrap();
    w.add_tensor("y", vec![5], GgmlType::I8, vec![1; 5])
        .unwrap();
    let bytes = write(&w);
    assert_eq!(bytes.len() % 64, 0);
    let f = read(bytes);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.get("general.alignment"), Some(&MetadataValue::U32(64)));
    assert_eq!(f.metadata()[1].0, "general.alignment");
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor("y").unwrap().offset, 64);

    // Setting it again updates in place; setting 32 explicitly still writes the key.
    w.set_alignment(32).unwrap();
    let f = read(write(&w));
    assert_eq!(
        (f.alignment(), f.get("general.alignment")),
        (32, Some(&MetadataValue::U32(32)))
    );
    assert_eq!(f.metadata().len(), 2);

    // An alignment key added as metadata, of another integer type, is honoured and kept as is.
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", MetadataValue::U64(16))
        .unwrap();
    w.add_tensor("x", vec![1], GgmlType::I8, vec![7]).unwrap();
    w.add_tensor("y", vec![1], GgmlType::I8, vec![8]).unwrap();
    let f = read(write(&w));
    assert_eq!(f.alignment(), 16);
    assert_eq!(f.tensor("y").unwrap().offset, 16);
    assert_eq!(f.get("general.alignment"), Some(&MetadataValue::U64(16)));
    assert!(matches!(
        w.add_metadata("general.alignment", MetadataValue::U32(8)),
        Err(GgufError::DuplicateKey { .. })
    ));

    for bad in [0u64, 3, 48, 1 << 32, u64::MAX] {
        assert!(
            matches!(
                GgufWriter::new().set_alignment(bad),
                Err(GgufError::BadAlignment { .. })
            ),
            "{bad}"
        );
    }
    let mut w = GgufWriter::new();
    assert!(matches!(
        w.add_metadata("general.alignment", MetadataValue::I32(-8)),
        Err(GgufError::BadAlignment { value: -8 })
    ));
    assert!(matches!(
        w.add_metadata("general.alignment", MetadataValue::from("32")),
        Err(GgufError::BadMetadataType { .. })
    ));
    assert!(w.set_alignment(1).is_ok());
}

#[test]
fn writer_rejects_invalid_input() {
    let mut w = GgufWriter::new();
    w.add_metadata("k", MetadataValue::U8(1)).unwrap();
    assert!(
        matches!(w.add_metadata("k", MetadataValue::U8(2)), Err(GgufError::DuplicateKey { key }) if key == "k")
    );
    let mixed = MetadataValue::Array {
        elem: ValueType::U8,
        items: vec![MetadataValue::U8(1), MetadataValue::I8(1)],
    };
    assert!(matches!(
        w.add_metadata("m", mixed),
        Err(GgufError::ArrayTypeMismatch { .. })
    ));
    let mut deep = MetadataValue::Array {
        elem: ValueType::U8,
        items: vec![],
    };
    for _ in 0..bitnet_gguf::MAX_ARRAY_DEPTH {
        deep = MetadataValue::Array {
            elem: ValueType::Array,
            items: vec![deep],
        };
    }
    assert!(matches!(
        w.add_metadata("deep", deep),
        Err(GgufError::NestingTooDeep { .. })
    ));

    w.add_tensor("t", vec![4], GgmlType::F32, vec![0; 16])
        .unwrap();
    assert!(matches!(
        w.add_tensor("t", vec![4], GgmlType::F32, vec![0; 16]),
        Err(GgufError::DuplicateTensor { name }) if name == "t"
    ));
    assert!(matches!(
        w.add_tensor("u", vec![4], GgmlType::F32, vec![0; 15]),
        Err(GgufError::TensorSizeMismatch {
            expected: 16,
            actual: 15,
            ..
        })
    ));
    match w.add_tensor("v", vec![33], GgmlType::Q8_0, vec![]) {
        Err(GgufError::InvalidShape { tensor, .. }) => assert_eq!(tensor, "v"),
        other => panic!("{other:?}"),
    }
    assert!(w
        .add_tensor("w", vec![1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4])
        .is_err());
    assert!(w
        .add_tensor("i2s", vec![6], GgmlType::I2S, vec![0; 33])
        .is_err());
    // The rejected calls left nothing behind.
    let f = read(write(&w));
    assert_eq!(f.metadata().len(), 1);
    assert_eq!(f.tensors().len(), 1);
}

/// The exact bytes llama.cpp's `gguf_write_to_file` produces for a tiny file, assembled by hand.
#[test]
fn byte_layout_matches_llama_cpp() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetadataValue::from("llama"))
        .unwrap();
    w.add_metadata(
        "arr",
        MetadataValue::Array {
            elem: ValueType::I16,
            items: vec![MetadataValue::I16(-2)],
        },
    )
    .unwrap();
    w.add_tensor("a", vec![3], GgmlType::F32, pattern(12, 1))
        .unwrap();
    w.add_tensor("b", vec![2, 2], GgmlType::F16, pattern(8, 2))
        .unwrap();

    let mut e = Raw::header(3, 2, 2);
    e.str("general.architecture").u32(8).str("llama");
    e.str("arr")
        .u32(9)
        .u32(3)
        .u64(1)
        .bytes(&(-2i16).to_le_bytes());
    e.tensor("a", &[3], 0, 0).tensor("b", &[2, 2], 1, 32);
    let header_len = e.0.len();
    e.data(32, 0)
        .bytes(&pattern(12, 1))
        .data(32, 0)
        .bytes(&pattern(8, 2))
        .data(32, 0);
    assert_eq!(write(&w), e.0);
    let f = read(e.0);
    assert_eq!(f.data_offset(), header_len.next_multiple_of(32) as u64);
}

#[test]
fn write_file_is_atomic_and_cleans_up() {
    let dir = std::env::temp_dir().join(format!("bitnet-gguf-writefile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.gguf");
    std::fs::write(&path, b"old contents").unwrap();
    let mut w = GgufWriter::new();
    w.add_metadata("x", MetadataValue::U32(1)).unwrap();
    w.add_tensor("t", vec![2], GgmlType::F16, vec![1, 2, 3, 4])
        .unwrap();
    w.write_file(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(&f.tensor_data(&f.tensors()[0])[..], &[1, 2, 3, 4]);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["m.gguf"], "no temporary file left behind");

    // A missing directory: an I/O error naming the path, and nothing created.
    let bad = dir.join("missing").join("m.gguf");
    let err = w.write_file(&bad).unwrap_err();
    assert!(matches!(err, GgufError::Io(_)));
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(matches!(GgufFile::open(&bad), Err(GgufError::Io(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- property tests ----

fn value_of(ty: ValueType, depth: u32) -> BoxedStrategy<MetadataValue> {
    use MetadataValue as V;
    match ty {
        ValueType::U8 => any::<u8>().prop_map(V::U8).boxed(),
        ValueType::I8 => any::<i8>().prop_map(V::I8).boxed(),
        ValueType::U16 => any::<u16>().prop_map(V::U16).boxed(),
        ValueType::I16 => any::<i16>().prop_map(V::I16).boxed(),
        ValueType::U32 => any::<u32>().prop_map(V::U32).boxed(),
        ValueType::I32 => any::<i32>().prop_map(V::I32).boxed(),
        // Arbitrary bit patterns, NaNs included: the writer must preserve them exactly.
        ValueType::F32 => any::<u32>().prop_map(|b| V::F32(f32::from_bits(b))).boxed(),
        ValueType::Bool => any::<bool>().prop_map(V::Bool).boxed(),
        ValueType::String => ".{0,12}".prop_map(V::String).boxed(),
        ValueType::U64 => any::<u64>().prop_map(V::U64).boxed(),
        ValueType::I64 => any::<i64>().prop_map(V::I64).boxed(),
        ValueType::F64 => any::<u64>().prop_map(|b| V::F64(f64::from_bits(b))).boxed(),
        ValueType::Array => {
            let elems: Vec<ValueType> = ValueType::ALL
                .into_iter()
                .filter(|&t| depth < 2 || t != ValueType::Array)
                .collect();
            prop::sample::select(elems)
                .prop_flat_map(move |elem| {
                    prop::collection::vec(value_of(elem, depth + 1), 0..5)
                        .prop_map(move |items| MetadataValue::Array { elem, items })
                })
                .boxed()
        }
    }
}

fn any_value() -> impl Strategy<Value = MetadataValue> {
    prop::sample::select(ValueType::ALL.to_vec()).prop_flat_map(|ty| value_of(ty, 0))
}

/// A tensor of a random type with a legal random shape (small) and random bytes.
fn any_tensor() -> impl Strategy<Value = (GgmlType, Vec<u64>, u8)> {
    (prop::sample::select(GgmlType::ALL.to_vec()), 0usize..=4).prop_flat_map(|(ty, rank)| {
        let row = if ty == GgmlType::I2S {
            4
        } else {
            ty.block_size() as u64
        };
        let dims = prop::collection::vec(0u64..4, rank).prop_map(move |mut d| {
            if let Some(first) = d.first_mut() {
                *first *= row;
            } else if ty.block_size() != 1 {
                d.push(row); // a scalar is only legal for one-element blocks
            }
            d
        });
        (Just(ty), dims, any::<u8>())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_files_round_trip(
        kvs in prop::collection::vec((".{0,10}", any_value()), 0..8),
        tensors in prop::collection::vec(any_tensor(), 0..6),
        align_pow in prop::option::of(0u32..9),
    ) {
        let mut w = GgufWriter::new();
        let mut metadata = Vec::new();
        if let Some(p) = align_pow {
            w.set_alignment(1 << p).unwrap();
            metadata.push(("general.alignment".to_string(), MetadataValue::U32(1 << p)));
        }
        for (i, (suffix, v)) in kvs.into_iter().enumerate() {
            let key = format!("k{i}.{suffix}"); // unique
            w.add_metadata(key.clone(), v.clone()).unwrap();
            metadata.push((key, v));
        }
        let mut datas = Vec::new();
        for (i, (ty, dims, seed)) in tensors.iter().enumerate() {
            let n = ty.tensor_nbytes(dims).unwrap() as usize;
            let data = pattern(n, *seed);
            w.add_tensor(format!("tensor.{i}"), dims.clone(), *ty, data.clone()).unwrap();
            datas.push(data);
        }
        let bytes = write(&w);
        let alignment = 1u64 << align_pow.unwrap_or(5);
        prop_assert_eq!(bytes.len() as u64 % alignment, 0);
        let f = read(bytes);
        prop_assert_eq!(f.alignment(), alignment);
        prop_assert!(same_metadata(f.metadata(), &metadata));
        prop_assert_eq!(f.tensors().len(), tensors.len());
        for (i, (t, (ty, dims, _))) in f.tensors().iter().zip(&tensors).enumerate() {
            prop_assert_eq!(&t.name, &format!("tensor.{i}"));
            prop_assert_eq!((t.ty, &t.dims), (*ty, dims));
            prop_assert_eq!(&f.tensor_data(t)[..], &datas[i][..]);
        }
        // Rewriting what we read gives the same bytes again.
        let mut w2 = GgufWriter::new();
        for (k, v) in f.metadata() {
            w2.add_metadata(k.clone(), v.clone()).unwrap();
        }
        for t in f.tensors() {
            w2.add_tensor_storage(t.name.clone(), t.dims.clone(), t.ty, f.tensor_data(t)).unwrap();
        }
        prop_assert!(write(&w2) == f.storage()[..]);
    }
}
