"""Tests for edgetl.data: image decoding, dataset scanning/splitting, fingerprinting and dataset resolution."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl import data, samples
from edgetl.data import (
    DatasetIndex,
    Sample,
    check_image,
    fingerprint_tree,
    load_rgb,
    resolve_dataset,
    scan_dataset,
)
from edgetl.errors import DataError

SIZE = (16, 16)


def make_image(path: Path, mode: str = "RGB", color: object = (200, 30, 30), fmt: str | None = None) -> Path:
    """Write a small solid image at `path` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, SIZE, color).save(path, format=fmt)
    return path


def make_dataset(root: Path, counts: dict[str, int], split: str = "train") -> dict[str, list[Path]]:
    """Create root/split/<class>/img_<i>.png for each class with the given number of images."""
    made = {}
    for cls, n in counts.items():
        made[cls] = [make_image(root / split / cls / f"img_{i:03d}.png", color=(i * 7 % 256, 10, 20)) for i in range(n)]
    return made


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------------------------------------------------------
# load_rgb / check_image
# ---------------------------------------------------------------------------------------------------------------


def test_rgba_transparent_pixel_becomes_white(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.png", "RGBA", (10, 20, 30, 0))
    im = load_rgb(path)
    assert im.mode == "RGB"
    assert im.size == SIZE
    assert im.getpixel((0, 0)) == (255, 255, 255)


def test_rgba_half_transparent_is_composited_on_white(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.png", "RGBA", (0, 0, 0, 128))
    r, g, b = load_rgb(path).getpixel((3, 3))
    assert r == g == b
    assert 120 <= r <= 135  # half-way between black and the white background


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.zeros(SIZE, dtype=np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2] = 65535, 128 * 257, 0
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert check_image(str(path)) == ("I;16", None)
    im = load_rgb(path)
    assert im.getpixel((0, 0)) == (255, 255, 255)
    assert im.getpixel((1, 0)) == (128, 128, 128)  # clipping would give 255 here
    assert im.getpixel((2, 0)) == (0, 0, 0)


def test_thirty_two_bit_gray_beyond_sixteen_bits_is_stretched(tmp_path: Path) -> None:
    arr = np.zeros(SIZE, dtype=np.int32)
    arr[0, 0], arr[0, 1] = 1_000_000, 500_000
    path = tmp_path / "i32.tif"
    Image.fromarray(arr).save(path)
    assert check_image(str(path)) == ("I", None)
    im = load_rgb(path)
    assert [im.getpixel((x, 0))[0] for x in range(3)] == [255, 128, 0]


def test_palette_with_transparency_becomes_white(tmp_path: Path) -> None:
    im = Image.new("P", SIZE, 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((5, 5), 1)
    path = tmp_path / "p.png"
    im.save(path, transparency=0)
    out = load_rgb(path)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((5, 5)) == (0, 255, 0)


def test_gray_and_bilevel_become_rgb(tmp_path: Path) -> None:
    assert load_rgb(make_image(tmp_path / "l.png", "L", 77)).getpixel((0, 0)) == (77, 77, 77)
    assert load_rgb(make_image(tmp_path / "b.bmp", "1", 1)).getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(make_image(tmp_path / "la.png", "LA", (50, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", SIZE, (255, 0, 0)), Image.new("RGB", SIZE, (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert load_rgb(path).getpixel((0, 0)) == (255, 0, 0)


def test_load_rgb_raises_data_error_naming_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.jpg"):
        load_rgb(bad)


def test_check_image_reasons(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.touch()
    assert check_image(str(empty)) == (None, "empty file (0 bytes)")
    mode, reason = check_image(str(truncated_jpeg(tmp_path / "t.jpg")))
    assert mode is None and "truncated" in reason
    assert check_image(str(make_image(tmp_path / "ok.jpg"))) == ("RGB", None)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count open files")
def test_no_file_handles_left_open(tmp_path: Path) -> None:
    good = make_image(tmp_path / "ok.gif", "P", 3)
    bad = truncated_jpeg(tmp_path / "t.jpg")
    load_rgb(good), check_image(str(bad))  # warm up lazily imported plugins
    before = open_fds()
    for _ in range(20):
        load_rgb(good)
        check_image(str(bad))
    assert open_fds() == before


def test_decompression_bomb_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_image(tmp_path / "big.png")  # 256 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # Pillow only warns between 1x and 2x the limit
    with pytest.warns(Image.DecompressionBombWarning):
        mode, reason = check_image(str(path))
    assert mode is None and "decompression bomb" in reason
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # above 2x Pillow raises
    with pytest.raises(DataError, match="decompression bomb"):
        load_rgb(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # a caller who disables the limit is respected
    assert check_image(str(path)) == ("RGB", None)


# ---------------------------------------------------------------------------------------------------------------
# scan_dataset
# ---------------------------------------------------------------------------------------------------------------


def test_scan_with_val_folder(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"dog": 3, "cat": 2, "bird": 1})
    make_dataset(tmp_path, {"dog": 1, "cat": 2, "bird": 1}, split="val")
    calls: list[tuple[int, int]] = []
    index = scan_dataset(tmp_path, workers=2, progress=lambda done, total: calls.append((done, total)))
    assert index.classes == ["bird", "cat", "dog"]
    assert index.val_source == "folder"
    assert index.root == str(tmp_path)
    assert index.class_counts() == {"train": {"bird": 1, "cat": 2, "dog": 3}, "val": {"bird": 1, "cat": 2, "dog": 1}}
    for sample in index.train + index.val:
        assert os.path.isabs(sample.path)
        assert Path(sample.path).parent.name == index.classes[sample.label]
    assert all("/val/" in s.path for s in index.val)
    assert calls == [(i, 10) for i in range(1, 11)]
    assert index.converted == {} and index.bad_images == [] and index.ignored_files == []


def test_index_json_round_trip(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 2, "b": 2})
    index = scan_dataset(tmp_path)
    obj = index.to_json()
    assert obj["class_counts"] == index.class_counts()
    import json

    assert DatasetIndex.from_json(json.loads(json.dumps(obj))) == index
    with pytest.raises(DataError, match="malformed"):
        DatasetIndex.from_json({"root": "x"})


def test_images_found_recursively_and_non_images_ignored(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 2, "b": 2})
    nested = make_image(tmp_path / "train" / "a" / "sub" / "deep.JPG", fmt="JPEG")
    (tmp_path / "train" / "a" / "labels.txt").write_text("x")
    (tmp_path / "train" / "b" / ".DS_Store").write_text("x")
    make_image(tmp_path / "train" / "b" / ".hidden" / "h.png")
    make_image(tmp_path / "train" / ".cache" / "x.png")  # hidden folder is not a class
    index = scan_dataset(tmp_path, val_dir=None, val_fraction=0.4)
    assert index.classes == ["a", "b"]
    assert index.ignored_files == [str(tmp_path / "train" / "a" / "labels.txt")]
    paths = {s.path for s in index.train + index.val}
    assert str(nested) in paths
    assert len(paths) == 5 and not any("/." in p for p in paths)


def test_symlink_loop_terminates(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 2, "b": 2})
    os.symlink(tmp_path / "train" / "a", tmp_path / "train" / "a" / "loop")
    index = scan_dataset(tmp_path, val_dir=None)
    assert index.class_counts()["train"]["a"] + index.class_counts()["val"]["a"] == 2


def test_converted_modes_are_counted(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"b": 2})
    cls = tmp_path / "train" / "a"
    make_image(cls / "gray.png", "L", 100)
    make_image(cls / "gray2.jpg", "L", 100)
    make_image(cls / "pal.gif", "P", 5)
    make_image(cls / "rgba.png", "RGBA", (1, 2, 3, 0))
    make_image(cls / "cmyk.jpg", "CMYK", (0, 0, 0, 0))
    Image.fromarray(np.full(SIZE, 1000, dtype=np.uint16)).save(cls / "g16.png")
    make_image(cls / "rgb.png")
    index = scan_dataset(tmp_path, val_dir=None)
    assert index.converted == {"CMYK": 1, "I;16": 1, "L": 2, "P": 1, "RGBA": 1}


def test_bad_images_raise_one_error_listing_all(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 2, "b": 2})
    trunc = truncated_jpeg(tmp_path / "train" / "a" / "trunc.jpg")
    empty = tmp_path / "train" / "b" / "empty.png"
    empty.touch()
    text = tmp_path / "train" / "b" / "text.jpg"
    text.write_text("hello, I am not a JPEG")
    with pytest.raises(DataError) as info:
        scan_dataset(tmp_path, val_dir=None)
    msg = str(info.value)
    assert "3 image(s)" in msg
    for path in (trunc, empty, text):
        assert str(path) in msg
    assert "data.skip_bad_images: true" in msg


def test_skip_bad_images_records_them(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 2, "b": 2})
    trunc = truncated_jpeg(tmp_path / "train" / "a" / "trunc.jpg")
    empty = tmp_path / "train" / "b" / "empty.png"
    empty.touch()
    text = tmp_path / "train" / "b" / "text.jpg"
    text.write_text("hello")
    index = scan_dataset(tmp_path, val_dir=None, skip_bad_images=True)
    assert [b["path"] for b in index.bad_images] == sorted(str(p) for p in (trunc, empty, text))
    assert all(b["reason"] for b in index.bad_images)
    kept = {s.path for s in index.train + index.val}
    assert len(kept) == 4 and not kept & {str(trunc), str(empty), str(text)}


def test_more_than_twenty_bad_images_are_summarised(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 2, "b": 2})
    for i in range(25):
        (tmp_path / "train" / "a" / f"bad_{i:02d}.png").touch()
    with pytest.raises(DataError, match="25 image") as info:
        scan_dataset(tmp_path, val_dir=None)
    assert "and 5 more" in str(info.value)
    assert "bad_19.png" in str(info.value) and "bad_20.png" not in str(info.value)


def test_skipping_that_empties_a_class_is_an_error(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 2})
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "x.png").touch()
    with pytest.raises(DataError, match=r"train/b"):
        scan_dataset(tmp_path, val_dir=None, skip_bad_images=True)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "train" / "empty_cls").mkdir()
    (tmp_path / "train" / "empty_cls" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty_cls"):
        scan_dataset(tmp_path)


def test_empty_class_in_val_is_named(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 2, "b": 2})
    make_dataset(tmp_path, {"a": 1}, split="val")
    (tmp_path / "val" / "b").mkdir()
    with pytest.raises(DataError, match=r"val/b"):
        scan_dataset(tmp_path)


def test_val_classes_differ(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 2, "b": 2, "c": 2})
    make_dataset(tmp_path, {"a": 1, "b": 1, "zebra": 1}, split="val")
    with pytest.raises(DataError) as info:
        scan_dataset(tmp_path)
    msg = str(info.value)
    assert "missing from" in msg and "c" in msg.split("missing from")[1]
    assert "zebra" in msg


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "no 'train' folder"),
        (lambda root: make_image(root / "train" / "loose.png"), "no class folders.*1 image"),
        (lambda root: make_dataset(root, {"only": 2}), "only one class"),
    ],
)
def test_layout_errors(tmp_path: Path, setup, match: str) -> None:
    root = tmp_path / "ds"
    setup(root)
    with pytest.raises(DataError, match=match):
        scan_dataset(root)


def test_split_is_stratified_and_deterministic(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 10, "b": 5, "c": 2, "d": 1})
    first = scan_dataset(tmp_path, val_fraction=0.2, seed=1)
    assert first.val_source == "split"
    assert first.class_counts()["val"] == {"a": 2, "b": 1, "c": 1, "d": 0}
    assert first.class_counts()["train"] == {"a": 8, "b": 4, "c": 1, "d": 1}
    assert not {s.path for s in first.train} & {s.path for s in first.val}
    again = scan_dataset(tmp_path, val_fraction=0.2, seed=1)
    assert (again.train, again.val) == (first.train, first.val)
    other = scan_dataset(tmp_path, val_fraction=0.2, seed=2)
    assert {s.path for s in other.val} != {s.path for s in first.val}


def relative_val(index: DatasetIndex) -> list[str]:
    return sorted(os.path.relpath(s.path, index.root) for s in index.val)


def test_split_ignores_listing_order_and_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dataset(tmp_path / "one", {"a": 12, "b": 12})
    make_dataset(tmp_path / "two", {"a": 12, "b": 12})
    base = scan_dataset(tmp_path / "one", seed=3)
    real_walk = os.walk

    def reversed_walk(top, **kwargs):
        for dirpath, dirnames, filenames in real_walk(top, **kwargs):
            yield dirpath, dirnames, filenames[::-1]

    monkeypatch.setattr(data.os, "walk", reversed_walk)
    moved = scan_dataset(tmp_path / "two", seed=3)
    assert relative_val(moved) == relative_val(base)


def test_missing_val_dir_falls_back_to_split(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": 5, "b": 5})
    assert scan_dataset(tmp_path, val_dir="validation").val_source == "split"
    with pytest.raises(DataError, match="val_fraction"):
        scan_dataset(tmp_path, val_dir=None, val_fraction=0.0)


# ---------------------------------------------------------------------------------------------------------------
# fingerprint_tree
# ---------------------------------------------------------------------------------------------------------------


def test_fingerprint_tracks_file_changes(tmp_path: Path) -> None:
    files = make_dataset(tmp_path, {"a": 2, "b": 2})
    fp = fingerprint_tree(tmp_path)
    assert fingerprint_tree(tmp_path) == fp
    (tmp_path / "train" / ".DS_Store").write_text("finder noise")
    assert fingerprint_tree(tmp_path) == fp  # hidden files are never read, so they must not invalidate caches
    target = files["a"][0]
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, touched
    touched = fingerprint_tree(tmp_path)
    assert touched != fp
    target.write_bytes(target.read_bytes() + b"\0")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # only the size differs from `touched`
    resized = fingerprint_tree(tmp_path)
    assert resized not in (fp, touched)
    files["b"][0].rename(files["b"][0].with_name("renamed.png"))
    assert fingerprint_tree(tmp_path) not in (fp, touched, resized)


# ---------------------------------------------------------------------------------------------------------------
# resolve_dataset / default_cache_dir
# ---------------------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_zip(path: Path, top: str = "hymenoptera_data") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for member in ("train/ants/1.png", "train/bees/1.png", "val/ants/1.png", "val/bees/1.png"):
            buf = io.BytesIO()
            Image.new("RGB", SIZE).save(buf, "PNG")
            zf.writestr(f"{top}/{member}" if top else member, buf.getvalue())
        zf.writestr("__MACOSX/._junk", b"x")
    return path


def cache_leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() or p.is_symlink())


def test_resolve_uses_given_path(tmp_path: Path) -> None:
    assert resolve_dataset(None, str(tmp_path), None, None, tmp_path / "cache") == tmp_path
    with pytest.raises(DataError, match="nowhere"):
        resolve_dataset("x", str(tmp_path / "nowhere"), "http://unused.invalid/x.zip", None, tmp_path / "cache")


def test_resolve_uses_cached_folder_without_network(tmp_path: Path) -> None:
    cached = tmp_path / "cache" / "datasets" / "flowers"
    (cached / "train").mkdir(parents=True)
    assert resolve_dataset("flowers", None, None, None, tmp_path / "cache") == cached
    # the URL must not be touched when the cache already has the dataset
    assert resolve_dataset("flowers", None, "http://unused.invalid/f.zip", "0" * 64, tmp_path / "cache") == cached


def test_resolve_without_anything_mentions_cache_env(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="EDGETL_CACHE") as info:
        resolve_dataset("flowers", None, None, None, tmp_path / "cache")
    assert "flowers" in str(info.value) and str(tmp_path / "cache" / "datasets" / "flowers") in str(info.value)


def test_resolve_downloads_and_strips_top_folder(tmp_path: Path) -> None:
    archive = dataset_zip(tmp_path / "hymenoptera_data.zip")
    cache = tmp_path / "cache"
    root = resolve_dataset("bees", None, archive.as_uri(), sha256(archive).upper(), cache)
    assert root == cache / "datasets" / "bees"
    assert (root / "train" / "ants" / "1.png").is_file()
    assert not (root / "__MACOSX").exists()
    assert cache_leftovers(cache) == sorted(str(p.relative_to(cache)) for p in root.rglob("*.png"))
    assert len(scan_dataset(root).classes) == 2


def test_resolve_tar_gz_without_wrapper_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_dataset(src, {"a": 1, "b": 1})
    archive = tmp_path / "ds.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "train", arcname="train")
        tf.add(src / "train", arcname="extra")
    root = resolve_dataset("ds", None, archive.as_uri(), None, tmp_path / "cache")
    assert (root / "train" / "a" / "img_000.png").is_file()
    assert (root / "extra").is_dir()


def test_resolve_rejects_wrong_sha256(tmp_path: Path) -> None:
    archive = dataset_zip(tmp_path / "d.zip")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="sha256"):
        resolve_dataset("d", None, archive.as_uri(), "0" * 64, cache)
    assert cache_leftovers(cache) == []
    assert not (cache / "datasets" / "d").exists()


def test_resolve_rejects_zip_escaping_target(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/train/a/1.txt", b"fine")
        zf.writestr("../evil", b"pwned")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"\.\./evil"):
        resolve_dataset("evil", None, archive.as_uri(), None, cache)
    assert cache_leftovers(cache) == []
    assert list((cache / "datasets").iterdir()) == []
    assert not (cache / "evil").exists() and not (tmp_path / "evil").exists()


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (tar_member("data/train/link", tarfile.SYMTYPE, "../../../outside"), "links outside"),
        (tar_member("data/train/abs", tarfile.SYMTYPE, "/etc/passwd"), "absolute path"),
        (tar_member("data/train/hard", tarfile.LNKTYPE, "../secret"), "links outside"),
        (tar_member("data/../../escape.txt"), r"escapes the target folder"),
        (tar_member("/tmp/abs.txt"), "absolute path"),
        (tar_member("data/train/fifo", tarfile.FIFOTYPE), "device file or FIFO"),
    ],
)
def test_resolve_rejects_unsafe_tar_members(tmp_path: Path, member: tarfile.TarInfo, match: str) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.addfile(tar_member("data/train/a/ok.txt"), io.BytesIO(b""))
        tf.addfile(member)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=match):
        resolve_dataset("evil", None, archive.as_uri(), None, cache)
    assert cache_leftovers(cache) == []


def test_resolve_rejects_non_archive_download(tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_text("<html>not a dataset</html>")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="not a supported archive"):
        resolve_dataset("web", None, page.as_uri(), None, cache)
    assert cache_leftovers(cache) == []


def test_resolve_download_failure_explains_offline_option(tmp_path: Path) -> None:
    url = (tmp_path / "missing.zip").as_uri()
    with pytest.raises(DataError, match="could not be downloaded") as info:
        resolve_dataset("gone", None, url, None, tmp_path / "cache")
    assert url in str(info.value) and str(tmp_path / "cache" / "datasets" / "gone") in str(info.value)


def test_resolve_rejects_unsafe_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a valid dataset name"):
        resolve_dataset("../up", None, None, None, tmp_path / "cache")


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path))
    assert data.default_cache_dir() == tmp_path
    monkeypatch.delenv("EDGETL_CACHE")
    assert data.default_cache_dir() == Path.home() / ".cache" / "edgetl"


def test_sample_is_frozen() -> None:
    sample = Sample("/x.png", 0)
    with pytest.raises(AttributeError):
        sample.label = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------------
# data.fallback: the embedded sample used when the dataset is neither cached nor downloadable
# ---------------------------------------------------------------------------------------------------------------

SAMPLE = samples.SAMPLES_DIR / "trashnet5-mini"
UNREACHABLE = "http://127.0.0.1:9/hymenoptera_data.zip"  # the discard port: refused at once
SAMPLE_CLASSES = ["cardboard", "glass", "metal", "paper", "plastic"]


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)


def resolve_with_fallback(cache: Path, url: str | None, said: list[str], **kwargs) -> Path:
    return resolve_dataset("hymenoptera_data", None, url, None, cache, recipe_file="quickstart.yaml",
                           fallback="trashnet5-mini", say=said.append, **kwargs)


def test_fallback_used_offline_without_any_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETL_OFFLINE", "1")
    no_network(monkeypatch)
    said: list[str] = []
    cache = tmp_path / "cache"
    assert resolve_with_fallback(cache, UNREACHABLE, said) == SAMPLE
    assert said == [f"hymenoptera_data is not in {cache / 'datasets'} and could not be downloaded (downloads are "
                    "off: EDGETL_OFFLINE=1): using the embedded sample trashnet5-mini (5 classes, 250 images, MIT "
                    f"licence, {SAMPLE}) instead (data.fallback)"]
    assert not cache.exists()  # the sample is read in place: nothing is copied into (or created in) the cache


def test_fallback_used_when_the_download_fails(tmp_path: Path) -> None:
    said: list[str] = []
    cache = tmp_path / "cache"
    assert resolve_with_fallback(cache, UNREACHABLE, said) == SAMPLE
    assert len(said) == 1 and "could not be downloaded (" in said[0] and "trashnet5-mini" in said[0], said
    assert not cache.exists() or cache_leftovers(cache) == []


def test_fallback_used_without_url_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    assert resolve_with_fallback(tmp_path / "cache", None, said) == SAMPLE
    assert said[0].startswith(f"hymenoptera_data is not in {tmp_path / 'cache' / 'datasets'} and quickstart.yaml "
                              "gives no data.url to download it from: using the embedded sample trashnet5-mini")


def test_download_broken_mid_stream_leaves_nothing_and_falls_back(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    class Dropped(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            if self.tell():
                raise ConnectionResetError("connection reset by peer")
            return super().read(1000)

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: Dropped(b"PK" * 100_000))
    said: list[str] = []
    cache = tmp_path / "cache"
    assert resolve_with_fallback(cache, "http://example.invalid/d.zip", said) == SAMPLE
    assert "ConnectionResetError" in said[0]
    assert cache_leftovers(cache) == []  # the half-written archive was removed
    assert not (cache / "datasets").exists()


def test_fallback_not_used_when_the_dataset_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETL_OFFLINE", "1")
    cached = tmp_path / "cache" / "datasets" / "hymenoptera_data"
    (cached / "train").mkdir(parents=True)
    said: list[str] = []
    assert resolve_with_fallback(tmp_path / "cache", UNREACHABLE, said) == cached
    assert said == []


def test_fallback_not_used_for_a_bad_download(tmp_path: Path) -> None:
    # a download that arrived but is wrong (sha256, corrupt, unsafe) is an error to see, not a reason to substitute
    archive = dataset_zip(tmp_path / "d.zip")
    with pytest.raises(DataError, match="sha256"):
        resolve_dataset("d", None, archive.as_uri(), "0" * 64, tmp_path / "cache", fallback="trashnet5-mini",
                        say=pytest.fail)


def test_without_fallback_the_errors_are_unchanged(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    target = cache / "datasets" / "hymenoptera_data"
    with pytest.raises(DataError) as info:
        resolve_dataset("hymenoptera_data", None, None, None, cache, recipe_file="q.yaml")
    assert str(info.value) == (
        f"Dataset 'hymenoptera_data' was not found in {target} and q.yaml gives no data.url to download it from. "
        f"Place the dataset there (so that {target}/[train/]<class>/<image> exists), set data.path to where it is, "
        "or set data.url. The cache folder can be moved with the EDGETL_CACHE environment variable.")
    with pytest.raises(DataError) as info:
        resolve_dataset("hymenoptera_data", None, UNREACHABLE, None, cache, recipe_file="q.yaml")
    assert str(info.value).startswith(f"Dataset 'hymenoptera_data' was not found in {target} and could not be "
                                      f"downloaded from {UNREACHABLE} (")
    assert str(info.value).endswith(f"). Check the network connection and the URL, or work offline: download the "
                                    f"archive elsewhere and extract it so that {target}/[train/]<class>/<image> exists.")


def test_offline_without_fallback_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETL_OFFLINE", "1")
    no_network(monkeypatch)
    with pytest.raises(DataError, match="downloads are off") as info:
        resolve_dataset("hymenoptera_data", None, UNREACHABLE, None, tmp_path / "cache")
    assert "EDGETL_OFFLINE=1" in str(info.value) and UNREACHABLE in str(info.value)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("value", "off"), [("1", True), ("true", True), ("YES", True), ("", False), ("0", False),
                                             ("false", False)])
def test_offline_values(monkeypatch: pytest.MonkeyPatch, value: str, off: bool) -> None:
    monkeypatch.setenv("EDGETL_OFFLINE", value)
    assert data.downloads_off() is off


def test_resolve_recipe_data_uses_the_recipes_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from edgetl.recipe import parse_recipe

    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("EDGETL_OFFLINE", "1")
    recipe = parse_recipe({"name": "q", "data": {"dataset": "hymenoptera_data", "url": UNREACHABLE,
                                                 "fallback": "trashnet5-mini"}}, source="q.yaml")
    said: list[str] = []
    assert data.resolve_recipe_data(recipe, said.append) == SAMPLE and "trashnet5-mini" in said[0]
    # with say=None (as `edgetl check` calls it) the line goes to stderr: the substitution is never silent
    assert data.resolve_recipe_data(recipe) == SAMPLE
    assert "using the embedded sample trashnet5-mini" in capsys.readouterr().err
    without = parse_recipe({"name": "q", "data": {"dataset": "hymenoptera_data", "url": UNREACHABLE}}, source="q.yaml")
    with pytest.raises(DataError, match="downloads are off"):
        data.resolve_recipe_data(without)


def test_unknown_fallback_is_a_recipe_error_listing_the_samples(tmp_path: Path) -> None:
    from edgetl.errors import RecipeError
    from edgetl.recipe import DataSection, load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata: {dataset: x, fallback: trashnet-mini}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value)
    assert "data.fallback: Input should be 'trashnet5-mini' (got 'trashnet-mini')" in str(info.value)
    # the names the schema accepts are exactly the samples shipped in edgetl/samples/
    accepted = [a for a in typing.get_args(DataSection.model_fields["fallback"].annotation) if a is not type(None)]
    assert list(typing.get_args(accepted[0])) == samples.known_samples() == ["trashnet5-mini"]


def test_a_missing_sample_folder_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(samples, "SAMPLES_DIR", tmp_path)  # an installation without the sample's files
    with pytest.raises(DataError, match=r"data.fallback in q.yaml: unknown embedded sample 'trashnet5-mini'; the "
                                        r"samples in .* are: none"):
        resolve_dataset("hymenoptera_data", None, None, None, tmp_path / "cache", recipe_file="q.yaml",
                        fallback="trashnet5-mini", say=pytest.fail)


def test_unset_fallback_leaves_the_data_sections_key_as_before() -> None:
    from edgetl.recipe import parse_recipe, section_dict

    plain = parse_recipe({"name": "q", "data": {"dataset": "d"}})
    assert "fallback" not in section_dict(plain.data) and "fallback" not in plain.model_dump(mode="json")["data"]
    with_fallback = parse_recipe({"name": "q", "data": {"dataset": "d", "fallback": "trashnet5-mini"}})
    assert section_dict(with_fallback.data)["fallback"] == "trashnet5-mini"
    assert parse_recipe(with_fallback.model_dump()).data.fallback == "trashnet5-mini"  # round trip (search_build)


def test_embedded_sample_is_small_balanced_rgb_and_licensed() -> None:
    files = [p for p in SAMPLE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 5_000_000
    licence = (SAMPLE / "LICENSE").read_text()
    assert licence.startswith("MIT License\n\nCopyright (c) 2017 Gary Thung\n")
    readme = (SAMPLE / "README.md").read_text()
    assert "github.com/garythung/trashnet" in readme and "python tools/make_sample.py" in readme
    images = [p for p in files if p.parent.parent.parent == SAMPLE]
    assert sorted({p.relative_to(SAMPLE).parts[0] for p in images}) == ["train", "val"]
    for split, per_class in (("train", 30), ("val", 20)):
        counts = {cls.name: len(list(cls.iterdir())) for cls in sorted((SAMPLE / split).iterdir())}
        assert counts == dict.fromkeys(SAMPLE_CLASSES, per_class), (split, counts)
    for path in images:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and max(image.size) <= 256, path
    manifest = dict(line.split("  ")[::-1] for line in (SAMPLE / "MANIFEST.sha256").read_text().splitlines())
    assert manifest == {p.relative_to(SAMPLE).as_posix(): sha256(p) for p in images}  # unchanged since it was made
    index = scan_dataset(SAMPLE)  # and every image decodes
    assert index.classes == SAMPLE_CLASSES and (len(index.train), len(index.val)) == (150, 100)
