//! The known-answer inputs of the Q6_K tests, shared by bitnet-quantization's tests/q6_k.rs
//! (encoded bytes) and bitnet-kernels' tests/dense_q6k.rs (dot products): ggml's own C was fed
//! exactly these values, so both test files must generate them the same way.

use bitnet_quantization::q6_k::QK_K;

/// The generator both sides (ggml's C and these tests) used: an LCG whose top 24 bits, centred,
/// divided by 2^23 give exact floats in [-1, 1).
pub struct Lcg(pub u32);

impl Lcg {
    pub fn unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        ((self.0 >> 8) as i32 - (1 << 23)) as f32 / 8_388_608.0
    }
}

/// Eight blocks chosen to reach every branch of the quantizer: plain random, sub-block
/// magnitudes 2^-12..2^3 (small int8 scales, some rounding to 0), zero / single-value /
/// constant sub-blocks with a negative block maximum, an f16-subnormal `d`, a `d` that
/// underflows to 0 (codes kept from make_qx_quants), all zeros, a constant block, and
/// multiples of 1/8 (exact ties for `nearest_int`).
pub fn ka_weights() -> Vec<f32> {
    let mut g = Lcg(1);
    let mut w = vec![0.0f32; 8 * QK_K];
    for v in &mut w[..QK_K] {
        *v = g.unit() * 0.05;
    }
    for (i, v) in w[QK_K..2 * QK_K].iter_mut().enumerate() {
        *v = g.unit() * 2f32.powi(i as i32 / 16 - 12);
    }
    let b2 = &mut w[2 * QK_K..3 * QK_K];
    for v in b2.iter_mut() {
        *v = g.unit() * 0.02;
    }
    b2[48..64].fill(0.0);
    b2[112..128].fill(0.0);
    b2[117] = -0.75;
    b2[200] = -1.5;
    b2[160..176].fill(0.01);
    for v in &mut w[3 * QK_K..4 * QK_K] {
        *v = g.unit() * 2e-3;
    }
    for v in &mut w[4 * QK_K..5 * QK_K] {
        *v = g.unit() * 1e-6;
    }
    // Block 5 stays zero.
    w[6 * QK_K..7 * QK_K].fill(0.5);
    for (i, v) in w[7 * QK_K..].iter_mut().enumerate() {
        *v = ((i * 37) % 64) as f32 / 8.0 - 4.0;
    }
    w
}
