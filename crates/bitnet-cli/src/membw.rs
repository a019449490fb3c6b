//! Memory read bandwidth probe for `bitnet bench`. Decoding reads every weight once per token,
//! so `bandwidth / bytes per token` is the speed limit a decode figure is judged against.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::Instant;

/// Sum with eight independent accumulators: the loop vectorizes and keeps enough loads in
/// flight that one core is limited by memory, not by the add chain. With `PREFETCH` it also
/// requests each line 4 KiB ahead, as the engine's kernels do: on some machines (measured on a
/// Zen 4 VM and a Sapphire Rapids host) the hardware prefetchers alone leave bandwidth unused,
/// and a probe slower than the engine would be no limit at all.
fn sum_words<const PREFETCH: bool>(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        if PREFETCH {
            prefetch(c.as_ptr().wrapping_add(512));
        }
        for (a, &w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(w);
        }
    }
    let t = tail.iter().fold(0u64, |s, &w| s.wrapping_add(w));
    acc.iter().fold(t, |s, &a| s.wrapping_add(a))
}

#[inline(always)]
fn prefetch(p: *const u64) {
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Best-of-`rounds` read bandwidth in bytes per second with `threads` threads, each streaming its
/// own contiguous share of a `bytes`-sized buffer. Make `bytes` several times the last-level
/// cache, or the figure measures the cache. The buffer lives in the same kind of huge-page arena
/// as the engine's weights, so the figure is the limit the engine can actually reach.
pub fn read_bandwidth(bytes: usize, threads: usize, rounds: usize) -> std::io::Result<f64> {
    let threads = threads.max(1);
    let len = (bytes.max(64 * threads) / 64) * 64;
    let mut arena = bitnet_common::ArenaBuilder::new(len)?;
    // Every page written before timing: untouched pages would all read the shared zero page,
    // which stays in cache.
    let storage = arena.push_with(len, |buf| {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i * 31 + 7) as u8;
        }
    })?;
    // Arena storage is 64-byte aligned and `len` a multiple of 64, so the cast cannot fail.
    let buf: &[u64] = bytemuck::try_cast_slice(&storage)
        .map_err(|e| std::io::Error::other(format!("bandwidth buffer: {e}")))?;
    let words = buf.len();
    let per = words.div_ceil(threads);
    let mut best = 0.0f64;
    for round in 0..rounds.max(1) * 2 {
        // Alternate plain and prefetching streams; the best of either is the limit.
        let sum: fn(&[u64]) -> u64 = if round % 2 == 0 {
            sum_words::<false>
        } else {
            sum_words::<true>
        };
        let barrier = Barrier::new(threads + 1);
        let secs = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(per)
                .map(|part| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        black_box(sum(black_box(part)))
                    })
                })
                .collect();
            barrier.wait();
            let t = Instant::now();
            for h in handles {
                // A panic in a reader is a bug in this function, not input-dependent.
                let _ = h.join();
            }
            t.elapsed().as_secs_f64()
        });
        best = best.max((words * 8) as f64 / secs.max(1e-9));
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_matches_naive() {
        let v: Vec<u64> = (0..1003).map(|i| i * 7 + u64::MAX / 3).collect();
        let naive = v.iter().fold(0u64, |s, &w| s.wrapping_add(w));
        assert_eq!(sum_words::<false>(&v), naive);
        assert_eq!(sum_words::<true>(&v), naive);
    }

    #[test]
    fn bandwidth_is_positive_and_finite() {
        let bw = read_bandwidth(8 << 20, 2, 2).unwrap();
        assert!(bw.is_finite() && bw > 0.0, "{bw}");
    }
}
