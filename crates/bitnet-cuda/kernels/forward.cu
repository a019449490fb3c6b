// The rest of the BitNet b1.58 forward pass (the ternary matmuls are in ternary.cu):
// embedding lookup, RMSNorm fused with the int8 quantization of its output, RoPE fused with the
// f16 KV cache write, causal GQA attention over that cache, the dense / Q8_0 / Q6_K LM head and
// a greedy argmax. Compiled at run time by NVRTC after common.cuh (see compile.rs); plain CUDA
// C++, no headers.
//
// The KV cache is paged: per layer `[block][row in block][kv_head * head_dim]`, KV_BLOCK
// positions a block; position p of a sequence lives in row p % KV_BLOCK of block
// table[p / KV_BLOCK] of its block table (bitnet_backend::SeqChunk). Token ids, positions, cache
// rows and block tables come from device memory (one packed buffer per batch), never from
// launch arguments, so that a captured decode step can be replayed after the next step's inputs
// are copied in.
//
// Float parts follow the CPU code's formulas with explicit round-to-nearest operations where
// the CPU rounds each step (no fused multiply-add where Rust has none); sums over a row
// (RMSNorm's sum of squares, attention dots, the head's dots) are summed in a different order
// than on the CPU, so they agree to float rounding, not bit for bit.

// Positions per KV cache block (bitnet_backend::KV_BLOCK).
#define KV_BLOCK 32

// The cache row of position p of a sequence whose block table is `bt`.
__device__ __forceinline__ size_t cache_row(const int* bt, int p) {
    return (size_t)bt[p / KV_BLOCK] * KV_BLOCK + (p % KV_BLOCK);
}

// No headers under NVRTC, so no INFINITY: -inf by its bits.
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest even, as `half::f16::from_f32` on the CPU.
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// A barrier over the first `nthr` threads of the block (all of it: __syncthreads; fewer: named
// barrier 1, so that a group of warps can run attention inside a larger block while the other
// warps wait elsewhere).
__device__ __forceinline__ void group_sync(int nthr) {
    if (nthr == (int)blockDim.x) {
        __syncthreads();
    } else {
        asm volatile("bar.sync 1, %0;" ::"r"(nthr) : "memory");
    }
}

// Reductions over the first `nthr` threads (a multiple of 32); each of them gets the result
// (each warp reduces the same partials in the same order, so the bits depend on nthr alone).
// `red` is 32 shared slots. These take one barrier: the caller vouches that every thread of the
// group has passed a barrier since the slots were last read. group_sum / group_max add that
// leading barrier, for callers that reuse `red` at once; the shuffles before it touch registers
// only, so the bits are the same.
__device__ float group_sum_1(float v, float* red, int nthr) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (nthr + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    group_sync(nthr);
    return warp_sum(lane < nw ? red[lane] : 0.0f);
}

__device__ float group_max_1(float v, float* red, int nthr) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (nthr + 31) >> 5;
    v = warp_max(v);
    if (lane == 0) red[warp] = v;
    group_sync(nthr);
    return warp_max(lane < nw ? red[lane] : NEG_INF);
}

__device__ int block_sum_i_1(int v, int* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum_i(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return warp_sum_i(lane < nw ? red[lane] : 0);
}

__device__ float group_sum(float v, float* red, int nthr) {
    group_sync(nthr);
    return group_sum_1(v, red, nthr);
}

__device__ float group_max(float v, float* red, int nthr) {
    group_sync(nthr);
    return group_max_1(v, red, nthr);
}

// Block-wide reductions: the whole block as one group.
__device__ float block_sum(float v, float* red) { return group_sum(v, red, blockDim.x); }

__device__ float block_max(float v, float* red) { return group_max(v, red, blockDim.x); }

// Dense element types, as DenseType in bitnet-kernels.
#define TY_F32 0
#define TY_F16 1
#define TY_BF16 2
#define TY_Q8_0 3

// Element k of a dense row, widened as DenseMatrix::row_f32 does (exact for every type: a
// Q8_0 value is one f32 product q * d).
__device__ __forceinline__ float dense_elem(const unsigned char* __restrict__ row, int ty, int k) {
    if (ty == TY_F32) return ((const float*)row)[k];
    if (ty == TY_F16) return h2f(((const u16*)row)[k]);
    if (ty == TY_BF16) return __uint_as_float(((u32)((const u16*)row)[k]) << 16);
    const unsigned char* b = row + (k >> 5) * 34;
    const float d = h2f((u16)(b[0] | (b[1] << 8)));
    return __fmul_rn((float)(i8)b[2 + (k & 31)], d);
}

// x[t] = embedding row tokens[t]; one block per token.
extern "C" __global__ void embed_rows(const unsigned char* __restrict__ table, int ty,
                                      long long row_bytes, int cols,
                                      const u32* __restrict__ tokens, float* __restrict__ x) {
    const int t = blockIdx.x;
    const unsigned char* row = table + (size_t)tokens[t] * (size_t)row_bytes;
    for (int k = threadIdx.x; k < cols; k += blockDim.x)
        x[(size_t)t * cols + k] = dense_elem(row, ty, k);
}

// The input of a norm: x itself (mode 0), or the gated FFN activation of gate | up halves
// (mode 1: relu(g)^2 * u, mode 2: silu(g) * u), as ops::relu2_mul / silu_mul.
__device__ __forceinline__ float gate_value(float g, float u, int mode) {
    if (mode == 1) {
        const float r = fmaxf(g, 0.0f);  // NaN -> 0, as f32::max
        return __fmul_rn(__fmul_rn(r, r), u);
    }
    return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

// Four consecutive floats k .. k + 3 of p through L2 only (ld.global.cg: the persistent decode
// kernel reads rows that other blocks wrote earlier in the same launch, which a stale L1 line
// would hide); one 16-byte load when `vec` (p 16-byte aligned, n a multiple of 4), else one
// load per element below n and zeros past it.
__device__ __forceinline__ float4 ldcg4(const float* __restrict__ p, int k, int n, bool vec) {
    if (vec) return __ldcg((const float4*)(p + k));
    return make_float4(k < n ? __ldcg(p + k) : 0.0f, k + 1 < n ? __ldcg(p + k + 1) : 0.0f,
                       k + 2 < n ? __ldcg(p + k + 2) : 0.0f, k + 3 < n ? __ldcg(p + k + 3) : 0.0f);
}

// Group g (values 4g .. 4g + 3) of a norm's input: x (mode 0) or the gated gate | up halves;
// zeros past cols (gate_value(0, 0) is 0 in both modes).
__device__ __forceinline__ float4 norm_group(const float* __restrict__ xt, int cols, int mode,
                                             int g, bool vec) {
    const float4 a = ldcg4(xt, 4 * g, cols, vec);
    if (mode == 0) return a;
    const float4 b = ldcg4(xt + cols, 4 * g, cols, vec);
    return make_float4(gate_value(a.x, b.x, mode), gate_value(a.y, b.y, mode),
                       gate_value(a.z, b.z, mode), gate_value(a.w, b.w, mode));
}

// Where int8 value k of a row goes in the chunk-major order the persistent decode kernel
// reads (`chunks` 16-byte I2_S chunks a row): the 16 values that group g of chunk c multiplies
// at (g * chunks + c) * 16, so that the lanes of a warp, on consecutive chunks, read
// consecutive 16 bytes of shared memory (in row order the lanes of a warp hit the same banks).
// Values 4j .. 4j + 3 stay consecutive (norm_quant_row stores them as one word).
__device__ __forceinline__ int perm_index(int k, int chunks) {
    const int w = k & 127, r = w & 31;
    return (((w >> 5) * chunks + ((k >> 7) << 1) + (r >> 4)) << 4) + (r & 15);
}

// One row's norm and quantization (the body of norm_quant; also the prologue of the fused
// decode matmuls and of the persistent decode kernel's matrix stages, so all give the same
// bits): y = (w * v) * r, r = 1 / sqrt(mean(v^2) + eps) (ops::rms_norm computes w * (v * r):
// the same to a rounding, away from overflow and subnormals, which activations do not reach)
// over the row's `cols` input values v (see gate_value), written to `y` when that is not null,
// then, when `q` is not null, y quantized to int8 exactly as quantize_rows does with y as input
// (so the int8 values are bit-identical to the CPU quantizer applied to this y): `qstride`
// bytes (a multiple of 4, zero past cols), the scale to *s_out and the values' sum to *sum_out
// in every thread.
//
// A norm is a latency in front of every matmul of a decode step, so it takes two block
// barriers, not four. Thread i owns groups of four values g = i, i + blockDim, ... and loads
// each once (16 bytes when aligned); its sum of squares is one fmaf chain over its groups in
// that order (so the sum depends on blockDim alone: callers that must agree launch the same
// block size), and in the same pass it takes max |w * v|. Because y = (w * v) * r with r > 0
// and rounding is monotone, max |y| = max |w * v| * r exactly: the absmax needs no pass after
// r, and both reductions share one barrier. The products w * v wait in `row` (cols floats
// rounded up to 4 of shared memory, 16-byte aligned), each thread reading back only its own
// groups; the int sum's barrier then publishes the int8 row. `red` is 96 shared slots: the
// sum of squares, the max and the int sum each take 32 (the first two are read after the
// first barrier and written again only after the second; the int sum's are read after the
// second and written again only after a later call's first), so a caller may run this again
// at once - with `q`: without it the function returns after the first barrier, and a caller
// that runs it again must pass a barrier first (norm_quant runs it once a block). Earlier
// definitions (the squares in another order, y = w * (v * r)) gave other bits by a rounding.
__device__ void norm_quant_row(const float* __restrict__ xt, int cols, int mode,
                               const float* __restrict__ w, float eps, float* row,
                               float* __restrict__ y, i8* q, int qstride, float* red,
                               float* s_out, int* sum_out, int perm = 0) {
    const int nt = blockDim.x, ng = (cols + 3) >> 2;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (nt + 31) >> 5;
    float4* row4 = (float4*)row;
    const bool vec = (cols & 3) == 0 && (((size_t)xt) & 15) == 0;
    const bool wvec = (cols & 3) == 0 && (((size_t)w) & 15) == 0;
    float ss = 0.0f, m = 0.0f;
#pragma unroll 2
    for (int g = threadIdx.x; g < ng; g += nt) {
        const int k = 4 * g;
        // Zeros past cols (gate_value(0, 0) is 0 in both modes; w is 0 there).
        const float4 v = norm_group(xt, cols, mode, g, vec);
        float4 wv;
        if (wvec) {
            wv = *(const float4*)(w + k);
        } else {
            wv = make_float4(w[k], k + 1 < cols ? w[k + 1] : 0.0f, k + 2 < cols ? w[k + 2] : 0.0f,
                             k + 3 < cols ? w[k + 3] : 0.0f);
        }
        ss = fmaf(v.x, v.x, ss);
        ss = fmaf(v.y, v.y, ss);
        ss = fmaf(v.z, v.z, ss);
        ss = fmaf(v.w, v.w, ss);
        const float4 p = make_float4(__fmul_rn(wv.x, v.x), __fmul_rn(wv.y, v.y),
                                     __fmul_rn(wv.z, v.z), __fmul_rn(wv.w, v.w));
        m = fmaxf(m, fmaxf(fmaxf(fabsf(p.x), fabsf(p.y)), fmaxf(fabsf(p.z), fabsf(p.w))));
        row4[g] = p;
    }
    ss = warp_sum(ss);
    m = warp_max(m);
    if (lane == 0) {
        red[warp] = ss;
        red[32 + warp] = m;
    }
    __syncthreads();
    ss = warp_sum(lane < nw ? red[lane] : 0.0f);
    m = warp_max(lane < nw ? red[32 + lane] : NEG_INF);
    const float r = __fdiv_rn(1.0f, sqrtf(__fadd_rn(__fdiv_rn(ss, (float)cols), eps)));
    const bool yvec = y && (cols & 3) == 0 && (((size_t)y) & 15) == 0;
    if (y) {
        for (int g = threadIdx.x; g < ng; g += nt) {
            const int k = 4 * g;
            const float4 p = row4[g];
            const float4 o = make_float4(__fmul_rn(p.x, r), __fmul_rn(p.y, r), __fmul_rn(p.z, r),
                                         __fmul_rn(p.w, r));
            if (yvec) {
                *(float4*)(y + k) = o;
            } else {
                const float ov[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    if (k + i < cols) y[k + i] = ov[i];
            }
        }
    }
    if (!q) return;
    const float s = __fdiv_rn(127.0f, fmaxf(__fmul_rn(m, r), 1e-5f));
    int sum = 0;
    for (int g = threadIdx.x; 4 * g < qstride; g += nt) {
        const int k = 4 * g;
        u32 packed = 0;
        if (k < cols) {
            const float4 p = row4[g];
            const float ov[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int v = 0;
                if (k + i < cols)
                    v = (int)fminf(fmaxf(rintf(__fmul_rn(__fmul_rn(ov[i], r), s)), -128.0f), 127.0f);
                sum += v;
                packed |= (u32)(v & 0xff) << (8 * i);
            }
        }
        *(u32*)(q + (perm ? perm_index(k, perm) : k)) = packed;
    }
    *s_out = s;
    *sum_out = block_sum_i_1(sum, (int*)(red + 64));
}

// Per token (one block each): norm_quant_row of row t (rows `in_stride` floats apart) into
// y[t] and q[t] / scales[t] / sums[t] (either may be null). Dynamic shared memory: `cols`
// floats rounded up to 4.
extern "C" __global__ void norm_quant(const float* __restrict__ x, int in_stride, int cols,
                                      int mode, const float* __restrict__ w, float eps,
                                      float* __restrict__ y, i8* __restrict__ q, int qstride,
                                      float* __restrict__ scales, int* __restrict__ sums) {
    extern __shared__ __align__(16) float row[];
    __shared__ float red[96];  // norm_quant_row's three slot arrays
    const int t = blockIdx.x;
    float s;
    int sum;
    norm_quant_row(x + (size_t)t * in_stride, cols, mode, w, eps, row,
                   y ? y + (size_t)t * cols : y, q ? q + (size_t)t * qstride : q, qstride, red,
                   &s, &sum);
    if (q && threadIdx.x == 0) {
        scales[t] = s;
        sums[t] = sum;
    }
}

// 16 weights-bytes (64 ternary codes, I2_S layout: see ternary.cu) of chunk c of a row times
// the int8 activations `q` (shared memory), added to acc.
__device__ __forceinline__ int ternary_chunk(uint4 wv, const i8* q, int c, int acc) {
    const int base = (c >> 1) * 128 + ((c & 1) << 4);
    const u32 words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
    for (int g = 0; g < 4; ++g) {
        const int shift = 6 - 2 * g;
        const int4 qv = *(const int4*)(q + base + 32 * g);
        acc = __dp4a((int)((words[0] >> shift) & 0x03030303u), qv.x, acc);
        acc = __dp4a((int)((words[1] >> shift) & 0x03030303u), qv.y, acc);
        acc = __dp4a((int)((words[2] >> shift) & 0x03030303u), qv.z, acc);
        acc = __dp4a((int)((words[3] >> shift) & 0x03030303u), qv.w, acc);
    }
    return acc;
}

// 16-byte weight chunks a lane holds in registers per row: rows up to 32 * 4 * 16 bytes
// (8192 columns) are loaded whole before the first dp4a; wider ones loop over the rest.
#define FUSED_PF 4

// Decode (one token): norm_quant_row of x into shared memory, then the ternary matmul of
// ternary.cu over it (out[r] = (sum_k t_rk q_k - sum q) / s * wscale[r], added to out[r] with
// `accumulate`), in one kernel: a decode step's norms were serial single-block kernels between
// the matmuls, each a launch and a memory latency chain. Every block redoes the norm (its
// input is at most a few tens of KB, from L2) with NORM_THREADS threads, as norm_quant, so the
// int8 values are the same bits; each warp then runs rows blockIdx.x * warps + warp, stepping
// by all the grid's warps. A warp's first row is loaded before the norm, so the weights' memory
// latency overlaps it, and each next row is loaded before the current row's reduction.
// Dynamic shared memory: cols floats rounded up to 16 bytes, then qstride bytes.
// Launched with NORM_THREADS = 1024 threads: the bound keeps ptxas within 64 registers.
extern "C" __global__ void __launch_bounds__(1024) norm_ternary_t1(const float* __restrict__ x, int cols, int mode,
                                           const float* __restrict__ nw, float eps,
                                           const unsigned char* __restrict__ w, int rows,
                                           int row_bytes, int qstride,
                                           const float* __restrict__ wscale,
                                           float* __restrict__ out, int accumulate) {
    extern __shared__ __align__(16) float row[];
    __shared__ float red[96];  // norm_quant_row's three slot arrays
    i8* qs = (i8*)(row + ((cols + 3) & ~3));
    const int lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5, step = gridDim.x * warps;
    const int chunks = row_bytes >> 4;
    int r = blockIdx.x * warps + (threadIdx.x >> 5);
    uint4 pf[FUSED_PF];
#pragma unroll
    for (int j = 0; j < FUSED_PF; ++j) {
        const int c = lane + 32 * j;
        if (r < rows && c < chunks) pf[j] = __ldg((const uint4*)(w + (size_t)r * row_bytes) + c);
    }
    float s;
    int sum;
    norm_quant_row(x, cols, mode, nw, eps, row, nullptr, qs, qstride, red, &s, &sum);
    for (; r < rows; r += step) {
        const uint4* wr = (const uint4*)(w + (size_t)r * row_bytes);
        int acc = 0;
#pragma unroll
        for (int j = 0; j < FUSED_PF; ++j) {
            const int c = lane + 32 * j;
            if (c < chunks) acc = ternary_chunk(pf[j], qs, c, acc);
        }
        for (int c = lane + 32 * FUSED_PF; c < chunks; c += 32) acc = ternary_chunk(__ldg(wr + c), qs, c, acc);
        const int rn = r + step;
        if (rn < rows) {
#pragma unroll
            for (int j = 0; j < FUSED_PF; ++j) {
                const int c = lane + 32 * j;
                if (c < chunks) pf[j] = __ldg((const uint4*)(w + (size_t)rn * row_bytes) + c);
            }
        }
        acc = warp_sum_i(acc);
        if (lane == 0) {
            const float yv = __fmul_rn(__fdiv_rn((float)(acc - sum), s), wscale[r]);
            out[r] = accumulate ? __fadd_rn(out[r], yv) : yv;
        }
    }
}

// RoPE (NEOX / rotate_half: element i pairs with i + hd/2, as forward.rs) on token t of the
// stacked q|k|v output, at position pos[t]. Query heads are rotated in place; key heads are
// rotated into the f16 key cache and the value heads copied into the value cache, at cache row
// slot[t] (rows of kv_head * hd). Grid (tokens, nh + nkv), hd/2 threads.
extern "C" __global__ void rope_kv(float* __restrict__ qkv, int nh, int nkv, int hd,
                                   const float* __restrict__ inv_freq,
                                   const int* __restrict__ pos_t, const int* __restrict__ slot,
                                   u16* __restrict__ kc, u16* __restrict__ vc) {
    const int t = blockIdx.x, h = blockIdx.y, i = threadIdx.x, half = hd >> 1;
    if (i >= half) return;
    const int pos = pos_t[t];
    const int qd = nh * hd, kvd = nkv * hd;
    float* row = qkv + (size_t)t * (qd + 2 * kvd);
    const float angle = __fmul_rn((float)pos, inv_freq[i]);
    const float c = cosf(angle), s = sinf(angle);
    float* xh = h < nh ? row + h * hd : row + qd + (h - nh) * hd;
    const float x0 = xh[i], x1 = xh[i + half];
    const float a = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    const float b = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
    if (h < nh) {
        xh[i] = a;
        xh[i + half] = b;
    } else {
        const int kvh = h - nh;
        const size_t at = (size_t)slot[t] * kvd + (size_t)kvh * hd;
        kc[at + i] = f2h(a);
        kc[at + i + half] = f2h(b);
        const float* vh = row + qd + kvd + kvh * hd;
        vc[at + i] = f2h(vh[i]);
        vc[at + i + half] = f2h(vh[i + half]);
    }
}

// Attention head dims up to this many (8 f32 accumulators per lane, pairs of f16 per load).
#define MAX_HD 256

// Softmax attention of one query head (its q in shared `qs`) over positions 0..n of KV head
// kvh of the sequence whose block table is `bt`, into out_h: scores scaled after the dot,
// softmax subtracting the max, weights = e * (1 / sum), as forward.rs, chunk by chunk (below).
// With `kn` / `vn` (shared, the f16-rounded values) position n - 1 is read from them instead of
// the cache: the fused decode kernels write that position in this same launch.
//
// Run by the block's first `nthr` threads (32 to 1024, a power of two), with the same bits for
// every nthr: the sums are defined over ATT_VW = 32 "virtual warps" of 32 lanes (1024 virtual
// threads), and a real warp plays ATT_VW / (nthr / 32) of them in turn. So the batched kernel
// runs prompts with few threads per (head, token) and a decode step runs one head with 1024,
// and a token's attention is the same whichever ran it. A score: lane l's fmaf chain over the
// pairs 2j, 2j + 1 of j = l, l + 32, ..., then the lanes added by one xor butterfly (warp_sum's
// order). Sum of the exponentials: virtual thread v adds positions v, v + 1024, ...; each
// virtual warp's 32 lanes are added by one butterfly, then its 32 partials by another. Values:
// virtual warp w accumulates positions w, w + 32, ... in order; the 32 partial outputs are
// added in warp order. Scores are per position and the max is exact, so their order does not
// matter. MHD: the largest head_dim the caller handles (registers per lane).
//
// Chunks (flash decoding): the positions are cut into chunks of ATT_CHUNK from 0, and the
// above is one chunk's softmax (its own max m_c and sum l_c) and its weighted values o_c. The
// chunks are then folded in order: (M, L, U) starts as chunk 0's (m, l, l o); chunk c gives
// M' = max(M, m_c), a = exp(M - M'), b = exp(m_c - M') (one of them exp(0) = 1), L' = a L +
// b l_c and U' = a U + (b l_c) o_c; the output is U / L. A sequence of one chunk is that
// chunk's o, the bits of the definition before chunks. So a chunk can be computed by any block:
// a long sequence's chunks spread over many blocks (split mode: each writes its (o_c, m_c, l_c)
// record, the last to finish folds them), or one block runs them in turn, with the same bits.
#define ATT_VW 32
#define ATT_CHUNK 256

// The butterfly sums of four values at once, d[u] of every lane into lanes 8u..8u+7: at the
// first two levels each lane sends the values its partner keeps, so 6 shuffles instead of 20.
// Each level adds the same pairs as warp_sum's level (float addition commutes), so lane 8u ends
// with warp_sum(d[u])'s bits.
__device__ __forceinline__ float warp_sum4(const float d[4]) {
    const int lane = threadIdx.x & 31;
    const bool hi16 = lane & 16, hi8 = lane & 8;
    const float a0 = (hi16 ? d[2] : d[0]) + __shfl_xor_sync(0xffffffffu, hi16 ? d[0] : d[2], 16);
    const float a1 = (hi16 ? d[3] : d[1]) + __shfl_xor_sync(0xffffffffu, hi16 ? d[1] : d[3], 16);
    float b = (hi8 ? a1 : a0) + __shfl_xor_sync(0xffffffffu, hi8 ? a0 : a1, 8);
    for (int o = 4; o > 0; o >>= 1) b += __shfl_xor_sync(0xffffffffu, b, o);
    return b;
}

// Position p's row of a cache head (base: the cache plus the head's offset) as 32-bit words:
// unsigned arithmetic and one widening multiply (cache_row's signed division and 64-bit product
// were most of a position's instructions in attend's loops).
__device__ __forceinline__ const u32* kv_row(const u16* base, const int* bt, int p, int kvd) {
    const u32 up = (u32)p;
    const u32 row = (u32)bt[up / KV_BLOCK] * KV_BLOCK + up % KV_BLOCK;
    return (const u32*)(base + (unsigned long long)row * (u32)kvd);
}

// The rows (lane's words of J pairs) of positions p0, p0 + step, p0 + 2 step, p0 + 3 step; past
// m - 1, the last one again (loaded, never used).
template <int J>
__device__ __forceinline__ void load_rows4(u32 (&r)[4][J], const u16* base, const int* bt, int p0,
                                           int step, int m, int kvd, const bool (&on)[J],
                                           int lane) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        const u32* row = kv_row(base, bt, min(p0 + u * step, m - 1), kvd);
#pragma unroll
        for (int jj = 0; jj < J; ++jj)
            if (on[jj]) r[u][jj] = __ldg(row + lane + 32 * jj);
    }
}

template <int J>
__device__ __forceinline__ void copy_rows4(u32 (&to)[4][J], const u32 (&from)[4][J]) {
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int jj = 0; jj < J; ++jj) to[u][jj] = from[u][jj];
}

// One fold step (see ATT_CHUNK): the running (M, L) take chunk (mc, lc); the running U is
// then a U + wb o_c. One exponential: the other factor is exp(0) = 1.
__device__ __forceinline__ void att_fold(float& M, float& L, float mc, float lc, float& a,
                                         float& wb) {
    const bool up = mc > M;
    const float e = expf(__fsub_rn(fminf(M, mc), fmaxf(M, mc)));
    a = up ? e : 1.0f;
    wb = __fmul_rn(up ? 1.0f : e, lc);
    L = __fadd_rn(__fmul_rn(a, L), wb);
    M = fmaxf(M, mc);
}

// The body of attend for MHD / 64 pairs a lane; FULL: hd == MHD, so every pair is in range and
// no lane needs its bounds checked. PIPE: each round's loads are issued a round ahead (twice
// the registers; the persistent kernel, at its 64, spills with it and keeps its loads together
// without it). Position n - 1 from kn / vn is handled after the cache's positions: it is the
// last of its virtual warp's values, so the order stays as defined. Computes chunk c of the
// head's positions: where it is the only one, into out_h; otherwise o_c into part[0..hd) and
// (m_c, l_c) into ml[0..2), left to the caller (no barrier after them).
template <int MHD, bool FULL, bool PIPE>
__device__ void attend_pairs(const float* qs, const float* kn, const float* vn, float* sc,
                             float* part, float* ml, float* red, int n, int c, const int* bt,
                             int kvd, int kvh, int hd, const u16* __restrict__ kc,
                             const u16* __restrict__ vc, float scale, float* __restrict__ out_h,
                             int nthr) {
    constexpr int J = MHD / 64;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = nthr >> 5;
    // This chunk's positions lo..hi, those in the cache lo..mh (all but a fresh last one);
    // scores at sc[p - lo].
    const int lo = c * ATT_CHUNK, hi = min(lo + ATT_CHUNK, n), mh = min(hi, kn ? n - 1 : n);
    const size_t head = (size_t)kvh * hd;
    bool on[J];
    float q0[J], q1[J];
#pragma unroll
    for (int jj = 0; jj < J; ++jj) {
        const int j = lane + 32 * jj;
        on[jj] = FULL || 2 * j < hd;
        q0[jj] = on[jj] ? qs[2 * j] : 0.0f;
        q1[jj] = on[jj] ? qs[2 * j + 1] : 0.0f;
    }
    // Scores: each warp loads the keys of 4 of its positions at once, so that 4 memory latencies
    // overlap, and the next 4 while it uses them (ptxas otherwise moved loads down to their
    // uses, one latency after another); the four dot products' lanes are added together.
    u32 kp[4][J], kq[4][J];
    if (PIPE && lo + warp < mh) load_rows4<J>(kp, kc + head, bt, lo + warp, nw, mh, kvd, on, lane);
    for (int p0 = lo + warp; p0 < mh; p0 += 4 * nw) {
        const bool more = PIPE && p0 + 4 * nw < mh;
        if (!PIPE) load_rows4<J>(kp, kc + head, bt, p0, nw, mh, kvd, on, lane);
        if (more) load_rows4<J>(kq, kc + head, bt, p0 + 4 * nw, nw, mh, kvd, on, lane);
        float d[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            d[u] = 0.0f;
#pragma unroll
            for (int jj = 0; jj < J; ++jj)
                if (on[jj]) {
                    d[u] = fmaf(q0[jj], h2f((u16)(kp[u][jj] & 0xffffu)), d[u]);
                    d[u] = fmaf(q1[jj], h2f((u16)(kp[u][jj] >> 16)), d[u]);
                }
        }
        const float s = warp_sum4(d);
        const int p = p0 + (lane >> 3) * nw;
        if ((lane & 7) == 0 && p < mh) sc[p - lo] = __fmul_rn(s, scale);
        if (more) copy_rows4<J>(kp, kq);
    }
    if (kn && hi == n && warp == (n - 1) % nw) {
        float d = 0.0f;
#pragma unroll
        for (int jj = 0; jj < J; ++jj)
            if (on[jj]) {
                const int j = lane + 32 * jj;
                d = fmaf(q0[jj], kn[2 * j], d);
                d = fmaf(q1[jj], kn[2 * j + 1], d);
            }
        d = warp_sum(d);
        if (lane == 0) sc[n - 1 - lo] = __fmul_rn(d, scale);
    }
    group_sync(nthr);
    float mx = NEG_INF;
    for (int p = threadIdx.x; p < hi - lo; p += nthr) mx = fmaxf(mx, sc[p]);
    mx = group_max(mx, red, nthr);
    // Sum of the exponentials over the virtual threads lane + 32 * w for this warp's virtual
    // warps w = warp, warp + nw, ... (a chunk gives each at most one position).
    for (int w = warp; w < ATT_VW; w += nw) {
        float sum = 0.0f;
        for (int p = lane + 32 * w; p < hi - lo; p += 32 * ATT_VW) {
            const float e = expf(__fsub_rn(sc[p], mx));
            sc[p] = e;
            sum += e;
        }
        sum = warp_sum(sum);
        if (lane == 0) part[w] = sum;
    }
    group_sync(nthr);
    const float sum = warp_sum(part[lane]);
    const float inv = __fdiv_rn(1.0f, sum);
    if (threadIdx.x == 0) {
        ml[0] = mx;
        ml[1] = sum;
    }
    // Every thread has read part[0..32) before it is overwritten below.
    group_sync(nthr);

    // The values, virtual warp by virtual warp, 4 positions at a time, the next 4 on their way.
    for (int w = warp; w < ATT_VW; w += nw) {
        float acc[2 * J];
#pragma unroll
        for (int j = 0; j < 2 * J; ++j) acc[j] = 0.0f;
        u32 vp[4][J], vq[4][J];
        if (PIPE && lo + w < mh) load_rows4<J>(vp, vc + head, bt, lo + w, ATT_VW, mh, kvd, on, lane);
        for (int p0 = lo + w; p0 < mh; p0 += 4 * ATT_VW) {
            const bool more = PIPE && p0 + 4 * ATT_VW < mh;
            if (!PIPE) load_rows4<J>(vp, vc + head, bt, p0, ATT_VW, mh, kvd, on, lane);
            if (more) load_rows4<J>(vq, vc + head, bt, p0 + 4 * ATT_VW, ATT_VW, mh, kvd, on, lane);
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int p = p0 + u * ATT_VW;
                if (p >= mh) break;
                const float wgt = __fmul_rn(sc[p - lo], inv);
#pragma unroll
                for (int jj = 0; jj < J; ++jj)
                    if (on[jj]) {
                        acc[2 * jj] = fmaf(wgt, h2f((u16)(vp[u][jj] & 0xffffu)), acc[2 * jj]);
                        acc[2 * jj + 1] = fmaf(wgt, h2f((u16)(vp[u][jj] >> 16)), acc[2 * jj + 1]);
                    }
            }
            if (more) copy_rows4<J>(vp, vq);
        }
        if (vn && hi == n && w == (n - 1) % ATT_VW) {
            const float wgt = __fmul_rn(sc[n - 1 - lo], inv);
#pragma unroll
            for (int jj = 0; jj < J; ++jj)
                if (on[jj]) {
                    const int e = lane + 32 * jj;
                    acc[2 * jj] = fmaf(wgt, vn[2 * e], acc[2 * jj]);
                    acc[2 * jj + 1] = fmaf(wgt, vn[2 * e + 1], acc[2 * jj + 1]);
                }
        }
#pragma unroll
        for (int jj = 0; jj < J; ++jj)
            if (on[jj]) {
                const int e = lane + 32 * jj;
                part[w * hd + 2 * e] = acc[2 * jj];
                part[w * hd + 2 * e + 1] = acc[2 * jj + 1];
            }
    }
    group_sync(nthr);
    // Thread i alone reads column i of part, so o_c can replace its first row in place.
    const bool whole = n <= ATT_CHUNK;
    for (int i = threadIdx.x; i < hd; i += nthr) {
        float o = 0.0f;
        for (int w = 0; w < ATT_VW; ++w) o += part[w * hd + i];
        if (whole)
            out_h[i] = o;
        else
            part[i] = o;
    }
}

// Attention for head dimensions up to MHD, chunk c (see attend_pairs): FIT > 0, a kernel built
// for head dimension FIT alone (no bounds checks, loads a round ahead); FIT < 0, any head
// dimension, bounds checked per lane; FIT == 0 (the persistent decode kernel, one build for
// every model), 64 and 128 (2B4T's) and MHD without checks, others with. The same bits
// whichever runs.
#define ATTEND_PAIRS(MHD_, FULL_, PIPE_)                                                       \
    attend_pairs<MHD_, FULL_, PIPE_>(qs, kn, vn, sc, part, ml, red, n, c, bt, kvd, kvh, hd, kc, \
                                     vc, scale, out_h, nthr)
template <int MHD, int FIT>
__device__ void attend(const float* qs, const float* kn, const float* vn, float* sc,
                       float* part, float* ml, float* red, int n, int c, const int* bt, int kvd,
                       int kvh, int hd, const u16* __restrict__ kc, const u16* __restrict__ vc,
                       float scale, float* __restrict__ out_h, int nthr) {
    if constexpr (FIT > 0)
        ATTEND_PAIRS(FIT, true, true);
    else if constexpr (FIT < 0)
        ATTEND_PAIRS(MHD, false, false);
    else if (hd == MHD)
        ATTEND_PAIRS(MHD, true, false);
    else if (MHD > 128 && hd == 128)
        ATTEND_PAIRS(128, true, false);
    else if (MHD > 64 && hd == 64)
        ATTEND_PAIRS(64, true, false);
    else
        ATTEND_PAIRS(MHD, false, false);
}
#undef ATTEND_PAIRS

// Every chunk of a head in turn in this block (attend_pairs leaves each chunk's o_c in part and
// (m_c, l_c) in ml), folded in chunk order (U in orun: hd floats of shared memory), then
// out_h = U / L.
template <int MHD, int FIT>
__device__ void attend_chunks(const float* qs, const float* kn, const float* vn, float* sc,
                              float* part, float* ml, float* orun, float* red, int n,
                              const int* bt, int kvd, int kvh, int hd,
                              const u16* __restrict__ kc, const u16* __restrict__ vc,
                              float scale, float* __restrict__ out_h, int nthr) {
    const int nc = (n + ATT_CHUNK - 1) / ATT_CHUNK;
    float M = 0.0f, L = 0.0f;
    for (int c = 0; c < nc; ++c) {
        attend<MHD, FIT>(qs, kn, vn, sc, part, ml, red, n, c, bt, kvd, kvh, hd, kc, vc, scale,
                         out_h, nthr);
        if (nc == 1) return;
        group_sync(nthr);
        // Read before the next chunk writes them: its part and ml writes come after two of
        // its barriers.
        const float mc = ml[0], lc = ml[1];
        float a = 0.0f, wb = 0.0f;
        if (c > 0) att_fold(M, L, mc, lc, a, wb);
        else
            M = mc, L = lc;
        for (int i = threadIdx.x; i < hd; i += nthr)
            orun[i] = c == 0 ? __fmul_rn(lc, part[i])
                             : __fadd_rn(__fmul_rn(a, orun[i]), __fmul_rn(wb, part[i]));
    }
    for (int i = threadIdx.x; i < hd; i += nthr) out_h[i] = __fdiv_rn(orun[i], L);
}

// Split mode, after attend_pairs ran chunk c of nc (> 1) in this block: its record (o_c from
// part, (m_c, l_c) from ml: this thread's own writes) to rec + c (hd + 2); the last of the
// head's blocks to finish (counter `tick`, zeroed again by it) folds the records, in chunk
// order as attend_chunks, into out_h.
__device__ void attend_split_done(const float* part, const float* ml, int c, int nc, float* rec,
                                  unsigned* tick, int hd, float* __restrict__ out_h, int nthr) {
    __shared__ int att_last;
    const int stride = hd + 2;
    float* r = rec + (size_t)c * stride;
    for (int i = threadIdx.x; i < hd; i += nthr) r[i] = part[i];
    if (threadIdx.x == 0) {
        r[hd] = ml[0];
        r[hd + 1] = ml[1];
    }
    __threadfence();
    group_sync(nthr);
    if (threadIdx.x == 0) {
        const bool last = atomicAdd(tick, 1u) == (unsigned)(nc - 1);
        if (last) atomicExch(tick, 0u);
        att_last = last;
    }
    group_sync(nthr);
    if (!att_last) return;
    __threadfence();
    // Written by other blocks of this launch: read through L2.
    for (int i = threadIdx.x; i < hd; i += nthr) {
        float M = __ldcg(rec + hd), L = __ldcg(rec + hd + 1);
        float u = __fmul_rn(L, __ldcg(rec + i));
        for (int k = 1; k < nc; ++k) {
            const float* rk = rec + (size_t)k * stride;
            float a, wb;
            att_fold(M, L, __ldcg(rk + hd), __ldcg(rk + hd + 1), a, wb);
            u = __fadd_rn(__fmul_rn(a, u), __fmul_rn(wb, __ldcg(rk + i)));
        }
        out_h[i] = __fdiv_rn(u, L);
    }
}

// The attention kernels' dynamic shared memory (attn_smem(ctx) bytes; host: AttnDims::
// attn_smem), in floats: q, the fused decode kernels' new key and value, the running output of
// attend_chunks, a chunk's max and sum, a chunk's scores, the warps' partial outputs, then the
// sequence's block ids (ints, ctx / KV_BLOCK).
struct AttnSmem {
    float *qs, *kn, *vn, *orun, *ml, *sc, *part;
    int* bt;
    __device__ __forceinline__ AttnSmem(float* sm, int hd)
        : qs(sm), kn(sm + hd), vn(sm + 2 * hd), orun(sm + 3 * hd), ml(sm + 4 * hd),
          sc(sm + 4 * hd + 2), part(sc + ATT_CHUNK), bt((int*)(part + ATT_VW * hd)) {}
};

// Causal grouped-query attention of query head blockIdx.x of token blockIdx.y over positions
// 0..n of its own sequence, n = pos[t] + 1, through that sequence's block table
// blocks + table[t] (see attend). CHUNKS: the chunks in turn (attend_chunks); otherwise the
// one chunk of sequences of at most ATT_CHUNK positions (the host's choice by the batch's
// longest: the loop over chunks costs ~30 registers, fewer blocks an SM in a decode batch of
// short sequences). Dynamic shared memory (attn_smem): hd
// floats of q, 2 * hd unused here, hd of running output and a chunk's max and sum, ATT_CHUNK
// scores, ATT_VW * hd partial outputs, ctx / KV_BLOCK block ids (ctx >= n).
// With `skip_runs`, the tokens that attention_flash handles (those of a chunk of two or more
// tokens: a neighbour in the batch has the same table offset, and the offsets of different
// sequences differ) are left alone.
template <int FIT, bool CHUNKS>
__device__ void attention_body(const float* __restrict__ qkv, int qkv_stride, int nh, int nkv,
                               int hd, int ctx, const int* __restrict__ pos_t,
                               const int* __restrict__ table, const int* __restrict__ blocks,
                               const u16* __restrict__ kc, const u16* __restrict__ vc,
                               float scale, float* __restrict__ out, int skip_runs, float* sm) {
    __shared__ float red[32];
    const int h = blockIdx.x, t = blockIdx.y;
    if (skip_runs && ((t > 0 && table[t - 1] == table[t]) ||
                      (t + 1 < (int)gridDim.y && table[t + 1] == table[t])))
        return;
    const int n = pos_t[t] + 1;
    const AttnSmem a(sm, hd);
    const float* q = qkv + (size_t)t * qkv_stride + (size_t)h * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) a.qs[i] = q[i];
    // The block table in shared memory: each position's row is then one shared load away
    // instead of a global one in front of every key and value load.
    const int* table_t = blocks + table[t];
    for (int i = threadIdx.x; i < (n + KV_BLOCK - 1) / KV_BLOCK; i += blockDim.x)
        a.bt[i] = table_t[i];
    __syncthreads();
    float* out_h = out + (size_t)t * nh * hd + (size_t)h * hd;
    if constexpr (CHUNKS)
        attend_chunks<MAX_HD, FIT>(a.qs, nullptr, nullptr, a.sc, a.part, a.ml, a.orun, red, n,
                                   a.bt, nkv * hd, h / (nh / nkv), hd, kc, vc, scale, out_h,
                                   blockDim.x);
    else
        attend<MAX_HD, FIT>(a.qs, nullptr, nullptr, a.sc, a.part, a.ml, red, n, 0, a.bt,
                            nkv * hd, h / (nh / nkv), hd, kc, vc, scale, out_h, blockDim.x);
}

#define ATTENTION_KERNEL(NAME, FIT, CHUNKS)                                                    \
    extern "C" __global__ void NAME(const float* __restrict__ qkv, int qkv_stride, int nh,     \
                                    int nkv, int hd, int ctx, const int* __restrict__ pos_t,  \
                                    const int* __restrict__ table,                            \
                                    const int* __restrict__ blocks,                           \
                                    const u16* __restrict__ kc, const u16* __restrict__ vc,   \
                                    float scale, float* __restrict__ out, int skip_runs) {    \
        extern __shared__ float sm[];                                                         \
        attention_body<FIT, CHUNKS>(qkv, qkv_stride, nh, nkv, hd, ctx, pos_t, table, blocks,  \
                                    kc, vc, scale, out, skip_runs, sm);                       \
    }
// Built for head dimension 64, 128, and any (the host picks by the model's), for sequences of
// one chunk and of any length.
ATTENTION_KERNEL(attention_hd64, 64, false)
ATTENTION_KERNEL(attention_hd128, 128, false)
ATTENTION_KERNEL(attention, -1, false)
ATTENTION_KERNEL(attention_chunks_hd64, 64, true)
ATTENTION_KERNEL(attention_chunks_hd128, 128, true)
ATTENTION_KERNEL(attention_chunks, -1, true)

// Flash attention of prompt tokens on the f16 tensor cores (mma.sync m16n8k16, f32
// accumulation). A block takes one query head and one tile of up to FLASH_ROWS consecutive
// batch tokens of one sequence (tiles[2 * blockIdx.y] is the tile's first token, the next word
// its token count; the backend cuts every chunk of two or more tokens into such tiles, and
// their positions increase by one from token to token); warp w owns the tile's rows
// 16w..16w+15. The keys and values stream through shared memory in chunks of FLASH_KEYS
// positions (cp.async, double-buffered, rows padded by 8 halves so that the 8 rows an
// ldmatrix reads fall in distinct banks), chunk c holding positions c * FLASH_KEYS.. of the
// sequence; the loop runs to the position of the tile's last token.
//
// Q and P (the softmax weights) go to the tensor cores as two f16 halves each (split_h2: the
// f16 value and its rounding error), two mmas per product, so both keep nearly f32 precision;
// K and V are the f16 cache. Scaled scores are formed in f32 (s * scale * log2(e), so the
// softmax uses exp2f). Online softmax per row: running max m, running sum l (f32), O rescaled
// by exp2(m_old - m_new) whenever m grows.
//
// A row's result depends on its own q and position only, never on the other rows of its tile:
// the chunks are aligned to absolute positions, every row's arithmetic is a fixed sequence of
// explicitly rounded operations (no contraction that could differ between a thread's two row
// slots), and a chunk past the row's position is an exact no-op (every score -inf, the max
// unchanged, so the rescale is exactly 1 and P exactly 0; the values it multiplies are cache
// values or zeros, finite). So a prompt in passes of any tiling gives the same bits, and a
// sequence's rows do not depend on the batch around it. Positions past the tile's last one are
// zero-filled, not loaded: their block ids may lie past the sequence's table.
#define FLASH_ROWS 64
#define FLASH_KEYS 64
#define FLASH_THREADS 128

// Two floats to an f16x2 register, `lo` in the low half (the lower column of a fragment).
__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    u32 r;
    // cvt's first source goes to the upper half.
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Two floats as f16x2 pairs whose sum is each float to ~2^-22 relative (the rounding error of
// `big` in `small`): the flash kernel multiplies both halves, so q and the softmax weights
// keep nearly f32 precision on f16 tensor cores. f16 alone (~5e-4 relative) left the prompt's
// logits ~2e-2 from the exact kernel's, enough to part greedy paths at near ties.
__device__ __forceinline__ void split_h2(float a, float b, u32& big, u32& small) {
    const u16 ha = f2h(a), hb = f2h(b);
    big = (u32)ha | ((u32)hb << 16);
    small = pack_h2(__fsub_rn(a, h2f(ha)), __fsub_rn(b, h2f(hb)));
}

__device__ __forceinline__ void ldsm_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

__device__ __forceinline__ void ldsm_x4_t(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

// d += a (16x16, row-major fragment) * b (16x8, column fragment), f32 accumulators.
__device__ __forceinline__ void mma_16816(float* d, const u32* a, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The fragment layouts (PTX ISA, mma.m16n8k16 with .f16): lane = 4 * g + tq. A: a[0] row g,
// columns 2tq, 2tq+1; a[1] row g+8, the same columns; a[2], a[3] as a[0], a[1] at columns + 8.
// B (k x n): b0 rows 2tq, 2tq+1 of column g, b1 rows + 8. C: c[0], c[1] row g, columns 2tq,
// 2tq+1; c[2], c[3] row g+8. ldmatrix.x4: lanes 8i..8i+7 address the rows of matrix i, and
// register i of lane 4r + k holds row r, elements 2k, 2k+1 of matrix i (.trans: column r,
// rows 2k, 2k+1).
template <int HD>
__device__ __forceinline__ void attend_flash(const float* __restrict__ qkv, int qkv_stride,
                                             int nh, int nkv, const int* __restrict__ pos_t,
                                             const int* __restrict__ table,
                                             const int* __restrict__ blocks,
                                             const int* __restrict__ tiles,
                                             const u16* __restrict__ kc,
                                             const u16* __restrict__ vc, float scale,
                                             float* __restrict__ out) {
    // Halves per shared row, 16-byte pieces per row, halves per K (or V) buffer.
    constexpr int LD = HD + 8, PR = HD / 8, BUF = FLASH_KEYS * LD;
    extern __shared__ __align__(16) u16 fsm[];
    u16* ks = fsm;            // [2][FLASH_KEYS][LD]
    u16* vs = fsm + 2 * BUF;  // [2][FLASH_KEYS][LD]
    const int h = blockIdx.x;
    const int t0 = tiles[2 * blockIdx.y], cnt = tiles[2 * blockIdx.y + 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int kvd = nkv * HD;
    const int* bt = blocks + table[t0];
    const int kmax = pos_t[t0 + cnt - 1];
    const int nchunks = kmax / FLASH_KEYS + 1;
    const u16* kbase = kc + (size_t)(h / (nh / nkv)) * HD;
    const u16* vbase = vc + (size_t)(h / (nh / nkv)) * HD;

    // Chunk c into buffer buf, as one cp.async group. The chunk is two whole cache blocks: two
    // block-id loads (side by side) instead of one in front of every row.
    static_assert(FLASH_KEYS == 2 * KV_BLOCK, "a key chunk is two KV cache blocks");
    auto load = [&](int c, int buf) {
        const int p0 = c * FLASH_KEYS;
        const size_t blk0 = bt[p0 / KV_BLOCK];
        const size_t blk1 = p0 + KV_BLOCK <= kmax ? bt[p0 / KV_BLOCK + 1] : 0;
        uint4 zero;
        zero.x = zero.y = zero.z = zero.w = 0u;
        // Unrolled further, the loop's addresses stay live through the chunk's math: 250
        // registers at HD 128 instead of 178.
#pragma unroll 2
        for (int u = 0; u < FLASH_KEYS * PR / FLASH_THREADS; ++u) {
            const int i = threadIdx.x + u * FLASH_THREADS;
            const int r = i / PR, col = (i % PR) * 8, p = p0 + r;
            u16* kd = ks + buf * BUF + r * LD + col;
            u16* vd = vs + buf * BUF + r * LD + col;
            if (p <= kmax) {
                const size_t row = (r < KV_BLOCK ? blk0 : blk1) * KV_BLOCK + r % KV_BLOCK;
                const size_t at = row * kvd + col;
                cp_async16(kd, kbase + at);
                cp_async16(vd, vbase + at);
            } else {
                *(uint4*)kd = zero;
                *(uint4*)vd = zero;
            }
        }
        cp_async_commit();
    };
    load(0, 0);

    // This thread's two rows (g and g + 8 of its warp's 16); -1: padding past the tile.
    const int r0 = warp * 16 + g, r1 = r0 + 8;
    const int pos0 = r0 < cnt ? pos_t[t0 + r0] : -1;
    const int pos1 = r1 < cnt ? pos_t[t0 + r1] : -1;
    // The warp's last position: chunks past it change none of its rows (see above).
    int wlast = max(pos0, pos1);
    for (int sh = 16; sh > 2; sh >>= 1)
        wlast = max(wlast, __shfl_xor_sync(0xffffffffu, wlast, sh));

    // Q as A fragments, HD / 16 steps of 16 dimensions.
    u32 qa[HD / 16][4], ql[HD / 16][4];
    {
        const float* q0 = qkv + (size_t)(t0 + r0) * qkv_stride + (size_t)h * HD + 2 * tq;
        const float* q1 = qkv + (size_t)(t0 + r1) * qkv_stride + (size_t)h * HD + 2 * tq;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            float2 x0, x1, x2, x3;
            x0.x = x0.y = x1.x = x1.y = x2.x = x2.y = x3.x = x3.y = 0.0f;
            if (r0 < cnt) {
                x0 = *(const float2*)(q0 + 16 * kk);
                x2 = *(const float2*)(q0 + 16 * kk + 8);
            }
            if (r1 < cnt) {
                x1 = *(const float2*)(q1 + 16 * kk);
                x3 = *(const float2*)(q1 + 16 * kk + 8);
            }
            split_h2(x0.x, x0.y, qa[kk][0], ql[kk][0]);
            split_h2(x1.x, x1.y, qa[kk][1], ql[kk][1]);
            split_h2(x2.x, x2.y, qa[kk][2], ql[kk][2]);
            split_h2(x3.x, x3.y, qa[kk][3], ql[kk][3]);
        }
    }

    float o[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    const float cs = __fmul_rn(scale, 1.4426950408889634f);
    // Byte offsets of this lane's ldmatrix row: K (non-transposed, matrices i = keys 8 * (i >> 1)
    // + 0..7 at dimensions 8 * (i & 1)) and V (transposed, keys 8 * (i & 1) + 0..7 at dimensions
    // 8 * (i >> 1)).
    const u32 kaddr = smem_u32(ks) +
                      2 * ((8 * (lane >> 4) + (lane & 7)) * LD + 8 * ((lane >> 3) & 1));
    const u32 vaddr = smem_u32(vs) +
                      2 * ((8 * ((lane >> 3) & 1) + (lane & 7)) * LD + 8 * (lane >> 4));

    for (int c = 0; c < nchunks; ++c) {
        if (c + 1 < nchunks) {
            load(c + 1, (c + 1) & 1);
        } else {
            cp_async_commit();  // empty: wait_group 1 below then always means chunk c
        }
        cp_async_wait<1>();
        __syncthreads();
        if (c * FLASH_KEYS <= wlast) {
            const u32 kb = kaddr + 2 * (c & 1) * BUF, vb = vaddr + 2 * (c & 1) * BUF;
            // S = Q K^T: n-tile j is keys 8j..8j+7 of the chunk.
            float s[FLASH_KEYS / 8][4];
#pragma unroll
            for (int j = 0; j < FLASH_KEYS / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
                for (int jp = 0; jp < FLASH_KEYS / 16; ++jp) {
                    u32 b0, b1, b2, b3;
                    ldsm_x4(kb + 2 * (16 * jp * LD + 16 * kk), b0, b1, b2, b3);
                    mma_16816(s[2 * jp], qa[kk], b0, b1);
                    mma_16816(s[2 * jp + 1], qa[kk], b2, b3);
                    mma_16816(s[2 * jp], ql[kk], b0, b1);
                    mma_16816(s[2 * jp + 1], ql[kk], b2, b3);
                }
            }
            // Causal mask and scale; the chunk's max per row over the quad's 4 lanes.
            const int base = c * FLASH_KEYS + 2 * tq;
            float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
            for (int j = 0; j < FLASH_KEYS / 8; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int p = base + 8 * j + (e & 1);
                    const bool seen = p <= (e < 2 ? pos0 : pos1);
                    s[j][e] = seen ? __fmul_rn(s[j][e], cs) : NEG_INF;
                }
                mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
                mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
            }
#pragma unroll
            for (int o2 = 1; o2 < 4; o2 <<= 1) {
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o2));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o2));
            }
            const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            // A row with nothing visible yet subtracts 0 (no -inf - -inf); an unchanged max
            // rescales by exactly 1.
            const float ms0 = mn0 == NEG_INF ? 0.0f : mn0, ms1 = mn1 == NEG_INF ? 0.0f : mn1;
            const float a0 = mn0 == m0 ? 1.0f : exp2f(__fsub_rn(m0, ms0));
            const float a1 = mn1 == m1 ? 1.0f : exp2f(__fsub_rn(m1, ms1));
            m0 = mn0;
            m1 = mn1;
            l0 = __fmul_rn(l0, a0);
            l1 = __fmul_rn(l1, a1);
#pragma unroll
            for (int j = 0; j < FLASH_KEYS / 8; ++j) {
                s[j][0] = exp2f(__fsub_rn(s[j][0], ms0));
                s[j][1] = exp2f(__fsub_rn(s[j][1], ms0));
                s[j][2] = exp2f(__fsub_rn(s[j][2], ms1));
                s[j][3] = exp2f(__fsub_rn(s[j][3], ms1));
                l0 = __fadd_rn(__fadd_rn(l0, s[j][0]), s[j][1]);
                l1 = __fadd_rn(__fadd_rn(l1, s[j][2]), s[j][3]);
            }
#pragma unroll
            for (int j = 0; j < HD / 8; ++j) {
                o[j][0] = __fmul_rn(o[j][0], a0);
                o[j][1] = __fmul_rn(o[j][1], a0);
                o[j][2] = __fmul_rn(o[j][2], a1);
                o[j][3] = __fmul_rn(o[j][3], a1);
            }
            // O += P V: P's k-step kk (keys 16kk..16kk+15) is S's n-tiles 2kk and 2kk + 1.
#pragma unroll
            for (int kk = 0; kk < FLASH_KEYS / 16; ++kk) {
                u32 pa[4], pl[4];
                split_h2(s[2 * kk][0], s[2 * kk][1], pa[0], pl[0]);
                split_h2(s[2 * kk][2], s[2 * kk][3], pa[1], pl[1]);
                split_h2(s[2 * kk + 1][0], s[2 * kk + 1][1], pa[2], pl[2]);
                split_h2(s[2 * kk + 1][2], s[2 * kk + 1][3], pa[3], pl[3]);
#pragma unroll
                for (int jp = 0; jp < HD / 16; ++jp) {
                    u32 b0, b1, b2, b3;
                    ldsm_x4_t(vb + 2 * (16 * kk * LD + 16 * jp), b0, b1, b2, b3);
                    mma_16816(o[2 * jp], pa, b0, b1);
                    mma_16816(o[2 * jp + 1], pa, b2, b3);
                    mma_16816(o[2 * jp], pl, b0, b1);
                    mma_16816(o[2 * jp + 1], pl, b2, b3);
                }
            }
        }
        // Every warp is done with buffer c & 1 before the next iteration loads into it.
        __syncthreads();
    }

    // The row sums over the quad (each lane adds the same pairs: the same bits in all four).
#pragma unroll
    for (int o2 = 1; o2 < 4; o2 <<= 1) {
        l0 = __fadd_rn(l0, __shfl_xor_sync(0xffffffffu, l0, o2));
        l1 = __fadd_rn(l1, __shfl_xor_sync(0xffffffffu, l1, o2));
    }
    const size_t qd = (size_t)nh * HD;
    if (r0 < cnt) {
        float* o0 = out + (size_t)(t0 + r0) * qd + (size_t)h * HD + 2 * tq;
#pragma unroll
        for (int j = 0; j < HD / 8; ++j) {
            float2 v;
            v.x = __fdiv_rn(o[j][0], l0);
            v.y = __fdiv_rn(o[j][1], l0);
            *(float2*)(o0 + 8 * j) = v;
        }
    }
    if (r1 < cnt) {
        float* o1 = out + (size_t)(t0 + r1) * qd + (size_t)h * HD + 2 * tq;
#pragma unroll
        for (int j = 0; j < HD / 8; ++j) {
            float2 v;
            v.x = __fdiv_rn(o[j][2], l1);
            v.y = __fdiv_rn(o[j][3], l1);
            *(float2*)(o1 + 8 * j) = v;
        }
    }
}

// attend_flash for head dimension 64 and 128. Grid (heads, tiles), FLASH_THREADS threads;
// dynamic shared memory: flash_smem (AttnDims in ops.rs), K and V double-buffered.
extern "C" __global__ void __launch_bounds__(FLASH_THREADS)
    attention_flash_hd64(const float* __restrict__ qkv, int qkv_stride, int nh, int nkv,
                         const int* __restrict__ pos_t, const int* __restrict__ table,
                         const int* __restrict__ blocks, const int* __restrict__ tiles,
                         const u16* __restrict__ kc, const u16* __restrict__ vc, float scale,
                         float* __restrict__ out) {
    attend_flash<64>(qkv, qkv_stride, nh, nkv, pos_t, table, blocks, tiles, kc, vc, scale, out);
}

extern "C" __global__ void __launch_bounds__(FLASH_THREADS)
    attention_flash_hd128(const float* __restrict__ qkv, int qkv_stride, int nh, int nkv,
                          const int* __restrict__ pos_t, const int* __restrict__ table,
                          const int* __restrict__ blocks, const int* __restrict__ tiles,
                          const u16* __restrict__ kc, const u16* __restrict__ vc, float scale,
                          float* __restrict__ out) {
    attend_flash<128>(qkv, qkv_stride, nh, nkv, pos_t, table, blocks, tiles, kc, vc, scale, out);
}

// The (head, chunk) that rope_attend ran, for rope_attend_done: kept in shared memory, not in
// registers through the attention (the persistent kernel has none to spare there).
__shared__ int att_item[2];

// Chunk `chunk` (of ATT_CHUNK positions, see attend) of query head h of the one token: the
// body of rope_attention, run by the block's first `nthr` threads (the persistent decode kernel
// runs it with fewer threads than its block has, and the same bits as rope_attention for the
// same nthr). The caller skips chunks past the token's position, and then runs rope_attend_done.
// `sm` is attn_smem(ctx) bytes of shared memory. q, k and v are read through L2 (written by
// other blocks in the same launch there).
template <int MHD, int FIT>
__device__ void rope_attend(int h, int chunk, const float* __restrict__ qkv, int nh, int nkv,
                            int hd, int ctx, const float* __restrict__ inv_freq,
                            const int* __restrict__ pos_t, const int* __restrict__ slot,
                            const int* __restrict__ blocks, u16* kc, u16* vc, float scale,
                            float* __restrict__ out, int nthr, float* sm, float* red) {
    const int half = hd >> 1, group = nh / nkv, kvh = h / group;
    const int pos = pos_t[0], n = pos + 1;
    // The new position's chunk writes it to the caches (other chunks do not read it).
    const bool writes = h % group == 0 && pos < (chunk + 1) * ATT_CHUNK;
    const int qd = nh * hd, kvd = nkv * hd;
    const AttnSmem a(sm, hd);
    float *qs = a.qs, *kn = a.kn, *vn = a.vn;
    int* bt = a.bt;
    // The chunk's block ids, at their own indices, whether the sequence reaches them or not:
    // these loads then wait for nothing, where loading only those below n would wait for pos
    // first, and every load in this kernel's prologue is a memory latency in front of the
    // whole step.
    const int b0 = chunk * (ATT_CHUNK / KV_BLOCK);
    const int b1 = min(ctx / KV_BLOCK, b0 + ATT_CHUNK / KV_BLOCK);
    for (int i = b0 + threadIdx.x; i < b1; i += nthr) bt[i] = blocks[i];
    const float* q = qkv + (size_t)h * hd;
    const float* k = qkv + qd + (size_t)kvh * hd;
    const float* v = qkv + qd + kvd + (size_t)kvh * hd;
    const size_t at = (size_t)slot[0] * kvd + (size_t)kvh * hd;
    for (int i = threadIdx.x; i < half; i += nthr) {
        const float angle = __fmul_rn((float)pos, inv_freq[i]);
        const float c = cosf(angle), s = sinf(angle);
        float x0 = __ldcg(q + i), x1 = __ldcg(q + i + half);
        qs[i] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        qs[i + half] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
        x0 = __ldcg(k + i);
        x1 = __ldcg(k + i + half);
        const u16 a = f2h(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)));
        const u16 b = f2h(__fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s)));
        const u16 va = f2h(__ldcg(v + i)), vb = f2h(__ldcg(v + i + half));
        kn[i] = h2f(a);
        kn[i + half] = h2f(b);
        vn[i] = h2f(va);
        vn[i + half] = h2f(vb);
        if (writes) {
            kc[at + i] = a;
            kc[at + i + half] = b;
            vc[at + i] = va;
            vc[at + i + half] = vb;
        }
    }
    if (threadIdx.x == 0) {
        att_item[0] = h;
        att_item[1] = chunk;
    }
    group_sync(nthr);
    attend<MHD, FIT>(qs, kn, vn, a.sc, a.part, a.ml, red, n, chunk, bt, kvd, kvh, hd, kc, vc,
                     scale, out + (size_t)h * hd, nthr);
}

// After rope_attend of chunk c of head h (sm as there): where the token's positions span
// several chunks, this chunk's record and, by the head's last block, the fold (split mode;
// `rec`: heads x ceil(ctx / ATT_CHUNK) records of hd + 2 floats, `tick`: a counter a head).
// Apart from rope_attend so that its arguments are not held in registers through attention.
__device__ __forceinline__ void rope_attend_done(int hd, int ctx, const int* __restrict__ pos_t,
                                                 float* __restrict__ out, int nthr, float* sm,
                                                 float* rec, unsigned* tick) {
    const int nc = pos_t[0] / ATT_CHUNK + 1;
    if (nc == 1) return;
    const int h = att_item[0], c = att_item[1];
    const AttnSmem a(sm, hd);
    attend_split_done(a.part, a.ml, c, nc,
                      rec + (size_t)h * ((ctx + ATT_CHUNK - 1) / ATT_CHUNK) * (hd + 2),
                      tick + h, hd, out + (size_t)h * hd, nthr);
}

// Decode (one token of one sequence, whose block table is `blocks`: ctx / KV_BLOCK readable
// entries): rope_kv and attention in one kernel, a block per query head. Each block rotates its
// query head and its group's new key (the same operations as rope_kv) into shared memory, with
// the new value rounded to f16 as the cache holds it; the group's first query head writes them
// to the caches, and every block reads position n - 1 from shared memory, not from the cache
// another block is writing. Same bits as rope_kv then attention. Grid (heads, ctx / ATT_CHUNK
// rounded up): a block per chunk of the head's positions (split mode of attend; `rec`: heads x
// chunks records of hd + 2 floats, `tick`: a zeroed counter per head); chunks past the token's
// position have nothing to do.
#define ROPE_ATTENTION_KERNEL(NAME, FIT)                                                       \
    extern "C" __global__ void __launch_bounds__(1024, 1)                                      \
        NAME(const float* __restrict__ qkv, int nh, int nkv, int hd,                          \
                                    int ctx, const float* __restrict__ inv_freq,              \
                                    const int* __restrict__ pos_t,                            \
                                    const int* __restrict__ slot,                             \
                                    const int* __restrict__ blocks, u16* kc, u16* vc,         \
                                    float scale, float* __restrict__ out, float* rec,         \
                                    unsigned* tick) {                                         \
        extern __shared__ float sm[];                                                         \
        __shared__ float red[32];                                                             \
        if ((int)blockIdx.y * ATT_CHUNK > pos_t[0]) return;                                   \
        rope_attend<MAX_HD, FIT>(blockIdx.x, blockIdx.y, qkv, nh, nkv, hd, ctx, inv_freq,     \
                                 pos_t, slot, blocks, kc, vc, scale, out, blockDim.x, sm, red); \
        rope_attend_done(hd, ctx, pos_t, out, blockDim.x, sm, rec, tick);                     \
    }
// Built for head dimension 64, 128, and any (the host picks by the model's).
ROPE_ATTENTION_KERNEL(rope_attention_hd64, 64)
ROPE_ATTENTION_KERNEL(rope_attention_hd128, 128)
ROPE_ATTENTION_KERNEL(rope_attention, -1)

// ggml's quantize_row_q8_0 on one row of `cols` floats (as dense_q8::quantize_activations):
// per 32 values amax, d = f16(amax / 127), q = round_half_even(x * (127 / amax)). One warp per
// block of 32.
extern "C" __global__ void quantize_q8_0(const float* __restrict__ x, int cols,
                                         i8* __restrict__ q, float* __restrict__ d) {
    const int lane = threadIdx.x & 31;
    const int b = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (b * 32 >= cols) return;
    const float v = x[b * 32 + lane];
    const float amax = warp_max(fabsf(v));
    const float id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    q[b * 32 + lane] = (i8)(int)rintf(__fmul_rn(v, id));
    if (lane == 0) d[b] = h2f(f2h(__fdiv_rn(amax, 127.0f)));
}

// logits[r] = dot(Q8_0 row r, the Q8_0-quantized x): per block the exact integer dot times
// d_w * d_x, summed in f32 (ggml_vec_dot_q8_0_q8_0). A warp per row, a block per lane: lane
// l folds blocks l, l + 32, ... into acc = fmaf(d_w * d_x, s, acc) and warp_sum adds the lanes
// (head_q8_0_mma_tile reproduces this order). Warps take rows a grid of warps apart (the host
// launches a few blocks an SM), so each lane loads its activation blocks once, into
// registers, where rows are at most 32 * HEAD_KB blocks: ncu showed the kernel bound by L1
// (94% busy, DRAM 59%) when every row re-read them. Weight blocks are 34 bytes, only 2-byte
// aligned: read from global memory 2 bytes at a time, a warp's 17 loads per block each touch ~9
// cache lines. So when a row is a multiple of 16 bytes (cols a multiple of 256; the head is an
// allocation of its own, 16-byte aligned) and the launch gave a row per warp of dynamic shared
// memory, each warp copies its row there with 16-byte loads and the lanes read their blocks 4
// bytes at a time.
#define HEAD_KB 4

// Block b's integer dot with the activations qx from a staged row's words (see head_q8_0).
__device__ __forceinline__ int head_block_dot(const u32* words, int b, const int* qx, float& dw) {
    // Block b starts at byte 34 b: word 17 b / 2, at its start (b even: the scale is that
    // word's low half, the codes straddle words) or half-way (b odd: the scale is its high
    // half, the codes are the next 8 words). An even block's 9 words run 2 bytes past it,
    // inside the row: rows of whole 16-byte words have nb % 8 == 0, so the last block is odd.
    const u32* bw = words + ((17 * b) >> 1);
    const u32 odd = b & 1;
    u32 wv[9];
#pragma unroll
    for (int i = 0; i < 9; ++i) wv[i] = bw[i];
    dw = h2f((u16)(wv[0] >> (odd << 4)));
    int s = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i)
        s = __dp4a((int)__funnelshift_rc(wv[i], wv[i + 1], 16 + (odd << 4)), qx[i], s);
    return s;
}

// A lane's share of a staged row's dot with the activation blocks it holds in registers
// (blocks lane, lane + 32, ...), in block order: the partial sum that warp_sum adds up.
__device__ __forceinline__ float head_row_lane(const u32* words, int nb, const int (&xq)[HEAD_KB][8],
                                               const float (&xd)[HEAD_KB]) {
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
#pragma unroll
    for (int k = 0; k < HEAD_KB; ++k) {
        const int b = lane + 32 * k;
        if (b >= nb) break;
        float dw;
        const int s = head_block_dot(words, b, xq[k], dw);
        acc = fmaf(__fmul_rn(dw, xd[k]), (float)s, acc);
    }
    return acc;
}

extern "C" __global__ void __launch_bounds__(256, 4)
    head_q8_0(const unsigned char* __restrict__ w, int rows, int cols, const i8* __restrict__ q,
              const float* __restrict__ d, float* __restrict__ out) {
    extern __shared__ __align__(16) unsigned char hrow[];
    const int lane = threadIdx.x & 31, wpb = blockDim.x >> 5;
    const int r0 = blockIdx.x * wpb + (threadIdx.x >> 5), step = gridDim.x * wpb;
    const int nb = cols >> 5, rb = nb * 34;
    u32 smem_bytes;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(smem_bytes));
    if ((rb & 15) == 0 && smem_bytes >= wpb * (u32)rb) {
        unsigned char* slot = hrow + (size_t)(threadIdx.x >> 5) * rb;
        const u32* words = (const u32*)slot;
        // 349 MB a token for 2B4T: through L2 once, without pushing out the KV cache.
        const unsigned long long once = l2_evict_first();
        if (nb <= 32 * HEAD_KB) {
            int xq[HEAD_KB][8];
            float xd[HEAD_KB];
#pragma unroll
            for (int k = 0; k < HEAD_KB; ++k) {
                const int b = lane + 32 * k;
                const int* qx = (const int*)(q + (b < nb ? b : 0) * 32);
#pragma unroll
                for (int i = 0; i < 8; ++i) xq[k][i] = qx[i];
                xd[k] = d[b < nb ? b : 0];
            }
            if (smem_bytes >= 2 * wpb * (u32)rb) {
                // Two slots a warp: the next row's copy (cp.async, no registers) is in flight
                // while this one is multiplied, so a warp always has a row coming in.
                unsigned char* slots = hrow + (size_t)(threadIdx.x >> 5) * 2 * rb;
                auto fetch = [&](int r, int b) {
                    if (r < rows) {
                        const uint4* src = (const uint4*)(w + (size_t)r * rb);
                        uint4* dst = (uint4*)(slots + (size_t)b * rb);
                        for (int i = lane; i < (rb >> 4); i += 32)
                            cp_async16_hint(dst + i, src + i, once);
                    }
                    cp_async_commit();
                };
                fetch(r0, 0);
                int b = 0;
                for (int r = r0; r < rows; r += step, b ^= 1) {
                    fetch(r + step, b ^ 1);
                    cp_async_wait<1>();
                    __syncwarp();
                    float acc = head_row_lane((const u32*)(slots + (size_t)b * rb), nb, xq, xd);
                    // Every lane has read this slot before the next iteration's copy fills it.
                    __syncwarp();
                    acc = warp_sum(acc);
                    if (lane == 0) out[r] = acc;
                }
                cp_async_wait<0>();
                return;
            }
            for (int r = r0; r < rows; r += step) {
                const uint4* src = (const uint4*)(w + (size_t)r * rb);
                for (int i = lane; i < (rb >> 4); i += 32)
                    ((uint4*)slot)[i] = ldg16_hint(src + i, once);
                __syncwarp();
                float acc = head_row_lane(words, nb, xq, xd);
                // Every lane has read the slot before the next row overwrites it.
                __syncwarp();
                acc = warp_sum(acc);
                if (lane == 0) out[r] = acc;
            }
            return;
        }
        for (int r = r0; r < rows; r += step) {
            const uint4* src = (const uint4*)(w + (size_t)r * rb);
            for (int i = lane; i < (rb >> 4); i += 32) ((uint4*)slot)[i] = ldg16_hint(src + i, once);
            __syncwarp();
            float acc = 0.0f;
            for (int b = lane; b < nb; b += 32) {
                float dw;
                const int s = head_block_dot(words, b, (const int*)(q + b * 32), dw);
                acc = fmaf(__fmul_rn(dw, d[b]), (float)s, acc);
            }
            __syncwarp();
            acc = warp_sum(acc);
            if (lane == 0) out[r] = acc;
        }
        return;
    }
    for (int r = r0; r < rows; r += step) {
        const u16* row = (const u16*)(w + (size_t)r * rb);
        float acc = 0.0f;
        for (int b = lane; b < nb; b += 32) {
            const u16* blk = row + b * 17;
            const float dw = h2f(__ldg(blk));
            const int* qx = (const int*)(q + b * 32);
            int s = 0;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int wq =
                    (int)((u32)__ldg(blk + 1 + 2 * i) | ((u32)__ldg(blk + 2 + 2 * i) << 16));
                s = __dp4a(wq, qx[i], s);
            }
            acc = fmaf(__fmul_rn(dw, d[b]), (float)s, acc);
        }
        acc = warp_sum(acc);
        if (lane == 0) out[r] = acc;
    }
}

// logits[r] = dot(row r, x) for F32 / F16 / BF16 rows, f32 accumulation. One warp per row;
// F16 rows whose width is a multiple of 8 are read 16 bytes per lane.
extern "C" __global__ void head_dense(const unsigned char* __restrict__ w, int ty, int rows,
                                      int cols, const float* __restrict__ x,
                                      float* __restrict__ out) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const size_t row_bytes = (size_t)cols * (ty == TY_F32 ? 4 : 2);
    const unsigned char* row = w + (size_t)r * row_bytes;
    float acc = 0.0f;
    int k0 = 0;
    if (ty == TY_F16 && (cols & 7) == 0) {
        const uint4* rv = (const uint4*)row;
        for (int c = lane; c < (cols >> 3); c += 32) {
            const uint4 v = __ldg(rv + c);
            const u32 words[4] = {v.x, v.y, v.z, v.w};
            const float* xk = x + c * 8;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                acc = fmaf(h2f((u16)(words[i] & 0xffffu)), xk[2 * i], acc);
                acc = fmaf(h2f((u16)(words[i] >> 16)), xk[2 * i + 1], acc);
            }
        }
        k0 = cols;
    }
    for (int k = k0 + lane; k < cols; k += 32) acc = fmaf(dense_elem(row, ty, k), x[k], acc);
    acc = warp_sum(acc);
    if (lane == 0) out[r] = acc;
}

// (v, i) beats (bv, bi) if larger, or equal at a smaller index: the first index of the largest
// value whatever the reduction order; NaN never wins (sampler::argmax).
__device__ __forceinline__ bool beats(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

// Block-wide first max of (value, index) pairs over 1024-thread shared arrays.
__device__ void block_argmax(float* bv_s, int* bi_s, float bv, int bi) {
    bv_s[threadIdx.x] = bv;
    bi_s[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (threadIdx.x < s && beats(bv_s[threadIdx.x + s], bi_s[threadIdx.x + s], bv_s[threadIdx.x], bi_s[threadIdx.x])) {
            bv_s[threadIdx.x] = bv_s[threadIdx.x + s];
            bi_s[threadIdx.x] = bi_s[threadIdx.x + s];
        }
        __syncthreads();
    }
}

// Greedy choice, stage 1: the first max of each block's strided share of the logits, to
// pv/pi[blockIdx.x]. Many blocks: one block over a 128K vocabulary took 50 us.
extern "C" __global__ void argmax_partial(const float* __restrict__ logits, int n,
                                          float* __restrict__ pv, int* __restrict__ pi) {
    __shared__ float bv_s[1024];
    __shared__ int bi_s[1024];
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float v = logits[i];
        if (beats(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    block_argmax(bv_s, bi_s, bv, bi);
    if (threadIdx.x == 0) {
        pv[blockIdx.x] = bv_s[0];
        pi[blockIdx.x] = bi_s[0];
    }
}

// Stage 2 (one block): the first max of the `parts` partial results, to id[0] and tokens[0];
// pos0[0] advances by `advance` (the tokens just run), so the next decode step reads its token
// and position from device memory. All logits NaN gives 0, as on the CPU.
extern "C" __global__ void argmax_advance(const float* __restrict__ pv, const int* __restrict__ pi,
                                          int parts, u32* __restrict__ id, u32* __restrict__ tokens,
                                          int* __restrict__ pos0, int advance) {
    __shared__ float bv_s[1024];
    __shared__ int bi_s[1024];
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < parts; i += blockDim.x) {
        if (beats(pv[i], pi[i], bv, bi)) {
            bv = pv[i];
            bi = pi[i];
        }
    }
    block_argmax(bv_s, bi_s, bv, bi);
    if (threadIdx.x == 0) {
        const u32 r = bi_s[0] == 0x7fffffff ? 0u : (u32)bi_s[0];
        id[0] = r;
        tokens[0] = r;
        pos0[0] += advance;
    }
}

// ---- Batches of several rows: the final norm's input, the head, the argmax ----

// out[i] = x[rows[i]] (rows of `cols` floats): the hidden states of the positions that want
// logits, gathered so that one norm kernel and one head pass serve them all. One block per row.
extern "C" __global__ void gather_rows(const float* __restrict__ x, int cols,
                                       const int* __restrict__ rows, float* __restrict__ out) {
    const float* src = x + (size_t)rows[blockIdx.x] * cols;
    float* dst = out + (size_t)blockIdx.x * cols;
    for (int k = threadIdx.x; k < cols; k += blockDim.x) dst[k] = src[k];
}

// Tokens per warp of the many-row Q6_K and dense heads: each weight row is read once for this
// many tokens.
#define HEAD_T 8

// head_q8_0 for `ntok` tokens (their Q8_0 values `cols` apart, scales cols / 32 apart) on int8
// tensor cores: grid (ceil(rows / (16 MT)), ceil(ntok / 64)) (FEW: ceil(ntok / 16)), 128
// threads. A block stages its 16 MT head rows in shared memory once (they are contiguous and, the head being an allocation
// of its own, start 16-byte aligned: 544 MT nb bytes a tile) and its four warps each multiply
// them with 16 tokens, so the head is read from memory once per 64 tokens. Staged, because Q8_0
// blocks are 34 bytes, only 2-byte aligned: a warp's fragment loads would each touch 8 rows'
// cache lines, and the four warps would repeat them. 32 rows a block (MT = 2) where two blocks
// still fit an SM: every activation block a warp loads then feeds 4 mma instead of 2, and the
// activations (64 x 2560 bytes and their scales for the 2B4T head, read by every block) cross
// L2 half as often as with 16 rows, which cost more L2 traffic than the head itself. Dynamic
// shared memory: the tile, 16 bytes (the fragment reads run up to 3 bytes past a row), then each
// warp's activation ring (HMMA_STAGES x HMMA_SLOT bytes).
//
// One Q8_0 block is one k step of mma m16n8k32 (MT x 2 of them for a warp's 16 MT rows and 16
// tokens): the exact int32 block dot of every (row, token), which then goes through head_q8_0's
// float steps in head_q8_0's order, so every logit has the one-row kernel's bits (batch
// invariance). There, lane l folds blocks l, l + 32, ... into a chain acc = fmaf(dw * dx, s,
// acc) and warp_sum adds the 32 chains by xor butterfly: after offsets 16 .. o, lane i < o holds
// T(o, i) = T(2o, i) + T(2o, i + o), T(32, i) = chain i, and the logit is T(1, 0) - a binary
// tree whose leaves, left to right, are the chains in bit-reversed order (0, 16, 8, 24, 4, ...).
// Here a warp runs the chains one at a time in that order, each for its 16 MT x 16 outputs
// (8 MT a lane, in its accumulator fragments' places), so only a few partial sums per output
// wait (a block sweeps its staged rows 32 times from shared memory instead of keeping 32 chains
// per output). Leaves 4m .. 4m + 3 are chains c, c + 16, c + 8, c + 24 (c = bitrev3(m)), whose
// subtree T(8, c) the code spells out; the eight T(8, c) then merge as a binary counter does
// (level j holds the left sibling until the right one is done), each level a fixed set of
// registers: a per-leaf counter with a level index chosen at run time cost moves and predicated
// adds on every leaf, about as much as the block's float work.
//
// FEW (batches of up to 16 tokens, the _few kernels): a block takes 16 tokens and warp w only
// leaves 8w .. 8w + 7, the subtree T(4, bitrev2(w)): chains congruent to bitrev2(w) mod 4, so
// its ring carries every fourth block. Warps 1 - 3 leave their subtrees in shared memory and
// warp 0 adds the tree's top two levels, (S0 + S1) + (S2 + S3). With 16 tokens a warp, such a
// batch kept one warp of four busy, walking all of its tile's blocks alone. NT = 1 (_few8, up
// to 8 tokens): each warp multiplies one n tile, not two.
//
// The mma sums over its 32 k slots in any order, so A and B only need the same assignment of
// elements to slots: as in ternary.cu, lane (gid, tig) takes code bytes 8 tig .. 8 tig + 7 of a
// block (a0 / a2 row gid, a1 / a3 row gid + 8; b0 / b1 its token's activations at the same
// positions: one 8-byte load). Rows past `rows` are zeros in the tile and tokens past `ntok`
// read the last token; neither is stored.
//
// A warp's activations (its 16 tokens' 32 code bytes and scale per block) reach it through a
// ring in shared memory that cp.async fills HMMA_STAGES - 1 blocks ahead in the chains' order:
// from L2, they were the long wait of every k step when loaded one block ahead into registers.
// Each warp fills and reads its own ring (__syncwarp, no block barrier), so the ring's first
// stages load while the tile does.
#define HMMA_TOKENS 64
#define HMMA_STAGES 8
// A ring slot: 16 tokens x 32 code bytes, then their 16 scales, ordered so that lane (gid, tig)
// reads its four (tokens 2 tig, 2 tig + 1, 8 + 2 tig, 9 + 2 tig) as one float4, then 64 spare
// bytes.
#define HMMA_SLOT 640

// v, which the compiler can no longer recompute from what it was computed from.
__device__ __forceinline__ int opaque(int v) {
    asm volatile("" : "+r"(v));
    return v;
}

// An mma accumulator started at I2F_BIAS ends as the bits of the float 1.5 * 2^23 + s, s the
// block dot (below 32 * 128 * 128 = 2^19 in magnitude: the mantissa takes it without carry), so
// that one exact fadd gives (float)s: the same bits as the conversion, which runs at a fraction
// of the fadd rate (8 of them a lane per block).
#define I2F_BIAS 0x4b400000
__device__ __forceinline__ float biased_i2f(int c) {
    return __fsub_rn(__int_as_float(c), 12582912.0f);
}

// NT: n tiles (8 tokens each) a warp multiplies, 2 but in FEW blocks of at most 8 tokens.
template <int MT, bool FEW, int NT>
__device__ __forceinline__ void head_q8_0_mma_tile(const unsigned char* __restrict__ w, int rows,
                                                   int cols, const i8* __restrict__ q,
                                                   const float* __restrict__ d, int ntok,
                                                   float* __restrict__ out) {
    constexpr int R = 16 * MT, N = 4 * MT * NT, S = HMMA_STAGES;
    extern __shared__ __align__(16) unsigned char hs[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int nb = cols >> 5, rb = nb * 34;
    const int r0 = blockIdx.x * R, nr = min(R, rows - r0);
    const int t0 = FEW ? blockIdx.y * 16 : blockIdx.y * HMMA_TOKENS + warp * 16;
    const bool active = t0 < ntok;
    // The leaves this warp computes: all 32, or (FEW) the subtree of leaves 8 warp .. 8 warp + 7.
    const int k0 = FEW ? 8 * warp : 0, k1 = FEW ? k0 + 8 : 32;
    {
        // The whole tile and its 16 bytes of slack, zero past the block's last row.
        const int bytes = nr * rb;
        const unsigned char* src = w + (size_t)r0 * rb;
        for (int o = threadIdx.x * 16; o < R * rb + 16; o += blockDim.x * 16) {
            const int n = max(0, min(16, bytes - o));
            cp_async16_n(hs + o, n > 0 ? src + o : src, (u32)n);
        }
        cp_async_commit();
    }
    const unsigned char* ring = hs + R * rb + 16 + warp * (S * HMMA_SLOT);

    // The ring's producer: lane l copies half of token l / 2's codes and token l % 16's scale
    // (lanes from 16 on to a spare word of the slot: no branch) of block pb, then pb moves on in
    // the chains' order over leaves k0 .. k1 - 1 (pk: its leaf; pb -1: all done). Every call
    // commits a group, empty or not, so that stage i is always group i. Addresses precomputed
    // and opaque: NVVM otherwise rebuilds them, shared window included, in every call.
    const u32 ring_s = smem_u32(hs + R * rb + 16 + warp * (S * HMMA_SLOT));
    const u32 qdst = (u32)opaque((int)ring_s + (lane >> 1) * 32 + (lane & 1) * 16);
    const u32 ddst = (u32)opaque(
        (int)ring_s +
        (lane < 16 ? 512 + 4 * (((lane & 7) >> 1) * 4 + ((lane >> 3) & 1) * 2 + (lane & 1))
                   : 512 + 64 + 4 * (lane & 15)));
    const i8* qp = q + (u32)opaque(min(t0 + (lane >> 1), ntok - 1) * cols + (lane & 1) * 16);
    const float* dp = d + (u32)opaque(min(t0 + (lane & 15), ntok - 1) * nb);
    auto chain_of = [](int k) { return (int)(__brev((u32)k) >> 27); };
    int pk = k0 - 1, pb = -1;
    auto next_chain = [&]() {
        do ++pk;
        while (pk < k1 && chain_of(pk) >= nb);
        pb = pk < k1 ? chain_of(pk) : -1;
    };
    next_chain();
    auto produce = [&](int slot) {
        if (pb >= 0) {
            const u32 so = (u32)slot * HMMA_SLOT;
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(qdst + so),
                         "l"(qp + pb * 32)
                         : "memory");
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(ddst + so),
                         "l"(dp + pb)
                         : "memory");
            pb += 32;
            if (pb >= nb) next_chain();
        }
        cp_async_commit();
    };
    if (active) {
        for (int i = 0; i < S - 1; ++i) produce(i);
        cp_async_wait<S - 1>();  // the tile
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();
    if (!active) return;

    // This lane's A fragment bytes of block 0, and its rows' scale: the MT x 2 row halves lie
    // 8 rb apart, a multiple of 4, so one alignment serves all. Offsets (int32 is enough:
    // head_rows checks tokens * cols) made opaque: NVVM otherwise recomputes them in the loop.
    const int rlo = opaque(gid * rb), alo = opaque(gid * rb + 2 + 8 * tig);
    // Row half h of the lane's fragment lies h * 8 rb further: warp-uniform, so not opaque (a
    // uniform register folds it into the loads' addresses).
    int dlt[2 * MT];
#pragma unroll
    for (int h = 0; h < 2 * MT; ++h) dlt[h] = h * 8 * rb;
    const int bo = 16 * tig, bx = 8 * tig + gid * 32;

    // Chain c of the outputs into acc; the ring's stage st is the next block.
    int st = 0;
    auto chain = [&](int c, float(&acc)[N]) {
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] = 0.0f;
        for (int b = c; b < nb; b += 32) {
            cp_async_wait<S - 2>();
            __syncwarp();
            produce((st + S - 1) & (S - 1));
            const unsigned char* sl = ring + (st & (S - 1)) * HMMA_SLOT;
            ++st;
            const uint2 bq0 = *(const uint2*)(sl + bx), bq1 = *(const uint2*)(sl + bx + 256);
            const float4 dx = *(const float4*)(sl + 512 + bo);
            const int ob = b * 34, o = alo + ob;
            const unsigned char* pa = hs + (o & ~3);
            const unsigned char* pd = hs + rlo + ob;
            const u32 sh = (o & 2) * 8;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                u32 a[4];
#pragma unroll
                for (int g = 0; g < 2; ++g) {
                    const u32* p = (const u32*)(pa + dlt[2 * mt + g]);
                    const u32 w0 = p[0], w1 = p[1], w2 = p[2];
                    a[g] = __funnelshift_r(w0, w1, sh);
                    a[g + 2] = __funnelshift_r(w1, w2, sh);
                }
                const float dlo = h2f(*(const u16*)(pd + dlt[2 * mt]));
                const float dhi = h2f(*(const u16*)(pd + dlt[2 * mt + 1]));
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    const uint2 bq = j ? bq1 : bq0;
                    const float x0 = j ? dx.z : dx.x, x1 = j ? dx.w : dx.y;
                    int s[4] = {I2F_BIAS, I2F_BIAS, I2F_BIAS, I2F_BIAS};
                    mma_s8(s, a[0], a[1], a[2], a[3], bq.x, bq.y);
                    float* v = acc + 4 * (NT * mt + j);
                    v[0] = fmaf(__fmul_rn(dlo, x0), biased_i2f(s[0]), v[0]);
                    v[1] = fmaf(__fmul_rn(dlo, x1), biased_i2f(s[1]), v[1]);
                    v[2] = fmaf(__fmul_rn(dhi, x0), biased_i2f(s[2]), v[2]);
                    v[3] = fmaf(__fmul_rn(dhi, x1), biased_i2f(s[3]), v[3]);
                }
            }
        }
    };

    // g, x, y [4 (NT mt + j) + h]: row 16 mt + gid + 8 (h / 2), token t0 + 8j + 2 tig + h % 2.
    // pend[l]: the parked subtree of level 3 + l.
    float g[N], x[N], y[N], pend[3][N];
#pragma unroll
    for (int l = 0; l < 3; ++l)
#pragma unroll
        for (int i = 0; i < N; ++i) pend[l][i] = 0.0f;
    // g = T(8, c), c = bitrev3(m): leaves 4m .. 4m + 3.
    auto quad = [&](int m) {
        const int c = (int)(__brev((u32)m) >> 29);
        chain(c, x);
        chain(c + 16, y);
#pragma unroll
        for (int i = 0; i < N; ++i) g[i] = __fadd_rn(x[i], y[i]);
        chain(c + 8, x);
        chain(c + 24, y);
#pragma unroll
        for (int i = 0; i < N; ++i) g[i] = __fadd_rn(g[i], __fadd_rn(x[i], y[i]));
    };
    if constexpr (FEW) {
        // Leaves 8 warp .. 8 warp + 7 are chains = bitrev2(warp) mod 4 (so the warp's ring walks
        // only every fourth block): g = T(4, bitrev2(warp)) = T(8, c) + T(8, c + 4).
        // A loop, not two calls: one copy of quad's four chain loops.
#pragma unroll 1
        for (int m = 2 * warp; m < 2 * warp + 2; ++m) {
            quad(m);
            if (m & 1) {
#pragma unroll
                for (int i = 0; i < N; ++i) g[i] = __fadd_rn(pend[0][i], g[i]);
            } else {
#pragma unroll
                for (int i = 0; i < N; ++i) pend[0][i] = g[i];
            }
        }
        // The root is (S0 + S1) + (S2 + S3), S_w warp w's subtree: warps 1 - 3 hand theirs to
        // warp 0 through their own rings, whose copies have all landed (each filled stage was
        // waited for and read; the later groups are empty), once every lane of the warp is past
        // its last read of them.
        float* xs = (float*)(hs + R * rb + 16);
        __syncwarp();
        if (warp > 0) {
#pragma unroll
            for (int i = 0; i < N; ++i) xs[warp * (S * HMMA_SLOT / 4) + i * 32 + lane] = g[i];
        }
        __syncthreads();
        if (warp > 0) return;
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const float* o = xs + i * 32 + lane;
            g[i] = __fadd_rn(__fadd_rn(g[i], o[S * HMMA_SLOT / 4]),
                             __fadd_rn(o[2 * (S * HMMA_SLOT / 4)], o[3 * (S * HMMA_SLOT / 4)]));
        }
    } else {
        for (int m = 0; m < 8; ++m) {
            quad(m);
            // g = T(8, c): merge it up while it completes a right sibling (bit l of m set), then
            // park it. After m = 7, g is the root.
            const int ones = __ffs(~m) - 1;
            if (ones == 0) {
#pragma unroll
                for (int i = 0; i < N; ++i) pend[0][i] = g[i];
            } else if (ones == 1) {
#pragma unroll
                for (int i = 0; i < N; ++i) pend[1][i] = __fadd_rn(pend[0][i], g[i]);
            } else if (ones == 2) {
#pragma unroll
                for (int i = 0; i < N; ++i)
                    pend[2][i] = __fadd_rn(pend[1][i], __fadd_rn(pend[0][i], g[i]));
            } else {
#pragma unroll
                for (int i = 0; i < N; ++i)
                    g[i] = __fadd_rn(pend[2][i],
                                     __fadd_rn(pend[1][i], __fadd_rn(pend[0][i], g[i])));
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int h = 0; h < 4; ++h) {
                const int r = r0 + 16 * mt + gid + 8 * (h >> 1);
                const int t = t0 + 8 * j + 2 * tig + (h & 1);
                if (r < rows && t < ntok) out[(size_t)t * rows + r] = g[4 * (NT * mt + j) + h];
            }
}

// head_q8_0_mma_tile<row tiles, few, n tiles> under a name (BOUNDS: __launch_bounds__'s args).
#define HEAD_Q8_0_MMA_KERNEL(NAME, MT, FEW, NT, BOUNDS)                                        \
    extern "C" __global__ void __launch_bounds__ BOUNDS NAME(                                  \
        const unsigned char* __restrict__ w, int rows, int cols, const i8* __restrict__ q,      \
        const float* __restrict__ d, int ntok, float* __restrict__ out) {                      \
        head_q8_0_mma_tile<MT, FEW, NT>(w, rows, cols, q, d, ntok, out);                       \
    }

// 32 rows a block: where two blocks' shared memory fits an SM (up to 2,784 columns); 16 rows a
// block for wider heads.
HEAD_Q8_0_MMA_KERNEL(head_q8_0_mma, 2, false, 2, (128))
HEAD_Q8_0_MMA_KERNEL(head_q8_0_mma16, 1, false, 2, (128, 1))
// 9 - 16 tokens, where head_q8_0_mma would leave 3 of 4 warps idle: a block takes 16 tokens and
// its warps split the 32 leaves of the sum instead, so a block spends about a quarter as long on
// its tile.
HEAD_Q8_0_MMA_KERNEL(head_q8_0_mma_few, 2, true, 2, (128))
HEAD_Q8_0_MMA_KERNEL(head_q8_0_mma16_few, 1, true, 2, (128, 1))
// 2 - 8 tokens: half the mma and float work (a run-time skip of the second n tile put a branch
// between the mma, which then no longer overlapped).
HEAD_Q8_0_MMA_KERNEL(head_q8_0_mma_few8, 2, true, 1, (128))
HEAD_Q8_0_MMA_KERNEL(head_q8_0_mma16_few8, 1, true, 1, (128, 1))

// ---- Q6_K head: llama.cpp's default type for the output tensor of its TQ1_0 / TQ2_0 files ----
//
// A Q6_K block (bitnet_quantization::q6_k) holds 256 weights in 210 bytes: ql[128] (low 4 bits
// of the 6-bit codes), qh[64] (high 2 bits), 16 int8 sub-block scales, then f16 d. As on the
// CPU (bitnet-kernels dense.rs), each token's activations are quantized once to Q8_K (256 int8
// codes and an f32 scale per block), and a row is dotted as `scalar::q6_k_dot` (the AVX2
// `ggml_vec_dot_q6_K_q8_K`) does it: per block eight exact i32 lanes, lane n summing
// scale[e / 16] * (code[e] - 32) * q8[e] over the elements e with (e % 32) / 4 == n; per lane
// acc_n = fma(d_x * d_w, lane_n, acc_n), block after block; at the end
// ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)). The same IEEE operations in the same order,
// so the logits are the CPU's bits given the same input.

#define Q6K_BYTES 210

// ggml's nearest_int (q6_k::nearest_int): round half to even through the bits of x + 1.5 * 2^23.
// A NaN gives 0, as on the CPU: x86 and ARM produce and propagate quiet NaNs whose low mantissa
// bits are zero, while the GPU's canonical NaN has them all set.
__device__ __forceinline__ int q8k_nearest_int(float x) {
    if (x != x) return 0;
    return (__float_as_int(__fadd_rn(x, 12582912.0f)) & 0x007fffff) - 0x00400000;
}

// quantize_row_q8_K_ref (q6_k::quantize_q8_k_block) on `n` floats, n % 256 == 0 (rows whose
// width is a multiple of 256 quantize as one long row): per block the value of largest
// magnitude, the first one on ties, sign kept (max), iscale = -127 / max,
// q = min(127, nearest_int(iscale * x)), d = 1 / iscale; a block without a nonzero value gives
// zero codes and d = 0 (NaN is never the largest). One warp per block.
extern "C" __global__ void quantize_q8_k(const float* __restrict__ x, int n,
                                         i8* __restrict__ q, float* __restrict__ d) {
    const int lane = threadIdx.x & 31;
    const int b = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (b * 256 >= n) return;
    const float* xb = x + (size_t)b * 256;
    i8* qb = q + (size_t)b * 256;
    float v[8];
    float best = 0.0f;
    int bi = 0x7fffffff;
    // Each lane keeps its first largest (its indices increase), the warp the first overall.
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        v[i] = xb[lane + 32 * i];
        const float a = fabsf(v[i]);
        if (a > best) {
            best = a;
            bi = lane + 32 * i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ob > best || (ob == best && oi < bi)) {
            best = ob;
            bi = oi;
        }
    }
    if (best == 0.0f) {
#pragma unroll
        for (int i = 0; i < 8; ++i) qb[lane + 32 * i] = 0;
        if (lane == 0) d[b] = 0.0f;
        return;
    }
    const float iscale = __fdiv_rn(-127.0f, xb[bi]);
#pragma unroll
    for (int i = 0; i < 8; ++i)
        qb[lane + 32 * i] = (i8)min(127, q8k_nearest_int(__fmul_rn(iscale, v[i])));
    if (lane == 0) d[b] = __fdiv_rn(1.0f, iscale);
}

// A u32 of a Q6_K block (blocks are 210 bytes, so 2-byte aligned) from two u16 loads.
__device__ __forceinline__ u32 q6k_u32(const u16* p) {
    return (u32)__ldg(p) | ((u32)__ldg(p + 1) << 16);
}

// Rows of the Q6_K head against NT tokens' Q8_K activations (token t0 + t's codes at
// q + (t0 + t) * cols, its scales at d + (t0 + t) * (cols / 256)); nt <= NT of them are real.
// One warp per row: its lanes take four blocks at a time, eight lanes a block, lane n of a
// block computing the CPU's integer lane n of it (both halves of the block: 32 elements, 8
// dp4a); then lane n folds the four blocks' lane-n sums into its accumulator in block order,
// and the eight accumulators are summed as hsum8. Every token's sum runs in this one order,
// so the one-token and many-token kernels give the same bits.
template <int NT>
__device__ __forceinline__ void head_q6_k_rows(const unsigned char* __restrict__ w, int rows,
                                               int cols, const i8* __restrict__ q,
                                               const float* __restrict__ d, int t0, int nt,
                                               float* __restrict__ out) {
    const int lane = threadIdx.x & 31, slot = lane >> 3, n = lane & 7;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int nb = cols >> 8;
    const u16* row = (const u16*)(w + (size_t)r * nb * Q6K_BYTES);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int b0 = 0; b0 < nb; b0 += 4) {
        const int b = b0 + slot;
        int s[NT];
        float db[NT];
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            s[t] = 0;
            db[t] = 0.0f;
        }
        if (b < nb) {
            const u16* blk = row + b * (Q6K_BYTES / 2);
            // The signed codes (code - 32) of elements 128h + 32k + 4n + (0..3), four a word,
            // and their sub-block scales scales[8h + 2k + n / 4].
            u32 wq[8];
            int sc[8];
            const i8* scales = (const i8*)(blk + 96) + (n >> 2);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const u32 lo0 = q6k_u32(blk + 32 * h + 2 * n);
                const u32 lo1 = q6k_u32(blk + 32 * h + 16 + 2 * n);
                const u32 hi = q6k_u32(blk + 64 + 16 * h + 2 * n);
                wq[4 * h + 0] = (lo0 & 0x0f0f0f0fu) | ((hi << 4) & 0x30303030u);
                wq[4 * h + 1] = (lo1 & 0x0f0f0f0fu) | ((hi << 2) & 0x30303030u);
                wq[4 * h + 2] = ((lo0 >> 4) & 0x0f0f0f0fu) | (hi & 0x30303030u);
                wq[4 * h + 3] = ((lo1 >> 4) & 0x0f0f0f0fu) | ((hi >> 2) & 0x30303030u);
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    wq[4 * h + k] = __vsub4(wq[4 * h + k], 0x20202020u);
                    sc[4 * h + k] = (int)__ldg(scales + 8 * h + 2 * k);
                }
            }
            const float dw = h2f(__ldg(blk + 104));
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t < nt) {
                    const size_t tt = (size_t)(t0 + t);
                    const int* qx = (const int*)(q + tt * cols + (size_t)b * 256);
                    int sum = 0;
#pragma unroll
                    for (int h = 0; h < 2; ++h)
#pragma unroll
                        for (int k = 0; k < 4; ++k)
                            sum += sc[4 * h + k] * __dp4a((int)wq[4 * h + k], qx[32 * h + 8 * k + n], 0);
                    s[t] = sum;
                    // ggml: d = y[i].d * GGML_FP16_TO_FP32(x[i].d).
                    db[t] = __fmul_rn(d[tt * nb + b], dw);
                }
            }
        }
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int sj = __shfl_sync(0xffffffffu, s[t], 8 * j + n);
                    const float dj = __shfl_sync(0xffffffffu, db[t], 8 * j + n);
                    if (b0 + j < nb) acc[t] = fmaf(dj, (float)sj, acc[t]);
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t < nt) {
            float a[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) a[i] = __shfl_sync(0xffffffffu, acc[t], i);
            if (lane == 0)
                out[(size_t)(t0 + t) * rows + r] =
                    __fadd_rn(__fadd_rn(__fadd_rn(a[0], a[4]), __fadd_rn(a[2], a[6])),
                              __fadd_rn(__fadd_rn(a[1], a[5]), __fadd_rn(a[3], a[7])));
        }
    }
}

// logits[r] = dot(Q6_K row r, the Q8_K-quantized x) for one token. One warp per row.
extern "C" __global__ void head_q6_k(const unsigned char* __restrict__ w, int rows, int cols,
                                     const i8* __restrict__ q, const float* __restrict__ d,
                                     float* __restrict__ out) {
    head_q6_k_rows<1>(w, rows, cols, q, d, 0, 1, out);
}

// head_q6_k for `ntok` tokens (their Q8_K values `cols` apart, scales cols / 256 apart): grid
// (rows / warps, ntok / HEAD_T), each weight row unpacked once for HEAD_T tokens.
extern "C" __global__ void head_q6_k_many(const unsigned char* __restrict__ w, int rows,
                                          int cols, const i8* __restrict__ q,
                                          const float* __restrict__ d, int ntok,
                                          float* __restrict__ out) {
    const int t0 = blockIdx.y * HEAD_T;
    head_q6_k_rows<HEAD_T>(w, rows, cols, q, d, t0, min(HEAD_T, ntok - t0), out);
}

// x[t] = Q6_K embedding row tokens[t] (a tied Q6_K head is also the token embedding), as
// q6_k::decode_block: (d * scale) * (code - 32), two f32 products. One block per token.
extern "C" __global__ void embed_rows_q6_k(const unsigned char* __restrict__ table,
                                           long long row_bytes, int cols,
                                           const u32* __restrict__ tokens,
                                           float* __restrict__ x) {
    const int t = blockIdx.x;
    const unsigned char* row = table + (size_t)tokens[t] * (size_t)row_bytes;
    for (int k = threadIdx.x; k < cols; k += blockDim.x) {
        const unsigned char* blk = row + (size_t)(k >> 8) * Q6K_BYTES;
        const int e = k & 255, h = e >> 7, kk = (e >> 5) & 3, l = e & 31;
        const int lo = blk[64 * h + 32 * (kk & 1) + l] >> (4 * (kk >> 1)) & 0xf;
        const int hi = (blk[128 + 32 * h + l] >> (2 * kk)) & 3;
        const float dw = h2f((u16)(blk[208] | (blk[209] << 8)));
        const float s = (float)(i8)blk[192 + (e >> 4)];
        x[(size_t)t * cols + k] = __fmul_rn(__fmul_rn(dw, s), (float)((lo | (hi << 4)) - 32));
    }
}

// head_dense for `ntok` tokens (x rows `cols` apart), in head_dense's summation order per
// token (same bits). Grid (rows / warps, ntok / HEAD_T).
extern "C" __global__ void head_dense_many(const unsigned char* __restrict__ w, int ty, int rows,
                                           int cols, const float* __restrict__ x, int ntok,
                                           float* __restrict__ out) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int t0 = blockIdx.y * HEAD_T, nt = min(HEAD_T, ntok - t0);
    const size_t row_bytes = (size_t)cols * (ty == TY_F32 ? 4 : 2);
    const unsigned char* row = w + (size_t)r * row_bytes;
    const float* xt = x + (size_t)t0 * cols;
    float acc[HEAD_T];
#pragma unroll
    for (int t = 0; t < HEAD_T; ++t) acc[t] = 0.0f;
    int k0 = 0;
    if (ty == TY_F16 && (cols & 7) == 0) {
        const uint4* rv = (const uint4*)row;
        for (int c = lane; c < (cols >> 3); c += 32) {
            const uint4 v = __ldg(rv + c);
            const u32 words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int t = 0; t < HEAD_T; ++t) {
                if (t < nt) {
                    const float* xk = xt + (size_t)t * cols + c * 8;
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        acc[t] = fmaf(h2f((u16)(words[i] & 0xffffu)), xk[2 * i], acc[t]);
                        acc[t] = fmaf(h2f((u16)(words[i] >> 16)), xk[2 * i + 1], acc[t]);
                    }
                }
            }
        }
        k0 = cols;
    }
    for (int k = k0 + lane; k < cols; k += 32) {
        const float wk = dense_elem(row, ty, k);
#pragma unroll
        for (int t = 0; t < HEAD_T; ++t)
            if (t < nt) acc[t] = fmaf(wk, xt[(size_t)t * cols + k], acc[t]);
    }
#pragma unroll
    for (int t = 0; t < HEAD_T; ++t) {
        if (t < nt) {
            const float a = warp_sum(acc[t]);
            if (lane == 0) out[(size_t)(t0 + t) * rows + r] = a;
        }
    }
}

// Greedy choice for many rows at once: ids[row] = the first index of the largest of the first
// n logits of row blockIdx.x (rows `stride` floats apart); NaN never wins, all NaN gives 0.
// One block of 1024 threads per row (block_argmax's shared arrays).
extern "C" __global__ void argmax_rows(const float* __restrict__ logits, long long stride, int n,
                                       u32* __restrict__ ids) {
    __shared__ float bv_s[1024];
    __shared__ int bi_s[1024];
    const float* l = logits + (size_t)blockIdx.x * (size_t)stride;
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    // Eight loads in flight before the comparisons (in index order, as one at a time): with
    // one, each of a thread's ~125 logits (128,256-entry vocabulary) waited a memory latency,
    // 58 us a step at any batch size.
    constexpr int U = 8;
    int i = threadIdx.x;
    for (; i + (U - 1) * (int)blockDim.x < n; i += U * blockDim.x) {
        float v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) v[u] = l[i + u * blockDim.x];
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (beats(v[u], i + u * blockDim.x, bv, bi)) {
                bv = v[u];
                bi = i + u * blockDim.x;
            }
    }
    for (; i < n; i += blockDim.x) {
        const float v = l[i];
        if (beats(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    block_argmax(bv_s, bi_s, bv, bi);
    if (threadIdx.x == 0) ids[blockIdx.x] = bi_s[0] == 0x7fffffff ? 0u : (u32)bi_s[0];
}

// ---------------------------------------------------------------------------------------------
// Persistent decode step: every layer of one token of one sequence in one launch.
//
// A decode step as separate kernels is ~150 launches of a few microseconds each, most of it
// fixed cost (launch, the ramp to full occupancy, a memory latency chain in each prologue):
// the weights alone would take ~120 us at the H200's bandwidth. Here one block per SM (launched
// cooperatively, so all are resident) runs the layers' five stages - q/k/v, RoPE + attention,
// o, gate/up, down - with a grid-wide barrier between stages, and streams the next stage's
// weight rows into shared memory (cp.async) while it computes the current one, so a stage's
// weights are already on chip when its barrier opens.
//
// Every block owns a contiguous slice of each matrix's rows (the same slice of o and down, so
// the residual rows a block adds into are only ever written by it). Each stage's norm + int8
// quantization is norm_quant_row with the block's 1024 threads, as norm_ternary_t1, and the
// attention is rope_attend with ATTN threads, as rope_attention: the same bits as the fused
// kernels, which are the same bits as the batched ones.

// Copies `bytes` (a multiple of 16) from global `src` to shared `dst` asynchronously, then
// commits them as one cp.async group (an empty group when bytes is 0, so that every stage
// commits exactly one group and cp.async.wait_group 1 always means "all but the newest").
// Then `n` floats of `scales` after them (at dst + bytes, 16-byte aligned) and `nc` floats of
// `nw` at dst + nw_at, 4 bytes a copy. With `src2` (gate/up's pairs), a second part of as many
// rows follows each: its rows after the first's, its scales after the first's.
__device__ __forceinline__ void stage_rows(unsigned char* dst, const unsigned char* src,
                                           size_t bytes, const float* scales, int n,
                                           const unsigned char* src2, const float* scales2,
                                           const float* nw, int nc, int nw_at) {
    const int parts = src2 ? 2 : 1;
    const unsigned long long once = l2_evict_first();
    for (size_t o = (size_t)threadIdx.x * 16; o < bytes; o += (size_t)blockDim.x * 16)
        cp_async16_hint(dst + o, src + o, once);
    if (src2)
        for (size_t o = (size_t)threadIdx.x * 16; o < bytes; o += (size_t)blockDim.x * 16)
            cp_async16_hint(dst + bytes + o, src2 + o, once);
    unsigned char* sd = dst + parts * bytes;
    for (int i = threadIdx.x; i < n; i += blockDim.x) cp_async4(sd + 4 * i, scales + i);
    if (src2)
        for (int i = threadIdx.x; i < n; i += blockDim.x) cp_async4(sd + 4 * (n + i), scales2 + i);
    for (int i = threadIdx.x; i < nc; i += blockDim.x) cp_async4(dst + nw_at + 4 * i, nw + i);
    cp_async_commit();
}

// Waits for every cp.async group but the newest, then publishes them to the whole block.
__device__ __forceinline__ void wait_staged() {
    cp_async_wait<1>();
    __syncthreads();
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// Grid-wide barrier k (1, 2, ... within a launch; all blocks resident: cooperative launch).
// bar[0] counts every arrival of every launch and is never reset; bar[1] is its value when
// the last launch ended (stored by block 0 after the last barrier, when every block has read
// it), so barrier k is open once bar[0] reaches base + k * grid. An arrival is one
// fire-and-forget release add; the wait, acquire loads of one word. The release (after the
// block's barrier, cumulative over what its threads wrote) and the acquire make every block's
// writes before the barrier visible to every block after it (readers use L2 loads: see
// ldcg4). Counts wrap at 2^32: compared as a signed difference.
__device__ __forceinline__ void grid_barrier(unsigned* bar, unsigned base, unsigned k) {
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(bar) : "memory");
        const unsigned target = base + k * gridDim.x;
        while ((int)(ld_acquire(bar) - target) < 0) {
        }
    }
    __syncthreads();
}

// staged_rows with L lanes a row (32 / L rows a warp at once): lane j of a row takes chunks
// j, j + L, ... With `gate` (gate/up's pairs: a relu2 or silu mode), [r0, r1) are rows of the
// gate half, staged as r1 - r0 gate rows then the same rows of the up half: local row 2i is
// gate row r0 + i and 2i + 1 its up row, on neighbouring lane groups of one warp, and the
// gate's lanes write gate_value(g, u) to out[r0 + i] - what the down stage's norm would
// otherwise compute in every block from both halves (the same operations on the same floats:
// the same bits).
template <int L>
__device__ __forceinline__ void staged_rows_l(const unsigned char* ws, int r0, int r1,
                                              int row_bytes, const i8* qs, int sum, float s,
                                              float* out, float* own, int gate) {
    constexpr int G = 32 / L;
    const int lane = threadIdx.x & 31, sub = lane % L, warps = blockDim.x >> 5;
    const int chunks = row_bytes >> 4, n = r1 - r0, total = gate ? 2 * n : n;
    const float* wscale = (const float*)(ws + (size_t)total * row_bytes);
    for (int rg = (threadIdx.x >> 5) * G; rg < total; rg += warps * G) {
        const int i = rg + lane / L;
        const int lr = gate ? ((i & 1) ? n + (i >> 1) : i >> 1) : i;
        int acc = 0;
        if (i < total) {
            const uint4* wr = (const uint4*)(ws + (size_t)lr * row_bytes);
            for (int c = sub; c < chunks; c += L) {
                const uint4 wv = wr[c];
                const u32 words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
                for (int g = 0; g < 4; ++g) {
                    const int shift = 6 - 2 * g;
                    const int4 qv = *(const int4*)(qs + ((g * chunks + c) << 4));
                    acc = __dp4a((int)((words[0] >> shift) & 0x03030303u), qv.x, acc);
                    acc = __dp4a((int)((words[1] >> shift) & 0x03030303u), qv.y, acc);
                    acc = __dp4a((int)((words[2] >> shift) & 0x03030303u), qv.z, acc);
                    acc = __dp4a((int)((words[3] >> shift) & 0x03030303u), qv.w, acc);
                }
            }
        }
#pragma unroll
        for (int o = L / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        const float yv = i < total ? __fmul_rn(__fdiv_rn((float)(acc - sum), s), wscale[lr]) : 0.0f;
        if (gate) {
            // G is even and rg a multiple of G: a pair never straddles two warps' rows.
            const float u = __shfl_down_sync(0xffffffffu, yv, L);
            if (i < total && sub == 0 && (i & 1) == 0)
                __stcg(out + r0 + (i >> 1), gate_value(yv, u, gate));
        } else if (i < total && sub == 0) {
            const int r = r0 + i;
            if (own) {
                const float v = __fadd_rn(own[i], yv);
                own[i] = v;
                __stcg(out + r, v);
            } else {
                __stcg(out + r, yv);
            }
        }
    }
}

// Rows [r0, r1) of a ternary matrix staged in shared memory (`ws`, row r at (r - r0) *
// row_bytes, then the rows' scales) times the block's int8 row `qs` in chunk-major order
// (perm_index; sum `sum`, scale `s`), with norm_ternary_t1's epilogue; outputs through L2
// (other blocks read them after the barrier). With `own` (the block's copy of its rows of the
// residual stream) the outputs are added to them, and the sums stored to both. A row takes 8
// or 32 lanes, whichever ends the block's rows in fewer steps of its slowest warp: ~105 rows
// of 40 chunks of gate/up a block take 8 lanes a row (5 steps; with 32 lanes, 8 steps with a
// quarter of the lanes busy in every second one), ~20 rows of 108 chunks of down 32. The
// integer dot is exact in any grouping: the same bits whichever runs.
__device__ __forceinline__ void staged_rows(const unsigned char* ws, int r0, int r1,
                                            int row_bytes, const i8* qs, int sum, float s,
                                            float* out, float* own, int gate) {
    const int n = r1 - r0, chunks = row_bytes >> 4, warps = blockDim.x >> 5;
    const int s8 = ((n + 3) / 4 + warps - 1) / warps * ((chunks + 7) / 8);
    const int s32 = (n + warps - 1) / warps * ((chunks + 31) / 32);
    // Pairs need both rows in one warp: 8 lanes a row.
    if (gate || s8 < s32)
        staged_rows_l<8>(ws, r0, r1, row_bytes, qs, sum, s, out, own, gate);
    else
        staged_rows_l<32>(ws, r0, r1, row_bytes, qs, sum, s, out, own, 0);
}

// Per-layer pointers in the descriptor array (DECODE_PTRS u64 each, in this order).
#define D_ATTN_NORM 0
#define D_QKV 1
#define D_QKV_SCALE 2
#define D_WO 3
#define D_WO_SCALE 4
#define D_ATTN_SUB_NORM 5
#define D_FFN_NORM 6
#define D_GATE_UP 7
#define D_GATE_UP_SCALE 8
#define D_DOWN 9
#define D_DOWN_SCALE 10
#define D_FFN_SUB_NORM 11
#define D_K 12
#define D_V 13
#define DECODE_PTRS 14
// The most rows of the residual stream one block owns (ceil(hidden / grid); checked by the host).
#define DECODE_OWN_ROWS 64
// The largest head_dim the persistent kernel takes (fewer registers for attention than MAX_HD).
#define DECODE_MAX_HD 128

// Block 0's clock at point i of the step (`prof` null: off): BITNET_CUDA_PROFILE's breakdown of
// each stage into its own work and its wait at the barrier.
__device__ __forceinline__ void stamp(unsigned long long* prof, int i) {
    if (prof && blockIdx.x == 0 && threadIdx.x == 0) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        prof[i] = t;
    }
}

// One block's slice of a matrix of `rows` rows: ceil(rows / grid) rows each.
__device__ __forceinline__ void slice_of(int rows, int* r0, int* r1) {
    const int per = (rows + gridDim.x - 1) / gridDim.x;
    *r0 = min(rows, (int)blockIdx.x * per);
    *r1 = min(rows, *r0 + per);
}

// The shapes of a step's matrices: per layer q/k/v (width x h), o (h x qd), gate/up
// (2 ffn x h), down (h x ffn); rb_* are the I2_S row bytes for h, qd and ffn columns.
struct StepDims {
    int nlayers, h, qd, width, ffn, rb_h, rb_q, rb_f;
};

// Matrix m of the step (4 per layer, in order) staged into this block's buffer m % 2: the
// block's rows and their scales (each matrix's scale pointer follows its data pointer in the
// descriptor), and at `wrows` the weights of the norm in front of it (constants, so they need
// not wait for the barrier), one cp.async group (empty past the last matrix).
__device__ __forceinline__ void stage_matrix(const unsigned long long* __restrict__ desc,
                                             const StepDims& d, int m, unsigned char* buf0,
                                             int wbuf, int wrows) {
    size_t bytes = 0;
    const unsigned char* src = nullptr;
    const float* scales = nullptr;
    const unsigned char* src2 = nullptr;
    const float* scales2 = nullptr;
    const float* nw = nullptr;
    int n = 0, nc = 0;
    if (m < 4 * d.nlayers) {
        const unsigned long long* p = desc + (size_t)(m >> 2) * DECODE_PTRS;
        int rows, rb, which;
        switch (m & 3) {
            case 0: rows = d.width, rb = d.rb_h, which = D_QKV; break;
            case 1: rows = d.h, rb = d.rb_q, which = D_WO; break;
            // gate/up by pairs: the block's rows of the gate half, then the same rows of up.
            case 2: rows = d.ffn, rb = d.rb_h, which = D_GATE_UP; break;
            default: rows = d.h, rb = d.rb_f, which = D_DOWN; break;
        }
        int r0, r1;
        slice_of(rows, &r0, &r1);
        src = (const unsigned char*)p[which] + (size_t)r0 * rb;
        bytes = (size_t)(r1 - r0) * rb;
        scales = (const float*)p[which + 1] + r0;
        n = r1 - r0;
        if ((m & 3) == 2) {
            src2 = src + (size_t)d.ffn * rb;
            scales2 = scales + d.ffn;
        }
        // The norm in front of the matrix, and its width.
        const int norm = (m & 3) == 0   ? D_ATTN_NORM
                         : (m & 3) == 1 ? D_ATTN_SUB_NORM
                         : (m & 3) == 2 ? D_FFN_NORM
                                        : D_FFN_SUB_NORM;
        nw = (const float*)p[norm];
        nc = (m & 3) == 1 ? d.qd : (m & 3) == 3 ? d.ffn : d.h;
    }
    stage_rows(buf0 + (size_t)(m & 1) * wbuf, src, bytes, scales, n, src2, scales2, nw, nc, wrows);
}

// The attention stage of decode_layers_long: (query head, chunk) pairs over the grid, the
// heads' first chunks on the first blocks, on the first nthr threads.
__device__ __forceinline__ void decode_attention(const float* __restrict__ qkv, int nh, int nkv,
                                              int hd, int ctx,
                                              const float* __restrict__ inv_freq,
                                              const int* __restrict__ pos_t,
                                              const int* __restrict__ slot,
                                              const int* __restrict__ blocks, u16* kc, u16* vc,
                                              float scale, float* __restrict__ attn, int nthr,
                                              float* sm, float* red, float* rec,
                                              unsigned* tick) {
    const int items = nh * (pos_t[0] / ATT_CHUNK + 1);
    for (int it = blockIdx.x; it < items; it += gridDim.x) {
        // The last item's shared memory is read to the end before this one writes it.
        if (it != (int)blockIdx.x) group_sync(nthr);
        rope_attend<DECODE_MAX_HD, 0>(it % nh, it / nh, qkv, nh, nkv, hd, ctx, inv_freq, pos_t,
                                      slot, blocks, kc, vc, scale, attn, nthr, sm, red);
        rope_attend_done(hd, ctx, pos_t, attn, nthr, sm, rec, tick);
    }
}

// The layers of one decode step (after embed_rows has written x; the head runs after it).
// Grid: at most one block per SM, all resident (cooperative launch); NORM_THREADS threads.
// Dynamic shared memory: two weight buffers of `wbuf` bytes (a block's largest slice of any
// matrix with its scales, then from `wrows` the norm weights), then a region that holds either
// a norm row (max(h, qd, ffn) floats rounded to 4, then the int8 row) or the attention's
// attn_smem(ctx) bytes. `bar`: two zeroed words of this context's own. desc: DECODE_PTRS
// pointers per layer. `arec`, `atick`: the attention's split records and counters, as
// rope_attention's. Two builds: decode_layers for contexts of one attention chunk (ctx <=
// ATT_CHUNK: a block per head, as rope_attention's first chunk), decode_layers_long for any
// (chunks over the grid, the last block of a head folding them). The long build's item loop
// and fold cost ptxas registers that the kernel, at its 64, takes from the matrix stages
// (spills: ~90 us a token at short contexts on the H100), hence the short build.
#define DECODE_LAYERS_PARAMS                                                                    \
    const unsigned long long *__restrict__ desc, int nlayers, int h, int nh, int nkv, int hd,  \
        int ffn, int mode, int rb_h, int rb_q, int rb_f, int ctx, int attn_threads,            \
        const float *__restrict__ inv_freq, float eps, float scale,                            \
        const int *__restrict__ pos_t, const int *__restrict__ slot,                           \
        const int *__restrict__ blocks, float *x, float *qkv, float *attn, float *gate_up,     \
        unsigned *bar, int wbuf, int wrows, float *arec, unsigned *atick,                      \
        unsigned long long *prof
#define DECODE_LAYERS_ARGS                                                                      \
    desc, nlayers, h, nh, nkv, hd, ffn, mode, rb_h, rb_q, rb_f, ctx, attn_threads, inv_freq,   \
        eps, scale, pos_t, slot, blocks, x, qkv, attn, gate_up, bar, wbuf, wrows, arec, atick,  \
        prof
template <bool LONG>
__device__ __forceinline__ void decode_layers_body(DECODE_LAYERS_PARAMS) {
    extern __shared__ __align__(16) unsigned char dsm[];
    __shared__ float red[96];  // norm_quant_row's three slot arrays
    const int qd = nh * hd;
    const StepDims d = {nlayers, h, qd, qd + 2 * nkv * hd, ffn, rb_h, rb_q, rb_f};
    const int maxcols = max(h, max(qd, ffn));
    float* row = (float*)(dsm + 2 * (size_t)wbuf);
    i8* qs = (i8*)(row + ((maxcols + 3) & ~3));
    int r0, r1, sum;
    float s;
    __shared__ unsigned base_s;
    // The block's rows of the residual stream (the o and down outputs it adds to).
    __shared__ float xown[DECODE_OWN_ROWS];
    if (threadIdx.x == 0) base_s = ld_acquire(bar + 1);
    slice_of(h, &r0, &r1);
    for (int i = threadIdx.x; i < r1 - r0; i += blockDim.x) xown[i] = __ldcg(x + r0 + i);
    __syncthreads();
    const unsigned base = base_s;
    unsigned k = 0;

    // Stage `st` of layer l (0 q/k/v, 1 attention, 2 o, 3 gate/up, 4 down) stamps 4 points
    // (BITNET_CUDA_PROFILE): its weights landed, its norm done, its work done, its barrier past.
    auto mark = [&](int l, int st, int i) { stamp(prof, 1 + 20 * l + 4 * st + i); };
    // A matrix stage: out = W . quant(norm(in)) (added to the residual rows with `own`), the
    // block's rows from buffer `buf`, while matrix `next` streams into the other buffer; with
    // `gate`, W is gate/up and `rows` its pairs (see staged_rows_l).
    auto matrix = [&](int l, int st, int next, const float* in, int cols, int nmode, int buf,
                      int rows, int rb, float* out, float* own, int gate) {
        const unsigned char* ws = dsm + (size_t)buf * wbuf;
        const float* nw = (const float*)(ws + wrows);
        const int stride = (cols + 127) & ~127;
        stage_matrix(desc, d, next, dsm, wbuf, wrows);
        wait_staged();
        mark(l, st, 0);
        norm_quant_row(in, cols, nmode, nw, eps, row, nullptr, qs, stride, red, &s, &sum,
                       stride >> 6);
        mark(l, st, 1);
        slice_of(rows, &r0, &r1);
        staged_rows(ws, r0, r1, rb, qs, sum, s, out, own, gate);
        mark(l, st, 2);
        grid_barrier(bar, base, ++k);
        mark(l, st, 3);
    };

    stamp(prof, 0);
    stage_matrix(desc, d, 0, dsm, wbuf, wrows);
    for (int l = 0; l < nlayers; ++l) {
        const unsigned long long* p = desc + (size_t)l * DECODE_PTRS;
        const int m = 4 * l;
        matrix(l, 0, m + 1, x, h, 0, 0, d.width, rb_h, qkv, nullptr, 0);

        // RoPE + attention on the first attn_threads threads: (query head, chunk) pairs, the
        // heads' first chunks on the first blocks.
        mark(l, 1, 0);
        mark(l, 1, 1);
        if constexpr (LONG) {
            if ((int)threadIdx.x < attn_threads)
                decode_attention(qkv, nh, nkv, hd, ctx, inv_freq, pos_t, slot, blocks,
                                 (u16*)p[D_K], (u16*)p[D_V], scale, attn, attn_threads, row, red,
                                 arec, atick);
        } else if ((int)blockIdx.x < nh && (int)threadIdx.x < attn_threads) {
            rope_attend<DECODE_MAX_HD, 0>(blockIdx.x, 0, qkv, nh, nkv, hd, ctx, inv_freq, pos_t,
                                          slot, blocks, (u16*)p[D_K], (u16*)p[D_V], scale, attn,
                                          attn_threads, row, red);
        }
        mark(l, 1, 2);
        grid_barrier(bar, base, ++k);
        mark(l, 1, 3);

        matrix(l, 2, m + 2, attn, qd, 0, 1, h, rb_q, x, xown, 0);
        // gate/up by pairs: gate_up's first ffn floats get the gated activation, which the
        // down stage's norm reads as a plain input.
        matrix(l, 3, m + 3, x, h, 0, 0, ffn, rb_h, gate_up, nullptr, mode);
        matrix(l, 4, m + 4, gate_up, ffn, 0, 1, h, rb_f, x, xown, 0);
    }
    cp_async_wait<0>();
    // Every block is past its read of bar[1] (it arrived at the last barrier).
    if (blockIdx.x == 0 && threadIdx.x == 0) bar[1] = base + k * gridDim.x;
}

extern "C" __global__ void __launch_bounds__(1024, 1) decode_layers(DECODE_LAYERS_PARAMS) {
    decode_layers_body<false>(DECODE_LAYERS_ARGS);
}

extern "C" __global__ void __launch_bounds__(1024, 1) decode_layers_long(DECODE_LAYERS_PARAMS) {
    decode_layers_body<true>(DECODE_LAYERS_ARGS);
}

// ---- Top-k candidates for sampling (bitnet_backend::sampling::top_k) ----
//
// A sampler that keeps only the k most likely tokens needs k candidates, not 128k logits: the
// penalties, the temperature and the selection run here and only k (id, value) pairs go back.
// The selection must be the host's bit for bit: values are sampling::scaled (l / T rounded as
// the CPU divides, NaN as -inf, -0 as +0), ordered by value and then by smaller id.
//
// The packed per-call buffer `meta` (u32 words; backend::TopKScratch writes it):
//   [0, r)      k of each row            [r, 2r)   temperature bits
//   [2r, 3r)    repeat penalty bits      [3r, 4r)  presence bits      [4r, 5r) frequency bits
//   [5r, 6r)    where row i's candidates start in the output (prefix sums of k)
//   [6r, ...)   penalty entries of 4 words: row, token id, in the repeat window (0/1), count

// Larger value -> larger key; equal values (after canonicalization) -> equal keys.
__device__ __forceinline__ u32 top_k_key(float v) {
    const u32 b = __float_as_uint(v);
    return b ^ ((b >> 31) ? 0xffffffffu : 0x80000000u);
}

__device__ __forceinline__ float top_k_scaled(float l, float t) {
    const float v = __fdiv_rn(l, t);
    return v != v ? NEG_INF : __fadd_rn(v, 0.0f);
}

// sampling::Penalties::apply_one on each entry's logit, in place; a thread per entry (each
// (row, id) is listed once, so no two threads write one logit).
extern "C" __global__ void penalize_logits(float* __restrict__ logits, long long stride,
                                           int vocab, const u32* __restrict__ meta, int rows,
                                           int entries) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= entries) return;
    const u32* en = meta + 6 * rows + 4 * e;
    const int r = (int)en[0], id = (int)en[1];
    if (r >= rows || id >= vocab) return;
    float* p = logits + (size_t)r * stride + id;
    float l = *p;
    if (en[2]) {
        const float rp = __uint_as_float(meta[2 * rows + r]);
        l = l > 0.0f ? __fdiv_rn(l, rp) : __fmul_rn(l, rp);
    }
    if (en[3]) {
        const float pp = __uint_as_float(meta[3 * rows + r]);
        const float fp = __uint_as_float(meta[4 * rows + r]);
        l = __fsub_rn(l, __fadd_rn(pp, __fmul_rn(fp, (float)en[3])));
    }
    *p = l;
}

// Block-wide exclusive prefix sum of v (blockDim.x a multiple of 32, at most 1024); `red` is 32
// shared slots; *total gets the sum.
__device__ unsigned long long block_scan_u64(unsigned long long v, unsigned long long* red,
                                             unsigned long long* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    unsigned long long x = v;
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) red[warp] = x;
    __syncthreads();
    unsigned long long before = 0, all = 0;
    for (int w = 0; w < nw; ++w) {
        if (w < warp) before += red[w];
        all += red[w];
    }
    *total = all;
    return before + x - v;
}

// The k best of n (id, value) pairs that get(i) gives for i = 0..n (see above), by this block,
// into ids / vals[0..k) in no particular order (the host sorts k values). Pairs of one value
// must come in increasing id order (the ties with the smallest ids are taken by position). A
// radix select over the 32-bit keys, 8 bits a pass from the top, finds the k-th largest key
// `thr` and how many of its ties to take (`kr`); a last pass in order (each thread a
// contiguous range, ranks from a block-wide prefix sum) writes the keys above thr and the kr
// first ties.
template <class Get>
__device__ void top_k_select(const Get& get, int n, u32 k, u32* __restrict__ ids,
                             float* __restrict__ vals) {
    __shared__ u32 hist[256];
    __shared__ u32 pick[2];
    __shared__ unsigned long long red[32];
    u32 prefix = 0, mask = 0, kr = k;
    for (int pass = 0; pass < 4; ++pass) {
        const int shift = 24 - 8 * pass;
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const u32 key = top_k_key(get(i).y);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            // Lane j holds digits 255 - 8j down to 248 - 8j; counts above them by a scan.
            const int lane = threadIdx.x;
            u32 c = 0;
            for (int b = 0; b < 8; ++b) c += hist[255 - 8 * lane - b];
            u32 incl = c;
            for (int o = 1; o < 32; o <<= 1) {
                const u32 y = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += y;
            }
            u32 above = incl - c;
            if (above < kr && incl >= kr) {
                for (int b = 0; b < 8; ++b) {
                    const int d = 255 - 8 * lane - b;
                    if (above + hist[d] >= kr) {
                        pick[0] = (u32)d;
                        pick[1] = kr - above;
                        break;
                    }
                    above += hist[d];
                }
            }
        }
        __syncthreads();
        prefix |= pick[0] << shift;
        mask |= 0xffu << shift;
        kr = pick[1];
        // Every thread has read pick before the next pass's scan overwrites it.
        __syncthreads();
    }
    const int per = (n + blockDim.x - 1) / blockDim.x;
    const int i0 = min(n, (int)threadIdx.x * per), i1 = min(n, i0 + per);
    u32 g = 0, e = 0;
    for (int i = i0; i < i1; ++i) {
        const u32 key = top_k_key(get(i).y);
        g += key > prefix;
        e += key == prefix;
    }
    unsigned long long total;
    const unsigned long long before =
        block_scan_u64((unsigned long long)g | ((unsigned long long)e << 32), red, &total);
    u32 gi = (u32)(before & 0xffffffffu), ei = (u32)(before >> 32);
    const u32 ties_at = k - kr;
    for (int i = i0; i < i1; ++i) {
        const float2 c = get(i);
        const u32 key = top_k_key(c.y);
        u32 slot = 0xffffffffu;
        if (key > prefix) {
            slot = gi++;
        } else if (key == prefix) {
            if (ei < kr) slot = ties_at + ei;
            ++ei;
        }
        if (slot != 0xffffffffu) {
            ids[slot] = __float_as_uint(c.x);
            vals[slot] = c.y;
        }
    }
}

// Logits l[0..n) as top-k pairs (id first + i, the scaled value), the id's bits in .x.
struct ScaledLogits {
    const float* l;
    float t;
    int first;
    __device__ float2 operator()(int i) const {
        return make_float2(__uint_as_float((u32)(first + i)), top_k_scaled(l[i], t));
    }
};

// Candidate pairs from top_k_split.
struct Candidates {
    const u32* ids;
    const float* vals;
    __device__ float2 operator()(int i) const {
        return make_float2(__uint_as_float(ids[i]), vals[i]);
    }
};

// Block (c, r) selects the k best of chunk c (`chunk` >= k ids from c * chunk) of row r (rows
// `stride` apart, the first `vocab` values of each) into the candidates at (offset of row r) *
// chunks + c * k (the last chunk may hold fewer than k ids: it gives them all). A row of one
// chunk (chunk = vocab) is its own k best: the candidates are then the results. Each chunk's
// list has every value's pairs in increasing id order (top_k_select's last pass writes in id
// order among the keys above its threshold and among its ties), and the chunks follow one
// another in id order, so top_k_merge can take ties by position. The global k best are among
// the chunks' (one beaten by fewer than k overall is beaten by fewer than k in its chunk).
extern "C" __global__ void __launch_bounds__(256) top_k_split(const float* __restrict__ logits,
                                                             long long stride, int vocab,
                                                             const u32* __restrict__ meta,
                                                             int rows, int chunk,
                                                             u32* __restrict__ cand_ids,
                                                             float* __restrict__ cand_vals) {
    const int c = blockIdx.x, r = blockIdx.y, chunks = gridDim.x;
    const u32 k = min(meta[r], (u32)vocab);
    if (k == 0) return;
    const int first = c * chunk, n = min(chunk, vocab - first);
    const size_t at = (size_t)meta[5 * rows + r] * chunks + (size_t)c * k;
    const ScaledLogits get{logits + (size_t)r * stride + first, __uint_as_float(meta[rows + r]),
                           first};
    top_k_select(get, n, min(k, (u32)n), cand_ids + at, cand_vals + at);
}

// One block per row: the k best of top_k_split's candidates of the row into ids / vals at
// meta's offset for the row (the same pairs as one block over the whole row).
extern "C" __global__ void __launch_bounds__(1024) top_k_merge(const u32* __restrict__ meta,
                                                              int rows, int vocab, int chunk,
                                                              int chunks,
                                                              const u32* __restrict__ cand_ids,
                                                              const float* __restrict__ cand_vals,
                                                              u32* __restrict__ ids,
                                                              float* __restrict__ vals) {
    const int r = blockIdx.x;
    const u32 k = min(meta[r], (u32)vocab);
    if (k == 0) return;
    const u32 at = meta[5 * rows + r];
    const size_t from = (size_t)at * chunks;
    // Every chunk gives k pairs but the last, which gives min(k, its ids).
    const int last = vocab - (chunks - 1) * chunk;
    const int n = (chunks - 1) * (int)k + min((int)k, last);
    const Candidates get{cand_ids + from, cand_vals + from};
    top_k_select(get, n, k, ids + at, vals + at);
}
