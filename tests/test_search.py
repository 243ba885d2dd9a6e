"""The latency-budget search's logic on fake measurements: the cheap filter, the training order, stopping models
that cannot win, the Pareto front and the choice, and how much of the grid gets trained."""

from __future__ import annotations

import pytest

from edgetl.search import Budget, Candidate, cheap_filter, choose, make_grid, run, training_order

# Untrained p90 (ms) per backbone at fp32, as a device might measure it; int8 is 2.5x faster, pruning scales MACs.
FP32_MS = {"mobilenet_v3_small": 9.0, "mobilenet_v2": 24.0, "efficientnet_lite0": 30.0}
ACCURACY = {"mobilenet_v3_small": 90.0, "mobilenet_v2": 95.0, "efficientnet_lite0": 96.0}  # trained, unpruned
PRIOR = {"mobilenet_v3_small": 67.7, "mobilenet_v2": 72.2, "efficientnet_lite0": 75.1}  # ImageNet top-1


def latency(c: Candidate) -> float:
    return FP32_MS[c.backbone] * (1 - c.prune) / (2.5 if c.precision == "int8" else 1.0)


def size(c: Candidate) -> int:
    return int(10e6 * (1 - c.prune) / (4 if c.precision == "int8" else 1))


def grid() -> list[Candidate]:
    return make_grid(list(FP32_MS), [0.0, 0.3, 0.5], ["tflite", "onnx"], ["int8", "fp32"])


def fake_train(calls: list):
    def train(key):
        calls.append(key)
        backbone, prune = key
        accuracy = ACCURACY[backbone] - 8 * prune  # pruning costs accuracy
        artifacts = {}
        for fmt in ("tflite", "onnx"):
            for precision in ("int8", "fp32"):
                c = Candidate(backbone, prune, fmt, precision)
                artifacts[(fmt, precision)] = {"val_accuracy": accuracy - (0.3 if precision == "int8" else 0.0),
                                               "latency_ms_p90": latency(c) * 1.02, "size_bytes": size(c)}
        return accuracy, artifacts

    return train


def test_cheap_filter_rejects_what_cannot_meet_the_budget_before_training():
    candidates = grid()
    cheap_filter(candidates, Budget(latency_ms_p90=12, size_mb=5), lambda c: (latency(c), size(c)))
    by_name = {c.name: c for c in candidates}
    slow = by_name["efficientnet_lite0_p00_onnx_fp32"]
    assert slow.status == "rejected" and "p90 30.00 ms > budget 12 ms" in slow.reason and "untrained" in slow.reason
    big = by_name["mobilenet_v3_small_p00_onnx_fp32"]  # 9 ms is fast enough, 10 MB is not small enough
    assert big.status == "rejected" and "size 10.00 MB > budget 5 MB" in big.reason
    assert by_name["efficientnet_lite0_p00_tflite_int8"].status == "pending"  # 12.0 ms: at the budget, not over
    assert all(not c.trained for c in candidates) and slow.estimated["latency_ms_p90"] == 30.0


def test_training_order_puts_promising_backbones_and_unpruned_parents_first():
    candidates = grid()
    for c in candidates:
        if c.prune == 0.0 and c.backbone == "mobilenet_v2":
            c.reject("too slow")  # its pruned variants still need it as their parent
    order = training_order(candidates, PRIOR)
    assert order[:3] == [("efficientnet_lite0", 0.0), ("efficientnet_lite0", 0.3), ("efficientnet_lite0", 0.5)]
    assert ("mobilenet_v2", 0.0) in order and order.index(("mobilenet_v2", 0.0)) < order.index(("mobilenet_v2", 0.3))


def test_choice_is_the_most_accurate_within_budget_and_the_rest_is_explained():
    calls: list = []
    budget = Budget(latency_ms_p90=10.0, device="ssh://pi@pi4", threads=4)
    candidates = grid()
    state = run(candidates, budget, PRIOR, lambda c: (latency(c), size(c)), fake_train(calls))
    chosen = [c for c in candidates if c.status == "chosen"]
    assert len(chosen) == 1
    best = chosen[0]
    feasible = [c for c in candidates if c.val_accuracy is not None and c.latency_ms_p90 <= 10.0]
    assert best.val_accuracy == max(c.val_accuracy for c in feasible) and best.latency_ms_p90 <= 10.0
    # EfficientNet-Lite0 int8 (12 ms) and every fp32 but MobileNetV3-Small's miss the budget; MobileNetV2 int8
    # (9.8 ms, 94.7 %) beats the pruned EfficientNet-Lite0 (8.6 ms, 93.3 %).
    assert (best.backbone, best.prune, best.precision) == ("mobilenet_v2", 0.0, "int8")
    assert all(c.reason for c in candidates) and {c.status for c in candidates} <= {"chosen", "pareto", "rejected"}
    # A candidate trained and in budget but beaten on every axis says by whom.
    dominated = [c for c in candidates if c.status == "rejected" and c.reason.startswith("dominated by")]
    assert dominated and all(c.trained for c in dominated)
    # MobileNetV3-Small's unpruned model (90 %) is trained, its pruned variants cannot beat 93.3 %: never trained.
    assert ("mobilenet_v3_small", 0.3) not in calls and ("mobilenet_v3_small", 0.5) not in calls
    skipped = next(c for c in candidates if c.name == "mobilenet_v3_small_p30_tflite_int8")
    assert "not trained: cannot beat" in skipped.reason and not skipped.trained
    # Trained, in order: each backbone's unpruned parent before its pruned variants, most promising backbone first;
    # EfficientNet-Lite0's unpruned model only as a parent (all its own candidates missed the budget untrained).
    assert calls == [("efficientnet_lite0", 0.0), ("efficientnet_lite0", 0.3), ("efficientnet_lite0", 0.5),
                     ("mobilenet_v2", 0.0), ("mobilenet_v2", 0.3), ("mobilenet_v3_small", 0.0)]
    # MobileNetV2 pruned 30 % (92.6 %) bounds its 50 % variant below the best (94.7 %): that one is not trained.
    assert "the same backbone pruned 30% reached 92.60 %" in next(
        c.reason for c in candidates if c.name == "mobilenet_v2_p50_tflite_int8")
    assert len(calls) == len(state.trained) and sum(c.trained for c in candidates) == 4 * len(calls)
    parent_only = next(c for c in candidates if c.name == "efficientnet_lite0_p00_onnx_fp32")
    assert parent_only.trained and parent_only.status == "rejected" and "untrained" in parent_only.reason


def test_nothing_meets_the_budget():
    candidates = grid()
    calls: list = []
    run(candidates, Budget(latency_ms_p90=1.0), PRIOR, lambda c: (latency(c), size(c)), fake_train(calls))
    assert calls == [] and all(c.status == "rejected" for c in candidates)
    assert choose(candidates) is None


@pytest.mark.parametrize("accuracy_min", [99.0])
def test_accuracy_floor_rejects_trained_candidates_with_the_reason(accuracy_min):
    candidates = grid()
    run(candidates, Budget(latency_ms_p90=100.0, accuracy_min=accuracy_min), PRIOR,
        lambda c: (latency(c), size(c)), fake_train([]))
    assert not any(c.status == "chosen" for c in candidates)
    assert any("< accuracy_min 99 %" in c.reason for c in candidates)


def test_search_build_end_to_end_on_a_tiny_dataset(tmp_path):
    """A real `edgetl build` with `search:` (2 backbones × 2 prune ratios × ONNX fp32/int8, a size budget, which
    is deterministic, unlike latency at 32×32): the cheap filter, training, the choice, its bundle, the report."""
    import json

    import yaml
    from click.testing import CliRunner

    from conftest import make_image_folder, tiny_recipe
    from edgetl.cli import main

    data = tmp_path / "tiny"
    make_image_folder(data / "train", {"red": 12, "green": 12}, seed=1)
    make_image_folder(data / "val", {"red": 6, "green": 6}, seed=2)
    recipe = tiny_recipe(data, train={"epochs": 2}, verify={"max_accuracy_drop_pp": 100.0})
    recipe["name"] = "tiny-search"
    # latency_ms_p90 generous (every candidate meets it at 32x32), so the verdict stays deterministic while a real
    # measured p90 is held against a latency budget
    recipe["search"] = {"budget": {"size_mb": 5.0, "latency_ms_p90": 1000.0, "threads": 1},
                        "backbones": ["efficientnet_lite0", "mobilenet_v2"], "prune": [0.0, 0.5],
                        "formats": ["onnx"], "precisions": ["fp32", "int8"],
                        "models": {"mobilenet_v2": {"weights": "none"}}}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["build", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    search = summary["search"]
    assert search["grid_size"] == 8 and len(search["candidates"]) == 8
    statuses = {c["name"]: c for c in search["candidates"]}
    chosen = statuses[search["chosen"]]
    assert chosen["status"] == "chosen" and chosen["trained"] and chosen["size_bytes"] <= 5e6
    assert 0 < chosen["latency_ms_p90"] <= 1000.0 and search["budget"]["latency_ms_p90"] == 1000.0
    feasible = [c for c in search["candidates"] if c["status"] in ("chosen", "pareto")]
    assert chosen["val_accuracy"] == max(c["val_accuracy"] for c in feasible)
    assert all(c["reason"] for c in search["candidates"])
    # EfficientNet-Lite0 fp32 (about 13 MB) cannot meet 5 MB: rejected from its untrained measurement.
    too_big = statuses["efficientnet_lite0_p00_onnx_fp32"]
    assert too_big["status"] == "rejected" and "size" in too_big["reason"] and "untrained" in too_big["reason"]
    assert too_big["untrained_size_bytes"] > 5e6
    assert search["trained_count"] == sum(c["trained"] for c in search["candidates"]) <= 8
    # The summary is the chosen model's own, its artifacts under search/, and the chosen one is bundled.
    # The budget is off (12 val images): the chosen model's fp32 file is checked as parity with its torch model.
    assert all(a["prediction_agreement"] == 100 and a["max_abs_logit_diff"] < 1e-3
               for a in summary["artifacts"] if a["precision"] == "fp32")
    artifact = next(a for a in summary["artifacts"] if a["chosen"])
    assert (tmp_path / "run" / artifact["path"]).is_file() and artifact["path"].startswith(search["chosen_run"])
    assert (tmp_path / "run" / "bundle" / "model.json").is_file()
    page = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>Search" in page and search["chosen"] in page
    # Built again: every sub-run is reused, the same choice.
    again = CliRunner().invoke(main, ["build", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    assert again.exit_code == 0 and json.loads((tmp_path / "run" / "summary.json").read_text())["search"]["chosen"] \
        == search["chosen"]


def test_a_pruned_model_whose_parent_only_ties_the_best_is_not_trained():
    from edgetl.search import SearchState

    candidates = make_grid(["a"], [0.0, 0.5], ["onnx"], ["int8"])
    state = SearchState(candidates, Budget(latency_ms_p90=10))
    state.record(("a", 0.0), 95.0, {("onnx", "int8"): {"val_accuracy": 95.0, "latency_ms_p90": 5.0, "size_bytes": 1}})
    worth, reason = state.worth_training(("a", 0.5))
    assert not worth and "cannot beat a_p00_onnx_int8 (95.00 %)" in reason
    state.slack_pp = 0.5  # a pruned model may land a little above its parent by chance: the user can allow for it
    assert state.worth_training(("a", 0.5)) == (True, "")
    # ... and can ask for more than a gain the val split barely resolves before a model is worth training.
    state.min_gain_pp = 1.0
    worth, reason = state.worth_training(("a", 0.5))
    assert not worth and "cannot beat a_p00_onnx_int8 (95.00 %) by more than 1 pp: its unpruned parent reached" in reason
    state.min_gain_pp = 0.4
    assert state.worth_training(("a", 0.5)) == (True, "")


def test_a_more_pruned_model_is_bounded_by_its_less_pruned_sibling():
    from edgetl.search import SearchState

    candidates = make_grid(["a", "b"], [0.0, 0.3, 0.5], ["onnx"], ["int8"])
    state = SearchState(candidates, Budget(latency_ms_p90=10))
    fast = {("onnx", "int8"): {"val_accuracy": 0.0, "latency_ms_p90": 50.0, "size_bytes": 1}}  # over the budget
    state.record(("a", 0.0), 96.0, fast)
    state.record(("b", 0.0), 93.0, {("onnx", "int8"): {"val_accuracy": 93.0, "latency_ms_p90": 5.0, "size_bytes": 1}})
    assert state.worth_training(("a", 0.3)) == (True, "")  # its parent (96 %) could still beat 93 %
    state.record(("a", 0.3), 88.0, fast)  # pruning 30 % cost a lot: 50 % cannot do better than 88 %
    worth, reason = state.worth_training(("a", 0.5))
    assert not worth and "the same backbone pruned 30% reached 88.00 %" in reason


def test_a_search_no_candidate_meets_is_exit_1_with_every_reason(tmp_path):
    """A real latency budget no model can meet (a microsecond at p90): rejected from the untrained measurements,
    nothing trained, exit 1, every candidate's reason in the message's file and the first ones in the message."""
    import json

    import yaml

    from conftest import make_image_folder, run_cli, tiny_recipe

    data = tmp_path / "tiny"
    make_image_folder(data / "train", {"red": 6, "green": 6}, seed=1)
    make_image_folder(data / "val", {"red": 3, "green": 3}, seed=2)
    recipe = tiny_recipe(data, train={"epochs": 1})
    recipe["name"] = "tiny-nothing"
    recipe["search"] = {"budget": {"latency_ms_p90": 0.001, "threads": 1}, "backbones": ["efficientnet_lite0"],
                        "prune": [0.0], "formats": ["onnx"], "precisions": ["fp32", "int8"]}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out = run_cli("build", path, "--out", tmp_path / "run", "--quiet")
    assert code == 1 and "search: no candidate of search" in out and "meets search.budget" in out, out
    assert "efficientnet_lite0_p00_onnx_fp32: " in out and "efficientnet_lite0_p00_onnx_int8: " in out, out
    search = json.loads((tmp_path / "run" / "search.json").read_text())
    assert [c["status"] for c in search["candidates"]] == ["rejected", "rejected"]
    assert all("ms > budget 0.001 ms on local" in c["reason"] and "untrained" in c["reason"]
               for c in search["candidates"])
    assert search["trained_count"] == 0


def test_an_unreachable_budget_device_is_a_clear_error(tmp_path):
    """search.budget.device that does not answer: one message naming the field, after the untrained build only."""
    import socket

    import yaml

    from conftest import make_image_folder, run_cli, tiny_recipe

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n  BatchMode yes\n  ConnectTimeout 5\n  StrictHostKeyChecking no\n"
                      "  UserKnownHostsFile /dev/null\n")
    data = tmp_path / "tiny"
    make_image_folder(data / "train", {"red": 6, "green": 6}, seed=1)
    make_image_folder(data / "val", {"red": 3, "green": 3}, seed=2)
    recipe = tiny_recipe(data, train={"epochs": 1})
    recipe["search"] = {"budget": {"latency_ms_p90": 10.0, "device": f"ssh://127.0.0.1:{port}",
                                   "ssh_config": "ssh_config"},
                        "backbones": ["efficientnet_lite0"], "prune": [0.0], "formats": ["onnx"], "precisions": ["fp32"]}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out = run_cli("build", path, "--out", tmp_path / "run", "--quiet")
    assert code == 1 and "search.budget.device" in out and f"127.0.0.1:{port}" in out and "Traceback" not in out, out
    recipe["search"]["budget"]["ssh_config"] = "missing_config"
    path.write_text(yaml.safe_dump(recipe))
    code, out = run_cli("build", path, "--out", tmp_path / "run2", "--quiet")
    assert code == 2 and "search.budget.ssh_config" in out and "missing_config" in out, out
