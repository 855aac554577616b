"""Which implementation of the ops runs, and why.

Backends: "cuda" (compiled module with CUDA kernels; its CPU kernels serve CPU tensors),
"cpp" (compiled module, CPU kernels), "python" (birnn_ext/reference.py). The environment
variable BIRNN_EXT_BACKEND=auto|cuda|cpp|python picks the first one; set_backend() changes it.
"auto" takes the compiled module if it loads: the prebuilt birnn_ext._C, else a just-in-time
build of csrc/ with torch.utils.cpp_extension.load, else the Python fallback, with one warning
naming the backend in use whenever the prebuilt module was missing. A value that names no
backend, or one that is unavailable, makes `import birnn_ext` raise; `python -m
birnn_ext.info` reports it instead.
"""

from __future__ import annotations

import os
import re
import sys
import warnings

CHOICES = ("auto", "cuda", "cpp", "python")
ENV_VAR = "BIRNN_EXT_BACKEND"
_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")

_module = None          # the loaded compiled module, once tried
_tried = False
_load_note = "not loaded"
_active: str | None = None
_reason = ""
_env_problem: str | None = None  # what is wrong with BIRNN_EXT_BACKEND, kept for info only


def _jit_build():
    """Builds csrc/ just in time, with the build description setup.py uses (_build.py)."""
    from . import _build

    root = os.path.dirname(_CSRC)
    cfg = _build.config(root, jit=True)
    if cfg["with_cuda"] and cfg["cuda_home"]:
        # torch.utils.cpp_extension reads CUDA_HOME when it is first imported.
        os.environ.setdefault("CUDA_HOME", cfg["cuda_home"])
    from torch.utils.cpp_extension import load

    return load(name="birnn_ext_jit", sources=[os.path.join(root, s) for s in cfg["sources"]],
                extra_cflags=cfg["cxx"], extra_cuda_cflags=cfg["nvcc"],
                extra_ldflags=_build.ldflags(cfg), with_cuda=cfg["with_cuda"], verbose=False)


def compiled_module():
    """The compiled module (prebuilt, else JIT-built), or None; loads it on first call."""
    global _module, _tried, _load_note
    if _tried:
        return _module
    _tried = True
    try:
        from . import _C

        _module, _load_note = _C, "prebuilt module birnn_ext._C"
        return _module
    except ImportError as exc:
        missing = f"birnn_ext._C could not be imported ({exc})"
    if os.environ.get("BIRNN_EXT_NO_JIT") == "1":
        _load_note = missing + "; JIT build disabled by BIRNN_EXT_NO_JIT=1"
    elif not os.path.isdir(_CSRC):
        _load_note = missing + f"; no sources at {_CSRC} for a JIT build"
    else:
        try:
            _module = _jit_build()
            _load_note = missing + "; built just-in-time from csrc/"
        except Exception as exc:  # a failed compiler run must not break import
            _load_note = missing + f"; JIT build failed ({type(exc).__name__}: {exc})"
    return _module


def build_info() -> dict:
    """What the compiled module was built with ({} when there is none)."""
    module = compiled_module()
    return dict(module.build_info()) if module is not None else {}


def _resolve(requested: str) -> tuple[str, str]:
    if requested == "python":
        return "python", "requested"
    module = compiled_module()
    has_cuda = module is not None and bool(module.build_info()["cuda"])
    if requested == "cpp":
        if module is None:
            raise RuntimeError(f"birnn_ext: backend 'cpp' is unavailable: {_load_note}")
        return "cpp", "requested"
    if requested == "cuda":
        if not has_cuda:
            why = _load_note if module is None else "the compiled module was built without CUDA"
            raise RuntimeError(f"birnn_ext: backend 'cuda' is unavailable: {why}")
        return "cuda", "requested"
    if module is None:
        return "python", f"auto: {_load_note}"
    return ("cuda" if has_cuda else "cpp"), f"auto: {_load_note}"


def set_backend(name: str) -> str:
    """Selects the backend ("auto", "cuda", "cpp" or "python"); returns the one now active."""
    global _active, _reason
    if name not in CHOICES:
        raise ValueError(f"birnn_ext: unknown backend {name!r}; expected one of {CHOICES}")
    _active, _reason = _resolve(name)
    return _active


def get_backend() -> str:
    """The active backend: "cuda", "cpp" or "python"."""
    if _active is None:
        _init_from_env()
    return _active


def backend_reason() -> str:
    get_backend()
    return _reason


def _init_from_env():
    """Applies BIRNN_EXT_BACKEND. A value that names no backend, or a backend that is not
    available, raises (ValueError / RuntimeError) with what was set and what would work:
    `import birnn_ext` fails with that error, since running on another backend than the one
    asked for would go unnoticed. The one exception is `python -m birnn_ext.info`, which
    Python can only start after importing this package: the diagnostic must run to report the
    problem, so there the error is kept for env_problem() and the backend is chosen as by auto
    (on Python 3.9, which lacks sys.orig_argv, info fails like the import)."""
    global _env_problem
    raw = os.environ.get(ENV_VAR, "")
    requested = raw.strip().lower() or "auto"
    valid = f"Valid values of {ENV_VAR}: {', '.join(CHOICES)} (unset means auto)."
    error = None
    if requested not in CHOICES:
        error = ValueError(f"birnn_ext: {ENV_VAR}={raw!r} names no backend. {valid}")
    else:
        try:
            set_backend(requested)
        except RuntimeError as exc:  # the backend asked for is not available here
            why = str(exc).removeprefix("birnn_ext: ")
            error = RuntimeError(f"birnn_ext: {ENV_VAR}={raw!r}: {why}. {valid}")
    if error is not None:
        if not _starting_info():
            raise error
        _env_problem = str(error)
        requested = "auto"
        set_backend(requested)
    if requested == "auto" and _load_note != "prebuilt module birnn_ext._C":
        warnings.warn(f"birnn_ext: using the {_active!r} backend ({_load_note})",
                      RuntimeWarning, stacklevel=3)


def _starting_info() -> bool:
    """True while `python -m birnn_ext.info` imports this package before running info: Python
    sets sys.argv[0] to "-m" while it locates the module, and sys.orig_argv (3.10+) ends with
    the module's name (`-m birnn_ext.info`, `-mbirnn_ext.info`, `-Im birnn_ext.info`, ...)."""
    argv = getattr(sys, "orig_argv", [])
    return (sys.argv[:1] == ["-m"] and bool(argv)
            and re.fullmatch(r"(-[a-zA-Z]*m)?birnn_ext\.info", argv[-1]) is not None)


def env_problem() -> str | None:
    """What is wrong with BIRNN_EXT_BACKEND (the error `import birnn_ext` raises), or None."""
    get_backend()
    return _env_problem


def kernel_path(device="cpu", cell=None, dtype=None, T=None, B=None, I=None, H=None,
                bidirectional=True, training=False, proj_size=0) -> str:
    """Names the kernel variant a layer on `device` runs with the active backend, e.g.
    "cpu-avx512", "cpu-avx2", "cpu-scalar", "cuda-standard" or "python-reference" (benchmark
    records); a CPU training layer whose backward's dx and weight gradients run on ATen's
    GEMMs (MKL; BIRNN_EXT_CPU_BACKWARD_GEMMS) adds "+aten-bwd", e.g. "cpu-avx512+aten-bwd". On CUDA the answer comes from the dispatch the layer itself goes through
    (csrc/cuda/dispatch.cpp, BIRNN_EXT_KERNEL), given whatever of the layer's shape is known;
    it raises what the layer would raise (an unknown or unbuilt BIRNN_EXT_KERNEL)."""
    backend = get_backend()
    if backend == "python":
        return "python-reference"
    module = compiled_module()
    if not str(device).startswith("cuda"):
        path = f"cpu-{module.cpu_simd()}"
        # A float32 training layer may run its backward's large GEMMs on ATen's (MKL) instead
        # of birnn_ext's own (csrc/cpu/large_gemms.h); that needs T and B to tell.
        float32 = dtype is None or str(dtype).replace("torch.", "") == "float32"
        if training and float32 and path != "cpu-scalar" and T is not None and B is not None:
            if module.cpu_backward_gemms(int(T) * int(B)) == "aten":
                path += "+aten-bwd"
        return path
    if not module.build_info()["cuda"]:
        raise RuntimeError("birnn_ext: the compiled module was built without CUDA")
    from .reference import GATES

    def known(value):
        return -1 if value is None else int(value)

    name = str(cell).lower()
    gates = -1 if cell is None else GATES.get(name, GATES.get(f"{name}_tanh", -1))  # "RNN"
    dtype_name = "" if dtype is None else str(dtype).replace("torch.", "")
    hout = known(proj_size or H)
    return "cuda-" + module.cuda_kernel_path(dtype_name, gates, known(T), known(B), known(I),
                                             known(H), hout, 2 if bidirectional else 1,
                                             bool(training))
