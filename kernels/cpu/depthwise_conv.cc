// BiMamba's two short convolutions and their SiLU as one CPU pass for inference, called from
// JAX through the XLA FFI (kernels/cpu/depthwise_conv.py).
//
// Why: in XLA each direction pads its (B, L, E) input, runs K shifted multiply-adds and a SiLU,
// so a layer makes two padded copies and four passes over (B, L, E) arrays; at the PlantCAD l20
// shape that was 16% of a scoring forward (BENCHMARKS.md, "Where a scoring forward's time
// goes"). Here one pass reads x once, straight from the in_proj output, and writes both:
//   u0_t = silu(b0 + sum_k w0[k] x_{t-K+1+k})    (causal: taps t-K+1 .. t)
//   u1_t = silu(b1 + sum_k w1[K-1-k] x_{t+k})    (anti-causal: flip(causal(flip(x))))
// with x = 0 outside [0, L), per channel e (nanodna/ops/conv.py has the same in JAX).
//
// Layout (row-major): x (B, L, C) of which the first E channels are read (C >= E; the in_proj
// output (B, L, 2E) passes whole, no slice copy); w (2, E, K), b (2, E); u0, u1 (B, L, E).
// Work items are (row, 32 time steps), each walking whole rows of x, u0 and u1 in memory
// order; E must divide by the vector width W.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kSteps = 32;  // time steps per work item
constexpr int64_t kMaxK = 8;    // widest convolution taken (PlantCAD / Mamba: 4)

// Time steps [t0, t1) of one row (x, u0, u1 offset to the row already), all E channels: rows
// of x, u0 and u1 are walked contiguously, W channels at a time. wt (2, K, E) holds the taps
// as w0[k] and w1 flipped, tap-major, so that tap k of W adjacent channels is one vector load.
template <typename V>
void conv_silu_steps(const float* x, int64_t L, int64_t C, int64_t E, int64_t K,
                     const float* wt, const float* b, float* u0, float* u1, int64_t t0,
                     int64_t t1) {
  constexpr int64_t W = kLanes<V>;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t e = 0; e < E; e += W) {
      V acc0 = load<V>(b + e), acc1 = load<V>(b + E + e);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t before = t - K + 1 + k, after = t + k;
        if (before >= 0) acc0 += load<V>(wt + k * E + e) * load<V>(x + before * C + e);
        if (after < L) acc1 += load<V>(wt + (K + k) * E + e) * load<V>(x + after * C + e);
      }
      store(u0 + t * E + e, vsilu(acc0));
      store(u1 + t * E + e, vsilu(acc1));
    }
  }
}

ffi::Error conv_silu_bidirectional(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                                   ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> u0,
                                   ffi::ResultBuffer<ffi::F32> u1) {
  using V = f32xW;
  constexpr int64_t W = kLanes<V>;
  const auto dx = x.dimensions(), dw = w.dimensions(), db = b.dimensions();
  std::string err;
  if (dx.size() != 3 || dw.size() != 3 || db.size() != 2 || dw[0] != 2 || db[0] != 2)
    err = "x must be (B, L, C), w (2, E, K), b (2, E)";
  else if (db[1] != dw[1] || dw[1] > dx[2])
    err = "w and b must have E <= C channels";
  else if (dw[2] < 1 || dw[2] > kMaxK)
    err = "the convolution width K must be 1 .. " + std::to_string(kMaxK);
  else if (dw[1] % W)
    err = "E must divide by " + std::to_string(W);
  if (!err.empty()) return ffi::Error::InvalidArgument(err);
  const int64_t B = dx[0], L = dx[1], C = dx[2], E = dw[1], K = dw[2];
  const float *px = x.typed_data(), *pw = w.typed_data(), *pb = b.typed_data();
  float *pu0 = u0->typed_data(), *pu1 = u1->typed_data();
  std::vector<float> wt(2 * K * E);  // (2, K, E): w0[e, k] at [0, k, e], w1[e, K-1-k] at [1, k, e]
  for (int64_t e = 0; e < E; ++e)
    for (int64_t k = 0; k < K; ++k) {
      wt[k * E + e] = pw[e * K + k];
      wt[(K + k) * E + e] = pw[(E + e) * K + K - 1 - k];
    }
  const int64_t P = (L + kSteps - 1) / kSteps;
  parallel_for(B * P, [&](int64_t item) {
    const int64_t row = item / P, p = item % P;
    conv_silu_steps<V>(px + row * L * C, L, C, E, K, wt.data(), pb, pu0 + row * L * E,
                       pu1 + row * L * E, p * kSteps, std::min(L, (p + 1) * kSteps));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NanodnaConvSiluBidirectionalF32, conv_silu_bidirectional,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b
                                  .Ret<ffi::Buffer<ffi::F32>>()  // u0
                                  .Ret<ffi::Buffer<ffi::F32>>());  // u1
