// One PlantCAD l20 row of the gated scan block's arrays (shared by main.cc and impl.cc).
#pragma once
#include <cstdint>

struct Row {
  int64_t L, D, N;
  const float *u[2], *dt_raw[2], *dt[2], *B[2], *C[2], *A, *bias, *Dskip, *z, *dout;
  float *y, *pre, *du[2], *ddt[2], *dA, *dbias, *dD, *dz;
  float* h_chunks;  // (2, 1, ceil(L / chunk), N, D): the gated forward's saved states
  int64_t chunk;
};
