"""Datasets: deterministic synthetic scenes, disjoint splits, VOC and folder layouts, augments."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_export.datasets import (
    IGNORE_INDEX,
    VOC_CLASSES,
    FolderDataset,
    ShapesDataset,
    VOCDataset,
    open_dataset,
)
from model_export.shapes import SHAPE_CLASSES
from model_export.transforms import Augment
from service.model_card import voc_palette


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_shapes_scene_is_a_function_of_seed_and_index() -> None:
    a = ShapesDataset("train", length=4, size=64, seed=3)
    b = ShapesDataset("train", length=4, size=64, seed=3)
    other_seed = ShapesDataset("train", length=4, size=64, seed=4)
    for i in range(4):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        np.testing.assert_array_equal(a[i][1], b[i][1])
        assert _digest(a[i][0]) != _digest(other_seed[i][0])
    assert _digest(a[0][0]) != _digest(a[1][0])


def test_shapes_samples_are_well_formed_and_use_every_class() -> None:
    data = ShapesDataset("val", length=40, size=64)
    seen: set[int] = set()
    for image, mask in (data[i] for i in range(len(data))):
        assert image.shape == (64, 64, 3)
        assert image.dtype == np.uint8
        assert mask.shape == (64, 64)
        assert mask.dtype == np.uint8
        assert mask.max() < len(SHAPE_CLASSES)
        assert (mask > 0).any(), "every scene has at least one object"
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(SHAPE_CLASSES)))


def test_shapes_splits_are_disjoint_and_stable() -> None:
    splits = {s: ShapesDataset(s, length=30, size=48) for s in ("train", "val", "test")}
    digests = {s: {_digest(d[i][0]) for i in range(len(d))} for s, d in splits.items()}
    assert all(len(v) == 30 for v in digests.values())
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]
    # The test split does not depend on how many training scenes there are.
    longer = ShapesDataset("test", length=60, size=48)
    np.testing.assert_array_equal(longer[7][0], splits["test"][7][0])
    with pytest.raises(IndexError):
        splits["test"][30]


def _write_palette_png(path: Path, labels: np.ndarray) -> None:
    image = Image.fromarray(labels, mode="P")
    image.putpalette([c for rgb in voc_palette(256) for c in rgb])
    image.save(path)


def test_voc_layout_is_read_with_palette_indices_and_ignore(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = {}
    for name in ("2007_000001", "2007_000002", "2007_000003"):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{name}.jpg"
        )
        labels = np.zeros((30, 40), np.uint8)
        labels[5:20, 10:30] = 15  # person
        labels[4, :] = IGNORE_INDEX  # VOC's object border
        _write_palette_png(root / "SegmentationClass" / f"{name}.png", labels)
        truth[name] = labels
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000001\n2007_000003\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000002\n")

    train = open_dataset("voc", "train", root=root)
    assert isinstance(train, VOCDataset)
    assert len(train) == 2
    assert train.classes == VOC_CLASSES
    assert len(VOC_CLASSES) == 21
    image, mask = train[1]
    assert image.shape == (30, 40, 3)
    np.testing.assert_array_equal(mask, truth["2007_000003"])  # ids, not palette colours
    assert len(open_dataset("voc", "val", root=root)) == 1
    with pytest.raises(FileNotFoundError, match=r"test\.txt"):
        open_dataset("voc", "test", root=root)


def test_voc_reports_missing_files(tmp_path: Path) -> None:
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("missing_id\n")
    with pytest.raises(FileNotFoundError, match="missing_id"):
        VOCDataset(tmp_path, "train")


def test_folder_dataset_pairs_images_with_masks(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    for i in range(3):
        Image.new("RGB", (20, 10), (i, i, i)).save(tmp_path / "images" / f"img{i}.png")
        Image.fromarray(np.full((10, 20), i % 2, np.uint8)).save(tmp_path / "masks" / f"img{i}.png")
    data = FolderDataset(tmp_path)
    assert list(data.classes) == ["background", "cat"]
    assert len(data) == 3
    image, mask = data[1]
    assert image[0, 0].tolist() == [1, 1, 1]
    assert mask.max() == 1
    (tmp_path / "masks" / "img2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"img2\.png"):
        FolderDataset(tmp_path)


def test_open_dataset_rejects_unknown_names_and_missing_roots() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        open_dataset("imagenet", "train", root=Path("."))
    with pytest.raises(ValueError, match="root"):
        open_dataset("voc", "train")


def test_augment_resamples_masks_with_nearest_neighbour_and_pads_with_ignore() -> None:
    image, mask = ShapesDataset("train", length=1, size=64)[0]
    augment = Augment(crop=64, scale=(0.5, 1.5))
    found_padding = False
    for i in range(20):
        out_image, out_mask = augment(image, mask, np.random.default_rng(i))
        assert out_image.shape == (64, 64, 3)
        assert out_mask.shape == (64, 64)
        # Nearest neighbour never invents a class id between two neighbours.
        assert set(np.unique(out_mask).tolist()) <= set(np.unique(mask).tolist()) | {IGNORE_INDEX}
        found_padding |= bool((out_mask == IGNORE_INDEX).any())
    assert found_padding, "a scale below 1 must pad the crop, and padding must be ignored"


def test_augment_is_reproducible_and_flips_image_and_mask_together() -> None:
    image, mask = ShapesDataset("train", length=1, size=32)[0]
    a = Augment(crop=32, scale=(1.0, 1.0), flip=1.0)(image, mask, np.random.default_rng(1))
    b = Augment(crop=32, scale=(1.0, 1.0), flip=1.0)(image, mask, np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0], image[:, ::-1])
    np.testing.assert_array_equal(a[1], mask[:, ::-1])
