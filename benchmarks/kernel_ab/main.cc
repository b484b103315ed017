// Times versions a and b of the CPU scan kernel's inner functions (impl.cc) on one PlantCAD l20
// row (L 512, D 768, N 16, both directions), one thread, in one process: each repeat runs
// every function a-then-b or b-then-a (alternating), and the minimum per function is kept, so
// that the machine's drift and the call order fall on both alike.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "row.h"

#define DECLARE(P)                                   \
  extern "C" void P##_scan_fwd(const Row&);          \
  extern "C" void P##_scan_bwd(const Row&);          \
  extern "C" void P##_gated_fwd(const Row&);         \
  extern "C" void P##_gated_bwd(const Row&);
DECLARE(a)
DECLARE(b)

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 30;
  const int64_t L = argc > 2 ? std::atoi(argv[2]) : 512, D = 768, N = 16;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  std::vector<std::vector<float>> store;
  auto array = [&](int64_t n, float scale, float shift) {
    store.emplace_back(n);
    for (float& x : store.back()) x = normal(rng) * scale + shift;
    return store.back().data();
  };
  Row r{L, D, N};
  for (int s = 0; s < 2; ++s) {
    r.u[s] = array(L * D, 1, 0);
    r.dt_raw[s] = array(L * D, 1, -3);
    float* dt = array(L * D, 0, 0);
    for (int64_t i = 0; i < L * D; ++i) dt[i] = std::log1p(std::exp(r.dt_raw[s][i]));
    r.dt[s] = dt;
    r.B[s] = array(L * N, 1, 0);
    r.C[s] = array(L * N, 1, 0);
    r.du[s] = array(L * D, 0, 0);
    r.ddt[s] = array(L * D, 0, 0);
  }
  float* A = array(2 * D * N, 0.5, 0);
  for (int64_t i = 0; i < 2 * D * N; ++i) A[i] = -std::exp(A[i]);
  r.A = A;
  r.bias = array(2 * D, 0.1, 0);
  r.Dskip = array(2 * D, 1, 0);
  r.z = array(L * D, 1, 0);
  r.dout = array(L * D, 1, 0);
  r.y = array(L * D, 0, 0);
  r.pre = array(L * D, 0, 0);
  r.dA = array(2 * D * N, 0, 0);
  r.dbias = array(2 * D, 0, 0);
  r.dD = array(2 * D, 0, 0);
  r.dz = array(L * D, 0, 0);
  r.chunk = argc > 3 ? std::atoi(argv[3]) : 64;
  r.h_chunks = array(2 * ((L + r.chunk - 1) / r.chunk) * N * D, 0, 0);

  const char* names[4] = {"scan forward", "scan backward", "gated forward", "gated backward"};
  void (*fn[4][2])(const Row&) = {{a_scan_fwd, b_scan_fwd}, {a_scan_bwd, b_scan_bwd},
                                  {a_gated_fwd, b_gated_fwd}, {a_gated_bwd, b_gated_bwd}};
  double best[4][2];
  for (auto& b : best) b[0] = b[1] = 1e30;
  for (int rep = 0; rep < reps; ++rep)
    for (int k = 0; k < 4; ++k)
      for (int j = 0; j < 2; ++j) {
        const int v = (rep % 2) ? 1 - j : j;  // a first on even repeats, b first on odd
        const auto t0 = std::chrono::steady_clock::now();
        fn[k][v](r);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best[k][v] = std::min(best[k][v], s);
      }
  const double state_steps = 2.0 * L * D * N;
  printf("one row, L %ld, D %ld, N %ld, both directions, chunk %ld; min of %d repeats, one "
         "thread\n", (long)L, (long)D, (long)N, (long)r.chunk, reps);
  printf("| function | a ms | b ms | a / b | b ns per state-step |\n|---|---|---|---|---|\n");
  for (int k = 0; k < 4; ++k)
    printf("| %s | %.2f | %.2f | %.2fx | %.3f |\n", names[k], best[k][0] * 1e3, best[k][1] * 1e3,
           best[k][0] / best[k][1], best[k][1] * 1e9 / state_steps);

  // The two versions must agree: the gated forward's y and the gated backward's du, ddt.
  auto max_diff = [&](auto fa, auto fb, std::vector<float*> outs) {
    std::vector<std::vector<float>> first;
    fa(r);
    for (float* o : outs) first.emplace_back(o, o + L * D);
    fb(r);
    double diff = 0, scale = 0;
    for (size_t j = 0; j < outs.size(); ++j)
      for (int64_t i = 0; i < L * D; ++i) {
        diff = std::max(diff, (double)std::fabs(first[j][i] - outs[j][i]));
        scale = std::max(scale, (double)std::fabs(first[j][i]));
      }
    return diff / scale;
  };
  printf("max |a - b| / max |a|: gated forward y %.1e, gated backward du, ddt %.1e\n",
         max_diff(a_gated_fwd, b_gated_fwd, {r.y}),
         max_diff(a_gated_bwd, b_gated_bwd, {r.du[0], r.du[1], r.ddt[0], r.ddt[1]}));
}
