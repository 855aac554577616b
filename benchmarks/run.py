"""birnn_ext against torch.nn, following the protocol in benchmarks/README.md: a grid of
configurations, each checked for correctness and then timed interleaved; writes
<out>/<date>-<device>.json and .csv (rewritten after every configuration, so a run that is
killed keeps what it measured) and, at the end, the .png.

    python benchmarks/run.py --device cpu --grid quick --out benchmarks/results
    python benchmarks/run.py --device cuda --grid standard --out OUTDIR --tests-json tests.json
    python benchmarks/run.py --device cpu --grid cpu-issue          # the issue's CPU table
    python benchmarks/run.py --device cpu --cell LSTM --B 1,8 --mode train --varlen
    python benchmarks/run.py --device cpu --grid cpu-issue --lengths-api   # lengths= vs packing
    python benchmarks/run.py --device cpu --self-test               # torch.nn vs itself (A/A)
    python benchmarks/run.py --device cuda --max-seconds 480        # stop between rows at 8 min

Axis options (--cell, --dtype, --B, ...) replace that axis of the grid; see benchmarks/README.md.
"""

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time

import torch
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
# The clock of --max-seconds, a name of its own so a test can run the budget on a fake clock.
clock = time.monotonic
# The record's `incomplete.reason` while the run goes on (the record is rewritten every row).
RUNNING = "still running when written: a run killed here keeps the rows above, not these"
# This folder's modules (also when Python runs with -P / PYTHONSAFEPATH, which leaves the
# script's folder off sys.path), then the repository root: measure the checkout's birnn_ext.
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import cases
import grid as grids
import plot
import record
import timing


def _ints(text):
    return [int(v) for v in text.split(",")]


def _strs(choices):
    def parse(text):
        values = text.split(",")
        bad = [v for v in values if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {list(choices)}")
        return values
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--grid", choices=list(grids.GRIDS),
                   help="default: standard on cuda, quick on cpu")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    p.add_argument("--name", help="file stem of the outputs (default <YYYY-MM-DD>-<device>, "
                                  "with -<grid> for a device's non-default grid and -subset "
                                  "when axes are filtered)")
    axes = p.add_argument_group("axes (comma-separated; each replaces that axis of the grid)")
    axes.add_argument("--cell", type=_strs(grids.CELLS))
    axes.add_argument("--mode", type=_strs(grids.MODES))
    axes.add_argument("--dtype", type=_strs(grids.DTYPES))
    axes.add_argument("--T", type=_ints)
    axes.add_argument("--B", type=_ints)
    axes.add_argument("--H", type=_ints, help="hidden size; the input size I equals it")
    axes.add_argument("--layers", type=_ints)
    lengths = axes.add_mutually_exclusive_group()
    lengths.add_argument("--varlen", dest="varlen", action="store_const", const=[True],
                         help="PackedSequence input, lengths uniform in [0.3T, T]")
    lengths.add_argument("--padded", dest="varlen", action="store_const", const=[False],
                         help="padded input, every sequence T long")
    lengths.add_argument("--both-lengths", dest="varlen", action="store_const",
                         const=[False, True])
    lengths.add_argument("--lengths-api", action="store_true",
                         help="varlen rows on a padded batch and its lengths: torch.nn packs "
                              "and unpacks around its layer, birnn_ext takes lengths= (and "
                              "is timed through torch.nn's route too: birnn_packed_ms)")
    p.add_argument("--threads", type=int,
                   help="torch.set_num_threads for both sides (default 2 on cpu; cuda: "
                        "torch's default)")
    p.add_argument("--tests-json", help="JSON {command, passed, failed, skipped} of the test "
                                        "run made with this code (scripts/gpu_check.sh)")
    p.add_argument("--self-test", action="store_true",
                   help="candidate = a copy of the torch.nn module (checks the harness; the "
                        "speedups show the noise floor)")
    p.add_argument("--budget", type=float, default=0.5,
                   help="seconds of timed runs per side per configuration beyond which no "
                        "more runs are added once the minimum count is reached (default 0.5)")
    p.add_argument("--warmup", type=int, help="warm-up runs per side (at least the protocol's)")
    p.add_argument("--min-reps", type=int, help="timed runs per side, at least (idem)")
    p.add_argument("--max-reps", type=int, help="timed runs per side, at most")
    p.add_argument("--max-seconds", type=float,
                   help="stop between configurations once this many seconds have passed; the "
                        "record lists the configurations not run under `incomplete`")
    p.add_argument("--list", action="store_true", help="print the configurations and exit")
    args = p.parse_args(argv)
    args.grid = args.grid or grids.DEFAULT_GRID[args.device]
    # The filters on the lengths axes; unset, a grid keeps its own (and no lengths-api rows).
    args.lengths_api = [True] if args.lengths_api else None
    if args.lengths_api:
        args.varlen = [True]
    if args.device == "cpu" and args.threads is None:
        args.threads = 2
    return args


def peak_memory(sides):
    """The record's peak-memory fields of a training row: torch.nn's side and birnn_ext's
    (lengths=) side; a third side (birnn_ext through the packing route) is not reported."""
    return dict(baseline_peak_mb=timing.peak_mb(sides[0]),
                birnn_peak_mb=timing.peak_mb(sides[1]))


def measure(config, args, impl, tqdm_bar):
    """One row of the record."""
    row = dataclasses.asdict(config)
    row.update(status="ok", baseline_ms=None, birnn_ms=None, birnn_packed_ms=None,
               speedup=None, rel_err=None, baseline_peak_mb=None, birnn_peak_mb=None,
               path="unknown", reps=None, foreign_cpu=None, error=None)
    device = args.device
    try:
        row["path"] = cases.kernel_path(config, device, impl)
    except Exception as e:  # a reporting helper must not cost the measurement
        row["path"] = f"unknown ({type(e).__name__})"
    protocol = timing.PROTOCOL[device]
    if device == "cuda":
        torch.cuda.empty_cache()  # the previous configuration's blocks: each row starts alike
    foreign = timing.ForeignLoad().start()
    try:
        baseline = cases.make_baseline(config, device)
        candidate = cases.make_candidate(baseline, config, device, impl)
        inputs = cases.make_inputs(config, baseline, device)
        route_a, route_b, route_c = cases.routes(config, impl)
        a = cases.Side(baseline, inputs, config.mode, route_a)
        sides = [a, cases.Side(candidate, inputs, config.mode, route_b)]
        if route_c is not None:  # birnn_ext through torch.nn's route, gated as well
            sides.append(cases.Side(candidate, inputs, config.mode, route_c))
        err = max(cases.check(a, side, config, device) for side in sides[1:])
        row["rel_err"] = err if math.isfinite(err) else None
        if not err <= cases.TOLERANCE[config.dtype]:
            row.update(status="wrong", foreign_cpu=foreign.stop())
            return row
        # The gate just ran each side's step once on input set 0: that counts as warm-up run 1.
        times, reps = timing.time_sides(
            sides, device,
            warmup=max(protocol["warmup"], args.warmup or 0) - 1,
            min_reps=max(protocol["min_reps"], args.min_reps or 0),
            max_reps=max(protocol["min_reps"], args.min_reps or 0, args.max_reps or 200),
            budget_s=args.budget)
        row.update(baseline_ms=times[0], birnn_ms=times[1], speedup=times[0] / times[1],
                   birnn_packed_ms=times[2] if len(times) > 2 else None, reps=reps)
        if device == "cuda" and config.mode == "train":
            row.update(peak_memory(sides))
    except Exception as e:  # recorded, not raised: one failing configuration ends no grid
        row.update(status="error", error=f"{type(e).__name__}: {e}"[:300])
        tqdm_bar.write(f"error in {config.key()}: {row['error']}")
    row["foreign_cpu"] = foreign.stop()
    return row


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    filters = {name: getattr(args, name) for name in
               ["cell", "mode", "dtype", "T", "B", "H", "layers", "varlen", "lengths_api"]}
    configs = grids.build(args.grid, filters)
    if args.list:
        print("\n".join(c.key() for c in configs))
        return 0
    impl = "self" if args.self_test else "birnn_ext"
    if impl == "birnn_ext":
        import birnn_ext  # noqa: F401  (fail now, not once per row)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.enabled = True
    info = record.device_info(args.device, args.threads)
    if args.device == "cpu":
        info["interop_threads"] = torch.get_num_interop_threads()
    load_start = os.getloadavg()[0]
    if args.device == "cpu" and load_start > (os.cpu_count() or 1):
        print(f"warning: load average {load_start:.1f} on {os.cpu_count()} cores: other work "
              "competes for the CPU and the timings will show it", file=sys.stderr)

    command = "python " + shlex.join([sys.argv[0]] + list(argv))
    rec = record.build(args.device, info, command, args.tests_json, [], args.grid, impl)
    stem = args.name or _stem(args, info, filters, rec["date"][:10])
    started = clock()

    def save(not_run, reason):
        """Rewrites the record with the rows so far; `incomplete` says what was not measured."""
        rec["summary"] = record.summary(rec["rows"])
        rec["elapsed_s"] = round(clock() - started, 1)
        info["load_avg_1min"] = {"start": round(load_start, 2),
                                 "end": round(os.getloadavg()[0], 2)}
        rec.pop("incomplete", None)
        if not_run:
            rec["incomplete"] = {"reason": reason, "not_run": len(not_run),
                                 "not_run_configs": [c.key() for c in not_run]}
        return record.write(rec, args.out, stem)

    stop = run_grid(configs, args, impl, rec["rows"], save, started)
    path = save(configs[len(rec["rows"]):], stop)
    png = plot.plot(rec["rows"], os.path.join(args.out, stem + ".png"),
                    f"{rec['candidate']} vs torch.nn, {info['name']}, {args.grid} grid, "
                    f"commit {rec['commit'][:12]}")
    report(rec, args, stop)
    print(f"wrote {path}, {path[:-5]}.csv" + (f", {png}" if png else ""))
    return 0 if all(r["status"] == "ok" for r in rec["rows"]) else 1


def run_grid(configs, args, impl, rows, save, started):
    """Measures the configurations in order into `rows`, saving the record after each one.
    Returns None when all were measured, else why the run stopped early (--max-seconds passed,
    checked between rows; or Ctrl-C, which loses only the row being measured)."""
    save(configs, RUNNING)
    with tqdm(configs, desc=f"{args.grid} on {args.device}", unit="cfg") as bar:
        try:
            for i, config in enumerate(bar):
                if args.max_seconds is not None and clock() - started >= args.max_seconds:
                    return (f"--max-seconds {args.max_seconds:g} reached after "
                            f"{clock() - started:.0f} s")
                bar.set_postfix_str(config.key())
                rows.append(measure(config, args, impl, bar))
                save(configs[i + 1:], RUNNING)
        except KeyboardInterrupt:
            return "interrupted (Ctrl-C)"
    return None


def report(rec, args, stop):
    """The table, the summary and the warnings, at the end of a run."""
    rows, info = rec["rows"], rec["device"]
    print(record.table(rows, lambda r: grids.is_fastrnns_default(_config_of(r))))
    load = info["load_avg_1min"]
    print(f"{len(rows)} configurations in {rec['elapsed_s']:.0f} s; device {info['name']}"
          + (f", {args.threads} threads" if args.threads else "")
          + f"; load average {load['start']} at start, {load['end']} at end")
    if stop:
        print(f"stopped early, {stop}: {rec['incomplete']['not_run']} configurations not run "
              "(listed in the record's `incomplete`)", file=sys.stderr)
    busy = [r for r in rows if (r["foreign_cpu"] or 0) > timing.BUSY]
    if args.device == "cpu" and busy:
        print(f"warning: in {len(busy)} of {len(rows)} rows other processes used more than "
              f"{timing.BUSY:.0%} of the CPUs (column busy%): those timings are not a clean "
              "measurement; rerun on a quiet machine", file=sys.stderr)


def _config_of(row):
    return grids.Config(**{f.name: row[f.name] for f in dataclasses.fields(grids.Config)})


def _stem(args, info, filters, rec_date):
    stem = f"{rec_date}-{record.short_name(info)}"
    if args.grid != grids.DEFAULT_GRID[args.device]:
        stem += f"-{args.grid}"
    implied = ("varlen", "lengths_api") if args.lengths_api else ()  # by --lengths-api
    if args.lengths_api:
        stem += "-lengths-api"
    if any(v is not None for k, v in filters.items() if k not in implied):
        stem += "-subset"
    if args.self_test:
        stem += "-selftest"
    return stem


if __name__ == "__main__":
    sys.exit(main())
