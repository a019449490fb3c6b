//! `BITNET_FORCE_SCALAR=1` pins the dispatch to the scalar kernels. Its own test binary (own
//! process), because the choice is made once per process.

use bitnet_kernels::{detected_isa, ops, Isa};
use half::f16;

#[test]
fn env_var_forces_scalar() {
    std::env::set_var("BITNET_FORCE_SCALAR", "1");
    assert_eq!(detected_isa(), Isa::Scalar);
    // Fixed for the process even if the variable changes later.
    std::env::remove_var("BITNET_FORCE_SCALAR");
    assert_eq!(detected_isa(), Isa::Scalar);
    f16_ops_fall_back_to_widened_rows();
}

/// Without F16C (here: scalar; on aarch64: NEON) the f16 ops widen each row and run the f32 op:
/// the same bits as widening by hand, on the stack (<= 256 values) and on the heap.
fn f16_ops_fall_back_to_widened_rows() {
    for (n, rows, stride) in [(0, 3, 5), (7, 4, 9), (128, 5, 640), (300, 3, 300)] {
        let cache: Vec<f16> = (0..rows * stride + n)
            .map(|i| f16::from_f32(((i * 37) % 101) as f32 / 50.0 - 1.0))
            .collect();
        let q: Vec<f32> = (0..n).map(|i| ((i * 13) % 17) as f32 / 8.0 - 1.0).collect();
        let row = |p: usize| -> Vec<f32> {
            cache[p * stride..][..n]
                .iter()
                .map(|v| v.to_f32())
                .collect()
        };
        let mut scores = vec![0.0f32; rows];
        ops::dots_f16(&q, &cache, stride, &mut scores);
        let alphas: Vec<f32> = (0..rows).map(|p| 0.25 + p as f32).collect();
        let (mut y, mut want) = (q.clone(), q.clone());
        ops::axpys_f16(&alphas, &cache, stride, &mut y);
        for p in 0..rows {
            assert_eq!(
                scores[p].to_bits(),
                ops::dot(&q, &row(p)).to_bits(),
                "n={n} p={p}"
            );
            ops::axpy(alphas[p], &row(p), &mut want);
        }
        assert_eq!(y, want, "n={n}");
    }
}
