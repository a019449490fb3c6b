//! `BITNET_FORCE_SCALAR=1` pins the dispatch to the scalar kernels. Its own test binary (own
//! process), because the choice is made once per process.

use bitnet_kernels::{detected_isa, Isa};

#[test]
fn env_var_forces_scalar() {
    std::env::set_var("BITNET_FORCE_SCALAR", "1");
    assert_eq!(detected_isa(), Isa::Scalar);
    // Fixed for the process even if the variable changes later.
    std::env::remove_var("BITNET_FORCE_SCALAR");
    assert_eq!(detected_isa(), Isa::Scalar);
}
