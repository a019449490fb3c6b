//! The matmul driver shared by the block-quantized dense types (Q8_0 in `dense_q8`, Q6_K in
//! `dense_q6k`): each quantizes the activations its own way and supplies a row dot for up to
//! [`TOKEN_TILE`] tokens; this module cuts the rows into chunks for the pool and runs the token
//! tiles, so both formats stream a row once per tile and parallelize the same way.

use crate::{row_chunk, Isa, SharedOut};

/// Tokens per pass over a weight row.
const TOKEN_TILE: usize = 4;
const CHUNK_BYTES: usize = 256 * 1024;
const SERIAL_WORK: usize = 64 * 1024;

/// A block-quantized row format's dot product against quantized activations.
pub(crate) trait BlockDot {
    /// Weights per block.
    const QK: usize;
    /// Bytes per block.
    const BLOCK_BYTES: usize;

    /// `dot(row, token t)` for `T` tokens: `q[t]` holds the token's int8 codes, `d[t]` its
    /// per-block scales.
    ///
    /// # Safety
    /// The CPU supports `isa`; `row` is whole blocks, and every `q[t]` / `d[t]` covers them.
    unsafe fn dot<const T: usize>(isa: Isa, row: &[u8], q: [&[i8]; T], d: [&[f32]; T]) -> [f32; T];
}

/// `out[t * rows + r] = dot(x[t], row r)` for activations already quantized to `K`'s blocks
/// (`q[t * cols + k]`, `d[t * cols / QK + b]`).
///
/// # Safety
/// The CPU supports `isa`; `data` holds `rows` rows of `cols / QK` blocks; `q`, `d` and `out`
/// hold `tokens` tokens; `rows, tokens, cols > 0`.
pub(crate) unsafe fn matmul<K: BlockDot>(
    data: &[u8],
    rows: usize,
    cols: usize,
    isa: Isa,
    (q, d): (&[i8], &[f32]),
    tokens: usize,
    out: &mut [f32],
) {
    let nb = cols / K::QK;
    let row_bytes = nb * K::BLOCK_BYTES;
    let chunk = row_chunk(rows, row_bytes, CHUNK_BYTES);
    let shared = SharedOut::new(out);
    let qt = |t: usize| &q[t * cols..][..cols];
    let dt = |t: usize| &d[t * nb..][..nb];
    let run = |c: usize| {
        let r0 = c * chunk;
        let r1 = (r0 + chunk).min(rows);
        let mut t0 = 0;
        while t0 < tokens {
            let nt = (tokens - t0).min(TOKEN_TILE);
            for r in r0..r1 {
                let row = &data[r * row_bytes..][..row_bytes];
                macro_rules! tile {
                    ($($i:literal),+) => {{
                        // SAFETY: the caller's contract; lengths hold by construction.
                        let v = unsafe {
                            K::dot(isa, row, [$(qt(t0 + $i)),+], [$(dt(t0 + $i)),+])
                        };
                        for (i, v) in v.into_iter().enumerate() {
                            // SAFETY: (t0 + i, r) is in bounds and written by this task only.
                            unsafe { shared.write((t0 + i) * rows + r, v) }
                        }
                    }};
                }
                match nt {
                    4 => tile!(0, 1, 2, 3),
                    3 => tile!(0, 1, 2),
                    2 => tile!(0, 1),
                    _ => tile!(0),
                }
            }
            t0 += nt;
        }
    };
    let n_chunks = rows.div_ceil(chunk);
    if crate::pool::current_num_threads() <= 1 || data.len() * tokens < SERIAL_WORK {
        (0..n_chunks).for_each(run);
    } else {
        crate::pool::parallel_for(n_chunks, run);
    }
}
