//! `BITNET_ISA` picks the dispatched ISA. Its own test binary (own process), because the choice
//! is made once per process.

use bitnet_kernels::{detected_isa, Isa};

#[test]
fn env_var_selects_isa() {
    std::env::remove_var("BITNET_FORCE_SCALAR");
    // Where the CPU has a SIMD ISA below the automatic choice (neon under neondot, avx2 under
    // avx512vnni), force that one: it differs from both the default and the scalar fallback, so
    // only a working override can produce it. Otherwise scalar.
    let forced = [(Isa::NeonDotprod, Isa::Neon), (Isa::Avx512Vnni, Isa::Avx2)]
        .into_iter()
        .find(|(best, _)| best.is_supported())
        .map_or(Isa::Scalar, |(_, lower)| lower);
    eprintln!("env_var_selects_isa: BITNET_ISA={}", forced.name());
    // Names are case-insensitive.
    std::env::set_var("BITNET_ISA", forced.name().to_uppercase());
    assert_eq!(detected_isa(), forced);
    // Fixed for the process even if the variable changes later.
    let other = if forced == Isa::Scalar {
        "avx2"
    } else {
        "scalar"
    };
    std::env::set_var("BITNET_ISA", other);
    assert_eq!(detected_isa(), forced);
}
