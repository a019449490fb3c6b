//! Vector ops: the dispatched (AVX2 here) versions against the scalar references.

mod common;

use bitnet_kernels::ops;
use common::Rng;
use proptest::prelude::*;

fn close(a: f32, b: f32) -> bool {
    // 1e-5 relative; the absolute floor covers results in the subnormal range, where the AVX2
    // exp and libm differ by a few subnormal steps.
    a.to_bits() == b.to_bits() || (a - b).abs() <= 1e-5 * b.abs() + 1e-37
}

fn vecs(n: usize, seed: u64, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng(seed | 1);
    (
        (0..n).map(|_| rng.f32() * scale).collect(),
        (0..n).map(|_| rng.f32() * scale).collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The f16 forms read an f16 KV cache row in registers; they must give exactly what the
    /// f32 forms give on the widened row (the conversion is exact), on every length.
    #[test]
    fn f16_ops_equal_f32_ops_on_widened_rows(n in 0usize..300, seed in any::<u64>()) {
        let (a, b) = vecs(n, seed, 3.0);
        let h: Vec<half::f16> = b.iter().map(|&v| half::f16::from_f32(v)).collect();
        let wide: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
        prop_assert_eq!(ops::dot_f16(&a, &h).to_bits(), ops::dot(&a, &wide).to_bits());
        let (mut y, mut yw) = (a.clone(), a.clone());
        ops::axpy_f16(-0.61, &h, &mut y);
        ops::axpy(-0.61, &wide, &mut yw);
        prop_assert!(y.iter().zip(&yw).all(|(p, q)| p.to_bits() == q.to_bits()));
    }

    /// The many-row forms equal one single-row call per row, bit for bit (half the lengths a
    /// multiple of 8, where the AVX2 scores take eight rows a call).
    #[test]
    fn strided_f16_ops_equal_row_by_row(n in prop_oneof![0usize..200, (0usize..25).prop_map(|k| 8 * k)], rows in 0usize..40, pad in 0usize..20, seed in any::<u64>()) {
        let stride = n + pad;
        let (q, _) = vecs(n, seed, 2.0);
        let (cache, _) = vecs(rows * stride + n, seed ^ 7, 3.0);
        let (alphas, _) = vecs(rows, seed ^ 13, 1.0);
        let h: Vec<half::f16> = cache.iter().map(|&v| half::f16::from_f32(v)).collect();
        let mut scores = vec![0.0f32; rows];
        ops::dots_f16(&q, &h, stride, &mut scores);
        for (p, s) in scores.iter().enumerate() {
            prop_assert_eq!(s.to_bits(), ops::dot_f16(&q, &h[p * stride..][..n]).to_bits());
        }
        let (mut y, mut y1) = (q.clone(), q.clone());
        ops::axpys_f16(&alphas, &h, stride, &mut y);
        for (p, &a) in alphas.iter().enumerate() {
            ops::axpy_f16(a, &h[p * stride..][..n], &mut y1);
        }
        prop_assert!(y.iter().zip(&y1).all(|(p, q)| p.to_bits() == q.to_bits()));
    }

    /// The group forms (the query heads of one KV head over the same rows; AVX-512 widens a
    /// row once for four of them) equal one many-row call per query, bit for bit: head sizes
    /// that take the AVX-512 path (multiples of 32 / 64) and others, 1-9 queries (chunks of
    /// four and a rest), strided outputs and weights.
    #[test]
    fn group_f16_ops_equal_query_by_query(n in prop_oneof![1usize..100, (1usize..5).prop_map(|k| 32 * k)], nq in 1usize..10, rows in 0usize..40, pad in 0usize..20, gap in 0usize..5, seed in any::<u64>()) {
        let stride = n + pad;
        let (qs, _) = vecs(nq * n, seed, 2.0);
        let (cache, _) = vecs(rows * stride + n, seed ^ 7, 3.0);
        let h: Vec<half::f16> = cache.iter().map(|&v| half::f16::from_f32(v)).collect();
        let out_stride = rows + gap;
        let mut out = vec![f32::NAN; nq * out_stride + rows];
        ops::dots_f16_group(&qs, n, &h, stride, rows, &mut out, out_stride);
        for (j, q) in qs.chunks_exact(n).enumerate() {
            let mut want = vec![0.0f32; rows];
            ops::dots_f16(q, &h, stride, &mut want);
            let got = &out[j * out_stride..][..rows];
            prop_assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()), "query {} of {}", j, nq);
        }
        let (alphas, _) = vecs(nq * out_stride + rows, seed ^ 13, 1.0);
        let mut ys = qs.clone();
        ops::axpys_f16_group(&alphas, out_stride, rows, &h, stride, &mut ys, n);
        for (j, y) in ys.chunks_exact(n).enumerate() {
            let mut want = qs[j * n..][..n].to_vec();
            ops::axpys_f16(&alphas[j * out_stride..][..rows], &h, stride, &mut want);
            prop_assert!(y.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()), "query {} of {}", j, nq);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ops_match_scalar(n in 0usize..300, seed in any::<u64>(), scale in prop_oneof![Just(1.0f32), Just(30.0), Just(150.0)]) {
        let (a, b) = vecs(n, seed, scale);

        let (d, ds) = (ops::dot(&a, &b), ops::dot_scalar(&a, &b));
        let mag: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
        prop_assert!((d - ds).abs() <= 1e-5 * mag + 1e-30, "dot {} vs {}", d, ds);

        let mut y = b.clone();
        let mut ys = b.clone();
        ops::axpy(0.37, &a, &mut y);
        ops::axpy_scalar(0.37, &a, &mut ys);
        prop_assert!(y.iter().zip(&ys).all(|(p, q)| (p - q).abs() <= 1e-5 * (q.abs() + 0.37 * scale)));

        let w: Vec<f32> = b.iter().map(|v| v + 1.5).collect();
        let mut o = vec![0f32; n];
        let mut os = vec![0f32; n];
        ops::rms_norm(&a, &w, 1e-5, &mut o);
        ops::rms_norm_scalar(&a, &w, 1e-5, &mut os);
        prop_assert!(o.iter().zip(&os).all(|(p, q)| close(*p, *q)), "rms_norm");

        ops::relu2_mul(&a, &b, &mut o);
        ops::relu2_mul_scalar(&a, &b, &mut os);
        prop_assert!(o.iter().zip(&os).all(|(p, q)| p.to_bits() == q.to_bits()), "relu2_mul is exact");

        ops::silu_mul(&a, &b, &mut o);
        ops::silu_mul_scalar(&a, &b, &mut os);
        prop_assert!(o.iter().zip(&os).all(|(p, q)| close(*p, *q)), "silu_mul {:?} vs {:?}", o, os);

        let mut s = a.clone();
        let mut ss = a.clone();
        ops::softmax_inplace(&mut s);
        ops::softmax_inplace_scalar(&mut ss);
        prop_assert!(s.iter().zip(&ss).all(|(p, q)| close(*p, *q)), "softmax {:?} vs {:?}", s, ss);
    }
}

#[test]
fn exp_edge_cases_through_softmax_and_silu() {
    // Spread of 200: the smallest terms underflow through the subnormals to 0.
    let mut x: Vec<f32> = (0..64).map(|i| -(i as f32) * 3.2).collect();
    let mut xs = x.clone();
    ops::softmax_inplace(&mut x);
    ops::softmax_inplace_scalar(&mut xs);
    assert!(x.iter().zip(&xs).all(|(p, q)| close(*p, *q)));
    assert_eq!(x[63], 0.0);
    // silu at extremes: exp(-g) overflows to inf (-> -0), or g is large (-> g).
    let g: Vec<f32> = [
        -200.0,
        -100.0,
        -88.0,
        -20.0,
        0.0,
        20.0,
        88.0,
        100.0,
        f32::NAN,
    ]
    .repeat(2);
    let u = vec![1.0f32; g.len()];
    let mut o = vec![0f32; g.len()];
    let mut os = vec![0f32; g.len()];
    ops::silu_mul(&g, &u, &mut o);
    ops::silu_mul_scalar(&g, &u, &mut os);
    for (p, q) in o.iter().zip(&os) {
        assert!(close(*p, *q) || (p.is_nan() && q.is_nan()), "{p} vs {q}");
    }
    // Dense grid over the range where silu is neither ~0 nor ~g: checks the vector exp.
    let g: Vec<f32> = (-12_000..12_000).map(|i| i as f32 / 100.0).collect();
    let u = vec![1.0f32; g.len()];
    let mut o = vec![0f32; g.len()];
    let mut os = vec![0f32; g.len()];
    ops::silu_mul(&g, &u, &mut o);
    ops::silu_mul_scalar(&g, &u, &mut os);
    let worst = o
        .iter()
        .zip(&os)
        .map(|(p, q)| ((p - q) / q).abs())
        .filter(|e| e.is_finite())
        .fold(0f32, f32::max);
    assert!(worst < 1e-6, "silu worst relative error {worst}");
    // Softmax of a constant row is uniform.
    let mut c = vec![3.0f32; 20];
    ops::softmax_inplace(&mut c);
    assert!(c.iter().all(|&v| (v - 0.05).abs() < 1e-7));
}

#[test]
fn rms_norm_definition() {
    let x = [3.0f32, 4.0];
    let mut o = [0f32; 2];
    ops::rms_norm(&x, &[1.0, 2.0], 0.0, &mut o);
    let r = 1.0 / 12.5f32.sqrt();
    assert_eq!(o, [3.0 * r, 2.0 * (4.0 * r)]);
}
