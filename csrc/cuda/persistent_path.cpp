// The persistent kernels (csrc/cuda/persistent.h) as a path of the dispatch (dispatch.h):
// entry points that take the op's arguments and the current stream, and the size limits
// asked with a layer's shape alone, so that kernel_path() and the ops give the same answer.
#include <ATen/cuda/CUDAContext.h>

#include "dispatch.h"
#include "persistent.h"
#include "persistent_launch.h"

namespace birnn {
namespace cuda {

void persistent_forward(const ForwardArgs& args) {
  persistent_forward_cuda(args, at::cuda::getCurrentCUDAStream());
}

void persistent_backward(const BackwardArgs& args) {
  persistent_backward_cuda(args, at::cuda::getCurrentCUDAStream());
}

bool persistent_supports(const LayerShape& s) {
  if (s.G < 0 || s.H < 0 || s.B < 0 || s.T < 0 || s.D < 0 ||
      s.dtype == at::ScalarType::Undefined) {
    return true;  // a query without a layer: nothing rules the path out yet
  }
  if (s.Hout >= 0 && s.Hout != s.H) return false;  // a projection stays on the standard path
  // The gate count names the cell's sizes; the RNN's two activations have the same limits.
  const CellKind cell = s.G == 4 ? CellKind::Lstm : s.G == 3 ? CellKind::Gru : CellKind::RnnTanh;
  const int device = at::cuda::current_device();
  const cudaDeviceProp& prop = *at::cuda::getDeviceProperties(device);
  return persistent::plan_layer(cell, s.dtype, s.backward, s.training, s.T, s.B, s.H, s.D, prop,
                                device)
      .ok;
}

}  // namespace cuda
}  // namespace birnn
