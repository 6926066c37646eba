"""Building model cards from checkpoints, and reading/writing them in ONNX files."""

from __future__ import annotations

import importlib.metadata
from datetime import UTC, datetime
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import helper

from model_export.architectures import ARCHITECTURES
from model_export.checkpoint import Checkpoint
from model_export.datasets import colours_for
from model_export.metrics import Scores
from service.model_card import ClassInfo, ModelCard, TrainingCard

_LIBRARIES = ("torch", "onnx", "onnxscript", "onnxruntime", "numpy", "pillow")


def library_versions(*extra: str) -> dict[str, str]:
    """Installed versions of the export stack and of the ``extra`` distributions."""
    versions = {}
    for name in (*_LIBRARIES, *extra):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def card_from_checkpoint(
    checkpoint: Checkpoint,
    *,
    name: str | None = None,
    description: str = "",
    checkpoint_sha256: str | None = None,
) -> ModelCard:
    """The card for an export of ``checkpoint``, before the exported file is scored."""
    config = checkpoint.config
    colours = colours_for(checkpoint.classes)
    classes = [
        ClassInfo(id=i, label=label, color=colours[i]) for i, label in enumerate(checkpoint.classes)
    ]
    training = TrainingCard(
        architecture=config.architecture,
        backbone=ARCHITECTURES[config.architecture].backbone,
        dataset=config.dataset,
        seed=config.seed,
        epochs=checkpoint.epoch,
        val_miou=round(checkpoint.best_miou, 4),
        library_versions=library_versions(),
        export_time=datetime.now(UTC).isoformat(timespec="seconds"),
        checkpoint_sha256=checkpoint_sha256,
        # Extra provenance (TrainingCard allows extra fields): enough to retrain and to rebuild
        # the synthetic test split this card's scores came from.
        width=config.width or ARCHITECTURES[config.architecture].default_width,
        data_seed=config.data_seed,
        scene_size=config.input_size,
        max_side=config.max_side,
        init_from=config.init_from,
        optimizer=config.optimizer,
        lr=config.lr,
        batch_size=config.batch_size,
        train_seconds=round(sum(r.get("seconds", 0.0) for r in checkpoint.history)),
    )
    return ModelCard(
        name=name or config.name,
        description=description,
        classes=classes,
        input=config.input_spec(),
        training=training,
    )


def with_scores(
    card: ModelCard, scores: Scores, split: str, images: int, max_side: int | None = None
) -> ModelCard:
    """``card`` with the scores of the exported file on ``split``; mIoU lands in ``test_miou``
    only when the split really is held out (a VOC-style dataset is scored on ``val``)."""
    assert card.training is not None
    update: dict[str, object] = {
        "pixel_accuracy": round(scores.pixel_accuracy, 4),
        "per_class_iou": {k: round(v, 4) for k, v in scores.per_class_iou.items()},
        "scored_on": f"{split} split, {images} images, ONNX Runtime"
        + (f", native policy (long side <= {max_side})" if max_side else ""),
    }
    if split == "test":
        update["test_miou"] = round(scores.miou, 4)
    else:
        update["val_miou"] = round(scores.miou, 4)
    return card.model_copy(update={"training": card.training.model_copy(update=update)})


def load_onnx(path: Path, *, external_data: bool = True) -> onnx.ModelProto:
    """The ONNX model in ``path``; FileNotFoundError when there is none, ValueError naming the
    file when it is not ONNX (rather than protobuf's own parse error)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except DecodeError as exc:
        raise ValueError(f"{path}: not an ONNX model (it does not parse as one: {exc})") from exc


def card_of_file(path: Path) -> ModelCard:
    """The card in the ONNX file ``path``; InvalidCard (a ValueError) when it has none."""
    model = load_onnx(path, external_data=False)
    return ModelCard.from_metadata(_metadata(model), path)


def write_card(path: Path, card: ModelCard, out: Path | None = None) -> None:
    """Replace the card in ``path`` (keeping any other metadata), saving to ``out`` (its folder
    made when missing: ``models/<name>/<version>/`` of a new model) or in place."""
    model = load_onnx(path)
    helper.set_model_props(model, _metadata(model) | card.to_metadata())
    target = out or path
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}
