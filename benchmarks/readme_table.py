"""Renders benchmark records (benchmarks/results/*.json) as Markdown for the README, so the
figures there come from records, never typed by hand.

    python benchmarks/readme_table.py RECORD.json [RECORD.json ...]

CPU results differ by ISA, so records are grouped by machine: the CPU model and the ISA torch
ran (`device.isa.torch`; records made before `isa` was recorded get it from birnn_ext's kernel
path, cpu-avx512 -> AVX512), and the grid. Each group gets a heading naming them, the table of
its first record, and a summary: geometric-mean speedup over all rows, at B <= 8 and for the
LSTM alone at B <= 8, the lowest row, and every row where birnn_ext is slower than torch.nn.
Further records of a group (repeat runs of the same grid) add one line with each run's
summary, to show the spread. A GPU record's machine is its GPU.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import record  # noqa: E402  (the summary and row names the run's own table uses)


def _x(value):
    return "-" if value is None else f"{value:.2f}x"


def isa_label(rec: dict) -> str:
    """What the rows ran on: 'AVX512', 'AVX2 (emulated on a CPU with AVX512; ...)', ..."""
    device = rec["device"]
    if device["kind"] != "cpu":
        return f"CUDA {device.get('capability') or ''}".strip()
    paths = sorted({r["path"] for r in rec["rows"] if str(r["path"]).startswith("cpu-")})
    # "cpu-avx512+aten-bwd" is the AVX-512 path too (its backward's GEMMs on MKL).
    isas = sorted({p[len("cpu-"):].split("+")[0] for p in paths})
    from_paths = "/".join(isa.upper() for isa in isas) or "unknown ISA"
    isa = device.get("isa")
    if not isa:
        return f"{from_paths} (from birnn_ext's kernel path; the record predates `isa`)"
    notes = []
    if from_paths != isa["torch"]:
        notes.append(f"birnn_ext {', '.join(paths) or 'no CPU path'}")
    if isa["cpu"] != isa["torch"] or isa["env"]:
        notes.append(f"emulated on a CPU with {isa['cpu'] or 'unknown'} flags: "
                     + " ".join(f"{k}={v}" for k, v in isa["env"].items()))
    return isa["torch"] + (f" ({'; '.join(notes)})" if notes else "")


def _lengths_api(rec: dict) -> bool:
    return any(r.get("lengths_api") for r in rec["rows"])


def heading(rec: dict) -> str:
    # lengths-api rows time other routes than the grid's own rows: a group of their own.
    return (f"{rec['device']['name']}, {isa_label(rec)}, {rec.get('grid', '?')} grid"
            + (", lengths= against torch.nn's pack/unpack route" if _lengths_api(rec) else ""))


def summary_line(rows) -> str:
    s = record.summary(rows)
    text = (f"Geometric-mean speedup {_x(s['geomean_speedup'])} (B <= 8: "
            f"{_x(s['geomean_speedup_B_le_8'])}; LSTM at B <= 8: "
            f"{_x(s['geomean_speedup_LSTM_B_le_8'])}), lowest {_x(s['min_speedup'])}"
            + (f" ({s['min_row']})" if s["min_row"] else "") + ".")
    slower = [r for r in rows if r["status"] == "ok" and r["speedup"] < 1]
    if slower:
        text += (f" birnn_ext is slower than torch.nn in {len(slower)} of {s['ok_rows']} "
                 "configurations: " + ", ".join(
                     f"{record.row_name(r)} ({_x(r['speedup'])})"
                     for r in sorted(slower, key=lambda r: r["speedup"])) + ".")
    if s["geomean_pack_route_over_lengths"]:
        packed = [r["birnn_packed_ms"] / r["birnn_ms"] for r in rows if r["status"] == "ok"]
        text += (" The pack/unpack route costs birnn_ext a factor of "
                 f"{_x(s['geomean_pack_route_over_lengths'])} over lengths= in geometric mean "
                 f"({_x(min(packed))} to {_x(max(packed))}).")
    if s["ok_rows"] < s["rows"]:
        text += f" {s['rows'] - s['ok_rows']} configurations not ok (wrong or error)."
    return text


def table(rec: dict) -> str:
    device = rec["device"]
    api = _lengths_api(rec)
    lines = [
        f"`{rec['command']}` at commit `{rec['commit'][:12]}`, {rec['date']}, "
        f"{device['name']}, torch {device['torch']}, {device['threads']} threads "
        "(speedup = torch.nn ms / birnn_ext ms; above 1 means birnn_ext is faster; busy%: "
        "CPU other processes took during the row"
        + ("; torch.nn packs and unpacks, birnn_ext takes lengths=, and `via pack` is "
           "birnn_ext packing and unpacking too" if api else "") + "):",
        "",
        "| cell | mode | T | B | H | torch.nn ms | birnn_ext ms |" + (" via pack ms |" if api else "")
        + " speedup | rel. error | busy% |",
        "| --- " * (10 + api) + "|",
    ]
    for row in rec["rows"]:
        start = f"| {row['cell']} | {row['mode']} | {row['T']} | {row['B']} | {row['H']} |"
        busy = row.get("foreign_cpu")
        busy = "-" if busy is None else f"{100 * busy:.0f}"
        if row["status"] != "ok":
            lines.append(f"{start} |{' |' * api} | {row['status']} | | {busy} |")
            continue
        via_pack = f" {row['birnn_packed_ms']:.2f} |" if api else ""
        lines.append(f"{start} {row['baseline_ms']:.2f} | {row['birnn_ms']:.2f} |{via_pack} "
                     f"{row['speedup']:.2f}x | {row['rel_err']:.1e} | {busy} |")
    if rec.get("incomplete"):
        lines += ["", f"Incomplete run: {rec['incomplete']['reason']}; "
                      f"{rec['incomplete']['not_run']} configurations not run."]
    return "\n".join(lines + ["", summary_line(rec["rows"])])


def spread(recs, names) -> str:
    """One line over repeat runs of a grid: each run's summary figures, in the given order."""
    sums = [record.summary(r["rows"]) for r in recs]

    def each(key):
        return " / ".join(_x(s[key]) for s in sums)

    return (f"The same grid run {len(recs)} times, to show the spread: geometric mean "
            f"{each('geomean_speedup')}, at B <= 8 {each('geomean_speedup_B_le_8')}, LSTM at "
            f"B <= 8 {each('geomean_speedup_LSTM_B_le_8')}, lowest {each('min_speedup')} "
            f"({', '.join(f'`{n}`' for n in names)}).")


def render(paths) -> str:
    groups = {}  # heading -> [(path, record)], in the order given
    for path in paths:
        with open(path) as f:
            rec = json.load(f)
        groups.setdefault(heading(rec), []).append((path, rec))
    parts = []
    for title, members in groups.items():
        parts += [f"#### {title}", "", table(members[0][1]), ""]
        if len(members) > 1:
            parts += [spread([rec for _, rec in members],
                             [os.path.basename(p) for p, _ in members]), ""]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    sys.stdout.write(render(sys.argv[1:]))
