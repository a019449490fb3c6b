//! Intel AMX-INT8 (Sapphire Rapids and later): the ternary matmul of a batch of tokens on tile
//! registers ([`Isa::Amx`](crate::Isa::Amx)).
//!
//! With several tokens a ternary matmul is bound by arithmetic, not by reading weights: the
//! VNNI kernels retire 64 multiply-adds per `vpdpbusd` and spend as many instructions again
//! unpacking the 2-bit codes. One `tdpbusd` multiplies a 16 x 64 tile of unsigned bytes by a
//! 64 x 16 tile of signed bytes (16,384 multiply-adds) into 16 x 16 exact int32 sums. The codes
//! are unpacked to a byte each into 1 KiB weight tiles: step by step into L1 for a task of up to
//! three blocks of 16 tokens (a batch of decoding sequences), once into a panel that every block
//! reuses for longer prompts.
//!
//! The sums are the same exact integers as every other kernel's (`sum code * q`, corrected by
//! `sum q` in the caller), so results are bit-identical to them.
//!
//! Rust has no stable AMX intrinsics; the tile instructions are written as inline assembly. The
//! compiler never allocates tile registers itself, so they keep their values between the
//! `asm!` blocks of one function (every block still names the tiles it writes as clobbered).

use crate::activations::QuantizedActivations;
use crate::pool;
use bitnet_quantization::TernaryMatrix;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Batches from this many tokens take the tile kernel; smaller ones the VNNI kernels, whose
/// work grows with the tokens while a tile pass costs 16 tokens' worth whatever the batch.
pub(crate) const MIN_TOKENS: usize = 16;

/// Weight rows of one accumulator tile (the `M` of `tdpbusd`).
pub(crate) const TILE_ROWS: usize = 16;
/// Tokens of one accumulator tile (`N`).
pub(crate) const TILE_TOKENS: usize = 16;
/// Columns (activation bytes) of one `tdpbusd` step (`K`).
pub(crate) const TILE_K: usize = 64;
/// Bytes of one packed block of [`TILE_TOKENS`] tokens for one step: 16 rows of 64 bytes.
const STEP_BYTES: usize = TILE_K * TILE_TOKENS;

/// Whether this CPU and OS run AMX-INT8 for this process: the CPU has AMX-TILE and AMX-INT8,
/// the OS enables their register state (XCR0 bits 17 and 18), and Linux granted this process
/// the 8 KiB tile-data state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, Linux 5.16+; without the
/// request the first tile instruction faults). Asked once per process.
pub(crate) fn supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(target_os = "linux")]
fn detect() -> bool {
    #[allow(unused_unsafe)]
    // SAFETY: cpuid leaves 0, 1 and 7 exist on every x86-64 CPU that reports them (leaf 7 is
    // checked against the highest leaf first).
    let (max_leaf, l1, l7) = unsafe {
        let max_leaf = __cpuid(0).eax;
        let l7 = if max_leaf >= 7 {
            __cpuid_count(7, 0).edx
        } else {
            0
        };
        (max_leaf, __cpuid(1).ecx, l7)
    };
    let (amx_tile, amx_int8, osxsave) = (l7 & (1 << 24), l7 & (1 << 25), l1 & (1 << 27));
    if max_leaf < 7 || amx_tile == 0 || amx_int8 == 0 || osxsave == 0 {
        return false;
    }
    let xcr0_lo: u32;
    // SAFETY: OSXSAVE is set, so XGETBV with ECX = 0 is available to user code.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") xcr0_lo, out("edx") _, options(nomem, nostack))
    };
    const TILE_STATE: u32 = (1 << 17) | (1 << 18);
    if xcr0_lo & TILE_STATE != TILE_STATE {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it only changes this process's
    // permission to use the tile-data state.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn detect() -> bool {
    false
}

/// The `ldtilecfg` operand (palette 1): each tile's rows and bytes per row.
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    pub(crate) palette: u8,
    pub(crate) start_row: u8,
    pub(crate) reserved: [u8; 14],
    /// Bytes per row of each tile.
    pub(crate) colsb: [u16; 16],
    /// Rows of each tile.
    pub(crate) rows: [u8; 16],
}

/// The ternary kernels' tiles: every one 16 rows of 64 bytes (accumulators: 16 rows x 16 int32;
/// weights: 16 rows x 64 codes; tokens: 16 column groups x 16 tokens x 4 bytes).
const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Tiles configured on the current thread for as long as it lives; released on drop, so a
/// thread that is done holds no tile state (which the OS would otherwise save and restore on
/// every context switch).
pub(crate) struct TileState(());

impl TileState {
    /// # Safety
    /// [`supported`] returned true.
    pub(crate) unsafe fn configure() -> TileState {
        // SAFETY: the caller's contract; CONFIG is a valid palette-1 configuration.
        unsafe { TileState::configure_with(&CONFIG) }
    }

    /// Tiles shaped by `config` (another kernel's shapes).
    ///
    /// # Safety
    /// [`supported`] returned true; `config` is a valid palette-1 configuration (every
    /// configured tile at most 16 rows of at most 64 bytes).
    pub(crate) unsafe fn configure_with(config: &TileConfig) -> TileState {
        // SAFETY: AMX is enabled for this process and `config` is valid (the caller's contract).
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) config, options(nostack, readonly));
        }
        TileState(())
    }
}

impl Drop for TileState {
    fn drop(&mut self) {
        // SAFETY: tiles were configured by `configure`; TILERELEASE only resets tile state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) }
    }
}

/// Bytes of [`pack_tokens`]'s output for `tokens` tokens of `k` (padded) columns.
pub(crate) fn packed_len(tokens: usize, k: usize) -> usize {
    tokens.div_ceil(TILE_TOKENS) * TILE_TOKENS * k
}

/// Packs one block of up to 16 tokens' int8 activations (`q[n]`, each `k` long, `k` a multiple
/// of 4) as the right-hand operand of `tdpbusd` / `tdpbssd`: row `g` holds columns `4g .. +4` of
/// token 0, then of token 1, ... (64 bytes), so every 64 columns make one 1 KiB tile of 16 rows
/// and every 32 columns one of 8 rows. Tokens past `q.len()` are zeros, so their sums are zero
/// and ignored.
pub(crate) fn pack_tokens(q: &[&[i8]], k: usize, out: &mut [u8]) {
    debug_assert!(k.is_multiple_of(4) && q.len() <= TILE_TOKENS);
    debug_assert_eq!(out.len(), k * TILE_TOKENS);
    // A 16 x (k / 4) transpose of 4-byte groups: group e of token n goes to out[(e * 16 + n) * 4].
    for (e, row) in out.chunks_exact_mut(TILE_TOKENS * 4).enumerate() {
        let (mine, rest) = row.split_at_mut(q.len() * 4);
        for (o, qn) in mine.chunks_exact_mut(4).zip(q) {
            for (d, &v) in o.iter_mut().zip(&qn[e * 4..][..4]) {
                *d = v as u8;
            }
        }
        rest.fill(0);
    }
}

/// Bytes of one unpacked weight tile: 16 rows of 64 codes.
const TILE_BYTES: usize = TILE_ROWS * TILE_K;

/// Unpacks up to `P * 16` I2_S rows (`w`: whole rows of `row_bytes`, 32-byte blocks of 128
/// weights, byte `j` holding weights `j, j + 32, j + 64, j + 96` from the high bits down) into
/// one code byte (0..=2) per weight, laid out as the weight tiles [`panel_dot`] loads: for each
/// 64-column step `s`, the tiles of row groups `0..P` one after another (tile `s * P + p`, row
/// `m` of the group at byte `m * 64`). Every tile load then reads 1 KiB in one piece, which the
/// prefetchers stream, instead of 16 lines a row apart.
///
/// # Safety
/// AVX2 is available; `row_bytes` is a positive multiple of 32, `w.len()` a multiple of it
/// and at most `P * 16` rows, and `out.len() == P * 16 * row_bytes * 4`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn unpack_rows<const P: usize>(w: &[u8], row_bytes: usize, out: &mut [u8]) {
    debug_assert!(row_bytes > 0 && row_bytes.is_multiple_of(32));
    debug_assert_eq!(out.len(), P * TILE_ROWS * row_bytes * 4);
    for (s, tiles) in out.chunks_exact_mut(P * TILE_BYTES).enumerate() {
        // SAFETY: AVX2 and the rows as this function's contract; s < row_bytes * 4 / 64 (out
        // holds that many steps of P tiles).
        unsafe { unpack_step::<P>(w, row_bytes, s, tiles) };
    }
}

/// The raw sums of `P` (1..=4) groups of 16 unpacked rows against one packed block of 16 tokens:
/// `c[p][m][n] = sum_k codes[p * 16 + m][k] * token_n[k]`, the codes in `panel`
/// ([`unpack_rows`]'s layout, `k` columns) and the tokens in `packed` ([`pack_tokens`]).
/// The `P` accumulators are independent, so their `tdpbusd` chains overlap.
///
/// # Safety
/// Tiles are configured on this thread ([`TileState::configure`]); `k` is a positive multiple of
/// [`TILE_K`]; `panel` holds `P * 16 * k` bytes and `packed` `k * 16`.
pub(crate) unsafe fn panel_dot<const P: usize>(
    panel: &[u8],
    k: usize,
    packed: &[u8],
    c: &mut [[[i32; TILE_TOKENS]; TILE_ROWS]; P],
) {
    const { assert!(P >= 1 && P <= 4) };
    debug_assert!(k > 0 && k.is_multiple_of(TILE_K));
    debug_assert!(panel.len() >= P * TILE_ROWS * k && packed.len() >= k * TILE_TOKENS);
    let (a, b) = (panel.as_ptr(), packed.as_ptr());
    // SAFETY: tiles are configured (the caller's contract). Step s reads the token tile at
    // `b + s * 1 KiB` (inside `packed`, k / 64 tiles) and weight tiles `s * P + p` at
    // `a + (s * P + p) * 1 KiB` (inside `panel`, k / 64 * P tiles); `tilestored` writes tile p
    // into `c[p]`, 16 x 16 i32 = 1 KiB.
    unsafe {
        zero::<P>();
        for s in 0..k / TILE_K {
            step::<P>(a.add(s * P * TILE_BYTES), b.add(s * STEP_BYTES));
        }
        store::<P>(c);
    }
}

/// [`panel_dot`] straight from the packed rows, for tasks with few token blocks (a batch of up
/// to 16 decoding sequences has one): each step's weight tiles are unpacked just before their
/// products into a buffer that stays in L1, instead of a whole panel written to L2 and read back
/// once.
///
/// # Safety
/// Tiles are configured on this thread; AVX2 is available; `w` is whole rows of `row_bytes`
/// (a positive multiple of 32), at most `P * 16` of them; `packed` holds `row_bytes * 4 * 16`
/// bytes.
pub(crate) unsafe fn panel_dot_streamed<const P: usize>(
    w: &[u8],
    row_bytes: usize,
    packed: &[u8],
    c: &mut [[[i32; TILE_TOKENS]; TILE_ROWS]; P],
) {
    #[repr(C, align(64))]
    struct Steps([[u8; 4 * TILE_BYTES]; 2]);
    debug_assert!(row_bytes > 0 && row_bytes.is_multiple_of(32));
    debug_assert!(w.len().is_multiple_of(row_bytes) && w.len() <= P * TILE_ROWS * row_bytes);
    debug_assert!(packed.len() >= row_bytes * 4 * TILE_TOKENS);
    // Two buffers in turn, so unpacking a step need not wait for the previous step's loads.
    let mut buf = Steps([[0; 4 * TILE_BYTES]; 2]);
    // Up to 64 rows advance together, 32 bytes a row every two steps: more streams than the
    // hardware prefetchers follow, so decode-sized batches waited on DRAM row by row. Each row's
    // next lines are requested STREAM_AHEAD lines (4 steps each) before their step.
    let ahead = |line: usize| {
        if line * 64 < row_bytes {
            for row in w.chunks_exact(row_bytes) {
                // SAFETY: a prefetch never faults; the address is inside the row anyway.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(line * 64) as *const i8) };
            }
        }
    };
    (0..STREAM_AHEAD).for_each(ahead);
    // SAFETY: the caller's contract; step s unpacks into a 4 KiB buffer holding P tiles and
    // reads token tile s of the k / 64 in `packed`.
    unsafe {
        zero::<P>();
        for s in 0..row_bytes * 4 / TILE_K {
            if s.is_multiple_of(4) {
                ahead(s / 4 + STREAM_AHEAD);
            }
            let tiles = &mut buf.0[s % 2];
            unpack_step::<P>(w, row_bytes, s, &mut tiles[..P * TILE_BYTES]);
            step::<P>(tiles.as_ptr(), packed.as_ptr().add(s * STEP_BYTES));
        }
        store::<P>(c);
    }
}

/// Step `s`'s weight tiles (columns `s * 64..`) of the rows in `w` (the `P` tiles of one step
/// in [`unpack_rows`]'s layout); tiles of rows past the last keep what they held.
///
/// # Safety
/// AVX2 is available; as [`panel_dot_streamed`], `s < row_bytes * 4 / 64` and
/// `out.len() >= P * 1 KiB`.
#[target_feature(enable = "avx2")]
unsafe fn unpack_step<const P: usize>(w: &[u8], row_bytes: usize, s: usize, out: &mut [u8]) {
    debug_assert!(w.len().is_multiple_of(row_bytes) && w.len() <= P * TILE_ROWS * row_bytes);
    debug_assert!(out.len() >= P * TILE_BYTES && s < row_bytes * 4 / TILE_K);
    let mask = _mm256_set1_epi8(3);
    // Step s is block s / 2's high (even s) or low (odd s) two bit pairs.
    let block = s / 2 * 32;
    for (i, row) in w.chunks_exact(row_bytes).enumerate() {
        let o = (i / TILE_ROWS) * TILE_BYTES + (i % TILE_ROWS) * TILE_K;
        // SAFETY: block + 32 <= row_bytes; i < P * 16, so `o + 64 <= P KiB <= out.len()`.
        unsafe {
            let v = _mm256_loadu_si256(row.as_ptr().add(block) as *const __m256i);
            let (x, y) = if s.is_multiple_of(2) {
                (_mm256_srli_epi16::<6>(v), _mm256_srli_epi16::<4>(v))
            } else {
                (_mm256_srli_epi16::<2>(v), v)
            };
            let p = out.as_mut_ptr().add(o);
            _mm256_storeu_si256(p as *mut __m256i, _mm256_and_si256(x, mask));
            _mm256_storeu_si256(p.add(32) as *mut __m256i, _mm256_and_si256(y, mask));
        }
    }
}

/// Zeroes accumulators `tmm0..tmm{P-1}`.
///
/// # Safety
/// Tiles are configured on this thread.
#[inline(always)]
unsafe fn zero<const P: usize>() {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("tilezero tmm0", out("tmm0") _, options(nostack, nomem));
        if P > 1 {
            asm!("tilezero tmm1", out("tmm1") _, options(nostack, nomem));
        }
        if P > 2 {
            asm!("tilezero tmm2", out("tmm2") _, options(nostack, nomem));
        }
        if P > 3 {
            asm!("tilezero tmm3", out("tmm3") _, options(nostack, nomem));
        }
    }
}

/// One 64-column step: accumulator `p` += weight tile `at + p KiB` x token tile `bs`.
///
/// # Safety
/// Tiles are configured on this thread; `at` points to `P` KiB of weight tiles and `bs` to a
/// 1 KiB token tile.
#[inline(always)]
unsafe fn step<const P: usize>(at: *const u8, bs: *const u8) {
    // Every tile is 1 KiB in one piece: 16 rows of 64 bytes.
    let stride = TILE_K;
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "tileloadd tmm6, [{b} + {stride}*1]",
            "tileloadd tmm4, [{a} + {stride}*1]",
            "tdpbusd tmm0, tmm4, tmm6",
            b = in(reg) bs, a = in(reg) at, stride = in(reg) stride,
            out("tmm0") _, out("tmm4") _, out("tmm6") _,
            options(nostack, readonly),
        );
        // Accumulator $c += weight tile at $at (loaded into $w) x the token tile in tmm6.
        macro_rules! product {
            ($c:tt, $w:tt, $at:expr) => {
                asm!(
                    concat!("tileloadd ", $w, ", [{a} + {stride}*1]"),
                    concat!("tdpbusd ", $c, ", ", $w, ", tmm6"),
                    a = in(reg) $at, stride = in(reg) stride,
                    out($c) _, out($w) _,
                    options(nostack, readonly),
                )
            };
        }
        // Two weight registers in turn, so a load need not wait for the previous product.
        if P > 1 {
            product!("tmm1", "tmm5", at.add(TILE_BYTES));
        }
        if P > 2 {
            product!("tmm2", "tmm4", at.add(2 * TILE_BYTES));
        }
        if P > 3 {
            product!("tmm3", "tmm5", at.add(3 * TILE_BYTES));
        }
    }
}

/// Stores accumulators `tmm0..tmm{P-1}` into `c`.
///
/// # Safety
/// Tiles are configured on this thread.
#[inline(always)]
unsafe fn store<const P: usize>(c: &mut [[[i32; TILE_TOKENS]; TILE_ROWS]; P]) {
    // SAFETY: tile p goes to `c[p]`, 16 rows of 16 i32 (64 bytes apart).
    unsafe {
        let stride = TILE_TOKENS * 4;
        let cp = c.as_mut_ptr() as *mut u8;
        asm!("tilestored [{c} + {s}*1], tmm0", c = in(reg) cp, s = in(reg) stride, options(nostack));
        if P > 1 {
            asm!("tilestored [{c} + {s}*1], tmm1", c = in(reg) cp.add(1024), s = in(reg) stride, options(nostack));
        }
        if P > 2 {
            asm!("tilestored [{c} + {s}*1], tmm2", c = in(reg) cp.add(2048), s = in(reg) stride, options(nostack));
        }
        if P > 3 {
            asm!("tilestored [{c} + {s}*1], tmm3", c = in(reg) cp.add(3072), s = in(reg) stride, options(nostack));
        }
    }
}

/// Where [`ternary_matmul`] hands its results: `(matrix, token, first row, raw sums)`.
pub(crate) type StoreFn<'a> = dyn Fn(usize, usize, usize, &mut [i32]) + Sync + 'a;

/// Tasks of up to this many token blocks unpack their weights step by step for each block
/// ([`panel_dot_streamed`]); larger ones unpack a panel once for all blocks. Xeon, 16 threads,
/// 2560 x 2560: one block 51-55 us streamed; two blocks 127-141 us through a panel (VNNI:
/// 132-138), four 185 us (streamed about 200).
const STREAM_BLOCKS: usize = 3;

/// Lines of each row requested ahead of the streamed path's steps (a line is four steps).
const STREAM_AHEAD: usize = 2;

/// Steps (64 columns) of one block a packing task takes.
const PACK_STEPS: usize = 8;

/// Token blocks one task takes over its panel: enough to pay for unpacking the panel, few enough
/// that a long prompt still gives every thread tasks.
const BLOCKS_PER_TASK: usize = 8;

thread_local! {
    /// The current task's unpacked panel (up to 64 rows x 6,912 columns for 2B4T: 432 KiB, kept
    /// in L2 while the token blocks stream over it), reused across tasks and calls.
    static PANEL: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The raw sums (`sum code * q`, before the `- sum q` correction) of every row of every matrix
/// in `ws` against every token of `a`, handed to `store(m, t, r0, raw)` (which may overwrite
/// `raw`) a token and up to 64 consecutive rows `r0..` of matrix `m` at a time; each (matrix,
/// token, row) exactly once.
/// Tasks are (matrix, panel of 16 `P` rows, group of token blocks) on the current pool.
///
/// # Safety
/// [`supported`] returned true and AVX2 is available; every matrix has `a.cols()` columns and
/// `a.stride() > 0`.
pub(crate) unsafe fn ternary_matmul(
    ws: &[&TernaryMatrix],
    a: &QuantizedActivations,
    store: &StoreFn<'_>,
) {
    // SAFETY: forwarded contract.
    unsafe { ternary_matmul_on::<false>(ws, a, store) }
}

/// [`ternary_matmul`], with the tile products computed by [`panel_dot_emulated`] when `EMULATE`
/// (so the unit tests check the packing and the task split on CPUs without AMX).
///
/// # Safety
/// As [`ternary_matmul`]; with `EMULATE`, only AVX2 is needed.
unsafe fn ternary_matmul_on<const EMULATE: bool>(
    ws: &[&TernaryMatrix],
    a: &QuantizedActivations,
    store: &StoreFn<'_>,
) {
    let (tokens, k) = (a.tokens(), a.stride());
    debug_assert!(k > 0 && ws.iter().all(|w| w.row_bytes() * 4 == k));
    let blocks = tokens.div_ceil(TILE_TOKENS);
    let mut packed = vec![0u8; packed_len(tokens, k)];
    // In pieces of up to PACK_STEPS steps of one block, so even one block packs on every thread.
    let steps = k / TILE_K;
    let pieces = steps.div_ceil(PACK_STEPS);
    let mut parts: Vec<&mut [u8]> = packed
        .chunks_mut(TILE_TOKENS * k)
        .flat_map(|block| block.chunks_mut(PACK_STEPS * STEP_BYTES))
        .collect();
    pool::for_each_chunk_mut(&mut parts, 1, |i, part| {
        let (b, s0) = (i / pieces, i % pieces * PACK_STEPS);
        let t0 = b * TILE_TOKENS;
        let q: Vec<&[i8]> = (t0..tokens.min(t0 + TILE_TOKENS))
            .map(|t| &a.q(t)[s0 * TILE_K..][..part[0].len() / TILE_TOKENS])
            .collect();
        pack_tokens(&q, part[0].len() / TILE_TOKENS, part[0]);
    });
    let groups = blocks.div_ceil(BLOCKS_PER_TASK);
    // Panels of 16 p rows of each matrix; tasks are those times the token groups.
    let panels_of = |p: usize| -> Vec<usize> {
        ws.iter()
            .map(|w| w.rows().div_ceil(p * TILE_ROWS))
            .collect()
    };
    let threads = pool::current_num_threads();
    let packed = &packed;
    macro_rules! run {
        ($panels:expr, $P:literal) => {{
            let panels: Vec<usize> = $panels;
            pool::parallel_for(panels.iter().sum::<usize>() * groups, |mut i| {
                let g = i % groups;
                i /= groups;
                let mut m = 0;
                while i >= panels[m] {
                    i -= panels[m];
                    m += 1;
                }
                // SAFETY: the caller's contract; task (m, i, g) is in range.
                unsafe { panel_task::<$P, EMULATE>(ws[m], m, i, g, a, packed, store) }
            })
        }};
    }
    // Four accumulators hide most of `tdpbusd`'s latency; two when that leaves too few tasks to
    // balance the threads (2,560 rows and one token group: 40 tasks for 16 threads).
    let fours = panels_of(4);
    if threads <= 1 || fours.iter().sum::<usize>() * groups >= 3 * threads {
        run!(fours, 4)
    } else {
        run!(panels_of(2), 2)
    }
}

/// Task (`m`, panel `panel`, token group `g`) of [`ternary_matmul`].
///
/// # Safety
/// As [`ternary_matmul`]; `panel` and `g` are in range.
unsafe fn panel_task<const P: usize, const EMULATE: bool>(
    w: &TernaryMatrix,
    m: usize,
    panel: usize,
    g: usize,
    a: &QuantizedActivations,
    packed: &[u8],
    store: &StoreFn<'_>,
) {
    let (tokens, k, rb) = (a.tokens(), a.stride(), w.row_bytes());
    let r0 = panel * P * TILE_ROWS;
    let n = (w.rows() - r0).min(P * TILE_ROWS);
    let blocks = tokens.div_ceil(TILE_TOKENS);
    let (b0, b1) = (g * BLOCKS_PER_TASK, blocks.min((g + 1) * BLOCKS_PER_TASK));
    let rows = &w.data()[r0 * rb..][..n * rb];
    let mut c = [[[0i32; TILE_TOKENS]; TILE_ROWS]; P];
    // Hands block b's sums to `store`, token-major so each token's rows go as one slice.
    let finish = |b: usize, c: &[[[i32; TILE_TOKENS]; TILE_ROWS]; P]| {
        let mut by_token = [[0i32; 4 * TILE_ROWS]; TILE_TOKENS];
        for (i, sums) in c.iter().flatten().enumerate() {
            for (col, &v) in by_token.iter_mut().zip(sums) {
                col[i] = v;
            }
        }
        let nt = TILE_TOKENS.min(tokens - b * TILE_TOKENS);
        for (j, col) in by_token[..nt].iter_mut().enumerate() {
            store(m, b * TILE_TOKENS + j, r0, &mut col[..n]);
        }
    };
    let block = |b: usize| &packed[b * TILE_TOKENS * k..][..TILE_TOKENS * k];
    // SAFETY: AMX is enabled for this process (the caller's contract).
    let _tiles = (!EMULATE).then(|| unsafe { TileState::configure() });
    if b1 - b0 <= STREAM_BLOCKS && !EMULATE {
        for b in b0..b1 {
            // SAFETY: tiles configured; AVX2 (the caller's contract); `rows` is n <= P * 16
            // whole rows, the block 16 tokens of k = rb * 4.
            unsafe { panel_dot_streamed::<P>(rows, rb, block(b), &mut c) };
            finish(b, &c);
        }
        return;
    }
    PANEL.with_borrow_mut(|buf| {
        // Tiles of rows past `n` keep whatever an earlier task left: valid codes whose sums
        // are dropped.
        buf.resize(P * TILE_ROWS * k, 0);
        // SAFETY: AVX2 (the caller's contract); `rows` is n <= P * 16 whole rows and the
        // buffer P * 16 rows of k = rb * 4.
        unsafe { unpack_rows::<P>(rows, rb, buf) };
        for b in b0..b1 {
            if EMULATE {
                panel_dot_emulated::<P>(buf, k, block(b), &mut c);
            } else {
                // SAFETY: tiles configured above; the panel is P * 16 rows of k bytes, the
                // block 16 tokens of k.
                unsafe { panel_dot::<P>(buf, k, block(b), &mut c) };
            }
            finish(b, &c);
        }
    });
}

/// What [`panel_dot`] computes, from the definition of `tdpbusd` over the packed layout
/// ([`pack_tokens`]): unsigned code times signed activation, summed over `k`.
fn panel_dot_emulated<const P: usize>(
    panel: &[u8],
    k: usize,
    packed: &[u8],
    c: &mut [[[i32; TILE_TOKENS]; TILE_ROWS]; P],
) {
    for (p, cp) in c.iter_mut().enumerate() {
        for (m, row) in cp.iter_mut().enumerate() {
            for (n, sum) in row.iter_mut().enumerate() {
                *sum = (0..k)
                    .map(|x| {
                        let (s, c) = (x / TILE_K, x % TILE_K);
                        let code = panel[(s * P + p) * TILE_BYTES + m * TILE_K + c];
                        let q = packed[s * STEP_BYTES + c / 4 * 64 + n * 4 + c % 4] as i8;
                        i32::from(code) * i32::from(q)
                    })
                    .sum();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver (packing, panels of 32 and 64 rows, token groups, ragged edges) with emulated
    /// tile products against the element-wise reference: CI machines have no AMX, and on those
    /// that do `tests/ternary.rs` runs the real instructions through `Isa::Amx`.
    #[test]
    fn driver_with_emulated_tiles_matches_reference() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pool = crate::pool::ThreadPool::new(3).unwrap();
        for (rows, cols, tokens) in [(5, 128, 8), (70, 300, 17), (33, 256, 140), (200, 128, 16)] {
            let codes: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
            let ws = [
                TernaryMatrix::from_codes(rows, cols, &codes, 1.0).unwrap(),
                TernaryMatrix::from_codes(rows / 2 + 1, cols, &codes[..(rows / 2 + 1) * cols], 1.0)
                    .unwrap(),
            ];
            let x: Vec<f32> = (0..tokens * cols)
                .map(|_| (next() % 2001) as f32 - 1000.0)
                .collect();
            let mut a = QuantizedActivations::default();
            a.quantize_with(crate::Isa::Scalar, &x, tokens, cols);
            for threads in [1, 3] {
                let got: Vec<Vec<std::sync::atomic::AtomicI64>> = ws
                    .iter()
                    .map(|w| (0..tokens * w.rows()).map(|_| i64::MIN.into()).collect())
                    .collect();
                let store = |m: usize, t: usize, r: usize, raw: &mut [i32]| {
                    let rows = ws[m].rows();
                    for (i, &v) in raw.iter().enumerate() {
                        let old = got[m][t * rows + r + i].swap(
                            i64::from(v - a.sums()[t]),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        assert_eq!(old, i64::MIN, "output stored twice");
                    }
                };
                let refs: Vec<&TernaryMatrix> = ws.iter().collect();
                // SAFETY: AVX2 checked above; emulated tiles need no AMX; shapes agree, k > 0.
                let run = || unsafe { ternary_matmul_on::<true>(&refs, &a, &store) };
                if threads == 1 {
                    run()
                } else {
                    pool.install(run)
                }
                for (w, got) in ws.iter().zip(&got) {
                    let mut want = vec![0i32; tokens * w.rows()];
                    crate::ternary_matmul_i32_scalar(w, &a, &mut want);
                    let got: Vec<i64> = got
                        .iter()
                        .map(|v| v.load(std::sync::atomic::Ordering::Relaxed))
                        .collect();
                    let want: Vec<i64> = want.into_iter().map(i64::from).collect();
                    assert_eq!(
                        got,
                        want,
                        "rows={} cols={cols} tokens={tokens} threads={threads}",
                        w.rows()
                    );
                }
            }
        }
    }
}
