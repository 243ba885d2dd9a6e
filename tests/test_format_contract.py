"""A new format is one row of edgetl.formats plus its export and runtime modules: a throwaway `.npz` format
(tests/npz_format.py), registered in this test process only, goes through export → verify → bench → bundle with no
file of edgetl touched."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from conftest import REPO, run_cli, tiny_recipe
from edgetl import formats
from edgetl.formats import Format


@pytest.fixture
def npz_format():
    formats.register(Format("npz", ".npz", ("fp32",), "npz_format", "numpy", "npz_format", "onnxruntime",
                            ("onnxruntime",), "onnxruntime>=1.17 numpy>=1.21"))
    yield formats.FORMATS["npz"]
    del formats.FORMATS["npz"]  # the registration ends with the test


def test_a_format_in_the_table_is_exported_verified_benchmarked_and_bundled(npz_format, tiny_dataset, tmp_path):
    recipe = tmp_path / "npz.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_dataset, export={
        "formats": ["npz"], "precisions": ["fp32"]}, bench={"threads": [1], "min_runs": 5})))
    run = tmp_path / "run"
    code, out = run_cli("build", recipe, "--out", run)
    assert code == 0, out
    summary = json.loads((run / "summary.json").read_text())
    [artifact] = summary["artifacts"]
    assert (artifact["name"], artifact["format"], artifact["path"]) == ("npz_fp32", "npz", "export/npz_fp32/model.npz")
    assert artifact["max_abs_logit_diff"] < 1e-4  # verified: its own runtime gives the torch model's logits
    assert artifact["val_accuracy"] == summary["reference_model"]["val_accuracy"]
    assert artifact["latency_ms"]["p50"] > 0 and artifact["latency_ms"]["runs"] >= 5
    assert [(r["name"], r["format"], r["runtime"]) for r in summary["bench_rows"]] == [("npz_fp32", "npz",
                                                                                        "onnxruntime")]
    model_json = json.loads((run / "export/npz_fp32/model.json").read_text())
    assert model_json["format"] == "npz" and model_json["file"] == "model.npz"

    code, out = run_cli("bench", run / artifact["path"], "--runs", "10", "--repeats", "2", "--warmup", "1",
                        "--no-cold-start", "--json", tmp_path / "rows.json")
    assert code == 0, out
    [row] = json.loads((tmp_path / "rows.json").read_text())
    assert row["format"] == "npz" and row["runs"] == 10

    code, out = run_cli("bundle", run, "--format", "npz", "--precision", "fp32", "-o", tmp_path / "bundle")
    assert code == 0, out
    bundle = tmp_path / "bundle"
    assert (bundle / "model.npz").is_file() and json.loads((bundle / "model.json").read_text())["format"] == "npz"
    assert "onnxruntime>=1.17 numpy>=1.21" in (bundle / "requirements.txt").read_text()  # the row's device requirement
    assert (bundle / "edgetl_runner/runtime/npz_format.py").is_file()  # its runtime module goes with it


def test_no_file_of_edgetl_knows_the_throwaway_format():
    # What the test above proves is only worth something if edgetl itself never names the format.
    found = subprocess.run(["grep", "-rli", "npz_format\\|\\.npz\\b", "edgetl"], cwd=REPO, capture_output=True,
                           text=True)
    assert found.stdout == "", found.stdout
