"""Training: cross-entropy (255 ignored), AdamW or SGD with a poly learning-rate decay,
validation mIoU after every epoch, best-by-mIoU and last checkpoints, resume, fixed seeds,
mixed precision on CUDA."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model_export.architectures import build_model
from model_export.architectures.layers import at_input_size
from model_export.checkpoint import Checkpoint, TrainConfig
from model_export.data import InMemory, TrainingSamples
from model_export.datasets import IGNORE_INDEX, SYNTHETIC, SegmentationDataset, open_dataset
from model_export.evaluate import evaluate, torch_predictor
from model_export.transforms import Augment
from model_export.warm_start import load_checkpoint, load_exported
from model_export.weighting import weighted_cross_entropy

POLY_POWER = 0.9


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_split(config: TrainConfig, split: str) -> SegmentationDataset:
    length = {"train": config.train_length, "val": config.val_length}.get(split)
    return open_dataset(
        config.dataset,
        split,  # type: ignore[arg-type]
        root=Path(config.data_root) if config.data_root else None,
        seed=config.data_seed,
        size=config.input_size,
        length=length,
    )


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    raise ValueError(f"unknown optimizer '{config.optimizer}' (adamw or sgd)")


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> Checkpoint:
    """Train per ``config``; returns the best checkpoint (also saved as ``run_dir/best.pt``)."""
    run_dir = Path(config.run_dir)
    device = _prepare(config)
    train_set, val_set = _splits(config)
    classes = list(train_set.classes)
    samples, loader = _loader(config, train_set, device)
    trainer = _Trainer(config, classes, len(loader), device)
    state = Checkpoint(config, classes, trainer.model.state_dict())
    if resume and (run_dir / "last.pt").is_file():
        state = trainer.restore(Checkpoint.load(run_dir / "last.pt"))
    elif config.init_from and Path(config.init_from).suffix == ".pt":
        unused = load_checkpoint(trainer.model, Path(config.init_from))
        tqdm.write(f"warm start from {config.init_from} (not used: {', '.join(unused) or '-'})")
    elif config.init_from:
        calibration, _ = next(iter(loader))  # reseeded per epoch below: the run is unchanged
        diff = load_exported(trainer.model, Path(config.init_from), calibration.to(device))
        tqdm.write(f"warm start from {config.init_from} (max |logit - ONNX| {diff:.1e})")
    for epoch in range(state.epoch, config.epochs):
        started = time.perf_counter()
        samples.epoch = epoch
        loader.generator.manual_seed(config.seed + epoch)  # type: ignore[union-attr]
        loss = trainer.run_epoch(epoch, loader, progress)
        predict = torch_predictor(trainer.model, device)
        scores = evaluate(predict, val_set, config.input_spec(), max_side=config.max_side)
        record = {
            "epoch": epoch + 1,
            "loss": loss,
            "val_miou": scores.miou,
            "seconds": time.perf_counter() - started,
        }
        tqdm.write(
            f"epoch {epoch + 1}/{config.epochs}  loss {loss:.4f}  "
            f"val mIoU {scores.miou:.4f}  ({record['seconds']:.0f}s)",
            file=None,
        )
        state = trainer.checkpoint(state, record)
        _save(state, run_dir, best=scores.miou >= state.best_miou)
    return Checkpoint.load(run_dir / "best.pt")


def _prepare(config: TrainConfig) -> torch.device:
    """Seeds the random generators, sets PyTorch's threads; returns the device to train on."""
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    return pick_device(config.device)


def _splits(config: TrainConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    train_set, val_set = load_split(config, "train"), load_split(config, "val")
    if config.dataset in SYNTHETIC:
        return InMemory(train_set), InMemory(val_set)
    return train_set, val_set


def _loader(
    config: TrainConfig, train_set: SegmentationDataset, device: torch.device
) -> tuple[TrainingSamples, DataLoader[tuple[torch.Tensor, torch.Tensor]]]:
    # Fully convolutional: training on crops smaller than the input costs less per step and
    # keeps the objects' scale.
    crop = config.crop_size or config.input_size
    augment = Augment(crop=crop) if config.augment else None
    samples = TrainingSamples(train_set, config.input_spec(), augment, config.seed)
    loader = DataLoader(
        samples,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(samples) > config.batch_size,
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=device.type == "cuda",
    )
    return samples, loader


class _Trainer:
    """The model and what updates it: the optimizer, the poly learning-rate schedule, the loss
    and, on CUDA, mixed precision."""

    def __init__(
        self, config: TrainConfig, classes: list[str], steps_per_epoch: int, device: torch.device
    ) -> None:
        self.config = config
        self.classes = classes
        self.device = device
        self.use_amp = device.type == "cuda"
        self.model = build_model(config.architecture, len(classes), config.width).to(device)
        self.optimizer = _optimizer(config, self.model)
        total_steps = config.epochs * steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: max(1 - step / total_steps, 0) ** POLY_POWER
        )
        self.scaler = torch.amp.GradScaler(enabled=self.use_amp)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

    def restore(self, state: Checkpoint) -> Checkpoint:
        """Continue from ``state``: its weights, optimizer and schedule; returns it."""
        self.model.load_state_dict(state.state_dict)
        self.optimizer.load_state_dict(state.optimizer or {})
        self.scheduler.load_state_dict(state.scheduler or {})
        return state

    def run_epoch(
        self, epoch: int, loader: DataLoader[tuple[torch.Tensor, torch.Tensor]], progress: bool
    ) -> float:
        """One pass over ``loader``; returns the mean loss."""
        self.model.train()
        running = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.config.epochs}", disable=not progress)
        for step, (x, y) in enumerate(bar, 1):
            running += self._step(x, y)
            bar.set_postfix(loss=f"{running / step:.4f}")
        return running / max(len(loader), 1)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            logits = at_input_size(self.model(x), y.shape[-2:])
            if self.config.small_object_weight:
                loss = weighted_cross_entropy(logits, y, max_weight=self.config.small_object_weight)
            else:
                loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.item())

    def checkpoint(self, state: Checkpoint, record: dict[str, float]) -> Checkpoint:
        """``state`` one epoch on, under this run's config: the current weights and optimizer,
        ``record`` added to its history."""
        return Checkpoint(
            self.config,
            self.classes,
            {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            epoch=state.epoch + 1,
            best_miou=max(state.best_miou, record["val_miou"]),
            history=[*state.history, record],
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
        )


def _save(state: Checkpoint, run_dir: Path, *, best: bool) -> None:
    """``last.pt``; and ``best.pt``, without the optimizer's state, when ``best``."""
    if best:
        replace(state, optimizer=None, scheduler=None).save(run_dir / "best.pt")
    state.save(run_dir / "last.pt")
