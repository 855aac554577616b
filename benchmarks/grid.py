"""The benchmark grids of the protocol (benchmarks/README.md), as lists of Config.

A grid is a set of axes (cell, mode, dtype, T, B, H, layers, bidirectional, varlen,
lengths_api); the configurations are their product, with I = H. The fastrnns default
configuration is added to every grid and comes first, unless a filter on the command line
excludes it.
"""

import dataclasses
import itertools

CELLS = ("LSTM", "GRU", "RNN")  # RNN means torch.nn.RNN with nonlinearity="tanh"
MODES = ("infer", "train")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Config:
    cell: str
    mode: str
    dtype: str
    T: int
    B: int
    H: int
    I: int
    layers: int = 1
    bidirectional: bool = True
    varlen: bool = False
    # With varlen: both sides get a padded batch and its lengths, torch.nn packs and unpacks
    # around its layer (pack_padded_sequence(enforce_sorted=False), pad_packed_sequence) and
    # birnn_ext takes lengths= (run.py --lengths-api).
    lengths_api: bool = False

    def key(self):
        """A short readable name, also used to seed the configuration's weights and inputs."""
        lengths = "lengths-api" if self.lengths_api else "varlen" if self.varlen else "padded"
        dirs = "bi" if self.bidirectional else "uni"
        return (f"{self.cell}-{self.mode}-{self.dtype}-T{self.T}-B{self.B}-H{self.H}-I{self.I}"
                f"-L{self.layers}-{dirs}-{lengths}")


# The axes a grid spans (and the command line filters); a Config also holds I, which is H.
AXES = ("cell", "mode", "dtype", "T", "B", "H", "layers", "bidirectional", "varlen",
        "lengths_api")

# LSTM, T=100, B=64, I=H=512, 1 layer, float32, bidirectional, padded: the configuration the
# PyTorch community compares RNNs on (benchmarks/fastrnns in the pytorch repo).
FASTRNNS_DEFAULT = dict(cell="LSTM", dtype="float32", T=100, B=64, H=512, layers=1,
                        bidirectional=True, varlen=False, lengths_api=False)

# Axis values per grid. "quick" and "standard"/"full" are the two columns of the protocol's
# table; "cpu-issue" is the CPU table asked for in the project's issue (run it with
# --threads 2, the default on CPU). Any grid runs on either device.
GRIDS = {
    "quick": dict(cell=["LSTM", "GRU"], mode=list(MODES), dtype=["float32"], T=[50],
                  B=[1, 8, 64], H=[128, 256], layers=[1], bidirectional=[True],
                  varlen=[False]),
    "cpu-issue": dict(cell=["LSTM", "GRU"], mode=list(MODES), dtype=["float32"], T=[100],
                      B=[1, 8, 64], H=[128, 256, 512], layers=[1], bidirectional=[True],
                      varlen=[False]),
    "standard": dict(cell=["LSTM", "GRU"], mode=list(MODES), dtype=["float32", "bfloat16"],
                     T=[100], B=[1, 16, 64, 256], H=[256, 512, 1024], layers=[1],
                     bidirectional=[True], varlen=[False, True]),
    "full": dict(cell=list(CELLS), mode=list(MODES), dtype=list(DTYPES), T=[25, 100, 1000],
                 B=[1, 16, 64, 256], H=[128, 256, 512, 1024], layers=[1, 2],
                 bidirectional=[True, False], varlen=[False, True]),
}

# The grid a device runs when none is named (and whose record gets the protocol's plain name).
DEFAULT_GRID = {"cuda": "standard", "cpu": "quick"}


def build(grid, overrides=None):
    """The configurations of `grid`, with any axis replaced by overrides[axis] (a list).

    The fastrnns default comes first in both modes; an override that leaves out one of its
    values (say --B 1) leaves it out too, so a filtered run measures only what was asked.
    """
    overrides = {k: list(v) for k, v in (overrides or {}).items() if v is not None}
    axes = dict(GRIDS[grid], lengths_api=[False])  # no grid has lengths-api rows unless asked
    axes.update(overrides)

    configs = []
    for mode in axes["mode"]:
        default = dict(FASTRNNS_DEFAULT, mode=mode)
        if all(default[name] in values for name, values in overrides.items()):
            configs.append(Config(I=default["H"], **default))

    for values in itertools.product(*(axes[name] for name in AXES)):
        config = Config(I=values[AXES.index("H")], **dict(zip(AXES, values)))
        if config.lengths_api and not config.varlen:
            continue  # the lengths-api rows are variable-length rows
        if config not in configs:
            configs.append(config)
    return configs


def is_fastrnns_default(config):
    return all(getattr(config, name) == value for name, value in FASTRNNS_DEFAULT.items()) \
        and config.I == FASTRNNS_DEFAULT["H"]
