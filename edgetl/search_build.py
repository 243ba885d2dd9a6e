"""`edgetl build` of a recipe with `search:`: every model of the grid is an ordinary build of a derived recipe in
its own folder under `RUN/search/` (so every stage is cached and resumable), driven by edgetl.search's logic:

1. the cheap filter: each (backbone, prune ratio) built untrained (`train.mode: none`, pruned without recovery),
   exported to every format × precision of the grid, and measured on the budget's device;
2. training, most promising first, of only the models that can still win (a pruned model starts from its trained
   unpruned parent, whose stages are copied in and reused);
3. the Pareto front, the choice, its deploy bundle in `RUN/bundle/`, and a summary.json that is the chosen model's
   own summary (artifact paths under `search/...`) plus a `search` section explaining every candidate.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

from edgetl.errors import AccuracyBudgetError, BudgetError, RecipeError
from edgetl.fsutil import read_json, write_json
from edgetl.progress import Reporter
from edgetl.recipe import Recipe
from edgetl.search import Budget, Candidate, ModelKey, make_grid
from edgetl.search import run as run_search


def folder_name(key: ModelKey) -> str:
    return f"{key[0]}_p{round(key[1] * 100):02d}"


def derived_recipe(recipe: Recipe, key: ModelKey, trained: bool) -> Recipe:
    """The recipe of one grid model: its backbone (with the search's per-backbone model overrides), its prune
    target, the grid's formats and precisions, latency at the budget's threads; untrained: no training at all."""
    cfg = recipe.search
    backbone, ratio = key
    data = recipe.model_dump(exclude={"search"})
    data["name"] = f"{recipe.name}-{folder_name(key)}" + ("" if trained else "-untrained")
    data["model"] = {**data["model"], "backbone": backbone, **cfg.models.get(backbone, {})}
    data["prune"] = ({**(data.get("prune") or {}), "target_macs": round(1 - ratio, 6)} if ratio > 0 else None)
    data["export"] = {**data["export"], "formats": list(cfg.formats), "precisions": list(cfg.precisions)}
    data["bench"] = {**data["bench"], "threads": [cfg.budget.threads], "batch": 1}
    if not trained:
        data["train"] = {**data["train"], "mode": "none"}
        data["distill"] = None
        data["quantize"] = {"mode": "ptq"}
        data["verify"] = {**data["verify"], "max_accuracy_drop_pp": 100.0, "accuracy_aware_retry": False}
        if data["prune"]:
            data["prune"] = {**data["prune"], "importance": "magnitude", "step_epochs": 0,
                             "recover": {**data["prune"].get("recover", {}), "epochs": 0}}
        data["bench"] = {**data["bench"], "min_time_s": 1.0, "min_runs": 30, "warmup": 10}
    return Recipe.model_validate({**data, "source": recipe.source})


class Measurer:
    """p90 latency (ms) and size of a sub-run's artifacts on the budget's device: the sub-run's own bench stage
    when the device is this machine, `edgetl bench --device` rows when it is an ssh:// device."""

    def __init__(self, budget: Budget, device=None):
        self.budget = budget
        self.device = device  # an edgetl.bench.remote.Device when budget.device is not `local`
        self.measured_on = {"device": "local", "machine": platform.machine()}  # the device's own answer once measured

    def measure(self, run_dir: Path, summary: dict) -> dict[tuple[str, str], dict]:
        artifacts = {(a["format"], a["precision"]): a for a in summary["artifacts"]}
        p90 = {}
        if self.budget.device == "local":
            for key, artifact in artifacts.items():
                latency = (artifact.get("latency_by_threads") or {}).get(str(self.budget.threads))
                p90[key] = latency["p90"] if latency else None
        else:
            from edgetl.bench.measure import find_models
            from edgetl.bench.remote import bench_on_devices

            models = find_models([run_dir / a["path"] for a in artifacts.values()])
            answer = bench_on_devices(models, [self.device], (self.budget.threads,), 1, 50, 5, False)[0]
            if answer["error"]:
                raise BudgetError(f"search.budget.device: {answer['error']}")
            by_path = {Path(row["model"]).resolve(): row["p90_ms"] for row in answer["rows"]}
            if answer["rows"]:
                self.measured_on = {"device": self.device.url, **answer["rows"][0]["device_info"]}
            for key, artifact in artifacts.items():
                p90[key] = by_path.get((run_dir / artifact["path"]).resolve())
        return {key: {"val_accuracy": artifact.get("val_accuracy"),
                      "val_accuracy_ci95": artifact.get("val_accuracy_ci95"), "latency_ms_p90": p90[key],
                      "size_bytes": artifact["size_bytes"]} for key, artifact in artifacts.items()}


def _reuse(source: Path, folder: Path, stages: tuple[str, ...]) -> None:
    """Copy finished stages into a new sub-run: their keys match, so the build reuses them instead of retraining."""
    from edgetl.pipeline import claim_run_dir

    claim_run_dir(folder)
    for stage in stages:
        if (source / stage / "stage.json").is_file() and not (folder / stage).exists():
            shutil.copytree(source / stage, folder / stage)


def _budget_device(recipe: Recipe):
    """The ssh:// device of search.budget (None for `local`), with its ssh_config and Python."""
    budget = recipe.search.budget
    if budget.device == "local":
        return None
    from edgetl.bench.remote import Device

    config = recipe.resolve_path(budget.ssh_config) if budget.ssh_config else None
    if config is not None and not config.is_file():
        raise RecipeError(f"{recipe.source}: search.budget.ssh_config: {config} is not a file.")
    return Device.parse(budget.device, budget.python, config)


def search_body(recipe: Recipe, run) -> dict:
    """The work of a search recipe's run directory (edgetl.pipeline.build's `body`)."""
    return build_search(recipe, run.root, run.reporter)


def build_search(recipe: Recipe, root: Path, reporter: Reporter) -> dict:
    """Run the search of `recipe` into `root`; returns the summary (the chosen model's, plus `search`)."""
    from edgetl.pipeline import build, stages_before

    cfg = recipe.search
    budget = Budget(cfg.budget.latency_ms_p90, cfg.budget.size_mb, cfg.budget.accuracy_min, cfg.budget.device,
                    cfg.budget.threads)
    candidates = make_grid(cfg.backbones, cfg.prune, cfg.formats, cfg.precisions)
    measurer = Measurer(budget, _budget_device(recipe))
    untrained: dict[ModelKey, dict] = {}
    trained_runs: dict[ModelKey, Path] = {}

    def measure_untrained(candidate: Candidate) -> tuple[float, int]:
        key = candidate.model_key
        if key not in untrained:
            folder = root / "search" / "untrained" / folder_name(key)
            reporter.info(f"search: measuring the untrained {key[0]} pruned {key[1]:.0%} on {budget.device}")
            summary = build(derived_recipe(recipe, key, trained=False), out=folder, reporter=reporter)
            untrained[key] = measurer.measure(folder, summary)
        measured = untrained[key][(candidate.format, candidate.precision)]
        return measured["latency_ms_p90"], measured["size_bytes"]

    def train(key: ModelKey) -> tuple[float, dict]:
        folder = root / "search" / folder_name(key)
        parent = trained_runs.get((key[0], 0.0))
        if key[1] > 0 and parent is not None:
            _reuse(parent, folder, stages_before("prune"))  # the pruned model starts from its parent's fine-tune
        if trained_runs:
            _reuse(next(iter(trained_runs.values())), folder, ("teacher",))  # one teacher for the whole grid
        reporter.info(f"search: training {key[0]} pruned {key[1]:.0%} into {folder}")
        try:
            summary = build(derived_recipe(recipe, key, trained=True), out=folder, reporter=reporter)
        except AccuracyBudgetError as exc:
            summary = read_json(folder / "summary.json")
            trained_runs[key] = folder
            reference = summary["reference_model"]["val_accuracy"]
            return reference, {(a["format"], a["precision"]): {"rejected": f"over the accuracy budget: {exc}"}
                               for a in summary["artifacts"]}
        trained_runs[key] = folder
        return summary["reference_model"]["val_accuracy"], measurer.measure(folder, summary)

    prior = {}
    from edgetl.backbones import get_backbone

    for backbone in cfg.backbones:
        prior[backbone] = float(get_backbone(backbone).default_weights().meta.get("imagenet_top1") or 0.0)
    state = run_search(candidates, budget, prior, measure_untrained, train, slack_pp=cfg.slack_pp,
                       min_gain_pp=cfg.min_gain_pp, log=reporter.info)
    chosen = next((c for c in candidates if c.status == "chosen"), None)
    search = {"budget": cfg.budget.model_dump(), "min_gain_pp": cfg.min_gain_pp, "chosen": chosen.name if chosen else None,
              "candidates": [c.as_dict() for c in candidates],
              "trained_count": sum(c.trained for c in candidates), "models_trained": len(state.trained),
              "grid_size": len(candidates), "models_in_grid": len({c.model_key for c in candidates}),
              "prior": prior, "measured_on": measurer.measured_on}
    if chosen is None:
        write_json(root / "search.json", search)
        reasons = "; ".join(f"{c.name}: {c.reason}" for c in candidates[:6])
        raise BudgetError(f"no candidate of search in {recipe.source or 'the recipe'} meets search.budget "
                          f"({search['budget']}): {reasons}{' ...' if len(candidates) > 6 else ''}. Every reason is in "
                          f"{root / 'search.json'}.")
    sub = trained_runs[chosen.model_key]
    prefix = sub.relative_to(root).as_posix()
    summary = read_json(sub / "summary.json")
    for artifact in summary["artifacts"]:
        artifact["path"] = f"{prefix}/{artifact['path']}"
        artifact["files"] = [f"{prefix}/{f}" for f in artifact.get("files", [])]
        if artifact.get("files_sha256"):
            artifact["files_sha256"] = {f"{prefix}/{f}": digest for f, digest in artifact["files_sha256"].items()}
        if artifact.get("model_json"):
            artifact["model_json"] = f"{prefix}/{artifact['model_json']}"
        artifact["chosen"] = (artifact["format"], artifact["precision"]) == (chosen.format, chosen.precision)
    summary["search"] = search | {"chosen_run": prefix,
                                  "chosen_artifact": f"{chosen.format}_{chosen.precision}"}
    summary["chosen"] = f"{chosen.format}_{chosen.precision}"  # the chosen run's artifact, as in `artifacts`
    summary["choice"] = {"chosen": summary["chosen"], "most_accurate": summary["chosen"],
                         "rule": "search: " + chosen.reason + f" (search.budget on {budget.device}); every candidate "
                         "and why it lost is in `search.candidates`",
                         "budget": {k: v for k, v in cfg.budget.model_dump().items()
                                    if k in ("latency_ms_p90", "size_mb", "accuracy_min") and v is not None},
                         "artifacts": []}
    # the search measured on its budget's device: that is the target (the chosen sub-run's own is this machine)
    summary["target"] = {"name": budget.device, "device": budget.device, "declared": True, "threads": budget.threads,
                         "device_info": {k: v for k, v in measurer.measured_on.items() if k != "device"},
                         "formats": list(cfg.formats), "excluded": {}}
    summary["recipe"], summary["recipe_name"] = str(recipe.source or summary["recipe"]), recipe.name
    from edgetl.bundle import make_bundle

    bundle = make_bundle(sub, chosen.format, chosen.precision, root / "bundle")
    summary["search"]["bundle"] = bundle.folder.relative_to(root).as_posix()
    reporter.info(f"search: chosen {chosen.name} ({chosen.val_accuracy:.2f} %, p90 {chosen.latency_ms_p90:.2f} ms "
                  f"on {budget.device}); trained {len(state.trained)} of {search['models_in_grid']} models "
                  f"({search['trained_count']} of {len(candidates)} candidates); bundle in {bundle.folder}")
    return summary
