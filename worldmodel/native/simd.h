// Vectors for fleetwm's native kernel (fused_mlp.cpp): the CPU's widest float vector, the few
// operations the kernel places by hand per instruction set, and elementwise math and normal draws
// to float precision, inlined where libm's scalar calls would cost more than the MLP around them.
#pragma once

#include <cmath>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
constexpr int VW = 16;  // floats per vector register
#else
constexpr int VW = 8;
#endif

typedef float vf __attribute__((vector_size(VW * sizeof(float)), aligned(sizeof(float))));

static inline vf relu(vf v) {
#if defined(__AVX512F__)
    return (vf)_mm512_max_ps((__m512)v, _mm512_setzero_ps());  // one instruction; the generic form takes two
#elif defined(__AVX2__)
    return (vf)_mm256_max_ps((__m256)v, _mm256_setzero_ps());
#else
    return v > 0 ? v : 0;
#endif
}

static inline vf splat(const float* s) {
#if defined(__AVX512F__)
    return (vf)_mm512_set1_ps(*s);  // a broadcast load; the generic form costs a shuffle on the FMA port
#elif defined(__AVX2__)
    return (vf)_mm256_broadcast_ss(s);
#else
    return vf{} + *s;
#endif
}

// The sum of a vector's lanes.
static inline float hsum(vf v) {
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps((__m512)v);
#elif defined(__AVX2__)
    __m128 x = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
#else
    float sum = 0;
    for (int j = 0; j < VW; j++) sum += v[j];
    return sum;
#endif
}

// dst[0 .. n) = src[0 .. n), and dst = a + b: masked vector moves on AVX-512, as the rows moved are
// short (an input part, a state: 2 to 16 floats).
static inline void copy_row(const float* src, float* dst, int n) {
#if defined(__AVX512F__)
    for (; n >= VW; n -= VW, src += VW, dst += VW) _mm512_storeu_ps(dst, _mm512_loadu_ps(src));
    const __mmask16 m = (__mmask16)((1u << n) - 1);
    _mm512_mask_storeu_ps(dst, m, _mm512_maskz_loadu_ps(m, src));
#else
    for (int d = 0; d < n; d++) dst[d] = src[d];
#endif
}

static inline void add_row(const float* a, const float* b, float* dst, int n) {
#if defined(__AVX512F__)
    for (; n >= VW; n -= VW, a += VW, b += VW, dst += VW)
        _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(b)));
    const __mmask16 m = (__mmask16)((1u << n) - 1);
    _mm512_mask_storeu_ps(dst, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a), _mm512_maskz_loadu_ps(m, b)));
#else
    for (int d = 0; d < n; d++) dst[d] = a[d] + b[d];
#endif
}

// Elementwise math for the Gaussian head and the normal draws, to float precision, inlined where
// libm's scalar calls would cost more than the MLP before them. Each function is a long chain of dependent steps, so
// callers run UNROLL independent vectors through each step together to keep the FMA units busy.
constexpr int UNROLL = 2;
constexpr int LANES = UNROLL * VW;
typedef int vi __attribute__((vector_size(VW * sizeof(int))));
typedef unsigned vu __attribute__((vector_size(VW * sizeof(int))));

static inline vf vsqrt(vf v) {
#if defined(__AVX512F__)
    return (vf)_mm512_sqrt_ps((__m512)v);
#elif defined(__AVX2__)
    return (vf)_mm256_sqrt_ps((__m256)v);
#else
    for (int i = 0; i < VW; i++) v[i] = __builtin_sqrtf(v[i]);
    return v;
#endif
}

static inline vf vrcp(vf x) {
#if defined(__AVX512F__)
    vf r = (vf)_mm512_rcp14_ps((__m512)x);
    return r * (2.0f - x * r);  // 14 bits, then one Newton step: 1 / x to float precision
#else
    return 1.0f / x;
#endif
}

static inline vf bits_to_float(vi bits) { vf x; __builtin_memcpy(&x, &bits, sizeof x); return x; }
static inline vi float_to_bits(vf x) { vi bits; __builtin_memcpy(&bits, &x, sizeof bits); return bits; }

// exp(x): x = n ln2 + r, |r| <= ln2 / 2, exp(r) by its Taylor series to r^7 (relative error < 2e-8).
static inline void vexp(vf (&x)[UNROLL]) {
    vi ni[UNROLL];
    vf r[UNROLL], p[UNROLL];
    for (int u = 0; u < UNROLL; u++) {
        vf xu = x[u] < -87.0f ? -87.0f : x[u];
        xu = xu > 88.0f ? 88.0f : xu;
        vf n = xu * 1.44269504088896341f;
        ni[u] = __builtin_convertvector(n + (n < 0 ? -0.5f : 0.5f), vi);  // rounded to the nearest
        vf nf = __builtin_convertvector(ni[u], vf);
        r[u] = xu - nf * 0.693359375f + nf * 2.12194440e-4f;
        p[u] = r[u] * (1.0f / 5040) + 1.0f / 720;
    }
    for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f})
        for (int u = 0; u < UNROLL; u++) p[u] = p[u] * r[u] + c;
    for (int u = 0; u < UNROLL; u++) x[u] = p[u] * bits_to_float((ni[u] + 127) << 23);
}

// log(1 + u) for u in [0, 1]: 2 atanh(s) with s = u / (2 + u) in [0, 1/3], by its series to s^13.
static inline void vlog1p_unit(vf (&x)[UNROLL]) {
    vf s[UNROLL], s2[UNROLL], p[UNROLL];
    for (int u = 0; u < UNROLL; u++) {
        s[u] = x[u] * vrcp(2.0f + x[u]);
        s2[u] = s[u] * s[u];
        p[u] = s2[u] * (1.0f / 13) + 1.0f / 11;
    }
    for (float c : {1.0f / 9, 1.0f / 7, 1.0f / 5, 1.0f / 3, 1.0f})
        for (int u = 0; u < UNROLL; u++) p[u] = p[u] * s2[u] + c;
    for (int u = 0; u < UNROLL; u++) x[u] = 2.0f * s[u] * p[u];
}

// log(x) for normal floats x > 0: x = m 2^k with m in [1, 2), log(m) = log1p(m - 1).
static inline void vlog(vf (&x)[UNROLL]) {
    vf k[UNROLL];
    for (int u = 0; u < UNROLL; u++) {
        vi bits = float_to_bits(x[u]);
        k[u] = __builtin_convertvector(((bits >> 23) & 0xff) - 127, vf);
        x[u] = bits_to_float((bits & 0x007fffff) | 0x3f800000) - 1.0f;
    }
    vlog1p_unit(x);
    for (int u = 0; u < UNROLL; u++) x[u] += k[u] * 0.693147180559945f;
}

// cos(2 pi a): a reduced to [-1/2, 1/2], then y in [0, pi/2] by symmetry, its Taylor series to y^12.
static inline void vcos_turns(vf (&a)[UNROLL]) {
    vf x2[UNROLL], p[UNROLL], flip[UNROLL];
    for (int u = 0; u < UNROLL; u++) {
        vf au = a[u] - __builtin_convertvector(__builtin_convertvector(a[u] + (a[u] < 0 ? -0.5f : 0.5f), vi), vf);
        vf x = (au < 0 ? -au : au) * 6.28318530717959f;  // [0, pi]
        flip[u] = x > 1.5707963267949f ? -1.0f : 1.0f;
        x = x > 1.5707963267949f ? 3.14159265358979f - x : x;
        x2[u] = x * x;
        p[u] = x2[u] * (-1.0f / 479001600) + 1.0f / 3628800;
    }
    for (float c : {-1.0f / 40320, 1.0f / 720, -1.0f / 24, 0.5f})
        for (int u = 0; u < UNROLL; u++) p[u] = p[u] * x2[u] + c;
    for (int u = 0; u < UNROLL; u++) a[u] = flip[u] * (1.0f - p[u] * x2[u]);
}

// Counter-based standard normal draws: element i of the stream keyed by (k1, k2) is Box-Muller's
// cosine draw from two uniforms, each a strong 32-bit integer hash (lowbias32) of its counter.
// A draw depends only on the key and its index, never on tiling or threads. A stream has 2^31
// distinct draws (the counters wrap after that); a rollout step draws E x R x S, far fewer.
static inline vu hash32(vu u) {
    u ^= u >> 16;
    u *= 0x7feb352dU;
    u ^= u >> 15;
    u *= 0x846ca68bU;
    u ^= u >> 16;
    return u;
}

static inline vf uniform_open(vu h) {  // (0, 1) from the 24 high bits
    return (__builtin_convertvector(h >> 8, vf) + 0.5f) * (1.0f / 16777216);
}

// z[u] = draws first + u*VW .. first + (u+1)*VW - 1 of the stream.
static inline void normal(vf (&z)[UNROLL], unsigned first, unsigned k1, unsigned k2) {
    vf radius[UNROLL];
    vu lane;
    for (int j = 0; j < VW; j++) lane[j] = j;
    for (int u = 0; u < UNROLL; u++) {
        const vu c = (lane + (first + u * VW)) * (2 * 0x9e3779b9U);
        radius[u] = uniform_open(hash32(hash32(c + k1) + k2));
        z[u] = uniform_open(hash32(hash32(c + (k1 + 0x9e3779b9U)) + k2));
    }
    vlog(radius);
    vcos_turns(z);
    for (int u = 0; u < UNROLL; u++) z[u] *= vsqrt(-2.0f * radius[u]);
}
