// The persistent fused recurrence: the entry points the CUDA dispatch calls.
//
// One cooperative launch runs all T steps of both directions of a layer (forward, or the
// backward recurrence), each block keeping its slice of W_hh (W_hh^T backward) in shared
// memory for the whole launch; the kernels are in persistent_kernels.h, the division of
// work and the on-chip limits in persistent_plan.h.
//
// How the dispatch uses it (forward; backward the same with BackwardArgs):
//
//   std::string why;
//   const cudaDeviceProp& prop = *at::cuda::getDeviceProperties(args.output.get_device());
//   if (want_persistent && persistent_supported(args, prop, &why)) {
//     persistent_forward_cuda(args, at::cuda::getCurrentCUDAStream());
//   } else {
//     ... standard path (why says what ruled the persistent kernel out) ...
//   }
//
// The forward and the backward are decided separately; the reserve layout they share is
// the standard path's, so a persistent forward may be followed by a standard backward and
// the other way round.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "../birnn.h"

namespace birnn {

// Whether persistent_forward_cuda / persistent_backward_cuda can run this layer on the
// device described by `prop` (the device of the args' tensors). When not, and `why` is not
// null, *why says which rule or limit ruled it out. Rules: float32, float16 or bfloat16;
// no projection (proj_size); B * D * H < 2^31; the device supports cooperative launches;
// the weight slice, the staging area and the partial sums fit in the device's shared memory
// per block (sharedMemPerBlockOptin) with one block of each direction per SM
// (multiProcessorCount / D blocks per direction); and the kernel's real occupancy (its
// registers, from the CUDA occupancy API) keeps the whole grid co-resident. Queries the
// occupancy API on the args' device (cached per kernel and size); never syncs.
bool persistent_supported(const ForwardArgs& args, const cudaDeviceProp& prop,
                          std::string* why = nullptr);
bool persistent_supported(const BackwardArgs& args, const cudaDeviceProp& prop,
                          std::string* why = nullptr);

// Runs the whole forward recurrence of `args` (ForwardArgs in csrc/birnn.h: reads gates_x,
// w_hh, b_hh, lengths, h (h0), c (c0); writes output, h (h_n), c (c_n), and reserve when
// defined) as one cooperative launch on `stream`. `stream` must be ordered after the
// producers of the args' tensors and before their consumers: pass the current stream.
// Scratch comes from the caching allocator on `stream`. Raises (TORCH_CHECK) when
// persistent_supported() is false; never syncs with the host, so it is capturable in a
// CUDA graph.
void persistent_forward_cuda(const ForwardArgs& args, cudaStream_t stream);

// Runs the whole backward recurrence of `args` (BackwardArgs: reads grad_output, lengths,
// w_hh, output, h0, c0, reserve, dh (dh_n), dc (dc_n); writes dgates_x, dgates_h, dh
// (dLoss/dh0), dc (dLoss/dc0)) as one cooperative launch on `stream`; the op then computes
// dx and the weight gradients from dgates as for the standard path. Same contract as
// persistent_forward_cuda.
void persistent_backward_cuda(const BackwardArgs& args, cudaStream_t stream);

}  // namespace birnn
