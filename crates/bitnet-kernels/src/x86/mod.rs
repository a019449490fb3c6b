//! x86-64 kernels: [`avx2::Avx2`] (AVX2 + FMA + F16C: ternary, dense, Q8_0 / Q6_K, activation
//! quantization, vector ops) and [`avx512::Avx512Vnni`] (AVX-512 VNNI ternary and the dense
//! 4 x 4 tile; everything else it takes from AVX2), [`amx`] (batched ternary matmuls on AMX
//! tiles), [`avx512_kv`] (the attention's f16 cache reads for a group of query heads),
//! [`q8_0_pairs`] (the batched Q8_0 head on AVX-512 VNNI), [`amx_q8_0`] (the Q8_0 head
//! on AMX tiles, opt-in), plus the software prefetch distances they use.

pub(crate) mod amx;
pub(crate) mod amx_q8_0;
pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod avx512_kv;
pub(crate) mod q8_0_pairs;

/// How far ahead the decode kernels request weights, for rows read once per token. Hardware
/// prefetchers alone leave bandwidth unused on the machines measured. The first measurements
/// (tg32, 2B4T, interleaved runs; `{ternary row tiles ahead, dense bytes ahead}`, before the
/// ternary distance became [`prefetch::ternary_ahead`]'s rule):
/// on the lent 16-core Xeon, 2 threads F16 head `{1, 1 KiB}` 15.9 t/s, `{2, 2 KiB}` 17.9,
/// `{2, 4 KiB}` 17.7, `{3, 8 KiB}` 18.6; 16 threads F16 66.8 / 74.8 / 73.3 / 72.3 and Q8_0
/// head 77.5 / 80.5 / 91.9 / 86.1; on a 2-vCPU Zen 4 VM, best of three, 25.5 / 27.8 / 28.4
/// (`{3, 4 KiB}` 23.2). Past a DRAM latency's worth of streaming (~2-4 KiB per core) the gain
/// stops and further distances only touch lines of rows another thread owns.
pub(crate) mod prefetch {
    /// Bytes ahead of a ternary decode tile (`R` rows read block by block, `tile` bytes in all)
    /// at which the kernels request the rows of a later tile: whole tiles, at least 4 KiB.
    /// Measured with `examples/ab_decode` (2 threads, from DRAM, p25 of 250 calls): on the Zen 4
    /// VM the 6912-column rows (6.9 KiB tiles) take 150.7 us two tiles ahead and 127.4 us one
    /// tile ahead with the AVX2 kernel (168.4 / 150.0 with AVX-512, 133.4 / 117.1 at 256 bits),
    /// as the farther lines crowd the 32 KiB L1; the 2560-column rows (2.5 KiB tiles) want two.
    /// On the Xeon the two rules measure the same (1, 4 and 16 threads).
    #[inline(always)]
    pub(crate) fn ternary_ahead(tile: usize) -> usize {
        tile * 4096usize.div_ceil(tile.max(1))
    }

    /// The decode kernels' request at block `b` of a tile of `R` rows of `nb` blocks starting at
    /// `tile_start`: the next `R * 32` bytes of the tile [`ternary_ahead`] bytes on, so that tile
    /// is swept once, as one sequential stream, while this one is multiplied (the hardware
    /// prefetchers alone fall behind on `R` interleaved row streams: 2560x2560 from DRAM on one
    /// Xeon thread, 195 -> 151 us).
    #[inline(always)]
    pub(crate) fn ternary_tile_block<const R: usize>(tile_start: *const u8, nb: usize, b: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let ahead = tile_start.wrapping_add(ternary_ahead(R * nb * 32) + b * R * 32);
        for l in (0..R * 32).step_by(64) {
            // SAFETY: a prefetch never faults, whatever the address (SSE is baseline x86-64).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l) as *const i8) };
        }
    }

    /// Bytes ahead within a dense (LM head) row.
    pub(crate) const DENSE_BYTES: usize = 4096;
}
