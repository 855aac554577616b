// Single-threaded float32 GEMM throughput of the candidate engines for the CPU recurrence's
// shapes: birnn_ext's own GEMM (csrc/cpu/gemm_kernel.h, AVX-512 and AVX2 builds), MKL (the
// copy inside libtorch_cpu, plain and with its packed-weight API), oneDNN (dnnl_sgemm) and
// OpenBLAS (scipy-openblas32). benchmarks/NOTES.md ("GEMM engines") records what it printed;
// run.sh builds and runs it.
//
// Each shape is used the way the CPU driver uses it, one direction's share on one thread:
//   step   out[B, 4H] = h[B, H] @ W_hh^T       the same weight every step: own and MKL-packed
//                                              pack it once outside the timed loop
//   proj   out[R, 4H] = x[R, H] @ W_ih^T + b   R = the rows of one projection chunk
//   dx     dx[T*B, H] = dgates[T*B, 4H] @ W_ih
//   dW     dW[4H, H]  = dgates^T @ x           dgates read transposed in place; own packs x
//                                              inside the timed call
// Libraries are found with dlopen, so a missing one only drops its column.
//
//   gemm_engines ISA LIBTORCH_CPU LIBDNNL LIBOPENBLAS    (ISA: avx512 or avx2)
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/cpu/gemm.h"

namespace birnn::cpu {
namespace avx512 { extern const GemmIsa kGemm; }
namespace avx2 { extern const GemmIsa kGemm; }
}  // namespace birnn::cpu

namespace {

using Sgemm = void (*)(const char*, const char*, const int*, const int*, const int*,
                       const float*, const float*, const int*, const float*, const int*,
                       const float*, float*, const int*);
using PackGetSize = size_t (*)(int, int, int, int);
using Pack = void (*)(int, int, int, int, int, int, float, const float*, int, float*);
using Compute = void (*)(int, int, int, int, int, int, const float*, int, const float*, int,
                         float, float*, int);
using SetThreads = int (*)(int);
using DnnlSgemm = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
using CblasSgemm = void (*)(int, int, int, int, int, int, float, const float*, int,
                            const float*, int, float, float*, int);
using OpenblasThreads = void (*)(int);

constexpr int kRowMajor = 101, kColMajor = 102, kNoTrans = 111, kTrans = 112, kPacked = 151,
              kAMatrix = 161;

void* sym(void* lib, const char* name) { return lib ? dlsym(lib, name) : nullptr; }

// Median seconds per call over repeated timed batches (at least 0.15 s of calls in all).
double seconds_per_call(const std::function<void()>& fn) {
  fn();
  std::vector<double> per_call;
  double total = 0;
  int reps = 1;
  while (per_call.size() < 7 || total < 0.15) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) fn();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    per_call.push_back(s / reps);
    total += s;
    if (s < 0.01) reps *= 2;
  }
  std::sort(per_call.begin(), per_call.end());
  return per_call[per_call.size() / 2];
}

std::vector<float> random_floats(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

struct Engines {
  const birnn::cpu::GemmIsa* own;
  Sgemm mkl = nullptr;
  PackGetSize mkl_pack_size = nullptr;
  Pack mkl_pack = nullptr;
  Compute mkl_compute = nullptr;
  DnnlSgemm dnnl = nullptr;
  CblasSgemm openblas = nullptr;
};

// Row-major C[M, N] = A[M, K] op B + beta C through each library, with A possibly transposed
// (stored [K, M]) and B stored [N, K] (transposed use) or [K, N].
struct Problem {
  const char* name;
  int M, N, K;
  bool a_trans, b_trans;
  bool prepacked;  // the right operand is the same at every call (a weight)
};

void run(const Engines& e, const Problem& p) {
  const auto a = random_floats(size_t(p.M) * p.K, 1);
  const auto b = random_floats(size_t(p.N) * p.K, 2);
  std::vector<float> c(size_t(p.M) * p.N);
  const double flops = 2.0 * p.M * p.N * p.K;
  auto gflops = [&](double s) { return flops / s * 1e-9; };
  std::printf("%-5s M=%-5d N=%-5d K=%-5d", p.name, p.M, p.N, p.K);

  // own: B packed once (prepacked) or inside the call (an activation, as the driver does).
  const int64_t a_row = p.a_trans ? 1 : p.K, a_col = p.a_trans ? p.M : 1;
  const int64_t ldb = p.b_trans ? p.K : p.N;
  std::vector<float> panels(e.own->panel_floats(p.N, p.K));
  e.own->pack_panels(b.data(), ldb, p.N, p.K, p.b_trans, panels.data());
  const double own = seconds_per_call([&] {
    if (!p.prepacked) e.own->pack_panels(b.data(), ldb, p.N, p.K, p.b_trans, panels.data());
    e.own->gemm(p.M, p.N, p.K, a.data(), a_row, a_col, panels.data(), nullptr, 0.f, c.data(),
                p.N);
  });
  std::printf("  own %6.1f", gflops(own));

  // Column-major view of row-major C = A B: C^T = B^T A^T, so B is the first operand.
  const char tb = p.b_trans ? 'T' : 'N', ta = p.a_trans ? 'T' : 'N';
  const int lda = p.a_trans ? p.M : p.K, ldbi = static_cast<int>(ldb);
  const float one = 1.f, zero = 0.f;
  if (e.mkl) {
    const double s = seconds_per_call([&] {
      e.mkl(&tb, &ta, &p.N, &p.M, &p.K, &one, b.data(), &ldbi, a.data(), &lda, &zero, c.data(),
            &p.N);
    });
    std::printf("  mkl %6.1f", gflops(s));
  } else {
    std::printf("  mkl      -");
  }
  if (e.mkl_compute && p.prepacked) {
    std::vector<char> packed(e.mkl_pack_size(kAMatrix, p.N, p.M, p.K));
    e.mkl_pack(kColMajor, kAMatrix, p.b_trans ? kTrans : kNoTrans, p.N, p.M, p.K, 1.f, b.data(),
               ldbi, reinterpret_cast<float*>(packed.data()));
    const double s = seconds_per_call([&] {
      e.mkl_compute(kColMajor, kPacked, p.a_trans ? kTrans : kNoTrans, p.N, p.M, p.K,
                    reinterpret_cast<const float*>(packed.data()), p.N, a.data(), lda, 0.f,
                    c.data(), p.N);
    });
    std::printf("  mkl-packed %6.1f", gflops(s));
  } else {
    std::printf("  mkl-packed      -");
  }
  if (e.dnnl) {
    const double s = seconds_per_call([&] {
      e.dnnl(ta, tb, p.M, p.N, p.K, 1.f, a.data(), lda, b.data(), ldbi, 0.f, c.data(), p.N);
    });
    std::printf("  onednn %6.1f", gflops(s));
  } else {
    std::printf("  onednn      -");
  }
  if (e.openblas) {
    const double s = seconds_per_call([&] {
      e.openblas(kRowMajor, p.a_trans ? kTrans : kNoTrans, p.b_trans ? kTrans : kNoTrans, p.M,
                 p.N, p.K, 1.f, a.data(), lda, b.data(), ldbi, 0.f, c.data(), p.N);
    });
    std::printf("  openblas %6.1f", gflops(s));
  } else {
    std::printf("  openblas      -");
  }
  std::printf("   GFLOP/s\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s avx512|avx2 LIBTORCH_CPU LIBDNNL LIBOPENBLAS\n", argv[0]);
    return 2;
  }
  Engines e;
  e.own = std::strcmp(argv[1], "avx512") == 0 ? &birnn::cpu::avx512::kGemm
                                               : &birnn::cpu::avx2::kGemm;
  auto open = [](const char* path, int mode) {
    void* lib = dlopen(path, RTLD_NOW | mode);
    if (lib == nullptr) std::printf("cannot load %s: %s\n", path, dlerror());
    return lib;
  };
  void* torch = open(argv[2], RTLD_GLOBAL);
  void* dnnl = open(argv[3], RTLD_LOCAL);
  void* openblas = open(argv[4], RTLD_LOCAL);
  e.mkl = reinterpret_cast<Sgemm>(sym(torch, "sgemm_"));
  e.mkl_pack_size = reinterpret_cast<PackGetSize>(sym(torch, "cblas_sgemm_pack_get_size"));
  e.mkl_pack = reinterpret_cast<Pack>(sym(torch, "cblas_sgemm_pack"));
  e.mkl_compute = reinterpret_cast<Compute>(sym(torch, "cblas_sgemm_compute"));
  if (auto threads = reinterpret_cast<SetThreads>(sym(torch, "MKL_Set_Num_Threads_Local"))) {
    threads(1);
  }
  e.dnnl = reinterpret_cast<DnnlSgemm>(sym(dnnl, "dnnl_sgemm"));
  e.openblas = reinterpret_cast<CblasSgemm>(sym(openblas, "scipy_cblas_sgemm"));
  if (auto t = reinterpret_cast<OpenblasThreads>(sym(openblas, "scipy_openblas_set_num_threads"))) t(1);
  std::printf("isa %s; libraries: mkl %s, onednn %s, openblas %s\n", argv[1],
              e.mkl ? "yes" : "no", e.dnnl ? "yes" : "no", e.openblas ? "yes" : "no");

  for (int H : {128, 256, 512}) {
    const int G = 4 * H;
    for (int B : {1, 8, 64}) run(e, {"step", B, G, H, false, true, true});
    run(e, {"proj", std::max(64, (1 << 20) / (G * 4)), G, H, false, true, true});
    run(e, {"dx", 6400, H, G, false, false, true});
    run(e, {"dW", G, H, 6400, true, false, false});
  }
  return 0;
}
