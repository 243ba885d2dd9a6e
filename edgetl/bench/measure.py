"""`edgetl bench`: find the models, build their inputs, measure them in interleaved repeats, one row per
model × threads × batch. Torch-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.artifact import ArtifactInfo
from edgetl.bench.environment import package_version
from edgetl.bench.harness import LatencyPlan, interleaved_trials, time_runs, warm_up
from edgetl.bench.stats import summarize
from edgetl.errors import BenchUsageError, ModelFileError
from edgetl.formats import FORMATS, format_for_file
from edgetl.fsutil import sha256_json
from edgetl.progress import SILENT, Reporter

ROW_FIELDS = ("model", "name", "role", "format", "precision", "threads", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
              "std_ms", "min_ms", "max_ms", "throughput_ips", "cold_start_ms", "load_ms", "first_inference_ms",
              "peak_rss_mb", "size_bytes", "runs", "repeats", "warmup_runs", "input", "runtime", "runtime_version",
              "model_sha256", "trial_p50_ms", "reference", "reference_trial_p50_ms", "extra_rounds")


@dataclass(frozen=True)
class ModelRef:
    """One model file to measure, with what is known about it."""

    path: Path
    name: str
    format: str
    precision: str | None = None
    preprocessing: dict | None = None
    role: str = "model"  # or "baseline": a baseline's own model file, re-measured beside the new ones

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in FORMATS[self.format].files(self.path) if p.is_file())

    def sha256(self) -> str:
        """One hash over the model file and the files that go with it (OpenVINO's .bin)."""
        from edgetl.fsutil import sha256_file

        hashes = [sha256_file(p) for p in FORMATS[self.format].files(self.path) if p.is_file()]
        return hashes[0] if len(hashes) == 1 else sha256_json(hashes)


@dataclass(frozen=True)
class BenchOptions:
    """How to measure (see `edgetl bench --help`)."""

    threads: tuple[int, ...] = (1,)
    batch: int = 1
    warmup: int | str = "auto"  # a count, or "auto": until the median of two windows agrees
    runs: int | None = None  # exact timed runs per row (split over the repeats) ...
    time_s: float = 5.0  # ... or a time budget per row (used when runs is None)
    min_runs: int = 50
    max_runs: int = 100_000
    repeats: int = 10  # interleaved rounds over all models: each gives one trial median
    images: tuple[Path, ...] = ()  # real images (files or folders); random inputs when empty
    cold_start: bool = True
    seed: int = 0
    reference: bool = False  # time the machine-state reference just before and after every trial (for baselines)
    extra: dict = field(default_factory=dict)

    def trial_plan(self) -> LatencyPlan:
        """The timed loop of one repeat."""
        if self.runs is not None:
            per = max(1, -(-self.runs // self.repeats))
            return LatencyPlan(warmup=0, min_runs=per, min_time_s=0.0, max_runs=per)
        return LatencyPlan(warmup=0, min_runs=max(1, -(-self.min_runs // self.repeats)),
                           min_time_s=self.time_s / self.repeats, max_runs=max(1, self.max_runs // self.repeats))

    def reference_plan(self) -> LatencyPlan:
        """One look at the machine-state reference: a twentieth of a second, or a quarter of a trial if shorter."""
        trial = self.trial_plan()
        return LatencyPlan(warmup=0, min_runs=5, min_time_s=min(0.05, trial.min_time_s / 4), max_runs=1000)


def _sidecar(path: Path) -> ArtifactInfo:
    """The model.json edgetl writes beside every exported file (an empty ArtifactInfo when there is none). A JSON
    file there that is not a JSON object, or says it is about another `file`, is not this model's; one that is but
    has an ill-typed field is a ModelFileError naming the file and the field."""
    for candidate in (path.with_suffix(".json"), path.parent / "model.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError):
                return ArtifactInfo()
            if isinstance(data, dict) and data.get("file", path.name) == path.name:
                return ArtifactInfo.from_json(data, candidate, ModelFileError, required=())
    return ArtifactInfo()


def _model_ref(path: Path, name: str | None = None, precision: str | None = None) -> ModelRef:
    fmt = format_for_file(path)
    if not path.is_file():
        raise ModelFileError(f"Model file {path} does not exist.")
    meta = _sidecar(path)
    return ModelRef(path, name or meta.name or path.stem, fmt.name, precision or meta.precision, meta.preprocessing)


def _run_models(run_dir: Path) -> list[ModelRef]:
    """Every artifact of a run directory's summary.json; only the fields bench uses (name, path) are required."""
    summary_file = run_dir / "summary.json"
    try:
        artifacts = json.loads(summary_file.read_text(encoding="utf-8"))["artifacts"]
        if not all(isinstance(a.get("name"), str) and isinstance(a.get("path"), str) for a in artifacts):
            raise TypeError("every artifact needs a name and a path")
        return [_model_ref(run_dir / a["path"], a["name"], a.get("precision")) for a in artifacts]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise BenchUsageError(f"{summary_file}: not an edgetl summary (field 'artifacts': {str(exc)[:200]}).") from None


def find_models(targets: list[str | Path]) -> list[ModelRef]:
    """Model files, and every artifact of each run directory (read from its summary.json), in the order given."""
    models: list[ModelRef] = []
    for target in map(Path, targets):
        if target.is_dir():
            if not (target / "summary.json").is_file():
                raise BenchUsageError(f"{target} is a folder without summary.json: give model files (.onnx, .xml, "
                                      ".tflite) or an edgetl run directory.")
            models += _run_models(target)
        elif target.exists() or target.suffix:
            models.append(_model_ref(target))
        else:
            raise ModelFileError(f"{target} does not exist.")
    names = [m.name for m in models]
    if len(set(names)) < len(names):  # two files called model.onnx: name them by their path instead
        models = [ModelRef(m.path, str(m.path), m.format, m.precision, m.preprocessing) for m in models]
    if not models:
        raise BenchUsageError("no models to benchmark.")
    return models


def _image_files(sources: tuple[Path, ...]) -> list[str]:
    from edgetl.data import IMAGE_EXTENSIONS

    files: list[str] = []
    for source in sources:
        if source.is_dir():
            files += sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        elif source.is_file():
            files.append(str(source))
        else:
            raise BenchUsageError(f"--images {source}: no such file or folder.")
    if not files:
        raise BenchUsageError(f"--images {', '.join(map(str, sources))}: no images found.")
    return files


def make_inputs(model: ModelRef, input_shape: tuple, options: BenchOptions) -> np.ndarray:
    """One batch, allocated once: real images preprocessed like the model's training, or seeded random values."""
    shape = [options.batch if i == 0 or d is None else d for i, d in enumerate(input_shape)]
    if isinstance(input_shape[0], int) and input_shape[0] != options.batch:
        raise BenchUsageError(f"{model.path}: the model's batch size is fixed at {input_shape[0]}; use "
                              f"--batch {input_shape[0]}.")
    if any(d is None for d in input_shape[1:]):
        raise BenchUsageError(f"{model.path}: the input shape {list(input_shape)} has dynamic sizes; edgetl bench "
                              "needs fixed image sizes.")
    if not options.images:
        return np.random.default_rng(options.seed).standard_normal(shape).astype(np.float32)
    from edgetl.preprocess import Preprocessing, preprocess_files

    files = _image_files(options.images)
    picked = [files[i % len(files)] for i in range(options.batch)]
    prep = (Preprocessing.from_json(model.preprocessing) if model.preprocessing
            else Preprocessing(resize=round(shape[-1] * 256 / 224), crop=shape[-1]))  # ImageNet's default ratio
    inputs = preprocess_files(picked, prep)
    if list(inputs.shape) != shape:
        raise BenchUsageError(f"{model.path}: images preprocess to {list(inputs.shape)}, the model takes {shape}.")
    return np.ascontiguousarray(inputs)


def cold_start(model: ModelRef, threads: int, batch: int) -> dict:
    """Load + first inference time and peak RSS, measured in a fresh process (see edgetl.bench.probe)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                      os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "edgetl.bench.probe", str(model.path), str(threads), str(batch)],
                            capture_output=True, text=True, env=env, timeout=600, check=False)
    lines = result.stdout.strip().splitlines()
    try:
        measured = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelFileError(f"{model.path}: the cold-start probe failed (exit {result.returncode}): {tail}") from None
    if "error" in measured:
        raise ModelFileError(measured["error"])
    return measured


def benchmark(models: list[ModelRef], options: BenchOptions, reporter: Reporter = SILENT) -> list[dict]:
    """Rows of latency statistics, one per model × threads (at `options.batch`).

    For each thread count every model is loaded, warmed up, then timed in `options.repeats` alternating rounds:
    a change of machine load during the run hits all models alike, and the rounds' medians show the run-to-run
    spread that the regression gate needs.
    """
    from edgetl.runtime import load_runner

    # Cold starts first, in child processes, before this process starts any runtime's threads.
    probes: dict[tuple[Path, int], dict] = {}
    probed = [m for m in models if m.role == "model"]  # a baseline's model, re-measured, needs only its latency
    if options.cold_start and probed:
        with reporter.task("cold start (fresh process per model)", len(probed) * len(options.threads)) as update:
            for threads in options.threads:
                for model in probed:
                    probes[(model.path, threads)] = cold_start(model, threads, options.batch)
                    update(1)
    rows: list[dict] = []
    plan, reference_plan = options.trial_plan(), options.reference_plan()
    for threads in options.threads:
        runners = [load_runner(m.path, threads=threads) for m in models]
        batches = [make_inputs(m, r.input_shape, options) for m, r in zip(models, runners, strict=True)]
        for runner, batch in zip(runners, batches, strict=True):
            runner.run(batch)  # once through the checked call: a model that fails to run is a ModelFileError here
        warmups = [warm_up(r, b, options.warmup) for r, b in zip(runners, batches, strict=True)]
        states = _reference_runners({m.format for m in models}, threads) if options.reference else {}
        seen: list[list[float]] = [[] for _ in models]  # the reference's p50 just before and after each trial

        def look(i: int, seen=seen, states=states) -> None:
            seen[i].append(_look(states[models[i].format], reference_plan))

        with reporter.task(f"benchmarking {len(models)} model{'s' if len(models) > 1 else ''} ({threads} thread"
                           f"{'s' if threads > 1 else ''}, batch {options.batch}, {options.repeats} interleaved "
                           "repeats)", None) as update:
            trials = interleaved_trials(runners, batches, plan, options.repeats, update, look if states else None)
        looks = [[p50s[j:j + 2] for j in range(0, len(p50s), 2)] for p50s in seen]  # [before, after] per trial
        del runners
        states.clear()
        for model, model_trials, model_looks, warmup_runs in zip(models, trials, looks, warmups, strict=True):
            rows.append(_row(model, threads, options, model_trials, warmup_runs, probes.get((model.path, threads))))
            if model_looks:
                from edgetl.bench.reference import reference_id

                rows[-1].update(reference=reference_id(model.format), reference_trial_p50_ms=model_looks)
            label = f"baseline {model.name}" if model.role == "baseline" else model.name
            reporter.info(f"  {label} @ {threads} thread(s): p50 {rows[-1]['p50_ms']:.3f} ms, "
                          f"p90 {rows[-1]['p90_ms']:.3f} ms ({rows[-1]['runs']} runs)")
    return rows


def _reference_runners(formats: set[str], threads: int) -> dict:
    """The machine-state reference loaded and warmed up on each runtime in use: format -> (runner, input)."""
    from edgetl.bench.reference import load_reference, reference_input

    states = {}
    for fmt in sorted(formats):
        runner = load_reference(fmt, threads)
        batch = reference_input(runner)
        warm_up(runner, batch, "auto")
        states[fmt] = (runner, batch)
    return states


def _look(state: tuple, plan: LatencyPlan) -> float:
    """The machine-state reference's p50 (ms) over one short look."""
    runner, batch = state
    return round(float(np.median(time_runs(runner, batch, plan))), 4)


def _row(model: ModelRef, threads: int, options: BenchOptions, trials: list[np.ndarray], warmup_runs: int,
         probe: dict | None) -> dict:
    stats = summarize(np.concatenate(trials))
    fmt = FORMATS[model.format]
    probe = probe or {}
    return {"model": str(model.path), "name": model.name, "role": model.role, "format": model.format,
            "precision": model.precision, "threads": threads, "batch": options.batch,
            **{f"{k}_ms": v for k, v in stats.items()},
            "throughput_ips": round(options.batch * 1000.0 / stats["mean"], 2),
            "cold_start_ms": probe.get("cold_start_ms"), "load_ms": probe.get("load_ms"),
            "first_inference_ms": probe.get("first_inference_ms"), "peak_rss_mb": probe.get("peak_rss_mb"),
            "size_bytes": model.size_bytes, "runs": int(sum(t.size for t in trials)), "repeats": len(trials),
            "warmup_runs": warmup_runs, "input": "images" if options.images else "random",
            "runtime": fmt.runtime_package, "runtime_version": package_version(fmt.runtime_package),
            "model_sha256": model.sha256(), "trial_p50_ms": [round(float(np.median(t)), 4) for t in trials]}
