"""The device path, measured: the runner's footprint and import time, and bundle → deploy → predict → remote bench
on the emulated arm64 device of the tests (qemu-user + sshd; needs root, see tests/arm64_device.py).

    python benchmarks/device.py [--out benchmarks/results/device.json]

1. Installed size on an aarch64 device of what a bundle's requirements.txt pulls in (numpy, Pillow and one runtime,
   with their dependencies), per runtime: pip-installed for aarch64 into a scratch folder and measured there.
2. Import time of the runner on this machine (fresh process, 5 runs, median): the runner package alone, and with
   the runtime module it loads.
3. The runner on every Python 3.9–3.12 found here (pyenv), with numpy 1.x and 2.x, in fresh venvs.
4. End to end on the emulated device, for TFLite int8 and ONNX int8 of a tiny CNN: `edgetl deploy` (bundle, copy,
   runtime check, predict 3 images, remote bench) and `edgetl bench --device`, wall time, and whether the
   device's predictions equal this machine's. Emulated latency means nothing and is not reported as latency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, targets_table, write_result

sys.path.insert(0, str(REPO / "tests"))
from arm64_device import PLATFORMS as AARCH64_TAGS  # noqa: E402

PLATFORMS = [a for p in AARCH64_TAGS for a in ("--platform", p)]
RUNTIMES = {"tflite": "ai-edge-litert", "onnx": "onnxruntime", "openvino": "openvino"}


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def footprint(scratch: Path) -> list[dict]:
    rows = []
    for fmt, runtime in RUNTIMES.items():
        target = scratch / f"site-{fmt}"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--only-binary=:all:", "--implementation",
                        "cp", "--python-version", "3.11", "--abi", "cp311", *PLATFORMS, "--target", str(target),
                        "numpy", "pillow", runtime], check=True, capture_output=True)
        packages = sorted(p.name.split("-")[0] for p in target.glob("*.dist-info"))
        rows.append({"format": fmt, "runtime": runtime, "packages": packages, "installed_mb": round(
            folder_size(target) / 1e6, 1)})
        print(f"  {fmt}: {rows[-1]['installed_mb']} MB ({', '.join(packages)})", flush=True)
    return rows


def import_times(run_dir: Path, scratch: Path) -> list[dict]:
    from edgetl.bundle import make_bundle

    rows = []
    for fmt, module in (("tflite", "edgetl_runner.runtime.tflite"), ("onnx", "edgetl_runner.runtime.onnx")):
        bundle = make_bundle(run_dir, fmt, "int8", scratch / f"bundle-{fmt}").folder
        runtime = "ai_edge_litert.interpreter" if fmt == "tflite" else "onnxruntime"
        times = {"runner": [], "runner_and_runtime": []}
        for _ in range(5):
            for key, code in (("runner", "import edgetl_runner.__main__, edgetl_runner.preprocess, "
                                         f"edgetl_runner.runtime, {module}"),
                              ("runner_and_runtime", f"import edgetl_runner.__main__, {module}, {runtime}")):
                script = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
                out = subprocess.run([sys.executable, "-c", script], cwd=bundle, capture_output=True, text=True,
                                     check=True)
                times[key].append(float(out.stdout.strip().splitlines()[-1]))
        rows.append({"format": fmt, **{f"{k}_import_s": round(statistics.median(v), 3) for k, v in times.items()}})
        print(f"  {fmt}: {rows[-1]}", flush=True)
    return rows


def pythons(run_dir: Path, scratch: Path) -> list[dict]:
    """The ONNX and TFLite int8 bundles' runner in a fresh venv of each Python 3.9–3.12 found here, with numpy 1.x and
    2.x (numpy 2 needs 3.10+), holding only numpy, Pillow and the runtimes: predictions against edgetl's own."""
    import numpy as np
    from device_fixtures import PREP, find_python, runner_env

    from conftest import make_image_folder
    from edgetl.bundle import make_bundle
    from edgetl.preprocess import Preprocessing, preprocess_files
    from edgetl.runtime import load_runner

    images = [str(p) for p in sorted(make_image_folder(scratch / "py-imgs", {"x": 3}, size=48).rglob("*.jpg"))]
    bundles, expected = {}, {}
    for fmt, suffix in (("onnx", ".onnx"), ("tflite", ".tflite")):
        bundles[fmt] = make_bundle(run_dir, fmt, "int8", scratch / f"py-bundle-{fmt}").folder
        expected[fmt] = load_runner(run_dir / "export" / f"{fmt}_int8" / f"model{suffix}").run(
            preprocess_files(images, Preprocessing.from_json(PREP)))
    rows = []
    for version in ("3.9", "3.10", "3.11", "3.12"):
        for numpy in ("numpy<2", "numpy>=2"):
            row = {"python": version, "numpy_spec": numpy}
            python = find_python(version)
            if python is None or (version == "3.9" and numpy == "numpy>=2"):
                rows.append({**row, "status": "no such Python here" if python is None else "numpy 2 needs 3.10+"})
                continue
            try:
                interpreter = runner_env(python, scratch / f"venv-{version}-{numpy[5]}",
                                         [numpy, "pillow", "onnxruntime", "ai-edge-litert"])
            except RuntimeError as exc:
                rows.append({**row, "status": f"install failed: {exc}"})
                continue
            for fmt, bundle in bundles.items():
                out = subprocess.run([str(interpreter), "-m", "edgetl_runner", "predict", "--json", *images],
                                     cwd=bundle, capture_output=True, text=True, timeout=300)
                info = subprocess.run([str(interpreter), "-m", "edgetl_runner", "info"], cwd=bundle,
                                      capture_output=True, text=True, timeout=120)
                if out.returncode or info.returncode:
                    rows.append({**row, "format": fmt, "status": f"failed: {(out.stderr or info.stderr)[-300:]}"})
                    continue
                logits = np.array([p["logits"] for p in json.loads(out.stdout)])
                device = json.loads(info.stdout)["device"]
                rows.append({**row, "format": fmt, "status": "ok", "python_version": device["python"],
                             "runtimes": {k: v for k, v in device["runtimes"].items() if v},
                             "max_abs_logit_diff": float(np.abs(logits - expected[fmt]).max()),
                             "predictions_identical": bool((logits.argmax(1) == expected[fmt].argmax(1)).all())})
            print("  " + "; ".join(f"{r.get('format', '-')}: {r['status']}" for r in rows if r["python"] == version
                                   and r["numpy_spec"] == numpy) + f"  (Python {version}, {numpy})", flush=True)
    return rows


def pythons_target(versions: list[dict]) -> dict:
    tried = [r for r in versions if "format" in r or r["status"].startswith("install failed")]
    ran = [r for r in tried if r["status"] == "ok"]
    pairs = sorted({f"{r['python_version']}/numpy {r['runtimes']['numpy']}" for r in ran})
    return {"figure": "runner on Python 3.9-3.12 x numpy 1.x/2.x (onnx, tflite int8)",
            "measured": f"{sum(r['predictions_identical'] for r in ran)} of {len(tried)} runs identical to edgetl "
                        f"({len(pairs)} Python/numpy pairs: {', '.join(pairs)})",
            "target": "3.9-3.12, numpy 1.x and 2.x",
            "met": bool(ran) and len(ran) == len(tried) and all(r["predictions_identical"] for r in ran)}


def end_to_end(run_dir: Path, scratch: Path) -> dict:
    import numpy as np
    from arm64_device import Unavailable, emulated_device
    from click.testing import CliRunner
    from device_fixtures import LABELS, PREP

    from conftest import make_image_folder
    from edgetl.cli import main
    from edgetl.preprocess import Preprocessing, preprocess_files
    from edgetl.runtime import load_runner

    images = sorted(make_image_folder(scratch / "imgs", {"x": 3}, size=48).rglob("*.jpg"))
    try:
        with emulated_device(scratch / "sshd") as (config, alias, _):
            rows = []
            for fmt, suffix in (("tflite", ".tflite"), ("onnx", ".onnx")):
                out = scratch / f"{fmt}.json"
                started = time.perf_counter()
                result = CliRunner().invoke(main, ["deploy", str(run_dir), "--device", f"ssh://{alias}",
                                                   "--ssh-config", str(config), "--format", fmt, "--precision", "int8",
                                                   "--runs", "3", *[a for p in images for a in ("--images", str(p))],
                                                   "--json", str(out)])
                deploy_s = time.perf_counter() - started
                answer = json.loads(out.read_text())[0] if out.is_file() else {"error": result.output}
                expected = load_runner(run_dir / "export" / f"{fmt}_int8" / f"model{suffix}").run(
                    preprocess_files([str(p) for p in images], Preprocessing.from_json(PREP)))
                same = (not answer["error"] and [p["top"][0]["label"] for p in answer["predictions"]]
                        == [LABELS[i] for i in expected.argmax(1)])
                diff = (float(np.abs(np.array([p["logits"] for p in answer["predictions"]]) - expected).max())
                        if not answer["error"] else None)
                started = time.perf_counter()
                bench = CliRunner().invoke(main, ["bench", str(run_dir / "export" / f"{fmt}_int8" / f"model{suffix}"),
                                                  "--device", f"ssh://{alias}", "--ssh-config", str(config), "--runs",
                                                  "3"])
                bench_s = time.perf_counter() - started
                device = answer.get("bench", {}).get("device", {})
                rows.append({"format": fmt, "precision": "int8", "deploy_exit": result.exit_code,
                             "bench_exit": bench.exit_code, "device_machine": device.get("machine"),
                             "device_cpu": device.get("cpu"), "device_runtimes": device.get("runtimes"),
                             "predictions_identical": bool(same), "max_abs_logit_diff": diff,
                             "deploy_seconds": round(deploy_s, 1), "remote_bench_seconds": round(bench_s, 1)})
                print(f"  {fmt} int8: {rows[-1]}", flush=True)
            return {"available": True, "rows": rows}
    except Unavailable as exc:
        print(f"  no emulated device: {exc}")
        return {"available": False, "reason": str(exc), "rows": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "device.json")
    args = parser.parse_args()
    from device_fixtures import tiny_run

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        run_dir = tiny_run(scratch / "run")
        print("device-side install size (aarch64 wheels)", flush=True)
        sizes = footprint(scratch)
        print("runner import time on this machine", flush=True)
        imports = import_times(run_dir, scratch)
        print("the runner on each Python 3.9-3.12 here, numpy 1.x and 2.x", flush=True)
        versions = pythons(run_dir, scratch)
        print("end to end on the emulated arm64 device", flush=True)
        e2e = end_to_end(run_dir, scratch)
    targets = [{"figure": f"{r['format']} int8 on emulated arm64: predictions identical to x86",
                "measured": f"{r['predictions_identical']} (max |Δlogit| {r['max_abs_logit_diff']:.1e}, "
                            f"uname -m {r['device_machine']})", "target": "identical",
                "met": r["predictions_identical"] and r["device_machine"] == "aarch64"} for r in e2e["rows"]]
    targets += [{"figure": f"runner import, {r['format']} (with its runtime)",
                 "measured": f"{r['runner_import_s']:.3f} s ({r['runner_and_runtime_import_s']:.3f} s)",
                 "target": "< 1 s", "met": r["runner_and_runtime_import_s"] < 1} for r in imports]
    targets.append(pythons_target(versions))
    result = {"footprint": sizes, "imports": imports, "pythons": versions, "end_to_end": e2e, "targets": targets}
    write_result(args.out, result, "\n".join(targets_table(targets)))


if __name__ == "__main__":
    main()
