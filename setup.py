"""Builds birnn_ext._C with torch.utils.cpp_extension and ninja.

CPU kernels always; CUDA kernels too when a CUDA toolkit is usable (CUDA_HOME, or the nvcc
on PATH) and torch is a CUDA build, or when FORCE_CUDA=1. No GPU is needed to build: nothing
here asks torch about devices.
Environment: TORCH_CUDA_ARCH_LIST (default "8.0;9.0": SASS for sm_80 and sm_90, no PTX),
MAX_JOBS (ninja's parallel jobs, read by torch.utils.cpp_extension), NVCC_THREADS (nvcc
--threads, compiles the archs of one file in parallel), FORCE_CUDA=1 / BIRNN_EXT_NO_CUDA=1.
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


def _nvidia_dirs(kind):
    """include/ or lib/ folders of torch's nvidia pip packages (CUDA wheels of torch)."""
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", kind))
    return sorted(set(dirs))


def _nvidia_include_flags():
    """-isystem flags for the cuBLAS/cuSPARSE/cuSOLVER headers ATen's CUDA headers include.

    A slim toolkit (just nvcc and the runtime) lacks them; torch's CUDA wheels ship them.
    -isystem folders are searched after -I ones, so a full toolkit's own headers still win
    over the pip copies wherever both exist.
    """
    flags = []
    for folder in _nvidia_dirs("include"):
        flags += ["-isystem", folder]
    return flags


def _cublas_link(cuda_home):
    """(library_dirs, libraries) that link libcublas: the toolkit's, else torch's pip copy.

    The pip packages carry only the versioned file (libcublas.so.13), so it is named exactly
    with -l:NAME; the binary records its soname either way, and at run time it resolves to
    the copy torch has already loaded.
    """
    folders = [os.path.join(cuda_home, sub) for sub in ("lib64", "lib")] if cuda_home else []
    folders += _nvidia_dirs("lib")
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "libcublas.so")):
            return [folder], ["cublas"]
    for folder in folders:
        versioned = sorted(glob.glob(os.path.join(folder, "libcublas.so.[0-9]*")), key=len)
        if versioned:
            return [folder], [":" + os.path.basename(versioned[0])]
    return [], ["cublas"]


def _nvcc_version(cuda_home):
    """The toolkit's release ("13.0") as nvcc reports it, or None."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError, TypeError):
        return None
    match = re.search(r"release (\d+\.\d+)", out.stdout)
    return match.group(1) if match else None


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

    # torch.utils.cpp_extension turns the list into -gencode=arch=compute_XY,code=sm_XY per
    # arch (SASS only; add "+PTX" to an entry for a forward-compatible PTX copy).
    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    # The toolkit that compiled the kernels; torch's own CUDA version is known at run time.
    cuda_version = _nvcc_version(cuda_home) or torch.version.cuda
    cxx += ["-DWITH_CUDA", f'-DBIRNN_CUDA_ARCHS="{archs}"',
            f'-DBIRNN_CUDA_VERSION="{cuda_version}"']
    # No --use_fast_math: the cells' expf/tanhf must round like torch.nn's kernels, and the
    # pointwise pass is bound by memory and latency, not by transcendental throughput.
    nvcc = ["-O3", "-DWITH_CUDA"]
    threads = os.environ.get("NVCC_THREADS")
    if threads:
        nvcc += ["--threads", threads]
    include_flags = _nvidia_include_flags()
    library_dirs, libraries = _cublas_link(cuda_home)
    sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
    return [CUDAExtension("birnn_ext._C", sources, library_dirs=library_dirs,
                          libraries=libraries,
                          extra_compile_args={"cxx": cxx + include_flags,
                                              "nvcc": nvcc + include_flags})]


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
