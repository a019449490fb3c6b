// The ABI version, kept alone in this file because build.rs includes it to name the shared
// library's SONAME (libbitnet_ffi.so.<version>).

/// Bumped on every change that breaks programs compiled against an older bitnet.h: a
/// changed signature or struct layout, a removed function. Adding a function does not bump
/// it. Compare `bitnet_api_version()` (the library loaded) with this constant (the header
/// compiled against).
pub const BITNET_API_VERSION: u32 = 1;
