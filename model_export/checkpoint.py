"""Checkpoints: weights plus everything needed to rebuild, resume, evaluate and export them."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_export.architectures import build_model
from service.model_card import InputSpec


@dataclass
class TrainConfig:
    name: str = "shapes-fcn"
    architecture: str = "mobile-fcn"
    width: int | None = None  # None: the architecture's default
    dataset: str = "shapes"
    data_root: str | None = None
    data_seed: int = 0  # which synthetic scenes (shapes only); the test split depends on it
    train_length: int | None = None  # shapes only: scenes in the train split
    val_length: int | None = None
    input_size: int = 128  # square model input, pixels
    crop_size: int | None = None  # square training crops; None: the input size
    # Validate (and score the export) as the `native` policy serves: each image at its own size,
    # scaled down so its long side is at most max_side. None: stretched to the input size.
    max_side: int | None = None
    # Start from the weights of this exported ONNX model (same architecture and width).
    init_from: str | None = None
    epochs: int = 20
    batch_size: int = 16
    optimizer: str = "adamw"  # adamw | sgd, both with a poly learning-rate decay
    lr: float = 3e-3
    weight_decay: float = 1e-4
    # Weigh small objects' pixels up to this many times a large one's (model_export.weighting);
    # 0: plain cross-entropy.
    small_object_weight: float = 0.0
    augment: bool = True
    seed: int = 0
    run_dir: str = "runs/shapes-fcn"
    device: str = "auto"
    workers: int = 0
    threads: int = 0  # CPU threads for PyTorch; 0 = its default (one per core)

    def input_spec(self) -> InputSpec:
        """The card's input: served as it was validated (native at max_side, or stretched)."""
        if self.max_side is None:
            return InputSpec(height=self.input_size, width=self.input_size)
        return InputSpec(
            height=self.input_size, width=self.input_size, resize="native", max_side=self.max_side
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class Checkpoint:
    config: TrainConfig
    classes: list[str]
    state_dict: dict[str, torch.Tensor]
    epoch: int = 0  # epochs completed
    best_miou: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None

    def build(self) -> nn.Module:
        model = build_model(self.config.architecture, len(self.classes), self.config.width)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def save(self, path: Path) -> None:
        payload = asdict(self)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)  # never leave a half-written checkpoint behind

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        payload["config"] = TrainConfig.from_dict(payload["config"])
        return cls(**payload)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
