"""birnn_ext: drop-in torch.nn.RNN / LSTM / GRU whose bidirectional layers run both
directions concurrently in fused C++/CUDA kernels."""

from ._backend import get_backend, kernel_path, set_backend
from .modules import GRU, LSTM, RNN, convert

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "convert", "get_backend", "set_backend", "kernel_path",
           "__version__"]
