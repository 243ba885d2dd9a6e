"""The build: a list of cached stages writing into one run directory, ending in summary.json + report.md."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import __version__
from edgetl.errors import AccuracyBudgetError, ParityError, RecipeError, StorageError
from edgetl.fsutil import atomic_path, read_json, sha256_file, sha256_json, write_json, write_text
from edgetl.preprocess import Preprocessing
from edgetl.progress import Reporter
from edgetl.recipe import Recipe, load_recipe, section_dict

STAGES = ("data", "inputs", "train", "export", "verify", "bench")
# Files a stage keeps across a changed key because they carry their own key (resumable training state).
_KEEP_ON_RERUN = {"checkpoint.pt"}


@dataclass
class RunDir:
    """runs/<name>/: one folder per stage, each with a stage.json marker written last."""

    root: Path
    reporter: Reporter
    timings: dict[str, dict] = field(default_factory=dict)

    def rel(self, path: Path) -> str:
        """A path inside the run directory, relative to it (as stored in records and the summary)."""
        return os.path.relpath(path, self.root)

    def stage(self, name: str, inputs: dict[str, Any], work: Callable[[Path], dict]) -> dict:
        """Run `work(folder)` unless a completed run with the same inputs is recorded; return its record."""
        key = sha256_json({"stage": name, "inputs": inputs, "edgetl": __version__})
        folder = self.root / name
        marker = folder / "stage.json"
        number = STAGES.index(name) + 1
        if marker.is_file():
            try:
                saved = read_json(marker)
            except (OSError, ValueError):
                saved = {}
            if saved.get("key") == key and self._outputs_intact(saved.get("record", {})):
                self.reporter.info(f"[{number}/{len(STAGES)}] {name}: unchanged, reused")
                self.timings[name] = {"cached": True, "seconds": saved.get("seconds", 0.0)}
                return saved["record"]
            marker.unlink()
        self.reporter.info(f"[{number}/{len(STAGES)}] {name}")
        if folder.is_dir():
            for child in folder.iterdir():
                if child.name not in _KEEP_ON_RERUN:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        record = work(folder)
        seconds = round(time.perf_counter() - started, 2)
        write_json(marker, {"key": key, "stage": name, "seconds": seconds, "inputs": inputs, "record": record})
        self.timings[name] = {"cached": False, "seconds": seconds}
        return record

    def _outputs_intact(self, record: dict) -> bool:
        files = record.get("files", {})
        return all((self.root / rel).is_file() and sha256_file(self.root / rel) == digest
                   for rel, digest in files.items())

    def files_record(self, *paths: Path) -> dict[str, str]:
        """{relative path: sha256} for outputs, so reuse is checked against their content."""
        return {self.rel(p): sha256_file(p) for p in paths}


def resolve_data_root(recipe: Recipe) -> Path:
    from edgetl.data import default_cache_dir, resolve_dataset

    data = recipe.data
    path = str(recipe.resolve_path(data.path)) if data.path else None
    return resolve_dataset(data.dataset, path, data.url, data.sha256, default_cache_dir(),
                           recipe_file=recipe.source or "recipe")


def _data_stage(run: RunDir, recipe: Recipe):
    from edgetl.data import DatasetIndex, fingerprint_tree

    root = resolve_data_root(recipe)
    inputs = {"data": section_dict(recipe.data) | {"workers": None}, "root": str(root),
              "fingerprint": fingerprint_tree(root)}

    def work(folder: Path) -> dict:
        with run.reporter.task("checking images", None) as update:
            index = scan_recipe_dataset(recipe, root, progress=lambda done, total: update(1))
        index_path = folder / "index.json"
        write_json(index_path, index.to_json())
        if index.bad_images:
            run.reporter.info(f"  skipped {len(index.bad_images)} unreadable images (data.skip_bad_images)")
        return {"index": run.rel(index_path), "files": run.files_record(index_path)}

    record = run.stage("data", inputs, work)
    index = DatasetIndex.from_json(read_json(run.root / record["index"]))
    run.reporter.info(f"  {len(index.classes)} classes, {len(index.train)} train / {len(index.val)} val images "
                      f"(val from {index.val_source}) in {root}")
    return index, record


def scan_recipe_dataset(recipe: Recipe, root: Path, progress=None):
    """Scan and check every image of the recipe's dataset at `root` (see edgetl.data.scan_dataset)."""
    from edgetl.data import scan_dataset

    data = recipe.data
    return scan_dataset(root, train_dir=data.train_dir, val_dir=data.val_dir, val_fraction=data.val_fraction,
                        seed=data.seed, skip_bad_images=data.skip_bad_images, progress=progress)


def _preprocessing(recipe: Recipe) -> Preprocessing:
    from edgetl.backbones import get_backbone

    default = get_backbone(recipe.model.backbone).default_weights().preprocessing
    override = {k: v for k, v in recipe.model.preprocessing.model_dump().items() if v is not None}
    prep = Preprocessing.from_json({**default.to_json(), **override})
    if prep.resize < prep.crop:
        raise RecipeError(f"{recipe.source or 'recipe'}: model.preprocessing.resize ({prep.resize}) must be at least "
                          f"model.preprocessing.crop ({prep.crop}): images are resized, then center-cropped.")
    return prep


def _inputs_stage(run: RunDir, recipe: Recipe, index, data_record: dict, prep: Preprocessing) -> dict:
    from edgetl.preprocess import preprocess_files

    count = min(recipe.export.calibration_images, len(index.train))
    inputs = {"data": data_record["files"], "preprocessing": prep.to_json(), "calibration_images": count,
              "seed": recipe.data.seed}

    def work(folder: Path) -> dict:
        rng = np.random.default_rng(recipe.data.seed)
        calibration = [index.train[i].path for i in sorted(rng.choice(len(index.train), count, replace=False))]
        outputs = []
        for name, paths in (("val", [s.path for s in index.val]), ("calibration", calibration)):
            target = folder / f"{name}.npy"
            with atomic_path(target) as tmp, run.reporter.task(f"preprocessing {name} images", len(paths)) as update:
                preprocess_files(paths, prep, out=tmp, progress=lambda done, total: update(1))
            outputs.append(target)
        labels = folder / "val_labels.npy"
        with atomic_path(labels) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray([s.label for s in index.val], dtype=np.int64))
        outputs.append(labels)
        return {"val": run.rel(outputs[0]), "calibration": run.rel(outputs[1]), "val_labels": run.rel(labels),
                "files": run.files_record(*outputs)}

    return run.stage("inputs", inputs, work)


def _weights_identity(recipe: Recipe) -> str:
    weights = _recipe_weights(recipe)
    is_file = weights not in ("imagenet", "none") and Path(weights).is_file()
    return sha256_file(weights) if is_file else weights


def _recipe_weights(recipe: Recipe) -> str:
    """`imagenet`, `none`, or the weights path resolved against the recipe's folder."""
    weights = recipe.model.weights
    return weights if weights in ("imagenet", "none") else str(recipe.resolve_path(weights))


def create_recipe_model(recipe: Recipe, num_classes: int):
    """The recipe's backbone with its starting weights; weight errors name the recipe file."""
    from edgetl.backbones import create_model
    from edgetl.errors import WeightsError

    try:
        return create_model(recipe.model.backbone, num_classes, _recipe_weights(recipe), recipe.model.dropout)
    except WeightsError as exc:
        raise WeightsError(f"{recipe.source or 'recipe'}: {exc}") from None


def _load_trained(model_path: Path):
    import torch

    from edgetl.backbones import create_model

    saved = torch.load(model_path, map_location="cpu", weights_only=True)
    created = create_model(saved["backbone"], int(saved["num_classes"]), weights="none", dropout=float(saved["dropout"]))
    created.model.load_state_dict(saved["state_dict"])
    return created.model.eval()


def _train_stage(run: RunDir, recipe: Recipe, index, data_record: dict, inputs_record: dict,
                 prep: Preprocessing) -> dict:
    inputs = {"model": section_dict(recipe.model), "train": section_dict(recipe.train), "data": data_record["files"],
              "val": inputs_record["files"][inputs_record["val"]], "weights": _weights_identity(recipe),
              "workers": recipe.data.workers}

    def work(folder: Path) -> dict:
        import torch

        from edgetl.train import Checkpointer, fine_tune, predict, seed_everything

        seed_everything(recipe.train.seed)  # the new head's initialisation is part of the run
        created = create_recipe_model(recipe, len(index.classes))
        created.preprocessing = prep
        run.reporter.info(f"  {recipe.model.backbone}, weights {recipe.model.weights}"
                          f"{f' ({created.weights_file})' if created.weights_file else ''}, mode {recipe.train.mode}")
        val_inputs = np.load(run.root / inputs_record["val"], mmap_mode="r")
        val_labels = np.load(run.root / inputs_record["val_labels"])
        checkpointer = Checkpointer(folder / "checkpoint.pt", sha256_json(inputs))
        result = fine_tune(created, index.train, np.asarray(val_inputs), val_labels, recipe.train,
                           recipe.data.workers, checkpointer, run.reporter)
        model_path, logits_path, history_path = folder / "model.pt", folder / "val_logits.npy", folder / "history.json"
        with atomic_path(model_path) as tmp:
            torch.save({"backbone": recipe.model.backbone, "num_classes": len(index.classes),
                        "dropout": recipe.model.dropout, "classes": index.classes,
                        "state_dict": result.state_dict}, tmp)
        logits = predict(_load_trained(model_path), np.asarray(val_inputs))
        with atomic_path(logits_path) as tmp, open(tmp, "wb") as f:
            np.save(f, logits.astype(np.float32))
        write_json(history_path, result.history)
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        params = sum(p.numel() for p in created.model.parameters())
        return {"model": run.rel(model_path), "val_logits": run.rel(logits_path), "history": run.rel(history_path),
                "val_accuracy": round(result.val_accuracy, 4), "epochs_run": result.epochs_run,
                "final_epoch_val_accuracy": round(result.history[-1]["val_accuracy"], 4) if result.history else None,
                "best_epoch": result.best_epoch, "resumed_from_epoch": result.resumed_from_epoch,
                "weights_file": created.weights_file, "weights_meta": created.weights_meta, "params": params,
                "files": run.files_record(model_path, logits_path, history_path)}

    return run.stage("train", inputs, work)


def _export_stage(run: RunDir, recipe: Recipe, index, inputs_record: dict, train_record: dict,
                  prep: Preprocessing) -> dict:
    metadata = {"edgetl_version": __version__, "labels": json.dumps(index.classes),
                "preprocessing": json.dumps(prep.to_json()), "layout": "NCHW",
                "input_shape": json.dumps([None, 3, prep.crop, prep.crop]), "backbone": recipe.model.backbone,
                "recipe_sha256": sha256_json(recipe.model_dump(mode="json"))}
    inputs = {"export": section_dict(recipe.export), "model": train_record["files"][train_record["model"]],
              "calibration": inputs_record["files"][inputs_record["calibration"]],
              "metadata": {k: v for k, v in metadata.items() if k != "recipe_sha256"}}

    def work(folder: Path) -> dict:
        from edgetl.export import ExportRequest
        from edgetl.export.onnx import export_fp32, quantize_int8

        model = _load_trained(run.root / train_record["model"])
        example = np.load(run.root / inputs_record["val"], mmap_mode="r")[:2]
        calibration = np.load(run.root / inputs_record["calibration"], mmap_mode="r")
        artifacts = []
        fp32 = export_fp32(model, ExportRequest(folder, "fp32", np.asarray(example), metadata),
                           exporter=recipe.export.exporter, opset=recipe.export.opset)
        run.reporter.info(f"  onnx fp32 written with the {fp32.details['exporter']} exporter")
        if "fp32" in recipe.export.precisions:
            artifacts.append(("onnx", "fp32", fp32))
        if "int8" in recipe.export.precisions:
            int8 = quantize_int8(fp32.path, ExportRequest(folder, "int8", np.asarray(example), metadata,
                                                          calibration=np.asarray(calibration)),
                                 recipe.export.int8_format, recipe.export.per_channel,
                                 recipe.export.int8_keep_fp32, run.reporter)
            artifacts.append(("onnx", "int8", int8))
        if "fp32" not in recipe.export.precisions:
            fp32.path.unlink()
        records = [{"name": f"{fmt}_{precision}", "format": fmt, "precision": precision,
                    "path": run.rel(result.path), "size_bytes": result.path.stat().st_size,
                    "sha256": sha256_file(result.path), **({"quantization": "ptq"} if precision == "int8" else {}),
                    "export": result.details} for fmt, precision, result in artifacts]
        return {"artifacts": records, "files": {r["path"]: r["sha256"] for r in records}}

    return run.stage("export", inputs, work)


def _verify_stage(run: RunDir, recipe: Recipe, index, inputs_record: dict, train_record: dict,
                  export_record: dict) -> dict:
    inputs = {"verify": section_dict(recipe.verify), "artifacts": export_record["files"],
              "val": inputs_record["files"][inputs_record["val"]],
              "torch_logits": train_record["files"][train_record["val_logits"]]}

    def work(folder: Path) -> dict:
        from edgetl.evaluate import confusion_matrix, runner_logits, top1_accuracy
        from edgetl.runtime import load_runner

        val = np.load(run.root / inputs_record["val"], mmap_mode="r")
        labels = np.load(run.root / inputs_record["val_labels"])
        torch_logits = np.load(run.root / train_record["val_logits"])
        torch_accuracy = top1_accuracy(torch_logits, labels)
        results = {}
        for artifact in export_record["artifacts"]:
            runner = load_runner(run.root / artifact["path"], threads=os.cpu_count() or 1)
            with run.reporter.task(f"evaluating {artifact['name']} on {len(val)} val images", len(val)) as update:
                logits = runner_logits(runner, val, update=update)
            parity_n = min(recipe.verify.parity_images, len(val))
            diff = float(np.abs(logits[:parity_n] - torch_logits[:parity_n]).max())
            acc = top1_accuracy(logits, labels)
            results[artifact["name"]] = {
                "val_accuracy": round(acc, 4), "accuracy_drop_pp": round(torch_accuracy - acc, 4),
                "max_abs_logit_diff": diff, "parity_images": parity_n,
                "prediction_agreement": round(float((logits.argmax(1) == torch_logits.argmax(1)).mean() * 100), 4),
                "confusion_matrix": confusion_matrix(logits, labels, len(index.classes))}
            run.reporter.info(f"  {artifact['name']}: val acc {acc:.2f}% (torch {torch_accuracy:.2f}%), "
                              f"max |logit diff| {diff:.2e}")
            if artifact["precision"] == "fp32" and diff > recipe.verify.parity_atol:
                raise ParityError(f"{run.root / artifact['path']} disagrees with the torch model: max |logit diff| "
                                  f"{diff:.3g} on {parity_n} val images exceeds verify.parity_atol "
                                  f"({recipe.verify.parity_atol:g}). The export is wrong; try "
                                  "`export.exporter: legacy`.")
        return {"torch_val_accuracy": round(torch_accuracy, 4), "artifacts": results, "files": {}}

    return run.stage("verify", inputs, work)


def _bench_stage(run: RunDir, recipe: Recipe, inputs_record: dict, export_record: dict) -> dict:
    inputs = {"bench": section_dict(recipe.bench), "artifacts": export_record["files"],
              "val": inputs_record["files"][inputs_record["val"]]}

    def work(folder: Path) -> dict:
        from edgetl.bench.harness import LatencyPlan, measure_latency
        from edgetl.runtime import load_runner

        cfg = recipe.bench
        plan = LatencyPlan(warmup=cfg.warmup, min_runs=cfg.min_runs, min_time_s=cfg.min_time_s, max_runs=cfg.max_runs)
        val = np.load(run.root / inputs_record["val"], mmap_mode="r")
        batch = np.ascontiguousarray(np.resize(np.asarray(val[:cfg.batch]), (cfg.batch, *val.shape[1:])))
        results: dict[str, dict[str, dict]] = {}
        for artifact in export_record["artifacts"]:
            for threads in cfg.threads:
                runner = load_runner(run.root / artifact["path"], threads=threads)
                with run.reporter.task(f"benchmarking {artifact['name']} ({threads} thread"
                                       f"{'s' if threads > 1 else ''}, batch {cfg.batch})", None) as update:
                    stats = measure_latency(runner, batch, plan, update)
                results.setdefault(artifact["name"], {})[str(threads)] = stats
                run.reporter.info(f"  {artifact['name']} @ {threads} thread(s): p50 {stats['p50']:.2f} ms, "
                                  f"p90 {stats['p90']:.2f} ms ({stats['runs']} runs)")
        return {"batch": cfg.batch, "latency_ms": results, "files": {}}

    return run.stage("bench", inputs, work)


def _environment() -> dict:
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
            "cpu": cpu, "cores": os.cpu_count(), "torch": version("torch"), "torchvision": version("torchvision"),
            "onnx": version("onnx"), "onnxruntime": version("onnxruntime")}


def _summary(recipe: Recipe, index, prep: Preprocessing, train_record: dict, export_record: dict,
             verify_record: dict, bench_record: dict | None, run: RunDir, status: str) -> dict:
    first_threads = str(recipe.bench.threads[0])
    artifacts = []
    for artifact in export_record["artifacts"]:
        verified = verify_record["artifacts"][artifact["name"]]
        latency = (bench_record or {}).get("latency_ms", {}).get(artifact["name"], {})
        entry = {key: artifact[key] for key in ("name", "format", "precision", "path", "size_bytes", "sha256")}
        entry.update({key: verified[key] for key in ("val_accuracy", "accuracy_drop_pp", "max_abs_logit_diff",
                                                     "prediction_agreement")})
        entry["latency_ms"] = dict(latency[first_threads]) if latency else None
        entry["threads"] = int(first_threads)
        entry["batch"] = recipe.bench.batch
        entry["latency_by_threads"] = latency
        if "quantization" in artifact:
            entry["quantization"] = artifact["quantization"]
        entry["export"] = artifact["export"]
        entry["confusion_matrix"] = verified["confusion_matrix"]
        artifacts.append(entry)
    return {
        "edgetl_version": __version__,
        "status": status,
        "recipe": recipe.source or "<recipe>",
        "recipe_name": recipe.name,
        "recipe_sha256": sha256_json(recipe.model_dump(mode="json")),
        "classes": index.classes,
        "data": {"root": index.root, "train_images": len(index.train), "val_images": len(index.val),
                 "val_source": index.val_source, "class_counts": index.class_counts(),
                 "bad_images": index.bad_images, "converted_to_rgb": index.converted,
                 "ignored_files": len(index.ignored_files)},
        "model": {"backbone": recipe.model.backbone, "weights": recipe.model.weights,
                  "weights_file": train_record["weights_file"], "mode": recipe.train.mode,
                  "val_accuracy": train_record["val_accuracy"], "epochs_run": train_record["epochs_run"],
                  "final_epoch_val_accuracy": train_record["final_epoch_val_accuracy"],
                  "best_epoch": train_record["best_epoch"], "params": train_record["params"],
                  "preprocessing": prep.to_json(), "path": train_record["model"]},
        "budget": {"max_accuracy_drop_pp": recipe.verify.max_accuracy_drop_pp},
        "artifacts": artifacts,
        "stages": run.timings,
        "environment": _environment(),
    }


def _report(summary: dict) -> str:
    model = summary["model"]
    lines = [f"# edgetl run `{summary['recipe_name']}`", "",
             f"Status: **{summary['status']}** · edgetl {summary['edgetl_version']} · recipe `{summary['recipe']}`", "",
             f"Backbone **{model['backbone']}** (weights `{model['weights']}`, mode `{model['mode']}`): val accuracy "
             f"**{model['val_accuracy']:.2f} %** after {model['epochs_run']} epochs (best epoch "
             f"{model['best_epoch']}).", "",
             f"Data: {summary['data']['train_images']} train / {summary['data']['val_images']} val images, classes "
             f"{', '.join(summary['classes'])}; {len(summary['data']['bad_images'])} bad images skipped.", "",
             "| artifact | size (MB) | val acc (%) | drop (pp) | max abs logit diff | threads | p50 (ms) | p90 (ms) "
             "| p99 (ms) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a in summary["artifacts"]:
        head = (f"| `{a['path']}` | {a['size_bytes'] / 1e6:.2f} | {a['val_accuracy']:.2f} | "
                f"{a['accuracy_drop_pp']:+.2f} | {a['max_abs_logit_diff']:.2e} |")
        by_threads = a["latency_by_threads"] or {"—": {}}
        for threads, lat in by_threads.items():
            cells = " | ".join(f"{lat[k]:.2f}" if k in lat else "—" for k in ("p50", "p90", "p99"))
            lines.append(f"{head} {threads} | {cells} |")
            head = "| | | | | |"
    env = summary["environment"]
    lines += ["", f"Measured on {env['cpu']} ({env['cores']} cores), onnxruntime {env['onnxruntime']}, "
              f"batch {summary['artifacts'][0]['batch'] if summary['artifacts'] else 1}.", "",
              "Stages: " + ", ".join(f"{k} " + ("reused" if v["cached"] else f"{v['seconds']:.1f}s")
                                     for k, v in summary["stages"].items()), ""]
    return "\n".join(lines)


def _write_outputs(run: RunDir, summary: dict) -> None:
    write_json(run.root / "summary.json", summary)
    write_text(run.root / "report.md", _report(summary))


def build(recipe: str | Path | Recipe, out: str | Path | None = None, reporter: Reporter | None = None) -> dict:
    """Run every stage of `recipe` into its run directory; return the summary."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    reporter = reporter or Reporter()
    root = Path(out) if out else Path("runs") / recipe.name
    first_created = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"Cannot create the run directory {root}: {exc.strerror}. Choose another with --out.") from None
    reporter.info(f"edgetl {__version__}: building '{recipe.name}' into {root}")
    try:
        return _run(recipe, RunDir(root.resolve(), reporter))
    except BaseException:
        # A build that failed before any stage completed leaves no empty run directory behind.
        if first_created is not None and not any(first_created.glob("**/stage.json")):
            shutil.rmtree(first_created, ignore_errors=True)
        raise


def _run(recipe: Recipe, run: RunDir) -> dict:
    reporter, root = run.reporter, run.root
    prep = _preprocessing(recipe)
    index, data_record = _data_stage(run, recipe)
    inputs_record = _inputs_stage(run, recipe, index, data_record, prep)
    train_record = _train_stage(run, recipe, index, data_record, inputs_record, prep)
    export_record = _export_stage(run, recipe, index, inputs_record, train_record, prep)
    verify_record = _verify_stage(run, recipe, index, inputs_record, train_record, export_record)
    over = {name: r for name, r in verify_record["artifacts"].items()
            if r["accuracy_drop_pp"] > recipe.verify.max_accuracy_drop_pp}
    if over:
        _write_outputs(run, _summary(recipe, index, prep, train_record, export_record, verify_record, None, run,
                                     "failed: accuracy budget"))
        table = "; ".join(f"{name}: {r['val_accuracy']:.2f}% (a drop of {r['accuracy_drop_pp']:.2f} pp)"
                          for name, r in over.items())
        raise AccuracyBudgetError(f"{table} — more than verify.max_accuracy_drop_pp = "
                                  f"{recipe.verify.max_accuracy_drop_pp} pp below the torch model "
                                  f"({verify_record['torch_val_accuracy']:.2f}%). Details in {root / 'summary.json'}. "
                                  "Raise the budget, calibrate with more images (export.calibration_images) or drop "
                                  "that precision.")
    bench_record = _bench_stage(run, recipe, inputs_record, export_record)
    summary = _summary(recipe, index, prep, train_record, export_record, verify_record, bench_record, run, "ok")
    _write_outputs(run, summary)
    reporter.info(f"done: {root / 'summary.json'}, {root / 'report.md'}")
    return summary
