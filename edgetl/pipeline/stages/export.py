"""export: the reference torch model to every format × precision of the recipe (int8 from the QAT model where the
format reads a QDQ ONNX model, else post-training), each file with its model.json. What each format needs is in
its row of edgetl.formats and its export module: options(recipe), export(), retry_steps(), from_qdq()."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import numpy as np

from edgetl import __version__
from edgetl.bench.environment import usable_cores
from edgetl.errors import StorageError
from edgetl.export import ExportRequest, ExportResult
from edgetl.fsutil import sha256_file, sha256_json, write_json
from edgetl.pipeline.context import BuildContext, Stage
from edgetl.pipeline.models import load_trained
from edgetl.pipeline.summary import package_versions
from edgetl.recipe import section_dict


def _metadata(ctx: BuildContext) -> dict[str, str]:
    from edgetl.artifact import embedded_metadata

    return embedded_metadata(ctx.index.classes, ctx.prep.to_json(), ctx.records[ctx.model_stage]["backbone"],
                             sha256_json(ctx.recipe.model_dump(mode="json")))


def _validated(ctx: BuildContext) -> bool:
    """Whether int8 is made against the val split and the torch model's accuracy on it."""
    return ctx.recipe.verify.accuracy_aware_retry or ctx.recipe.export.openvino.accuracy_control


def key(ctx: BuildContext) -> dict:
    recipe = ctx.recipe
    inputs = {"export": section_dict(recipe.export), "model": ctx.file_hash(ctx.model_stage, "model"),
              "calibration": ctx.file_hash("inputs", "calibration"),
              "metadata": {k: v for k, v in _metadata(ctx).items() if k != "recipe_sha256"}}
    if "qat" in ctx.records:
        inputs |= {"quantize": section_dict(recipe.quantize), "qat": ctx.file_hash("qat", "onnx")}
    if _validated(ctx):
        inputs |= {"budget": [recipe.verify.max_accuracy_drop_pp, recipe.verify.accuracy_aware_retry],
                   "val": ctx.file_hash("inputs", "val"), "torch_logits": ctx.file_hash(ctx.model_stage, "val_logits")}
    return inputs


RESUME = "resume"  # in the stage's partial folder: the files a killed export had finished, kept for the next run


class _Exports:
    """The files of one export stage: requests, int8 within the budget, and what was produced.

    Each file made is also hard-linked into `resume/<name>/` with a `done.json` that holds the stage key, so a build
    killed mid-export (an export is tens of seconds a file) makes again only the files it had not finished."""

    def __init__(self, ctx: BuildContext, folder: Path):
        self.ctx, self.folder = ctx, folder
        self.metadata = _metadata(ctx)
        # what a kept file depends on beyond the stage key: the recipe hash embedded in it and the toolchain
        self.key = sha256_json({"stage": key(ctx), "metadata": self.metadata,
                                "versions": {"edgetl": __version__, **package_versions()}})
        self.model = load_trained(ctx.path(ctx.model_stage, "model"))
        self.example = np.asarray(ctx.load("inputs", "val", mmap=True)[:2])
        self.calibration = np.asarray(ctx.load("inputs", "calibration", mmap=True))
        self.validation = (ctx.load("inputs", "val", mmap=True), ctx.load("inputs", "val_labels")) \
            if _validated(ctx) else None
        self.fp32: dict[str, ExportResult] = {}  # format -> its fp32 file (the source of its fp16 and int8)
        self.produced: list[tuple[str, str, str, ExportResult]] = []  # (name, format, precision, result)
        self.reused: set[str] = set()  # the names `made` took from resume/ instead of making them

    def made(self, name: str, make) -> ExportResult:
        """`make()`'s result, or the same file kept in resume/ by a killed run of this stage with the same key."""
        from edgetl.fsutil import changed_files
        from edgetl.pipeline.rundir import read_marker

        kept, target = self.folder / RESUME / name, self.folder / name
        done = read_marker(kept / "done.json")
        if done and done.get("key") == self.key and isinstance(done.get("files"), dict) \
                and done.get("file") in done["files"] and isinstance(done.get("details"), dict) \
                and not changed_files(kept, done["files"]):
            shutil.rmtree(target, ignore_errors=True)
            _link_tree(kept, target, skip="done.json")
            self.ctx.reporter.info(f"  {name}: finished before the build was stopped, reused")
            self.reused.add(name)
            return ExportResult(target / done["file"], done["details"])
        shutil.rmtree(kept, ignore_errors=True)
        result = make()
        try:
            _link_tree(target, kept)
            files = {p.relative_to(kept).as_posix(): sha256_file(p) for p in sorted(kept.rglob("*")) if p.is_file()}
            write_json(kept / "done.json", {"key": self.key, "file": result.path.relative_to(target).as_posix(),
                                            "details": result.details, "files": files})
        except (OSError, StorageError, TypeError, ValueError):  # no room, or details JSON cannot hold: only not resumable
            shutil.rmtree(kept, ignore_errors=True)
        return result

    def request(self, fmt: str, name: str, precision: str) -> ExportRequest:
        from edgetl.formats import FORMATS

        module = importlib.import_module(FORMATS[fmt].exporter)
        options = module.options(self.ctx.recipe) | ({"validation": self.validation} if self.validation else {})
        source = FORMATS[fmt].converts_from
        return ExportRequest(self.folder / name, precision, self.example, {**self.metadata, "precision": precision},
                             calibration=self.calibration, options=options,
                             fp32_file=self.fp32[fmt].path if fmt in self.fp32 else None,
                             onnx_file=self.fp32[source].path if source else None)

    def int8_ptq(self, exporter, request: ExportRequest) -> ExportResult:
        """Post-training int8, remade with the format's retry steps while over the budget (verify.accuracy_aware_retry)."""
        ctx, verify = self.ctx, self.ctx.recipe.verify
        if not verify.accuracy_aware_retry:
            return exporter.export(self.model, request, ctx.reporter)
        from edgetl.evaluate import runner_logits, top1_accuracy
        from edgetl.export.accuracy import quantize_within_budget
        from edgetl.pipeline.stages.inputs import more_calibration
        from edgetl.runtime import load_runner

        val, labels = self.validation

        def accuracy(path: Path) -> float:
            return top1_accuracy(runner_logits(load_runner(path, threads=usable_cores()), val), labels)

        reference = top1_accuracy(ctx.load(ctx.model_stage, "val_logits"), labels)
        return quantize_within_budget(exporter, self.model, request, accuracy, reference, verify.max_accuracy_drop_pp,
                                      lambda: more_calibration(ctx, len(self.calibration)), ctx.reporter)

    def int8(self, fmt: str, exporter) -> None:
        """The int8 artifacts of `fmt`: from the QAT model where the format reads QDQ ONNX (plus PTQ when
        quantize.keep_ptq), else post-training."""
        ctx = self.ctx
        from_qat = "qat" in ctx.records and hasattr(exporter, "from_qdq")
        if from_qat:
            result = self.made(f"{fmt}_int8", lambda: exporter.from_qdq(ctx.path("qat", "onnx"),
                                                                          self.request(fmt, f"{fmt}_int8", "int8")))
            result = ExportResult(result.path, {**result.details, **ctx.records["qat"]["export"]})
            self.produced.append((f"{fmt}_int8", fmt, "int8", result))
        if not from_qat or ctx.recipe.quantize.keep_ptq:
            name = f"{fmt}_int8_ptq" if from_qat else f"{fmt}_int8"
            result = self.made(name, lambda: self.int8_ptq(exporter, self.request(fmt, name, "int8")))
            self.produced.append((name, fmt, "int8", result))

    def format(self, fmt: str) -> None:
        """`fmt`'s fp32 file (kept only when asked for: it may be only another format's source), then its fp16
        and int8 files."""
        from edgetl.formats import FORMATS

        recipe, reporter = self.ctx.recipe, self.ctx.reporter
        exporter = importlib.import_module(FORMATS[fmt].exporter)
        fp32 = self.fp32[fmt] = self.made(f"{fmt}_fp32", lambda: exporter.export(
            self.model, self.request(fmt, f"{fmt}_fp32", "fp32"), reporter))
        how = ", ".join(f"{k} {v}" for k, v in fp32.details.items() if k in ("exporter", "converter", "layout"))
        if f"{fmt}_fp32" not in self.reused:  # a reused file said so in `made`
            reporter.info(f"  {fmt} fp32 written ({how})")
        if fmt not in recipe.export.formats:
            return
        wanted = recipe.export.precisions
        if "fp32" in wanted:
            self.produced.append((f"{fmt}_fp32", fmt, "fp32", fp32))
        if "fp16" in wanted:
            self.produced.append((f"{fmt}_fp16", fmt, "fp16", self.made(f"{fmt}_fp16", lambda: exporter.export(
                self.model, self.request(fmt, f"{fmt}_fp16", "fp16"), reporter))))
        if "int8" in wanted:
            self.int8(fmt, exporter)

    def record(self, produced: tuple[str, str, str, ExportResult]) -> dict:
        """The stage record's entry of one produced artifact, its model.json written beside it."""
        from edgetl.artifact import write_model_json
        from edgetl.formats import FORMATS

        name, fmt, precision, result = produced
        run = self.ctx.run
        files = [*FORMATS[fmt].files(result.path), write_model_json(result, name, fmt, precision, self.metadata)]
        return {"name": name, "format": fmt, "precision": precision, "path": run.rel(result.path),
                "size_bytes": sum(f.stat().st_size for f in files[:-1]), "sha256": sha256_file(result.path),
                **({"quantization": result.details["quantization"]} if precision == "int8" else {}),
                "files": run.files_record(*files), "export": result.details}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


def _link_tree(src: Path, dst: Path, skip: str = "") -> None:
    """`src`'s files under `dst`, hard-linked (copied where links cannot be made)."""
    shutil.copytree(src, dst, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(skip) if skip else None,
                    dirs_exist_ok=True)


def _order(formats: list[str]) -> list[str]:
    """The formats to export, each after the format it converts from (which is exported even when not asked for)."""
    from edgetl.formats import FORMATS

    ordered: list[str] = []

    def add(fmt: str) -> None:
        source = FORMATS[fmt].converts_from
        if source and source not in ordered:
            add(source)
        if fmt not in ordered:
            ordered.append(fmt)

    for fmt in formats:
        add(fmt)
    return ordered


def work(ctx: BuildContext, folder: Path) -> dict:
    exports = _Exports(ctx, folder)
    formats = _order(list(ctx.recipe.export.formats))
    for fmt in formats:
        exports.format(fmt)
    for fmt in formats:  # fp32 files made only as the source of other files
        if "fp32" not in ctx.recipe.export.precisions or fmt not in ctx.recipe.export.formats:
            shutil.rmtree(folder / f"{fmt}_fp32")
    shutil.rmtree(folder / RESUME, ignore_errors=True)
    records = [exports.record(produced) for produced in exports.produced]
    return {"artifacts": records, "files": {k: v for r in records for k, v in r["files"].items()}}


def summarize(ctx: BuildContext, summary: dict) -> None:
    """Each artifact's entry (verify and bench add their fields to it)."""
    entries = []
    for artifact in ctx.records["export"]["artifacts"]:
        entry = {key: artifact[key] for key in ("name", "format", "precision", "path", "size_bytes", "sha256")}
        if "quantization" in artifact:
            entry["quantization"] = artifact["quantization"]
        entry["files"] = list(artifact["files"])  # the model file, its sidecars, and model.json
        entry["files_sha256"] = dict(artifact["files"])  # what a bundle checks each file against
        entry["model_json"] = entry["files"][-1]
        entry["export"] = artifact["export"]
        entries.append(entry)
    summary["artifacts"] = entries


STAGE = Stage("export", work, key, summarize=summarize, keep=(RESUME,))
