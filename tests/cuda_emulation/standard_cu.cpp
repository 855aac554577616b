// csrc/cuda/standard.cu, its own source unchanged, compiled as C++ for the CPU emulation
// (cuda_mock.h says how; tests/test_cuda_emulation.py builds it).
#include "cuda_mock.h"  // first: it defines BIRNN_CUDA_EMULATION

#include "../../csrc/cuda/standard.cu"
