"""`python -m birnn_ext.info`: the machine (CPU model and ISA), birnn_ext's version, torch, the
backends compiled in, the active one and why, and the kernel paths.

It always runs. A bad BIRNN_EXT_BACKEND, which makes `import birnn_ext` raise, is reported
first, the rest of the report shows what "auto" would pick, and the exit status is 2.
cpu_model() and cpu_isa() also name the machine in benchmark records and in the demo.
"""

import os
import platform
import sys

import torch

import birnn_ext
from birnn_ext import _backend, _build

# Variables that change which vector ISA torch, oneDNN, MKL or birnn_ext run (how an AVX2-only
# CPU is emulated on an AVX-512 one), or which GEMMs birnn_ext's CPU backward runs on, so a
# result can say how it ran.
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
           "BIRNN_EXT_CPU_SIMD", "BIRNN_EXT_CPU_BACKWARD_GEMMS")
# The /proc/cpuinfo flags that decide which float32 kernels a CPU can run, narrow to wide.
ISA_FLAGS = ("avx", "fma", "avx2", "avx512f", "avx512dq", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
# torch dispatches to its AVX512 kernels only when all four are present, and to AVX2 with both.
_LEVELS = (("AVX512", {"avx512f", "avx512dq", "avx512bw", "avx512vl"}),
           ("AVX2", {"avx2", "fma"}), ("AVX", {"avx"}))


def _cpuinfo_field(name):
    """The value of the first `name : value` line of /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name, with its x86 family and model numbers where /proc/cpuinfo has
    them: a virtual machine may report only "AMD EPYC" for CPUs of different generations
    (Zen 3 is family 25 model 1, Zen 4 family 25 model 17), whose speeds differ."""
    name = _cpuinfo_field("model name") or platform.processor() or platform.machine() or "CPU"
    family, model = _cpuinfo_field("cpu family"), _cpuinfo_field("model")
    return f"{name} (family {family} model {model})" if family and model else name


def cpu_isa() -> dict:
    """The CPU's vector ISA as torch and the hardware see it:
    "torch": torch.backends.cpu.get_cpu_capability() ("AVX512", "AVX2", "DEFAULT", ...), what
    torch's own kernels run (ATEN_CPU_CAPABILITY can lower it);
    "cpu": the widest of AVX512 / AVX2 / AVX the CPU's flags offer (None off x86 Linux);
    "flags": the ISA_FLAGS present; "env": the ISA_ENV variables that are set."""
    flags = set((_cpuinfo_field("flags") or "").split())
    level = next((name for name, needed in _LEVELS if needed <= flags), None)
    return {"torch": torch.backends.cpu.get_cpu_capability(), "cpu": level,
            "flags": " ".join(f for f in ISA_FLAGS if f in flags),
            "env": {name: os.environ[name] for name in ISA_ENV if name in os.environ}}


def describe_isa(isa: dict) -> str:
    """One line: 'torch AVX512; CPU flags AVX512 (avx fma ...)', plus any ISA variables set."""
    text = f"torch {isa['torch']}; CPU flags {isa['cpu'] or '-'} ({isa['flags'] or 'none'})"
    if isa["env"]:
        text += "; " + " ".join(f"{k}={v}" for k, v in isa["env"].items())
    return text


def _cpu_kernel_path() -> tuple[str, str | None]:
    """The CPU kernel path, or a placeholder and the error that prevents choosing one (say a
    bad BIRNN_EXT_CPU_SIMD, which every op call would also raise)."""
    try:
        return _backend.kernel_path("cpu"), None
    except RuntimeError as exc:
        return "-", str(exc)


def _cpu_backward_gemms() -> tuple[str, str | None]:
    """Which GEMMs a float32 CPU layer's backward runs its dx and weight gradients on, small
    and large T*B (csrc/cpu/large_gemms.h), or a placeholder and the error that prevents
    choosing (a bad BIRNN_EXT_CPU_BACKWARD_GEMMS, which every CPU backward would raise)."""
    if birnn_ext.get_backend() == "python":
        return "torch's GEMMs (Python reference)", None
    try:
        module = _backend.compiled_module()
        small, large = module.cpu_backward_gemms(1), module.cpu_backward_gemms(1 << 30)
    except RuntimeError as exc:
        return "-", str(exc)
    names = {"own": "birnn_ext's GEMM", "aten": "ATen's GEMMs (MKL)"}
    choice = (names[small] if small == large
              else f"{names[small]} for small T*B, {names[large]} for large")
    return f"{choice} (BIRNN_EXT_CPU_BACKWARD_GEMMS=auto|own|aten)", None


def report() -> str:
    info = _backend.build_info()
    active = birnn_ext.get_backend()
    compiled = ["python"]
    if info:
        compiled.insert(0, "cpp")
        if info.get("cuda"):
            compiled.insert(0, "cuda")
    lines = []
    problem = _backend.env_problem()
    if problem:
        lines += [f"PROBLEM          {problem}",
                  "                 `import birnn_ext` raises this error; below is what "
                  "BIRNN_EXT_BACKEND=auto would use.", ""]
    kernel_path, kernel_problem = _cpu_kernel_path()
    if kernel_problem:
        lines += [f"PROBLEM          {kernel_problem}",
                  "                 every CPU op call raises this error.", ""]
    backward_gemms, backward_problem = _cpu_backward_gemms()
    if backward_problem:
        lines += [f"PROBLEM          {backward_problem}",
                  "                 every float32 CPU backward raises this error.", ""]
    lines += [
        f"CPU              {cpu_model()}, {os.cpu_count()} cores",
        f"CPU ISA          {describe_isa(cpu_isa())}",
        f"birnn_ext        {birnn_ext.__version__}",
        f"torch            {torch.__version__} (CUDA {torch.version.cuda}, "
        f"GPU available: {torch.cuda.is_available()})",
        f"built against    torch {info.get('torch_version') or '-'}",
        f"backends built   {', '.join(compiled)}",
        f"active backend   {active} ({_backend.backend_reason()})",
        f"CPU kernel path  {kernel_path}",
        f"CPU backward     {backward_gemms}",
        f"CUDA archs       {info.get('cuda_archs') or '-'}"
        + (f" (CUDA {info['cuda_version']})" if info.get("cuda_version") else ""),
    ]
    if info.get("cuda"):
        lines.append(f"                 {_build.describe_archs(info['cuda_archs'])}")
        try:
            path = _backend.kernel_path("cuda")
        except RuntimeError as exc:  # an unknown or unbuilt BIRNN_EXT_KERNEL says why
            path = f"none: {exc}"
        lines.append(f"CUDA kernel path {path} (BIRNN_EXT_KERNEL=standard|persistent|auto)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
    sys.exit(2 if _backend.env_problem() or _cpu_kernel_path()[1] or _cpu_backward_gemms()[1]
             else 0)
