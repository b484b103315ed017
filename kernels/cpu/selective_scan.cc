// The selective scan (Mamba v1) as a fused CPU kernel, forward and backward, called from JAX
// through the XLA FFI (kernels/cpu/selective_scan.py builds this file and registers it).
//
// Why a kernel: an XLA while loop on CPU makes ~10 passes over a whole (S, B, D, N) state per
// time step, from L2/L3 (BENCHMARKS.md, "Where a Caduceus-PS CPU training step's time goes").
// Here the loop order is the other way round: for one (direction s, row b) and a group of W
// adjacent channels (one vector: W = 16 with AVX-512, else 8), the N states live in N vector
// registers for the whole sequence, so a time step costs N vector exps and a few FMAs, reads
// W contiguous u and dt, broadcasts the row's B_t and C_t, and writes W contiguous y.
//
// Maths (nanodna/ops/scan_vjp.py has the same, per s, b, d, n; a_t = exp(dt_t A)):
//   h_t = a_t h_{t-1} + dt_t B_t u_t          y_t = sum_n C_t h_t
//   g_t = C_t dy_t + a_{t+1} g_{t+1}          (adjoint, run backwards)
//   du_t = dt_t sum_n g_t B_t                 ddt_t = sum_n g_t (A a_t h_{t-1} + B_t u_t)
//   dB_t = sum_d g_t dt_t u_t                 dC_t = sum_d h_t dy_t
//   dA = sum_{b,t} g_t h_{t-1} a_t dt_t
// The backward replays a channel group's forward into per-thread buffers of h_t and a_t, then
// runs the adjoint. The plain scan replays all L steps at once ((L + 1) x N and L x N vectors).
// The gated block's training forward also saves h at the start of every chunk of steps
// (h_chunks), so that its backward replays one chunk at a time, from the end, each chunk's
// buffers staying in L2 between its replay and its adjoint; without saved states a chunked
// replay needed an extra forward pass, which cost more than it saved. The sums over d in dB
// and dC are kept one lane per channel while a block of channels runs and summed across lanes
// once at its end (BENCHMARKS.md, "Saved chunk states for the gated backward").
//
// BiMamba's gated block (softplus of dt + bias, both directions, D skip, SiLU gate) has its own
// forward and backward handlers below, which take each direction's arrays as separate buffers
// and reuse forward_lanes / backward_lanes per group of channels.
//
// Layout (row-major): u, dt, du, ddt, y (S, B, L, D); A (S, D, N); B, C (S, B, L, N).
// Sums over d (dB, dC) are written per block of channels, (S, B, P, L, N), and per row for dA,
// (S, B, D, N), so that threads never share an output; the caller sums those axes.
// Work items are (s, b, channel block), spread over threads by an atomic counter. float32 with
// N in {4, 8, 16, 32, 64} takes the vector path; the channels of a block left over after its
// groups of W, other N and float64 take the scalar path (same maths, one channel at a time).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMaxN = 256;  // largest state size the scalar path accepts

struct Shape {
  int64_t S, B, L, D, N, d_block, P;
};

bool has_shape(ffi::Span<const int64_t> x, std::vector<int64_t> want) {
  if (x.size() != want.size()) return false;
  for (size_t i = 0; i < want.size(); ++i)
    if (x[i] != want[i]) return false;
  return true;
}

// Shapes of u (S B L D), A (S D N), B and C (S B L N); an error message, or "" if they agree.
std::string check_shapes(const Shape& s, ffi::Span<const int64_t> dt, ffi::Span<const int64_t> A,
                         ffi::Span<const int64_t> Bm, ffi::Span<const int64_t> Cm) {
  if (!has_shape(dt, {s.S, s.B, s.L, s.D})) return "delta must have u's shape (S, B, L, D)";
  if (!has_shape(A, {s.S, s.D, s.N})) return "A must be (S, D, N)";
  if (!has_shape(Bm, {s.S, s.B, s.L, s.N}) || !has_shape(Cm, {s.S, s.B, s.L, s.N}))
    return "B and C must be (S, B, L, N) with A's N";
  if (s.N > kMaxN) return "state size N above 256 is not supported";
  return "";
}

// The shape from u (S B L D) and A (S D N), with dt, B and C checked against it; an error
// message in `err` if anything is off.
template <typename Buf>
Shape shape_of(const Buf& u, const Buf& dt, const Buf& A, const Buf& Bm, const Buf& Cm,
               int64_t d_block, std::string& err) {
  auto du = u.dimensions();
  if (du.size() != 4 || A.dimensions().size() != 3 || d_block < 1) {
    err = "u must be (S, B, L, D), A (S, D, N) and d_block >= 1";
    return Shape{};
  }
  Shape s{du[0], du[1], du[2], du[3], A.dimensions()[2], d_block, 0};
  s.P = (s.D + d_block - 1) / d_block;
  err = check_shapes(s, dt.dimensions(), A.dimensions(), Bm.dimensions(), Cm.dimensions());
  return s;
}

// Scalar path, any N, float or double: one channel d of one row, y[t, d] for every t.
template <typename F>
void forward_channel(const Shape& s, const F* u, const F* dt, const F* A_N, const F* B, const F* C,
                     F* y, int64_t d, bool reverse) {
  const int64_t N = s.N, L = s.L, D = s.D;
  F h[kMaxN] = {};
  for (int64_t i = 0; i < L; ++i) {
    const int64_t t = reverse ? L - 1 - i : i;
    const F dt_t = dt[t * D + d], x = dt_t * u[t * D + d];
    F acc = 0;
    for (int64_t n = 0; n < N; ++n) {
      h[n] = std::exp(dt_t * A_N[n]) * h[n] + x * B[t * N + n];
      acc += h[n] * C[t * N + n];
    }
    y[t * D + d] = acc;
  }
}

// A (D, N) rows d0 .. d0 + W - 1 as N vectors of W lanes, times `scale`:
// A_n[n][w] = scale A[d0 + w, n].
template <typename V, int64_t N>
void A_lanes(const float* A, int64_t d0, V (&A_n)[N], float scale = 1.0f) {
  float column[kLanes<V>];
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t w = 0; w < kLanes<V>; ++w) column[w] = A[(d0 + w) * N + n];
    A_n[n] = load<V>(column) * scale;
  }
}

constexpr float kLog2e = 1.44269504088896341f;

// The vector paths' loops over the N states, fully unrolled for N 16 where there are 32 vector
// registers (AVX-512): the N states then stay in registers instead of a stack array. One
// thread runs the l20 backward 1.1-1.3x faster so; two threads sharing the caches showed no
// change (BENCHMARKS.md, "Unrolled state loops"). With 16 registers (AVX2) the states could not
// stay in registers, so the loops stay as the compiler chooses.
#if defined(__AVX512F__)
#define NANODNA_UNROLL_STATES _Pragma("GCC unroll 16")
#else
#define NANODNA_UNROLL_STATES
#endif

// The gated block's saved states, h_chunks (2, B, n_chunks, N, D): chunks of `chunk` steps.
inline int64_t n_chunks(int64_t L, int64_t chunk) { return (L + chunk - 1) / chunk; }

// Where direction sd, row b's (n_chunks, N, D) slab of h_chunks starts.
template <typename P>
P* h_chunks_row(P* h_chunks, const Shape& s, int64_t sd, int64_t b, int64_t chunk) {
  return h_chunks + (sd * s.B + b) * n_chunks(s.L, chunk) * s.N * s.D;
}

// Vector path, float32: channels d0 .. d0 + W - 1 in the W lanes of one vector, state n in
// h[n]. A step loads W contiguous u and dt, broadcasts the row's B_t[n] and C_t[n], and stores
// W contiguous y: no strided loads and no sum across lanes.
// With `dt_bias` (inference, scan_gated_fwd) dt holds the raw step size: softplus(dt + bias)
// is taken on the fly. `add`: y += the scan instead of y = (the second direction's pass).
// With `h_chunks` (the gated training forward) h before every chunk of `chunk` steps, in
// processing order, is stored at h_chunks[(c * N + n) * D + d0 ..], for the backward's replay.
template <typename V, int64_t N>
void forward_lanes(const Shape& s, const float* u, const float* dt, const float* A, const float* B,
                   const float* C, float* y, int64_t d0, bool reverse,
                   const float* dt_bias = nullptr, bool add = false, float* h_chunks = nullptr,
                   int64_t chunk = 0) {
  const int64_t L = s.L, D = s.D;
  V A_n[N], h[N] = {};
  A_lanes(A, d0, A_n, kLog2e);
  // softplus in its own pass: inside the time loop its latency (an exp, a log, a division)
  // would hold up every step: the forward ran 1.35x slower that way (BENCHMARKS.md, "A faster
  // exp, softplus out of the loop, prefetching").
  thread_local std::vector<V> steps;
  if (dt_bias) {
    const V bias = load<V>(dt_bias + d0);
    steps.resize(L);
    for (int64_t t = 0; t < L; ++t) {
      prefetch(dt + d0, t + kAhead, L, D);
      steps[t] = vsoftplus(load<V>(dt + t * D + d0) + bias);
    }
  }
  const int64_t ahead = reverse ? -kAhead : kAhead;
  const int64_t span = h_chunks ? chunk : L;  // steps between stores of h
  for (int64_t i0 = 0; i0 < L; i0 += span) {
    if (h_chunks)
      for (int64_t n = 0; n < N; ++n) store(h_chunks + ((i0 / span) * N + n) * D + d0, h[n]);
    for (int64_t i = i0; i < std::min(L, i0 + span); ++i) {
      const int64_t t = reverse ? L - 1 - i : i;
      prefetch(u + d0, t + ahead, L, D);
      if (!dt_bias) prefetch(dt + d0, t + ahead, L, D);
      if (add) prefetch(y + d0, t + ahead, L, D);
      const V dt_t = dt_bias ? steps[t] : load<V>(dt + t * D + d0);
      const V x = dt_t * load<V>(u + t * D + d0);
      V acc[4] = {};  // y's sum over n in four parts: not one chain of N dependent FMAs
      NANODNA_UNROLL_STATES
      for (int64_t n = 0; n < N; ++n) {  // unrolled: h stays in registers
        h[n] = vexp2(dt_t * A_n[n]) * h[n] + x * B[t * N + n];
        acc[n % 4] += h[n] * C[t * N + n];
      }
      V y_t = (acc[0] + acc[1]) + (acc[2] + acc[3]);
      if (add) y_t += load<V>(y + t * D + d0);
      store(y + t * D + d0, y_t);
    }
  }
}

// BiMamba's gated block, channels d0 .. d0 + W - 1 of row b: both directions (dt raw, bias and
// softplus on the fly), then y = (y_fwd + y_rev + D_0 u_0 + D_1 u_1) silu(z) in place, and the
// value before the gate into pre when pre is given (training keeps it for the backward). u[s],
// dt[s] (B, L, D), B[s], C[s] (B, L, N): direction s's arrays; A (2, D, N); bias, Dskip (2, D).
// h_chunks (training, with pre): each direction's h before every chunk of `chunk` steps in its
// processing order, (2, B, n_chunks, N, D), n_chunks = ceil(L / chunk).
template <typename V, int64_t N>
void gated_lanes(const Shape& s, const float* const u[2], const float* const dt[2],
                 const float* A, const float* const B[2], const float* const C[2],
                 const float* bias, const float* Dskip, const float* z, float* y, float* pre,
                 int64_t b, int64_t d0, float* h_chunks = nullptr, int64_t chunk = 0) {
  const int64_t L = s.L, D = s.D, LD = L * D, LN = L * s.N;
  for (int64_t sd = 0; sd < 2; ++sd)  // direction 0 forward, 1 reverse (and added)
    forward_lanes<V, N>(s, u[sd] + b * LD, dt[sd] + b * LD, A + sd * D * N, B[sd] + b * LN,
                        C[sd] + b * LN, y + b * LD, d0, sd == 1, bias + sd * D, sd == 1,
                        h_chunks ? h_chunks_row(h_chunks, s, sd, b, chunk) : nullptr, chunk);
  const V D0 = load<V>(Dskip + d0), D1 = load<V>(Dskip + D + d0);
  for (int64_t t = 0; t < L; ++t) {
    const int64_t k = b * LD + t * D + d0;
    for (const float* p : {u[0], u[1], z, static_cast<const float*>(y)})
      prefetch(p + b * LD + d0, t + kAhead, L, D);
    const V before_gate = load<V>(y + k) + D0 * load<V>(u[0] + k) + D1 * load<V>(u[1] + k);
    if (pre) store(pre + k, before_gate);  // kept for the backward (training)
    store(y + k, before_gate * vsilu(load<V>(z + k)));
  }
}

// The gated backward's per-block buffers hold each group of W channels' L steps together,
// (groups, L, W), with one spare step between groups: at a pitch of exactly L W floats (a
// multiple of 4 KiB at L 128) a step's W lanes of every group fell in the same L1 cache set.
inline int64_t group_pitch(int64_t L, int64_t W) { return (L + 1) * W; }

// Scalar path, backward of one channel d of one row: replay the forward into H (h_{t-1} and
// h_t) and E (a_t), then the adjoint from the end. du, ddt written at [t, d]; dA_N (N) overwritten;
// dB, dC (L, N) summed into.
template <typename F>
void backward_channel(const Shape& s, const F* u, const F* dt, const F* A_N, const F* B,
                      const F* C, const F* dy, F* du, F* ddt, F* dA_N, F* dB, F* dC, int64_t d,
                      bool reverse, std::vector<F>& H, std::vector<F>& E) {
  const int64_t N = s.N, L = s.L, D = s.D;
  H.assign((L + 1) * N, F(0));  // H[0] is h_{-1} = 0, H[i + 1] is h after step i
  E.resize(L * N);
  for (int64_t i = 0; i < L; ++i) {  // replay, i in processing order
    const int64_t t = reverse ? L - 1 - i : i;
    const F dt_t = dt[t * D + d], x = dt_t * u[t * D + d];
    for (int64_t n = 0; n < N; ++n) {
      E[i * N + n] = std::exp(dt_t * A_N[n]);
      H[(i + 1) * N + n] = E[i * N + n] * H[i * N + n] + x * B[t * N + n];
    }
  }
  F ag[kMaxN] = {}, dA[kMaxN] = {};  // ag = a_{t+1} g_{t+1}
  for (int64_t i = L - 1; i >= 0; --i) {  // adjoint, backwards in processing order
    const int64_t t = reverse ? L - 1 - i : i;
    const F dt_t = dt[t * D + d], u_t = u[t * D + d], dy_t = dy[t * D + d], x = dt_t * u_t;
    F gB = 0, wA = 0;
    for (int64_t n = 0; n < N; ++n) {
      const F g = ag[n] + dy_t * C[t * N + n];
      const F w = g * H[i * N + n] * E[i * N + n];
      dA[n] += w * dt_t;
      gB += g * B[t * N + n];
      wA += w * A_N[n];
      dB[t * N + n] += g * x;
      dC[t * N + n] += H[(i + 1) * N + n] * dy_t;
      ag[n] = E[i * N + n] * g;
    }
    du[t * D + d] = dt_t * gB;
    ddt[t * D + d] = wA + u_t * gB;
  }
  for (int64_t n = 0; n < N; ++n) dA_N[n] = dA[n];
}

// Where the backward's replay starts: h before every chunk of `len` steps (processing order),
// as the gated training forward saved it, chunk c's state n for the group's W lanes at
// at[(c * N + n) * ld]. The default (no states): one chunk of all L steps, from h = 0.
struct ChunkStates {
  const float* at = nullptr;
  int64_t ld = 0, len = 0;
};

// Vector path of the backward, float32, channels d0 .. d0 + W - 1 in lanes as in forward_lanes.
// Chunk by chunk from the end of the processing order: replay the chunk's forward from its
// saved start state into H (h_{t-1} and h_t) and E (a_t), (len + 1) x N and len x N vectors,
// then run the chunk's adjoint. With saved states a chunk's H and E (132 KiB at 64 steps,
// N 16) stay in L2 between the replay that writes them and the adjoint that reads them, which
// a whole sequence's (1 MiB at L 512) did not; without (the plain scan) the one chunk is L
// steps. du, ddt written at [t, d0 .. d0 + W); dA (D, N) written at rows d0 .. d0 + W - 1.
// The terms of dB and dC are added into PB, PC (L x N vectors, one lane per channel), which
// the caller sums over lanes once per block of channels.
template <typename V, int64_t N>
void backward_lanes(const Shape& s, const float* u, const float* dt, const float* A,
                    const float* B, const float* C, const float* dy, float* du, float* ddt,
                    float* dA, V* PB, V* PC, int64_t d0, bool reverse, std::vector<V>& H,
                    std::vector<V>& E, const ChunkStates& starts = {}) {
  constexpr int64_t W = kLanes<V>;
  const int64_t L = s.L, D = s.D;
  const int64_t len = starts.at ? starts.len : L, count = n_chunks(L, len);
  H.resize((len + 1) * N);  // H[0 .. N) is h before the chunk, H[(j + 1) N ..) after its step j
  E.resize(len * N);
  V A_n[N], A2_n[N];
  A_lanes(A, d0, A_n);
  A_lanes(A, d0, A2_n, kLog2e);
  const int64_t ahead = reverse ? -kAhead : kAhead;
  // The replay prefetches kAhead steps on when it runs the whole sequence, else the same step
  // of the chunk replayed next (the one before, in processing order).
  const int64_t replay_ahead = count == 1 ? ahead : (reverse ? len : -len);
  V ag[N] = {}, dA_n[N] = {};  // ag = a_{t+1} g_{t+1}, carried from chunk to chunk
  for (int64_t c = count - 1; c >= 0; --c) {
    const int64_t i0 = c * len, i1 = std::min(L, i0 + len);
    V h[N];
    for (int64_t n = 0; n < N; ++n) {
      h[n] = starts.at ? load<V>(starts.at + (c * N + n) * starts.ld) : V{};
      H[n] = h[n];
    }
    for (int64_t i = i0; i < i1; ++i) {  // replay
      const int64_t t = reverse ? L - 1 - i : i, j = i - i0;
      prefetch(u + d0, t + replay_ahead, L, D);
      prefetch(dt + d0, t + replay_ahead, L, D);
      const V dt_t = load<V>(dt + t * D + d0), x = dt_t * load<V>(u + t * D + d0);
      NANODNA_UNROLL_STATES
      for (int64_t n = 0; n < N; ++n) {  // unrolled: h stays in registers
        const V a = vexp2(dt_t * A2_n[n]);
        h[n] = a * h[n] + x * B[t * N + n];
        E[j * N + n] = a;
        H[(j + 1) * N + n] = h[n];
      }
    }
    for (int64_t i = i1 - 1; i >= i0; --i) {  // adjoint
      const int64_t t = reverse ? L - 1 - i : i, j = i - i0;
      for (const float* p : {u, dt, dy, static_cast<const float*>(du),
                             static_cast<const float*>(ddt)})
        prefetch(p + d0, t - ahead, L, D);
      const V dt_t = load<V>(dt + t * D + d0), u_t = load<V>(u + t * D + d0);
      const V dy_t = load<V>(dy + t * D + d0), x = dt_t * u_t;
      V gB[2] = {}, wA[2] = {};  // sums over n in two parts each: shorter FMA chains
      NANODNA_UNROLL_STATES
      for (int64_t n = 0; n < N; ++n) {
        const V a = E[j * N + n];
        const V g = ag[n] + dy_t * C[t * N + n];
        const V w = g * H[j * N + n] * a;
        dA_n[n] += w * dt_t;
        gB[n % 2] += g * B[t * N + n];
        wA[n % 2] += w * A_n[n];
        PB[t * N + n] += g * x;
        PC[t * N + n] += H[(j + 1) * N + n] * dy_t;
        ag[n] = a * g;
      }
      store(du + t * D + d0, dt_t * (gB[0] + gB[1]));
      store(ddt + t * D + d0, (wA[0] + wA[1]) + u_t * (gB[0] + gB[1]));
    }
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t w = 0; w < W; ++w) dA[(d0 + w) * N + n] = dA_n[n][w];
}

// The state sizes the vector path is compiled for: fn(Nc) with Nc an
// std::integral_constant<int64_t, N> for N in {4, 8, 16, 32, 64}; false (fn not called) else.
template <typename Fn>
bool with_vector_n(int64_t N, Fn fn) {
  switch (N) {
    case 4: fn(std::integral_constant<int64_t, 4>{}); return true;
    case 8: fn(std::integral_constant<int64_t, 8>{}); return true;
    case 16: fn(std::integral_constant<int64_t, 16>{}); return true;
    case 32: fn(std::integral_constant<int64_t, 32>{}); return true;
    case 64: fn(std::integral_constant<int64_t, 64>{}); return true;
  }
  return false;
}

// Channels [d_begin, d_end) of one row: float32 with N in {4, 8, 16, 32, 64} takes the vector
// path W channels at a time; the channels left over, other N and float64 the scalar path.
template <typename F>
void forward_block(const Shape& s, const F* u, const F* dt, const F* A, const F* B, const F* C,
                   F* y, int64_t d_begin, int64_t d_end, bool reverse) {
  int64_t d = d_begin;
  if constexpr (std::is_same_v<F, float>) {
    constexpr int64_t W = kLanes<f32xW>;
    for (; d + W <= d_end; d += W) {
      const bool done = with_vector_n(s.N, [&](auto Nc) {
        forward_lanes<f32xW, decltype(Nc)::value>(s, u, dt, A, B, C, y, d, reverse);
      });
      if (!done) break;  // another N: the scalar path below
    }
  }
  for (; d < d_end; ++d) forward_channel<F>(s, u, dt, A + d * s.N, B, C, y, d, reverse);
}

// Backward of channels [d_begin, d_end) of one row, as forward_block splits them. dA (D, N) is
// written; dB, dC (L, N) are summed into.
template <typename F>
void backward_block(const Shape& s, const F* u, const F* dt, const F* A, const F* B, const F* C,
                    const F* dy, F* du, F* ddt, F* dA, F* dB, F* dC, int64_t d_begin,
                    int64_t d_end, bool reverse) {
  int64_t d = d_begin;
  if constexpr (std::is_same_v<F, float>) {
    using V = f32xW;
    constexpr int64_t W = kLanes<V>;
    if (with_vector_n(s.N, [](auto) {}) && d_end - d_begin >= W) {
      thread_local std::vector<V> H, E, PB, PC;
      PB.assign(s.L * s.N, V{});
      PC.assign(s.L * s.N, V{});
      for (; d + W <= d_end; d += W)
        with_vector_n(s.N, [&](auto Nc) {
          backward_lanes<V, decltype(Nc)::value>(s, u, dt, A, B, C, dy, du, ddt, dA, PB.data(),
                                                 PC.data(), d, reverse, H, E);
        });
      for (int64_t k = 0; k < s.L * s.N; ++k) {
        dB[k] += lane_sum(PB[k]);
        dC[k] += lane_sum(PC[k]);
      }
    }
  }
  thread_local std::vector<F> H1, E1;
  for (; d < d_end; ++d)
    backward_channel<F>(s, u, dt, A + d * s.N, B, C, dy, du, ddt, dA + d * s.N, dB, dC, d,
                        reverse, H1, E1);
}

template <ffi::DataType T>
ffi::Error scan_fwd(ffi::Buffer<T> u, ffi::Buffer<T> dt, ffi::Buffer<T> A, ffi::Buffer<T> Bm,
                    ffi::Buffer<T> Cm, ffi::ResultBuffer<T> y, bool reverse, bool bidirectional,
                    int64_t d_block) {
  using F = ffi::NativeType<T>;
  std::string err;
  const Shape s = shape_of(u, dt, A, Bm, Cm, d_block, err);
  if (!err.empty()) return ffi::Error::InvalidArgument(err);
  const F *pu = u.typed_data(), *pdt = dt.typed_data(), *pA = A.typed_data();
  const F *pB = Bm.typed_data(), *pC = Cm.typed_data();
  F* py = y->typed_data();
  parallel_for(s.S * s.B * s.P, [&](int64_t item) {
    const int64_t sb = item / s.P, p = item % s.P, sd = sb / s.B;
    const int64_t LD = s.L * s.D, LN = s.L * s.N;
    const bool rev = reverse != (bidirectional && sd == 1);
    forward_block<F>(s, pu + sb * LD, pdt + sb * LD, pA + sd * s.D * s.N, pB + sb * LN,
                     pC + sb * LN, py + sb * LD, p * s.d_block,
                     std::min(s.D, (p + 1) * s.d_block), rev);
  });
  return ffi::Error::Success();
}

// BiMamba's gated block, float32: y (B, L, D) = (y_fwd + y_rev + D_0 u_0 + D_1 u_1) silu(z)
// with dt = softplus(dt_raw + bias), in one pass. Each direction's u, dt (B, L, D) and B, C
// (B, L, N) come as separate buffers (no stacked copy); A (2, D, N), bias and D (2, D). D must
// divide by the vector width W and N be in {4, 8, 16, 32, 64} (the caller checks; other
// shapes run the unfused path). Work items are (row, channel block), both directions in one.
// scan_gated_fwd is inference; scan_gated_fwd_res also returns the value before the gate and
// each direction's h before every chunk of `chunk` steps (h_chunks, (2, B, n_chunks, N, D) in
// processing order), and scan_gated_bwd is the backward that uses them (training).
using F32Buf = ffi::Buffer<ffi::F32>;

// The shapes of the gated block's inputs as a Shape (S = 2), or an error message in err.
Shape gated_shape(const F32Buf& u0, const F32Buf& u1, const F32Buf& dt0, const F32Buf& dt1,
                  const F32Buf& A, const F32Buf& B0, const F32Buf& B1, const F32Buf& C0,
                  const F32Buf& C1, const F32Buf& bias, const F32Buf& Dskip, const F32Buf& z,
                  int64_t d_block, std::string& err) {
  constexpr int64_t W = kLanes<f32xW>;
  const auto du = u0.dimensions(), dA = A.dimensions();
  if (du.size() != 3 || dA.size() != 3 || d_block < 1) {
    err = "u must be (B, L, D), A (2, D, N)";
    return Shape{};
  }
  const Shape s{2, du[0], du[1], du[2], dA[2], d_block, (du[2] + d_block - 1) / d_block};
  for (const F32Buf* x : {&u1, &dt0, &dt1, &z})
    if (err.empty() && !has_shape(x->dimensions(), {s.B, s.L, s.D}))
      err = "u, dt and z must all be (B, L, D)";
  for (const F32Buf* x : {&B0, &B1, &C0, &C1})
    if (err.empty() && !has_shape(x->dimensions(), {s.B, s.L, s.N}))
      err = "B and C must be (B, L, N) with A's N";
  if (err.empty() && (!has_shape(dA, {2, s.D, s.N}) || !has_shape(bias.dimensions(), {2, s.D}) ||
                      !has_shape(Dskip.dimensions(), {2, s.D})))
    err = "A must be (2, D, N), bias and D (2, D)";
  if (err.empty() && (s.D % W || d_block % W))
    err = "the gated scan needs D and d_block divisible by " + std::to_string(W);
  if (err.empty() && !with_vector_n(s.N, [](auto) {}))
    err = "the gated scan needs N in {4, 8, 16, 32, 64}";
  return s;
}

// "" if h_chunks is (2, B, ceil(L / chunk), N, D), else an error message.
std::string check_chunks(const Shape& s, const F32Buf& h_chunks, int64_t chunk) {
  if (chunk < 1) return "chunk must be >= 1";
  if (!has_shape(h_chunks.dimensions(), {2, s.B, n_chunks(s.L, chunk), s.N, s.D}))
    return "h_chunks must be (2, B, ceil(L / chunk), N, D)";
  return "";
}

ffi::Error gated_fwd(F32Buf u0, F32Buf u1, F32Buf dt0, F32Buf dt1, F32Buf A, F32Buf B0,
                     F32Buf B1, F32Buf C0, F32Buf C1, F32Buf bias, F32Buf Dskip, F32Buf z,
                     float* py, float* ppre, const F32Buf* h_chunks, int64_t chunk,
                     int64_t d_block) {
  using V = f32xW;
  constexpr int64_t W = kLanes<V>;
  std::string err;
  const Shape s = gated_shape(u0, u1, dt0, dt1, A, B0, B1, C0, C1, bias, Dskip, z, d_block, err);
  if (err.empty() && h_chunks) err = check_chunks(s, *h_chunks, chunk);
  if (!err.empty()) return ffi::Error::InvalidArgument(err);
  const float* const pu[2] = {u0.typed_data(), u1.typed_data()};
  const float* const pdt[2] = {dt0.typed_data(), dt1.typed_data()};
  const float* const pB[2] = {B0.typed_data(), B1.typed_data()};
  const float* const pC[2] = {C0.typed_data(), C1.typed_data()};
  const float *pA = A.typed_data(), *pbias = bias.typed_data(), *pD = Dskip.typed_data();
  const float* pz = z.typed_data();
  float* ph_chunks = h_chunks ? h_chunks->typed_data() : nullptr;
  parallel_for(s.B * s.P, [&](int64_t item) {
    const int64_t b = item / s.P, p = item % s.P;
    for (int64_t d = p * s.d_block; d < std::min(s.D, (p + 1) * s.d_block); d += W)
      with_vector_n(s.N, [&](auto Nc) {
        gated_lanes<V, decltype(Nc)::value>(s, pu, pdt, pA, pB, pC, pbias, pD, pz, py, ppre, b,
                                            d, ph_chunks, chunk);
      });
  });
  return ffi::Error::Success();
}

ffi::Error scan_gated_fwd(F32Buf u0, F32Buf u1, F32Buf dt0, F32Buf dt1, F32Buf A, F32Buf B0,
                          F32Buf B1, F32Buf C0, F32Buf C1, F32Buf bias, F32Buf Dskip, F32Buf z,
                          ffi::ResultBuffer<ffi::F32> y, int64_t d_block) {
  return gated_fwd(u0, u1, dt0, dt1, A, B0, B1, C0, C1, bias, Dskip, z, y->typed_data(),
                   nullptr, nullptr, 0, d_block);
}

ffi::Error scan_gated_fwd_res(F32Buf u0, F32Buf u1, F32Buf dt0, F32Buf dt1, F32Buf A,
                              F32Buf B0, F32Buf B1, F32Buf C0, F32Buf C1, F32Buf bias,
                              F32Buf Dskip, F32Buf z, ffi::ResultBuffer<ffi::F32> y,
                              ffi::ResultBuffer<ffi::F32> pre,
                              ffi::ResultBuffer<ffi::F32> h_chunks, int64_t d_block,
                              int64_t chunk) {
  return gated_fwd(u0, u1, dt0, dt1, A, B0, B1, C0, C1, bias, Dskip, z, y->typed_data(),
                   pre->typed_data(), &*h_chunks, chunk, d_block);
}

// The gated block's gradients, one pointer per output (see scan_gated_bwd for the layouts).
struct GatedGrads {
  float* du[2];
  float* ddt[2];
  float* dA;     // (2, B, D, N): per row
  float* dbias;  // (2, B, D): per row
  float* dD;     // (2, B, D): per row
  float* dz;     // (B, L, D)
};

// The gate's backward for a block of channels d0 .. d0 + n_d - 1 of row b: g = dout silu(z),
// both scans' output gradient, into g_GLW (groups, L, W); dz = dout pre silu'(z). Time outer,
// channels inner: each step reads and writes n_d contiguous floats of every (L, D) array, which
// the hardware prefetchers follow; one group at a time (a line per step, D floats apart) they
// did not, and the block's passes outside the scans took ~40% of the backward (perf, demo
// shape; BENCHMARKS.md, "Contiguous passes in the gated backward, and weight gradients
// without transposes"). The forward keeps its per-group passes: block passes ran its l20
// layer shape (L 512, D 768) at 0.78-0.86x, its demo shape at 1.1x.
template <typename V>
void gate_backward_block(const Shape& s, const float* z, const float* pre, const float* dout,
                         float* g_GLW, float* dz, int64_t b, int64_t d0, int64_t n_d) {
  constexpr int64_t W = kLanes<V>;
  const int64_t L = s.L, D = s.D, row = b * L * D + d0;
  for (int64_t t = 0; t < L; ++t) {
    for (const float* p : {z, pre, dout}) prefetch_block<V>(p + row, t + 2, L, D, n_d);
    for (int64_t j = 0; j < n_d; j += W) {
      const int64_t k = row + t * D + j;
      const V z_t = load<V>(z + k), dout_t = load<V>(dout + k);
      const V sig = vsigmoid(z_t);  // one sigmoid for silu = z sig and silu'
      store(g_GLW + j / W * group_pitch(L, W) + t * W, dout_t * z_t * sig);
      store(dz + k, dout_t * load<V>(pre + k) * vsilu_grad(z_t, sig));
    }
  }
}

// Direction sd's part of gated_lanes' backward for the block's channels d0 .. d0 + n_d - 1 of
// row b, from g_GLW (groups, L, W). Three passes: (1) over time, the block's u and dt_raw into
// (groups, L, W) buffers, with dt = softplus(dt_raw + bias) and its derivative sigmoid(dt_raw +
// bias); (2) per group of W channels, backward_lanes on those buffers (a Shape whose D is W),
// replaying from the forward's states `starts` (h_chunks row, (n_chunks, N, D)); (3) over time,
// the chain rule's end: du = du_scan + g D, ddt_raw = ddt sigmoid(dt_raw + bias), and the sums
// dbias = sum_t ddt_raw, dD = sum_t g u. u, dt (B, L, D), B, C (B, L, N): direction sd's
// arrays; dB, dC terms go into PB, PC as in backward_block.
template <typename V, int64_t N>
void gated_scan_backward_block(const Shape& s, int64_t sd, const float* u, const float* dt,
                               const float* A, const float* B, const float* C,
                               const float* bias, const float* Dskip, const float* g_GLW,
                               const GatedGrads& o, V* PB, V* PC, int64_t b, int64_t d0,
                               int64_t n_d, const float* h_chunks_row, int64_t chunk) {
  constexpr int64_t W = kLanes<V>;
  const int64_t L = s.L, D = s.D, LN = L * s.N, row = b * L * D + d0;
  const int64_t LW = group_pitch(L, W);
  const int64_t groups = n_d / W;
  const Shape group{1, 1, L, W, N, W, 1};
  thread_local std::vector<float> ub, dtb, sigb, dub, ddtb, dAb;
  thread_local std::vector<V> H, E;
  for (auto* v : {&ub, &dtb, &sigb, &dub, &ddtb}) v->resize(groups * LW);
  dAb.resize(W * N);
  for (int64_t t = 0; t < L; ++t) {  // (1)
    for (const float* p : {u, dt}) prefetch_block<V>(p + row, t + 2, L, D, n_d);
    for (int64_t j = 0; j < n_d; j += W) {
      const int64_t k = row + t * D + j, at = j / W * LW + t * W;
      const V x = load<V>(dt + k) + load<V>(bias + sd * D + d0 + j);
      store(ub.data() + at, load<V>(u + k));
      store(dtb.data() + at, vsoftplus(x));
      store(sigb.data() + at, vsigmoid(x));  // softplus'(x)
    }
  }
  const int64_t sb = sd * s.B + b;
  for (int64_t j = 0; j < n_d; j += W) {  // (2)
    const int64_t off = j / W * LW;
    const ChunkStates starts{h_chunks_row + d0 + j, D, chunk};
    backward_lanes<V, N>(group, ub.data() + off, dtb.data() + off, A + (sd * D + d0 + j) * N,
                         B + b * LN, C + b * LN, g_GLW + off, dub.data() + off,
                         ddtb.data() + off, dAb.data(), PB, PC, 0, sd == 1, H, E, starts);
    std::copy(dAb.begin(), dAb.end(), o.dA + (sb * D + d0 + j) * N);
  }
  thread_local std::vector<V> dD, dbias;  // per group
  dD.assign(groups, V{});
  dbias.assign(groups, V{});
  for (int64_t t = 0; t < L; ++t) {  // (3)
    for (float* p : {o.du[sd], o.ddt[sd]}) prefetch_block<V>(p + row, t + 2, L, D, n_d);
    for (int64_t j = 0; j < n_d; j += W) {
      const int64_t k = row + t * D + j, at = j / W * LW + t * W, i = j / W;
      const V g = load<V>(g_GLW + at);
      store(o.du[sd] + k, load<V>(dub.data() + at) + g * load<V>(Dskip + sd * D + d0 + j));
      const V ddt_raw = load<V>(ddtb.data() + at) * load<V>(sigb.data() + at);
      store(o.ddt[sd] + k, ddt_raw);
      dD[i] += g * load<V>(ub.data() + at);
      dbias[i] += ddt_raw;
    }
  }
  for (int64_t j = 0; j < n_d; j += W) {
    store(o.dD + sb * D + d0 + j, dD[j / W]);
    store(o.dbias + sb * D + d0 + j, dbias[j / W]);
  }
}

// Backward of gated_lanes for channels [d_begin, d_end) of row b (whole groups of W): the
// gate, then one direction at a time the block's scan backward, so that only one direction's
// dB / dC lane accumulators PB, PC (L x N vectors each, 1 MiB together at L 512, N 16) are live
// next to the replay's buffers. dB[sd], dC[sd] (L, N) are written (summed over lanes once per
// block). The scans' replays start from the forward's h_chunks (2, B, n_chunks, N, D), chunk
// steps apart.
template <typename V, int64_t N>
void gated_backward_block(const Shape& s, const float* const u[2], const float* const dt[2],
                          const float* A, const float* const B[2], const float* const C[2],
                          const float* bias, const float* Dskip, const float* z,
                          const float* pre, const float* dout, const float* h_chunks,
                          int64_t chunk, const GatedGrads& o, float* const dB[2],
                          float* const dC[2], int64_t b, int64_t d_begin, int64_t d_end) {
  const int64_t L = s.L, LN = L * N, n_d = d_end - d_begin;
  thread_local std::vector<float> g;  // the block's g, (groups, L, W)
  thread_local std::vector<V> PB, PC;
  g.resize(n_d / kLanes<V> * group_pitch(L, kLanes<V>));
  gate_backward_block<V>(s, z, pre, dout, g.data(), o.dz, b, d_begin, n_d);
  for (int64_t sd = 0; sd < 2; ++sd) {
    PB.assign(LN, V{});
    PC.assign(LN, V{});
    gated_scan_backward_block<V, N>(s, sd, u[sd], dt[sd], A, B[sd], C[sd], bias, Dskip,
                                    g.data(), o, PB.data(), PC.data(), b, d_begin, n_d,
                                    h_chunks_row(h_chunks, s, sd, b, chunk), chunk);
    for (int64_t k = 0; k < LN; ++k) {
      dB[sd][k] = lane_sum(PB[k]);
      dC[sd][k] = lane_sum(PC[k]);
    }
  }
}

// Backward of scan_gated_fwd_res: its inputs, pre (B, L, D), h_chunks (2, B, n_chunks, N, D)
// and dout (B, L, D) in; du, ddt (of dt_raw) per direction and dz (B, L, D), dA (2, B, D, N),
// dbias and dD (2, B, D) per row, dB and dC per direction (B, P, L, N) per channel block out;
// the caller sums the per-row and per-block axes.
ffi::Error scan_gated_bwd(F32Buf u0, F32Buf u1, F32Buf dt0, F32Buf dt1, F32Buf A, F32Buf B0,
                          F32Buf B1, F32Buf C0, F32Buf C1, F32Buf bias, F32Buf Dskip, F32Buf z,
                          F32Buf pre, F32Buf h_chunks, F32Buf dout,
                          ffi::ResultBuffer<ffi::F32> du0,
                          ffi::ResultBuffer<ffi::F32> du1, ffi::ResultBuffer<ffi::F32> ddt0,
                          ffi::ResultBuffer<ffi::F32> ddt1, ffi::ResultBuffer<ffi::F32> dA,
                          ffi::ResultBuffer<ffi::F32> dB0, ffi::ResultBuffer<ffi::F32> dB1,
                          ffi::ResultBuffer<ffi::F32> dC0, ffi::ResultBuffer<ffi::F32> dC1,
                          ffi::ResultBuffer<ffi::F32> dbias, ffi::ResultBuffer<ffi::F32> dD,
                          ffi::ResultBuffer<ffi::F32> dz, int64_t d_block, int64_t chunk) {
  using V = f32xW;
  std::string err;
  const Shape s = gated_shape(u0, u1, dt0, dt1, A, B0, B1, C0, C1, bias, Dskip, z, d_block, err);
  if (err.empty() && (!has_shape(pre.dimensions(), {s.B, s.L, s.D}) ||
                      !has_shape(dout.dimensions(), {s.B, s.L, s.D})))
    err = "pre and dout must be (B, L, D)";
  if (err.empty()) err = check_chunks(s, h_chunks, chunk);
  if (!err.empty()) return ffi::Error::InvalidArgument(err);
  const float* const pu[2] = {u0.typed_data(), u1.typed_data()};
  const float* const pdt[2] = {dt0.typed_data(), dt1.typed_data()};
  const float* const pB[2] = {B0.typed_data(), B1.typed_data()};
  const float* const pC[2] = {C0.typed_data(), C1.typed_data()};
  float* const pdB[2] = {dB0->typed_data(), dB1->typed_data()};
  float* const pdC[2] = {dC0->typed_data(), dC1->typed_data()};
  const GatedGrads o{{du0->typed_data(), du1->typed_data()},
                     {ddt0->typed_data(), ddt1->typed_data()},
                     dA->typed_data(), dbias->typed_data(), dD->typed_data(), dz->typed_data()};
  const int64_t LN = s.L * s.N;
  parallel_for(s.B * s.P, [&](int64_t item) {
    const int64_t b = item / s.P, p = item % s.P;
    float* const dB_item[2] = {pdB[0] + item * LN, pdB[1] + item * LN};  // item = (b, p)
    float* const dC_item[2] = {pdC[0] + item * LN, pdC[1] + item * LN};
    with_vector_n(s.N, [&](auto Nc) {
      gated_backward_block<V, decltype(Nc)::value>(
          s, pu, pdt, A.typed_data(), pB, pC, bias.typed_data(), Dskip.typed_data(),
          z.typed_data(), pre.typed_data(), dout.typed_data(), h_chunks.typed_data(), chunk, o,
          dB_item, dC_item, b, p * s.d_block, std::min(s.D, (p + 1) * s.d_block));
    });
  });
  return ffi::Error::Success();
}

template <ffi::DataType T>
ffi::Error scan_bwd(ffi::Buffer<T> u, ffi::Buffer<T> dt, ffi::Buffer<T> A, ffi::Buffer<T> Bm,
                    ffi::Buffer<T> Cm, ffi::Buffer<T> dy, ffi::ResultBuffer<T> du,
                    ffi::ResultBuffer<T> ddt, ffi::ResultBuffer<T> dA, ffi::ResultBuffer<T> dB,
                    ffi::ResultBuffer<T> dC, bool reverse, bool bidirectional,
                    int64_t d_block) {
  using F = ffi::NativeType<T>;
  std::string err;
  const Shape s = shape_of(u, dt, A, Bm, Cm, d_block, err);
  if (err.empty() && !has_shape(dy.dimensions(), {s.S, s.B, s.L, s.D}))
    err = "dy must have u's shape (S, B, L, D)";
  if (!err.empty()) return ffi::Error::InvalidArgument(err);
  const F *pu = u.typed_data(), *pdt = dt.typed_data(), *pA = A.typed_data();
  const F *pB = Bm.typed_data(), *pC = Cm.typed_data(), *pdy = dy.typed_data();
  F *pdu = du->typed_data(), *pddt = ddt->typed_data(), *pdA = dA->typed_data();
  F *pdB = dB->typed_data(), *pdC = dC->typed_data();
  parallel_for(s.S * s.B * s.P, [&](int64_t item) {
    const int64_t sb = item / s.P, p = item % s.P, sd = sb / s.B;
    const int64_t LD = s.L * s.D, LN = s.L * s.N;
    const bool rev = reverse != (bidirectional && sd == 1);
    F* dB_item = pdB + item * LN;  // (S, B, P, L, N): item indexes (s, b, p)
    F* dC_item = pdC + item * LN;
    std::fill(dB_item, dB_item + LN, F(0));
    std::fill(dC_item, dC_item + LN, F(0));
    backward_block<F>(s, pu + sb * LD, pdt + sb * LD, pA + sd * s.D * s.N, pB + sb * LN,
                      pC + sb * LN, pdy + sb * LD, pdu + sb * LD, pddt + sb * LD,
                      pdA + sb * s.D * s.N, dB_item, dC_item, p * s.d_block,
                      std::min(s.D, (p + 1) * s.d_block), rev);
  });
  return ffi::Error::Success();
}

}  // namespace

// Both handlers take u, dt, A, B, C first and the same attributes last; the backward adds dy
// and returns du, ddt, dA, dB, dC (per row / per channel block, see the top of this file).
#define NANODNA_SCAN_INPUTS(T) \
  ffi::Ffi::Bind()               \
      .Arg<ffi::Buffer<T>>()     \
      .Arg<ffi::Buffer<T>>()     \
      .Arg<ffi::Buffer<T>>()     \
      .Arg<ffi::Buffer<T>>()     \
      .Arg<ffi::Buffer<T>>()
#define NANODNA_SCAN_ATTRS         \
  .Attr<bool>("reverse")           \
      .Attr<bool>("bidirectional") \
      .Attr<int64_t>("d_block")

#define NANODNA_BIND_FWD(T) NANODNA_SCAN_INPUTS(T).Ret<ffi::Buffer<T>>() NANODNA_SCAN_ATTRS

#define NANODNA_BIND_BWD(T)        \
  NANODNA_SCAN_INPUTS(T)           \
      .Arg<ffi::Buffer<T>>()       \
      .Ret<ffi::Buffer<T>>()       \
      .Ret<ffi::Buffer<T>>()       \
      .Ret<ffi::Buffer<T>>()       \
      .Ret<ffi::Buffer<T>>()       \
      .Ret<ffi::Buffer<T>>() NANODNA_SCAN_ATTRS

XLA_FFI_DEFINE_HANDLER_SYMBOL(NanodnaScanFwdF32, scan_fwd<ffi::F32>, NANODNA_BIND_FWD(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(NanodnaScanFwdF64, scan_fwd<ffi::F64>, NANODNA_BIND_FWD(ffi::F64));
// The gated block's inputs: u0, u1, dt0, dt1, A, B0, B1, C0, C1, bias, D, z.
#define NANODNA_GATED_INPUTS \
  ffi::Ffi::Bind()           \
      .Arg<F32Buf>()         \
      .Arg<F32Buf>()         \
      .Arg<F32Buf>()         \
      .Arg<F32Buf>()         \
      .Arg<F32Buf>()         \
      .Arg<F32Buf>()         \
      .Arg<F32Buf>()         \
      .Arg<F32Buf>()         \
      .Arg<F32Buf>()         \
      .Arg<F32Buf>()         \
      .Arg<F32Buf>()         \
      .Arg<F32Buf>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(NanodnaScanGatedFwdF32, scan_gated_fwd,
                              NANODNA_GATED_INPUTS.Ret<F32Buf>().Attr<int64_t>("d_block"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(NanodnaScanGatedFwdResF32, scan_gated_fwd_res,
                              NANODNA_GATED_INPUTS.Ret<F32Buf>()  // y
                                  .Ret<F32Buf>()                  // pre
                                  .Ret<F32Buf>()                  // h_chunks
                                  .Attr<int64_t>("d_block")
                                  .Attr<int64_t>("chunk"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(NanodnaScanGatedBwdF32, scan_gated_bwd,
                              NANODNA_GATED_INPUTS.Arg<F32Buf>()  // pre
                                  .Arg<F32Buf>()                  // h_chunks
                                  .Arg<F32Buf>()                  // dout
                                  .Ret<F32Buf>()                  // du0
                                  .Ret<F32Buf>()                  // du1
                                  .Ret<F32Buf>()                  // ddt0
                                  .Ret<F32Buf>()                  // ddt1
                                  .Ret<F32Buf>()                  // dA
                                  .Ret<F32Buf>()                  // dB0
                                  .Ret<F32Buf>()                  // dB1
                                  .Ret<F32Buf>()                  // dC0
                                  .Ret<F32Buf>()                  // dC1
                                  .Ret<F32Buf>()                  // dbias
                                  .Ret<F32Buf>()                  // dD
                                  .Ret<F32Buf>()                  // dz
                                  .Attr<int64_t>("d_block")
                                  .Attr<int64_t>("chunk"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(NanodnaScanBwdF32, scan_bwd<ffi::F32>, NANODNA_BIND_BWD(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(NanodnaScanBwdF64, scan_bwd<ffi::F64>, NANODNA_BIND_BWD(ffi::F64));
