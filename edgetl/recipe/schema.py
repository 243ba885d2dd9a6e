"""The whole recipe: its sections and the checks across them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, model_validator

from edgetl.recipe.messages import problems
from edgetl.recipe.sections import (
    BenchSection,
    DataSection,
    DistillSection,
    ExportSection,
    ModelSection,
    PruneSection,
    QuantizeSection,
    SearchSection,
    Section,
    TargetSection,
    TrainSection,
    VerifySection,
)

# Fields that hold a path, relative to the recipe file's folder when not absolute (model.weights: unless a keyword).
# `*` stands for every key of a mapping (search.models: {<backbone>: {weights: ...}}).
_PATH_FIELDS = ("data.path", "model.weights", "distill.teacher.checkpoint", "distill.teacher.weights",
                "search.budget.ssh_config", "search.models.*.weights", "target.ssh_config", "target.devices")


class Recipe(Section):
    """A whole build recipe."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Names the run folder runs/<name>/.")
    data: DataSection
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    distill: DistillSection | None = None
    prune: PruneSection | None = None
    quantize: QuantizeSection = QuantizeSection()
    export: ExportSection = ExportSection()
    verify: VerifySection = VerifySection()
    bench: BenchSection = BenchSection()
    search: SearchSection | None = None
    target: TargetSection | None = None

    # Where the recipe was read from; relative paths in it are resolved against its folder.
    source: str | None = Field(None, exclude=True)
    # The `--set KEY=VALUE` overrides applied on top of that file.
    overrides: tuple[str, ...] = Field((), exclude=True)

    @model_validator(mode="after")
    def _teacher_train_overrides(self) -> Recipe:
        if self.distill is not None:
            self.teacher_train()  # unknown or invalid keys fail here, with their path
        if self.quantize.mode == "qat" and "int8" not in self.export.precisions:
            raise ValueError("quantize.mode is `qat` but export.precisions has no `int8`")
        q = self.quantize  # (judged against the defaults: recipes derived from a dumped recipe carry every field)
        qat_only = [key for key in ("teacher", "temperature", "alpha")
                    if getattr(q, key) != QuantizeSection.model_fields[key].default]
        if qat_only and q.mode != "qat":
            raise ValueError(f"quantize.{qat_only[0]} applies to quantization-aware training only; set quantize.mode "
                             "to `qat`, or remove it")
        if (q.temperature is not None or q.alpha is not None) and not q.distill:
            raise ValueError("quantize.temperature/alpha set with quantize.distill false: there is no KD loss to "
                             "weigh; remove them, or set quantize.distill to true")
        if self.target is not None and self.search is not None:
            raise ValueError("a recipe with `search:` measures on search.budget.device and chooses by its budget; "
                             "remove `target:` (or `search:` to build one model for the target)")
        if self.target is not None and self.target.formats is not None:
            unexported = [f for f in self.target.formats if f not in self.export.formats]
            if unexported:
                raise ValueError(f"target.formats names {', '.join(unexported)}, which export.formats "
                                 f"({', '.join(self.export.formats)}) does not make; add it there or leave it out")
        recover = self.prune.recover if self.prune is not None else None
        if recover is not None and recover.feature_weight and not (recover.distill and (
                recover.teacher == "unpruned" or (self.distill is not None and self.distill.teacher_logits == "online"))):
            raise ValueError("prune.recover.feature_weight needs a teacher run on every batch: prune.recover.distill "
                             "with prune.recover.teacher `unpruned`, or a `distill` teacher with teacher_logits `online`")
        return self

    def teacher_train(self) -> TrainSection:
        """The teacher's fine-tune settings: `train` with `distill.teacher.train` applied on top."""
        overrides = self.distill.teacher.train if self.distill else {}
        try:
            return TrainSection.model_validate({**self.train.model_dump(), **overrides})
        except ValidationError as exc:
            found = problems(exc.errors(), TrainSection, "distill.teacher.train.")
            raise ValueError(found) from None

    def resolved_yaml(self) -> str:
        """The recipe as built: every field written out (defaults included), `--set` overrides applied and paths
        made absolute, so the file builds the same from anywhere. Each run writes it as recipe.resolved.yaml."""
        import yaml

        data = self.model_dump(mode="json")
        for dotted in _PATH_FIELDS:
            *parents, leaf = dotted.split(".")
            nodes = [data]
            for part in parents:
                nodes = [child for node in nodes if isinstance(node, dict)
                         for child in (node.values() if part == "*" else [node.get(part)])]
            for node in nodes:
                value = node.get(leaf) if isinstance(node, dict) else None
                if isinstance(value, str) and not (leaf == "weights" and value in ("imagenet", "none")):
                    node[leaf] = str(self.resolve_path(value).absolute())
        origin = self.source or "<recipe>"
        sets = " ".join(f"--set {o}" for o in self.overrides).replace("\n", "\\n").replace("\r", "\\r")
        header = [f"# The recipe of this run: {origin}" + (f" with {sets}" if sets else "") + ",",
                  "# every default written out and its paths made absolute. `edgetl build` on this file builds the "
                  "same."]
        return "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def resolve_path(self, value: str) -> Path:
        """Resolve a path written in the recipe against the recipe file's folder; `~`, `$TORCH_HOME` and
        `$EDGETL_CACHE` (with their defaults when unset) and other environment variables are expanded."""
        path = Path(_expand_variables(value)).expanduser()
        if not path.is_absolute() and self.source:
            path = Path(self.source).parent / path
        return path


def _expand_variables(value: str) -> str:
    import os
    import string

    from edgetl.backbones import hub_checkpoint_dir
    from edgetl.data import default_cache_dir

    defaults = {"TORCH_HOME": str(hub_checkpoint_dir().parent.parent), "EDGETL_CACHE": str(default_cache_dir())}
    return string.Template(value).safe_substitute({**defaults, **os.environ})
