"""Splits: a flat <class>/ dataset split by edgetl into train / val / test (stratified, seeded, recorded), test/
folders used where they exist, and a class too small for the split one clear error."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from conftest import make_image_folder
from edgetl.data import DatasetIndex, scan_dataset
from edgetl.errors import DataError


def _names(samples) -> set[str]:
    return {Path(s.path).name for s in samples}


def test_a_flat_dataset_is_split_into_train_val_and_test_by_class(tmp_path):
    root = make_image_folder(tmp_path / "flat", {"cat": 10, "dog": 7, "owl": 3})
    index = scan_dataset(root)
    assert index.layout == "flat" and index.val_source == "split" and index.test_source == "split"
    counts = index.class_counts()
    # 20 % each, rounded, at least one per split; what is left trains
    assert counts == {"train": {"cat": 6, "dog": 5, "owl": 1}, "val": {"cat": 2, "dog": 1, "owl": 1},
                      "test": {"cat": 2, "dog": 1, "owl": 1}}
    every = [s.path for split in (index.train, index.val, index.test) for s in split]
    assert len(every) == len(set(every)) == 20  # each image in exactly one split
    assert all(Path(s.path).parent.name == index.classes[s.label] for s in every_sample(index))
    # seeded and independent of where the dataset lives: a copy elsewhere splits the same
    moved = scan_dataset(shutil.copytree(root, tmp_path / "elsewhere" / "flat"))
    assert [_names(s) for s in (moved.train, moved.val, moved.test)] == [
        _names(s) for s in (index.train, index.val, index.test)]
    other_seed = scan_dataset(root, seed=1)
    assert _names(other_seed.test) != _names(index.test)
    # and recorded: the index (data/index.json) holds every file's split
    again = DatasetIndex.from_json(index.to_json())
    assert (again.test, again.test_source, again.layout) == (index.test, "split", "flat")


def every_sample(index):
    return [*index.train, *index.val, *index.test]


def test_the_split_fractions_come_from_the_recipe(tmp_path):
    root = make_image_folder(tmp_path / "flat", {"cat": 20, "dog": 20})
    index = scan_dataset(root, val_fraction=0.1, test_fraction=0.3)
    assert index.class_counts()["test"] == {"cat": 6, "dog": 6} and index.class_counts()["val"] == {"cat": 2, "dog": 2}
    with pytest.raises(DataError, match=r"val_fraction \(0.5\) \+ data.test_fraction \(0.5\) leave no image"):
        scan_dataset(root, val_fraction=0.5, test_fraction=0.5)


def test_a_flat_class_too_small_for_the_split_is_one_clear_error(tmp_path):
    root = make_image_folder(tmp_path / "flat", {"cat": 10, "dog": 2})
    with pytest.raises(DataError) as caught:
        scan_dataset(root)
    message = str(caught.value)
    assert f"{root / 'dog'} has 2 image(s)" in message and "needs at least 3 (one in each)" in message


def test_a_test_folder_is_the_test_split_and_is_optional(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", {"cat": 8, "dog": 8}, seed=1)
    make_image_folder(root / "val", {"cat": 3, "dog": 3}, seed=2)
    without = scan_dataset(root)
    assert without.test_source is None and without.test == [] and "test" not in without.class_counts()
    make_image_folder(root / "test", {"cat": 4, "dog": 4}, seed=3)
    index = scan_dataset(root)
    assert index.layout == "folders" and index.test_source == "folder"
    assert index.class_counts()["test"] == {"cat": 4, "dog": 4} and len(index.train) == 16
    assert all("/test/" in s.path for s in index.test)
    make_image_folder(root / "test", {"owl": 1}, seed=4)
    with pytest.raises(DataError, match="class folders of .* differ"):
        scan_dataset(root)


def test_train_only_data_holds_out_test_when_asked(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", {"cat": 10, "dog": 10})
    index = scan_dataset(root, test_fraction=0.2)
    assert index.test_source == "split" and index.val_source == "split"
    assert index.class_counts() == {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2},
                                    "test": {"cat": 2, "dog": 2}}
    # val is held out by the documented rule whether or not test is: per class, the 20 % whose seeded hash of the
    # path relative to train/ ranks first (as before the test split existed)
    expected = set()
    for cls in ("cat", "dog"):
        files = sorted((root / "train" / cls).iterdir())
        ranked = sorted(files, key=lambda f: hashlib.sha256(f"0\0{cls}/{f.name}".encode()).hexdigest())
        expected |= {f.name for f in ranked[:2]}
    assert _names(scan_dataset(root).val) == _names(index.val) == expected
    assert scan_dataset(root).test_source is None
    with pytest.raises(DataError, match=r"val_fraction \(0.5\) \+ data.test_fraction \(0.5\) leave no image"):
        scan_dataset(root, val_fraction=0.5, test_fraction=0.5)


def test_a_test_fraction_too_small_to_hold_any_image_is_one_clear_error(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", {"cat": 2, "dog": 2})
    with pytest.raises(DataError, match="enough images to hold any out for test"):
        scan_dataset(root, test_fraction=0.2)  # each class's second image goes to val; none is left for test


@pytest.mark.parametrize("names", [("Training", "Testing"), ("train_set", "test_set"), ("Train", "Valid")])
def test_folders_named_like_splits_are_not_read_as_classes(tmp_path, names):
    root = tmp_path / "data"
    for name in names:
        make_image_folder(root / name, {"cat": 4, "dog": 4})
    with pytest.raises(DataError) as caught:
        scan_dataset(root)
    assert f"It holds {', '.join(sorted(names))}, named like splits: set data.train_dir" in str(caught.value)


def test_a_folder_with_neither_train_nor_class_folders_says_both_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as caught:
        scan_dataset(tmp_path / "empty")
    assert "<class>/<image>" in str(caught.value) and "train/<class>/<image>" in str(caught.value)


def test_edgetl_check_on_a_flat_folder_says_how_it_was_split(tmp_path):
    import yaml

    from conftest import run_cli, tiny_recipe

    root = make_image_folder(tmp_path / "flat", {"cat": 10, "dog": 10})
    recipe = tmp_path / "flat.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root)))
    code, output = run_cli("check", recipe)
    assert code == 0, output
    assert "2 classes (cat, dog), 12 train / 4 val / 4 test images (split by edgetl: the dataset is flat" in output
    code, output = run_cli("check", recipe, "--set", "data.test_fraction=0.4")
    assert code == 0 and "8 train / 4 val / 8 test images" in output, output
