"""The recipe schema: what `edgetl build` reads from recipe.yaml. The one place defaults live (sections.py).

sections.py   one pydantic model per recipe section, with its defaults and field checks
schema.py     Recipe: the sections together and the checks across them
messages.py   a validation error as one line naming the field
loading.py    safe YAML reading and validation into a Recipe (load_recipe, parse_recipe)
"""

from __future__ import annotations

from edgetl.recipe.loading import MAX_RECIPE_DEPTH, MAX_RECIPE_VALUES, load_recipe, parse_recipe, section_dict
from edgetl.recipe.schema import Recipe
from edgetl.recipe.sections import (
    AugmentSection,
    BenchSection,
    DataSection,
    DistillSection,
    ExportSection,
    ModelSection,
    OpenvinoExportSection,
    PreprocessingOverride,
    PruneSection,
    QuantizeSection,
    RecoverSection,
    SearchBudget,
    SearchSection,
    Section,
    TeacherSection,
    TfliteExportSection,
    TrainSection,
    VerifySection,
)

__all__ = ["MAX_RECIPE_DEPTH", "MAX_RECIPE_VALUES", "AugmentSection", "BenchSection", "DataSection", "DistillSection",
           "ExportSection", "ModelSection", "OpenvinoExportSection", "PreprocessingOverride", "PruneSection",
           "QuantizeSection", "Recipe", "RecoverSection", "SearchBudget", "SearchSection", "Section", "TeacherSection",
           "TfliteExportSection", "TrainSection", "VerifySection", "load_recipe", "parse_recipe", "section_dict"]
