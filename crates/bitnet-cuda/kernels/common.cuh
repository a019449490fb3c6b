// Definitions both kernel files use, compiled in front of each (compile.rs concatenates them:
// NVRTC has no include path here). Plain CUDA C++, no headers.

typedef unsigned int u32;
typedef unsigned short u16;
typedef signed char i8;

// Sums and maxima over a warp by xor butterfly: lane i adds lane i ^ 16, then ^ 8, ^ 4, ^ 2,
// ^ 1, so every lane ends with the same bits (kernels that must match another kernel's sums
// bit for bit rely on this order).
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ int warp_sum_i(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The shared-memory address of a generic pointer into shared memory, for cp.async.
__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// 16 bytes global -> shared without passing through registers (L2 only: .cg).
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src)
                 : "memory");
}

// An L2 policy that evicts the lines it touches first: for weights, read once a token and never
// again before L2 has turned over many times, so that they do not push out what is read again
// soon (the KV cache, the activations).
__device__ __forceinline__ unsigned long long l2_evict_first() {
    unsigned long long p;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
    return p;
}

// cp_async16 under an L2 policy (l2_evict_first).
__device__ __forceinline__ void cp_async16_hint(void* dst, const void* src,
                                                unsigned long long policy) {
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(
                     smem_u32(dst)),
                 "l"(src), "l"(policy)
                 : "memory");
}

// __ldg of 16 bytes under an L2 policy (l2_evict_first).
__device__ __forceinline__ uint4 ldg16_hint(const uint4* p, unsigned long long policy) {
    uint4 v;
    asm volatile("ld.global.nc.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "l"(policy));
    return v;
}

// 4 bytes global -> shared (.ca: the only cache mode for copies under 16 bytes).
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(dst)), "l"(src)
                 : "memory");
}

// 16 bytes from global to shared, of which only the first `n` are read (the rest zero-filled):
// the last chunk of a buffer whose length is not a multiple of 16.
__device__ __forceinline__ void cp_async16_n(void* dst, const void* src, u32 n) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(n)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most N of this thread's newest cp.async groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// c += A . B on int8 tensor cores, exact in int32: m16n8k32, A row-major (lane (gid, tig) =
// (lane / 4, lane % 4) holds a0 / a2: row gid, k slots 4 tig..+3 / 16 + 4 tig..+3, a1 / a3:
// the same slots of row gid + 8), B column-major (b0 / b1: column gid, the k slots of a0 /
// a2), c[h]: row gid + 8 (h / 2), column 2 tig + h % 2.
__device__ __forceinline__ void mma_s8(int* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
