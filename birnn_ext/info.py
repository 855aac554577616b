"""`python -m birnn_ext.info`: version, torch, compiled backends, the active one and why."""

import torch

import birnn_ext
from birnn_ext import _backend, _build


def report() -> str:
    info = _backend.build_info()
    active = birnn_ext.get_backend()
    compiled = ["python"]
    if info:
        compiled.insert(0, "cpp")
        if info.get("cuda"):
            compiled.insert(0, "cuda")
    lines = [
        f"birnn_ext        {birnn_ext.__version__}",
        f"torch            {torch.__version__} (CUDA {torch.version.cuda}, "
        f"GPU available: {torch.cuda.is_available()})",
        f"built against    torch {info.get('torch_version') or '-'}",
        f"backends built   {', '.join(compiled)}",
        f"active backend   {active} ({_backend.backend_reason()})",
        f"CPU kernel path  {_backend.kernel_path('cpu')}",
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
