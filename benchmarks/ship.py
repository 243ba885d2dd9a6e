"""Shipping and guarding a model, measured: the light install and the latency gate on the emulated arm64 device.

    python benchmarks/ship.py [--trials 10] [--skip-device] [--out benchmarks/results/ship.json]

1. The light install (`pip install .`, no extra): a fresh venv, its size on disk, the wall time of `pip install`
   (pip's download cache as this machine has it: the time of a re-install, not of a first download), and the wall
   time of `edgetl predict` there on one image (a cold process, median of 5) and on a folder of 100 256×264 JPEGs
   (per image: the folder's wall time less the one-image run's, over 99; median of 3).
2. The latency gate on the emulated arm64 device of the tests (qemu-user + sshd, needs root): a tiny CNN's baseline
   saved there once, then `--trials` times the same model against it (target: every trial passes) and `--trials`
   times the same network at 64×64 instead of 32×32 input (4× the pixels; target: every trial fails). Emulated
   latency is not reported as latency; only the verdicts and the measured ratios are.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, targets_table, write_result

sys.path.insert(0, str(REPO / "tests"))


def folder_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6, 1)


def light_install(scratch: Path, model_dir: Path) -> dict:
    from conftest import make_image_folder

    venv = scratch / "light"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    source = scratch / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "edgetl", source / "edgetl", ignore=shutil.ignore_patterns("__pycache__"))
    started = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    str(source)], check=True)
    install_s = time.perf_counter() - started
    packages = json.loads(subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                                         capture_output=True, text=True, check=True).stdout)
    photos = make_image_folder(scratch / "photos", {"x": 100}, size=256, seed=5)
    one = sorted(photos.rglob("*.jpg"))[0]
    edgetl = str(venv / "bin" / "edgetl")

    def wall(*args) -> float:
        started = time.perf_counter()
        subprocess.run([edgetl, "predict", str(model_dir), *map(str, args), "--json", "-"], check=True,
                       capture_output=True)
        return time.perf_counter() - started

    cold = sorted(wall(one) for _ in range(5))[2]  # the median of 5 fresh processes
    folder = sorted(wall(photos) for _ in range(3))[1]
    return {"venv_mb": folder_mb(venv), "pip_install_s": round(install_s, 1),
            "packages": sorted(p["name"] for p in packages), "has_torch": any(p["name"] == "torch" for p in packages),
            "predict_one_image_cold_s": round(cold, 3), "predict_100_images_s": round(folder, 3),
            "predict_per_image_ms": round((folder - cold) / 99 * 1000, 1), "model": str(model_dir)}


def device_gate(scratch: Path, trials: int) -> dict:
    from arm64_device import Unavailable, emulated_device
    from test_arm64 import _wide_onnx

    small = _wide_onnx(scratch / "models" / "small", 32)
    large = _wide_onnx(scratch / "models" / "large", 64)
    base = scratch / "baseline.json"
    try:
        with emulated_device(scratch / "sshd") as (ssh_config, alias, _):
            where = ["--device", f"ssh://{alias}", "--ssh-config", str(ssh_config), "--runs", "20", "--repeats", "6",
                     "--warmup", "3", "-q"]

            def bench(*args) -> subprocess.CompletedProcess:
                return subprocess.run([sys.executable, "-m", "edgetl.cli", "bench", *map(str, args), *where],
                                      capture_output=True, text=True, cwd=REPO)

            saved = bench(small, "--save-baseline", base)
            if saved.returncode != 0:
                raise SystemExit(f"saving the device baseline failed: {saved.stderr[-2000:]}")
            rows = []
            for trial in range(trials):
                for name, model in (("same model", small), ("4x the pixels", large)):
                    started = time.perf_counter()
                    out = scratch / f"gate-{trial}-{name[:4]}.json"
                    result = bench(model, "--baseline", base, "--json", out)
                    gate = json.loads(out.read_text())[0]["gate"] if out.is_file() else {}
                    rows.append({"trial": trial, "case": name, "exit_code": result.returncode,
                                 "status": gate.get("status"), "ratio": gate.get("ratio"), "mode": gate.get("mode"),
                                 "seconds": round(time.perf_counter() - started, 1)})
                    print(f"  trial {trial} {name}: exit {result.returncode}, {gate.get('status')} "
                          f"x{gate.get('ratio')}", flush=True)
    except Unavailable as exc:
        raise SystemExit(f"no emulated arm64 device: {exc}") from None
    return {"rows": rows, "runs": 20, "repeats": 6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--skip-device", action="store_true", help="only the light install")
    parser.add_argument("--model", type=Path, help="the export folder `edgetl predict` runs on the light install "
                                                   "(default: a tiny CNN's ONNX int8)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ship.json")
    args = parser.parse_args()
    from device_fixtures import tiny_run

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        run_dir = tiny_run(scratch / "run")
        print("the light install", flush=True)
        light = light_install(scratch, args.model or run_dir / "export" / "onnx_int8")
        gate = None if args.skip_device else device_gate(scratch, args.trials)
    targets = [{"figure": "light install: no torch", "measured": "no torch" if not light["has_torch"] else "torch",
                "target": "no torch", "met": not light["has_torch"]},
               {"figure": "light install: size, pip install time", "measured":
                f"{light['venv_mb']} MB, {light['pip_install_s']} s", "target": "measured", "met": True},
               {"figure": "edgetl predict: one image (cold), per image over 100", "measured":
                f"{light['predict_one_image_cold_s']} s, {light['predict_per_image_ms']} ms", "target": "measured",
                "met": True}]
    if gate:
        for case, wanted, target in (("same model", 0, "passes every trial"), ("4x the pixels", 1,
                                                                               "fails every trial")):
            rows = [r for r in gate["rows"] if r["case"] == case]
            hits = sum(r["exit_code"] == wanted for r in rows)
            targets.append({"figure": f"device gate, {case} vs its baseline (emulated arm64)",
                            "measured": f"{hits}/{len(rows)} (ratios {min(r['ratio'] or 0 for r in rows):.2f}–"
                                        f"{max(r['ratio'] or 0 for r in rows):.2f})",
                            "target": target, "met": hits == len(rows)})
    result = {"date": time.strftime("%Y-%m-%d"), "light_install": light, "device_gate": gate, "targets": targets}
    write_result(args.out, result, "\n".join(targets_table(targets)))


if __name__ == "__main__":
    main()
