"""Multi-scale Shapes: deterministic scenes over the promised ranges, the old scenes unchanged,
the second generator, per-object recall, the native policy's geometry, a short training run."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from model_export.checkpoint import TrainConfig
from model_export.datasets import MultiscaleShapesDataset, open_dataset
from model_export.evaluate import native_input, native_labels, native_size
from model_export.metrics import ObjectRecall
from model_export.shapes import SHAPE_CLASSES, render_scene
from model_export.shapes_multiscale import (
    MAX_ASPECT,
    MAX_RADIUS_FRACTION,
    MAX_SHORT_SIDE,
    MIN_RADIUS_PX,
    MIN_SHORT_SIDE,
    render_multiscale,
)
from model_export.train import train
from service.model_card import InputSpec
from tests.scenes import draw_scene


def _digest(*arrays: np.ndarray) -> str:
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()


def test_the_fixed_size_scenes_keep_their_pixels() -> None:
    # Pinned when the multi-scale mode was added beside them: version 1 was trained on these.
    image, mask = render_scene(0, 0, 64)
    assert _digest(image, mask) == (
        "484b2456c71b4f2b46d96af11502e1e16a3f24a2461c0c6f667a2ddf212ceaf4"
    )


def test_multiscale_scene_is_a_function_of_seed_and_index() -> None:
    a, b = render_multiscale(3, 7), render_multiscale(3, 7)
    assert _digest(a.image, a.mask, a.instances) == _digest(b.image, b.mask, b.instances)
    assert a.radii == b.radii
    assert _digest(a.image) != _digest(render_multiscale(4, 7).image)
    assert _digest(a.image) != _digest(render_multiscale(3, 8).image)


def test_multiscale_scenes_cover_the_promised_ranges() -> None:
    scenes = [render_multiscale(0, i) for i in range(60)]
    shapes = [s.mask.shape for s in scenes]
    for (h, w), s in zip(shapes, scenes, strict=True):
        assert MIN_SHORT_SIDE <= min(h, w) <= MAX_SHORT_SIDE
        assert max(h, w) / min(h, w) <= MAX_ASPECT + 0.01
        assert s.image.shape == (h, w, 3)
        assert s.image.dtype == np.uint8
        drawn = [r for r in s.radii if r > 0]
        assert all(MIN_RADIUS_PX <= r <= MAX_RADIUS_FRACTION * min(h, w) for r in drawn)
        assert (s.mask > 0).any()
        # Every object's visible pixels carry one class.
        for k in range(1, len(s.radii) + 1):
            assert len(np.unique(s.mask[s.instances == k])) <= 1
    assert any(h > w for h, w in shapes)
    assert any(w > h for h, w in shapes)
    assert len({w / h for h, w in shapes}) > 30, "aspect ratios vary, not one fixed frame"
    radii = [r for s in scenes for r in s.radii if r > 0]
    assert min(radii) < 6, "objects as small as about 8 px across"
    # ... up to one that spans most of the frame it is in
    assert max(r / min(s.mask.shape) for s in scenes for r in s.radii) > 0.45
    octaves = {math.floor(math.log2(r)) for r in radii}
    assert octaves >= {2, 3, 4, 5, 6, 7}, "every octave from 4 to 128+ px is drawn"
    seen = set().union(*(np.unique(s.mask).tolist() for s in scenes))
    assert seen == set(range(len(SHAPE_CLASSES)))


def test_multiscale_splits_are_disjoint_and_open_by_name() -> None:
    test = open_dataset("shapes-multiscale", "test", length=5)
    assert isinstance(test, MultiscaleShapesDataset)
    train_digests = {_digest(MultiscaleShapesDataset("train", length=5)[i][0]) for i in range(5)}
    assert not train_digests & {_digest(test[i][0]) for i in range(5)}
    with pytest.raises(IndexError):
        test[5]


def test_second_generator_is_deterministic_and_keeps_its_ranges() -> None:
    a, b = draw_scene(1, 3), draw_scene(1, 3)
    assert _digest(a.image, a.mask, a.instances) == _digest(b.image, b.mask, b.instances)
    assert _digest(a.image) != _digest(draw_scene(2, 3).image)
    radii, count = [], 0
    for i in range(20):
        s = draw_scene(1, i)
        assert s.image.shape == (480, 640, 3)
        assert s.mask.shape == (480, 640)
        assert 1 <= len(s.classes) <= 5
        radii += s.radii_px
        count += len(s.classes)
        for k, cls in enumerate(s.classes, 1):
            assert set(np.unique(s.mask[s.instances == k]).tolist()) == {cls}
    assert all(10 <= r <= 150 for r in radii)
    assert min(radii) < 20
    assert max(radii) > 100
    big = draw_scene(1, 0, width=1000, height=750, radius_px=(30, 150), objects=(8, 12))
    assert big.image.shape == (750, 1000, 3)
    assert len(big.classes) >= 6
    assert all(30 <= r <= 150 for r in big.radii_px)


def test_an_object_is_found_when_half_its_pixels_get_its_class() -> None:
    instances = np.zeros((4, 8), np.int32)
    instances[:, :4], instances[:, 4:] = 1, 2  # object 1: r 5 px; object 2: r 50 px
    predicted = np.zeros((4, 8), np.uint8)
    predicted[:2, :4] = 3  # half of object 1 right: found
    predicted[:1, 4:] = 2  # a quarter of object 2 right: missed
    recall = ObjectRecall()
    recall.update(predicted, instances, np.array([3, 2]), np.array([5.0, 50.0]))
    assert recall.recall() == {"<10": 1.0, "10-40": None, "40-80": 0.0, ">80": None}
    assert recall.counts() == {"<10": 1, "10-40": 0, "40-80": 1, ">80": 0}


def test_native_policy_scales_down_only_and_pads_to_the_stride() -> None:
    assert native_size(640, 480, 320) == (320, 240)
    assert native_size(300, 200, 640) == (300, 200), "never scaled up"
    assert native_size(4000, 3, 100) == (100, 1)
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), np.uint8)
    x, h, w = native_input(image, InputSpec(height=8, width=8), max_side=640)
    assert (h, w) == (45, 70)
    assert x.shape == (3, 64, 96)
    # Padded as the service pads: the last column, then the last row, repeated.
    np.testing.assert_array_equal(x[:, :h, w:], np.repeat(x[:, :h, w - 1 : w], 96 - w, axis=2))
    np.testing.assert_array_equal(x[:, h:, :], np.repeat(x[:, h - 1 : h, :], 64 - h, axis=1))

    def half_and_half(batch: np.ndarray) -> np.ndarray:
        labels = np.zeros(batch.shape[:1] + batch.shape[2:], np.uint8)
        labels[:, :, : batch.shape[3] // 2] = 1
        return labels

    labels = native_labels(half_and_half, np.zeros((30, 50, 3), np.uint8), InputSpec(
        height=8, width=8), max_side=25)  # fmt: skip
    assert labels.shape == (30, 50)  # predicted at 25x15 on a 32x32 canvas, cropped, resized
    assert labels[:, :32].all()
    assert not labels[:, 34:].any()


def test_short_multiscale_training_run_validates_natively(tmp_path: Path) -> None:
    config = TrainConfig(
        name="ms-smoke", architecture="mobile-fcn", width=8, dataset="shapes-multiscale",
        train_length=8, val_length=2, crop_size=64, max_side=96, epochs=1, batch_size=4,
        run_dir=str(tmp_path), threads=1,
    )  # fmt: skip
    best = train(config, progress=False)
    assert best.epoch == 1
    assert 0.0 <= best.best_miou <= 1.0
    assert best.config.max_side == 96
