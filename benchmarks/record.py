"""The record of a run (schema 1, described in benchmarks/README.md): device, commit, rows;
written as JSON and CSV (after every row, each file replaced whole), and printed as a table
with a short summary."""

import csv
import datetime
import io
import json
import math
import os
import re
import subprocess

import torch

ROW_FIELDS = ["cell", "mode", "dtype", "T", "B", "H", "I", "layers", "bidirectional", "varlen",
              "lengths_api", "status", "baseline_ms", "birnn_ms", "birnn_packed_ms", "speedup",
              "rel_err", "baseline_peak_mb", "birnn_peak_mb", "path", "reps", "foreign_cpu",
              "error"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30,
                              cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def commit():
    """HEAD's sha, with "-dirty" when the working tree differs from it (records under
    benchmarks/results/ do not count: they are this tool's own output)."""
    sha = _run(["git", "rev-parse", "HEAD"]) or "unknown"
    changes = [line for line in _run(["git", "status", "--porcelain"]).splitlines()
               if not line[3:].startswith("benchmarks/results")]
    return sha + ("-dirty" if changes else "")


def device_info(device, threads):
    if device == "cpu":
        # The machine as birnn_ext's diagnostic names it (python -m birnn_ext.info): results
        # differ by ISA, and readme_table.py makes one table per CPU model and ISA.
        from birnn_ext import info

        return {"kind": "cpu", "name": info.cpu_model(), "torch": torch.__version__,
                "cuda": None, "cudnn": None, "driver": None, "threads": threads,
                "cores": os.cpu_count(), "isa": info.cpu_isa()}
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return {"kind": "cuda", "name": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "driver": driver.splitlines()[0] if driver else None, "threads": threads,
            "capability": ".".join(map(str, torch.cuda.get_device_capability())),
            # torch's defaults, left alone (the protocol says so): cuDNN RNNs may use TF32.
            "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                     "matmul": torch.backends.cuda.matmul.allow_tf32}}


def short_name(info):
    """'NVIDIA H100 80GB HBM3' -> 'h100'; 'NVIDIA GeForce RTX 4090' -> 'rtx-4090'; CPU -> 'cpu'."""
    if info["kind"] == "cpu":
        return "cpu"
    words = [w for w in re.split(r"[\s_]+", info["name"])
             if w.lower() not in ("nvidia", "geforce", "tesla", "")]
    kept = []
    for w in words:
        w = re.sub(r"-?\d+GB.*$", "", w, flags=re.I)  # "A100-SXM4-80GB" -> "A100-SXM4"
        if not w:
            break
        kept.append(w)
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(kept).lower()).strip("-") or "cuda"


def tests_block(path):
    block = {"command": None, "passed": None, "failed": None, "skipped": None}
    if path:
        with open(path) as f:
            block.update(json.load(f))
    return block


def _lengths_label(row):
    """'padded', 'varlen' (PackedSequence input) or 'lengths=' (lengths-api rows; records
    made before they existed have no such field)."""
    if row.get("lengths_api"):
        return "lengths="
    return "varlen" if row["varlen"] else "padded"


def row_name(row):
    """'LSTM infer B=8 H=512', with T, dtype and the other axes only where they are not the
    grids' usual (float32, bidirectional, 1 layer, padded)."""
    name = f"{row['cell']} {row['mode']} T={row['T']} B={row['B']} H={row['H']}"
    extras = [row["dtype"] if row["dtype"] != "float32" else "",
              "uni" if not row["bidirectional"] else "",
              f"{row['layers']} layers" if row["layers"] != 1 else "",
              _lengths_label(row) if row["varlen"] else ""]
    return " ".join([name] + [e for e in extras if e])


def summary(rows):
    """Over ok rows: geometric-mean speedup (all, B <= 8, the LSTM alone at B <= 8), the lowest
    speedup and its row, and over lengths-api rows the geometric mean of birnn_packed_ms /
    birnn_ms (what packing and unpacking costs birnn_ext, as a factor); and the largest
    foreign_cpu over all rows."""
    ok = [r for r in rows if r["status"] == "ok" and r["speedup"]]

    def gmean(xs):
        return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None

    lowest = min(ok, key=lambda r: r["speedup"], default=None)
    return {"ok_rows": len(ok), "rows": len(rows),
            "geomean_speedup": gmean([r["speedup"] for r in ok]),
            "geomean_speedup_B_le_8": gmean([r["speedup"] for r in ok if r["B"] <= 8]),
            "geomean_speedup_LSTM_B_le_8": gmean([r["speedup"] for r in ok
                                                  if r["B"] <= 8 and r["cell"] == "LSTM"]),
            "min_speedup": lowest and lowest["speedup"],
            "min_row": lowest and row_name(lowest),
            "geomean_pack_route_over_lengths": gmean([r["birnn_packed_ms"] / r["birnn_ms"]
                                                      for r in ok if r.get("birnn_packed_ms")]),
            "max_foreign_cpu": max((r["foreign_cpu"] for r in rows
                                    if r.get("foreign_cpu") is not None), default=None)}


def build(device, info, command, tests_json, rows, grid, impl):
    return {
        "schema": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit(),
        "command": command,
        "device": info,
        "tests": tests_block(tests_json),
        "grid": grid,
        "candidate": "birnn_ext" if impl == "birnn_ext" else "torch.nn (self-test, A/A)",
        "rows": rows,
        "summary": summary(rows),
    }


def _replace(path, text):
    """Writes `path` through a temporary file in the same folder and a rename: the record is
    rewritten after every row, and a run killed mid-write must still leave a whole file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def write(record, out_dir, stem):
    """<out_dir>/<stem>.json and .csv, each replaced whole; returns the JSON path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, stem + ".json")
    _replace(path, json.dumps(record, indent=1) + "\n")
    rows = io.StringIO()
    writer = csv.DictWriter(rows, fieldnames=ROW_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(record["rows"])
    _replace(os.path.join(out_dir, stem + ".csv"), rows.getvalue())
    return path


def _num(x, fmt):
    return "-" if x is None else format(x, fmt)


def table(rows, default_key):
    """The rows as a fixed-width table; the fastrnns default rows first, marked '*'."""
    head = (f"  {'cell':4} {'mode':5} {'dtype':8} {'T':>4} {'B':>4} {'H':>5} {'L':>1} {'dir':3} "
            f"{'len':8} {'torch ms':>9} {'birnn ms':>9} {'b.packed':>9} {'speedup':>7} "
            f"{'rel_err':>8} {'peak MB t/b':>13} {'busy%':>5} {'status':6} path")
    lines = [head, "-" * len(head)]
    ordered = sorted(rows, key=lambda r: not default_key(r))
    for r in ordered:
        peak = "-" if r["baseline_peak_mb"] is None else \
            f"{r['baseline_peak_mb']:.0f}/{_num(r['birnn_peak_mb'], '.0f')}"
        lines.append(
            f"{'*' if default_key(r) else ' '} {r['cell']:4} {r['mode']:5} {r['dtype']:8} "
            f"{r['T']:>4} {r['B']:>4} {r['H']:>5} {r['layers']:>1} "
            f"{'bi' if r['bidirectional'] else 'uni':3} {_lengths_label(r):8} "
            f"{_num(r['baseline_ms'], '9.3f')} {_num(r['birnn_ms'], '9.3f')} "
            f"{_num(r.get('birnn_packed_ms'), '9.3f')} "
            f"{_num(r['speedup'], '7.2f')} {_num(r['rel_err'], '8.1e')} {peak:>13} "
            f"{_num(None if r['foreign_cpu'] is None else 100 * r['foreign_cpu'], '5.0f')} "
            f"{r['status']:6} {r['path']}")
    s = summary(rows)
    lines.append("-" * len(head))
    lines.append("* fastrnns default (LSTM, T=100, B=64, I=H=512, 1 layer, float32, bidirectional)")
    lines.append("busy%: CPU time other processes took during the row, % of all cores "
                 "(0 on a quiet machine)")
    if any(r.get("lengths_api") for r in rows):
        lines.append("lengths=: torch ms is torch.nn with pack_padded_sequence and "
                     "pad_packed_sequence, birnn ms is birnn_ext with lengths=, b.packed is "
                     "birnn_ext through torch.nn's pack/unpack route")
    lines.append(f"ok rows {s['ok_rows']}/{s['rows']}; speedup = torch ms / birnn ms; geomean "
                 f"{_num(s['geomean_speedup'], '.3f')}, geomean B<=8 "
                 f"{_num(s['geomean_speedup_B_le_8'], '.3f')}, LSTM B<=8 "
                 f"{_num(s['geomean_speedup_LSTM_B_le_8'], '.3f')}, min "
                 f"{_num(s['min_speedup'], '.3f')}" + (f" ({s['min_row']})" if s["min_row"] else "")
                 + (f"; birnn_ext's pack/unpack route / its lengths=: geomean "
                    f"{s['geomean_pack_route_over_lengths']:.3f}"
                    if s["geomean_pack_route_over_lengths"] else ""))
    return "\n".join(lines)
