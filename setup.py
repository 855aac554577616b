"""Builds birnn_ext._C with torch.utils.cpp_extension and ninja.

CPU kernels always; CUDA kernels too when a CUDA toolkit is usable (CUDA_HOME, or the nvcc
on PATH) and torch is a CUDA build, or when FORCE_CUDA=1. No GPU is needed to build.
Environment: TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), MAX_JOBS, NVCC_THREADS,
FORCE_CUDA=1 / BIRNN_EXT_NO_CUDA=1.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0"


def _toolkit_from_nvcc():
    """The toolkit folder behind the nvcc on PATH (which may be a wrapper script)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    if match and os.path.isfile(os.path.join(match.group(1).strip(), "bin", "nvcc")):
        return os.path.realpath(match.group(1).strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return home
    return _toolkit_from_nvcc()


def _want_cuda(cuda_home):
    import torch

    if os.environ.get("BIRNN_EXT_NO_CUDA") == "1":
        return False
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    return cuda_home is not None and torch.version.cuda is not None


def _nvidia_include_dirs():
    """cuBLAS/cuSPARSE headers shipped in torch's nvidia pip packages (CUDA wheels of torch)."""
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    return sorted(set(dirs))


def _extensions():
    cuda_home = _cuda_home()
    use_cuda = _want_cuda(cuda_home)
    if use_cuda and cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)

    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/ops.cpp", "csrc/layer.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", f'-DBIRNN_TORCH_VERSION="{torch.__version__}"']
    if not use_cuda:
        return [CppExtension("birnn_ext._C", sources, extra_compile_args={"cxx": cxx})]

    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    cxx += ["-DWITH_CUDA", f'-DBIRNN_CUDA_ARCHS="{archs}"',
            f'-DBIRNN_CUDA_VERSION="{torch.version.cuda}"']
    nvcc = ["-O3", "--use_fast_math", "-DWITH_CUDA"]
    threads = os.environ.get("NVCC_THREADS")
    if threads:
        nvcc += ["--threads", threads]
    sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
    return [CUDAExtension("birnn_ext._C", sources, include_dirs=_nvidia_include_dirs(),
                          extra_compile_args={"cxx": cxx, "nvcc": nvcc})]


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
        install_requires=["torch>=2.4"],
        zip_safe=False,
    )


if __name__ == "__main__":
    main()
