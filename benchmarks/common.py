"""What the benchmark scripts share: a real `edgetl build` in a fresh process, and the table of targets."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_build(recipe: Path, out: Path) -> tuple[float, dict]:
    """Run `edgetl build` as a user would (a fresh process) and return (wall seconds, summary)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "edgetl.cli", "build", str(recipe), "--out", str(out), "--quiet"],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"build of {recipe} failed:\n{result.stderr[-3000:]}")
    return seconds, json.loads((out / "summary.json").read_text())


def targets_table(rows: list[dict]) -> list[str]:
    """Markdown lines of `{figure, measured, target, met}` rows."""
    return ["| figure | measured | target | met |", "| --- | --- | --- | --- |"] + [
        f"| {r['figure']} | {r['measured']} | {r['target']} | {'yes' if r['met'] else '**no**'} |" for r in rows]


def write_result(out: Path, result: dict, table: str, note: str = "") -> None:
    """Write the results JSON to `out`, then print the table and where it went."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    print(f"({note + '; ' if note else ''}written to {out})")
