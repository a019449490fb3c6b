//! include/bitnet.h is what cbindgen generates from this crate: a change to the C API that
//! is not reflected in the committed header fails here. `BITNET_BLESS=1` rewrites the header.

use std::path::Path;

#[test]
fn committed_header_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = dir.join("include/bitnet.h");
    if std::env::var_os("BITNET_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/bitnet.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/bitnet.h differs from the code from line {} on (committed: {:?}, generated: {:?}); \
             regenerate it with BITNET_BLESS=1 cargo test -p bitnet-ffi --test header",
            first + 1,
            committed.lines().nth(first),
            generated.lines().nth(first),
        );
    }
}
