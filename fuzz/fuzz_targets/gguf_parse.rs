//! Feeds arbitrary bytes to the GGUF parser. Besides "never panics", checks that whatever the
//! parser accepts is internally consistent and survives a rewrite through the writer.
#![no_main]

use bitnet_gguf::{GgufFile, GgufWriter, Storage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_storage(Storage::from_vec(data.to_vec())) else {
        return;
    };
    for t in file.tensors() {
        assert_eq!(file.tensor_data(t).len() as u64, t.n_bytes);
        assert_eq!(file.tensor(&t.name).map(|u| u.offset), Some(t.offset));
    }
    // A huge (legal) alignment would make the rewrite pad to gigabytes; nothing to learn there.
    if file.alignment() > 4096 {
        return;
    }
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata() {
        w.add_metadata(k.clone(), v.clone())
            .expect("accepted metadata must be writable");
    }
    for t in file.tensors() {
        w.add_tensor_storage(t.name.clone(), t.dims.clone(), t.ty, file.tensor_data(t))
            .expect("accepted tensor must be writable");
    }
    let mut out = Vec::new();
    w.write_to(&mut out).expect("writing to memory cannot fail");
    let again = GgufFile::from_storage(Storage::from_vec(out)).expect("rewritten file must parse");
    assert_eq!(again.alignment(), file.alignment());
    assert_eq!(again.metadata().len(), file.metadata().len());
    for ((ka, va), (kb, vb)) in file.metadata().iter().zip(again.metadata()) {
        assert_eq!(ka, kb);
        // Debug output compares floats (NaN included) by their printed form, close enough here.
        assert_eq!(format!("{va:?}"), format!("{vb:?}"));
    }
    for (a, b) in file.tensors().iter().zip(again.tensors()) {
        assert_eq!((&a.name, &a.dims, a.ty), (&b.name, &b.dims, b.ty));
        assert_eq!(&file.tensor_data(a)[..], &again.tensor_data(b)[..]);
    }
});
