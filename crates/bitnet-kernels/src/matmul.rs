//! The one matmul driver, shared by the ternary, dense (F32/F16/BF16) and block-quantized
//! (Q8_0/Q6_K) matmuls, with the one set of tile constants.
//!
//! A call cuts every matrix's rows into chunks (enough for load balance, few enough bytes to stay
//! in L2 while every token tile streams over them) and runs the chunks on the pool, or inline
//! when the work is too small to pay for a fork/join. Within a chunk the token tiles are
//! outermost, so the chunk's weights are read from memory once and then reused from cache. What a
//! token tile computes over the chunk's rows and where its results go is the operand's business
//! ([`Tiles::run`]); the dense ones take the rows in the largest row tiles they ask for
//! ([`RowTiles`]) and the rest one by one.

use crate::kernel::Kernel;
use crate::pool;

/// Tokens that share one pass over a weight row: enough to amortize the unpacking, few enough
/// that codes + accumulators stay in the 16 ymm registers.
pub(crate) const TOKEN_TILE: usize = 4;

/// Rows per ternary tile for one token ([`crate::kernel::TernaryKernel::dot_rows`]); ternary
/// chunks are whole multiples of it.
pub(crate) const DECODE_ROWS: usize = 4;

/// Rows per ternary tile for several tokens ([`crate::kernel::TernaryKernel::dot_tile`]).
pub(crate) const PROMPT_ROWS: usize = 2;

/// Weight bytes per parallel task, sized to stay in L2 while all token tiles stream over them.
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;

/// Below this many weight-bytes x tokens a call runs on the calling thread: a fork/join
/// costs more than the work.
pub(crate) const SERIAL_WORK: usize = 64 * 1024;

/// Splits `rows` into chunks for the parallel loop: enough chunks for load balance on the
/// installed pool, and at most `max_chunk_bytes` of weights per chunk so a chunk stays in L2
/// while every token tile streams over it.
pub(crate) fn row_chunk(rows: usize, row_bytes: usize, max_chunk_bytes: usize) -> usize {
    let threads = pool::current_num_threads().max(1);
    let balance = rows.div_ceil(threads * 4);
    let cache = (max_chunk_bytes / row_bytes.max(1)).max(1);
    balance.min(cache).max(1)
}

/// One matrix of a driver call, with the activations it is multiplied by and where its results
/// go.
pub(crate) trait Tiles: Sync {
    /// Per-task scratch (the dense fallback widens a row into it).
    type Scratch: Default;

    fn rows(&self) -> usize;

    fn row_bytes(&self) -> usize;

    /// Chunks of rows are whole multiples of this.
    fn row_align(&self) -> usize {
        1
    }

    /// Tokens per [`Self::run`] call (the last tile of a call may have fewer).
    fn token_tile(&self) -> usize {
        TOKEN_TILE
    }

    /// Computes rows `rows` for tokens `t0..t0 + nt` (one token tile) and stores the results.
    /// Operands computed one row tile at a time implement [`RowTiles`] and forward here to
    /// [`run_tiles`].
    ///
    /// # Safety
    /// The CPU supports `K`'s ISA; the rows and tokens exist, `1 <= nt <= self.token_tile()`;
    /// no other task stores the results of these rows.
    unsafe fn run<K: Kernel>(
        &self,
        t0: usize,
        nt: usize,
        rows: std::ops::Range<usize>,
        scratch: &mut Self::Scratch,
    );
}

/// An operand whose results are computed and stored one row tile at a time ([`run_tiles`]).
pub(crate) trait RowTiles: Tiles {
    /// The multi-row tiles for a token tile of `nt` tokens, largest first; the rows
    /// left over go one by one. Each entry must be 4 or 2 (the tile sizes the driver
    /// instantiates); others are run row by row.
    fn row_tiles(&self, nt: usize) -> &'static [usize];

    /// Computes rows `r..r + R` for tokens `t0..t0 + T` and stores the results.
    ///
    /// # Safety
    /// As [`Tiles::run`] for those rows and tokens.
    unsafe fn tile<K: Kernel, const R: usize, const T: usize>(
        &self,
        r: usize,
        t0: usize,
        scratch: &mut Self::Scratch,
    );
}

/// Runs every row of every matrix in `jobs` for `tokens` tokens in one parallel pass on the
/// current pool ([`crate::pool`]): one fork/join for several matrices that read the same
/// activations (q/k/v, gate/up), the small ones filling the gaps of the big one.
///
/// # Safety
/// The CPU supports `K`'s ISA; every job's activations hold `tokens` tokens.
pub(crate) unsafe fn drive<K: Kernel, M: Tiles>(jobs: &[M], tokens: usize) {
    if tokens == 0 {
        return;
    }
    // Chunk sizes are fixed here, on the calling thread, so every task maps indices the same way.
    let chunks: Vec<(usize, usize)> = jobs
        .iter()
        .map(|j| {
            let chunk =
                row_chunk(j.rows(), j.row_bytes(), CHUNK_BYTES).next_multiple_of(j.row_align());
            (chunk, j.rows().div_ceil(chunk))
        })
        .collect();
    let n_chunks: usize = chunks.iter().map(|&(_, n)| n).sum();
    if n_chunks == 0 {
        return;
    }
    let run = |mut c: usize| {
        // Matrix `m` owns the next `chunks[m].1` chunk indices; a handful of matrices at most.
        let mut m = 0;
        while c >= chunks[m].1 {
            c -= chunks[m].1;
            m += 1;
        }
        let (job, chunk) = (&jobs[m], chunks[m].0);
        let r0 = c * chunk;
        let r1 = (r0 + chunk).min(job.rows());
        // SAFETY: the caller's contract; rows r0..r1 are this task's alone.
        unsafe { rows::<K, M>(job, tokens, r0, r1) }
    };
    let work: usize = jobs.iter().map(|j| j.rows() * j.row_bytes()).sum::<usize>() * tokens;
    if pool::current_num_threads() <= 1 || work < SERIAL_WORK {
        (0..n_chunks).for_each(run);
    } else {
        pool::parallel_for(n_chunks, run);
    }
}

/// Rows `r0..r1` of `job` for every token, token tiles outermost.
///
/// # Safety
/// As [`drive`]; rows `r0..r1` exist and are this task's alone.
unsafe fn rows<K: Kernel, M: Tiles>(job: &M, tokens: usize, r0: usize, r1: usize) {
    let mut scratch = M::Scratch::default();
    let tile = job.token_tile();
    let mut t0 = 0;
    while t0 < tokens {
        let nt = (tokens - t0).min(tile);
        // SAFETY: tokens t0..t0 + nt are in 0..tokens; the rest is the caller's contract.
        unsafe { job.run::<K>(t0, nt, r0..r1, &mut scratch) };
        t0 += nt;
    }
}

/// [`Tiles::run`] of a [`RowTiles`] operand: the largest row tiles first, the rest one by one.
///
/// # Safety
/// As [`Tiles::run`].
pub(crate) unsafe fn run_tiles<K: Kernel, M: RowTiles>(
    job: &M,
    t0: usize,
    nt: usize,
    rows: std::ops::Range<usize>,
    scratch: &mut M::Scratch,
) {
    let (mut r, r1) = (rows.start, rows.end);
    for &nr in job.row_tiles(nt) {
        while r + nr <= r1 {
            // SAFETY: rows r..r + nr are in `rows`; the rest is the caller's contract.
            unsafe { tile::<K, M>(job, nr, nt, r, t0, scratch) };
            r += nr;
        }
    }
    for r in r..r1 {
        // SAFETY: as above.
        unsafe { tile::<K, M>(job, 1, nt, r, t0, scratch) };
    }
}

/// [`RowTiles::tile`] with the run-time tile shape as const generics.
///
/// # Safety
/// As [`RowTiles::tile`] for rows `r..r + nr` and tokens `t0..t0 + nt`, `1 <= nt <= TOKEN_TILE`.
unsafe fn tile<K: Kernel, M: RowTiles>(
    job: &M,
    nr: usize,
    nt: usize,
    r: usize,
    t0: usize,
    s: &mut M::Scratch,
) {
    macro_rules! by_tokens {
        ($r:expr, $R:literal) => {
            // SAFETY: forwarded contract.
            unsafe {
                match nt {
                    4 => job.tile::<K, $R, 4>($r, t0, s),
                    3 => job.tile::<K, $R, 3>($r, t0, s),
                    2 => job.tile::<K, $R, 2>($r, t0, s),
                    _ => job.tile::<K, $R, 1>($r, t0, s),
                }
            }
        };
    }
    match nr {
        4 => by_tokens!(r, 4),
        2 => by_tokens!(r, 2),
        _ => {
            for r in r..r + nr {
                by_tokens!(r, 1)
            }
        }
    }
}
