//! Names the shared library after its ABI version (SONAME libbitnet_ffi.so.N), so a program
//! linked against one ABI refuses to start with an incompatible library instead of crashing.

include!("src/abi.rs");

fn main() {
    println!("cargo:rerun-if-changed=src/abi.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libbitnet_ffi.so.{BITNET_API_VERSION}");
    }
}
