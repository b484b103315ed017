// One version of kernels/cpu/selective_scan.cc (#included as KERNEL_SRC), its inner functions
// on one row behind extern "C" names PREFIX_scan_fwd etc., so that two versions link into one
// binary (benchmarks/bench_kernel_ab.py). Uses the kernel's internal API (forward_lanes,
// backward_lanes, gated_lanes, gated_backward_block): versions compared must share it.
#include KERNEL_SRC
#include "row.h"

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
using V = f32xW;
constexpr int64_t W = kLanes<V>;

// Both directions' selective scans (dt already positive), y = forward + reverse.
extern "C" void CAT(PREFIX, _scan_fwd)(const Row& r) {
  const Shape s{2, 1, r.L, r.D, r.N, 64, r.D / 64};
  for (int64_t d = 0; d < r.D; d += W) {
    forward_lanes<V, 16>(s, r.u[0], r.dt[0], r.A, r.B[0], r.C[0], r.y, d, false);
    forward_lanes<V, 16>(s, r.u[1], r.dt[1], r.A + r.D * r.N, r.B[1], r.C[1], r.y, d, true,
                         nullptr, true);
  }
}

// Both directions' scan backwards on one group's contiguous (L, W) buffers, every group.
extern "C" void CAT(PREFIX, _scan_bwd)(const Row& r) {
  const Shape group{1, 1, r.L, W, 16, W, 1};
  thread_local std::vector<V> H, E, PB, PC;
  thread_local std::vector<float> ub, dtb, gb, dub, ddtb, dAb;
  for (auto* v : {&ub, &dtb, &gb, &dub, &ddtb}) v->resize(r.L * W);
  dAb.resize(W * 16);
  PB.assign(r.L * 16, V{});
  PC.assign(r.L * 16, V{});
  for (int64_t i = 0; i < r.L * W; ++i) ub[i] = r.u[0][i], dtb[i] = r.dt[0][i], gb[i] = r.dout[i];
  for (int64_t d = 0; d < r.D; d += W)
    for (int sd = 0; sd < 2; ++sd)
      backward_lanes<V, 16>(group, ub.data(), dtb.data(), r.A + (sd * r.D + d) * 16, r.B[sd], r.C[sd],
                            gb.data(), dub.data(), ddtb.data(), dAb.data(), PB.data(), PC.data(),
                            0, sd == 1, H, E);
}

// The gated block's forward (softplus, both scans, skip, gate), every group of the row.
extern "C" void CAT(PREFIX, _gated_fwd)(const Row& r) {
  const Shape s{2, 1, r.L, r.D, r.N, 64, r.D / 64};
  for (int64_t d = 0; d < r.D; d += W)
    gated_lanes<V, 16>(s, r.u, r.dt_raw, r.A, r.B, r.C, r.bias, r.Dskip, r.z, r.y, r.pre, 0, d,
                       r.h_chunks, r.chunk);
}

// The gated block's backward, every block of 128 channels of the row (as the kernel's work
// items, D_BLOCK in kernels/cpu/selective_scan.py), from the states the forward saved.
extern "C" void CAT(PREFIX, _gated_bwd)(const Row& r) {
  const Shape s{2, 1, r.L, r.D, r.N, 128, r.D / 128};
  const GatedGrads o{{r.du[0], r.du[1]}, {r.ddt[0], r.ddt[1]}, r.dA, r.dbias, r.dD, r.dz};
  thread_local std::vector<float> dB0, dB1, dC0, dC1;  // (L, N) per block, overwritten
  for (auto* v : {&dB0, &dB1, &dC0, &dC1}) v->resize(r.L * r.N);
  float* const dB[2] = {dB0.data(), dB1.data()};
  float* const dC[2] = {dC0.data(), dC1.data()};
  for (int64_t d = 0; d < r.D; d += s.d_block)
    gated_backward_block<V, 16>(s, r.u, r.dt_raw, r.A, r.B, r.C, r.bias, r.Dskip, r.z, r.pre,
                                r.dout, r.h_chunks, r.chunk, o, dB, dC, 0, d, d + s.d_block);
}
