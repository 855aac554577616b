"""One configuration made runnable: torch.nn's module (the baseline), birnn_ext's module with the
same weights (the candidate), three input sets, the step each mode times, and the correctness
gate that runs before any timing.

Both sides get the very same input objects: the same padded tensor, or the same PackedSequence
(built once with enforce_sorted=False), or (lengths-api rows) the same padded tensor and
lengths, and in train mode the same fixed random gradient for every output (output, h_n and,
for an LSTM, c_n).

A side calls its module by a route: "direct" (the input as it is), "pack" (torch.nn's way
with a padded batch and lengths: pack, the layer, unpack; all timed) or "lengths" (the padded
batch and lengths=, birnn_ext's way). Lengths-api rows time torch.nn by "pack" against
birnn_ext by "lengths", and birnn_ext by "pack" as a third side: what the packing round trip
costs birnn_ext itself.
"""

import copy
import inspect
import math
import zlib

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 2e-2}
N_INPUT_SETS = 3

# Which implementation plays the candidate: birnn_ext, or (--self-test) a copy of the torch.nn
# module, which checks the harness and shows the noise floor of an A/A comparison.
IMPLS = ("birnn_ext", "self")


def seed_of(config):
    return zlib.crc32(config.key().encode())


def _dtype(config):
    return getattr(torch, config.dtype)


def make_baseline(config, device):
    torch.manual_seed(seed_of(config))
    cls = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}[config.cell]
    return cls(config.I, config.H, num_layers=config.layers,
               bidirectional=config.bidirectional, device=device, dtype=_dtype(config))


def make_candidate(baseline, config, device, impl="birnn_ext"):
    """birnn_ext's layer built with the same arguments, loaded with the baseline's weights."""
    if impl == "self":
        return copy.deepcopy(baseline)
    import birnn_ext

    cls = getattr(birnn_ext, config.cell)
    module = cls(config.I, config.H, num_layers=config.layers,
                 bidirectional=config.bidirectional, device=device, dtype=_dtype(config))
    module.load_state_dict(baseline.state_dict())
    return module


def kernel_path(config, device, impl="birnn_ext"):
    """The kernel variant birnn_ext reports for this configuration, as well as it can tell:
    birnn_ext.kernel_path(...) given whichever of the configuration's values its signature
    names, else the active backend (birnn_ext.get_backend()), else "unknown"."""
    if impl == "self":
        return "torch.nn (self-test)"
    import birnn_ext

    if hasattr(birnn_ext, "kernel_path"):
        values = {"cell": config.cell, "device": device, "dtype": _dtype(config),
                  "B": config.B, "batch_size": config.B, "H": config.H,
                  "hidden_size": config.H, "I": config.I, "input_size": config.I,
                  "T": config.T, "layers": config.layers, "num_layers": config.layers,
                  "bidirectional": config.bidirectional, "varlen": config.varlen,
                  "training": config.mode == "train"}
        params = inspect.signature(birnn_ext.kernel_path).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            values = {k: v for k, v in values.items() if k in params}
        return str(birnn_ext.kernel_path(**values))
    if hasattr(birnn_ext, "get_backend"):
        return str(birnn_ext.get_backend())
    return "unknown"


class InputSet:
    """One input (tensor or PackedSequence), the leaf whose grad train mode computes, the
    fixed gradients of the outputs, and the lengths of a padded batch (lengths-api rows)."""

    def __init__(self, x, leaf, grads, lengths=None):
        self.x, self.leaf, self.grads, self.lengths = x, leaf, grads, lengths


def routes(config, impl="birnn_ext"):
    """(baseline's route, candidate's route, the extra side's route or None) for a row."""
    if not config.lengths_api:
        return "direct", "direct", None
    if impl == "self":  # a copy of torch.nn has no lengths=: A/A on torch.nn's route
        return "pack", "pack", None
    return "pack", "lengths", "pack"


def call(module, inp, route):
    """`module` on input set `inp` by `route` (see the module's docstring): (output, hidden),
    with the output padded to T steps for "pack" and "lengths"."""
    if route == "lengths":
        return module(inp.x, lengths=inp.lengths)
    if route == "pack":
        out, hidden = module(pack_padded_sequence(inp.x, inp.lengths, enforce_sorted=False))
        return pad_packed_sequence(out, total_length=inp.x.size(0))[0], hidden
    return module(inp.x)


def _lengths(config, gen):
    low = max(1, math.ceil(0.3 * config.T))
    return torch.randint(low, config.T + 1, (config.B,), generator=gen)


def make_inputs(config, baseline, device):
    """N_INPUT_SETS input sets. Varlen sets share one draw of lengths (uniform in [0.3T, T]) so
    every timed run does the same work; only the data differ. Lengths-api sets hold the
    padded batch and the lengths (on the CPU, where pack_padded_sequence wants them)."""
    gen = torch.Generator().manual_seed(seed_of(config) + 1)
    dtype, train = _dtype(config), config.mode == "train"
    lengths = _lengths(config, gen) if config.varlen else None
    sets = []
    for _ in range(N_INPUT_SETS):
        padded = torch.randn(config.T, config.B, config.I, generator=gen).to(device, dtype)
        if lengths is None or config.lengths_api:
            inp = InputSet(padded.requires_grad_(train), padded, None, lengths)
        else:
            packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
            leaf = packed.data.detach().requires_grad_(train)
            inp = InputSet(PackedSequence(leaf, packed.batch_sizes, packed.sorted_indices,
                                          packed.unsorted_indices), leaf, None)
        if train:
            with torch.no_grad():
                shapes = [t.shape for t in outputs(call(baseline, inp, routes(config)[0]))]
            inp.grads = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
        sets.append(inp)
    return sets


def outputs(result):
    """(output, h_n) or (output, (h_n, c_n)) -> [output tensor, h_n, (c_n)]."""
    out, hidden = result
    out = out.data if isinstance(out, PackedSequence) else out
    return [out] + (list(hidden) if isinstance(hidden, tuple) else [hidden])


class Side:
    """One module, the inputs it runs on and its route (see call); `zero()` is untimed,
    `run(i)` is the timed step."""

    def __init__(self, module, inputs, mode, route="direct"):
        self.module, self.inputs, self.mode, self.route = module, inputs, mode, route
        module.train(mode == "train")
        for p in module.parameters():
            p.requires_grad_(mode == "train")

    def zero(self):
        if self.mode == "train":
            for p in self.module.parameters():
                p.grad = None
            for s in self.inputs:
                s.leaf.grad = None

    def run(self, i):
        inp = self.inputs[i % len(self.inputs)]
        if self.mode == "infer":
            with torch.inference_mode():
                call(self.module, inp, self.route)
        else:
            torch.autograd.backward(outputs(call(self.module, inp, self.route)), inp.grads)

    def results(self, i=0):
        """What the gate compares: the outputs, and in train mode every gradient."""
        self.zero()
        inp = self.inputs[i]
        if self.mode == "infer":
            with torch.inference_mode():
                return [t.clone() for t in outputs(call(self.module, inp, self.route))]
        outs = outputs(call(self.module, inp, self.route))
        torch.autograd.backward(outs, inp.grads)
        grads = [inp.leaf.grad] + [p.grad for _, p in sorted(self.module.named_parameters())]
        return [t.detach() for t in outs] + grads


def rel_err(got, ref):
    """Largest norm(got - ref) / norm(ref) over the compared tensors (inf on a shape mismatch)."""
    if len(got) != len(ref):
        return math.inf
    worst = 0.0
    for g, r in zip(got, ref):
        if g is None or r is None or g.shape != r.shape:
            return math.inf
        diff = (g.double() - r.double()).norm().item()
        norm = r.double().norm().item()
        err = diff / norm if norm > 0 else diff
        worst = max(worst, err if err == err else math.inf)  # NaN counts as wrong
    return worst


def check(baseline, candidate, config, device):
    """rel_err of the candidate against torch.nn on input set 0.

    The reference for float32 on CUDA runs with cuDNN's TF32 off (exact float32); the timed
    baseline keeps torch's default. Without that, a candidate that is exact in float32 would fail
    a 1e-4 gate against cuDNN's TF32 arithmetic on Ampere and newer GPUs.
    """
    strict = device == "cuda" and config.dtype == "float32"
    saved = torch.backends.cudnn.allow_tf32
    try:
        if strict:
            torch.backends.cudnn.allow_tf32 = False
        ref = baseline.results(0)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    got = candidate.results(0)
    baseline.zero()
    candidate.zero()
    return rel_err(got, ref)
