"""Recipe validation: defaults, unknown keys with suggestions, field paths and file names in every error."""

from __future__ import annotations

import pytest

from edgetl.errors import RecipeError
from edgetl.recipe import load_recipe, parse_recipe


def write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_minimal_recipe_gets_schema_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, "name: r\ndata: {dataset: hymenoptera_data}\n"))
    assert recipe.model.backbone == "efficientnet_lite0"
    assert recipe.model.weights == "imagenet"
    assert recipe.train.mode == "finetune"
    assert recipe.export.precisions == ["fp32", "int8"]
    assert recipe.verify.max_accuracy_drop_pp == 1.0
    assert recipe.bench.threads == [1]


def test_quickstart_recipe_is_valid():
    from conftest import REPO

    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml")
    assert recipe.name == "quickstart" and recipe.data.dataset == "hymenoptera_data"


def test_unknown_key_suggests_the_right_one_and_names_file(tmp_path):
    path = write(tmp_path, "name: r\ndata: {dataset: x}\ntrain: {epoch: 3}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message
    assert "train.epoch: unknown key; did you mean 'epochs'?" in message


def test_unknown_section_suggested(tmp_path):
    with pytest.raises(RecipeError, match=r"expot: unknown key; did you mean 'export'\?"):
        load_recipe(write(tmp_path, "name: r\ndata: {dataset: x}\nexpot: {}\n"))


def test_bad_value_names_the_field_path(tmp_path):
    with pytest.raises(RecipeError, match=r"train\.epochs: Input should be greater than 0"):
        load_recipe(write(tmp_path, "name: r\ndata: {dataset: x}\ntrain: {epochs: 0}\n"))


def test_several_errors_are_all_reported(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "name: r\ndata: {dataset: x}\ntrain: {epochs: -1, lr: 0}\nbench: {threads: [0]}\n"))
    message = str(err.value)
    assert "train.epochs" in message and "train.lr" in message and "bench.threads" in message


def test_unknown_backbone_suggests_a_known_one(tmp_path):
    with pytest.raises(RecipeError, match=r"model\.backbone: unknown backbone 'mobilenet_v3_smal' \(did you mean "
                                          r"'mobilenet_v3_small'\?\)"):
        load_recipe(write(tmp_path, "name: r\ndata: {dataset: x}\nmodel: {backbone: mobilenet_v3_smal}\n"))


def test_unsupported_precision_lists_choices(tmp_path):
    with pytest.raises(RecipeError, match=r"export\.precisions: unknown precision 'int4' \(did you mean 'int8'\?\); "
                                          r"known: fp32, fp16, int8"):
        load_recipe(write(tmp_path, "name: r\ndata: {dataset: x}\nexport: {precisions: [int4]}\n"))


def test_unknown_format_suggests_a_known_one(tmp_path):
    with pytest.raises(RecipeError, match=r"export\.formats: unknown format 'openvin' \(did you mean 'openvino'\?\)"):
        load_recipe(write(tmp_path, "name: r\ndata: {dataset: x}\nexport: {formats: [onnx, openvin]}\n"))


def test_a_format_precision_pair_that_does_not_exist_names_the_valid_ones(tmp_path, monkeypatch):
    import dataclasses

    from edgetl import formats

    # Every shipped format makes every precision, so take fp16 away from one to see the check at work.
    monkeypatch.setitem(formats.FORMATS, "tflite", dataclasses.replace(formats.FORMATS["tflite"],
                                                                        precisions=("fp32", "int8")))
    with pytest.raises(RecipeError, match=r"export: export\.formats × export\.precisions asks for tflite fp16, which "
                                          r"edgetl cannot make \(valid precisions per format: onnx: fp32, fp16, int8; "
                                          r"tflite: fp32, int8\)"):
        load_recipe(write(tmp_path, "name: r\ndata: {dataset: x}\nexport: {formats: [onnx, tflite], "
                                    "precisions: [fp32, fp16]}\n"))


def test_missing_name_and_data_source(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "data: {}\n"))
    assert "name: required but missing" in str(err.value)
    assert "data: give `dataset`" in str(err.value)


def test_python_yaml_tags_are_refused(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\ndata: {dataset: x}\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)


def test_invalid_yaml_reports_line(tmp_path):
    with pytest.raises(RecipeError, match=r"at line 3, column 1"):
        load_recipe(write(tmp_path, "name: r\ndata: {dataset: x\n"))


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(RecipeError, match="is empty"):
        load_recipe(write(tmp_path, "# nothing yet\n"))


def test_warmup_must_be_shorter_than_training():
    with pytest.raises(RecipeError, match="warmup_epochs"):
        parse_recipe({"name": "r", "data": {"dataset": "x"}, "train": {"epochs": 2, "warmup_epochs": 3}})


def test_relative_paths_resolve_against_recipe_folder(tmp_path):
    recipe = load_recipe(write(tmp_path, "name: r\ndata: {path: images}\n"))
    assert recipe.resolve_path(recipe.data.path) == tmp_path / "images"


def test_feature_kd_without_an_online_teacher_is_refused(tmp_path):
    path = write(tmp_path, "name: x\ndata: {dataset: x}\nprune: {recover: {feature_weight: 100, distill: false}}\n")
    with pytest.raises(RecipeError, match="prune.recover.feature_weight needs a teacher run on every batch"):
        load_recipe(path)
    path = write(tmp_path, "name: x\ndata: {dataset: x}\nprune: {recover: {feature_weight: 100, teacher: unpruned}}\n")
    assert load_recipe(path).prune.recover.feature_weight == 100


def test_set_overrides_fields_and_is_checked_like_the_file(tmp_path):
    path = write(tmp_path, "name: r\ndata: {dataset: x}\ntrain: {epochs: 6, lr: 0.001}\n")
    recipe = load_recipe(path, ["train.epochs=3", "export.formats=[onnx, tflite]", "distill.teacher.backbone=mobilenet_v2",
                                "bench.threads=[1, 2]", "data.path=images"])
    assert recipe.train.epochs == 3 and recipe.train.lr == 0.001  # the rest of the section stays
    assert recipe.export.formats == ["onnx", "tflite"] and recipe.bench.threads == [1, 2]
    assert recipe.distill.teacher.backbone == "mobilenet_v2"  # a section the file did not have
    assert recipe.overrides == ("train.epochs=3", "export.formats=[onnx, tflite]",
                                "distill.teacher.backbone=mobilenet_v2", "bench.threads=[1, 2]", "data.path=images")
    assert load_recipe(path).model_dump() == load_recipe(path, []).model_dump()  # nothing set: the file as it is
    for bad, says in [
        ("train.epochz=3", f"{path} --set train.epochz=3 is not a valid recipe: train.epochz: unknown key; did you "
                           "mean 'epochs'?"),
        ("train.epochs=three", "train.epochs: Input should be a valid integer"),
        ("train.epochs", "--set 'train.epochs': expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("train..epochs=3", "expected KEY=VALUE"),
        ("name.first=3", "--set 'name.first=3': name in"),
        ("train.epochs=[1", "--set 'train.epochs=[1': the value is not valid YAML"),
        ("train.epochs=!!python/object:os.system ls", "the value is not valid YAML"),
    ]:
        with pytest.raises(RecipeError) as err:
            load_recipe(path, [bad])
        assert says in str(err.value), (bad, str(err.value))


def test_set_on_a_file_that_is_not_a_recipe_keeps_the_files_error(tmp_path):
    path = write(tmp_path, "- a list\n- not a recipe\n")
    with pytest.raises(RecipeError, match="a recipe must be a YAML mapping of sections"):
        load_recipe(path, ["train.epochs=3"])


def test_the_resolved_recipe_builds_the_same_from_anywhere(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "w.pt").write_bytes(b"")
    path = write(tmp_path, "name: r\ndata: {path: images}\nmodel: {weights: w.pt}\ntrain: {epochs: 6}\n"
                           "distill: {teacher: {backbone: mobilenet_v2, weights: t.pt}}\n")
    recipe = load_recipe(path, ["train.epochs=2", "search.models={mobilenet_v2: {weights: s.pt}}",
                                "search.backbones=[mobilenet_v2]", "search.budget.size_mb=5"])
    text = recipe.resolved_yaml()
    assert text.startswith(f"# The recipe of this run: {path} with --set train.epochs=2 --set search.models=")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "recipe.resolved.yaml").write_text(text)
    again = load_recipe(elsewhere / "recipe.resolved.yaml")
    assert again.data.path == str(tmp_path / "images") and again.model.weights == str(tmp_path / "w.pt")
    assert again.distill.teacher.weights == str(tmp_path / "t.pt")
    assert again.search.models["mobilenet_v2"]["weights"] == str(tmp_path / "s.pt")
    assert again.train.epochs == 2 and again.train.lr == recipe.train.lr  # every default written out
    moved = {"data": again.data.model_dump(), "model": again.model.model_dump(),
             "distill": again.distill.model_dump(), "search": again.search.model_dump()}
    assert again.model_dump() == {**recipe.model_dump(), **moved}  # the rest the same
    assert again.train.model_dump() == recipe.train.model_dump()
    assert again.resolve_path(again.data.path) == recipe.resolve_path(recipe.data.path)
