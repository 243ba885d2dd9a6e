"""The stages of a build, in the order they run: the one list that decides what runs (each stage's `runs(recipe)`
says whether a recipe needs it). A new stage is one module here and one line in this list."""

from __future__ import annotations

from edgetl.pipeline.stages import baseline, bench, data, export, inputs, prune, qat, target, teacher, train, verify

STAGES = (data.STAGE, inputs.STAGE, teacher.STAGE, baseline.STAGE, train.STAGE, prune.STAGE, qat.STAGE, export.STAGE,
          verify.STAGE, bench.STAGE, target.STAGE)
