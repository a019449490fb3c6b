//! Measured trial of a lookup-table (LUT) ternary kernel, in the family of bitnet.cpp's TL2 and
//! Microsoft's T-MAC, against the crate's multiply-add (MAD) kernels. x86-64 only.
//!
//! ```text
//! cargo run --release -p bitnet-kernels --example lut_trial -- [--quick] [--rounds N]
//!     [--cold-mib N] [--no-512] [--max-t N] [--prefetch CHUNKS] [--pf-hint t0|t1|nta]
//!     [--shapes 2560x2560,..] [--tokens 1,8,64] [--threads 1,2] [--hot-only | --cold-only]
//!     [--skip-check] [--no-controls]
//! ```
//!
//! # LUT design (TL2-style, exact)
//!
//! - Weights are grouped by 3 along `cols` (27 combinations). Mirror consolidation: a group and
//!   its negation share one table entry, so a group is a 4-bit index into 14 entries (0 plus the
//!   13 combinations whose first non-zero weight is +1) and a sign bit: 5 bits per 3 weights,
//!   1.67 bits/weight against I2_S's 2 (plus one i32 per row, see below).
//! - Per token and group a 16-entry table of the exact partial sums `sum_i c_i * q_i`
//!   (|.| <= 384, so i16) is built once, stored as two 16-byte planes: the low byte (unsigned)
//!   and the high byte (signed). `pshufb` looks up 32 rows per instruction in each plane and
//!   `punpck{l,h}bw` of the two planes rebuilds the exact i16 values.
//! - The sign is an XOR of both planes with 0xFF (`v ^ -1 = -v - 1`), so the sum comes out short
//!   by the number of negated groups in the row: a weight-only constant stored per row at repack
//!   time and added at the end. Exact in i16 for 80 groups (80 * 385 < 32768), then widened.
//! - Layout, per tile of 64 rows and chunk of 8 groups (24 weights), 320 contiguous bytes: four
//!   64-byte index vectors (byte j = row j; high nibble group 2i, low nibble group 2i + 1), then
//!   one 64-byte sign vector (bit k of byte j = sign of row j's group k). One 32-byte load feeds
//!   2 groups x 32 rows of lookups; the sign vector serves 8 groups.
//!
//! Per 32 rows x 1 group (96 weights) and one token the AVX2 kernel issues 2 `pshufb`,
//! 2 `pxor`, 2 `punpck`, 2 `paddw`, plus, shared by all tokens of the tile, 1.5 ops of nibble
//! extraction and 2 ops (`psllw` + `pcmpgtb`) for the sign mask: 11.5 vector ALU ops per 96
//! weights = 15.3 per 128 (15.2 in the compiled loop), against 15 per 128 for the MAD kernel
//! (3 shifts, 4 ands, 4 `pmaddubsw`, 4 adds), and no horizontal sum per row: the 64 rows of a
//! tile are 64 i16 lanes. Per token and 128 weights it also loads 1.33 16-byte table planes
//! (L1/L2) where MAD loads 128 activation bytes. The AVX-512 variant does the same on 64 rows per
//! zmm instruction (7 zmm ops per 128 weights, 3.3 of them shuffle-port only) with the sign as a
//! `vptestmb` mask and a masked subtract; MAD-VNNI needs 4 zmm ops (2 `vpdpbusd`, 2 ands).
//!
//! Both LUT kernels prefetch the weight stream `--prefetch` chunks ahead (default 8 = 2.5 KiB);
//! without it their cold (DRAM) throughput drops from ~12 to ~8.5 GB/s on the 2-core Xeon
//! this was written on. The crate's MAD kernels do not prefetch, so the decode rows also time
//! two controls, `mad-avx2+pf` and `mad-avx512+pf`: the same MAD schemes re-implemented here
//! with the same prefetch, separating the prefetch effect from the LUT layout's smaller bytes.
//!
//! The example (1) repacks random I2_S matrices into this layout, (2) builds the per-token
//! tables, (3) runs matrix x vector and matrix x matrix products, (4) checks them exactly
//! against `ternary_matmul_i32_scalar`, (5) times LUT against `ternary_matmul_i32_with` for AVX2
//! and AVX-512 VNNI, hot (one matrix, in cache) and cold (cycling through >= 1.5 GB of distinct
//! matrices so every call streams from DRAM), 1 and 2 threads, interleaving the kernels round by
//! round and reporting the median round. With one thread the comparisons use the thread's CPU
//! time, which does not count time spent waiting for a core on a shared machine.

#[cfg(target_arch = "x86_64")]
mod trial {
    use bitnet_common::Storage;
    use bitnet_kernels::{
        ternary_matmul_i32_scalar, ternary_matmul_i32_with, Isa, QuantizedActivations,
        TernaryMatrix,
    };
    use rayon::prelude::*;
    use std::arch::x86_64::*;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    use std::time::Instant;

    // -----------------------------------------------------------------------------------------
    // Encoding

    /// Groups per chunk: one sign byte per row covers 8 groups.
    const CHUNK_GROUPS: usize = 8;
    /// Rows per tile (one zmm / two ymm of index bytes).
    const TILE_ROWS: usize = 64;
    /// Bytes per (tile, chunk): 4 index vectors + 1 sign vector of 64 bytes.
    const CHUNK_BYTES: usize = 5 * TILE_ROWS;
    /// Chunks accumulated in i16 before widening: 80 groups of |v ^ m| <= 385 stay < 32768.
    const FLUSH_CHUNKS: usize = 10;
    /// Table bytes per pair of groups: lo(g) | lo(g+1) | hi(g) | hi(g+1), 16 bytes each.
    const PAIR_TAB_BYTES: usize = 64;
    /// Weight bytes per parallel task, so a task's weights stay in L2 over all token tiles.
    const TASK_BYTES: usize = 256 * 1024;

    /// Coefficients of table entry `e`: entry 0 and the unused 14 and 15 are all-zero; 1..=13
    /// are the 13 non-zero combinations whose first non-zero weight is +1.
    const COEF: [[i8; 3]; 16] = {
        let mut out = [[0i8; 3]; 16];
        let mut n = 1;
        let mut c = 0;
        while c < 27 {
            let w = [
                (c / 9) as i8 - 1,
                ((c / 3) % 3) as i8 - 1,
                (c % 3) as i8 - 1,
            ];
            let first = if w[0] != 0 {
                w[0]
            } else if w[1] != 0 {
                w[1]
            } else {
                w[2]
            };
            if first == 1 {
                out[n] = w;
                n += 1;
            }
            c += 1;
        }
        assert!(n == 14);
        out
    };

    /// (index, negated) of the group `w` (weights in {-1, 0, 1}).
    fn encode_group(w: [i8; 3]) -> (u8, bool) {
        let first = w.iter().copied().find(|&x| x != 0).unwrap_or(0);
        let (neg, c) = if first < 0 {
            (true, [-w[0], -w[1], -w[2]])
        } else {
            (false, w)
        };
        let idx = COEF.iter().position(|e| *e == c).expect("canonical group");
        (idx as u8, neg)
    }

    /// A 64-byte aligned line, so every 32/64-byte vector of the layouts is aligned.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    struct Line([u8; 64]);

    fn lines(n_bytes: usize) -> Vec<Line> {
        vec![Line([0; 64]); n_bytes.div_ceil(64)]
    }

    fn as_bytes(v: &[Line]) -> &[u8] {
        // SAFETY: Line is 64 plain bytes with no padding.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 64) }
    }

    fn as_bytes_mut(v: &mut [Line]) -> &mut [u8] {
        // SAFETY: as above; the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 64) }
    }

    fn groups_for(cols: usize) -> usize {
        cols.div_ceil(3).div_ceil(CHUNK_GROUPS) * CHUNK_GROUPS
    }

    /// Shape of a LUT-layout matrix.
    #[derive(Clone, Copy, Debug)]
    struct LutShape {
        rows: usize,
        cols: usize,
        /// Groups of 3 columns, padded to a multiple of 8.
        groups: usize,
    }

    impl LutShape {
        fn new(rows: usize, cols: usize) -> Self {
            LutShape {
                rows,
                cols,
                groups: groups_for(cols),
            }
        }
        fn chunks(&self) -> usize {
            self.groups / CHUNK_GROUPS
        }
        fn tiles(&self) -> usize {
            self.rows.div_ceil(TILE_ROWS)
        }
        fn data_bytes(&self) -> usize {
            self.tiles() * self.chunks() * CHUNK_BYTES
        }
    }

    /// A matrix in the LUT layout, borrowed (the cold set views one big pool).
    #[derive(Clone, Copy)]
    struct LutView<'a> {
        shape: LutShape,
        data: &'a [u8],
        /// Per (padded) row: number of negated groups, added to the XOR-negated sum.
        neg: &'a [i32],
    }

    impl LutView<'_> {
        /// Bytes one product streams: the packed layout plus the per-row correction.
        fn nbytes(&self) -> usize {
            self.data.len() + self.neg.len() * 4
        }
    }

    struct LutMatrix {
        shape: LutShape,
        data: Vec<Line>,
        neg: Vec<i32>,
    }

    impl LutMatrix {
        /// Repacks an I2_S matrix (via its codes) into the LUT layout.
        fn from_ternary(m: &TernaryMatrix) -> Self {
            let shape = LutShape::new(m.rows(), m.cols());
            let mut data = lines(shape.data_bytes());
            let mut neg = vec![0i32; shape.tiles() * TILE_ROWS];
            let bytes = as_bytes_mut(&mut data);
            let chunks = shape.chunks();
            let mut codes = vec![0i8; shape.groups * 3];
            for (r, neg_r) in neg.iter_mut().enumerate().take(shape.rows) {
                codes[..shape.cols].copy_from_slice(&m.codes_row(r));
                let (tile, rr) = (r / TILE_ROWS, r % TILE_ROWS);
                for g in 0..shape.groups {
                    let (idx, n) = encode_group([codes[3 * g], codes[3 * g + 1], codes[3 * g + 2]]);
                    *neg_r += i32::from(n);
                    let (c, kk) = (g / CHUNK_GROUPS, g % CHUNK_GROUPS);
                    let base = (tile * chunks + c) * CHUNK_BYTES;
                    let ib = base + (kk / 2) * TILE_ROWS + rr;
                    bytes[ib] |= if kk % 2 == 0 { idx << 4 } else { idx };
                    bytes[base + 4 * TILE_ROWS + rr] |= u8::from(n) << kk;
                }
            }
            LutMatrix { shape, data, neg }
        }

        fn view(&self) -> LutView<'_> {
            LutView {
                shape: self.shape,
                data: &as_bytes(&self.data)[..self.shape.data_bytes()],
                neg: &self.neg,
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Per-token tables

    /// The tables of every token: per token `groups / 2` blocks of [`PAIR_TAB_BYTES`].
    struct LutTables {
        tokens: usize,
        stride: usize,
        buf: Vec<Line>,
        qpad: Vec<i8>,
    }

    impl LutTables {
        fn new() -> Self {
            LutTables {
                tokens: 0,
                stride: 0,
                buf: Vec::new(),
                qpad: Vec::new(),
            }
        }

        fn build(&mut self, a: &QuantizedActivations, shape: LutShape) {
            assert_eq!(a.cols(), shape.cols);
            self.tokens = a.tokens();
            self.stride = shape.groups / 2 * PAIR_TAB_BYTES;
            if self.buf.len() * 64 < self.tokens * self.stride {
                self.buf = lines(self.tokens * self.stride);
            }
            // Zero-padded copy (3 * groups >= cols, plus 8 bytes of over-read).
            self.qpad.clear();
            self.qpad.resize(shape.groups * 3 + 8, 0);
            let bytes = as_bytes_mut(&mut self.buf);
            for t in 0..self.tokens {
                self.qpad[..shape.cols].copy_from_slice(&a.q(t)[..shape.cols]);
                let out = &mut bytes[t * self.stride..][..self.stride];
                // SAFETY: the benchmark only runs on CPUs with AVX2 (checked in main); qpad has
                // 3 * groups + 8 bytes and out groups / 2 * 64.
                unsafe { build_tables_avx2(&self.qpad, shape.groups, out) };
            }
        }

        fn token(&self, t: usize) -> *const u8 {
            as_bytes(&self.buf)[t * self.stride..].as_ptr()
        }
    }

    /// Tables of `groups` groups (`groups` even) from the zero-padded activations, two groups per
    /// iteration (one per 128-bit lane), entries as i16 (psign of the broadcast activations by
    /// the coefficient vectors), then split into the low-byte and high-byte planes.
    #[target_feature(enable = "avx2")]
    unsafe fn build_tables_avx2(q: &[i8], groups: usize, out: &mut [u8]) {
        assert!(q.len() >= groups * 3 + 8 && out.len() >= groups / 2 * PAIR_TAB_BYTES);
        let coef = |i: usize, half: usize| {
            let mut v = [0i16; 16];
            for (k, x) in v.iter_mut().enumerate() {
                *x = i16::from(COEF[half * 8 + k % 8][i]);
            }
            // SAFETY: 32 readable bytes.
            unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) }
        };
        let (c0a, c1a, c2a) = (coef(0, 0), coef(1, 0), coef(2, 0));
        let (c0b, c1b, c2b) = (coef(0, 1), coef(1, 1), coef(2, 1));
        // Broadcast i16 element i (lane 0) / 3 + i (lane 1) to the whole lane.
        let ctl = |i: i8| {
            let (l, h) = (2 * i, 2 * (i + 3));
            _mm256_setr_epi8(
                l,
                l + 1,
                l,
                l + 1,
                l,
                l + 1,
                l,
                l + 1,
                l,
                l + 1,
                l,
                l + 1,
                l,
                l + 1,
                l,
                l + 1,
                h,
                h + 1,
                h,
                h + 1,
                h,
                h + 1,
                h,
                h + 1,
                h,
                h + 1,
                h,
                h + 1,
                h,
                h + 1,
                h,
                h + 1,
            )
        };
        let (s0, s1, s2) = (ctl(0), ctl(1), ctl(2));
        let ff = _mm256_set1_epi16(0xff);
        let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
        for p in 0..groups / 2 {
            // SAFETY: 6p + 8 <= 3 * groups + 8 bytes of q; 64p + 64 <= out.len().
            unsafe {
                let x = _mm_cvtepi8_epi16(_mm_loadl_epi64(qp.add(6 * p) as *const __m128i));
                let y = _mm256_broadcastsi128_si256(x);
                let (a0, a1, a2) = (
                    _mm256_shuffle_epi8(y, s0),
                    _mm256_shuffle_epi8(y, s1),
                    _mm256_shuffle_epi8(y, s2),
                );
                let ea = _mm256_add_epi16(
                    _mm256_add_epi16(_mm256_sign_epi16(a0, c0a), _mm256_sign_epi16(a1, c1a)),
                    _mm256_sign_epi16(a2, c2a),
                );
                let eb = _mm256_add_epi16(
                    _mm256_add_epi16(_mm256_sign_epi16(a0, c0b), _mm256_sign_epi16(a1, c1b)),
                    _mm256_sign_epi16(a2, c2b),
                );
                // Per lane: entries 0..8 then 8..16 of that lane's group.
                let lo = _mm256_packus_epi16(_mm256_and_si256(ea, ff), _mm256_and_si256(eb, ff));
                let hi = _mm256_packs_epi16(_mm256_srai_epi16::<8>(ea), _mm256_srai_epi16::<8>(eb));
                _mm256_storeu_si256(op.add(p * PAIR_TAB_BYTES) as *mut __m256i, lo);
                _mm256_storeu_si256(op.add(p * PAIR_TAB_BYTES + 32) as *mut __m256i, hi);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Kernels

    /// Software prefetch distance in chunks (0 = off), set from `--prefetch`.
    static PREFETCH_CHUNKS: AtomicUsize = AtomicUsize::new(0);
    /// Prefetch hint: 0 = T0, 1 = T1, 2 = NTA (`--pf-hint`).
    static PREFETCH_HINT: AtomicU8 = AtomicU8::new(0);

    /// Prefetches the chunk `dist` bytes after `cb` (wrapping: past the end it is a no-op hint).
    #[inline]
    #[target_feature(enable = "sse")]
    fn prefetch_chunk(cb: *const u8, dist: usize, hint: u8) {
        if dist != 0 {
            for l in 0..CHUNK_BYTES / 64 {
                prefetch_line(cb.wrapping_add(dist + 64 * l), dist, hint);
            }
        }
    }

    /// i32 partial sums of one tile, per token and row of the tile.
    type TileAcc<const T: usize> = [[i32; TILE_ROWS]; T];

    /// `H` halves (32 rows each, starting at half `h0`) of tile `tile` against `T` tokens'
    /// tables; adds `sum v ^ m` (without the negation correction) into `res`.
    ///
    /// # Safety
    /// AVX2; `data` holds the whole matrix (`chunks` chunks per tile), every `tabs[t]` the
    /// `chunks * 4` pair tables of a token, `h0 + H <= 2`.
    #[target_feature(enable = "avx2")]
    unsafe fn lut_tile_avx2<const T: usize, const H: usize>(
        data: *const u8,
        chunks: usize,
        tile: usize,
        h0: usize,
        tabs: [*const u8; T],
        res: &mut TileAcc<T>,
    ) {
        let m0f = _mm256_set1_epi8(0x0f);
        let zero = _mm256_setzero_si256();
        let mut acc = [[[zero; 2]; H]; T];
        // SAFETY (whole body): offsets stay inside the tile's chunks and the tables, per the
        // contract.
        unsafe {
            let tile_base = data.add(tile * chunks * CHUNK_BYTES);
            let pf = PREFETCH_CHUNKS.load(Ordering::Relaxed) * CHUNK_BYTES;
            let hint = PREFETCH_HINT.load(Ordering::Relaxed);
            let mut c = 0;
            while c < chunks {
                let end = (c + FLUSH_CHUNKS).min(chunks);
                while c < end {
                    let cb = tile_base.add(c * CHUNK_BYTES);
                    prefetch_chunk(cb, pf, hint);
                    let mut s = [zero; H];
                    for (h, sv) in s.iter_mut().enumerate() {
                        *sv = _mm256_load_si256(cb.add(4 * TILE_ROWS + (h0 + h) * 32) as _);
                    }
                    let tc = c * 4 * PAIR_TAB_BYTES;
                    macro_rules! group {
                        ($i:literal, $sub:literal) => {{
                            const KK: i32 = 2 * $i + $sub;
                            let mut nib = [zero; H];
                            let mut m = [zero; H];
                            for h in 0..H {
                                let v =
                                    _mm256_load_si256(cb.add($i * TILE_ROWS + (h0 + h) * 32) as _);
                                nib[h] = if $sub == 0 {
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), m0f)
                                } else {
                                    _mm256_and_si256(v, m0f)
                                };
                                // Sign bit KK to bit 7, then the byte mask 0x00 / 0xFF.
                                m[h] =
                                    _mm256_cmpgt_epi8(zero, _mm256_slli_epi16::<{ 7 - KK }>(s[h]));
                            }
                            for t in 0..T {
                                let tp = tabs[t].add(tc + $i * PAIR_TAB_BYTES + $sub * 16);
                                let tlo = _mm256_broadcastsi128_si256(_mm_load_si128(tp as _));
                                let thi =
                                    _mm256_broadcastsi128_si256(_mm_load_si128(tp.add(32) as _));
                                for h in 0..H {
                                    let lo =
                                        _mm256_xor_si256(_mm256_shuffle_epi8(tlo, nib[h]), m[h]);
                                    let hi =
                                        _mm256_xor_si256(_mm256_shuffle_epi8(thi, nib[h]), m[h]);
                                    acc[t][h][0] = _mm256_add_epi16(
                                        acc[t][h][0],
                                        _mm256_unpacklo_epi8(lo, hi),
                                    );
                                    acc[t][h][1] = _mm256_add_epi16(
                                        acc[t][h][1],
                                        _mm256_unpackhi_epi8(lo, hi),
                                    );
                                }
                            }
                        }};
                    }
                    group!(0, 0);
                    group!(0, 1);
                    group!(1, 0);
                    group!(1, 1);
                    group!(2, 0);
                    group!(2, 1);
                    group!(3, 0);
                    group!(3, 1);
                    c += 1;
                }
                // Widen: unpacklo holds rows 0..8 | 16..24, unpackhi rows 8..16 | 24..32.
                for (acc_t, res_t) in acc.iter_mut().zip(res.iter_mut()) {
                    for (h, acc_th) in acc_t.iter_mut().enumerate() {
                        let r = res_t.as_mut_ptr().add((h0 + h) * 32);
                        for (part, off) in [(0, 0usize), (1, 8)] {
                            let a = acc_th[part];
                            for (half, o) in [
                                (_mm256_castsi256_si128(a), off),
                                (_mm256_extracti128_si256::<1>(a), off + 16),
                            ] {
                                let p = r.add(o) as *mut __m256i;
                                _mm256_storeu_si256(
                                    p,
                                    _mm256_add_epi32(
                                        _mm256_loadu_si256(p),
                                        _mm256_cvtepi16_epi32(half),
                                    ),
                                );
                            }
                            acc_th[part] = zero;
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 (F + BW) version: one zmm holds the index bytes of all 64 rows, the four
    /// 128-bit lanes of the table registers are the same 16-byte plane, the sign is a
    /// `vptestmb` mask and the XOR with 0xFF a masked `-1 - x`.
    ///
    /// # Safety
    /// AVX-512 F + BW; otherwise as [`lut_tile_avx2`] with `H = 2`.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn lut_tile_avx512<const T: usize>(
        data: *const u8,
        chunks: usize,
        tile: usize,
        tabs: [*const u8; T],
        res: &mut TileAcc<T>,
    ) {
        let m0f = _mm512_set1_epi8(0x0f);
        let ones = _mm512_set1_epi8(-1);
        let zero = _mm512_setzero_si512();
        let mut acc = [[zero; 2]; T];
        // SAFETY (whole body): as in lut_tile_avx2.
        unsafe {
            let tile_base = data.add(tile * chunks * CHUNK_BYTES);
            let pf = PREFETCH_CHUNKS.load(Ordering::Relaxed) * CHUNK_BYTES;
            let hint = PREFETCH_HINT.load(Ordering::Relaxed);
            let mut c = 0;
            while c < chunks {
                let end = (c + FLUSH_CHUNKS).min(chunks);
                while c < end {
                    let cb = tile_base.add(c * CHUNK_BYTES);
                    prefetch_chunk(cb, pf, hint);
                    let s = _mm512_load_si512(cb.add(4 * TILE_ROWS) as _);
                    let tc = c * 4 * PAIR_TAB_BYTES;
                    macro_rules! group {
                        ($i:literal, $sub:literal) => {{
                            const KK: u32 = 2 * $i + $sub;
                            let v = _mm512_load_si512(cb.add($i * TILE_ROWS) as _);
                            let nib = if $sub == 0 {
                                _mm512_and_si512(_mm512_srli_epi16::<4>(v), m0f)
                            } else {
                                _mm512_and_si512(v, m0f)
                            };
                            let k = _mm512_test_epi8_mask(s, _mm512_set1_epi8((1u8 << KK) as i8));
                            for t in 0..T {
                                let tp = tabs[t].add(tc + $i * PAIR_TAB_BYTES + $sub * 16);
                                let tlo = _mm512_broadcast_i32x4(_mm_load_si128(tp as _));
                                let thi = _mm512_broadcast_i32x4(_mm_load_si128(tp.add(32) as _));
                                let lo = _mm512_shuffle_epi8(tlo, nib);
                                let hi = _mm512_shuffle_epi8(thi, nib);
                                let lo = _mm512_mask_sub_epi8(lo, k, ones, lo);
                                let hi = _mm512_mask_sub_epi8(hi, k, ones, hi);
                                acc[t][0] =
                                    _mm512_add_epi16(acc[t][0], _mm512_unpacklo_epi8(lo, hi));
                                acc[t][1] =
                                    _mm512_add_epi16(acc[t][1], _mm512_unpackhi_epi8(lo, hi));
                            }
                        }};
                    }
                    group!(0, 0);
                    group!(0, 1);
                    group!(1, 0);
                    group!(1, 1);
                    group!(2, 0);
                    group!(2, 1);
                    group!(3, 0);
                    group!(3, 1);
                    c += 1;
                }
                // Lane l (16 rows 16l..16l+16) of unpacklo holds rows 16l..16l+8, unpackhi
                // rows 16l+8..16l+16.
                for t in 0..T {
                    let r = res[t].as_mut_ptr();
                    for (part, off) in [(0, 0usize), (1, 8)] {
                        let a = acc[t][part];
                        let lanes = [
                            _mm512_castsi512_si128(a),
                            _mm512_extracti32x4_epi32::<1>(a),
                            _mm512_extracti32x4_epi32::<2>(a),
                            _mm512_extracti32x4_epi32::<3>(a),
                        ];
                        for (l, x) in lanes.into_iter().enumerate() {
                            let p = r.add(16 * l + off) as *mut __m256i;
                            _mm256_storeu_si256(
                                p,
                                _mm256_add_epi32(_mm256_loadu_si256(p), _mm256_cvtepi16_epi32(x)),
                            );
                        }
                        acc[t][part] = zero;
                    }
                }
            }
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum LutIsa {
        Avx2,
        Avx512,
    }

    impl LutIsa {
        fn name(self) -> &'static str {
            match self {
                LutIsa::Avx2 => "lut-avx2",
                LutIsa::Avx512 => "lut-avx512",
            }
        }
    }

    /// Output pointer shared by the tasks of one call; each task writes its own rows.
    #[derive(Clone, Copy)]
    struct OutPtr(*mut i32);
    // SAFETY: tasks write disjoint elements (their own tiles' rows, for every token).
    unsafe impl Send for OutPtr {}
    unsafe impl Sync for OutPtr {}

    /// `T` tokens from `t0` against tile `tile`, written to `out[t * rows + r]`.
    ///
    /// # Safety
    /// The CPU supports `isa`; `out` valid for `tokens * rows`, this tile's rows written by no
    /// one else.
    unsafe fn run_tile<const T: usize>(
        isa: LutIsa,
        w: &LutView,
        tabs: &LutTables,
        t0: usize,
        tile: usize,
        out: OutPtr,
    ) {
        let mut res: TileAcc<T> = [[0; TILE_ROWS]; T];
        let tp: [*const u8; T] = std::array::from_fn(|i| tabs.token(t0 + i));
        let (data, chunks) = (w.data.as_ptr(), w.shape.chunks());
        // SAFETY: forwarded contract; the layout sizes were fixed by LutShape.
        unsafe {
            match (isa, T) {
                (LutIsa::Avx512, _) => lut_tile_avx512::<T>(data, chunks, tile, tp, &mut res),
                (LutIsa::Avx2, 1 | 2) => lut_tile_avx2::<T, 2>(data, chunks, tile, 0, tp, &mut res),
                (LutIsa::Avx2, _) => {
                    lut_tile_avx2::<T, 1>(data, chunks, tile, 0, tp, &mut res);
                    lut_tile_avx2::<T, 1>(data, chunks, tile, 1, tp, &mut res);
                }
            }
        }
        let rows = w.shape.rows;
        let r0 = tile * TILE_ROWS;
        for (i, rt) in res.iter().enumerate() {
            for (j, &v) in rt.iter().enumerate().take(rows.saturating_sub(r0)) {
                // SAFETY: r0 + j < rows, t0 + i < tokens; this tile belongs to this task.
                unsafe { *out.0.add((t0 + i) * rows + r0 + j) = v + w.neg[r0 + j] };
            }
        }
    }

    /// `out[t * rows + r] = sum_k w_rk * q_tk` (exact, like `ternary_matmul_i32`), on the
    /// current rayon pool, token tiles of 4 inside row tasks of at most [`TASK_BYTES`].
    fn lut_matmul(isa: LutIsa, w: &LutView, tabs: &LutTables, out: &mut [i32]) {
        lut_matmul_tiled(isa, w, tabs, out, 4)
    }

    /// [`lut_matmul`] with at most `max_t` (1..=4) tokens per pass over a tile.
    fn lut_matmul_tiled(isa: LutIsa, w: &LutView, tabs: &LutTables, out: &mut [i32], max_t: usize) {
        assert_eq!(out.len(), tabs.tokens * w.shape.rows);
        let tiles = w.shape.tiles();
        let tile_bytes = w.shape.chunks() * CHUNK_BYTES;
        let threads = rayon::current_num_threads();
        let per_task = tiles
            .div_ceil(threads * 4)
            .min((TASK_BYTES / tile_bytes).max(1))
            .max(1);
        let out = OutPtr(out.as_mut_ptr());
        let task = |i: usize| {
            let (a, b) = (i * per_task, ((i + 1) * per_task).min(tiles));
            let mut t0 = 0;
            while t0 < tabs.tokens {
                let nt = (tabs.tokens - t0).min(max_t.clamp(1, 4));
                for tile in a..b {
                    // SAFETY: main checked the ISA; tiles a..b belong to this task.
                    unsafe {
                        match nt {
                            1 => run_tile::<1>(isa, w, tabs, t0, tile, out),
                            2 => run_tile::<2>(isa, w, tabs, t0, tile, out),
                            3 => run_tile::<3>(isa, w, tabs, t0, tile, out),
                            _ => run_tile::<4>(isa, w, tabs, t0, tile, out),
                        }
                    }
                }
                t0 += nt;
            }
        };
        let n_tasks = tiles.div_ceil(per_task);
        if threads <= 1 {
            (0..n_tasks).for_each(task);
        } else {
            (0..n_tasks).into_par_iter().for_each(task);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Controls: the crate's decode MAD kernels with the LUT kernel's software prefetch

    /// Decode (one token) MAD dot of one I2_S row, AVX2: the crate's `ternary_dot1` scheme
    /// (shift + mask the four 2-bit planes, `pmaddubsw` against the activations, i16 sums
    /// widened every 16 blocks per accumulator) plus a prefetch `pf` bytes ahead every 2 blocks.
    ///
    /// # Safety
    /// AVX2; `w` is a whole number of 32-byte blocks, `q` at least `4 * w.len()` long.
    #[target_feature(enable = "avx2")]
    unsafe fn mad_dot1_avx2_pf(w: &[u8], q: &[i8], pf: usize) -> i32 {
        let nb = w.len() / 32;
        assert!(q.len() >= nb * 128);
        let (wp, qp) = (w.as_ptr(), q.as_ptr());
        let hint = PREFETCH_HINT.load(Ordering::Relaxed);
        let mask = _mm256_set1_epi8(3);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        let mut b = 0;
        // SAFETY (whole body): b < nb for every block read.
        unsafe {
            let blk = |b: usize| {
                let v = _mm256_loadu_si256(wp.add(32 * b) as _);
                let a = qp.add(128 * b);
                let p = |c: __m256i, o: usize| {
                    _mm256_maddubs_epi16(
                        _mm256_and_si256(c, mask),
                        _mm256_loadu_si256(a.add(o) as _),
                    )
                };
                let s0 = _mm256_add_epi16(
                    p(_mm256_srli_epi16::<6>(v), 0),
                    p(_mm256_srli_epi16::<4>(v), 32),
                );
                let s1 = _mm256_add_epi16(p(_mm256_srli_epi16::<2>(v), 64), p(v, 96));
                _mm256_add_epi16(s0, s1)
            };
            while b < nb {
                let end = (b + 32).min(nb);
                let (mut e, mut o) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                while b + 2 <= end {
                    prefetch_line(wp.wrapping_add(32 * b + pf), pf, hint);
                    e = _mm256_add_epi16(e, blk(b));
                    o = _mm256_add_epi16(o, blk(b + 1));
                    b += 2;
                }
                if b < end {
                    e = _mm256_add_epi16(e, blk(b));
                    b += 1;
                }
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_add_epi16(e, o), ones));
            }
            let s = _mm_add_epi32(
                _mm256_castsi256_si128(acc),
                _mm256_extracti128_si256::<1>(acc),
            );
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            _mm_cvtsi128_si32(s)
        }
    }

    /// Decode MAD dot, AVX-512 VNNI: the crate's scheme (block broadcast to both halves, masks
    /// select planes 0 | 1 and 2 | 3 in place, `vpdpbusd` at scale, shift down every 64 blocks)
    /// plus the same prefetch.
    ///
    /// # Safety
    /// AVX-512 F + BW + VNNI; as [`mad_dot1_avx2_pf`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn mad_dot1_avx512_pf(w: &[u8], q: &[i8], pf: usize) -> i32 {
        let nb = w.len() / 32;
        assert!(q.len() >= nb * 128);
        let (wp, qp) = (w.as_ptr(), q.as_ptr());
        let halves =
            |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        let m01 = halves(_mm256_set1_epi8(0xC0u8 as i8), _mm256_set1_epi8(0x30));
        let m23 = halves(_mm256_set1_epi8(0x0C), _mm256_set1_epi8(0x03));
        let s01 = halves(_mm256_set1_epi32(6), _mm256_set1_epi32(4));
        let s23 = halves(_mm256_set1_epi32(2), _mm256_set1_epi32(0));
        let hint = PREFETCH_HINT.load(Ordering::Relaxed);
        let mut total = _mm512_setzero_si512();
        let mut b = 0;
        // SAFETY (whole body): b < nb for every block read.
        unsafe {
            while b < nb {
                let end = (b + 64).min(nb);
                let (mut a01, mut a23) = ([_mm512_setzero_si512(); 2], [_mm512_setzero_si512(); 2]);
                macro_rules! block {
                    ($b:expr, $j:literal) => {{
                        let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(wp.add(32 * $b) as _));
                        let a = qp.add(128 * $b);
                        let (c01, c23) = (_mm512_and_si512(v, m01), _mm512_and_si512(v, m23));
                        a01[$j] = _mm512_dpbusd_epi32(a01[$j], c01, _mm512_loadu_si512(a as _));
                        a23[$j] =
                            _mm512_dpbusd_epi32(a23[$j], c23, _mm512_loadu_si512(a.add(64) as _));
                    }};
                }
                while b + 2 <= end {
                    prefetch_line(wp.wrapping_add(32 * b + pf), pf, hint);
                    block!(b, 0);
                    block!(b + 1, 1);
                    b += 2;
                }
                if b < end {
                    block!(b, 0);
                    b += 1;
                }
                let g01 = _mm512_srav_epi32(_mm512_add_epi32(a01[0], a01[1]), s01);
                let g23 = _mm512_srav_epi32(_mm512_add_epi32(a23[0], a23[1]), s23);
                total = _mm512_add_epi32(total, _mm512_add_epi32(g01, g23));
            }
            _mm512_reduce_add_epi32(total)
        }
    }

    /// One prefetch hint (no-op when `dist` is 0).
    #[inline]
    #[target_feature(enable = "sse")]
    fn prefetch_line(p: *const u8, dist: usize, hint: u8) {
        if dist != 0 {
            let p = p as *const i8;
            // `_mm_prefetch` is safe on newer toolchains and unsafe on the 1.89 MSRV.
            #[allow(unused_unsafe)]
            // SAFETY: a prefetch never faults.
            unsafe {
                match hint {
                    0 => _mm_prefetch::<_MM_HINT_T0>(p),
                    1 => _mm_prefetch::<_MM_HINT_T1>(p),
                    _ => _mm_prefetch::<_MM_HINT_NTA>(p),
                }
            }
        }
    }

    /// Decode (1 token) product with a control kernel, rows split over the current pool like
    /// the LUT driver.
    fn mad_pf_matvec(isa: Isa, m: &TernaryMatrix, a: &QuantizedActivations, out: &mut [i32]) {
        assert!(a.tokens() == 1 && out.len() == m.rows());
        let pf = PREFETCH_CHUNKS.load(Ordering::Relaxed) * CHUNK_BYTES;
        let (q, sum) = (a.q(0), a.sums()[0]);
        let row = |r: usize| -> i32 {
            // SAFETY: main checked the ISA; rows are whole blocks and q is padded to them.
            let raw = unsafe {
                match isa {
                    Isa::Avx2 => mad_dot1_avx2_pf(m.row(r), q, pf),
                    _ => mad_dot1_avx512_pf(m.row(r), q, pf),
                }
            };
            raw - sum
        };
        let threads = rayon::current_num_threads();
        if threads <= 1 {
            for (r, o) in out.iter_mut().enumerate() {
                *o = row(r);
            }
        } else {
            let per = m.rows().div_ceil(threads * 4);
            out.par_chunks_mut(per).enumerate().for_each(|(c, o)| {
                for (i, v) in o.iter_mut().enumerate() {
                    *v = row(c * per + i);
                }
            });
        }
    }

    // -----------------------------------------------------------------------------------------
    // Test data

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Random ternary codes, ~1/4 -1, 1/2 0, 1/4 +1 (or all `fill`).
    fn random_codes(n: usize, seed: u64, fill: Option<i8>) -> Vec<i8> {
        let mut r = Rng(seed | 1);
        (0..n)
            .map(|_| fill.unwrap_or_else(|| [-1, 0, 0, 1][(r.next() >> 62) as usize]))
            .collect()
    }

    /// `tokens x cols` activations; `extreme` puts most values at +-absmax.
    fn random_acts(
        tokens: usize,
        cols: usize,
        seed: u64,
        extreme: Option<f32>,
    ) -> QuantizedActivations {
        let mut r = Rng(seed | 1);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|_| match extreme {
                Some(v) => v,
                None => (r.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0,
            })
            .collect();
        let mut a = QuantizedActivations::new();
        a.quantize_with(Isa::Avx2, &x, tokens, cols);
        a
    }

    /// I2_S bytes: random 2-bit codes with code 3 turned into 1, i.e. 1/4 each of -1 and +1.
    fn random_i2s_pool(n: usize, seed: u64) -> Vec<u8> {
        let mut r = Rng(seed | 1);
        let mut v = vec![0u8; n.div_ceil(8) * 8];
        for c in v.chunks_exact_mut(8) {
            let w = r.next();
            let w = w & !((w & (w >> 1) & 0x5555_5555_5555_5555) << 1);
            c.copy_from_slice(&w.to_le_bytes());
        }
        v.truncate(n);
        v
    }

    // -----------------------------------------------------------------------------------------
    // Exactness

    /// rows, cols, tokens, all weights = this code, all activations = this value.
    type Case = (usize, usize, usize, Option<i8>, Option<f32>);

    fn check_exact(isas: &[LutIsa], controls: &[Isa], pools: &[(usize, rayon::ThreadPool)]) {
        let mut cases: Vec<Case> = Vec::new();
        for &(rows, cols) in &[(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)] {
            for tokens in [1, 3, 8] {
                cases.push((rows, cols, tokens, None, None));
            }
        }
        for &(rows, cols) in &[(640, 2560), (128, 6912)] {
            cases.push((rows, cols, 64, None, None));
        }
        // Odd shapes (row / group / chunk padding) and the i16 worst cases.
        for &(rows, cols) in &[(1, 1), (100, 300), (65, 25), (3, 129)] {
            for tokens in [1, 2, 5] {
                cases.push((rows, cols, tokens, None, None));
            }
        }
        for (fill, x) in [(1i8, 1.0f32), (-1, 1.0), (1, -1.0), (-1, -1.0)] {
            cases.push((64, 6912, 4, Some(fill), Some(x)));
        }
        let mut tabs = LutTables::new();
        let mut n_ok = 0;
        for (ci, &(rows, cols, tokens, fill, extreme)) in cases.iter().enumerate() {
            let seed = 0x1234_5678 + ci as u64 * 7919;
            let m =
                TernaryMatrix::from_codes(rows, cols, &random_codes(rows * cols, seed, fill), 1.0)
                    .unwrap();
            let a = random_acts(tokens, cols, seed ^ 0xabcdef, extreme);
            let lm = LutMatrix::from_ternary(&m);
            tabs.build(&a, lm.shape);
            let mut want = vec![0i32; tokens * rows];
            ternary_matmul_i32_scalar(&m, &a, &mut want);
            for &isa in isas {
                for (threads, pool) in pools {
                    let mut got = vec![i32::MIN; tokens * rows];
                    pool.install(|| lut_matmul(isa, &lm.view(), &tabs, &mut got));
                    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                        panic!(
                            "{} {rows}x{cols} tokens={tokens} threads={threads}: out[{i}] = {} != {}",
                            isa.name(),
                            got[i],
                            want[i]
                        );
                    }
                    n_ok += 1;
                }
            }
            for &isa in controls.iter().filter(|_| tokens == 1) {
                for (threads, pool) in pools {
                    let mut got = vec![i32::MIN; rows];
                    pool.install(|| mad_pf_matvec(isa, &m, &a, &mut got));
                    assert!(
                        got == want,
                        "mad+pf control {isa:?} {rows}x{cols} threads={threads} differs"
                    );
                    n_ok += 1;
                }
            }
        }
        println!(
            "exactness: {n_ok} results (kernels {:?} + mad+pf controls {:?}, {} cases incl. padding and i16 worst cases, 1 and 2 threads) equal ternary_matmul_i32_scalar bit for bit",
            isas.iter().map(|i| i.name()).collect::<Vec<_>>(),
            controls,
            cases.len()
        );
    }

    // -----------------------------------------------------------------------------------------
    // Timing

    /// CPU time of the calling thread (Linux `CLOCK_THREAD_CPUTIME_ID`): unlike the wall time it
    /// leaves out the time the thread waited for a core on this shared machine.
    fn thread_cpu_secs() -> f64 {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: glibc's clock_gettime with a valid out pointer (x86-64 Linux: clockid_t is
        // i32 and struct timespec two i64).
        let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime");
        ts.sec as f64 + ts.nsec as f64 * 1e-9
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }

    struct Args {
        quick: bool,
        rounds: usize,
        cold_mib: usize,
        use_512: bool,
        max_t: usize,
        prefetch: usize,
        pf_hint: u8,
        tokens: Option<Vec<usize>>,
        shapes: Option<Vec<(usize, usize)>>,
        threads: Vec<usize>,
        modes: Vec<bool>,
        skip_check: bool,
        controls: bool,
    }

    fn parse_args() -> Args {
        let mut a = Args {
            quick: false,
            rounds: 7,
            cold_mib: 1536,
            use_512: true,
            max_t: 4,
            prefetch: 8,
            pf_hint: 0,
            tokens: None,
            shapes: None,
            threads: vec![1, 2],
            modes: vec![false, true],
            skip_check: false,
            controls: true,
        };
        let list = |v: Option<String>, name: &str| -> Vec<usize> {
            v.unwrap_or_default()
                .split(',')
                .map(|x| {
                    x.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("{name}: comma list of numbers"))
                })
                .collect()
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut num = |name: &str| -> usize {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} needs a number"))
            };
            match arg.as_str() {
                "--quick" => a.quick = true,
                "--rounds" => a.rounds = num("--rounds"),
                "--cold-mib" => a.cold_mib = num("--cold-mib"),
                "--no-512" => a.use_512 = false,
                "--max-t" => a.max_t = num("--max-t"),
                "--prefetch" => a.prefetch = num("--prefetch"),
                "--pf-hint" => {
                    a.pf_hint = match it.next().as_deref() {
                        Some("t0") => 0,
                        Some("t1") => 1,
                        Some("nta") => 2,
                        _ => panic!("--pf-hint t0|t1|nta"),
                    }
                }
                "--tokens" => a.tokens = Some(list(it.next(), "--tokens")),
                "--shapes" => {
                    let v = list(it.next().map(|x| x.replace('x', ",")), "--shapes");
                    a.shapes = Some(v.chunks_exact(2).map(|p| (p[0], p[1])).collect());
                }
                "--threads" => a.threads = list(it.next(), "--threads"),
                "--cold-only" => a.modes = vec![true],
                "--hot-only" => a.modes = vec![false],
                "--skip-check" => a.skip_check = true,
                "--no-controls" => a.controls = false,
                other => panic!("unknown argument {other}"),
            }
        }
        a
    }

    enum Kernel {
        Mad(Isa),
        Lut(LutIsa),
        /// Decode-only control: MAD with the LUT kernel's prefetch.
        MadPf(Isa),
    }

    impl Kernel {
        fn name(&self) -> &'static str {
            match self {
                Kernel::Mad(Isa::Avx2) => "mad-avx2",
                Kernel::Mad(_) => "mad-avx512vnni",
                Kernel::Lut(l) => l.name(),
                Kernel::MadPf(Isa::Avx2) => "mad-avx2+pf",
                Kernel::MadPf(_) => "mad-avx512+pf",
            }
        }
    }

    pub fn main() {
        let args = parse_args();
        PREFETCH_CHUNKS.store(args.prefetch, Ordering::Relaxed);
        PREFETCH_HINT.store(args.pf_hint, Ordering::Relaxed);
        assert!(Isa::Avx2.is_supported(), "needs AVX2");
        let has_512 = Isa::Avx512Vnni.is_supported();
        let mut kernels = vec![Kernel::Mad(Isa::Avx2)];
        if has_512 && args.use_512 {
            kernels.push(Kernel::Mad(Isa::Avx512Vnni));
        }
        kernels.push(Kernel::Lut(LutIsa::Avx2));
        if has_512 && args.use_512 {
            kernels.push(Kernel::Lut(LutIsa::Avx512));
        }
        if args.controls {
            kernels.push(Kernel::MadPf(Isa::Avx2));
            if has_512 && args.use_512 {
                kernels.push(Kernel::MadPf(Isa::Avx512Vnni));
            }
        }
        let lut_isas: Vec<LutIsa> = kernels
            .iter()
            .filter_map(|k| match k {
                Kernel::Lut(l) => Some(*l),
                _ => None,
            })
            .collect();
        let pools: Vec<(usize, rayon::ThreadPool)> = args
            .threads
            .iter()
            .map(|&n| {
                (
                    n,
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(n)
                        .build()
                        .unwrap(),
                )
            })
            .collect();

        if !args.skip_check {
            let controls: Vec<Isa> = kernels
                .iter()
                .filter_map(|k| match k {
                    Kernel::MadPf(i) => Some(*i),
                    _ => None,
                })
                .collect();
            check_exact(&lut_isas, &controls, &pools);
        }

        // Cold pools: one I2_S pool of `cold_mib`, and a LUT pool holding as many matrices of
        // each shape (random bytes: every nibble / sign bit is a valid LUT code).
        let t = Instant::now();
        let mad_pool = Storage::from_vec(random_i2s_pool(args.cold_mib << 20, 0x9e37_79b9));
        let lut_pool_len = (args.cold_mib << 20) / 6 * 5 + (64 << 20);
        let mut lut_pool = lines(lut_pool_len);
        {
            let mut r = Rng(0x2545_f491);
            for l in lut_pool.iter_mut() {
                for c in l.0.chunks_exact_mut(8) {
                    c.copy_from_slice(&r.next().to_le_bytes());
                }
            }
        }
        let lut_bytes = as_bytes(&lut_pool);
        eprintln!("cold pools ready in {:.1} s", t.elapsed().as_secs_f64());

        let shapes: &[(usize, usize)] = match &args.shapes {
            Some(s) => s,
            None if args.quick => &[(2560, 2560), (2560, 6912)],
            None => &[(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)],
        };
        let token_counts: &[usize] = match &args.tokens {
            Some(t) => t,
            None if args.quick => &[1, 64],
            None => &[1, 8, 64],
        };

        println!(
            "\n{:>9} {:>3} {:>2} {:>4} {:>14} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7}",
            "shape",
            "tok",
            "th",
            "mode",
            "kernel",
            "wall-us",
            "cpu-us",
            "GB/s",
            "MB",
            "x avx2",
            "x 512"
        );
        for &(rows, cols) in shapes {
            let shape = LutShape::new(rows, cols);
            let mad_n = rows * cols / 4;
            let n_mats = mad_pool.len() / mad_n;
            let mads: Vec<TernaryMatrix> = (0..n_mats)
                .map(|i| {
                    TernaryMatrix::from_i2s(
                        rows,
                        cols,
                        mad_pool.slice(i * mad_n, mad_n).unwrap(),
                        1.0,
                    )
                    .unwrap()
                })
                .collect();
            let lut_n = shape.data_bytes();
            let neg = vec![0i32; shape.tiles() * TILE_ROWS];
            let luts: Vec<LutView> = (0..n_mats.min(lut_bytes.len() / lut_n))
                .map(|i| LutView {
                    shape,
                    data: &lut_bytes[i * lut_n..][..lut_n],
                    neg: &neg,
                })
                .collect();
            let (mad_bytes, lut_nbytes) = (mads[0].nbytes(), luts[0].nbytes());
            for &tokens in token_counts {
                // The prefetch controls are decode-only.
                let ks: Vec<&Kernel> = kernels
                    .iter()
                    .filter(|k| tokens == 1 || !matches!(k, Kernel::MadPf(_)))
                    .collect();
                let a = random_acts(tokens, cols, 77 + tokens as u64, None);
                let mut tabs = LutTables::new();
                tabs.build(&a, shape);
                // Table construction time per call (single thread, amortised over 200 builds).
                // Thread-CPU time of one build, median of 9 batches of ~64 token-builds.
                let build_us = median(
                    (0..9)
                        .map(|_| {
                            let reps = 64usize.div_ceil(tokens);
                            let c0 = thread_cpu_secs();
                            for _ in 0..reps {
                                tabs.build(&a, shape);
                            }
                            (thread_cpu_secs() - c0) / reps as f64 * 1e6
                        })
                        .collect(),
                );
                let mut out = vec![0i32; tokens * rows];
                for (threads, pool) in &pools {
                    for &cold in &args.modes {
                        let n_used = if cold { n_mats.min(luts.len()) } else { 1 };
                        // Calls per kernel per round: about 25 ms of work, at least 3.
                        let est_s =
                            (mad_bytes as f64 * tokens as f64 / 4e9).max(mad_bytes as f64 / 8e9);
                        let calls = ((0.025 / est_s) as usize).clamp(3, 400);
                        let mut cursor = vec![0usize; ks.len()];
                        let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); ks.len()];
                        for round in 0..=args.rounds {
                            for (ki, k) in ks.iter().enumerate() {
                                let mut wall = Vec::with_capacity(calls);
                                let mut cpu = Vec::with_capacity(calls);
                                for _ in 0..calls {
                                    let i = cursor[ki] % n_used;
                                    cursor[ki] += 1;
                                    let (w, c) = pool.install(|| {
                                        let c0 = thread_cpu_secs();
                                        let t = Instant::now();
                                        match k {
                                            Kernel::Mad(isa) => ternary_matmul_i32_with(
                                                *isa, &mads[i], &a, &mut out,
                                            ),
                                            Kernel::Lut(l) => lut_matmul_tiled(
                                                *l, &luts[i], &tabs, &mut out, args.max_t,
                                            ),
                                            Kernel::MadPf(isa) => {
                                                mad_pf_matvec(*isa, &mads[i], &a, &mut out)
                                            }
                                        }
                                        (t.elapsed().as_secs_f64(), thread_cpu_secs() - c0)
                                    });
                                    wall.push(w);
                                    cpu.push(c);
                                }
                                std::hint::black_box(&out);
                                // Round 0 is warm-up.
                                if round > 0 {
                                    samples[ki].push((median(wall), median(cpu)));
                                }
                            }
                        }
                        // Per kernel: (wall, thread CPU) medians over rounds; the comparisons use
                        // the CPU time with one thread (robust to sharing the core with other
                        // jobs), the wall time with two.
                        let times: Vec<(f64, f64)> = samples
                            .into_iter()
                            .map(|v| {
                                let (w, c): (Vec<f64>, Vec<f64>) = v.into_iter().unzip();
                                (median(w), median(c))
                            })
                            .collect();
                        let metric = |i: usize| {
                            if *threads == 1 {
                                times[i].1
                            } else {
                                times[i].0
                            }
                        };
                        for (ki, k) in ks.iter().enumerate() {
                            let bytes = if matches!(**k, Kernel::Lut(_)) {
                                lut_nbytes
                            } else {
                                mad_bytes
                            };
                            let s = metric(ki);
                            let vs512 = if times.len() > 2 && has_512 && args.use_512 {
                                format!("{:.2}", metric(1) / s)
                            } else {
                                "-".into()
                            };
                            let cpu_col = if *threads == 1 {
                                format!("{:.1}", times[ki].1 * 1e6)
                            } else {
                                "-".into()
                            };
                            println!(
                                "{:>9} {:>3} {:>2} {:>4} {:>14} {:>9.1} {:>9} {:>7.2} {:>7.3} {:>7.2} {:>7}",
                                format!("{rows}x{cols}"),
                                tokens,
                                threads,
                                if cold { "cold" } else { "hot" },
                                k.name(),
                                times[ki].0 * 1e6,
                                cpu_col,
                                bytes as f64 / s / 1e9,
                                bytes as f64 / 1e6,
                                metric(0) / s,
                                vs512,
                            );
                        }
                    }
                }
                println!(
                    "{:>9} {:>3}  table build (all {tokens} tokens, 1 thread, cpu): {build_us:.1} us ({:.2} us/token, {} KiB/token)",
                    format!("{rows}x{cols}"),
                    tokens,
                    build_us / tokens as f64,
                    shape.groups / 2 * PAIR_TAB_BYTES / 1024
                );
            }
        }
        println!(
            "wall-us / cpu-us: median over rounds of the per-round median wall / thread-CPU time \
             per call. GB/s (weight bytes of the kernel's own layout per second), x avx2 and \
             x 512 (mad-avx2 / mad-avx512vnni time over this kernel's, > 1 = faster) use cpu-us \
             with 1 thread and wall-us with 2."
        );
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    trial::main();
    #[cfg(not(target_arch = "x86_64"))]
    eprintln!("lut_trial: x86-64 only");
}
