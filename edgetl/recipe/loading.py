"""Reading recipe.yaml: safe YAML (no tags, no duplicate keys, no alias bombs), validated into a Recipe."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from edgetl.errors import RecipeError
from edgetl.recipe.messages import problems, shorten
from edgetl.recipe.schema import Recipe

# A real recipe has a few hundred values; YAML aliases can make a few hundred bytes expand to billions (an alias
# bomb), so the expanded document is bounded before anything is built from it.
MAX_RECIPE_VALUES = 10_000
MAX_RECIPE_DEPTH = 40


def parse_recipe(obj: Any, source: str = "<recipe>", overrides: Sequence[str] = ()) -> Recipe:
    """Validate a recipe mapping (read from `source`, with `overrides` applied: they are named in errors and kept
    on the Recipe); errors name the file and every bad field path."""
    where = " ".join([source, *(f"--set {o}" for o in overrides)])
    if obj is None:
        raise RecipeError(f"{where} is empty; a recipe needs at least `name` and `data` (see recipes/quickstart.yaml).")
    if not isinstance(obj, dict):
        raise RecipeError(f"{where}: a recipe must be a YAML mapping of sections (name, data, model, train, "
                          f"export, verify, bench), not {type(obj).__name__}.")
    try:
        return Recipe.model_validate({**obj, "source": source, "overrides": list(overrides)})
    except ValidationError as exc:
        found = problems(exc.errors(), Recipe)
        raise RecipeError(f"{where} is not a valid recipe: {found}. See the recipe reference, docs/recipe.md.") from None


class _RecipeLoader(yaml.SafeLoader):
    """safe_load, and a key given twice in one mapping is an error naming both lines (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict[str, int] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                    line = key_node.start_mark.line + 1
                    if key_node.value in lines:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"the key '{key_node.value[:80]}' is given twice, at lines "
                            f"{lines[key_node.value]} and {line} (the second would silently replace the first)",
                            key_node.start_mark)
                    lines[key_node.value] = line
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int], depth: int = 0) -> int:
    """How many values `node` stands for once every alias is expanded (a shared node counts each time it is used)."""
    if depth > MAX_RECIPE_DEPTH:
        raise RecursionError
    if id(node) in memo:
        memo[0] = 1  # a node met twice: the document uses aliases (no node has id 0)
        return memo[id(node)]
    children = (node.value if isinstance(node, yaml.SequenceNode) else
                [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
    size = 1
    for child in children:
        size += _expanded_size(child, memo, depth + 1)
        if size > MAX_RECIPE_VALUES:
            break
    memo[id(node)] = size
    return size


def _load_yaml(text: str, path: Path) -> Any:
    """The YAML document in `text` (safe tags only), refused when aliases expand it beyond MAX_RECIPE_VALUES."""
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        memo: dict[int, int] = {}
        if _expanded_size(node, memo) > MAX_RECIPE_VALUES:
            why = (" once its YAML aliases are expanded (aliases repeated within each other: an alias bomb?); write "
                   "the values out instead of nesting aliases" if memo.get(0) else "")
            raise RecipeError(f"{path}: holds more than {MAX_RECIPE_VALUES:,} values{why}. A recipe has a few hundred.")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read and validate a recipe file (YAML, safe_load only), with `overrides` (`KEY=VALUE`, as `--set` gives them)
    applied on top before it is validated."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"Recipe file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"Cannot read recipe file {path}: {exc}.") from None
    try:
        obj = _load_yaml(text, path)
    except RecursionError:
        raise RecipeError(f"{path} is nested too deeply to be a recipe (more than {MAX_RECIPE_DEPTH} levels).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{path} is not valid YAML{where}: {problem}. Recipes are plain YAML; tags such as "
                          "!!python/object are refused.") from None
    if overrides:
        obj = apply_overrides(obj, overrides, path)
    return parse_recipe(obj, source=str(path), overrides=overrides)


def apply_overrides(obj: Any, overrides: Sequence[str], path: Path | str) -> Any:
    """`obj` (a parsed recipe) with each `KEY=VALUE` set: KEY a dotted field path (`train.epochs`), VALUE read as
    YAML (`3`, `[onnx, tflite]`, `null`, `{epochs: 2}`). Sections that are not there yet are created; what the
    result means is checked by the schema, like the file."""
    if obj is not None and not isinstance(obj, dict):
        return obj  # not a recipe: parse_recipe says so, naming the file
    result = dict(obj or {})
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or any(not part.strip() for part in parts):
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE with KEY a dotted recipe field, e.g. "
                              "--set train.epochs=3 or --set export.formats=[onnx]")
        try:
            value = _load_yaml(text, Path(f"--set {key}"))
        except (yaml.YAMLError, RecursionError) as exc:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML ({getattr(exc, 'problem', None) or exc})"
                              ) from None
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise RecipeError(f"--set {item!r}: {'.'.join(parts[:depth + 1])} in {path} is "
                                  f"{shorten(repr(child), 60)}, not a section with fields")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return result


def section_dict(section: BaseModel) -> dict[str, Any]:
    """A section as plain JSON-able data (for cache keys and the summary)."""
    return section.model_dump(mode="json")
