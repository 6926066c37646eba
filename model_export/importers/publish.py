"""From a network built by a family importer to a version in the model repository: the card,
the export with its parity check, the file in ``models/<name>/<version>/model.onnx``.

    built = torchvision_models.build("lraspp_mobilenet_v3_large", classes=21, weights=Weights())
    dataset, classes = class_set("voc")
    path, parity = publish(built, Release("voc-lraspp", Path("models")), classes, dataset, size=512)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from torch import nn

from model_export.card import library_versions
from model_export.export import Graph, Parity, Tolerance, export
from model_export.importers.weights import Weights
from service.model_card import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassInfo,
    InputSpec,
    ModelCard,
    TrainingCard,
)
from service.repository import MODEL_FILE

# Parity for imported networks: the labels must agree; the largest logit difference is
# reported, since deep networks with large logits legitimately differ by more than 1e-4.
IMPORT_PARITY = Tolerance(max_abs_logit=math.inf, min_argmax_agreement=0.999)


@dataclass(frozen=True)
class Built:
    """A network of a known family, ready to export: ``module`` maps a normalised RGB batch
    (N, 3, H, W) to logits (N, C, h, w); the rest is what its card and graph say about it."""

    module: nn.Module
    num_classes: int
    architecture: str
    backbone: str
    weights: Weights
    graph: Graph
    stride: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    libraries: tuple[str, ...] = ()  # distributions whose versions the card records
    trained_on: str | None = None  # the weights' dataset, where the family knows it
    provenance: Mapping[str, object] = field(default_factory=dict)  # extra card fields


@dataclass(frozen=True)
class Release:
    """Where the model goes: ``repository/name/version`` (version None: one more than the
    highest there), and the card's one-line description."""

    name: str
    repository: Path
    version: int | None = None
    description: str = ""


def publish(
    built: Built,
    release: Release,
    classes: list[ClassInfo],
    dataset: str,
    *,
    size: int,
    tolerance: Tolerance = IMPORT_PARITY,
) -> tuple[Path, Parity]:
    """Export ``built`` into the repository; returns the file written and the parity figures.
    ValueError when the classes or size do not fit the network or the version exists;
    ParityError (nothing written) when ONNX Runtime disagrees with PyTorch."""
    if len(classes) != built.num_classes:
        raise ValueError(
            f"the network has {built.num_classes} classes, --classes names {len(classes)}"
        )
    if size % built.graph.size_multiple:
        raise ValueError(f"--size must be a multiple of {built.graph.size_multiple} here")
    card = _card(built, release, classes, dataset, size)
    version = release.version or next_version(release.repository, release.name)
    folder = release.repository / release.name / str(version)
    if (folder / MODEL_FILE).exists():
        raise ValueError(f"{folder / MODEL_FILE} already exists; choose another --version")
    new_model = not folder.parent.exists()
    folder.mkdir(parents=True, exist_ok=True)
    # Written beside its final name, then renamed: a server polling the repository sees the
    # whole file or none (a version folder without model.onnx is skipped).
    partial = folder / f".{MODEL_FILE}.partial"
    try:
        parity = export(built.module, card, partial, tolerance=tolerance, parity_seed=0,
                        graph=built.graph)  # fmt: skip
        os.replace(partial, folder / MODEL_FILE)
    finally:
        partial.unlink(missing_ok=True)
        if not any(folder.iterdir()):  # nothing written: leave the repository as it was
            folder.rmdir()
            if new_model:
                folder.parent.rmdir()
    return folder / MODEL_FILE, parity


def next_version(repository: Path, name: str) -> int:
    """One more than the highest version of ``name`` in ``repository`` (1 for a new model)."""
    folder = repository / name
    versions = (
        [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    )
    return max(versions, default=0) + 1


def _card(
    built: Built, release: Release, classes: list[ClassInfo], dataset: str, size: int
) -> ModelCard:
    if built.weights.random:
        dataset = "none (random initialisation)"
    dataset = built.trained_on or dataset
    described = f"{built.architecture} on {built.backbone}, " + (
        "random weights (for tests and timing)" if built.weights.random else dataset
    )
    training = TrainingCard(
        architecture=built.architecture,
        backbone=built.backbone,
        dataset=dataset,
        library_versions=library_versions(*built.libraries),
        export_time=datetime.now(UTC).isoformat(timespec="seconds"),
        **(built.weights.provenance() | dict(built.provenance)),  # type: ignore[arg-type]
    )
    return ModelCard(
        name=release.name,
        description=release.description or described,
        classes=classes,
        input=InputSpec(
            height=size,
            width=size,
            mean=built.mean,
            std=built.std,
            resize="native",
            max_side=size,
            stride=built.stride,
        ),
        training=training,
    )
