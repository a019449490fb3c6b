//! Q8_0 weights x Q8_0 activations on AMX-INT8 tiles: the LM head on [`Isa::Amx`](crate::Isa),
//! for every token count, by default (`BITNET_AMX_Q8_HEAD=0` keeps ggml's kernels and their float
//! order); the emulated tiles below check it on any AVX2 machine.
//!
//! At ggml's float order the batched head is bound by the vector ports (`x86::q8_0_pairs`:
//! about 22 multiply-adds a cycle a core, 35% of a 16-sequence decode step on the lent Xeon).
//! Here one `tdpbssd` multiplies 16 rows' codes of one block, loaded in place from the Q8_0
//! rows (the 32 codes after each block's 2-byte scale, with the row length as the tile
//! stride), by the same block of 16 tokens: 16 x 16 exact block sums, 8,192 multiply-adds off
//! the vector ports. Each sum is converted and FMA'd with `d_w * d_x` into its (row, token)
//! accumulator, block after block, eight tokens to a vector.
//!
//! That is a float order of its own ([`crate::scalar::q8_0_dot_blockwise`]): the integer block
//! sums are ggml's, but ggml splits each into eight quarter-block lanes with a float chain each
//! and adds the lanes up at the end. The two orders round differently (a few ulps of the sum of
//! the block terms' magnitudes), as llama.cpp's own AMX kernels differ from its AVX2 ones. A
//! single token (a decode step, bound by memory) takes four rows at a time through AVX2 in the
//! same block order instead of a tile padded with 15 empty tokens, so a sequence's logits do
//! not depend on what it is batched with.
//!
//! As in `x86::amx`, the tile instructions are inline assembly and the tile registers keep
//! their values from one `asm!` block to the next (a product issued in one, stored in a later
//! one): the compiler never allocates tile registers, and nothing in between uses AMX.

use crate::kernel::Kernel;
use crate::matmul::Tiles;
use crate::pool::SharedOut;
use crate::scalar::q8_0_dot_blockwise;
use crate::x86::amx::{pack_tokens, TileConfig, TileState, TILE_ROWS, TILE_TOKENS};
use crate::x86::avx2::hsum4_i32_xmm;
use crate::x86::prefetch;
use bitnet_quantization::q8_0::{BLOCK_BYTES, QK8_0};
use bitnet_quantization::DenseMatrix;
use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Bytes of one block's token tile: 8 rows (groups of four codes) of 16 tokens x 4 bytes.
const BLOCK_TILE: usize = QK8_0 / 4 * TILE_TOKENS * 4;

/// Row stride of a token tile and of an accumulator tile.
const TILE_STRIDE: usize = TILE_TOKENS * 4;

/// `tmm0`, `tmm1`: accumulators (16 rows x 16 i32); `tmm4`, `tmm5`: weights (16 rows x 32
/// codes); `tmm6`, `tmm7`: tokens (8 groups of four codes x 16 tokens). Two of each, used by
/// alternate blocks, so a block's loads never wait for the previous block's product.
const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 0, 0, 32, 32, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 0, 0, 16, 16, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Whether the Q8_0 head takes this kernel on `Isa::Amx`: unless `BITNET_AMX_Q8_HEAD=0`, read
/// once.
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("BITNET_AMX_Q8_HEAD").map_or(true, |v| v != "0"))
}

/// A call's quantized activations (`q[t * cols + k]`, `d[t * nb + b]`) and, per group of 16
/// tokens (none for a single token), the tile kernel's operands: every block's token tile ([`pack_tokens`]' layout, block `b`
/// at `b * 512`) and the block scales as `[block][16 tokens]`, zero for padding tokens.
pub(crate) struct Packed {
    q: Vec<i8>,
    d: Vec<f32>,
    codes: Vec<u8>,
    scales: Vec<f32>,
    nb: usize,
}

impl Packed {
    pub(crate) fn new(q: Vec<i8>, d: Vec<f32>, tokens: usize, nb: usize) -> Packed {
        let k = nb * QK8_0;
        assert!(q.len() == tokens * k && d.len() == tokens * nb);
        // One token takes the row kernel, which reads `q` and `d` as they are: no tiles.
        let groups = if tokens > 1 {
            tokens.div_ceil(TILE_TOKENS)
        } else {
            0
        };
        let mut codes = vec![0u8; groups * nb * BLOCK_TILE];
        let mut scales = vec![0f32; groups * nb * TILE_TOKENS];
        for (g, (codes, scales)) in codes
            .chunks_exact_mut(nb * BLOCK_TILE)
            .zip(scales.chunks_exact_mut(nb * TILE_TOKENS))
            .enumerate()
        {
            let ts = g * TILE_TOKENS..tokens.min((g + 1) * TILE_TOKENS);
            let rows: Vec<&[i8]> = ts.clone().map(|t| &q[t * k..][..k]).collect();
            pack_tokens(&rows, k, codes);
            for (n, t) in ts.enumerate() {
                for (b, &dt) in d[t * nb..][..nb].iter().enumerate() {
                    scales[b * TILE_TOKENS + n] = dt;
                }
            }
        }
        Packed {
            q,
            d,
            codes,
            scales,
            nb,
        }
    }
}

/// The head as a driver operand: rows of `m` against `packed`, in strips of 16 rows and
/// groups of 16 tokens. Build it with `EMULATE = false` only where [`super::amx::supported`]
/// returned true and the CPU has AVX-512 F, AVX2, FMA and F16C (`Isa::Amx`); with `EMULATE` the
/// tile products are computed in software from the same memory and only AVX2, FMA and F16C are
/// needed (tests).
pub(crate) struct Q8AmxTiles<'a, const EMULATE: bool> {
    pub(crate) m: &'a DenseMatrix,
    pub(crate) packed: &'a Packed,
    pub(crate) out: SharedOut<f32>,
}

impl<const EMULATE: bool> Tiles for Q8AmxTiles<'_, EMULATE> {
    /// A strip's block scales, `[row][block]` as f32.
    type Scratch = Vec<f32>;

    fn rows(&self) -> usize {
        self.m.rows()
    }

    fn row_bytes(&self) -> usize {
        self.m.row_bytes()
    }

    fn row_align(&self) -> usize {
        TILE_ROWS
    }

    fn token_tile(&self) -> usize {
        TILE_TOKENS
    }

    unsafe fn run<K: Kernel>(
        &self,
        t0: usize,
        nt: usize,
        rows: std::ops::Range<usize>,
        dw: &mut Vec<f32>,
    ) {
        debug_assert!(t0.is_multiple_of(TILE_TOKENS) && (1..=TILE_TOKENS).contains(&nt));
        let mut r = rows.start;
        if nt == 1 {
            // One token is a decode step, bound by memory: four rows at a time as four sequential
            // streams, without the 15 padding tokens a tile would multiply.
            while r + 4 <= rows.end {
                // SAFETY: AVX2 + FMA + F16C (the operand's contract); rows r..r + 4 and token
                // t0 exist and are this task's.
                unsafe { self.rows4_one_token(r, t0) };
                r += 4;
            }
        }
        // SAFETY: the operand's contract: AMX is enabled for this process unless EMULATE.
        let _tiles = (!EMULATE && nt > 1).then(|| unsafe { TileState::configure_with(&CONFIG) });
        while nt > 1 && r + TILE_ROWS <= rows.end {
            // SAFETY: AVX2 + FMA + F16C, and AVX-512 F with the tiles unless EMULATE (the
            // operand's contract); rows r..r + 16 exist and, with tokens t0..t0 + nt, are this
            // task's.
            unsafe {
                if !EMULATE {
                    self.strip_avx512(r, t0, nt, rows.end, dw)
                } else if nt > 8 {
                    self.strip_avx2::<2>(r, t0, nt, rows.end, dw)
                } else {
                    self.strip_avx2::<1>(r, t0, nt, rows.end, dw)
                }
            }
            r += TILE_ROWS;
        }
        // The matrix's last rows (fewer than a tile or a group of four: they would read past its
        // end), in the same float order.
        let (m, p) = (self.m, self.packed);
        let k = p.nb * QK8_0;
        for r in r..rows.end {
            for t in t0..t0 + nt {
                let v = q8_0_dot_blockwise(m.row(r), &p.q[t * k..][..k], &p.d[t * p.nb..][..p.nb]);
                // SAFETY: (t, r) is an output of this task (the driver's contract).
                unsafe { self.out.write(t * m.rows() + r, v) }
            }
        }
    }
}

/// Accumulator `$c` = the weight tile at `$w` (16 rows, `$stride` apart, 32 codes each; loaded
/// into `$a`) x the token tile at `$x` (loaded into `$b`).
macro_rules! block_product {
    ($c:tt, $a:tt, $b:tt, $w:expr, $stride:expr, $x:expr) => {
        asm!(
            concat!("tilezero ", $c),
            concat!("tileloadd ", $b, ", [{x} + {xs}*1]"),
            concat!("tileloadd ", $a, ", [{w} + {ws}*1]"),
            concat!("tdpbssd ", $c, ", ", $a, ", ", $b),
            w = in(reg) $w, ws = in(reg) $stride, x = in(reg) $x, xs = in(reg) TILE_STRIDE,
            out($c) _, out($a) _, out($b) _,
            options(nostack, readonly),
        )
    };
}

/// Stores accumulator `$c` (16 rows of 16 i32) at `$to`.
macro_rules! store_sums {
    ($c:tt, $to:expr) => {
        asm!(
            concat!("tilestored [{c} + {s}*1], ", $c),
            c = in(reg) $to, s = in(reg) TILE_STRIDE,
            options(nostack),
        )
    };
}

impl<const EMULATE: bool> Q8AmxTiles<'_, EMULATE> {
    /// [`Self::strip`] with the accumulators in 16 AVX-512 registers (a row each, its 16 tokens
    /// in the lanes): the machines with AMX have AVX-512, and the scaling is most of the
    /// vector work.
    ///
    /// # Safety
    /// As [`Self::strip`], and AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn strip_avx512(&self, r: usize, t0: usize, nt: usize, end: usize, dw: &mut Vec<f32>) {
        // SAFETY: forwarded contract, with AVX-512 F for the accumulator.
        unsafe { self.strip::<Zmm>(r, t0, nt, end, dw) }
    }

    /// [`Self::strip`] with the accumulators in memory, `H` vectors of eight tokens a row (the
    /// emulated tiles of the tests, which run where AVX-512 may be missing).
    ///
    /// # Safety
    /// As [`Self::strip`].
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn strip_avx2<const H: usize>(
        &self,
        r: usize,
        t0: usize,
        nt: usize,
        end: usize,
        dw: &mut Vec<f32>,
    ) {
        // SAFETY: forwarded contract.
        unsafe { self.strip::<Ymm<H>>(r, t0, nt, end, dw) }
    }

    /// Rows `r..r + 16` against tokens `t0..t0 + nt` (one group), stored. Rows from `r + 16` up
    /// to `end` are the task's next strip, requested from memory meanwhile. Inlined into the
    /// wrappers above, which enable the features its accumulator `A` needs.
    ///
    /// # Safety
    /// AVX2, FMA and F16C (and what `A` needs); unless `EMULATE`, tiles configured with
    /// [`CONFIG`] on this thread; rows `r..end` exist (`r + 16 <= end`), `t0` is a multiple of
    /// 16 and tokens `t0..t0 + nt` are in `packed` (`nt` within `A`'s lanes); no other task
    /// writes these outputs.
    #[inline(always)]
    unsafe fn strip<A: Accumulators>(
        &self,
        r: usize,
        t0: usize,
        nt: usize,
        end: usize,
        dw: &mut Vec<f32>,
    ) {
        #[repr(C, align(64))]
        struct Sums([[[i32; TILE_TOKENS]; TILE_ROWS]; 2]);
        let (m, p) = (self.m, self.packed);
        let (nb, rb) = (p.nb, m.row_bytes());
        // From the matrix, not row r's slice: the tiles read the 15 rows after it too.
        let w = m.data()[r * rb..].as_ptr();
        let g = t0 / TILE_TOKENS;
        // SAFETY: group g of the packed operands holds nb token tiles and nb * 16 scales.
        let (codes, dx) = unsafe {
            (
                p.codes.as_ptr().add(g * nb * BLOCK_TILE),
                p.scales.as_ptr().add(g * nb * TILE_TOKENS),
            )
        };
        dw.resize(TILE_ROWS * nb, 0.0);
        for (i, dwi) in dw.chunks_exact_mut(nb).enumerate() {
            // SAFETY: row r + i exists; it holds nb blocks.
            unsafe { row_scales(m.row(r + i).as_ptr(), dwi) };
        }
        let next = (end - r - TILE_ROWS).min(TILE_ROWS);
        let mut sums = Sums([[[0; TILE_TOKENS]; TILE_ROWS]; 2]);
        // SAFETY: the features `A` needs (the caller's contract).
        let mut acc = unsafe { A::zero() };
        // Block b's weight tile starts after its scale in row r; the rows follow `rb` apart.
        let wt = |b: usize| w.wrapping_add(b * BLOCK_BYTES + 2);
        // SAFETY: each product reads 16 rows x 32 bytes inside rows r..r + 16 and a 512-byte
        // token tile of group g; stores write one `Sums` entry (1 KiB, 64-byte rows).
        unsafe {
            if EMULATE {
                product_emulated(wt(0), rb, codes, &mut sums.0[0]);
            } else {
                block_product!("tmm0", "tmm4", "tmm6", wt(0), rb, codes);
            }
            for b in 0..nb {
                let cur = b % 2;
                if !EMULATE {
                    if cur == 0 {
                        store_sums!("tmm0", sums.0[0].as_mut_ptr());
                    } else {
                        store_sums!("tmm1", sums.0[1].as_mut_ptr());
                    }
                }
                if b + 1 < nb {
                    let (wn, xn) = (wt(b + 1), codes.add((b + 1) * BLOCK_TILE));
                    if EMULATE {
                        product_emulated(wn, rb, xn, &mut sums.0[1 - cur]);
                    } else if cur == 0 {
                        block_product!("tmm1", "tmm5", "tmm7", wn, rb, xn);
                    } else {
                        block_product!("tmm0", "tmm4", "tmm6", wn, rb, xn);
                    }
                }
                // The next strip's rows, a line of each per block (blocks are 34 bytes, so
                // every line of those rows is requested once or twice over the strip).
                for i in 0..next {
                    let line = w.wrapping_add((TILE_ROWS + i) * rb + b * BLOCK_BYTES);
                    _mm_prefetch::<_MM_HINT_T0>(line as *const i8);
                }
                acc.add(&sums.0[cur], dw, b, nb, dx.add(b * TILE_TOKENS));
            }
        }
        // SAFETY: as above.
        let acc = unsafe { acc.rows() };
        for (i, acc_i) in acc.iter().enumerate() {
            for (n, &v) in acc_i[..nt].iter().enumerate() {
                // SAFETY: (t0 + n, r + i) is an output of this task (the caller's contract).
                unsafe { self.out.write((t0 + n) * m.rows() + r + i, v) }
            }
        }
    }
}

impl<const EMULATE: bool> Q8AmxTiles<'_, EMULATE> {
    /// Rows `r..r + 4` against token `t` alone, in block order, stored: per block the rows'
    /// exact block sums (ggml's AVX2 integer steps: `|w|`, `sign(x, w)`, `maddubs`, `madd`,
    /// then the four rows' eight lanes added up), converted and FMA'd with `d_w * d_x` into one
    /// accumulator lane per row.
    ///
    /// Tried and not kept: two passes, the four rows read one after another (one sequential
    /// stream, as ggml's one-row kernel reads the head) into a scratch of block sums and scales,
    /// then the FMA chains over it: on the lent Xeon 2.7-3.0 ms against this kernel's 2.4-2.5
    /// and ggml's 2.2-2.4 (the 2B4T head, 16 threads, same call).
    ///
    /// # Safety
    /// AVX2, FMA and F16C; rows `r..r + 4` and token `t` exist; no other task writes these
    /// outputs.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows4_one_token(&self, r: usize, t: usize) {
        let (m, p) = (self.m, self.packed);
        let (nb, rb) = (p.nb, m.row_bytes());
        let k = nb * QK8_0;
        // From the matrix, not row r's slice: the kernel reads the three rows after it too.
        let w = m.data()[r * rb..].as_ptr();
        let (qx, dx) = (&p.q[t * k..][..k], &p.d[t * nb..][..nb]);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm_setzero_ps();
        for b in 0..nb {
            // SAFETY: block b is in rows r..r + 4 (32 codes after its 2-byte scale) and in
            // token t's codes (its scale is the 2 bytes before them); prefetches never fault.
            unsafe {
                let x = _mm256_loadu_si256(qx.as_ptr().add(b * QK8_0).cast());
                let sums: [__m256i; 4] = std::array::from_fn(|j| {
                    let at = w.add(j * rb + b * BLOCK_BYTES);
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(prefetch::DENSE_BYTES) as *const i8);
                    let wv = _mm256_loadu_si256(at.add(2).cast());
                    let pairs =
                        _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(x, wv));
                    _mm256_madd_epi16(pairs, ones)
                });
                let s = _mm_cvtepi32_ps(hsum4_i32_xmm(sums));
                // The rows' block scales, read here rather than all up front: these lines
                // arrive with the codes (prefetched), where a pass over the rows first
                // waited on DRAM line by line (the first version: 8% slower decode).
                let h = |j: usize| (w.add(j * rb + b * BLOCK_BYTES) as *const i16).read_unaligned();
                let dwb = _mm_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), 0, 0, 0, 0));
                let d = _mm_mul_ps(dwb, _mm_set1_ps(*dx.get_unchecked(b)));
                acc = _mm_fmadd_ps(d, s, acc);
            }
        }
        let mut out = [0f32; 4];
        // SAFETY: 16 writable bytes.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), acc) };
        for (j, v) in out.into_iter().enumerate() {
            // SAFETY: (t, r + j) is an output of this task (the caller's contract).
            unsafe { self.out.write(t * m.rows() + r + j, v) }
        }
    }
}

/// The block scales of one Q8_0 row (`nb = out.len()` blocks at `row`) as f32, eight at a time.
///
/// # Safety
/// F16C; `row` points to `out.len()` whole blocks.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn row_scales(row: *const u8, out: &mut [f32]) {
    for (c, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = [0u16; 8];
        for (j, hj) in h.iter_mut().enumerate().take(chunk.len()) {
            // SAFETY: block 8c + j is in the row (this function's contract).
            *hj = unsafe { (row.add((8 * c + j) * BLOCK_BYTES) as *const u16).read_unaligned() };
        }
        let mut f = [0f32; 8];
        // SAFETY: 16 readable bytes in `h`, 32 writable in `f`.
        unsafe {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
            _mm256_storeu_ps(f.as_mut_ptr(), v);
        }
        chunk.copy_from_slice(&f[..chunk.len()]);
    }
}

/// The float accumulators of a strip: 16 rows x 16 tokens, `acc[i][n] += (d_w[i][b] *
/// d_x[n]) * sum[i][n]` block after block with one rounding (FMA).
trait Accumulators: Sized {
    /// # Safety
    /// The CPU has the features the implementation uses.
    unsafe fn zero() -> Self;

    /// Block `b`'s sums (`sums[i][n]`, row `i`, token `n`) with the rows' scales
    /// `dw[i * nb + b]` and the tokens' `dx[0..16]`.
    ///
    /// # Safety
    /// As [`Self::zero`]; `dx` points to 16 scales; `dw` holds 16 rows of `nb` scales, `b < nb`.
    unsafe fn add(
        &mut self,
        sums: &[[i32; TILE_TOKENS]; TILE_ROWS],
        dw: &[f32],
        b: usize,
        nb: usize,
        dx: *const f32,
    );

    /// # Safety
    /// As [`Self::zero`].
    unsafe fn rows(&self) -> [[f32; TILE_TOKENS]; TILE_ROWS];
}

/// In memory, the first `8 H` tokens in `H` ymm vectors a row.
struct Ymm<const H: usize>([[f32; TILE_TOKENS]; TILE_ROWS]);

impl<const H: usize> Accumulators for Ymm<H> {
    unsafe fn zero() -> Self {
        Ymm([[0.0; TILE_TOKENS]; TILE_ROWS])
    }

    #[inline(always)]
    unsafe fn add(
        &mut self,
        sums: &[[i32; TILE_TOKENS]; TILE_ROWS],
        dw: &[f32],
        b: usize,
        nb: usize,
        dx: *const f32,
    ) {
        debug_assert!(dw.len() == TILE_ROWS * nb && b < nb);
        // SAFETY: AVX2 + FMA (the caller's contract); 16 scales at dx; every index below is
        // in bounds.
        unsafe {
            let dxv: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(dx.add(8 * h)));
            for (i, (s, a)) in sums.iter().zip(self.0.iter_mut()).enumerate() {
                let dwi = _mm256_set1_ps(*dw.get_unchecked(i * nb + b));
                for (h, &dxh) in dxv.iter().enumerate() {
                    let v = _mm256_cvtepi32_ps(_mm256_loadu_si256(s.as_ptr().add(8 * h).cast()));
                    let ap = a.as_mut_ptr().add(8 * h);
                    let d = _mm256_mul_ps(dwi, dxh);
                    _mm256_storeu_ps(ap, _mm256_fmadd_ps(d, v, _mm256_loadu_ps(ap)));
                }
            }
        }
    }

    unsafe fn rows(&self) -> [[f32; TILE_TOKENS]; TILE_ROWS] {
        self.0
    }
}

/// In 16 zmm registers, one a row.
struct Zmm([__m512; TILE_ROWS]);

impl Accumulators for Zmm {
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX-512 F (the caller's contract).
        Zmm([unsafe { _mm512_setzero_ps() }; TILE_ROWS])
    }

    #[inline(always)]
    unsafe fn add(
        &mut self,
        sums: &[[i32; TILE_TOKENS]; TILE_ROWS],
        dw: &[f32],
        b: usize,
        nb: usize,
        dx: *const f32,
    ) {
        debug_assert!(dw.len() == TILE_ROWS * nb && b < nb);
        // SAFETY: AVX-512 F (the caller's contract); 16 scales at dx; every index below is in
        // bounds.
        unsafe {
            let dxv = _mm512_loadu_ps(dx);
            for (i, (s, a)) in sums.iter().zip(self.0.iter_mut()).enumerate() {
                let dwi = _mm512_set1_ps(*dw.get_unchecked(i * nb + b));
                let v = _mm512_cvtepi32_ps(_mm512_loadu_si512(s.as_ptr().cast()));
                *a = _mm512_fmadd_ps(_mm512_mul_ps(dwi, dxv), v, *a);
            }
        }
    }

    #[inline(always)]
    unsafe fn rows(&self) -> [[f32; TILE_TOKENS]; TILE_ROWS] {
        let mut out = [[0.0; TILE_TOKENS]; TILE_ROWS];
        for (o, &a) in out.iter_mut().zip(&self.0) {
            // SAFETY: AVX-512 F (the caller's contract); 64 writable bytes.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
        }
        out
    }
}

/// What `tdpbssd` leaves in a zeroed accumulator for the weight tile at `w` (16 rows `stride`
/// apart, 32 signed codes each) and the token tile at `x` (8 rows of 64 bytes: group `e`'s four
/// codes of token `n` at `e * 64 + n * 4`), from the instruction's definition.
///
/// # Safety
/// Those 16 x 32 and 512 bytes are readable.
unsafe fn product_emulated(
    w: *const u8,
    stride: usize,
    x: *const u8,
    c: &mut [[i32; TILE_TOKENS]; TILE_ROWS],
) {
    // SAFETY: the caller's contract.
    let x = unsafe { std::slice::from_raw_parts(x, BLOCK_TILE) };
    for (i, ci) in c.iter_mut().enumerate() {
        // SAFETY: the caller's contract.
        let wi = unsafe { std::slice::from_raw_parts(w.add(i * stride), QK8_0) };
        for (n, s) in ci.iter_mut().enumerate() {
            *s = (0..QK8_0)
                .map(|k| i32::from(wi[k] as i8) * i32::from(x[k / 4 * 64 + n * 4 + k % 4] as i8))
                .sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul;
    use crate::scalar::q8_0_dot;
    use crate::x86::avx2::Avx2;
    use bitnet_common::Storage;
    use bitnet_quantization::DenseType;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    /// A Q8_0 matrix with every code byte (-128 included) and scales of both signs.
    fn matrix(rows: usize, nb: usize, next: &mut impl FnMut() -> u64) -> DenseMatrix {
        let mut bytes = Vec::with_capacity(rows * nb * BLOCK_BYTES);
        for _ in 0..rows * nb {
            let d = ((next() % 2000) as f32 - 1000.0) / 4096.0;
            bytes.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
            bytes.extend((0..QK8_0).map(|_| next() as u8));
        }
        DenseMatrix::new(rows, nb * QK8_0, DenseType::Q8_0, Storage::from_vec(bytes)).unwrap()
    }

    /// Runs the head through the driver with tiles emulated (and, where this CPU and OS run
    /// AMX, with the real instructions too) and checks every output against the block-order
    /// reference bit for bit, and against ggml's order within rounding.
    #[test]
    fn tiles_equal_the_block_order_reference() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return;
        }
        let mut next = rng(0x2545_f491_4f6c_dd1d);
        let pool = crate::pool::ThreadPool::new(3).unwrap();
        // Rows: strips and a ragged tail; blocks: one, odd, a whole scale group and more;
        // tokens: one, a partial group (one and two 8-token vectors), a full one, one over, two
        // groups and a bit.
        let shapes = [
            (16, 1, 1),
            (39, 10, 1),
            (44, 7, 1),
            (20, 80, 1),
            (37, 3, 5),
            (32, 5, 12),
            (64, 8, 16),
            (133, 9, 17),
            (48, 80, 35),
        ];
        // On a machine meant to run the real tiles, a silent skip would hide that they did not.
        let expect_amx = std::env::var("BITNET_EXPECT_AMX").is_ok_and(|v| v == "1");
        assert!(
            !expect_amx || (super::super::amx::supported() && is_x86_feature_detected!("avx512f")),
            "BITNET_EXPECT_AMX=1 but AMX is not available to this process"
        );
        for (rows, nb, tokens) in shapes {
            let m = matrix(rows, nb, &mut next);
            let q: Vec<i8> = (0..tokens * nb * QK8_0)
                .map(|_| ((next() % 255) as i32 - 127) as i8)
                .collect();
            let d: Vec<f32> = (0..tokens * nb)
                .map(|i| {
                    if i == 2 {
                        0.0
                    } else {
                        (next() % 1000) as f32 / 7919.0
                    }
                })
                .collect();
            let k = nb * QK8_0;
            let packed = Packed::new(q.clone(), d.clone(), tokens, nb);
            let mut want = vec![0f32; tokens * rows];
            for t in 0..tokens {
                for r in 0..rows {
                    let (qt, dt) = (&q[t * k..][..k], &d[t * nb..][..nb]);
                    let v = q8_0_dot_blockwise(m.row(r), qt, dt);
                    want[t * rows + r] = v;
                    // ggml's order rounds differently: within f32 rounding of the sum of the
                    // block terms' magnitudes (at most nb + 8 roundings of it).
                    let ggml = q8_0_dot::<1>(m.row(r), [qt], [dt])[0];
                    let mag: f32 = m
                        .row(r)
                        .chunks_exact(BLOCK_BYTES)
                        .zip(qt.chunks_exact(QK8_0).zip(dt))
                        .map(|(blk, (qb, &db))| {
                            let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                            let s: i32 = blk[2..]
                                .iter()
                                .zip(qb)
                                .map(|(&w, &x)| (i32::from(w as i8) * i32::from(x)).abs())
                                .sum();
                            (dw * db).abs() * s as f32
                        })
                        .sum();
                    let tol = (nb + 8) as f32 * f32::EPSILON * mag;
                    assert!(
                        (v - ggml).abs() <= tol,
                        "{v} vs ggml {ggml} (tolerance {tol})"
                    );
                }
            }
            let mut runs: Vec<(&str, bool)> = vec![("emulated", true)];
            if super::super::amx::supported() && is_x86_feature_detected!("avx512f") {
                runs.push(("amx", false));
            }
            for (name, emulate) in runs {
                for threads in [1, 3] {
                    let mut out = vec![f32::NAN; tokens * rows];
                    let o = SharedOut::new(&mut out);
                    let run = || {
                        // SAFETY: AVX2, FMA and F16C checked above; real tiles only where
                        // `supported()` said so; `packed` holds every token.
                        unsafe {
                            if emulate {
                                let job = Q8AmxTiles::<true> {
                                    m: &m,
                                    packed: &packed,
                                    out: o,
                                };
                                matmul::drive::<Avx2, _>(&[job], tokens)
                            } else {
                                let job = Q8AmxTiles::<false> {
                                    m: &m,
                                    packed: &packed,
                                    out: o,
                                };
                                matmul::drive::<Avx2, _>(&[job], tokens)
                            }
                        }
                    };
                    if threads == 1 {
                        run()
                    } else {
                        pool.install(run)
                    }
                    let same = out
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{name}: rows={rows} nb={nb} tokens={tokens} threads={threads}"
                    );
                }
            }
        }
    }
}
