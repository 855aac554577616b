"""How birnn_ext._C is built: the one description that setup.py and the just-in-time build
(birnn_ext/_backend.py) both use, so the two cannot drift apart.

It names the sources, the compiler flags (including the CUDA architectures as explicit
-gencode flags, which torch.utils.cpp_extension then leaves alone), the include folders and
the libraries to link. It imports nothing but the standard library at module level (setup.py
loads this file by path, before birnn_ext is installed), and nothing here asks a GPU anything
except jit_archs(), which only the JIT build calls.

    python birnn_ext/_build.py cuda-home     # the CUDA toolkit found, or why none was
    python birnn_ext/_build.py archs         # the CUDA archs setup.py builds for
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

# SASS for sm_80 (A100) and sm_90 (H100/H200), plus PTX of compute_90 that the driver
# compiles at load time for any newer GPU (Blackwell and later), which would otherwise get
# "no kernel image is available".
DEFAULT_ARCHS = "8.0;9.0+PTX"
# The oldest torch whose headers this code builds against: at::Float32Op (the per-operator
# TF32 flag) and at::CuBLASReductionOption, both read in csrc/cuda/common.cu, first appear
# in 2.10; 2.9 lacks both. (Every source was compiled against 2.10's and 2.11's headers.)
TORCH_FLOOR = "2.10"


def sources(with_cuda: bool, root: str) -> list[str]:
    """The C++ (and CUDA) sources, relative to root."""
    found = ["csrc/ops.cpp", "csrc/layer.cpp"]
    patterns = ["csrc/cpu/*.cpp"] + (["csrc/cuda/*.cpp", "csrc/cuda/*.cu"] if with_cuda else [])
    for pattern in patterns:
        found += sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, pattern)))
    return found


def _toolkit_from_nvcc(nvcc: str) -> str | None:
    """The toolkit folder behind an nvcc, which may be a wrapper script: the TOP= line of
    `nvcc --dryrun`, else the folder above its bin/."""
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True,
                             timeout=60, cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    if match and os.path.isfile(os.path.join(match.group(1).strip(), "bin", "nvcc")):
        return os.path.realpath(match.group(1).strip())
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return home if os.path.isfile(os.path.join(home, "bin", "nvcc")) else None


def cuda_home() -> tuple[str | None, str]:
    """(toolkit folder or None, how it was found or why not): CUDA_HOME / CUDA_PATH, then
    /usr/local/cuda, then the nvcc on PATH."""
    tried = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            if os.path.isfile(os.path.join(home, "bin", "nvcc")):
                return home, f"{var}={home}"
            tried.append(f"{var}={home} has no bin/nvcc")
    if os.path.isfile("/usr/local/cuda/bin/nvcc"):
        return os.path.realpath("/usr/local/cuda"), "/usr/local/cuda"
    tried.append("no /usr/local/cuda/bin/nvcc")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        tried.append("no nvcc on PATH")
    else:
        home = _toolkit_from_nvcc(nvcc)
        if home:
            return home, f"the nvcc on PATH ({nvcc})"
        tried.append(f"{nvcc} names no toolkit folder")
    return None, "no CUDA toolkit found: " + "; ".join(tried)


def nvcc_version(home: str | None) -> str | None:
    """The toolkit's release ("13.0") as its nvcc reports it, or None."""
    if not home:
        return None
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out.stdout)
    return match.group(1) if match else None


def want_cuda(home: str | None, *, jit: bool) -> bool:
    """Whether to build the CUDA kernels. BIRNN_EXT_NO_CUDA=1 never, FORCE_CUDA=1 always;
    otherwise when a toolkit is found and torch is a CUDA build (and, for the JIT build, a
    GPU is there to use them)."""
    import torch

    if os.environ.get("BIRNN_EXT_NO_CUDA") == "1":
        return False
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    if home is None or torch.version.cuda is None:
        return False
    return torch.cuda.is_available() if jit else True


def jit_archs() -> str:
    """The JIT build's architectures: TORCH_CUDA_ARCH_LIST, else this machine's GPUs, with
    PTX of the newest (torch.utils.cpp_extension's own default)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    import torch

    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    names = [f"{major}.{minor}" for major, minor in caps] or DEFAULT_ARCHS.split(";")
    return ";".join(names[:-1] + [names[-1].replace("+PTX", "") + "+PTX"])


def gencode_flags(archs: str) -> list[str]:
    """nvcc flags for an arch list like "8.0;9.0+PTX" (or "9.0a"): SASS for each, plus PTX
    for the entries marked +PTX."""
    flags = []
    for entry in re.split(r"[;\s,]+", archs.strip()):
        if not entry:
            continue
        match = re.fullmatch(r"(\d+)\.(\d+)([a-z]?)(\+PTX)?", entry)
        if not match:
            raise ValueError(f"birnn_ext: cannot read CUDA arch {entry!r} in {archs!r}")
        num = match.group(1) + match.group(2) + match.group(3)
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if match.group(4):
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    if not flags:
        raise ValueError("birnn_ext: empty CUDA arch list")
    return flags


def describe_archs(archs: str) -> str:
    """"8.0;9.0+PTX" -> "SASS sm_80 sm_90; PTX compute_90 (newer GPUs compile it at load)"."""
    flags = gencode_flags(archs)
    sass = [f.rsplit("code=", 1)[1] for f in flags if "code=sm_" in f]
    ptx = [f.rsplit("code=", 1)[1] for f in flags if "code=compute_" in f]
    text = "SASS " + " ".join(sass)
    if ptx:
        text += "; PTX " + " ".join(ptx) + " (newer GPUs compile it at load)"
    else:
        text += "; no PTX: GPUs newer than these have no kernel image"
    return text


def _nvidia_dirs(kind: str) -> list[str]:
    """include/ or lib/ folders of torch's nvidia pip packages (CUDA wheels of torch)."""
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", kind))
    return sorted(set(dirs))


def _cublas_link(home: str | None) -> tuple[list[str], list[str]]:
    """(library_dirs, libraries) that link libcublas: the toolkit's, else torch's pip copy.

    The pip packages carry only the versioned file (libcublas.so.13), so it is named exactly
    (-l:NAME); the binary records its soname either way, and at run time it resolves to the
    copy torch has already loaded."""
    folders = [os.path.join(home, sub) for sub in ("lib64", "lib")] if home else []
    folders += _nvidia_dirs("lib")
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "libcublas.so")):
            return [folder], ["cublas"]
    for folder in folders:
        versioned = sorted(glob.glob(os.path.join(folder, "libcublas.so.[0-9]*")), key=len)
        if versioned:
            return [folder], [":" + os.path.basename(versioned[0])]
    return [], ["cublas"]


def config(root: str, *, jit: bool) -> dict:
    """Everything one build needs: sources (relative to root), compiler flags, link
    libraries, and what was chosen (with_cuda, cuda_home, archs, cuda_version)."""
    import torch

    home, _ = cuda_home()
    with_cuda = want_cuda(home, jit=jit)
    cxx = ["-O3", f'-DBIRNN_TORCH_VERSION="{torch.__version__}"']
    cfg = dict(with_cuda=with_cuda, sources=sources(with_cuda, root), cxx=cxx, nvcc=[],
               library_dirs=[], libraries=[], cuda_home=home, archs=None, cuda_version=None)
    if not with_cuda:
        return cfg
    archs = jit_archs() if jit else os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS
    # The toolkit that compiled the kernels; torch's own CUDA version is known at run time.
    cuda_version = nvcc_version(home) or torch.version.cuda
    # cuBLAS/cuSPARSE/cuSOLVER headers that ATen's CUDA headers include: a slim toolkit lacks
    # them and torch's CUDA wheels ship them. -isystem folders come after -I ones, so a full
    # toolkit's own headers still win wherever both exist.
    includes = [flag for folder in _nvidia_dirs("include") for flag in ("-isystem", folder)]
    defines = ["-DWITH_CUDA", f'-DBIRNN_CUDA_ARCHS="{archs}"',
               f'-DBIRNN_CUDA_VERSION="{cuda_version}"']
    # No --use_fast_math: the cells' expf/tanhf must round like torch.nn's kernels, and the
    # pointwise pass is bound by memory and latency, not by transcendental throughput.
    nvcc = ["-O3", *defines, *gencode_flags(archs), *includes]
    if os.environ.get("NVCC_THREADS"):
        nvcc += ["--threads", os.environ["NVCC_THREADS"]]
    library_dirs, libraries = _cublas_link(home)
    cfg.update(cxx=cxx + defines + includes, nvcc=nvcc, library_dirs=library_dirs,
               libraries=libraries, archs=archs, cuda_version=cuda_version)
    return cfg


def ldflags(cfg: dict) -> list[str]:
    """The link flags of cfg as a linker command line (the JIT build takes them so)."""
    return [f"-L{d}" for d in cfg["library_dirs"]] + [f"-l{lib}" for lib in cfg["libraries"]]


if __name__ == "__main__":
    if sys.argv[1:] == ["cuda-home"]:
        found, how = cuda_home()
        print(found if found else how)
        sys.exit(0 if found else 1)
    if sys.argv[1:] == ["archs"]:  # what setup.py builds for
        print(os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS)
        sys.exit(0)
    sys.exit("usage: python birnn_ext/_build.py cuda-home|archs")
