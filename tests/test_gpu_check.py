"""scripts/gpu_check.sh's plumbing, run here with --dry-run (no GPU): stage selection, the
deadline, the summary, the log archive, the benchmark record and the 8-file limit of a
device call. What runs on a GPU (the build, the sanitizers, the real grid) is replaced by
stand-ins that say so; the script's GPU branches run for real only in the issue "On the first
GPU lent"."""

import json
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")

pytestmark = pytest.mark.skipif(
    not os.path.isfile(SCRIPT) or not os.path.isfile(os.path.join(ROOT, "setup.py")),
    reason="needs the source checkout (scripts/, benchmarks/), not only tests/")


def gpu_check(*args, timeout=600):
    """scripts/gpu_check.sh --dry-run ARGS..., run from the repository root."""
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", SCRIPT, "--dry-run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def stages(summary):
    """{stage: status} from summary.txt's table (fixed-width columns)."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    rows = [line for line in lines[start + 1:] if not line.startswith("logs:")]
    rows = rows[:next((i for i, r in enumerate(rows) if r.startswith("OUTDIR:")), len(rows))]
    return {row[:9].strip(): row[10:20].strip() for row in rows}


def test_dry_run_all_stages(tmp_path):
    out = tmp_path / "out"
    run = gpu_check(str(out), "all")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert len(files) <= 8, files  # a device call returns at most 8 files
    summary = (out / "summary.txt").read_text()
    # The last screen of output is the summary: it is what a device call shows.
    assert run.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])
    assert stages(summary) == dict.fromkeys(["build", "test", "sanitize", "bench"], "passed")
    assert "DRY RUN" in summary and "ALL STAGES PASSED" in summary
    with tarfile.open(out / "logs.tar.gz") as archive:
        names = {os.path.basename(n) for n in archive.getnames()}
    assert {"env.log", "build.log", "test.log", "junit-cuda.xml", "tests.json", "sanitize.log",
            "probe.json", "bench.log", "summary.txt"} <= names
    records = [f for f in files if f.endswith(".json")]
    assert len(records) == 1 and records[0].replace(".json", ".csv") in files
    record = json.loads((out / records[0]).read_text())
    assert record["rows"] and record["rows"][0]["status"] == "ok"
    # The test stage's counts reach the record's "tests" block.
    assert record["tests"]["command"] == "pytest -m cuda" and record["tests"]["failed"] == 0


def test_dry_run_one_stage_and_the_deadline(tmp_path):
    out = tmp_path / "out"
    run = gpu_check("--deadline", "15", str(out), "test", "sanitize")
    # 15 s leave no stage its 20 s minimum: both are recorded as skipped, the call fails
    # (a stage that did not run is not a pass) and still writes its summary and archive.
    assert run.returncode == 1, run.stdout[-3000:]
    summary = (out / "summary.txt").read_text()
    assert stages(summary) == {"test": "skipped", "sanitize": "skipped"}
    assert "no time left" in summary
    assert sorted(os.listdir(out)) == ["logs.tar.gz", "summary.txt"]


def test_unknown_stage_is_refused(tmp_path):
    run = gpu_check(str(tmp_path), "benchmark")
    assert run.returncode == 2 and "unknown stage 'benchmark'" in run.stderr


def test_dry_run_lengths_stage(tmp_path):
    # The lengths-api rows: a record of their own, each row timed on three sides.
    out = tmp_path / "out"
    run = gpu_check(str(out), "lengths")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert stages((out / "summary.txt").read_text()) == {"lengths": "passed"}
    records = [f for f in os.listdir(out) if f.endswith(".json")]
    assert len(records) == 1 and records[0].endswith("-lengths-api.json"), records
    rows = json.loads((out / records[0]).read_text())["rows"]
    assert rows and all(r["status"] == "ok" and r["lengths_api"] and r["birnn_packed_ms"] > 0
                        for r in rows)
