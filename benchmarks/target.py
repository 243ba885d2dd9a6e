"""Choosing for a target, measured: the quickstart built with `target: local`, then the same run directory rebuilt
with `target:` the emulated arm64 device of the tests (qemu-user + sshd; needs root, see tests/arm64_device.py), so
only the target stage runs again; every artifact measured on each, and the two choices side by side.

    python benchmarks/target.py [--recipe recipes/quickstart.yaml] [--out benchmarks/results/target.json]

Emulated latency is 200–500 times a real Pi's and says nothing about one: what this shows is the mechanism (what is
measured where, what is excluded and why, which rule chose), not arm64 speed. The CLI's closing table of the local
build is kept in the JSON (`cli_output`) as printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_result

sys.path.insert(0, str(REPO / "tests"))
from arm64_device import emulated_device  # noqa: E402


def build(recipe: Path, out: Path, *overrides: str) -> tuple[float, dict, str]:
    """`edgetl build` in a fresh process with `--set` overrides: (wall seconds, summary, what it printed)."""
    started = time.perf_counter()
    argv = [sys.executable, "-m", "edgetl.cli", "build", str(recipe), "--out", str(out), "--quiet"]
    result = subprocess.run([*argv, *(a for o in overrides for a in ("--set", o))], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"build of {recipe} {overrides} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return seconds, json.loads((out / "summary.json").read_text()), result.stdout


def side(summary: dict) -> dict:
    """What one build says about its target and choice."""
    target = summary["target"]
    return {"target": target["name"], "machine": target["device_info"].get("machine"), "threads": target["threads"],
            "formats": target["formats"], "excluded": target["excluded"], "chosen": summary["chosen"],
            "rule": summary["choice"]["rule"], "artifacts": summary["choice"]["artifacts"],
            "reruns": sorted(name for name, t in summary["stages"].items() if not t["cached"])}


def p50(row: dict) -> str:
    if row.get("p50_ms") is None:
        return "—"
    ci = row.get("p50_ci95")
    return f"{row['p50_ms']:.2f}" + (f" ({ci[0]:.2f}–{ci[1]:.2f})" if ci else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "quickstart.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "target.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgetl-target-") as scratch:
        run = Path(scratch) / "run"
        local_s, local, printed = build(args.recipe, run, "target.device=local", "target.threads=1")
        print(f"local build: {local_s:.0f} s, chosen {local['chosen']}", flush=True)
        with emulated_device(Path(scratch) / "sshd") as (config, alias, _port):
            device_s, device, _ = build(args.recipe, run, f"target.device=ssh://{alias}", f"target.ssh_config={config}",
                                        "target.threads=1", "target.rounds=3", "target.runs=3", "target.warmup=1")
        print(f"rebuild for the emulated arm64 device: {device_s:.0f} s, chosen {device['chosen']}", flush=True)
    here, there = side(local), side(device)
    rows = {a["name"]: [a] for a in here["artifacts"]}
    for a in there["artifacts"]:
        rows.setdefault(a["name"], [None]).append(a)
    lines = ["| artifact | val correct | local p50 ms (95 % CI), 1 thread | local | emulated arm64 p50 ms (95 % CI) "
             "| arm64 |", "| --- | --- | --- | --- | --- | --- |"]
    for name, (a, b) in rows.items():
        lines.append(f"| {name} | {a['val_correct']}/{a['val_images']} | {p50(a)} | **{a['status']}** | {p50(b)} | "
                     f"**{b['status']}**{': ' + b['why'] if b['status'] == 'excluded' else ''} |")
    lines += ["", f"local: chosen **{here['chosen']}**; emulated arm64 ({there['machine']}): chosen "
              f"**{there['chosen']}**; the rebuild re-ran {', '.join(there['reruns'])}."]
    result = {"recipe": str(args.recipe.relative_to(REPO) if args.recipe.is_relative_to(REPO) else args.recipe),
              "local": here | {"build_s": round(local_s, 1)}, "emulated_arm64": there | {"build_s": round(device_s, 1)},
              "cli_output": printed.splitlines(), "machine": local["environment"],
              "date": time.strftime("%Y-%m-%d")}
    write_result(args.out, result, "\n".join(lines), "emulated latency is not a Pi's")


if __name__ == "__main__":
    main()
