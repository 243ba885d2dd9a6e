"""End to end: the README's quickstart on the real hymenoptera data and ImageNet weights in ../shared/cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import HYMENOPTERA, REPO, SHARED_CACHE, unavailable

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _real_data():
    if not HYMENOPTERA.is_dir():
        unavailable(f"real dataset not present at {HYMENOPTERA} (../shared/cache is only beside the repository on "
                    "the developers' and CI machines; set EDGETL_SHARED_CACHE to that folder to run this test from "
                    "elsewhere)")


def test_quickstart_builds_verified_benchmarked_onnx(tmp_path):
    env = {**os.environ, "EDGETL_CACHE": str(SHARED_CACHE), "TORCH_HOME": str(SHARED_CACHE / "torch")}
    cmd = [sys.executable, "-m", "edgetl.cli", "build", str(REPO / "recipes" / "quickstart.yaml"),
           "--out", str(tmp_path / "run")]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["classes"] == ["ants", "bees"]
    assert summary["data"]["train_images"] == 245 and summary["data"]["val_images"] == 153
    assert summary["model"]["backbone"] == "efficientnet_lite0" and summary["model"]["weights"] == "imagenet"
    # A regression guard well above chance and above the un-fine-tuned backbone; README has the measured figure.
    assert summary["model"]["val_accuracy"] >= 92.0
    artifacts = {(a["format"], a["precision"]): a for a in summary["artifacts"]}
    assert list(artifacts) == [(f, p) for f in ("onnx", "openvino", "tflite") for p in ("fp32", "int8")]
    for fmt in ("onnx", "openvino", "tflite"):  # every file evaluated on all 153 val images by its own runtime
        fp32, int8 = artifacts[(fmt, "fp32")], artifacts[(fmt, "int8")]
        assert fp32["max_abs_logit_diff"] < 1e-3 and fp32["accuracy_drop_pp"] == 0
        assert int8["accuracy_drop_pp"] <= 1.0 and int8["size_bytes"] < 0.4 * fp32["size_bytes"]
        assert (tmp_path / "run" / int8["model_json"]).is_file()
    assert (tmp_path / "run" / "report.md").is_file()
    # (an unchanged rebuild reusing every stage: tests/test_pipeline.py::test_unchanged_rebuild_reuses_every_stage)
