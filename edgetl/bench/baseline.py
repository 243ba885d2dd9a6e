"""Latency baselines: save the rows of a benchmark with the machine and runtimes they were measured on, and hold a
later benchmark against them with the noise-aware gate. Torch-free."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgetl import __version__
from edgetl.bench.environment import machine_info, runtime_versions
from edgetl.bench.gate import STATE_BAND, Decision, StateMatch, decide, match_states
from edgetl.bench.measure import BenchOptions, ModelRef, benchmark, find_models
from edgetl.errors import BaselineError, EdgetlError
from edgetl.fsutil import write_json

SCHEMA = "edgetl-latency-baseline"
SCHEMA_VERSION = 1
# Fields of the machine whose difference makes a comparison questionable (warned, not refused).
MACHINE_KEYS = ("machine", "cpu", "cores", "usable_cores")


def save_baseline(path: Path, rows: list[dict], where: dict | None = None) -> dict:
    """Write `rows` (with their trial medians) and the environment to `path`, atomically. `where`: the device the
    rows were measured on (its `edgetl_runner info` record: machine fields and `runtimes`; default this machine).
    Each row's model path is stored relative to the baseline file's folder, so the baseline and its models can move
    together (a checkout, a CI artifact); `model_sha256` says which file it was."""
    folder = os.path.abspath(Path(path).parent)
    stored = [{**row, "model": os.path.relpath(os.path.abspath(row["model"]), folder)} if row.get("model") else row
              for row in rows]
    machine = {k: v for k, v in where.items() if k != "runtimes"} if where else machine_info()
    baseline = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "edgetl_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
                "runtimes": where.get("runtimes", {}) if where else runtime_versions(), "rows": stored}
    if where:
        baseline["device"] = rows[0].get("device")
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
    for row in rows:  # model paths are relative to the baseline's folder (older baselines hold absolute ones)
        if isinstance(row, dict) and isinstance(row.get("model"), str) and not os.path.isabs(row["model"]):
            row["model"] = os.path.normpath(os.path.join(path.parent, row["model"]))
    for number, row in enumerate(rows):
        trials = row.get("trial_p50_ms") if isinstance(row, dict) else None
        if not isinstance(trials, list) or not trials or not all(isinstance(t, int | float) and t > 0 for t in trials):
            raise BaselineError(f"{path}: rows[{number}].trial_p50_ms must be a non-empty list of positive numbers.")
        for key in ("name", "threads", "batch"):
            if key not in row:
                raise BaselineError(f"{path}: rows[{number}] has no field '{key}'.")
        looks = row.get("reference_trial_p50_ms")
        if looks is not None and not (isinstance(looks, list) and len(looks) == len(trials) and all(
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, int | float) and t > 0 for t in pair)
                for pair in looks)):
            raise BaselineError(f"{path}: rows[{number}].reference_trial_p50_ms must hold one [before, after] pair of "
                                "positive numbers per entry of trial_p50_ms.")
    return data


@dataclass(frozen=True)
class Comparison:
    """One current row held against its baseline row: `mode` "interleaved" when the baseline's own model file was
    re-measured in the same rounds (machine drift cancels out), "saved" when only its saved trials were there."""

    row: dict
    baseline_row: dict | None
    decision: Decision | None
    warnings: tuple[str, ...] = ()
    mode: str = "saved"
    first: Decision | None = None  # the first measurement's verdict, when a regression was measured again to confirm
    state: StateMatch | None = None  # saved mode: rounds of a shared machine state (None: no looks to compare:
    # none saved, other threads, or another reference id)
    unsettled: bool = False  # too few rounds in a machine state shared with the baseline, and a verdict it could cause

    @property
    def status(self) -> str:
        return self.decision.status if self.decision else "no baseline"

    def as_dict(self) -> dict:
        return {"name": self.row["name"], "threads": self.row["threads"], "batch": self.row["batch"],
                "baseline_p50_ms": self.baseline_row["p50_ms"] if self.baseline_row else None,
                "p50_ms": self.row["p50_ms"], **(self.decision.as_dict() if self.decision else {"status": self.status}),
                "mode": self.mode, "warnings": list(self.warnings),
                "first_measurement": self.first.as_dict() if self.first else None,
                "machine_state": ({**self.state.as_dict(), "compared": self.compared} if self.state else None)}

    def compared_trials(self) -> tuple[list[float], list[float]]:
        """The baseline's and the new trial medians the verdict rests on."""
        base, curr = self.baseline_row["trial_p50_ms"], self.row["trial_p50_ms"]
        if self.state is not None and self.state.enough:
            return [base[i] for i in self.state.baseline_rounds], [curr[i] for i in self.state.rounds]
        return base, curr

    @property
    def compared(self) -> str:
        """Which rounds the saved-mode verdict rests on."""
        if self.state is None:
            return "all rounds"
        if self.state.enough:
            return "rounds in the baseline's machine state"
        return "not judged: too few rounds in a machine state shared with the baseline" if self.unsettled \
            else "all rounds: the machine cannot have caused the verdict"


def environment_warnings(baseline: dict, where: dict | None = None) -> list[str]:
    """What differs between the baseline's machine and runtimes and this one's (`where`: a device's `edgetl_runner
    info` record instead, when the rows were measured there)."""
    warnings = []
    here, there = where or machine_info(), baseline.get("machine", {})
    for key in MACHINE_KEYS:
        if there.get(key) != here.get(key):
            warnings.append(f"{key} differs: baseline {there.get(key)!r}, here {here.get(key)!r}")
    mine, theirs = (where.get("runtimes", {}) if where else runtime_versions()), baseline.get("runtimes", {})
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


def live_references(baseline: dict) -> list[ModelRef]:
    """The baseline's own model files that are still where it says, unchanged (same sha256): `edgetl bench`
    re-measures them in the same rounds as the new models."""
    references: dict[Path, ModelRef] = {}
    for row in baseline["rows"]:
        path = Path(str(row.get("model", "")))
        if not row.get("model_sha256") or path in references or not path.is_file():
            continue
        try:
            found = find_models([path])[0]
        except EdgetlError:
            continue
        if found.sha256() == row["model_sha256"]:
            references[path] = replace(found, name=row["name"], role="baseline")
    return list(references.values())


def baseline_from_rows(rows: list[dict], source: Path, where: dict | None = None) -> dict:
    """An in-memory baseline made of freshly measured rows of reference models (`--baseline OLD_MODEL`), measured
    here or on the device `where` describes."""
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "source": str(source),
            "machine": {k: v for k, v in where.items() if k != "runtimes"} if where else machine_info(),
            "runtimes": where.get("runtimes", {}) if where else runtime_versions(), "rows": rows}


def compare(baseline: dict, rows: list[dict], tolerance: float, confidence: float = 0.95,
            live_rows: list[dict] = ()) -> list[Comparison]:
    """Each row of a new benchmark against the baseline row of the same model name, threads and batch; against
    the baseline model's re-measured trials (`live_rows`) when it was measured in the same rounds."""
    single = len(baseline["rows"]) == 1 and len(rows) == 1
    comparisons = []
    for row in rows:
        match, notes = _match(row, baseline["rows"], single)
        theirs, mine = (match or {}).get("model_sha256"), row.get("model_sha256")
        if theirs and mine and theirs != mine:
            notes = [*notes, f"not the baseline's model file (sha256 {theirs[:12]}… there, {mine[:12]}… here): the "
                             "gate compares the latency of two different files"]
        live = next((r for r in live_rows if match and r["model"] == match.get("model")
                     and (r["threads"], r["batch"]) == (match["threads"], match["batch"])), None)
        reference = live or match
        if live is not None or match is None:
            decision = (decide(reference["trial_p50_ms"], row["trial_p50_ms"], tolerance, confidence, paired=True)
                        if match else None)
            comparisons.append(Comparison(row, reference, decision, tuple(notes), "interleaved" if live else "saved"))
        else:
            comparisons.append(_compare_saved(row, match, tolerance, confidence, notes))
    if not any(c.baseline_row for c in comparisons):
        names = sorted({f"{r['name']} ({r['threads']} threads, batch {r['batch']})" for r in baseline["rows"]})
        raise BaselineError(f"no benchmarked model matches a row of the baseline, which has: {', '.join(names)}.")
    return comparisons


def _compare_saved(row: dict, match: dict, tolerance: float, confidence: float, notes: list[str]) -> Comparison:
    """A row against a baseline's saved trials. When both sides looked at the same reference at the same threads:
    only the rounds of one machine state shared by both (`match_states`); with too few of them, the verdict on all
    rounds stands only where the machine cannot have caused it, else the row is unsettled (measured again, then not
    judged). Without looks on both sides (an older baseline): all rounds."""
    base, curr = np.asarray(match["trial_p50_ms"], dtype=np.float64), np.asarray(row["trial_p50_ms"], dtype=np.float64)
    state = None
    looked = bool(match.get("reference_trial_p50_ms") and row.get("reference_trial_p50_ms"))
    if looked and row.get("reference") == match.get("reference") and row["threads"] == match["threads"]:
        state = match_states(match["reference_trial_p50_ms"], row["reference_trial_p50_ms"])
    elif looked and row["threads"] == match["threads"]:
        notes = [*notes, "the machine-state reference differs from the baseline's (another reference file or runtime "
                         "version): all rounds compared"]
    if state is not None and state.enough:
        decision = decide(base[list(state.baseline_rounds)], curr[list(state.rounds)], tolerance, confidence)
        return Comparison(row, match, decision, tuple(notes), "saved", state=state)
    decision = decide(base, curr, tolerance, confidence)
    return Comparison(row, match, decision, tuple(notes), "saved", state=state,
                      unsettled=state is not None and not _certain(decision, match, row))


def _certain(decision: Decision, match: dict, row: dict) -> bool:
    """Whether a verdict on all rounds holds whatever the machine states: a regression measured while the machine
    ran faster in every round than in any baseline round, or no regression while it ran slower in every round."""
    base_looks = np.asarray(match["reference_trial_p50_ms"], dtype=np.float64)
    looks = np.asarray(row["reference_trial_p50_ms"], dtype=np.float64)
    if decision.status == "regression":
        return bool(looks.max() < base_looks.min() * (1 - STATE_BAND))
    if decision.status in ("ok", "faster"):
        return bool(looks.min() > base_looks.max() * (1 + STATE_BAND))
    return False  # inconclusive: looks slower, which a slower machine alone can do


@dataclass(frozen=True)
class GateRun:
    """A benchmark held against a baseline: the new rows, the comparisons, and the baseline used."""

    rows: list[dict]
    comparisons: list[Comparison]
    baseline: dict


def is_baseline_file(target: Path) -> bool:
    """A .json baseline file, as opposed to model files or a run directory to use as the baseline."""
    return Path(target).suffix.lower() == ".json"


def bench_against(models: list[ModelRef], baseline: Path | dict, options: BenchOptions, tolerance: float,
                  confidence: float = 0.95, reporter=None, confirm: bool = True) -> GateRun:
    """Measure `models` and hold them against `baseline`: a baseline file (its model files, when still there and
    unchanged, are re-measured in the same rounds) or a loaded baseline dict, or model files / a run directory
    measured now as the baseline.

    Against saved trials, each round's machine state is known from the reference timed around it (see
    `edgetl.bench.reference`), and only rounds of a state both sides share are compared. With too few such rounds,
    more rounds are measured (up to `STATE_RETRIES` times); then the row is not judged (`not_judged`), unless the
    verdict on all rounds is one the machine cannot have caused (see `_certain`).

    `confirm`: a model found to regress is measured again (fresh rounds, with its live baseline model) and only a
    regression found both times counts; a burst of load on the machine rarely lasts through both measurements,
    a real slowdown always does."""
    from edgetl.progress import SILENT

    reporter = reporter or SILENT
    reference, references = resolve_baseline(baseline)
    if reference is not None:
        live_paths = {str(r.path) for r in references}
        # The machine-state reference is timed when a saved-mode row can use it (or a new baseline is being saved).
        options = replace(options, reference=options.reference or any(
            r.get("reference_trial_p50_ms") and str(r.get("model")) not in live_paths for r in reference["rows"]))
    probed: dict[tuple, dict] = {}

    def measure(subset: list[ModelRef], first: bool) -> tuple[list[dict], list[dict]]:
        rows, live = split_roles(benchmark(subset, options if first else replace(options, cold_start=False),
                                           reporter))
        if first:
            probed.update({_key(r): r for r in rows})
        else:  # the cold start was measured once, the first time
            rows = [{**r, **{k: probed[_key(r)].get(k) for k in PROBED}} for r in rows]
        return rows, live

    def judge(subset: list[ModelRef], rows: list[dict], live: list[dict], reference: dict):
        return _until_comparable(subset, rows, live, reference, options, tolerance, confidence, reporter)

    return gate(models, baseline, references, reference, measure, judge, reporter, confirm)


def resolve_baseline(baseline: Path | dict) -> tuple[dict | None, list[ModelRef]]:
    """A baseline file or dict → (its contents, its model files still there and unchanged, to be re-measured);
    old model files or a run directory → (None, those models, to be measured as the baseline)."""
    if isinstance(baseline, dict) or is_baseline_file(baseline):
        reference = baseline if isinstance(baseline, dict) else load_baseline(baseline)
        return reference, live_references(reference)
    return None, [replace(m, role="baseline") for m in find_models([baseline])]


def split_roles(measured: list[dict]) -> tuple[list[dict], list[dict]]:
    """Measured rows → (the models' rows, the live baseline models' rows)."""
    return [r for r in measured if r["role"] == "model"], [r for r in measured if r["role"] == "baseline"]


def gate(models: list[ModelRef], baseline: Path | dict, references: list[ModelRef], reference: dict | None,
         measure, judge, reporter, confirm: bool, where: str = "") -> GateRun:
    """The gate's one flow, wherever the models run: measure the models with the live baseline models in the same
    rounds, make the baseline from those rows when old models were given (`reference` None: `baseline` names them),
    judge, and (with `confirm`) measure a suspected regression again, with its live baseline model, so that only a
    regression found both times counts: a burst of load rarely lasts through both, a real slowdown always does.
    `references`, `reference`: resolve_baseline(baseline); `where`: said after "slower than allowed".

    `measure(subset, first)` → (model rows, live baseline rows); `judge(subset, rows, live, reference)` → (rows,
    comparisons). The rows returned are the ones the verdict rests on."""
    rows, live = measure(models + references, True)
    if reference is None:
        # a device's rows carry the device's `edgetl_runner info`: the baseline records where it was measured
        reference = baseline_from_rows(live, Path(baseline), rows[0].get("device_info") if rows else None)
    rows, comparisons = judge(models, rows, live, reference)
    suspects = {c.row["model"] for c in comparisons if c.status == "regression"}
    if confirm and suspects:
        reporter.info(f"{len(suspects)} model(s) measured slower than allowed{where}: measuring again to confirm")
        wanted = {c.baseline_row.get("model") for c in comparisons if c.row["model"] in suspects}
        again = [m for m in models if str(m.path) in suspects]
        again_rows, again_live = measure(again + [r for r in references if str(r.path) in wanted], False)
        again_rows, again_comparisons = judge(again, again_rows, again_live, reference)
        second = {_key(c.row): c for c in again_comparisons}
        comparisons = [replace(second[_key(c.row)], first=c.decision) if c.status == "regression" else c
                       for c in comparisons]
        remeasured = {_key(r): r for r in again_rows}
        rows = [remeasured.get(_key(r), r) for r in rows]
    return GateRun(rows, comparisons, reference)


STATE_RETRIES = 3


def _until_comparable(models: list[ModelRef], rows: list[dict], live: list[dict], reference: dict,
                      options: BenchOptions, tolerance: float, confidence: float, reporter
                      ) -> tuple[list[dict], list[Comparison]]:
    """Compare; while some saved-mode rows have too few rounds in a machine state shared with the baseline, measure
    those models for more rounds (up to STATE_RETRIES times); rows still short are not judged."""
    comparisons = compare(reference, rows, tolerance, confidence, live)
    for _ in range(STATE_RETRIES):
        unsettled = {_key(c.row) for c in comparisons if c.unsettled}
        if not unsettled:
            break
        ratios = ", ".join(f"×{c.state.ratio:.2f}" for c in comparisons if c.unsettled)
        reporter.info(f"{len(unsettled)} row(s) had too few rounds in a machine state shared with the baseline "
                      f"(reference {ratios}): measuring {options.repeats} more rounds")
        paths, threads = {key[0] for key in unsettled}, tuple(sorted({key[1] for key in unsettled}))
        extra = {_key(r): r for r in benchmark([m for m in models if str(m.path) in paths],
                                               replace(options, cold_start=False, threads=threads), reporter)
                 if r["role"] == "model"}
        rows = [_extend(r, extra[_key(r)]) if _key(r) in unsettled and _key(r) in extra else r for r in rows]
        comparisons = compare(reference, rows, tolerance, confidence, live)
    return rows, [replace(c, decision=replace(c.decision, status="not_judged")) if c.unsettled and c.decision else c
                  for c in comparisons]


def _extend(row: dict, extra: dict) -> dict:
    """`row` with the rounds of a further measurement of the same model appended to its `trial_p50_ms` and
    `reference_trial_p50_ms` (counted in `extra_rounds`); its statistics stay the first measurement's."""
    return {**row, "trial_p50_ms": row["trial_p50_ms"] + extra["trial_p50_ms"],
            "reference_trial_p50_ms": row["reference_trial_p50_ms"] + extra["reference_trial_p50_ms"],
            "extra_rounds": row.get("extra_rounds", 0) + len(extra["trial_p50_ms"])}


PROBED = ("cold_start_ms", "load_ms", "first_inference_ms", "peak_rss_mb")


def _key(row: dict) -> tuple:
    return row["model"], row["threads"], row["batch"]
