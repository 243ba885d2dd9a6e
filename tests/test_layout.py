"""The shape the code keeps (DEVELOPMENT.md, "Layout"): declared stages in one list, small modules, stage functions
of at most three parameters, and a cache layer that names no stage."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGE = REPO / "edgetl"


def test_no_module_is_over_600_lines():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert len(sizes) > 30
    assert {path: n for path, n in sizes.items() if n > 600} == {}


def test_no_stage_function_takes_more_than_three_parameters():
    stages = sorted((PACKAGE / "pipeline" / "stages").glob("*.py"))
    too_many = {}
    for path in stages:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg != "self"]
                if len(names) > 3:
                    too_many[f"{path.name}:{node.name}"] = names
    assert len(stages) >= 10
    assert too_many == {}


def test_the_stage_list_is_the_one_place_that_decides_what_runs():
    from edgetl.pipeline import STAGES, stage_names
    from edgetl.recipe import load_recipe

    modules = {p.stem for p in (PACKAGE / "pipeline" / "stages").glob("*.py")} - {"__init__"}
    assert {s.name for s in STAGES} == modules  # every stage module is in the list, and only they are
    compress = load_recipe(REPO / "recipes" / "compress.yaml")
    assert stage_names(compress) == [s.name for s in STAGES if s.runs(compress)]
    assert stage_names(load_recipe(REPO / "recipes" / "quickstart.yaml")) == [
        "data", "inputs", "train", "export", "verify", "bench", "target"]


def test_the_run_directory_module_names_no_stage():
    from edgetl.pipeline import STAGES

    tree = ast.parse((PACKAGE / "pipeline" / "rundir.py").read_text())
    keys = {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys}  # stage.json's own fields
    strings = {n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in keys}
    assert not strings & {s.name for s in STAGES}
    assert not strings & {f for s in STAGES for f in s.keep}  # nor the files a stage keeps
