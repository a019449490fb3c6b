//! The softmax weights of a whole row of logits and a draw from them, for sampling with top-k
//! off (the OpenAI API's default: every token of a 128k vocabulary is a candidate).
//!
//! Why not `f32::exp` over `(id, weight)` pairs: that cost ~1 ms a token on 2B4T's 128,256
//! logits (a libm call each, an f64 sum in one chain, a 1 MB list), a tenth of a decode step on
//! the 16-core host. Here every pass is element-wise arithmetic on independent lanes, which the
//! compiler vectorizes, and every operation is a plain IEEE add, multiply, divide or bit move (no
//! libm, no fused multiply-add), so a seed draws the same token on every platform and build.

/// Elements a chunk of [`weigh`] sums (in [`LANES`] lanes); the draw walks chunks, then inside one.
pub const CHUNK: usize = 64;
const LANES: usize = 8;

/// `e^x` for `x <= 0`, within 2 ulp: Cody-Waite reduction by `ln 2` and Cephes' `expf`
/// polynomial, then the power of two put in the exponent bits. Below -87 (weights under 2^-125
/// of the best token's) it is 0; `-inf` gives 0, NaN gives NaN.
#[inline(always)]
pub fn exp_nonpos(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^15 (LN2_HI = 355 / 512, 9 bits).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = if x < -87.0 { -87.0 } else { x };
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let p = p * (r * r) + r + 1.0;
    // n in [-126, 0]: 2^n is a normal number.
    let k = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let two_n = f32::from_bits(((k + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * two_n
    }
}

/// Puts `scaled(logit, temperature)` (see [`bitnet_backend::sampling::scaled`]) in place of
/// every logit and returns the largest (`-inf` for an empty row or one of NaN and `-inf`).
pub fn scale_and_max(row: &mut [f32], temperature: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2::scale_and_max(row, temperature) };
    }
    scale_and_max_lanes(row, temperature)
}

#[inline(always)]
fn scale_and_max_lanes(row: &mut [f32], temperature: f32) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut blocks = row.chunks_exact_mut(LANES);
    for blk in &mut blocks {
        for (m, x) in lanes.iter_mut().zip(blk.iter_mut()) {
            *x = bitnet_backend::sampling::scaled(*x, temperature);
            *m = if *x > *m { *x } else { *m };
        }
    }
    for (m, x) in lanes.iter_mut().zip(blocks.into_remainder()) {
        *x = bitnet_backend::sampling::scaled(*x, temperature);
        *m = if *x > *m { *x } else { *m };
    }
    lanes
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// Turns scaled logits into unnormalized softmax weights in place, `exp_nonpos(x - max)` (the
/// best token weighs 1), zeroes those below `min_p` (a weight relative to the best, as min-p
/// is defined), and writes each [`CHUNK`]'s sum to `sums` (cleared first). `max` must be the
/// row's finite maximum.
pub fn weigh(row: &mut [f32], max: f32, min_p: f32, sums: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2::weigh(row, max, min_p, sums) };
    }
    weigh_lanes(row, max, min_p, sums)
}

#[inline(always)]
fn weigh_lanes(row: &mut [f32], max: f32, min_p: f32, sums: &mut Vec<f32>) {
    sums.clear();
    for chunk in row.chunks_mut(CHUNK) {
        // Two loops over a chunk in L1: the element-wise one is what the compiler vectorizes
        // well (a lane per element), the sum keeps its lanes explicit.
        for x in chunk.iter_mut() {
            let w = exp_nonpos(*x - max);
            *x = if w >= min_p { w } else { 0.0 };
        }
        sums.push(lane_sum(chunk));
    }
}

/// The same code compiled for 8-lane registers. Only plain IEEE operations, which AVX2 and SSE2
/// round alike, and no fused multiply-add (not enabled here; Rust never contracts), so the
/// weights are the same bits either way.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2")]
    pub(super) fn scale_and_max(row: &mut [f32], temperature: f32) -> f32 {
        super::scale_and_max_lanes(row, temperature)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn weigh(row: &mut [f32], max: f32, min_p: f32, sums: &mut Vec<f32>) {
        super::weigh_lanes(row, max, min_p, sums)
    }
}

/// Sum of `xs` in [`LANES`] interleaved lanes, folded pairwise: a fixed order of additions.
#[inline(always)]
fn lane_sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut blocks = xs.chunks_exact(LANES);
    for blk in &mut blocks {
        for (a, x) in acc.iter_mut().zip(blk) {
            *a += *x;
        }
    }
    for (a, x) in acc.iter_mut().zip(blocks.remainder()) {
        *a += *x;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// The token a uniform draw `u` in [0, 1) picks from `weights` (with `sums` from [`weigh`]):
/// the first whose running sum, in index order, reaches `u` times the total, skipping weights
/// of 0. The total and the walk go chunk by chunk in f64, then inside the chunk that holds the
/// draw; where rounding leaves the draw past the last weight, the last token of weight > 0.
/// `None` when every weight is 0.
pub fn pick(weights: &[f32], sums: &[f32], u: f64) -> Option<usize> {
    let total: f64 = sums.iter().map(|&s| s as f64).sum();
    let mut r = u * total;
    for (c, &s) in sums.iter().enumerate() {
        if s <= 0.0 {
            continue;
        }
        let s = s as f64;
        if r <= s {
            let start = c * CHUNK;
            let chunk = &weights[start..(start + CHUNK).min(weights.len())];
            let mut last = None;
            for (i, &w) in chunk.iter().enumerate() {
                if w > 0.0 {
                    r -= w as f64;
                    last = Some(start + i);
                    if r <= 0.0 {
                        return last;
                    }
                }
            }
            return last;
        }
        r -= s;
    }
    weights.iter().rposition(|&w| w > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_true_value() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -87.0 {
            let got = exp_nonpos(x) as f64;
            let want = (x as f64).exp();
            // The spacing of f32 values at the true result (normal here: >= e^-87).
            let w = want as f32;
            let ulp = (f32::from_bits(w.to_bits() + 1) - w) as f64;
            worst = worst.max((got - want).abs() / ulp);
            x -= 0.000_731;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(-0.0), 1.0);
        assert_eq!(exp_nonpos(-87.5), 0.0);
        assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpos(-86.9) > 0.0);
        assert!(exp_nonpos(f32::NAN).is_nan());
    }

    #[test]
    fn weights_sums_and_max_cover_rows_of_any_length() {
        for len in [1usize, 7, 8, 63, 64, 65, 200, 1000] {
            let logits: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32) * 0.1 - 5.0)
                .collect();
            let mut row = logits.clone();
            let max = scale_and_max(&mut row, 0.5);
            let want_max = logits
                .iter()
                .map(|l| l / 0.5)
                .fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max, want_max);
            let mut sums = Vec::new();
            weigh(&mut row, max, 0.01, &mut sums);
            assert_eq!(sums.len(), len.div_ceil(CHUNK));
            for (c, s) in sums.iter().enumerate() {
                let chunk = &row[c * CHUNK..((c + 1) * CHUNK).min(len)];
                let plain: f32 = chunk.iter().sum();
                assert!(
                    (s - plain).abs() <= 1e-5 * plain.max(1.0),
                    "len {len} chunk {c}"
                );
            }
            for (w, l) in row.iter().zip(&logits) {
                let want = ((l / 0.5 - max) as f64).exp();
                if want >= 0.011 {
                    assert!((*w as f64 - want).abs() <= 1e-6 * want);
                } else if want < 0.009 {
                    assert_eq!(*w, 0.0);
                }
            }
            assert!(row.contains(&1.0));
        }
    }

    /// The dispatched code (AVX2 where the CPU has it) and the plain one give the same bits, so
    /// a seed draws the same token on every machine.
    #[test]
    fn every_code_path_weighs_alike() {
        let mut rng = crate::Rng::new(3);
        let logits: Vec<f32> = (0..10_001)
            .map(|i| match i % 1000 {
                0 => f32::NAN,
                1 => f32::NEG_INFINITY,
                _ => (rng.next_f64() * 200.0 - 100.0) as f32,
            })
            .collect();
        for (temperature, min_p) in [(0.8, 0.0), (1.7, 0.05), (0.05, 0.0)] {
            let (mut a, mut b) = (logits.clone(), logits.clone());
            let ma = scale_and_max(&mut a, temperature);
            let mb = scale_and_max_lanes(&mut b, temperature);
            assert_eq!(ma.to_bits(), mb.to_bits());
            let (mut sa, mut sb) = (Vec::new(), Vec::new());
            weigh(&mut a, ma, min_p, &mut sa);
            weigh_lanes(&mut b, mb, min_p, &mut sb);
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(sa.iter().zip(&sb).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(a.iter().all(|w| (0.0..=1.0).contains(w)));
        }
    }

    #[test]
    fn the_draw_walks_the_running_sum() {
        // Weights in 1/8ths, so every sum is exact and the reference walk is unambiguous.
        let weights: Vec<f32> = (0..300).map(|i| ((i * 7 + 3) % 9) as f32 / 8.0).collect();
        let sums: Vec<f32> = weights.chunks(CHUNK).map(|c| c.iter().sum()).collect();
        let total: f64 = weights.iter().map(|&w| w as f64).sum();
        for step in 0..1000 {
            let u = step as f64 / 1000.0;
            let mut r = u * total;
            let want = weights
                .iter()
                .position(|&w| {
                    if w > 0.0 {
                        r -= w as f64;
                    }
                    w > 0.0 && r <= 0.0
                })
                .unwrap();
            assert_eq!(pick(&weights, &sums, u), Some(want), "u {u}");
        }
        // u = 0 takes the first token of weight > 0, never one of weight 0.
        assert_eq!(weights[0], 3.0 / 8.0);
        let mut w2 = weights.clone();
        w2[0] = 0.0;
        let s2: Vec<f32> = w2.chunks(CHUNK).map(|c| c.iter().sum()).collect();
        assert_eq!(pick(&w2, &s2, 0.0), Some(1));
        assert_eq!(pick(&[0.0; 5], &[0.0], 0.5), None);
    }
}
