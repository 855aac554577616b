"""Builds birnn_ext._C with torch.utils.cpp_extension and ninja.

What is built and how (sources, flags, CUDA archs, libraries) is described once, in
birnn_ext/_build.py, which the just-in-time build uses too. CPU kernels always; CUDA kernels
too when a CUDA toolkit is usable (CUDA_HOME, /usr/local/cuda, or the nvcc on PATH) and torch
is a CUDA build, or when FORCE_CUDA=1. No GPU is needed to build: nothing here asks torch about
devices.
Environment: TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX": SASS for sm_80 and sm_90, PTX of
compute_90 for newer GPUs), MAX_JOBS (ninja's parallel jobs, read by
torch.utils.cpp_extension), NVCC_THREADS (nvcc --threads), FORCE_CUDA=1 / BIRNN_EXT_NO_CUDA=1.
"""

import importlib.util
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _build_description():
    """birnn_ext/_build.py, loaded by path: importing the package would import torch and try
    to load the very module being built."""
    spec = importlib.util.spec_from_file_location("birnn_ext_build",
                                                  os.path.join(ROOT, "birnn_ext", "_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _build_description()


def _extensions():
    home, _ = BUILD.cuda_home()
    if home and BUILD.want_cuda(home, jit=False):
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = home
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cfg = BUILD.config(ROOT, jit=False)
    if not cfg["with_cuda"]:
        return [CppExtension("birnn_ext._C", cfg["sources"],
                             extra_compile_args={"cxx": cfg["cxx"]})]
    return [CUDAExtension("birnn_ext._C", cfg["sources"], library_dirs=cfg["library_dirs"],
                          libraries=cfg["libraries"],
                          extra_compile_args={"cxx": cfg["cxx"], "nvcc": cfg["nvcc"]})]


def main():
    from torch.utils.cpp_extension import BuildExtension

    setup(
        name="birnn_ext",
        version="0.1.0",
        description="Fused bidirectional RNN, LSTM and GRU layers for PyTorch",
        packages=find_packages(include=["birnn_ext", "birnn_ext.*"]),
        ext_modules=_extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        python_requires=">=3.9",
        install_requires=[f"torch>={BUILD.TORCH_FLOOR}"],
        zip_safe=False,
    )


if __name__ == "__main__":
    main()
