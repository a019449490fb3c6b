// Ternary (BitNet b1.58) kernels: int8 activation quantization and ternary x int8 matmul.
// Compiled at run time by NVRTC after common.cuh (see compile.rs); plain CUDA C++, no headers.
//
// Weights stay in bitnet.cpp's I2_S row layout, which is already right for 32-bit loads: a
// 128-weight block is 32 bytes, element 32*g + i at byte i, bits 7-2g..6-2g, code = t + 1.
// The 32-bit word at bytes i..i+3 of a block (i % 4 == 0) therefore holds, for each group g,
// the codes of the four consecutive elements 32g+i..32g+i+3, one per byte after
// (word >> (6 - 2g)) & 0x03030303 -- exactly a dp4a operand against the four int8
// activations at the same positions. sum(code * q) - sum(q) is the exact sum(t * q).

// Per-token absmax int8 quantization, bit-identical to
// bitnet_quantization::quantize_activation_row: s = 127 / max(amax, 1e-5),
// q = clamp(round_half_even(x * s), -128, 127); NaN inputs are ignored by the absmax
// (fmaxf drops NaN) and map to -128 (fmaxf(NaN, -128) = -128), as on the CPU.
// One block per token; q rows are `stride` bytes (a multiple of 128), zero past `cols`.
extern "C" __global__ void quantize_rows(const float* __restrict__ x, int cols, int stride,
                                         i8* __restrict__ q, float* __restrict__ scales,
                                         int* __restrict__ sums) {
    const int t = blockIdx.x;
    const float* xt = x + (size_t)t * cols;
    i8* qt = q + (size_t)t * stride;
    __shared__ float red_f[32];
    __shared__ int red_i[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;

    float amax = 0.0f;
    for (int k = threadIdx.x; k < cols; k += blockDim.x) amax = fmaxf(amax, fabsf(xt[k]));
    amax = warp_max(amax);
    if (lane == 0) red_f[warp] = amax;
    __syncthreads();
    if (warp == 0) {
        amax = lane < nwarps ? red_f[lane] : 0.0f;
        amax = warp_max(amax);
        if (lane == 0) red_f[0] = amax;
    }
    __syncthreads();
    const float s = __fdiv_rn(127.0f, fmaxf(red_f[0], 1e-5f));

    int sum = 0;
    for (int k = threadIdx.x; k < stride; k += blockDim.x) {
        int v = 0;
        if (k < cols) v = (int)fminf(fmaxf(rintf(__fmul_rn(xt[k], s)), -128.0f), 127.0f);
        qt[k] = (i8)v;
        sum += v;
    }
    sum = warp_sum_i(sum);
    if (lane == 0) red_i[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        int total = 0;
        for (int w = 0; w < nwarps; ++w) total += red_i[w];
        scales[t] = s;
        sums[t] = total;
    }
}

// out[t * rows + r] = (float)(sum_k t_rk * q_tk) / scales[t] * wscale[r], for T tokens at once
// (the weights are read once for all of them); with `accumulate` the result is added to `out`
// (the residual add, one f32 addition as on the CPU). A scale per row lets several matrices that
// multiply the same activations (q/k/v, gate/up) run as one, each row with its tensor's scale. One warp per row, 16 bytes (64 weights) per
// lane per step; WARPS rows per block. Activations are read through the read-only cache:
// every warp of an SM reads the same ones.
template <int T>
__device__ __forceinline__ void ternary_rows(const unsigned char* __restrict__ w, int rows,
                                             int row_bytes, const i8* __restrict__ q,
                                             int stride, const int* __restrict__ sums,
                                             const float* __restrict__ scales, const float* __restrict__ wscale,
                                             float* __restrict__ out, int accumulate) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const uint4* wr = (const uint4*)(w + (size_t)r * row_bytes);
    const int chunks = row_bytes >> 4;  // 16-byte chunks; a block (32 bytes) is two
    int acc[T];
#pragma unroll
    for (int t = 0; t < T; ++t) acc[t] = 0;
    for (int c = lane; c < chunks; c += 32) {
        const uint4 wv = __ldg(wr + c);
        // chunk c covers bytes i0..i0+15 of block c/2, i0 = 16 * (c & 1)
        const int base = (c >> 1) * 128 + ((c & 1) << 4);
        const u32 words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            // activations 32g + i0 .. 32g + i0 + 15 of the block: one 16-byte load per token
            const int shift = 6 - 2 * g;
#pragma unroll
            for (int t = 0; t < T; ++t) {
                const int4 qv = __ldg((const int4*)(q + (size_t)t * stride + base + 32 * g));
                acc[t] = __dp4a((int)((words[0] >> shift) & 0x03030303u), qv.x, acc[t]);
                acc[t] = __dp4a((int)((words[1] >> shift) & 0x03030303u), qv.y, acc[t]);
                acc[t] = __dp4a((int)((words[2] >> shift) & 0x03030303u), qv.z, acc[t]);
                acc[t] = __dp4a((int)((words[3] >> shift) & 0x03030303u), qv.w, acc[t]);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < T; ++t) {
        int v = acc[t];
        v = warp_sum_i(v);
        if (lane == 0) {
            const int exact = v - sums[t];
            const float y = __fmul_rn(__fdiv_rn((float)exact, scales[t]), wscale[r]);
            float* o = out + (size_t)t * rows + r;
            *o = accumulate ? __fadd_rn(*o, y) : y;
        }
    }
}

// The same with one 32-bit word (16 weights) per lane per step: full warps on rows whose
// 16-byte chunk count is not a multiple of 32 (2560 columns: 40 chunks, 160 words).
template <int T>
__device__ __forceinline__ void ternary_rows_w32(const unsigned char* __restrict__ w, int rows,
                                                 int row_bytes, const i8* __restrict__ q,
                                                 int stride, const int* __restrict__ sums,
                                                 const float* __restrict__ scales, const float* __restrict__ wscale,
                                                 float* __restrict__ out, int accumulate) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const u32* wr = (const u32*)(w + (size_t)r * row_bytes);
    const int words = row_bytes >> 2;
    int acc[T];
#pragma unroll
    for (int t = 0; t < T; ++t) acc[t] = 0;
#pragma unroll 4
    for (int c = lane; c < words; c += 32) {
        const u32 wv = __ldg(wr + c);
        const int base = (c >> 3) * 128 + ((c & 7) << 2);
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const int codes = (int)((wv >> (6 - 2 * g)) & 0x03030303u);
#pragma unroll
            for (int t = 0; t < T; ++t)
                acc[t] = __dp4a(codes, __ldg((const int*)(q + (size_t)t * stride + base + 32 * g)),
                                acc[t]);
        }
    }
#pragma unroll
    for (int t = 0; t < T; ++t) {
        int v = acc[t];
        v = warp_sum_i(v);
        if (lane == 0) {
            const int exact = v - sums[t];
            const float y = __fmul_rn(__fdiv_rn((float)exact, scales[t]), wscale[r]);
            float* o = out + (size_t)t * rows + r;
            *o = accumulate ? __fadd_rn(*o, y) : y;
        }
    }
}

#define TERNARY_KERNEL(T)                                                                    \
    extern "C" __global__ void ternary_matmul_t##T(                                          \
        const unsigned char* __restrict__ w, int rows, int row_bytes, const i8* __restrict__ q, \
        int stride, const int* __restrict__ sums, const float* __restrict__ scales,          \
        const float* wscale, float* __restrict__ out, int accumulate) {                      \
        ternary_rows<T>(w, rows, row_bytes, q, stride, sums, scales, wscale, out, accumulate); \
    }                                                                                        \
    extern "C" __global__ void ternary_matmul_w32_t##T(                                      \
        const unsigned char* __restrict__ w, int rows, int row_bytes, const i8* __restrict__ q, \
        int stride, const int* __restrict__ sums, const float* __restrict__ scales,          \
        const float* wscale, float* __restrict__ out, int accumulate) {                      \
        ternary_rows_w32<T>(w, rows, row_bytes, q, stride, sums, scales, wscale, out, accumulate); \
    }
TERNARY_KERNEL(1)
TERNARY_KERNEL(2)
TERNARY_KERNEL(4)
TERNARY_KERNEL(8)

// ---------------------------------------------------------------------------------------------
// Many tokens: int8 tensor cores (mma.sync m16n8k32, s8 x s8 -> exact s32), from 2 tokens on
// (ternary.rs picks by token count). The dp4a kernels above are compute-bound at ~5 TMAC/s from
// 8 tokens on; an SM's tensor cores do far more int8 MACs than its dp4a lanes.
//
// A (M x K, rows of weights) is the I2_S codes 0..2 as they are, B (K x N) the int8
// activations; sum(code * q) - sum(q) is the exact sum(t * q), so the epilogue is the dp4a
// kernels' and the result bit-identical. The mma sums over its 32 k slots in any order, so A
// and B only need the same assignment of elements to slots, and one is chosen that needs no
// unpacking beyond shift and mask: in k step g of an I2_S block (elements 32g..32g+31), lane
// (gid, tig) puts in its A registers a0/a2 (row gid) and a1/a3 (row gid + 8) the codes of
// elements 32g + 8tig + 0..3 and 32g + 8tig + 4..7, which are bytes 0..3 of words 2tig and
// 2tig+1 of the block after >> (6 - 2g) & 0x03030303, and in its B registers b0/b1 the
// activations at the same positions: one 8-byte shared load. The packed weights go to shared
// memory as they are (32 bytes per row and block), so each 8-byte A load serves all four k
// steps of a block.
//
// Tiles: BM weight rows x BN tokens per block, WGM x WGN warps (each a (BM/WGM) x (BN/WGN)
// tile of m16n8 fragments) times KSPLIT (warps that share a fragment tile and split each
// block's four k steps, their partial sums added at the end), K in steps of one I2_S block
// (128 weights), STAGES deep cp.async pipeline. Rows and tokens past the edges are clamped on
// load and not stored.

// Bytes per token row of an activation tile: 128 + 32, so that the 8-byte fragment loads of a
// half warp (4 tokens x 4 lanes) fall on 32 distinct banks.
#define MMA_BSTRIDE 160

// The epilogue of every ternary kernel: the exact integer dot less the activations' sum (the
// codes are t + 1), scaled as on the CPU, stored or added to what `out` holds.
__device__ __forceinline__ void ternary_store(float* __restrict__ out, int rows, int r, int t,
                                              int acc, const int* __restrict__ sums,
                                              const float* __restrict__ scales,
                                              const float* __restrict__ wscale, int accumulate) {
    const float y = __fmul_rn(__fdiv_rn((float)(acc - sums[t]), scales[t]), wscale[r]);
    float* o = out + (size_t)t * rows + r;
    *o = accumulate ? __fadd_rn(*o, y) : y;
}

#if __CUDA_ARCH__ >= 900
// K split across the CS blocks of a thread-block cluster (Hopper), for batches whose row x
// token tiles are too few to keep every SM busy: a 64-sequence decode step's o and down are
// 40 tiles of 64 x 64 for 132 SMs, and a block, one or two warps per scheduler, spends most
// cycles waiting on its own instructions' latencies. Each block of the cluster runs a 1/CS
// slice of K, leaves its exact int32 partial tile in its shared memory, and after a cluster
// barrier block c adds slice c of every block's tile (ld.shared::cluster) and runs the
// epilogue for it. Integer sums: the unsplit kernel's bits, whatever the split.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n"
                 "barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// Word `i` of the int array at `base` (shared memory) in the cluster's block `rank`.
__device__ __forceinline__ int ld_cluster(const int* base, int i, u32 rank) {
    u32 remote;
    asm("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_u32(base + i)), "r"(rank));
    int v;
    asm volatile("ld.shared::cluster.s32 %0, [%1];" : "=r"(v) : "r"(remote) : "memory");
    return v;
}
#endif

template <int BM, int BN, int WGM, int WGN, int KSPLIT, int STAGES, int CS>
__device__ __forceinline__ void ternary_mma(const unsigned char* __restrict__ w, int rows,
                                            int row_bytes, const i8* __restrict__ q, int tokens,
                                            int stride, const int* __restrict__ sums,
                                            const float* __restrict__ scales,
                                            const float* __restrict__ wscale,
                                            float* __restrict__ out, int accumulate) {
    static_assert(CS == 1 || KSPLIT == 1, "a K split across blocks, or across warps");
    constexpr int THREADS = 32 * WGM * WGN * KSPLIT;
    constexpr int WM = BM / WGM, WN = BN / WGN;
    constexpr int MT = WM / 16, NT = WN / 8;
    constexpr int A_BYTES = BM * 32, B_BYTES = BN * MMA_BSTRIDE, STAGE = A_BYTES + B_BYTES;
    __shared__ __align__(16) unsigned char smem[STAGES * STAGE];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int wmn = warp % (WGM * WGN), ks = warp / (WGM * WGN);
    const int wm = wmn % WGM, wn = wmn / WGM;
    const int r0 = blockIdx.x * BM, t0 = blockIdx.y * BN;
    // This block's share of the I2_S blocks along K (all of them unless K is split across the
    // blocks of a cluster: CS > 1, grid z = CS, see cluster_sync).
    // Slices of floor or ceil(K / CS) blocks: none empty where K has CS blocks or more.
    const int kfirst = (int)blockIdx.z * (row_bytes >> 5) / CS;
    const int kblocks = ((int)blockIdx.z + 1) * (row_bytes >> 5) / CS - kfirst;
    w += kfirst * 32;
    q += kfirst * 128;

    // Each thread's 16-byte chunks of a stage, their sources found once: a loop from tid in
    // steps of THREADS, rows and tokens clamped inside it, cost ~300 instructions a warp per
    // stage (10 per mma) against ~120 for the mma work itself.
    constexpr int A_CHUNKS = BM * 2, B_CHUNKS = BN * 8;
    constexpr int A_ITERS = (A_CHUNKS + THREADS - 1) / THREADS;
    constexpr int B_ITERS = (B_CHUNKS + THREADS - 1) / THREADS;
    const unsigned char* a_src[A_ITERS];
    const i8* b_src[B_ITERS];
#pragma unroll
    for (int i = 0; i < A_ITERS; ++i) {
        const int c = tid + i * THREADS, r = min(r0 + (c >> 1), rows - 1);
        a_src[i] = w + (size_t)r * row_bytes + (c & 1) * 16;
    }
#pragma unroll
    for (int i = 0; i < B_ITERS; ++i) {
        const int c = tid + i * THREADS, t = min(t0 + (c >> 3), tokens - 1);
        b_src[i] = q + (size_t)t * stride + (c & 7) * 16;
    }
    auto load = [&](int stage, int kb) {
        unsigned char* as = smem + stage * STAGE;
        unsigned char* bs = as + A_BYTES;
#pragma unroll
        for (int i = 0; i < A_ITERS; ++i) {
            const int c = tid + i * THREADS;
            if (A_CHUNKS % THREADS == 0 || c < A_CHUNKS) cp_async16(as + c * 16, a_src[i] + kb * 32);
        }
#pragma unroll
        for (int i = 0; i < B_ITERS; ++i) {
            const int c = tid + i * THREADS;
            if (B_CHUNKS % THREADS == 0 || c < B_CHUNKS)
                cp_async16(bs + (c >> 3) * MMA_BSTRIDE + (c & 7) * 16, b_src[i] + kb * 128);
        }
    };

    int acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int h = 0; h < 4; ++h) acc[i][j][h] = 0;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < kblocks) load(s, s);
        cp_async_commit();
    }
    int stage = 0;
    for (int kb = 0; kb < kblocks; ++kb) {
        // Block kb has landed (at most STAGES - 2 younger groups pending), and every warp is
        // past block kb - 1, whose stage the next load overwrites.
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = kb + STAGES - 1;
        if (next < kblocks) load(stage == 0 ? STAGES - 1 : stage - 1, next);
        cp_async_commit();
        const unsigned char* as = smem + stage * STAGE;
        stage = stage == STAGES - 1 ? 0 : stage + 1;
        const unsigned char* bs = as + A_BYTES;
        uint2 alo[MT], ahi[MT];
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            const int m = wm * WM + 16 * i + gid;
            alo[i] = *(const uint2*)(as + m * 32 + 8 * tig);
            ahi[i] = *(const uint2*)(as + (m + 8) * 32 + 8 * tig);
        }
#pragma unroll
        for (int gg = 0; gg < 4 / KSPLIT; ++gg) {
            const int g = ks * (4 / KSPLIT) + gg;
            const int shift = 6 - 2 * g;
            uint2 b[NT];
#pragma unroll
            for (int j = 0; j < NT; ++j)
                b[j] = *(const uint2*)(bs + (wn * WN + 8 * j + gid) * MMA_BSTRIDE + 32 * g +
                                       8 * tig);
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const u32 a0 = (alo[i].x >> shift) & 0x03030303u;
                const u32 a1 = (ahi[i].x >> shift) & 0x03030303u;
                const u32 a2 = (alo[i].y >> shift) & 0x03030303u;
                const u32 a3 = (ahi[i].y >> shift) & 0x03030303u;
#pragma unroll
                for (int j = 0; j < NT; ++j) mma_s8(acc[i][j], a0, a1, a2, a3, b[j].x, b[j].y);
            }
        }
    }
    cp_async_wait<0>();
    if (KSPLIT > 1) {
        // Warps ks > 0 ran k steps of the same tile: their exact partial sums go through the
        // (now idle) pipeline buffers to warp ks = 0, which adds them in a fixed order.
        static_assert((KSPLIT - 1) * BM * BN * 4 <= STAGES * STAGE, "reduction buffer");
        int* red = (int*)smem;
        constexpr int PER_WARP = MT * NT * 4 * 32;
        __syncthreads();
        if (ks > 0) {
            int* mine = red + ((ks - 1) * (WGM * WGN) + wmn) * PER_WARP + lane;
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j)
#pragma unroll
                    for (int h = 0; h < 4; ++h) mine[((i * NT + j) * 4 + h) * 32] = acc[i][j][h];
        }
        __syncthreads();
        if (ks > 0) return;
        for (int k = 1; k < KSPLIT; ++k) {
            const int* theirs = red + ((k - 1) * (WGM * WGN) + wmn) * PER_WARP + lane;
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j)
#pragma unroll
                    for (int h = 0; h < 4; ++h) acc[i][j][h] += theirs[((i * NT + j) * 4 + h) * 32];
        }
    }

#if __CUDA_ARCH__ < 900
    static_assert(CS == 1, "a K split across a cluster needs sm_90");
#endif
    if constexpr (CS > 1) {
#if __CUDA_ARCH__ >= 900
        // Every warp is past its last shared-memory read (the wait above, then this barrier),
        // so the pipeline buffers take the partial tile: [token][row] of the block's tile.
        static_assert(BM * BN * 4 <= STAGES * STAGE, "partial tile");
        int* tile = (int*)smem;
        __syncthreads();
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int h = 0; h < 4; ++h)
                    tile[(wn * WN + 8 * j + 2 * tig + (h & 1)) * BM + wm * WM + 16 * i + gid +
                         8 * (h >> 1)] = acc[i][j][h];
        cluster_sync();
        constexpr int PART = BM * BN / CS;
        // blockIdx.z is the block's rank in its cluster: the grid is one cluster deep in z.
        for (int e = blockIdx.z * PART + tid; e < (int)(blockIdx.z + 1) * PART; e += THREADS) {
            const int r = r0 + e % BM, t = t0 + e / BM;
            int v = 0;
#pragma unroll
            for (int c = 0; c < CS; ++c) v += ld_cluster(tile, e, c);
            if (r < rows && t < tokens)
                ternary_store(out, rows, r, t, v, sums, scales, wscale, accumulate);
        }
        // No block may leave while another still reads its shared memory.
        cluster_sync();
#endif
    } else {
        // Accumulator h of fragment (i, j): row gid (+8 for h >= 2), token 2 tig (+1 for odd
        // h).
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int h = 0; h < 4; ++h) {
                    const int r = r0 + wm * WM + 16 * i + gid + 8 * (h >> 1);
                    const int t = t0 + wn * WN + 8 * j + 2 * tig + (h & 1);
                    if (r < rows && t < tokens)
                        ternary_store(out, rows, r, t, acc[i][j][h], sums, scales, wscale,
                                      accumulate);
                }
    }
}

// Grid (ceil(rows / BM), ceil(tokens / BN), CS), 32 * WGM * WGN * KSPLIT threads; CS > 1: a
// cluster of CS blocks along z splits K (Hopper on).
#define TERNARY_MMA_KERNEL(NAME, BM, BN, WGM, WGN, KSPLIT, STAGES, CS, ATTR)                   \
    extern "C" __global__ void __launch_bounds__(32 * WGM * WGN * KSPLIT) ATTR NAME(           \
        const unsigned char* __restrict__ w, int rows, int row_bytes, const i8* __restrict__ q, \
        int tokens, int stride, const int* __restrict__ sums, const float* __restrict__ scales, \
        const float* __restrict__ wscale, float* __restrict__ out, int accumulate) {           \
        ternary_mma<BM, BN, WGM, WGN, KSPLIT, STAGES, CS>(w, rows, row_bytes, q, tokens, stride, \
                                                          sums, scales, wscale, out,           \
                                                          accumulate);                         \
    }
TERNARY_MMA_KERNEL(ternary_mma_64x32, 64, 32, 2, 2, 1, 4, 1, )
TERNARY_MMA_KERNEL(ternary_mma_64x64, 64, 64, 2, 2, 1, 3, 1, )
TERNARY_MMA_KERNEL(ternary_mma_64x64k2, 64, 64, 2, 2, 2, 3, 1, )
TERNARY_MMA_KERNEL(ternary_mma_128x16, 128, 16, 4, 1, 1, 4, 1, )
#if __CUDA_ARCH__ >= 900
#define TERNARY_MMA_SPLITS(NAME, BM, BN, WGM, WGN, STAGES)                                     \
    TERNARY_MMA_KERNEL(NAME##_s2, BM, BN, WGM, WGN, 1, STAGES, 2, __cluster_dims__(1, 1, 2))   \
    TERNARY_MMA_KERNEL(NAME##_s4, BM, BN, WGM, WGN, 1, STAGES, 4, __cluster_dims__(1, 1, 4))   \
    TERNARY_MMA_KERNEL(NAME##_s8, BM, BN, WGM, WGN, 1, STAGES, 8, __cluster_dims__(1, 1, 8))
TERNARY_MMA_SPLITS(ternary_mma_64x32, 64, 32, 2, 2, 4)
TERNARY_MMA_SPLITS(ternary_mma_64x64, 64, 64, 2, 2, 3)
TERNARY_MMA_SPLITS(ternary_mma_128x16, 128, 16, 4, 1, 4)
#endif

// Few tokens (a batch of decode steps): the tiled kernel above has a block per 64 rows, too
// few blocks and too few weight bytes in flight per block to approach the memory bandwidth
// (8 tokens: 0.17 TB/s). Here a block is one m16 tile of rows x 8 * NT tokens, its 4 warps
// split the row's I2_S blocks (warp ks takes blocks ks, ks + 4, ...), and each warp loads the
// A fragments of SKINNY_PF blocks straight from global memory into registers before its first
// mma; B fragments (the activations, shared by every block) come through L1. The 4 warps'
// exact partial sums are added through shared memory. Fragment layout as ternary_mma.
#define SKINNY_SPLIT 4
#define SKINNY_PF 8

template <int NT>
__device__ __forceinline__ void ternary_mma_skinny(const unsigned char* __restrict__ w, int rows,
                                                   int row_bytes, const i8* __restrict__ q,
                                                   int tokens, int stride,
                                                   const int* __restrict__ sums,
                                                   const float* __restrict__ scales,
                                                   const float* __restrict__ wscale,
                                                   float* __restrict__ out, int accumulate) {
    __shared__ int red[SKINNY_SPLIT - 1][NT * 4][32];
    const int lane = threadIdx.x & 31, ks = threadIdx.x >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int r0 = blockIdx.x * 16, t0 = blockIdx.y * (8 * NT);
    const int kblocks = row_bytes >> 5;
    const int ra = r0 + gid < rows ? r0 + gid : rows - 1;
    const int rb = r0 + gid + 8 < rows ? r0 + gid + 8 : rows - 1;
    const unsigned char* wa = w + (size_t)ra * row_bytes + 8 * tig;
    const unsigned char* wb = w + (size_t)rb * row_bytes + 8 * tig;
    const i8* qt[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const int t = t0 + 8 * j + gid < tokens ? t0 + 8 * j + gid : tokens - 1;
        qt[j] = q + (size_t)t * stride + 8 * tig;
    }
    int acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int h = 0; h < 4; ++h) acc[j][h] = 0;
    for (int kb0 = ks; kb0 < kblocks; kb0 += SKINNY_SPLIT * SKINNY_PF) {
        uint2 a[SKINNY_PF][2];
#pragma unroll
        for (int p = 0; p < SKINNY_PF; ++p) {
            const int kb = kb0 + SKINNY_SPLIT * p;
            if (kb < kblocks) {
                a[p][0] = __ldg((const uint2*)(wa + kb * 32));
                a[p][1] = __ldg((const uint2*)(wb + kb * 32));
            }
        }
#pragma unroll
        for (int p = 0; p < SKINNY_PF; ++p) {
            const int kb = kb0 + SKINNY_SPLIT * p;
            if (kb < kblocks) {
#pragma unroll
                for (int g = 0; g < 4; ++g) {
                    const int shift = 6 - 2 * g;
                    const u32 a0 = (a[p][0].x >> shift) & 0x03030303u;
                    const u32 a1 = (a[p][1].x >> shift) & 0x03030303u;
                    const u32 a2 = (a[p][0].y >> shift) & 0x03030303u;
                    const u32 a3 = (a[p][1].y >> shift) & 0x03030303u;
#pragma unroll
                    for (int j = 0; j < NT; ++j) {
                        const uint2 b = __ldg((const uint2*)(qt[j] + kb * 128 + 32 * g));
                        mma_s8(acc[j], a0, a1, a2, a3, b.x, b.y);
                    }
                }
            }
        }
    }
    if (ks > 0) {
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int h = 0; h < 4; ++h) red[ks - 1][j * 4 + h][lane] = acc[j][h];
    }
    __syncthreads();
    if (ks > 0) return;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int h = 0; h < 4; ++h) {
            int v = acc[j][h];
#pragma unroll
            for (int k = 0; k < SKINNY_SPLIT - 1; ++k) v += red[k][j * 4 + h][lane];
            const int r = r0 + gid + 8 * (h >> 1);
            const int t = t0 + 8 * j + 2 * tig + (h & 1);
            if (r < rows && t < tokens) {
                const float y = __fmul_rn(__fdiv_rn((float)(v - sums[t]), scales[t]), wscale[r]);
                float* o = out + (size_t)t * rows + r;
                *o = accumulate ? __fadd_rn(*o, y) : y;
            }
        }
}

// Grid (ceil(rows / 16), ceil(tokens / (8 * NT))), 32 * SKINNY_SPLIT threads.
#define TERNARY_SKINNY_KERNEL(NT)                                                              \
    extern "C" __global__ void __launch_bounds__(32 * SKINNY_SPLIT) ternary_mma_n##NT(          \
        const unsigned char* __restrict__ w, int rows, int row_bytes, const i8* __restrict__ q, \
        int tokens, int stride, const int* __restrict__ sums, const float* __restrict__ scales, \
        const float* __restrict__ wscale, float* __restrict__ out, int accumulate) {           \
        ternary_mma_skinny<NT>(w, rows, row_bytes, q, tokens, stride, sums, scales, wscale,    \
                               out, accumulate);                                               \
    }
TERNARY_SKINNY_KERNEL(1)
TERNARY_SKINNY_KERNEL(2)
TERNARY_SKINNY_KERNEL(4)
