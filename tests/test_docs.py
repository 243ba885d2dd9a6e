"""The README documents every recipe key and every CLI command (the docs stay true as the schema grows)."""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel

from conftest import REPO
from edgetl.cli import main
from edgetl.recipe import Recipe


def recipe_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        annotation = field.annotation
        if isinstance(annotation, types.UnionType | typing._UnionGenericAlias):  # an optional section: `X | None`
            sections = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
            if sections:
                keys.append(prefix + name)  # the section itself (what its presence turns on) ...
                annotation = sections[0]  # ... and each of its keys
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += recipe_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_every_recipe_key_is_in_the_readme_reference():
    readme = (REPO / "README.md").read_text()
    keys = recipe_keys(Recipe)
    assert len(keys) > 40
    missing = [k for k in keys if f"| `{k}` |" not in readme]
    assert not missing, f"README recipe reference lacks {missing}"


def test_every_cli_command_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for name in main.commands:
        assert f"`edgetl {name}" in readme, name
