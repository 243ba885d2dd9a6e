"""`edgetl init`: the schedule it takes from the data (against values worked out by hand from the documented rule),
the recipe it writes (commented, valid, never over an existing file) and that the recipe builds."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import make_image_folder, run_cli
from edgetl.init import suggested_training


@pytest.mark.parametrize(("images", "classes", "expected"), [
    # 238 images at batch 16: 15 steps an epoch, 600 steps would be 40 epochs: capped at 30; patience 30 / 5
    (238, 2, {"epochs": 30, "batch_size": 16, "early_stop_patience": 6, "scale_min": 0.35}),
    # 1000 images at batch 32: 32 steps, ceil(600 / 32) = 19 epochs, patience round(3.8) = 4
    (1000, 5, {"epochs": 19, "batch_size": 32, "early_stop_patience": 4, "scale_min": 0.35}),
    # 17 classes of 30: 510 images, 16 steps, 38 epochs -> 30; under 50 a class: the stronger crops
    (510, 17, {"epochs": 30, "batch_size": 32, "early_stop_patience": 6, "scale_min": 0.25}),
    # 5000 images: 157 steps, 4 epochs would do: at least 6; patience at least 3
    (5000, 10, {"epochs": 6, "batch_size": 32, "early_stop_patience": 3, "scale_min": 0.35}),
])
def test_the_schedule_comes_from_the_number_of_images_and_classes(images, classes, expected):
    train = suggested_training(images, classes)
    assert {**{k: train[k] for k in ("epochs", "batch_size", "early_stop_patience")},
            "scale_min": train["augment"]["scale_min"]} == expected


@pytest.mark.parametrize(("val_images", "budget"), [
    (40, 5.0),     # one image is 2.5 points: two are 5
    (153, 1.31),   # two images are 1.307 points, rounded up so that two images pass
    (200, 1.0),    # two images are 1 point
    (1000, 1.0),   # never below 1 point
])
def test_the_accuracy_budget_is_never_below_two_val_images(val_images, budget):
    from edgetl.init import accuracy_budget

    assert accuracy_budget(val_images) == budget


def test_init_writes_a_commented_recipe_that_builds_as_is(tmp_path):
    data = make_image_folder(tmp_path / "my data", {"red": 10, "green": 10})  # flat: <class>/ folders
    recipe = tmp_path / "recipe.yaml"
    code, out = run_cli("init", data, "--out", recipe)
    assert code == 0 and "wrote" in out and "edgetl build" in out, out
    text = recipe.read_text()
    assert text.startswith("# Written by `edgetl init`") and "2 classes, 12 train / 4 val / 4 test images" in text
    written = yaml.safe_load(text)
    assert written["data"]["path"] == "my data" and written["target"] == {"device": "local", "threads": 1}
    assert written["train"]["epochs"] == suggested_training(12, 2)["epochs"] == 30
    assert written["verify"]["max_accuracy_drop_pp"] == 50.0  # 4 val images: two of them are 50 points
    # never over an existing recipe
    code, out = run_cli("init", data, "--out", recipe)
    assert code == 2 and "does not overwrite" in out and recipe.read_text() == text, out
    code, out = run_cli("init", data, "--out", recipe, "--force", "--target", "ssh://pi@pi5.local", "--threads", "4")
    assert code == 0 and yaml.safe_load(recipe.read_text())["target"] == {"device": "ssh://pi@pi5.local", "threads": 4}
    code, out = run_cli("init", tmp_path / "missing")
    assert code == 2 and "missing" in out, out
    # the local recipe builds: only its size is made small here (--set), nothing in the file is edited
    code, out = run_cli("init", data, "--out", recipe, "--force")
    small = ["train.epochs=1", "train.probe_epochs=1", "train.batch_size=6", "export.formats=[onnx]",
             "export.calibration_images=4", "model.preprocessing={resize: 36, crop: 32}", "bench.min_time_s=0",
             "bench.min_runs=5", "bench.warmup=2"]
    code, out = run_cli("build", recipe, "--quiet", "--out", tmp_path / "run", *(a for s in small for a in ("--set", s)))
    assert code == 0, out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["accuracy_reported_on"] == "test" and summary["data"]["layout"] == "flat"
    assert summary["chosen"] in {a["name"] for a in summary["artifacts"]} and summary["target"]["declared"]
    assert "* chosen for the target: the build machine, 1 thread." in out and "test acc, 95 % CI (n = 4)" in out
    # a budget nothing meets: the same measurement (the target stage is reused), no choice, exit 1, every reason kept
    code, out = run_cli("build", recipe, "--out", tmp_path / "run", *(a for s in small for a in ("--set", s)),
                        "--set", "target.budget={latency_ms_p90: 0.0001}")
    assert code == 1 and "target budget" in out and "[7/7] target: unchanged, reused" in out, out
    failed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert failed["status"] == "failed: target budget" and failed["chosen"] is None
    assert all("target.budget.latency_ms_p90" in a["why"] for a in failed["choice"]["artifacts"])
    code, out = run_cli("bundle", tmp_path / "run")
    assert code == 2 and "the build chose no artifact" in out and "onnx_int8" in out, out
    code, out = run_cli("bundle", tmp_path / "run", "--format", "onnx", "--precision", "int8")
    assert code == 2 and "did not finish" in out, out  # named, it is still refused: the build failed
