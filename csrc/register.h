// The kernel table shared by every device's TORCH_LIBRARY_IMPL block: the ops' bodies
// (csrc/layer.cpp) are device-generic, so CPU and CUDA register the same functions and
// differ only in the recurrence driver layer.cpp calls.
#pragma once

#include "birnn.h"

#define BIRNN_REGISTER_CELL_OPS(m, NAME, KIND)                   \
  m.impl(NAME "_forward", &::birnn::layer_forward<KIND>);        \
  m.impl(NAME "_backward", &::birnn::layer_backward<KIND>)

#define BIRNN_REGISTER_LAYER_OPS(m)                                              \
  BIRNN_REGISTER_CELL_OPS(m, "rnn_tanh", ::birnn::CellKind::RnnTanh);            \
  BIRNN_REGISTER_CELL_OPS(m, "rnn_relu", ::birnn::CellKind::RnnRelu);            \
  BIRNN_REGISTER_CELL_OPS(m, "lstm", ::birnn::CellKind::Lstm);                   \
  BIRNN_REGISTER_CELL_OPS(m, "gru", ::birnn::CellKind::Gru)
