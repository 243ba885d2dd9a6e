"""Latency baselines: save the rows of a benchmark with the machine and runtimes they were measured on, and hold a
later benchmark against them with the noise-aware gate. Torch-free."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from edgetl import __version__
from edgetl.bench.environment import machine_info, runtime_versions
from edgetl.bench.gate import Decision, decide
from edgetl.errors import BaselineError
from edgetl.fsutil import write_json

SCHEMA = "edgetl-latency-baseline"
SCHEMA_VERSION = 1
# Fields of the machine whose difference makes a comparison questionable (warned, not refused).
MACHINE_KEYS = ("machine", "cpu", "cores", "usable_cores")


def save_baseline(path: Path, rows: list[dict]) -> dict:
    """Write `rows` (with their trial medians) and the environment to `path`, atomically."""
    baseline = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "edgetl_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
                "runtimes": runtime_versions(), "rows": rows}
    write_json(Path(path), baseline)
    return baseline


def load_baseline(path: Path) -> dict:
    """Read and check a baseline file; anything else is a BaselineError naming the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"{path} does not exist. Create it with `edgetl bench ... --save-baseline {path}`.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BaselineError(f"{path} is not a JSON file ({exc}).") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BaselineError(f"{path} is not an edgetl latency baseline (field 'schema' is not '{SCHEMA}'). "
                            "Create one with `edgetl bench ... --save-baseline FILE`.")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise BaselineError(f"{path} has baseline schema_version {data.get('schema_version')!r} (written by edgetl "
                            f"{data.get('edgetl_version')}); this edgetl {__version__} reads version {SCHEMA_VERSION}. "
                            "Save the baseline again with this version.")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise BaselineError(f"{path}: field 'rows' must be a non-empty list of benchmark rows.")
    for number, row in enumerate(rows):
        trials = row.get("trial_p50_ms") if isinstance(row, dict) else None
        if not isinstance(trials, list) or not trials or not all(isinstance(t, int | float) and t > 0 for t in trials):
            raise BaselineError(f"{path}: rows[{number}].trial_p50_ms must be a non-empty list of positive numbers.")
        for key in ("name", "threads", "batch"):
            if key not in row:
                raise BaselineError(f"{path}: rows[{number}] has no field '{key}'.")
    return data


@dataclass(frozen=True)
class Comparison:
    """One current row held against its baseline row."""

    row: dict
    baseline_row: dict | None
    decision: Decision | None
    warnings: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        return self.decision.status if self.decision else "no baseline"

    def as_dict(self) -> dict:
        return {"name": self.row["name"], "threads": self.row["threads"], "batch": self.row["batch"],
                "baseline_p50_ms": self.baseline_row["p50_ms"] if self.baseline_row else None,
                "p50_ms": self.row["p50_ms"], **(self.decision.as_dict() if self.decision else {"status": self.status}),
                "warnings": list(self.warnings)}


def environment_warnings(baseline: dict) -> list[str]:
    """What differs between the baseline's machine and runtimes and this one's."""
    warnings = []
    here, there = machine_info(), baseline.get("machine", {})
    for key in MACHINE_KEYS:
        if there.get(key) != here.get(key):
            warnings.append(f"{key} differs: baseline {there.get(key)!r}, here {here.get(key)!r}")
    mine, theirs = runtime_versions(), baseline.get("runtimes", {})
    for package, version in mine.items():
        if theirs.get(package) != version and (version or theirs.get(package)):
            warnings.append(f"{package} differs: baseline {theirs.get(package)}, here {version}")
    return warnings


def _match(row: dict, rows: list[dict], single: bool) -> tuple[dict | None, list[str]]:
    for candidate in rows:
        if (candidate["name"], candidate["threads"], candidate["batch"]) == (row["name"], row["threads"], row["batch"]):
            return candidate, []
    if single:  # one model on each side: compare them, whatever their names (a new file against the old one)
        candidate = rows[0]
        notes = [f"{key} differs: baseline {candidate[key]!r}, here {row[key]!r}"
                 for key in ("name", "threads", "batch") if candidate[key] != row[key]]
        return candidate, notes
    return None, []


def compare(baseline: dict, rows: list[dict], tolerance: float, confidence: float = 0.95) -> list[Comparison]:
    """Each row of a new benchmark against the baseline row of the same model name, threads and batch."""
    single = len(baseline["rows"]) == 1 and len(rows) == 1
    comparisons = []
    for row in rows:
        match, notes = _match(row, baseline["rows"], single)
        decision = decide(match["trial_p50_ms"], row["trial_p50_ms"], tolerance, confidence) if match else None
        comparisons.append(Comparison(row, match, decision, tuple(notes)))
    if not any(c.baseline_row for c in comparisons):
        names = sorted({f"{r['name']} ({r['threads']} threads, batch {r['batch']})" for r in baseline["rows"]})
        raise BaselineError(f"no benchmarked model matches a row of the baseline, which has: {', '.join(names)}.")
    return comparisons
