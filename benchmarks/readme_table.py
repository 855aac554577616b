"""Prints a benchmark record (benchmarks/results/*.json) as a Markdown table for the README,
so the figures there are produced from a record, never typed by hand.

    python benchmarks/readme_table.py benchmarks/results/2026-11-22-cpu-cpu-issue.json
"""

import json
import sys


def table(record: dict) -> str:
    device = record["device"]
    lines = [
        f"`{record['command']}` at commit `{record['commit'][:12]}`, {record['date']}, "
        f"{device['name']}, torch {device['torch']}, {device['threads']} threads "
        "(speedup = torch.nn ms / birnn_ext ms; above 1 means birnn_ext is faster):",
        "",
        "| cell | mode | T | B | H | torch.nn ms | birnn_ext ms | speedup | rel. error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in record["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['cell']} | {row['mode']} | {row['T']} | {row['B']} | "
                         f"{row['H']} | | | {row['status']} | |")
            continue
        lines.append(f"| {row['cell']} | {row['mode']} | {row['T']} | {row['B']} | {row['H']} | "
                     f"{row['baseline_ms']:.2f} | {row['birnn_ms']:.2f} | "
                     f"{row['speedup']:.2f}x | {row['rel_err']:.1e} |")
    summary = record.get("summary", {})
    if summary:
        lines += ["", f"Geometric-mean speedup {summary['geomean_speedup']:.2f}x "
                      f"(B <= 8: {summary['geomean_speedup_B_le_8']:.2f}x), "
                      f"lowest {summary['min_speedup']:.2f}x."]
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            print(table(json.load(f)))
