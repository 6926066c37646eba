"""Segmentation datasets as (image, mask) pairs of numpy arrays: no torch here.

* ``shapes`` — synthetic scenes (``shapes.py``), deterministic from ``(seed, index)``.
* ``shapes-multiscale`` — the same classes from 8 px to the whole frame, frames of any aspect
               ratio, JPEG at random quality (``shapes_multiscale.py``); same determinism.
* ``voc``    — the PASCAL-VOC folder layout: JPEGImages/, SegmentationClass/ palette PNGs,
               ImageSets/Segmentation/{train,val}.txt; 255 marks pixels to ignore.
* ``folder`` — ``images/`` and ``masks/`` with matching file stems (masks hold class ids).

A sample is ``(image, mask)``: (H, W, 3) uint8 RGB and (H, W) uint8 class ids, 255 = ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from model_export.shapes import SHAPE_CLASSES, render_scene
from model_export.shapes_multiscale import Scene, render_multiscale
from service.model_card import RGB, voc_palette

IGNORE_INDEX = 255
Split = Literal["train", "val", "test"]
Sample = tuple[np.ndarray, np.ndarray]

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class SegmentationDataset(Protocol):
    name: str
    classes: Sequence[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def colours_for(classes: Sequence[str]) -> list[RGB]:
    """Display colours: the VOC colour map, which every dataset here shares."""
    return voc_palette(len(classes))


_SHAPES_SPLIT_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}


@dataclass(frozen=True)
class ShapesDataset:
    """``length`` scenes of one split. Each split owns its own block of scene indices, so the
    splits are disjoint by construction and the test set does not move when ``length`` changes."""

    split: Split = "train"
    length: int = 2000
    size: int = 128
    seed: int = 0
    name: str = "shapes"
    classes: Sequence[str] = SHAPE_CLASSES

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return render_scene(self.seed, self.scene_index(index), self.size)

    def scene_index(self, index: int) -> int:
        return _SHAPES_SPLIT_OFFSET[self.split] + index


@dataclass(frozen=True)
class MultiscaleShapesDataset:
    """``length`` multi-scale scenes of one split, each at its own size; split index blocks as
    in ``ShapesDataset``."""

    split: Split = "train"
    length: int = 1500
    seed: int = 0
    name: str = "shapes-multiscale"
    classes: Sequence[str] = SHAPE_CLASSES

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        scene = self.scene(index)
        return scene.image, scene.mask

    def scene(self, index: int) -> Scene:
        """The whole scene, with its instance map and radii (for per-object recall)."""
        if not 0 <= index < self.length:
            raise IndexError(index)
        return render_multiscale(self.seed, _SHAPES_SPLIT_OFFSET[self.split] + index)


class _PairedFiles:
    """Images and masks listed up front; loaded on access."""

    def __init__(self, name: str, classes: Sequence[str], pairs: list[tuple[Path, Path]]) -> None:
        if not pairs:
            raise FileNotFoundError(f"{name}: no image/mask pairs found")
        self.name = name
        self.classes = tuple(classes)
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, mask_path = self.pairs[index]
        with Image.open(image_path) as image:
            rgb = np.asarray(image.convert("RGB"))
        with Image.open(mask_path) as mask:
            # Palette PNGs store class ids as palette indices: read them, never the colours.
            if mask.mode not in ("P", "L"):
                raise ValueError(f"{mask_path}: mask must be a palette or greyscale PNG")
            labels = np.asarray(mask)
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"{mask_path}: mask size {labels.shape} != image {rgb.shape[:2]}")
        return rgb, labels.astype(np.uint8)


class VOCDataset(_PairedFiles):
    def __init__(self, root: Path, split: str = "train") -> None:
        root = Path(root)
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"VOC split list not found: {listing}")
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        pairs = [
            (root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids
        ]
        missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"VOC files missing ({len(missing)}), e.g. {missing[0]}")
        super().__init__("voc", VOC_CLASSES, pairs)


class FolderDataset(_PairedFiles):
    """``root/images/*`` with ``root/masks/<stem>.png``; ``root/<split>/...`` when that exists.
    Class names come from ``classes`` or from ``root/classes.txt`` (one per line, id order)."""

    def __init__(
        self, root: Path, split: str = "train", classes: Sequence[str] | None = None
    ) -> None:
        root = Path(root)
        base = root / split if (root / split / "images").is_dir() else root
        if classes is None:
            listing = root / "classes.txt"
            if not listing.is_file():
                raise FileNotFoundError(f"{listing} not found: pass the class names explicitly")
            classes = [c.strip() for c in listing.read_text().splitlines() if c.strip()]
        images = sorted(
            p for p in (base / "images").iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES
        )
        pairs = [(p, base / "masks" / f"{p.stem}.png") for p in images]
        missing = [str(m) for _, m in pairs if not m.is_file()]
        if missing:
            raise FileNotFoundError(f"masks missing ({len(missing)}), e.g. {missing[0]}")
        super().__init__("folder", classes, pairs)


DATASETS = ("shapes", "shapes-multiscale", "voc", "folder")
SYNTHETIC = ("shapes", "shapes-multiscale")  # rendered from (seed, index): a test split exists


def open_dataset(
    name: str,
    split: Split,
    *,
    root: Path | None = None,
    seed: int = 0,
    size: int = 128,
    length: int | None = None,
) -> SegmentationDataset:
    """One split of a dataset by name. ``seed``/``length`` apply to the synthetic datasets
    only, ``size`` to ``shapes`` only (multi-scale scenes choose their own)."""
    if name == "shapes":
        default_length = {"train": 2000, "val": 200, "test": 500}[split]
        return ShapesDataset(split=split, length=length or default_length, size=size, seed=seed)
    if name == "shapes-multiscale":
        default_length = {"train": 1500, "val": 100, "test": 300}[split]
        return MultiscaleShapesDataset(split=split, length=length or default_length, seed=seed)
    if root is None:
        raise ValueError(f"dataset '{name}' needs a root folder (--data-root)")
    if name == "voc":
        return VOCDataset(root, split)
    if name == "folder":
        return FolderDataset(root, split)
    raise ValueError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
