// The CPU recurrence drivers (recurrence_cpu.cpp): a layer's time loop, both directions, for
// the CPU op bodies (ops_cpu.cpp). Shapes: csrc/birnn.h.
#pragma once

#include "../birnn.h"

namespace birnn::cpu {

// Runs the forward recurrence: reads gates_x (or, when it is undefined, projects input
// itself: float32 with driver_does_gemms), writes output, h, c and reserve.
void forward_recurrence_cpu(const ForwardArgs& args);

// Runs the backward recurrence: writes dgates_x, dgates_h, dh, dc, dh_total, and, when
// grad_input is defined, dx and the weight gradients too.
void backward_recurrence_cpu(const BackwardArgs& args);

}  // namespace birnn::cpu
