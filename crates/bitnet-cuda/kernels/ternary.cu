// Ternary (BitNet b1.58) kernels: int8 activation quantization and ternary x int8 matmul.
// Compiled at run time by NVRTC (see compile.rs); plain CUDA C++, no headers.
//
// Weights stay in bitnet.cpp's I2_S row layout, which is already right for 32-bit loads: a
// 128-weight block is 32 bytes, element 32*g + i at byte i, bits 7-2g..6-2g, code = t + 1.
// The 32-bit word at bytes i..i+3 of a block (i % 4 == 0) therefore holds, for each group g,
// the codes of the four consecutive elements 32g+i..32g+i+3, one per byte after
// (word >> (6 - 2g)) & 0x03030303 -- exactly a dp4a operand against the four int8
// activations at the same positions. sum(code * q) - sum(q) is the exact sum(t * q).

typedef unsigned int u32;
typedef signed char i8;

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
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, o));
    if (lane == 0) red_f[warp] = amax;
    __syncthreads();
    if (warp == 0) {
        amax = lane < nwarps ? red_f[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, o));
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
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
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
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
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
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
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
