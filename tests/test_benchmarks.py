"""benchmarks/run.py's plumbing on a tiny CPU grid (GRU, T=3, H=8: milliseconds per row): the
record rewritten after every row, a killed run that keeps its rows, --max-seconds, the machine
and ISA in the record; and readme_table.py's one table per ISA. No timing is asserted."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from birnn_ext import info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import readme_table  # noqa: E402
import record  # noqa: E402
import run  # noqa: E402

# Four configurations; the fastrnns default is filtered out. --budget 0: the protocol's minimum
# runs only. --threads: the session's own count, so the run changes nothing for later tests.
TINY = ["--device", "cpu", "--cell", "GRU", "--B", "1,2", "--H", "8", "--T", "3",
        "--budget", "0", "--threads", str(torch.get_num_threads())]
N_TINY = 4


def _load(out, stem="t"):
    with open(os.path.join(out, stem + ".json")) as f:
        return json.load(f)


def _csv_rows(out, stem="t"):
    with open(os.path.join(out, stem + ".csv"), newline="") as f:
        return list(csv.DictReader(f))


class _Killed(BaseException):
    """Stands for the run being killed: not an Exception, so run.py records nothing of it."""


def test_record_is_rewritten_after_every_row(tmp_path, monkeypatch):
    measure, seen = run.measure, []

    def checked_measure(config, *args):
        rec = _load(tmp_path)  # what a kill at this moment would leave
        seen.append(len(rec["rows"]))
        assert len(_csv_rows(tmp_path)) == len(rec["rows"])
        assert rec["incomplete"]["reason"] == run.RUNNING
        assert rec["incomplete"]["not_run"] == N_TINY - len(rec["rows"])
        assert rec["incomplete"]["not_run_configs"][0] == config.key()
        return measure(config, *args)

    monkeypatch.setattr(run, "measure", checked_measure)
    assert run.main(TINY + ["--out", str(tmp_path), "--name", "t"]) == 0
    assert seen == list(range(N_TINY))
    rec = _load(tmp_path)
    assert "incomplete" not in rec
    assert [r["status"] for r in rec["rows"]] == ["ok"] * N_TINY
    assert len(_csv_rows(tmp_path)) == N_TINY
    assert rec["summary"]["rows"] == N_TINY
    assert os.path.exists(tmp_path / "t.png")
    # The machine, per ISA: the CPU model, torch's capability and the flags; the path per row.
    assert rec["device"]["name"] == info.cpu_model()
    assert rec["device"]["isa"] == info.cpu_isa()
    assert all(r["path"].startswith("cpu-") for r in rec["rows"])
    assert not list(tmp_path.glob("*.tmp*"))  # every temporary file was renamed


def test_a_run_killed_between_rows_keeps_what_it_measured(tmp_path, monkeypatch):
    measure, calls = run.measure, []

    def dying_measure(*args):
        calls.append(1)
        if len(calls) == 3:
            raise _Killed()
        return measure(*args)

    monkeypatch.setattr(run, "measure", dying_measure)
    with pytest.raises(_Killed):
        run.main(TINY + ["--out", str(tmp_path), "--name", "t"])
    rec = _load(tmp_path)
    assert len(rec["rows"]) == 2 and len(_csv_rows(tmp_path)) == 2
    assert rec["incomplete"]["reason"] == run.RUNNING
    assert rec["incomplete"]["not_run"] == len(rec["incomplete"]["not_run_configs"]) == N_TINY - 2


def test_max_seconds_stops_between_rows(tmp_path, monkeypatch):
    """On a fake clock where each row takes 10 s, --max-seconds 15 lets rows start at 0 s and
    10 s, then stops before the third."""
    now = [0.0]
    measure = run.measure

    def slow_measure(*args):
        now[0] += 10
        return measure(*args)

    monkeypatch.setattr(run, "clock", lambda: now[0])
    monkeypatch.setattr(run, "measure", slow_measure)
    out = str(tmp_path)
    assert run.main(TINY + ["--out", out, "--name", "t", "--max-seconds", "15"]) == 0
    rec = _load(tmp_path)
    assert len(rec["rows"]) == 2
    every = [c.key() for c in run.grids.build("quick", {"cell": ["GRU"], "B": [1, 2],
                                                        "H": [8], "T": [3]})]
    assert rec["incomplete"]["not_run"] == N_TINY - 2
    assert rec["incomplete"]["not_run_configs"] == every[2:]
    assert "--max-seconds 15" in rec["incomplete"]["reason"]
    assert rec["elapsed_s"] == 20
    assert os.path.exists(tmp_path / "t.png")  # the plot of what was measured, as usual


def test_killed_process_leaves_a_whole_record(tmp_path):
    """The real thing: run.py in its own process, SIGKILLed once it has saved a row."""
    path = tmp_path / "t.json"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "benchmarks", "run.py")]
                            + TINY[:-4] + ["--budget", "0.25", "--out", str(tmp_path), "--name", "t"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and json.loads(path.read_text())["rows"]:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "run.py ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    rec = json.loads(path.read_text())   # whole JSON: each write was a rename
    assert 1 <= len(rec["rows"]) < N_TINY
    assert rec["incomplete"]["not_run"] == N_TINY - len(rec["rows"])


# --lengths-api ---------------------------------------------------------------------------


def _spy_routes(monkeypatch):
    """Records (which implementation, route) of every module call the benchmark makes."""
    seen, call = set(), run.cases.call

    def spy(module, inp, route):
        seen.add((type(module).__module__.split(".")[0], route))
        return call(module, inp, route)

    monkeypatch.setattr(run.cases, "call", spy)
    return seen


def test_lengths_api_rows(tmp_path, monkeypatch, capsys):
    """torch.nn packs and unpacks, birnn_ext takes lengths= and is timed through the packing
    route as well; all three gated, each row says so."""
    seen = _spy_routes(monkeypatch)
    assert run.main(TINY + ["--lengths-api", "--out", str(tmp_path), "--name", "t"]) == 0
    assert seen == {("torch", "pack"), ("birnn_ext", "lengths"), ("birnn_ext", "pack")}
    rec = _load(tmp_path)
    assert len(rec["rows"]) == N_TINY
    for row in rec["rows"]:
        assert row["status"] == "ok" and row["varlen"] and row["lengths_api"]
        assert row["birnn_packed_ms"] > 0 and row["rel_err"] < 1e-4
    ratios = [r["birnn_packed_ms"] / r["birnn_ms"] for r in rec["rows"]]
    assert rec["summary"]["geomean_pack_route_over_lengths"] == pytest.approx(
        math.prod(ratios) ** (1 / len(ratios)))
    assert all(r["lengths_api"] == "True" for r in _csv_rows(tmp_path))
    assert "lengths=" in capsys.readouterr().out


def test_lengths_api_gates_the_packing_route_too(tmp_path, monkeypatch):
    """A wrong result on the third side (birnn_ext packing) makes the row wrong, untimed."""
    call = run.cases.call

    def wrong_when_packed(module, inp, route):
        out, hidden = call(module, inp, route)
        if type(module).__module__.startswith("birnn_ext") and route == "pack":
            out = out + 1
        return out, hidden

    monkeypatch.setattr(run.cases, "call", wrong_when_packed)
    assert run.main(TINY + ["--lengths-api", "--out", str(tmp_path), "--name", "t"]) == 1
    rows = _load(tmp_path)["rows"]
    assert [r["status"] for r in rows] == ["wrong"] * N_TINY
    assert all(r["birnn_ms"] is None and r["birnn_packed_ms"] is None for r in rows)


def test_lengths_api_self_test_compares_torch_nn_with_itself(tmp_path, monkeypatch):
    seen = _spy_routes(monkeypatch)
    assert run.main(TINY + ["--lengths-api", "--self-test", "--out", str(tmp_path),
                            "--name", "t"]) == 0
    assert seen == {("torch", "pack")}
    assert all(r["birnn_packed_ms"] is None for r in _load(tmp_path)["rows"])


def test_lengths_api_configurations_and_stem(capsys):
    assert run.main(["--device", "cpu", "--grid", "cpu-issue", "--lengths-api", "--list"]) == 0
    keys = capsys.readouterr().out.split()
    assert len(keys) == 36 and all(k.endswith("-lengths-api") for k in keys)
    args = run.parse_args(["--device", "cpu", "--grid", "cpu-issue", "--lengths-api"])
    filters = {"varlen": args.varlen, "lengths_api": args.lengths_api}
    assert run._stem(args, {"kind": "cpu"}, filters, "D") == "D-cpu-cpu-issue-lengths-api"
    plain = run.grids.build("cpu-issue")
    assert not any(c.lengths_api for c in plain) and len(plain) == 36


# readme_table.py -------------------------------------------------------------------------


def _row(cell, B, speedup, path):
    return {"cell": cell, "mode": "infer", "dtype": "float32", "T": 100, "B": B, "H": 256,
            "I": 256, "layers": 1, "bidirectional": True, "varlen": False, "status": "ok",
            "baseline_ms": 10.0 * speedup, "birnn_ms": 10.0, "speedup": speedup,
            "rel_err": 1e-7, "path": path, "foreign_cpu": 0.0}


def _record(name, isa, speedups, path):
    rows = [_row(cell, B, s, path) for (cell, B), s in speedups.items()]
    device = {"kind": "cpu", "name": name, "torch": "2.13.0+cpu", "threads": 2}
    if isa is not None:
        device["isa"] = isa
    return {"command": "python benchmarks/run.py --grid cpu-issue", "commit": "0" * 40,
            "date": "2026-11-23T00:00:00Z", "grid": "cpu-issue", "device": device, "rows": rows}


def _isa(torch_isa, cpu, **env):
    return {"torch": torch_isa, "cpu": cpu, "flags": "avx fma avx2", "env": env}


def test_readme_table_renders_one_table_per_isa(tmp_path):
    avx512 = {("LSTM", 1): 1.5, ("LSTM", 64): 0.8, ("GRU", 8): 4.0}
    avx2 = {("LSTM", 1): 0.9, ("LSTM", 8): 1.2, ("GRU", 64): 2.0}
    records = {
        "a.json": _record("AMD EPYC 9B14", _isa("AVX512", "AVX512"), avx512, "cpu-avx512"),
        "b.json": _record("AMD EPYC 7B13", _isa("AVX2", "AVX2"), avx2, "cpu-avx2"),
        "c.json": _record("AMD EPYC 9B14", _isa("AVX2", "AVX512", ATEN_CPU_CAPABILITY="avx2"),
                          avx2, "cpu-avx2"),
        "old.json": _record("AMD EPYC", None, avx512, "cpu-avx512"),  # made before `isa`
    }
    for name, rec in records.items():
        (tmp_path / name).write_text(json.dumps(rec))
    text = readme_table.render([str(tmp_path / name) for name in records])
    headings = [line for line in text.splitlines() if line.startswith("#### ")]
    assert headings[0] == "#### AMD EPYC 9B14, AVX512, cpu-issue grid"
    assert headings[1] == "#### AMD EPYC 7B13, AVX2, cpu-issue grid"
    assert headings[2].startswith("#### AMD EPYC 9B14, AVX2 (emulated on a CPU with AVX512")
    assert "ATEN_CPU_CAPABILITY=avx2" in headings[2]
    assert headings[3].startswith("#### AMD EPYC, AVX512 (from birnn_ext's kernel path")
    assert len(headings) == 4

    sections = text.split("#### ")[1:]
    for section, speedups in zip(sections, [avx512, avx2, avx2, avx512]):
        table_rows = [line for line in section.splitlines() if line.startswith("| LSTM")
                      or line.startswith("| GRU")]
        assert len(table_rows) == len(speedups)
        summary = section.strip().splitlines()[-1]
        every = list(speedups.values())
        small = [s for (cell, B), s in speedups.items() if B <= 8]
        lstm_small = [s for (cell, B), s in speedups.items() if B <= 8 and cell == "LSTM"]
        for label, values in [("speedup", every), ("B <= 8:", small),
                              ("LSTM at B <= 8:", lstm_small)]:
            assert f"{label} {math.prod(values) ** (1 / len(values)):.2f}x" in summary
        assert f"lowest {min(every):.2f}x" in summary
        slower = sorted(s for s in every if s < 1)
        assert f"slower than torch.nn in {len(slower)} of {len(every)}" in summary
        for s in slower:
            assert f"({s:.2f}x)" in summary


def test_readme_table_shows_the_spread_of_repeat_runs(tmp_path):
    runs = [{("LSTM", 1): 1.2, ("GRU", 1): 3.0}, {("LSTM", 1): 1.1, ("GRU", 1): 2.5}]
    paths = []
    for i, speedups in enumerate(runs):
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps(_record("X", _isa("AVX2", "AVX2"), speedups, "cpu-avx2")))
        paths.append(str(path))
    text = readme_table.render(paths)
    assert text.count("#### ") == 1
    spread = [line for line in text.splitlines() if line.startswith("The same grid run 2")]
    assert len(spread) == 1
    means = [math.sqrt(r[("LSTM", 1)] * r[("GRU", 1)]) for r in runs]
    assert f"geometric mean {means[0]:.2f}x / {means[1]:.2f}x" in spread[0]


def test_readme_table_gives_lengths_api_records_their_own_table(tmp_path):
    padded = _record("X", _isa("AVX2", "AVX2"), {("LSTM", 1): 1.2}, "cpu-avx2")
    api = _record("X", _isa("AVX2", "AVX2"), {("LSTM", 1): 2.0, ("GRU", 8): 3.0}, "cpu-avx2")
    for row in api["rows"]:
        row.update(varlen=True, lengths_api=True, birnn_packed_ms=12.5)
    paths = []
    for name, rec in (("padded.json", padded), ("api.json", api)):
        (tmp_path / name).write_text(json.dumps(rec))
        paths.append(str(tmp_path / name))
    text = readme_table.render(paths)
    headings = [line for line in text.splitlines() if line.startswith("#### ")]
    assert headings == ["#### X, AVX2, cpu-issue grid",
                        "#### X, AVX2, cpu-issue grid, lengths= against torch.nn's pack/unpack "
                        "route"]
    api_rows = [line for line in text.split("#### ")[2].splitlines() if line.startswith("| ")]
    assert api_rows[0].count("|") == api_rows[1].count("|") == api_rows[2].count("|") == 12
    assert "via pack ms" in api_rows[0] and "| 12.50 |" in api_rows[2]


def test_readme_table_renders_the_committed_records():
    """The records in benchmarks/results render, old ones (without `isa`) included."""
    results = os.path.join(ROOT, "benchmarks", "results")
    paths = sorted(os.path.join(results, n) for n in os.listdir(results) if n.endswith(".json"))
    if not paths:
        pytest.skip("no committed records")
    text = readme_table.render(paths)
    tabled = {}  # heading -> rows of the first record with it, the one whose table is shown
    for path in paths:
        with open(path) as f:
            rec = json.load(f)
        tabled.setdefault(readme_table.heading(rec), len(rec["rows"]))
    for title in tabled:
        assert f"#### {title}\n" in text
    cells = ("| LSTM ", "| GRU ", "| RNN ")
    assert sum(line.startswith(cells) for line in text.splitlines()) == sum(tabled.values())


def test_summary_names_the_lowest_row():
    rows = [_row("LSTM", 8, 0.9, "cpu-avx2"), _row("GRU", 64, 2.0, "cpu-avx2")]
    s = record.summary(rows)
    assert s["min_speedup"] == 0.9
    assert s["min_row"] == record.row_name(rows[0]) == "LSTM infer T=100 B=8 H=256"
    assert s["geomean_speedup_LSTM_B_le_8"] == pytest.approx(0.9)


def test_peak_memory_reports_torch_nn_and_the_lengths_side(monkeypatch):
    # On a GPU every training row records both peaks (the CPU grid never reaches this).
    monkeypatch.setattr(run.timing, "peak_mb", lambda side: {"nn": 10.0, "ext": 4.0}[side])
    assert run.peak_memory(["nn", "ext", "ext-packed"]) == {"baseline_peak_mb": 10.0,
                                                           "birnn_peak_mb": 4.0}
