//! The C API of bitnet-rs. The header, `include/bitnet.h`, is generated from this crate by
//! cbindgen (`tests/header.rs` fails when the committed one differs; `BITNET_BLESS=1` rewrites
//! it), so the doc comments here are the header's documentation.
//!
//! Shape (after llama.h): opaque handles for model, session and sampler; params structs with
//! `*_default_params()` functions; every fallible function returns a `bitnet_status` and
//! writes results through out-parameters; the message of a failure comes from
//! `bitnet_last_error()` on the same thread. No panic crosses the boundary ([`status::guard`])
//! and handles are looked up, never dereferenced ([`registry`]), so NULL, freed and garbage
//! handles are errors, not crashes.

mod abi;
mod buffers;
mod model;
mod registry;
mod sampler;
mod session;
mod status;

pub use abi::BITNET_API_VERSION;
pub use model::*;
pub use sampler::*;
pub use session::*;
pub use status::{bitnet_last_error, bitnet_status, bitnet_status_str};

use std::ffi::c_char;

/// A token id.
#[allow(non_camel_case_types)]
pub type bitnet_token = u32;

/// The ABI version of the loaded library; a program compiled against a header whose
/// BITNET_API_VERSION differs should not use it.
///
/// Thread-safety: thread-safe.
#[no_mangle]
pub extern "C" fn bitnet_api_version() -> u32 {
    BITNET_API_VERSION
}

/// The library's release ("0.1.0"), a static string.
///
/// Thread-safety: thread-safe.
#[no_mangle]
pub extern "C" fn bitnet_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
