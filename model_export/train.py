"""Training: cross-entropy (255 ignored), AdamW or SGD with a poly learning-rate decay,
validation mIoU after every epoch, best-by-mIoU and last checkpoints, resume, fixed seeds,
mixed precision on CUDA."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model_export.architectures import build_model
from model_export.checkpoint import Checkpoint, TrainConfig
from model_export.data import InMemory, TrainingSamples
from model_export.datasets import IGNORE_INDEX, SegmentationDataset, open_dataset
from model_export.evaluate import evaluate, torch_predictor
from model_export.transforms import Augment

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
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    use_amp = device.type == "cuda"

    train_set = load_split(config, "train")
    val_set = load_split(config, "val")
    if config.dataset == "shapes":
        train_set, val_set = InMemory(train_set), InMemory(val_set)
    classes = list(train_set.classes)
    spec = config.input_spec()
    # Fully convolutional: training on crops smaller than the input costs less per step and
    # keeps the objects' scale.
    crop = config.crop_size or config.input_size
    augment = Augment(crop=crop) if config.augment else None
    samples = TrainingSamples(train_set, spec, augment, config.seed)
    loader = DataLoader(
        samples,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(samples) > config.batch_size,
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=device.type == "cuda",
    )

    model = build_model(config.architecture, len(classes), config.width).to(device)
    optimizer = _optimizer(config, model)
    total_steps = config.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(1 - step / total_steps, 0) ** POLY_POWER
    )
    scaler = torch.amp.GradScaler(enabled=use_amp)
    state = Checkpoint(config, classes, model.state_dict())
    if resume and (run_dir / "last.pt").is_file():
        state = Checkpoint.load(run_dir / "last.pt")
        model.load_state_dict(state.state_dict)
        optimizer.load_state_dict(state.optimizer or {})
        scheduler.load_state_dict(state.scheduler or {})
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

    for epoch in range(state.epoch, config.epochs):
        started = time.perf_counter()
        samples.epoch = epoch
        loader.generator.manual_seed(config.seed + epoch)  # type: ignore[union-attr]
        model.train()
        running = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for step, (x, y) in enumerate(bar, 1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=use_amp):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            running += loss.item()
            bar.set_postfix(loss=f"{running / step:.4f}")
        scores = evaluate(torch_predictor(model, device), val_set, spec)
        record = {
            "epoch": epoch + 1,
            "loss": running / max(len(loader), 1),
            "val_miou": scores.miou,
            "seconds": time.perf_counter() - started,
        }
        tqdm.write(
            f"epoch {epoch + 1}/{config.epochs}  loss {record['loss']:.4f}  "
            f"val mIoU {scores.miou:.4f}  ({record['seconds']:.0f}s)",
            file=None,
        )
        state = Checkpoint(
            config,
            classes,
            {k: v.detach().cpu() for k, v in model.state_dict().items()},
            epoch=epoch + 1,
            best_miou=max(state.best_miou, scores.miou),
            history=[*state.history, record],
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
        )
        if scores.miou >= state.best_miou:
            Checkpoint(
                config, classes, state.state_dict, state.epoch, state.best_miou, state.history
            ).save(run_dir / "best.pt")
        state.save(run_dir / "last.pt")
    return Checkpoint.load(run_dir / "best.pt")
