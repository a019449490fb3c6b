//! `BITNET_ISA` picks the dispatched ISA. Its own test binary (own process), because the choice
//! is made once per process.

use bitnet_kernels::{detected_isa, Isa};

#[test]
fn env_var_selects_isa() {
    std::env::remove_var("BITNET_FORCE_SCALAR");
    std::env::set_var("BITNET_ISA", "Scalar");
    assert_eq!(detected_isa(), Isa::Scalar);
    // Fixed for the process even if the variable changes later.
    std::env::set_var("BITNET_ISA", "avx2");
    assert_eq!(detected_isa(), Isa::Scalar);
}
