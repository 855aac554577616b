"""The record's plot: speedup against batch (log x), one panel per cell and mode, one line per
hidden size (colour); when other axes vary (dtype, lengths, T, layers, directions), each of
their combinations gets its own line style."""

import itertools

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OTHER_AXES = ["dtype", "varlen", "lengths_api", "T", "layers", "bidirectional"]


def _label(axis, value):
    if axis == "varlen":
        return "varlen" if value else "padded"
    if axis == "lengths_api":
        return "lengths=" if value else "packed"
    if axis == "bidirectional":
        return "bi" if value else "uni"
    return f"{axis}={value}" if axis in ("T", "layers") else str(value)


def plot(rows, path, title):
    ok = [r for r in rows if r["status"] == "ok"]
    panels = sorted({(r["cell"], r["mode"]) for r in ok})
    if not panels:
        return None
    varying = [a for a in OTHER_AXES if len({r[a] for r in ok}) > 1]
    hiddens = sorted({r["H"] for r in ok})
    colours = {h: plt.cm.viridis(i / max(1, len(hiddens) - 1)) for i, h in enumerate(hiddens)}
    styles = itertools.cycle(["-", "--", ":", "-."])
    style_of = {}

    cols = min(2, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4 * nrows), squeeze=False)
    for ax, (cell, mode) in zip(axes.flat, panels):
        mine = [r for r in ok if r["cell"] == cell and r["mode"] == mode]
        series = sorted({(r["H"],) + tuple(r[a] for a in varying) for r in mine})
        for key in series:
            pts = sorted((r["B"], r["speedup"]) for r in mine
                         if (r["H"],) + tuple(r[a] for a in varying) == key)
            rest = key[1:]
            style = style_of.setdefault(rest, next(styles))
            label = " ".join([f"H={key[0]}"] + [_label(a, v) for a, v in zip(varying, rest)])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o",
                    color=colours[key[0]], label=label)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log", base=2)
        batches = sorted({r["B"] for r in mine})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(f"{cell} {mode}")
        ax.set_xlabel("batch B")
        ax.set_ylabel("speedup (torch.nn ms / birnn_ext ms)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
