"""What every stage is handed: the build context (recipe, run directory, preprocessing, dataset index, the records
of earlier stages), and the declaration a stage module makes of itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.pipeline.rundir import RunDir
from edgetl.preprocess import Preprocessing
from edgetl.progress import Reporter
from edgetl.recipe import Recipe


@dataclass
class BuildContext:
    """One build: its recipe, its run directory and what the stages have produced so far."""

    recipe: Recipe
    run: RunDir
    prep: Preprocessing  # the student's preprocessing (the recipe's model.preprocessing over the weights' own)
    records: dict[str, dict] = field(default_factory=dict)  # stage name -> its record
    index: Any = None  # the dataset's DatasetIndex, once the data stage has run
    data_root: Path | None = None  # the dataset's folder, once the data stage has found it
    choice: dict | None = None  # the artifact to ship and why (edgetl.target.choose), once the target stage has run

    @property
    def root(self) -> Path:
        return self.run.root

    @property
    def reporter(self) -> Reporter:
        return self.run.reporter

    @property
    def source(self) -> str:
        """The recipe file, for error messages."""
        return self.recipe.source or "recipe"

    def path(self, stage: str, key: str) -> Path:
        """The file an earlier stage's record names under `key`."""
        return self.root / self.records[stage][key]

    def file_hash(self, stage: str, key: str) -> str:
        """The sha256 of that file (what a later stage's cache key holds)."""
        record = self.records[stage]
        return record["files"][record[key]]

    def load(self, stage: str, key: str, mmap: bool = False) -> np.ndarray:
        """An .npy file of an earlier stage."""
        return np.load(self.path(stage, key), mmap_mode="r" if mmap else None)

    def paired(self, a_stage: str, b_stage: str, a: str, b: str) -> dict:
        """Two stages' torch models compared on the val images (their saved val logits) by the exact McNemar test:
        {<a>_only, <b>_only, p_value, verdict (a's)} (edgetl.significance)."""
        from edgetl.significance import Paired

        labels = self.load("inputs", "val_labels")
        a_right, b_right = (self.load(stage, "val_logits").argmax(1) == labels for stage in (a_stage, b_stage))
        return Paired.of(a_right, b_right).record(a, b)

    @property
    def model_stage(self) -> str:
        """The stage whose torch model is exported and verified: prune when the recipe prunes, else train."""
        return "prune" if "prune" in self.records else "train"

    @property
    def teacher(self) -> dict | None:
        return self.records.get("teacher")


@dataclass(frozen=True)
class Stage:
    """One stage, declared by its module (see edgetl/pipeline/stages/). Every function takes the build context.

    - `runs(recipe)`: whether the recipe runs it;
    - `key(ctx)`: the inputs of its cache key (a JSON-able dict); the run is reused while they are unchanged;
    - `work(ctx, folder)`: does the work into `folder` and returns its record (paths, metrics, `files` hashes);
    - `then(ctx, record)`: what follows the record every time, reused or not (load an index, check a budget);
    - `summarize(ctx, summary)`: adds its block to summary.json (called for every stage, run or not: a stage the
      recipe does not run writes its empty block);
    - `keep`: files it keeps across a changed key or a kill because they carry their own key (resumable state)."""

    name: str
    work: Callable[[BuildContext, Path], dict]
    key: Callable[[BuildContext], dict]
    runs: Callable[[Recipe], bool] = lambda recipe: True
    then: Callable[[BuildContext, dict], None] | None = None
    summarize: Callable[[BuildContext, dict], None] | None = None
    keep: tuple[str, ...] = ()

    def run(self, ctx: BuildContext) -> dict:
        """This stage's record: reused from the run directory when its key is unchanged, else made now."""
        record = ctx.run.stage(self.name, self.key(ctx), lambda folder: self.work(ctx, folder), self.keep)
        ctx.records[self.name] = record
        if self.then is not None:
            self.then(ctx, record)
        return record
