//! What a sampler needs from a row of logits when it keeps only the `k` most likely tokens.
//!
//! Sampling with top-k (llama.cpp's and this engine's default, k = 40) looks at `k` candidates
//! out of a vocabulary of up to 128k. A GPU that copied every logit back would move half a
//! megabyte per sequence and step and leave the host a 128k-element selection per token, which
//! costs more than the forward pass of a small model; instead it applies the penalties and the
//! temperature, selects the `k` best on the device and returns only those (`Context::top_k`).
//! This module defines that selection once, so that the device and the host pick the same
//! candidates bit for bit: the engine's sampler runs [`top_k`] on the host (CPU backend, or
//! whenever it needs the whole row) and a device must return exactly what it returns.

/// The most candidates a device returns per row; samplers with a larger `top_k` (or none) take
/// the whole row of logits instead.
pub const MAX_TOP_K: usize = 1024;

/// A token whose logit is penalized before sampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PenaltyToken {
    pub id: u32,
    /// In the repeat-penalty window.
    pub repeat: bool,
    /// Times generated so far (presence and frequency penalties apply when > 0).
    pub count: u32,
}

/// Penalties of one row: the parameters and the tokens they apply to (each id once).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Penalties {
    /// Divides positive logits and multiplies negative ones (1 = off).
    pub repeat: f32,
    pub presence: f32,
    pub frequency: f32,
    pub tokens: Vec<PenaltyToken>,
}

impl Penalties {
    /// The logit of `t` after its penalties: the repeat penalty as CTRL / transformers (shrink
    /// positive logits, grow negative ones), then `presence + frequency * count` subtracted, as
    /// the OpenAI API. Devices do the same f32 operations in the same order.
    pub fn apply_one(&self, logit: f32, t: &PenaltyToken) -> f32 {
        let mut l = logit;
        if t.repeat {
            l = if l > 0.0 {
                l / self.repeat
            } else {
                l * self.repeat
            };
        }
        if t.count > 0 {
            l -= self.presence + self.frequency * t.count as f32;
        }
        l
    }

    /// [`Self::apply_one`] on every listed token inside `logits`.
    pub fn apply(&self, logits: &mut [f32]) {
        for t in &self.tokens {
            if let Some(l) = logits.get_mut(t.id as usize) {
                *l = self.apply_one(*l, t);
            }
        }
    }
}

/// What one row needs: its `k` best candidates after `penalties` and `temperature`.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    /// 1 ..= [`MAX_TOP_K`].
    pub k: usize,
    /// > 0 (a greedy pick is k = 1 at temperature 1).
    pub temperature: f32,
    pub penalties: Penalties,
}

/// `logit / temperature` as candidates are compared: NaN as -inf (it never wins, as in
/// [`crate::argmax`]) and -0 as +0, so that equal values are equal keys and ties go to the
/// smaller id (the first index, as `argmax` takes it).
pub fn scaled(logit: f32, temperature: f32) -> f32 {
    let v = logit / temperature;
    if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v + 0.0
    }
}

/// Best first: larger value, then smaller id.
pub fn best_first(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The `k` best `(id, scaled(logit, temperature))` of `logits` (after `penalties`, applied to
/// `logits` in place), best first; fewer when the row is shorter. `buf` is reused between calls.
pub fn top_k(logits: &mut [f32], req: &TopK, buf: &mut Vec<(u32, f32)>) {
    req.penalties.apply(logits);
    buf.clear();
    candidates(logits, 0, req, buf);
    keep_best(buf, req.k);
}

/// Appends the `max(k, 1)` best `(first_id + i, scaled(logits[i], temperature))` to `buf` (all
/// of them when fewer), unordered (penalties not applied: the caller has). The `k` best of a
/// row are among the `k` best of each of its pieces ([`best_first`] is a total order: ids are
/// distinct), so a row can be selected piece by piece in parallel and the pieces' candidates
/// merged with [`keep_best`].
pub fn candidates(logits: &[f32], first_id: u32, req: &TopK, buf: &mut Vec<(u32, f32)>) {
    let start = buf.len();
    buf.extend(
        (first_id..)
            .zip(logits)
            .map(|(i, &l)| (i, scaled(l, req.temperature))),
    );
    let k = req.k.max(1);
    if k < buf.len() - start {
        buf[start..].select_nth_unstable_by(k - 1, best_first);
        buf.truncate(start + k);
    }
}

/// Keeps the `max(k, 1)` best of `buf` (all of them when fewer), best first.
pub fn keep_best(buf: &mut Vec<(u32, f32)>, k: usize) {
    let k = k.max(1);
    if k < buf.len() {
        buf.select_nth_unstable_by(k - 1, best_first);
        buf.truncate(k);
    }
    buf.sort_unstable_by(best_first);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(k: usize, temperature: f32) -> TopK {
        TopK {
            k,
            temperature,
            penalties: Penalties {
                repeat: 1.0,
                ..Default::default()
            },
        }
    }

    #[test]
    fn ties_go_to_the_smaller_id_and_nan_never_wins() {
        let mut l = [1.0, f32::NAN, 3.0, 3.0, -0.0, 0.0, 2.0];
        let mut buf = Vec::new();
        top_k(&mut l, &req(4, 1.0), &mut buf);
        let ids: Vec<u32> = buf.iter().map(|c| c.0).collect();
        assert_eq!(ids, [2, 3, 6, 0]);
        // -0 and +0 are one key: the first of them wins, as argmax would take it.
        let mut l = [-1.0, -0.0, 0.0, f32::NAN];
        top_k(&mut l, &req(1, 1.0), &mut buf);
        assert_eq!(buf, [(1, 0.0)]);
        assert_eq!(crate::argmax(&[-1.0, -0.0, 0.0, f32::NAN]), 1);
    }

    #[test]
    fn penalties_apply_before_the_temperature() {
        let p = Penalties {
            repeat: 2.0,
            presence: 0.5,
            frequency: 0.25,
            tokens: vec![
                PenaltyToken {
                    id: 0,
                    repeat: true,
                    count: 0,
                },
                PenaltyToken {
                    id: 1,
                    repeat: true,
                    count: 2,
                },
                PenaltyToken {
                    id: 2,
                    repeat: false,
                    count: 1,
                },
            ],
        };
        let mut l = [4.0, -1.0, 3.0, 1.0];
        p.apply(&mut l);
        assert_eq!(l, [2.0, -2.0 - 1.0, 3.0 - 0.75, 1.0]);
        let mut l = [4.0, -1.0, 3.0, 1.0];
        let mut buf = Vec::new();
        top_k(
            &mut l,
            &TopK {
                k: 2,
                temperature: 0.5,
                penalties: p,
            },
            &mut buf,
        );
        assert_eq!(buf, [(2, 4.5), (0, 4.0)]);
    }

    #[test]
    fn k_past_the_row_keeps_it_all_sorted() {
        let mut l = [0.5, 2.0, 1.0];
        let mut buf = Vec::new();
        top_k(&mut l, &req(10, 1.0), &mut buf);
        assert_eq!(buf, [(1, 2.0), (2, 1.0), (0, 0.5)]);
    }
}
