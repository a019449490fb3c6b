//! Turning logits into the next token: penalties, then greedy or temperature + top-k/top-p/min-p.
//!
//! The order follows transformers' logits processors (penalties, temperature, top-k, top-p,
//! min-p), so settings mean what users of that stack expect.

use crate::softmax;
use bitnet_backend::argmax;
use bitnet_backend::sampling::{self, best_first, Penalties, PenaltyToken, TopK, MAX_TOP_K};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// Multiplicative penalty on tokens seen in the last `repeat_last_n` tokens; 1.0 disables.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token already generated (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted per occurrence.
    pub frequency_penalty: f32,
    /// Fixes the random stream for reproducible output.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Whether every pick is the argmax of the raw logits (greedy, no penalty that would change
    /// them): then a backend can pick on its device and return only the id.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature == 0.0
            && (self.repeat_penalty == 1.0 || self.repeat_last_n == 0)
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(format!(
                "repeat_penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        for (n, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !v.is_finite() {
                return Err(format!("{n} must be finite"));
            }
        }
        Ok(())
    }
}

/// xoshiro256**: a small, well-studied generator whose output we can promise stays the same
/// across releases for a given seed, which general-purpose RNG crates do not guarantee.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    buf: Vec<(u32, f32)>,
    /// Chunk sums of a whole row's weights ([`softmax::weigh`]), kept between calls.
    sums: Vec<f32>,
}

/// Temperatures below this sample as greedy: `logit / temperature` overflows f32 to +inf for
/// ordinary logits once the temperature is subnormal (10 / 1e-40), and every +inf would tie, so
/// the pick went to the lowest id with a positive logit instead of the best one. At 1e-30 a logit
/// of 3.4e8 still divides finitely, and any two logits an ulp apart already differ by more than
/// e^1000 in weight: greedy in all but exact ties.
pub const MIN_SAMPLING_TEMPERATURE: f32 = 1e-30;

impl Sampler {
    /// A sampler for `params` (a temperature below [`MIN_SAMPLING_TEMPERATURE`] becomes 0,
    /// greedy, as [`Self::params`] then says).
    pub fn new(mut params: SamplingParams) -> Sampler {
        if params.temperature < MIN_SAMPLING_TEMPERATURE {
            params.temperature = 0.0;
        }
        let seed = params.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            t as u64 ^ (std::process::id() as u64).rotate_left(32)
        });
        Sampler {
            rng: Rng::new(seed),
            params,
            buf: Vec::new(),
            sums: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// What this sampler needs of the next logits when a device can select it (see
    /// [`bitnet_backend::sampling`]): the `top_k` best after penalties and temperature (the
    /// best one, for greedy), given `history` (the whole context once the pass is done) and
    /// `generated` (where its generated part starts). `None` when it needs the whole row
    /// (top-k off or above [`MAX_TOP_K`], or not below `vocab`).
    pub fn top_k_request(&self, history: &[u32], generated: usize, vocab: usize) -> Option<TopK> {
        let p = &self.params;
        let (k, temperature) = if p.temperature == 0.0 {
            (1, 1.0)
        } else {
            (p.top_k, p.temperature)
        };
        (k > 0 && k <= MAX_TOP_K && k < vocab).then(|| TopK {
            k,
            temperature,
            penalties: self.penalties(history, generated),
        })
    }

    /// Picks the next token. `history` is the whole context so far (prompt and generated);
    /// `generated` is where the generated part starts (presence/frequency penalties look only
    /// at generated tokens, as in the OpenAI API). `logits` is scratch: it is left holding
    /// penalized logits, scaled ones or softmax weights.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], generated: usize) -> u32 {
        let mut cand = std::mem::take(&mut self.buf);
        if let Some(req) = self.top_k_request(history, generated, logits.len()) {
            sampling::top_k(logits, &req, &mut cand);
        } else {
            let p = &self.params;
            self.penalties(history, generated).apply(logits);
            if p.temperature == 0.0 {
                self.buf = cand;
                return argmax(logits);
            }
            if p.top_k == 0 || p.top_k >= logits.len() {
                self.buf = cand;
                return self.sample_row(logits);
            }
            // Top-k beyond what a device selects: cut here.
            cand.clear();
            cand.extend(
                logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (i as u32, sampling::scaled(l, p.temperature))),
            );
            cand.select_nth_unstable_by(p.top_k - 1, best_first);
            cand.truncate(p.top_k);
            cand.sort_unstable_by(best_first);
        }
        let id = self.sample_candidates(&mut cand);
        self.buf = cand;
        id
    }

    /// Picks the next token from the candidates of [`Self::top_k_request`] (best first, as a
    /// device or [`sampling::top_k`] returns them; the list is reused as scratch): the same
    /// token [`Self::sample`] picks from the whole row, with the same random draw.
    pub fn sample_candidates(&mut self, cand: &mut Vec<(u32, f32)>) -> u32 {
        if self.params.temperature == 0.0 {
            return cand.first().map_or(0, |c| c.0);
        }
        // Unnormalized softmax: the best candidate weighs 1.
        let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        if max.is_infinite() {
            // As the whole row decides (`sample_row`), with no draw: the first `+inf` token, or
            // the first token when nothing is possible.
            return cand
                .iter()
                .filter(|c| max == f32::NEG_INFINITY || c.1 == max)
                .map(|c| c.0)
                .min()
                .unwrap_or(0);
        }
        cand.iter_mut()
            .for_each(|c| c.1 = softmax::exp_nonpos(c.1 - max));
        let total = cand.iter().map(|c| c.1 as f64).sum();
        self.draw(cand, total)
    }

    /// Samples a whole row of penalized logits (top-k off): its softmax weights and the draw in
    /// vectorized passes over the row itself (see [`softmax`]); only a nucleus (top-p < 1)
    /// needs the weights as a sortable list.
    fn sample_row(&mut self, row: &mut [f32]) -> u32 {
        let (temperature, top_p, min_p) = (
            self.params.temperature,
            self.params.top_p,
            self.params.min_p,
        );
        let max = softmax::scale_and_max(row, temperature);
        if max == f32::INFINITY {
            // Infinitely more likely than any finite logit: the first such token.
            return row.iter().position(|&x| x == f32::INFINITY).unwrap_or(0) as u32;
        }
        if max == f32::NEG_INFINITY {
            // Nothing is possible (every logit NaN or -inf): argmax's answer.
            return 0;
        }
        let mut sums = std::mem::take(&mut self.sums);
        let id = if top_p < 1.0 {
            softmax::weigh(row, max, 0.0, &mut sums);
            let total: f64 = sums.iter().map(|&s| s as f64).sum();
            // Tokens lighter than this hold less than 1 - top_p of the mass together, so the
            // nucleus is among the others: only they become candidates.
            let floor = ((1.0 - top_p as f64) * total / row.len() as f64) as f32;
            let mut cand = std::mem::take(&mut self.buf);
            cand.clear();
            cand.extend(
                (0u32..)
                    .zip(row.iter())
                    .filter(|(_, &w)| w > 0.0 && w >= floor)
                    .map(|(i, &w)| (i, w)),
            );
            let id = self.draw(&mut cand, total);
            self.buf = cand;
            id
        } else {
            softmax::weigh(row, max, min_p, &mut sums);
            let u = self.rng.next_f64();
            softmax::pick(row, &sums, u).unwrap_or(0) as u32
        };
        self.sums = sums;
        id
    }

    /// Draws from `cand`, whose weights are unnormalized softmax weights (the best is 1) of a
    /// row whose weights sum to `total`: top-p, then min-p, then one uniform draw over what is
    /// left, in list order.
    fn draw(&mut self, cand: &mut Vec<(u32, f32)>, total: f64) -> u32 {
        let p = &self.params;
        if p.top_p < 1.0 {
            // The smallest set of most likely tokens whose mass reaches top_p. Sorting all
            // 128k candidates per token cost milliseconds; the nucleus is nearly always small,
            // so sort growing heads of the list until one holds it (a top-k list is sorted
            // already).
            let need = p.top_p as f64 * total;
            let mut m = 64;
            let keep = loop {
                if m >= cand.len() {
                    cand.sort_unstable_by(best_first);
                    break nucleus(cand, need).unwrap_or(cand.len());
                }
                cand.select_nth_unstable_by(m - 1, best_first);
                cand[..m].sort_unstable_by(best_first);
                if let Some(k) = nucleus(&cand[..m], need) {
                    break k;
                }
                m *= 4;
            };
            cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            // Relative to the best token, whose weight is 1.
            cand.retain(|c| c.1 >= p.min_p);
        }
        let kept: f64 = cand.iter().map(|c| c.1 as f64).sum();
        let mut r = self.rng.next_f64() * kept;
        for &(id, w) in cand.iter() {
            r -= w as f64;
            if r <= 0.0 {
                return id;
            }
        }
        cand.last().map_or(0, |c| c.0)
    }

    /// The penalties of the next pick: the repeat penalty on the distinct tokens of the last
    /// `repeat_last_n` of `history`, presence and frequency on those from `generated` on.
    fn penalties(&self, history: &[u32], generated: usize) -> Penalties {
        let p = &self.params;
        let mut pen = Penalties {
            repeat: p.repeat_penalty,
            presence: p.presence_penalty,
            frequency: p.frequency_penalty,
            tokens: Vec::new(),
        };
        let mut by_id: HashMap<u32, PenaltyToken> = HashMap::new();
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            let from = history.len().saturating_sub(p.repeat_last_n);
            for &id in &history[from..] {
                penalty_token(&mut by_id, id).repeat = true;
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for &id in &history[generated.min(history.len())..] {
                penalty_token(&mut by_id, id).count += 1;
            }
        }
        pen.tokens = by_id.into_values().collect();
        // One order for the host and the device lists (each id is penalized once either way).
        pen.tokens.sort_unstable_by_key(|t| t.id);
        pen
    }
}

/// `id`'s entry in `by_id`, not penalized yet when new.
fn penalty_token(by_id: &mut HashMap<u32, PenaltyToken>, id: u32) -> &mut PenaltyToken {
    by_id.entry(id).or_insert(PenaltyToken {
        id,
        repeat: false,
        count: 0,
    })
}

/// Length of the shortest prefix of `cand` (sorted, best first) whose weights reach `need`.
fn nucleus(cand: &[(u32, f32)], need: f64) -> Option<usize> {
    let mut acc = 0.0;
    for (i, c) in cand.iter().enumerate() {
        acc += c.1 as f64;
        if acc >= need {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &[], 0), 1);
    }

    #[test]
    fn a_vanishing_temperature_is_greedy_not_the_first_overflow() {
        // 5 / 1e-40 is +inf, as is 1 / 1e-40: the pick went to id 0 (the first +inf).
        for top_k in [0, 2, 40] {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1e-40,
                top_k,
                seed: Some(1),
                ..Default::default()
            });
            assert!(s.params().is_plain_greedy());
            assert_eq!(
                s.sample(&mut [1.0, 5.0, 3.0, -2.0], &[], 0),
                1,
                "top_k {top_k}"
            );
        }
        // At the threshold it still samples (and, the logits far apart, takes the best).
        let mut s = Sampler::new(SamplingParams {
            temperature: MIN_SAMPLING_TEMPERATURE,
            seed: Some(1),
            ..Default::default()
        });
        assert!(!s.params().is_plain_greedy());
        assert_eq!(s.sample(&mut [1.0, 5.0, 3.0, -2.0], &[], 0), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 3,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(42),
            ..Default::default()
        };
        let mut top3: Vec<u32> = (0..100u32).collect();
        top3.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        top3.truncate(3);
        let run = || {
            let mut s = Sampler::new(params.clone());
            (0..50)
                .map(|_| s.sample(&mut logits.clone(), &[], 0))
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.iter().all(|t| top3.contains(t)));
        assert!(
            top3.iter().filter(|t| a.contains(t)).count() >= 2,
            "samples should vary: {a:?}"
        );
    }

    #[test]
    fn penalties_push_seen_tokens_down() {
        let params = SamplingParams {
            repeat_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::greedy()
        };
        let s = Sampler::new(params);
        let mut logits = vec![4.0, -1.0, 3.9];
        s.penalties(&[0, 1, 0, 0], 2).apply(&mut logits);
        assert_eq!(logits[0], 4.0 / 2.0 - 0.5 - 0.5);
        assert_eq!(logits[1], -2.0);
        assert_eq!(logits[2], 3.9);
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut [4.0, -1.0, 3.9], &[0], 0), 2);
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            seed: Some(1),
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        for _ in 0..100 {
            assert_eq!(s.sample(&mut [10.0, 0.0, 0.0, 9.9], &[], 0) % 3, 0);
        }
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            seed: Some(1),
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        for _ in 0..100 {
            assert_eq!(s.sample(&mut [10.0, 0.0, 0.0, 1.0], &[], 0), 0);
        }
    }

    /// A device returns only the top-k candidates (`Context::top_k`); picking from them must
    /// give the token that sampling the whole row gives, draw for draw, with penalties,
    /// top-p and min-p, and greedy with penalties as k = 1.
    #[test]
    fn candidates_from_a_device_pick_what_the_whole_row_picks() {
        let mut rng = Rng::new(7);
        let history: Vec<u32> = (0..40).map(|_| (rng.next_u64() % 500) as u32).collect();
        for (temperature, top_k, top_p, min_p) in [
            (0.8, 40, 0.95, 0.05),
            (1.3, 7, 1.0, 0.0),
            (0.5, 1, 1.0, 0.0),
            (0.0, 40, 0.95, 0.05),
            (1.0, 500, 0.9, 0.0),
        ] {
            let params = SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                repeat_penalty: 1.3,
                repeat_last_n: 16,
                presence_penalty: 0.4,
                frequency_penalty: 0.2,
                seed: Some(11),
            };
            let (mut whole, mut cands) = (Sampler::new(params.clone()), Sampler::new(params));
            for step in 0..50 {
                let mut logits: Vec<f32> = (0..1000)
                    .map(|_| (rng.next_f64() * 12.0 - 6.0) as f32)
                    .collect();
                // Ties, which must go to the smaller id on both paths.
                logits[3] = logits[900];
                let req = cands.top_k_request(&history, 20, logits.len()).unwrap();
                let mut c = Vec::new();
                sampling::top_k(&mut logits.clone(), &req, &mut c);
                assert!(c.len() == req.k && c.windows(2).all(|w| best_first(&w[0], &w[1]).is_lt()));
                let a = whole.sample(&mut logits, &history, 20);
                let b = cands.sample_candidates(&mut c);
                assert_eq!(a, b, "T {temperature} top_k {top_k} step {step}");
            }
        }
        // Top-k off, or wider than a device selects: the whole row.
        let s = Sampler::new(SamplingParams {
            top_k: 0,
            ..Default::default()
        });
        assert!(s.top_k_request(&history, 0, 1000).is_none());
        let s = Sampler::new(SamplingParams {
            top_k: MAX_TOP_K + 1,
            ..Default::default()
        });
        assert!(s.top_k_request(&history, 0, 100_000).is_none());
        assert!(Sampler::new(SamplingParams::default())
            .top_k_request(&history, 0, 40)
            .is_none());
    }

    /// A nucleus over a two-level tail: the near tail reaches into the nucleus, the far tail
    /// (18,000 tokens) lies below the weight floor, so it never becomes a candidate. The head's
    /// frequencies follow the softmax renormalized to the nucleus, which takes the near tail's
    /// tokens in id order (equal weights: smaller id first).
    #[test]
    fn a_nucleus_cut_from_a_long_tail_keeps_its_mass() {
        let (vocab, near) = (20_000, 2_000);
        let mut logits = vec![-12.0f32; vocab];
        logits[..3].copy_from_slice(&[0.0, 2f32.ln(), 4f32.ln()]);
        logits[3..3 + near].fill(-4.0);
        // Weights relative to the best token (4): the head 1/4, 1/2, 1, then e^-4 / 4, e^-12 / 4.
        let (near_w, far_w) = ((-4f64).exp() / 4.0, (-12f64).exp() / 4.0);
        let total = 1.75 + near as f64 * near_w + (vocab - 3 - near) as f64 * far_w;
        let top_p = 0.9f32;
        let floor = (1.0 - top_p as f64) * total / vocab as f64;
        assert!(far_w < floor && near_w > floor);
        // The head, then as much of the near tail as the nucleus needs (+-1 for rounding).
        let near_needed = ((top_p as f64 * total - 1.75) / near_w).ceil() as usize;
        assert!(near_needed > 100 && near_needed < near - 100);
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p,
            min_p: 0.0,
            seed: Some(5),
            ..Default::default()
        });
        let n = 4000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            let t = s.sample(&mut logits.clone(), &[], 0) as usize;
            assert!(t <= 3 + near_needed, "token {t} is outside the nucleus");
            if t < 3 {
                counts[t] += 1;
            }
        }
        let nucleus = 1.75 + near_needed as f64 * near_w;
        for (i, w) in [0.25, 0.5, 1.0].iter().enumerate() {
            let (got, expect) = (counts[i] as f64 / n as f64, w / nucleus);
            assert!((got - expect).abs() < 0.03, "token {i}: {got} vs {expect}");
        }
    }

    /// Rows the softmax cannot weigh: an infinite logit wins outright (the first one), and a row
    /// of NaN and -inf gives the first token, as argmax; the top-k candidates of the same row
    /// pick the same, with no random draw on either path. Top-k as wide as the row takes the
    /// whole-row path (the same draws as top-k off).
    #[test]
    fn rows_of_infinities_and_a_top_k_as_wide_as_the_row() {
        let params = SamplingParams {
            temperature: 0.7,
            top_k: 0,
            seed: Some(9),
            ..Default::default()
        };
        let rows: [&[f32]; 3] = [
            &[1.0, f32::INFINITY, 3.0, f32::INFINITY],
            &[f32::NAN, f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY],
            &[f32::NEG_INFINITY, 0.5, f32::NAN, 2.0],
        ];
        for (row, want) in rows.iter().zip([Some(1u32), Some(0), None]) {
            let mut whole = Sampler::new(params.clone());
            let mut cands = Sampler::new(SamplingParams {
                top_k: 3,
                ..params.clone()
            });
            let req = cands.top_k_request(&[], 0, 10).unwrap();
            let mut c = Vec::new();
            sampling::top_k(&mut row.to_vec(), &req, &mut c);
            let a = whole.sample(&mut row.to_vec(), &[], 0);
            let b = cands.sample_candidates(&mut c);
            if let Some(w) = want {
                assert_eq!((a, b), (w, w), "{row:?}");
                // No draw was taken: both streams are where a fresh sampler's is.
                assert_eq!(whole.rng.next_u64(), Rng::new(9).next_u64());
                assert_eq!(cands.rng.next_u64(), Rng::new(9).next_u64());
            } else {
                assert!(a == 1 || a == 3, "{row:?}: {a}");
            }
        }
        let row: Vec<f32> = (0..500).map(|i| ((i * 31 % 97) as f32) * 0.05).collect();
        let mut off = Sampler::new(params.clone());
        let mut wide = Sampler::new(SamplingParams {
            top_k: 500,
            ..params
        });
        for _ in 0..50 {
            assert_eq!(
                off.sample(&mut row.clone(), &[], 0),
                wide.sample(&mut row.clone(), &[], 0)
            );
        }
    }

    /// Frequencies follow the softmax, with and without a nucleus wider than the sorted head
    /// that the sampler tries first (64 candidates).
    #[test]
    fn samples_follow_the_softmax() {
        let n = 20_000;
        for top_p in [1.0, 0.999] {
            let mut logits = vec![-30.0f32; 300];
            logits[..3].copy_from_slice(&[0.0, 2f32.ln(), 4f32.ln()]);
            // 200 tokens of small but non-negligible mass, so a 0.999 nucleus needs > 64.
            for l in &mut logits[100..300] {
                *l = -4.0;
            }
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p,
                min_p: 0.0,
                seed: Some(7),
                ..Default::default()
            });
            let mut counts = [0usize; 4];
            for _ in 0..n {
                let t = s.sample(&mut logits.clone(), &[], 0) as usize;
                counts[if t < 3 { t } else { 3 }] += 1;
            }
            let z: f64 = 7.0 + 200.0 * (-4f64).exp();
            for (i, w) in [1.0, 2.0, 4.0].iter().enumerate() {
                let expect = w / z;
                let got = counts[i] as f64 / n as f64;
                assert!(
                    (got - expect).abs() < 0.02,
                    "top_p {top_p}: token {i}: {got} vs {expect}"
                );
            }
        }
    }
}
