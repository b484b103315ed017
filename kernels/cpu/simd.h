// Vector helpers shared by the CPU kernels (selective_scan.cc, depthwise_conv.cc): GCC / Clang
// vector types, exp / exp2 / log / softplus / silu of each lane, a thread pool per call, and
// software prefetch of strided rows. Everything is in an anonymous namespace: each kernel file
// gets its own copy, and the shared library exports only the FFI handlers.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

#ifdef __linux__
#include <sched.h>
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// The float32 fast paths use GCC / Clang vector extensions and put W adjacent channels in one
// vector: W = 16, one 512-bit register, where the compiler targets AVX-512; else 8 (AVX, or
// two NEON registers on arm64).
using f32x8 = float __attribute__((vector_size(32)));
using i32x8 = int32_t __attribute__((vector_size(32)));
using f32x16 = float __attribute__((vector_size(64)));
using i32x16 = int32_t __attribute__((vector_size(64)));
#if defined(__AVX512F__)
using f32xW = f32x16;
#else
using f32xW = f32x8;
#endif

template <typename V> struct IntOf;
template <> struct IntOf<f32x8> { using type = i32x8; };
template <> struct IntOf<f32x16> { using type = i32x16; };
template <typename V> constexpr int64_t kLanes = sizeof(V) / sizeof(float);

template <typename V> inline V splat(float v) { return V{} + v; }
template <typename V> inline V load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <typename V> inline void store(float* p, V v) { __builtin_memcpy(p, &v, sizeof v); }
// sum of the 8 lanes in a fixed pairwise order (no reassociation by the compiler)
inline float lane_sum(f32x8 v) {
  return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}
inline float lane_sum(f32x16 v) {  // lane i + 8 folded onto lane i first
  f32x8 lo, hi;
  __builtin_memcpy(&lo, &v, sizeof lo);
  __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  return lane_sum(lo + hi);
}

// exp of each lane: 2^k * p(r), x = k ln2 + r, |r| <= ln2 / 2, p the Cephes expf polynomial
// (cephes/single/expf.c), relative error ~1e-7. x is clamped to [-87.3, 88.3] so that 2^k stays
// a normal float: below, ~1e-38 instead of a denormal or 0; above, ~2e38 instead of inf. The
// scan only ever asks for exp(dt A) with dt > 0 and A < 0, i.e. x <= 0.
template <typename V>
inline V vexp(V x) {
  using I = typename IntOf<V>::type;
  x = x < splat<V>(-87.3f) ? splat<V>(-87.3f) : x;
  x = x > splat<V>(88.3f) ? splat<V>(88.3f) : x;
  // k = round(x / ln2): adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
  const V shifted = x * splat<V>(1.44269504088896341f) + splat<V>(12582912.0f);
  const V k = shifted - splat<V>(12582912.0f);
  const I k_int = (I)shifted - 0x4B400000;  // 0x4B400000: the bits of 1.5 * 2^23
  const V r = x - k * splat<V>(0.693359375f) + k * splat<V>(2.12194440e-4f);  // x - k ln2
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + splat<V>(1.3981999507e-3f);
  p = p * r + splat<V>(8.3334519073e-3f);
  p = p * r + splat<V>(4.1665795894e-2f);
  p = p * r + splat<V>(1.6666665459e-1f);
  p = p * r + splat<V>(5.0000001201e-1f);
  p = p * r * r + r + splat<V>(1.0f);
  return p * (V)((k_int + 127) << 23);  // p * 2^k, the exponent bits built directly
}

// The scan's decay a_t = exp(dt_t A) = 2^(dt_t A'), A' = A log2(e) taken once per channel:
// x = k + f, k = round(x), |f| <= 1/2, 2^f a degree-6 polynomial, times 2^k. The coefficients
// were fitted here (least squares on Chebyshev nodes of [-1/2, 1/2], reweighted towards the
// minimax error): relative error <= 1e-7 evaluated in float32, as good as vexp's, in about
// half its instructions, which matters because this is the inner loop's largest cost (N of
// these per time step). x is clamped below at -125, so 2^k stays a normal float (a_t >= ~2e-38
// instead of a denormal or 0); AVX-512 applies 2^k with vscalefps (inf above the float range),
// other targets build 2^k's exponent bits, with x clamped above at 127.
template <typename V>
inline V vexp2_poly(V f) {
  V p = splat<V>(1.5345811e-4f);
  p = p * f + splat<V>(1.3399932e-3f);
  p = p * f + splat<V>(9.6184891e-3f);
  p = p * f + splat<V>(5.5503286e-2f);
  p = p * f + splat<V>(2.4022646e-1f);
  p = p * f + splat<V>(6.9314718e-1f);
  return p * f + splat<V>(1.0f);
}

template <typename V>
inline V vexp2(V x) {
  using I = typename IntOf<V>::type;
  x = x < splat<V>(-125.0f) ? splat<V>(-125.0f) : x;
  x = x > splat<V>(127.0f) ? splat<V>(127.0f) : x;
  const V shifted = x + splat<V>(12582912.0f);  // 1.5 * 2^23: rounds x to an integer
  const V f = x - (shifted - splat<V>(12582912.0f));
  const I exponent = ((I)shifted + (127 - 0x4B400000)) << 23;  // the bits of 2^k
  return vexp2_poly(f) * (V)exponent;
}

#if defined(__AVX512F__)
template <>
inline f32x16 vexp2(f32x16 x) {
  const __m512 xc = _mm512_max_ps((__m512)x, _mm512_set1_ps(-125.0f));
  const __m512 k = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return (f32x16)_mm512_scalef_ps((__m512)vexp2_poly((f32x16)_mm512_sub_ps(xc, k)), k);
}
#endif

// log(x) for x in [1, 2], the Cephes logf reduction and polynomial (cephes/single/logf.c):
// x = 2^k m, f = m - 1 in [sqrt(1/2) - 1, sqrt(2) - 1], log x = f - f^2/2 + f^3 P(f) + k ln2.
template <typename V>
inline V vlog_1_2(V x) {
  const auto big = x > splat<V>(1.41421356f);
  const V f = big ? x * splat<V>(0.5f) - splat<V>(1.0f) : x - splat<V>(1.0f);
  const V k = big ? splat<V>(1.0f) : splat<V>(0.0f);
  const V z = f * f;
  V p = splat<V>(7.0376836292e-2f);
  p = p * f - splat<V>(1.1514610310e-1f);
  p = p * f + splat<V>(1.1676998740e-1f);
  p = p * f - splat<V>(1.2420140846e-1f);
  p = p * f + splat<V>(1.4249322787e-1f);
  p = p * f - splat<V>(1.6668057665e-1f);
  p = p * f + splat<V>(2.0000714765e-1f);
  p = p * f - splat<V>(2.4999993993e-1f);
  p = p * f + splat<V>(3.3333331174e-1f);
  const V r = f * z * p - k * splat<V>(2.12194440e-4f) - splat<V>(0.5f) * z;
  return f + r + k * splat<V>(0.693359375f);
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), as jax.nn.softplus; log1p(e) = e log(1 + e) /
// ((1 + e) - 1), which keeps its relative accuracy for tiny e (Goldberg's trick).
template <typename V>
inline V vsoftplus(V x) {
  const V ax = x < splat<V>(0.0f) ? -x : x;
  const V e = vexp(-ax), y = splat<V>(1.0f) + e, d = y - splat<V>(1.0f);
  const V log1p_e = d == splat<V>(0.0f) ? e : vlog_1_2(y) * e / d;
  return (x > splat<V>(0.0f) ? x : splat<V>(0.0f)) + log1p_e;
}

// silu(z) = z sigmoid(z) = z / (1 + exp(-z)); vexp's clamp keeps exp(-z) finite.
template <typename V>
inline V vsilu(V z) { return z / (splat<V>(1.0f) + vexp(-z)); }

// sigmoid(z) = 1 / (1 + exp(-z)): softplus's and (within silu') the SiLU's derivative.
template <typename V>
inline V vsigmoid(V z) { return splat<V>(1.0f) / (splat<V>(1.0f) + vexp(-z)); }

// silu'(z) = s (1 + z (1 - s)), s = sigmoid(z): the SiLU's derivative, for backward passes;
// the two-argument form takes s already computed (the gate's backward also needs silu = z s).
template <typename V>
inline V vsilu_grad(V z, V s) { return s * (splat<V>(1.0f) + z * (splat<V>(1.0f) - s)); }
template <typename V>
inline V vsilu_grad(V z) { return vsilu_grad(z, vsigmoid(z)); }

// Threads per call: $NANODNA_CPU_THREADS, else the cores this process may run on (taskset and
// container CPU sets included, on Linux), else std::thread's count.
inline int64_t max_threads() {
  if (const char* env = std::getenv("NANODNA_CPU_THREADS")) {
    const int64_t n = std::atoll(env);
    if (n > 0) return n;
  }
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max<int64_t>(1, std::thread::hardware_concurrency());
}

// fn(item) for every item in [0, n_items), on up to max_threads() threads.
template <typename Fn>
void parallel_for(int64_t n_items, Fn fn) {
  const int64_t n_threads = std::min(n_items, max_threads());
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t i = next.fetch_add(1); i < n_items; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> pool;
  for (int64_t k = 1; k < n_threads; ++k) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

// Prefetch row t of a strided (L, D) array (base already offset to the group's channels),
// when t is inside it. A channel group reads one 64-byte line per time step from each
// (L, D) array, D floats apart: a new 4 KiB page every step or so, which the hardware prefetchers do not follow,
// so every line would be a cache miss waited for. Asking kAhead steps in advance hides that
// (BENCHMARKS.md, "A faster exp, softplus out of the loop, prefetching").
constexpr int64_t kAhead = 16;
inline void prefetch(const float* base, int64_t t, int64_t L, int64_t D) {
  if (t >= 0 && t < L) __builtin_prefetch(base + t * D);
}

// prefetch's row t for a block of n_d adjacent channels (base at the block's first): one line
// per group of W, for passes that walk the block's channels contiguously at each step.
template <typename V>
inline void prefetch_block(const float* base, int64_t t, int64_t L, int64_t D, int64_t n_d) {
  for (int64_t j = 0; j < n_d; j += kLanes<V>) prefetch(base + j, t, L, D);
}

}  // namespace
