"""Hostile and broken input, end to end through the `edgetl` command: every case is a clear message and an exit code,
or a handled outcome; never a traceback. One test per case (README: "Hostile input")."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from conftest import make_image_folder, tiny_recipe
from edgetl.cli import main


def edgetl(*args) -> tuple[int, str]:
    """Run the CLI in-process; an exception escaping it (a traceback for a user) fails the test."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}\n{result.output}")
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    make_image_folder(root / "train", {"red": 4, "green": 4}, size=24, seed=1)
    make_image_folder(root / "val", {"red": 2, "green": 2}, size=24, seed=2)
    return root


def check(tmp_path: Path, dataset: Path, **sections) -> tuple[int, str]:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(dataset, **sections)))
    return edgetl("check", path)


def noise(size=(32, 32)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)


def jpeg_bytes(mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise()).convert(mode).save(buf, "JPEG")
    return buf.getvalue()


# --- images: refused with the file named ---------------------------------------------------------------------------

BAD_IMAGES = {
    "truncated_jpeg": (lambda: jpeg_bytes()[: len(jpeg_bytes()) // 2], "truncated or corrupt"),
    "zero_byte_file": (lambda: b"", "empty file (0 bytes)"),
    "text_named_jpg": (lambda: b"<html>404 Not Found</html>\n" * 20, "not an image"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_a_bad_image_is_refused_naming_the_file(tmp_path, dataset, case):
    content, reason = BAD_IMAGES[case]
    (dataset / "train" / "red" / f"{case}.jpg").write_bytes(content())
    code, out = check(tmp_path, dataset)
    assert code == 2 and f"{case}.jpg" in out and reason in out, out
    code, out = check(tmp_path, dataset, data={"skip_bad_images": True})  # or skipped and counted, on request
    assert code == 0 and "1 bad images skipped" in out, out


def test_a_decompression_bomb_is_refused(tmp_path, dataset):
    # 12000 × 12000 = 144 Mpixel, over Pillow's 89 Mpixel limit, in a PNG of a few hundred kB
    Image.new("1", (12000, 12000)).save(dataset / "train" / "red" / "bomb.png")
    assert (dataset / "train" / "red" / "bomb.png").stat().st_size < 2_000_000
    code, out = check(tmp_path, dataset)
    assert code == 2 and "bomb.png" in out and "decompression bomb" in out, out


def test_a_named_pipe_called_jpg_is_refused_without_blocking(tmp_path, dataset):
    os.mkfifo(dataset / "train" / "red" / "pipe.jpg")  # opening it to read would wait forever for a writer
    code, out = check(tmp_path, dataset)
    assert code == 2 and "pipe.jpg" in out and "not a regular file" in out, out


# --- images: handled, converted to RGB -----------------------------------------------------------------------------

def _sixteen_bit_png(path: Path) -> None:
    Image.fromarray(np.linspace(0, 65535, 32 * 32, dtype=np.uint16).reshape(32, 32)).save(path)


def _cmyk_jpeg(path: Path) -> None:
    path.write_bytes(jpeg_bytes("CMYK"))


def _animated_gif(path: Path) -> None:
    frames = [Image.new("P", (32, 32), i) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


@pytest.mark.parametrize(("name", "write", "mode"), [("deep.png", _sixteen_bit_png, "I;16"),
                                                    ("print.jpg", _cmyk_jpeg, "CMYK"),
                                                    ("moving.gif", _animated_gif, "P")])
def test_unusual_image_modes_are_converted_and_counted(tmp_path, dataset, name, write, mode):
    write(dataset / "train" / "red" / name)
    assert Image.open(dataset / "train" / "red" / name).mode == mode
    code, out = check(tmp_path, dataset)
    assert code == 0 and "9 train / 4 val" in out and "1 converted to RGB" in out, out


# --- folders ------------------------------------------------------------------------------------------------------

def test_a_symlink_loop_in_the_data_folder_terminates(tmp_path, dataset):
    os.symlink(dataset / "train", dataset / "train" / "red" / "loop")
    code, out = check(tmp_path, dataset)
    assert code == 0 and "8 train / 4 val" in out, out


def test_a_class_with_one_image_trains_or_says_why(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", {"red": 1, "green": 6}, size=24, seed=1)
    code, out = check(tmp_path, root)  # no val folder: a val split is carved from train, but not from one image
    assert code == 0 and "6 train / 1 val" in out and "warning: no val image of red" in out, out
    make_image_folder(root / "val", {"red": 2, "green": 2}, size=24, seed=2)
    code, out = check(tmp_path, root)  # with its own val folder one train image is enough to run
    assert code == 0 and "7 train / 4 val" in out and "warning" not in out, out


# --- recipes --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("name: x\ndata: {dataset: x}\ntrain: {epochs: ten}\n", "train.epochs"),
    ("name: x\ndata: {dataset: x}\ntrain: {epocs: 3}\n", "epochs"),
    ("name: !!python/object/apply:os.system ['touch PWNED']\ndata: {dataset: x}\n", "not valid YAML"),
])
def test_a_hostile_or_mistyped_recipe_is_refused(tmp_path, text, expected, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    code, out = edgetl("check", path)
    assert code == 2 and "recipe.yaml" in out and expected in out, out
    assert not (tmp_path / "PWNED").exists()


# --- files from other people ---------------------------------------------------------------------------------------

def test_a_checkpoint_with_code_in_its_pickle_is_refused_unrun(tmp_path, dataset):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"state_dict": {"weight": Payload()}}))
    code, out = check(tmp_path, dataset, model={"weights": str(evil)})
    assert code == 2 and "evil.pth" in out and "weights_only" in out, out
    assert not marker.exists()


def test_a_dataset_archive_escaping_its_folder_is_refused(tmp_path, monkeypatch):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/red/a.jpg", jpeg_bytes())
        zf.writestr("../../escaped.txt", "outside")
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGETL_CACHE", str(cache))
    path = tmp_path / "recipe.yaml"
    recipe = tiny_recipe(tmp_path, data={"dataset": "evil", "url": archive.as_uri()})
    del recipe["data"]["path"]
    path.write_text(yaml.safe_dump(recipe))
    code, out = edgetl("check", path)
    assert code == 2 and "Refusing to extract" in out and "../../escaped.txt" in out, out
    assert not list(tmp_path.rglob("escaped.txt")) and not (cache / "datasets" / "evil").exists()


def test_an_onnx_file_that_is_not_onnx_is_refused(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    code, out = edgetl("bench", fake, "-n", 5)
    assert code == 2 and "model.onnx" in out, out


def test_a_baseline_from_another_version_is_refused(tmp_path, run_dir):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema": "edgetl-latency-baseline", "schema_version": 0, "edgetl_version": "0.0.1",
                               "rows": []}))
    model = next(run_dir.rglob("*.onnx"))
    code, out = edgetl("bench", model, "-n", 5, "--baseline", old)
    assert code == 2 and "old.json" in out and "0.0.1" in out, out


def test_an_image_that_breaks_after_the_scan_stops_training_with_one_line_from_a_worker(tmp_path, dataset):
    from edgetl.backbones import create_model
    from edgetl.data import Sample
    from edgetl.errors import DataError
    from edgetl.preprocess import Preprocessing
    from edgetl.recipe import TrainSection
    from edgetl.train import fine_tune

    images = sorted((dataset / "train").rglob("*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(images[0].read_bytes()[:200])  # e.g. overwritten by a sync tool mid-build
    created = create_model("efficientnet_lite0", 2)
    created.preprocessing = Preprocessing(resize=36, crop=32)
    samples = [Sample(str(p), i % 2) for i, p in enumerate(images)] + [Sample(str(broken), 0)]
    cfg = TrainSection(epochs=1, batch_size=3, warmup_epochs=0, probe_epochs=0)
    with pytest.raises(DataError) as caught:
        fine_tune(created, samples, np.zeros((2, 3, 32, 32), np.float32), np.zeros(2, int), cfg, workers=2)
    message = str(caught.value)
    assert message.startswith(f"Cannot read image {broken}") and "Traceback" not in message and "\n" not in message


def test_a_loader_worker_killed_mid_epoch_is_one_clear_error(tmp_path, dataset, monkeypatch):
    import signal

    from edgetl import train
    from edgetl.backbones import create_model
    from edgetl.data import Sample
    from edgetl.errors import DataError
    from edgetl.preprocess import Preprocessing
    from edgetl.recipe import TrainSection

    main_process = os.getpid()

    def load_or_die(path):  # a worker's first image kills it, as the OOM killer would (workers are forked with this)
        assert os.getpid() != main_process  # workers=2: the main process never reads an image itself
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(train, "load_rgb", load_or_die)
    monkeypatch.setattr(train, "_worker_context", lambda workers: None)  # forked workers carry the patch
    created = create_model("efficientnet_lite0", 2)
    created.preprocessing = Preprocessing(resize=36, crop=32)
    samples = [Sample(str(p), i % 2) for i, p in enumerate(sorted((dataset / "train").rglob("*.jpg")))]
    cfg = TrainSection(epochs=1, batch_size=3, warmup_epochs=0, probe_epochs=0)
    with pytest.raises(DataError, match="data loader worker process died.*data.workers to 0"):
        train.fine_tune(created, samples, np.zeros((2, 3, 32, 32), np.float32), np.zeros(2, int), cfg, workers=2)
