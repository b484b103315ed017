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
// K is the conv width (d_conv, W in nanodna's glossary: here W is the vector width).
// Work items are (row, 32 time steps), each walking whole rows of x, u0 and u1 in memory
// order; E must divide by the vector width W.

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kSteps = 32;  // time steps per work item
constexpr int64_t kMaxK = 8;    // widest convolution taken (PlantCAD / Mamba: 4)

// The taps tap-major, w1 flipped: wt (2, K, E) from w (2, E, K); see conv_silu_steps.
std::vector<float> taps(const float* w, int64_t E, int64_t K) {
  std::vector<float> wt(2 * K * E);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t k = 0; k < K; ++k) {
      wt[k * E + e] = w[e * K + k];
      wt[(K + k) * E + e] = w[(E + e) * K + K - 1 - k];
    }
  return wt;
}

// The two convolutions at step t, before the SiLU, for the W channels from e: (acc0, acc1).
template <typename V>
inline std::pair<V, V> conv_at(const float* x, int64_t L, int64_t C, int64_t E, int64_t K,
                               const float* wt, const float* b, int64_t t, int64_t e) {
  V acc0 = load<V>(b + e), acc1 = load<V>(b + E + e);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t before = t - K + 1 + k, after = t + k;
    if (before >= 0) acc0 += load<V>(wt + k * E + e) * load<V>(x + before * C + e);
    if (after < L) acc1 += load<V>(wt + (K + k) * E + e) * load<V>(x + after * C + e);
  }
  return {acc0, acc1};
}

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
      const auto [acc0, acc1] = conv_at<V>(x, L, C, E, K, wt, b, t, e);
      store(u0 + t * E + e, vsilu(acc0));
      store(u1 + t * E + e, vsilu(acc1));
    }
  }
}

// Backward of conv_silu_steps over time steps [t0, t1) of one row, all E channels: g = du
// silu'(acc) with acc recomputed, for t0 - K + 1 <= t < t1 + K - 1 (the halo the steps' dx
// needs; g is 0 outside [0, L)), then dx_s = sum_k w0[k] g0_{s+K-1-k} + w1'[k] g1_{s-k} for s
// in [t0, t1), and the item's share of dwt (2, K, E) and db (2, E) from its own steps only.
// G (2, t1 - t0 + 2K - 2, E) is scratch.
template <typename V>
void conv_silu_steps_bwd(const float* x, const float* du0, const float* du1, int64_t L,
                         int64_t C, int64_t E, int64_t K, const float* wt, const float* b,
                         float* dx, float* dwt, float* db, int64_t t0, int64_t t1,
                         std::vector<float>& G) {
  constexpr int64_t W = kLanes<V>;
  const int64_t lo = t0 - K + 1, n = t1 - t0 + 2 * K - 2;  // G rows hold t = lo .. lo + n - 1
  G.assign(2 * n * E, 0.0f);
  float *G0 = G.data(), *G1 = G.data() + n * E;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = lo + i;
    if (t < 0 || t >= L) continue;
    for (int64_t e = 0; e < E; e += W) {
      const auto [acc0, acc1] = conv_at<V>(x, L, C, E, K, wt, b, t, e);
      store(G0 + i * E + e, load<V>(du0 + t * E + e) * vsilu_grad(acc0));
      store(G1 + i * E + e, load<V>(du1 + t * E + e) * vsilu_grad(acc1));
    }
  }
  for (int64_t s = t0; s < t1; ++s) {
    const int64_t i = s - lo;  // G row of t = s
    for (int64_t e = 0; e < E; e += W) {
      V acc = {}, gb0 = load<V>(G0 + i * E + e), gb1 = load<V>(G1 + i * E + e);
      for (int64_t k = 0; k < K; ++k) {
        acc += load<V>(wt + k * E + e) * load<V>(G0 + (i + K - 1 - k) * E + e);
        acc += load<V>(wt + (K + k) * E + e) * load<V>(G1 + (i - k) * E + e);
        const int64_t before = s - K + 1 + k, after = s + k;
        if (before >= 0) store(dwt + k * E + e, load<V>(dwt + k * E + e) + gb0 * load<V>(x + before * C + e));
        if (after < L)
          store(dwt + (K + k) * E + e, load<V>(dwt + (K + k) * E + e) + gb1 * load<V>(x + after * C + e));
      }
      store(dx + s * E + e, acc);
      store(db + e, load<V>(db + e) + gb0);
      store(db + E + e, load<V>(db + E + e) + gb1);
    }
  }
}

// Shapes of x (B, L, C), w (2, E, K), b (2, E): an error message, or "" if the kernel takes them.
std::string check(ffi::Span<const int64_t> dx, ffi::Span<const int64_t> dw,
                  ffi::Span<const int64_t> db) {
  constexpr int64_t W = kLanes<f32xW>;
  if (dx.size() != 3 || dw.size() != 3 || db.size() != 2 || dw[0] != 2 || db[0] != 2)
    return "x must be (B, L, C), w (2, E, K), b (2, E)";
  if (db[1] != dw[1] || dw[1] > dx[2]) return "w and b must have E <= C channels";
  if (dw[2] < 1 || dw[2] > kMaxK)
    return "the convolution width K must be 1 .. " + std::to_string(kMaxK);
  if (dw[1] % W) return "E must divide by " + std::to_string(W);
  return "";
}

ffi::Error conv_silu_bidirectional(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                                   ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> u0,
                                   ffi::ResultBuffer<ffi::F32> u1) {
  const std::string err = check(x.dimensions(), w.dimensions(), b.dimensions());
  if (!err.empty()) return ffi::Error::InvalidArgument(err);
  const int64_t B = x.dimensions()[0], L = x.dimensions()[1], C = x.dimensions()[2];
  const int64_t E = w.dimensions()[1], K = w.dimensions()[2], P = (L + kSteps - 1) / kSteps;
  const float *px = x.typed_data(), *pb = b.typed_data();
  float *pu0 = u0->typed_data(), *pu1 = u1->typed_data();
  const std::vector<float> wt = taps(w.typed_data(), E, K);
  parallel_for(B * P, [&](int64_t item) {
    const int64_t row = item / P, p = item % P;
    conv_silu_steps<f32xW>(px + row * L * C, L, C, E, K, wt.data(), pb, pu0 + row * L * E,
                           pu1 + row * L * E, p * kSteps, std::min(L, (p + 1) * kSteps));
  });
  return ffi::Error::Success();
}

// The backward: dx (B, L, E); the taps' and biases' gradients per work item, dwt (B * P, 2,
// K, E) in the tap-major flipped layout of `taps` and db (B * P, 2, E), so that threads never
// share an output; the caller sums the items and undoes the layout.
ffi::Error conv_silu_bidirectional_bwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                                       ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> du0,
                                       ffi::Buffer<ffi::F32> du1, ffi::ResultBuffer<ffi::F32> dx,
                                       ffi::ResultBuffer<ffi::F32> dwt,
                                       ffi::ResultBuffer<ffi::F32> db) {
  std::string err = check(x.dimensions(), w.dimensions(), b.dimensions());
  const auto d0 = du0.dimensions(), d1 = du1.dimensions();
  if (err.empty() && (d0.size() != 3 || d0[0] != x.dimensions()[0] ||
                      d0[1] != x.dimensions()[1] || d0[2] != w.dimensions()[1] ||
                      d1.size() != 3 || d1[0] != d0[0] || d1[1] != d0[1] || d1[2] != d0[2]))
    err = "du0 and du1 must be (B, L, E)";
  if (!err.empty()) return ffi::Error::InvalidArgument(err);
  const int64_t B = x.dimensions()[0], L = x.dimensions()[1], C = x.dimensions()[2];
  const int64_t E = w.dimensions()[1], K = w.dimensions()[2], P = (L + kSteps - 1) / kSteps;
  const float *px = x.typed_data(), *pb = b.typed_data();
  const float *pdu0 = du0.typed_data(), *pdu1 = du1.typed_data();
  float *pdx = dx->typed_data(), *pdwt = dwt->typed_data(), *pdb = db->typed_data();
  const std::vector<float> wt = taps(w.typed_data(), E, K);
  parallel_for(B * P, [&](int64_t item) {
    const int64_t row = item / P, p = item % P;
    float *dwt_item = pdwt + item * 2 * K * E, *db_item = pdb + item * 2 * E;
    std::fill(dwt_item, dwt_item + 2 * K * E, 0.0f);
    std::fill(db_item, db_item + 2 * E, 0.0f);
    thread_local std::vector<float> G;
    conv_silu_steps_bwd<f32xW>(px + row * L * C, pdu0 + row * L * E, pdu1 + row * L * E, L, C,
                               E, K, wt.data(), pb, pdx + row * L * E, dwt_item, db_item,
                               p * kSteps, std::min(L, (p + 1) * kSteps), G);
  });
  return ffi::Error::Success();
}

}  // namespace

using F32Buf = ffi::Buffer<ffi::F32>;
XLA_FFI_DEFINE_HANDLER_SYMBOL(NanodnaConvSiluBidirectionalF32, conv_silu_bidirectional,
                              ffi::Ffi::Bind()
                                  .Arg<F32Buf>()  // x
                                  .Arg<F32Buf>()  // w
                                  .Arg<F32Buf>()  // b
                                  .Ret<F32Buf>()  // u0
                                  .Ret<F32Buf>());  // u1
XLA_FFI_DEFINE_HANDLER_SYMBOL(NanodnaConvSiluBidirectionalBwdF32, conv_silu_bidirectional_bwd,
                              ffi::Ffi::Bind()
                                  .Arg<F32Buf>()  // x
                                  .Arg<F32Buf>()  // w
                                  .Arg<F32Buf>()  // b
                                  .Arg<F32Buf>()  // du0
                                  .Arg<F32Buf>()  // du1
                                  .Ret<F32Buf>()  // dx
                                  .Ret<F32Buf>()  // dwt, per work item
                                  .Ret<F32Buf>());  // db, per work item
