"""The deployment side (data, preprocessing, runtimes, evaluation, bench, baselines, gate, edgetl.testing) imports
and runs with numpy, Pillow and the runtimes only: torch, rich, click, yaml and pydantic made unimportable."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import torch

from conftest import REPO, make_image_folder
from edgetl.export import ExportRequest
from edgetl.export.onnx import export_fp32

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchvision", "timm", "rich", "click", "yaml", "pydantic"}:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, NoTorch())
""")


def test_runtime_side_runs_with_torch_unimportable(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2)).eval()
    example = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    onnx_path = export_fp32(model, ExportRequest(tmp_path / "onnx", "fp32", example, {})).path
    paths = [onnx_path]
    for fmt in ("openvino", "tflite"):  # every runtime of the format table
        exporter = importlib.import_module(f"edgetl.export.{fmt}")
        paths.append(exporter.export(model, ExportRequest(tmp_path / fmt, "fp32", example, {"layout": "NCHW"},
                                                          onnx_file=onnx_path)).path)
    images = make_image_folder(tmp_path / "imgs" / "train", {"a": 2, "b": 2})
    script = BLOCK_TORCH + textwrap.dedent(f"""
        import json
        import numpy as np
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable")
        from edgetl.data import scan_dataset
        from edgetl.preprocess import Preprocessing, preprocess_files
        from edgetl.runtime import load_runner
        from edgetl.evaluate import runner_logits, top1_accuracy
        from edgetl.bench.harness import LatencyPlan, measure_latency
        index = scan_dataset({str(images.parent)!r}, val_dir=None, val_fraction=0.5)
        inputs = preprocess_files([s.path for s in index.train + index.val], Preprocessing(resize=18, crop=16))
        results = []
        for path in {[str(p) for p in paths]!r}:
            runner = load_runner(path)
            logits = runner_logits(runner, inputs)
            stats = measure_latency(runner, inputs[:1], LatencyPlan(warmup=1, min_runs=3, min_time_s=0))
            results.append([runner.format, list(logits.shape), stats["runs"]])
        from edgetl.bench.measure import BenchOptions, benchmark, find_models
        from edgetl.bench.baseline import compare, save_baseline
        from edgetl.testing import assert_latency
        rows = benchmark(find_models({[str(p) for p in paths]!r}),
                         BenchOptions(threads=(1, 2), time_s=0.1, repeats=6, warmup="auto", reference=True))
        save_baseline({str(tmp_path / "base.json")!r}, rows)
        gate = []
        # a baseline 3x faster than every trial now (a regression), and one 3x slower than every trial (faster now):
        # beyond the whole spread of a few-microsecond model's trials, so the verdict cannot hang on the noise
        for pick, factor in ((min, 1 / 3), (max, 3)):
            base = json.load(open({str(tmp_path / "base.json")!r}))
            for row in base["rows"]:
                row["trial_p50_ms"] = [pick(row["trial_p50_ms"]) * factor] * len(row["trial_p50_ms"])
            gate.append(sorted({{c.status for c in compare(base, rows, 0.10)}}))
        assert_latency({str(paths[0])!r}, p50_ms=1000, time_s=0.1, repeats=3)
        results += [[r["format"], r["threads"], r["cold_start_ms"] > 0, len(r["reference_trial_p50_ms"])]
                    for r in rows] + gate
        print(json.dumps({{"results": results,
                          "torch_loaded": any(m.split(".")[0] == "torch" for m in sys.modules)}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    formats = ("onnx", "openvino", "tflite")
    assert out == {"results": [[fmt, [4, 2], 3] for fmt in formats] + [[f, t, True, 6] for t in (1, 2) for f in formats]
                   + [["regression"], ["faster"]], "torch_loaded": False}
