"""The target and the choice of the artifact to ship: the rule on hand-made figures, the bootstrap interval of a p50
against values worked out by hand, the formats a machine runs, and the recipe's `target:` section."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from edgetl.errors import RecipeError
from edgetl.formats import formats_for_machine
from edgetl.significance import mcnemar_exact, median_interval
from edgetl.target import choose, resolve_target


def right(correct: int, n: int = 100, first: int = 0) -> np.ndarray:
    """`correct` images right of `n`, starting at image `first` (wrapping)."""
    out = np.zeros(n, dtype=bool)
    out[(np.arange(correct) + first) % n] = True
    return out


def artifact(name: str, mb: float) -> dict:
    return {"name": name, "size_bytes": int(mb * 1e6)}


def latency(p50: float, ci: list | None, p90: float | None = None) -> dict:
    return {"p50": p50, "p90": p90 if p90 is not None else p50 * 1.2, "p50_ci95": ci}


def test_the_rule_takes_the_fastest_of_the_accurate_and_a_tie_goes_to_the_smaller_file():
    artifacts = [artifact("onnx_fp32", 10.0), artifact("onnx_int8", 3.0), artifact("tflite_int8", 2.5),
                 artifact("tflite_fp32", 9.0), artifact("openvino_fp32", 1.0)]
    answers = {"onnx_fp32": right(90), "onnx_int8": right(88), "tflite_int8": right(70),
               "tflite_fp32": right(90), "openvino_fp32": right(95)}
    figures = {"onnx_fp32": latency(10.0, [9.5, 10.5]), "onnx_int8": latency(5.0, [4.8, 5.2]),
               "tflite_int8": latency(3.0, [2.9, 3.1]), "tflite_fp32": latency(5.1, [4.9, 5.3])}
    choice = choose(artifacts, answers, figures, {"openvino_fp32": "its runtime is not on the device"},
                    {"size_mb": 9.5})
    rows = {a["name"]: a for a in choice["artifacts"]}
    # onnx_fp32: 10 MB > 9.5 MB; openvino: the target cannot run it, however accurate
    assert rows["onnx_fp32"]["status"] == "lost" and "target.budget.size_mb 9.5 MB" in rows["onnx_fp32"]["why"]
    assert rows["openvino_fp32"]["status"] == "excluded" and "not on the device" in rows["openvino_fp32"]["why"]
    # the most accurate within the budget is tflite_fp32 (90/100); tflite_int8 gets 20 images fewer right and
    # none it misses: McNemar p = 2 * 0.5**20, significant — it loses although it is the fastest
    assert choice["most_accurate"] == "tflite_fp32"
    assert rows["tflite_int8"]["vs_most_accurate"]["p_value"] == pytest.approx(round(2 * 0.5 ** 20, 6))
    assert rows["tflite_int8"]["status"] == "lost" and "less accurate than tflite_fp32" in rows["tflite_int8"]["why"]
    # onnx_int8 (88 of the same images): 0 vs 2 discordant, p = 0.5, not worse; its p50 interval overlaps
    # tflite_fp32's, so the two tie and the smaller file (3 MB against 9 MB) is chosen
    assert rows["onnx_int8"]["vs_most_accurate"]["p_value"] == pytest.approx(mcnemar_exact(0, 2)) == 0.5
    assert choice["chosen"] == "onnx_int8" and rows["onnx_int8"]["status"] == "chosen"
    assert "smallest file of the 2 that tie" in rows["onnx_int8"]["why"]
    assert rows["tflite_fp32"]["status"] == "lost" and "ties on latency with onnx_int8" in rows["tflite_fp32"]["why"]
    # the runner-up is what the rule would take without onnx_int8: tflite_fp32; the chosen file gets 0 images right
    # that it misses and misses 2 it gets right: McNemar p = 0.5, no significant difference
    assert choice["runner_up"] == "tflite_fp32"
    assert choice["chosen_vs_runner_up"] == {"chosen_only": 0, "runner_up_only": 2, "p_value": 0.5,
                                             "verdict": "no significant difference"}


def test_latencies_apart_go_to_the_fastest_and_budgets_are_checked_on_the_target():
    artifacts = [artifact("a", 5.0), artifact("b", 1.0)]
    answers = {"a": right(50), "b": right(50)}
    figures = {"a": latency(2.0, [1.9, 2.1]), "b": latency(4.0, [3.9, 4.1])}
    choice = choose(artifacts, answers, figures, {}, {})
    assert choice["chosen"] == "a"  # the larger file, but faster beyond the intervals
    assert "slower on the target: p50 4.00 ms (95 % CI 3.90–4.10) vs 2.00 ms" in choice["artifacts"][1]["why"]
    assert choice["artifacts"][0]["why"].startswith("the fastest p50 on the target, 2.00 ms")
    # no interval (one round): only an equal p50 ties
    assert choose(artifacts, answers, {"a": latency(2.0, None), "b": latency(2.0, None)}, {}, {})["chosen"] == "b"
    # a p90 limit that neither meets: nothing is chosen, and each says why
    none = choose(artifacts, answers, figures, {}, {"latency_ms_p90": 1.0})
    assert none["chosen"] is None and all("target.budget.latency_ms_p90 1 ms" in a["why"] for a in none["artifacts"])
    low = choose(artifacts, answers, figures, {}, {"accuracy_min": 60})
    assert low["chosen"] is None and "val accuracy 50.00 % < target.budget.accuracy_min 60 %" in \
        low["artifacts"][0]["why"]
    # an artifact that was not measured there cannot be chosen
    assert choose(artifacts, answers, {"b": figures["b"]}, {}, {})["chosen"] == "b"


@pytest.mark.parametrize(("values", "expected"), [
    # resamples of 3 values: the median is 1 in 7 of 27, so both 2.5 % tails are at the ends
    ([1.0, 2.0, 3.0], (1.0, 3.0)),
    # five rounds, one slow: P(median = 6) = P(3 or more 6s in 5 draws at 0.2) = 0.058 > 0.025
    ([5.0, 5.0, 5.0, 5.0, 6.0], (5.0, 6.0)),
    # ten rounds, one slow: the median moves off 5 only with 5 or more 6s of 10 at 0.1, P = 0.0016 < 0.025
    ([5.0] * 9 + [6.0], (5.0, 5.0)),
])
def test_the_p50_interval_is_the_bootstrap_of_the_rounds_medians(values, expected):
    assert median_interval(values) == pytest.approx(expected)
    assert median_interval(values) == median_interval(list(values))  # seeded: the same rounds, the same interval
    assert median_interval([4.2]) is None


def test_the_formats_a_machine_runs_come_from_the_table():
    assert formats_for_machine("x86_64") == formats_for_machine("AMD64") == ("onnx", "openvino", "tflite")
    assert formats_for_machine("arm64") == formats_for_machine("aarch64") == ("onnx", "openvino", "tflite")
    assert formats_for_machine("armv7l") == ()


def _recipe(tmp_path, target: dict, **extra):
    from edgetl.recipe import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "data": {"path": str(tmp_path)}, "target": target, **extra}))
    return load_recipe(path)


def test_the_target_section_is_checked_where_it_is_written(tmp_path):
    with pytest.raises(RecipeError, match="target: device .pi5. is a name: give the devices.yaml"):
        _recipe(tmp_path, {"device": "pi5"})
    with pytest.raises(RecipeError, match="target: device must be .local., or a name in target.devices or ssh:"):
        _recipe(tmp_path, {"device": "http://pi5"})
    with pytest.raises(RecipeError, match="target.formats names tflite, which export.formats"):
        _recipe(tmp_path, {"formats": ["tflite"]})
    with pytest.raises(RecipeError, match="target.formats.*unknown format 'onx'"):
        _recipe(tmp_path, {"formats": ["onx"]})
    with pytest.raises(RecipeError, match="target.budget.latency_ms_p90"):
        _recipe(tmp_path, {"budget": {"latency_ms_p90": -1}})
    with pytest.raises(RecipeError, match="remove `target:`"):
        _recipe(tmp_path, {}, search={"budget": {"size_mb": 5}, "backbones": ["mobilenet_v2"]})


def test_a_device_name_is_looked_up_in_target_devices(tmp_path):
    (tmp_path / "devices.yaml").write_text("devices:\n  - {name: pi4, url: 'ssh://pi@pi4.local'}\n")
    target = resolve_target(_recipe(tmp_path, {"device": "pi4", "devices": "devices.yaml", "threads": 4}))
    assert (target.name, target.url, target.threads, target.declared) == ("pi4", "ssh://pi@pi4.local", 4, True)
    with pytest.raises(RecipeError, match=r"target.device 'pi5' is not in target.devices .*lists pi4"):
        resolve_target(_recipe(tmp_path, {"device": "pi5", "devices": "devices.yaml"}))
    with pytest.raises(RecipeError, match="target.devices: .*cannot read the devices file"):
        resolve_target(_recipe(tmp_path, {"device": "pi5", "devices": "missing.yaml"}))
    # no target section: this machine, at the first bench thread count (where latency_ms is measured)
    local = resolve_target(_recipe(tmp_path, {}).model_copy(update={"target": None}))
    assert (local.url, local.declared, local.threads) == ("local", False, 1)


def test_a_tie_that_goes_to_a_slower_smaller_file_says_so():
    """b is the smallest file and its interval overlaps the fastest's (a), so it is chosen; c is faster than b but
    does not tie with a: it lost to a's speed, not b's."""
    artifacts = [artifact("a", 5.0), artifact("b", 1.0), artifact("c", 3.0)]
    answers = {name: right(50) for name in "abc"}
    figures = {"a": latency(10.0, [9.0, 11.0]), "b": latency(13.0, [10.5, 15.0]), "c": latency(12.0, [11.5, 12.5])}
    choice = choose(artifacts, answers, figures, {}, {})
    rows = {a["name"]: a for a in choice["artifacts"]}
    assert choice["chosen"] == "b"
    assert rows["b"]["why"].startswith("p50 13.00 ms (95 % CI 10.50–15.00) on the target, tied with the fastest, a")
    assert rows["c"]["why"].startswith("slower on the target: p50 12.00 ms") and "for a, the fastest" in rows["c"]["why"]
    assert "ties on latency with b" in rows["a"]["why"] and "larger file (5.00 vs 1.00 MB)" in rows["a"]["why"]


def test_the_build_machine_runs_every_exported_format_whatever_its_architecture():
    from edgetl.target import Target, allowed_formats

    here = Target("local", None, 1, None, declared=False)
    assert allowed_formats(here, "riscv64", ["onnx", "tflite"], "r.yaml") == {"onnx": None, "tflite": None}
    there = Target("pi", object(), 1, None, declared=True)  # a device: its architecture decides
    assert allowed_formats(there, "armv7l", ["onnx"], "r.yaml")["onnx"].endswith("does not install on armv7l")
    with pytest.raises(RecipeError, match="target.formats names onnx.*armv7l"):
        allowed_formats(Target("pi", object(), 1, ("onnx",), True), "armv7l", ["onnx"], "r.yaml")
