"""A short real training run on an easy task, resume, and ONNX-vs-checkpoint evaluation."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model_export.__main__ import main
from model_export.card import card_from_checkpoint, card_of_file
from model_export.checkpoint import Checkpoint, TrainConfig
from model_export.datasets import FolderDataset
from model_export.evaluate import evaluate, onnx_predictor, onnx_session, torch_predictor
from model_export.export import export
from model_export.train import train

EPOCHS = 8
MIN_VAL_MIOU = 0.8  # the stated bar


def _write_easy_dataset(root: Path, split: str, count: int, seed: int) -> None:
    """Red squares (class 1) and blue discs (class 2) on grey noise, 32x32."""
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = Image.fromarray(rng.integers(90, 150, (32, 32, 3), dtype=np.uint8))
        mask = Image.new("L", (32, 32), 0)
        for cls, colour in ((1, (220, 30, 30)), (2, (30, 30, 220))):
            r = int(rng.integers(4, 8))
            x, y = rng.integers(r, 32 - r, size=2)
            box = (x - r, y - r, x + r, y + r)
            draw_image, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
            if cls == 1:
                draw_image.rectangle(box, fill=colour)
                draw_mask.rectangle(box, fill=cls)
            else:
                draw_image.ellipse(box, fill=colour)
                draw_mask.ellipse(box, fill=cls)
        image.save(root / split / "images" / f"{i:03}.png")
        mask.save(root / split / "masks" / f"{i:03}.png")


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("easy")
    (root / "classes.txt").write_text("background\nsquare\ndisc\n")
    _write_easy_dataset(root, "train", 64, seed=0)
    _write_easy_dataset(root, "val", 16, seed=1)
    return root


@pytest.fixture(scope="module")
def config(easy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    return TrainConfig(
        name="easy",
        architecture="mobile-fcn",
        width=8,
        dataset="folder",
        data_root=str(easy_data),
        input_size=32,
        epochs=EPOCHS,
        batch_size=4,
        lr=1e-2,
        run_dir=str(tmp_path_factory.mktemp("run")),
        threads=1,  # a busy shared machine starves PyTorch's spinning worker threads
    )


@pytest.fixture(scope="module")
def trained(config: TrainConfig) -> Checkpoint:
    return train(config, progress=False)


def test_short_training_run_learns_the_easy_task(trained: Checkpoint, config: TrainConfig) -> None:
    assert trained.best_miou >= MIN_VAL_MIOU
    assert trained.best_miou == max(r["val_miou"] for r in trained.history)
    assert trained.classes == ["background", "square", "disc"]
    last = Checkpoint.load(Path(config.run_dir) / "last.pt")
    assert last.epoch == EPOCHS
    assert len(last.history) == EPOCHS
    assert last.optimizer is not None
    assert last.history[-1]["loss"] < last.history[0]["loss"]


def test_resume_continues_where_the_last_checkpoint_stopped(
    trained: Checkpoint, config: TrainConfig
) -> None:
    longer = replace(config, epochs=EPOCHS + 1)
    train(longer, resume=True, progress=False)
    last = Checkpoint.load(Path(config.run_dir) / "last.pt")
    assert last.epoch == EPOCHS + 1
    assert len(last.history) == EPOCHS + 1, "only the one missing epoch ran"


def test_onnx_evaluation_agrees_with_checkpoint_evaluation(
    trained: Checkpoint, easy_data: Path, tmp_path: Path
) -> None:
    path = tmp_path / "easy.onnx"
    export(trained.build(), card_from_checkpoint(trained), path, parity_seed=0)
    val = FolderDataset(easy_data, "val")
    spec = card_of_file(path).input
    from_checkpoint = evaluate(torch_predictor(trained.build()), val, spec)
    from_onnx = evaluate(onnx_predictor(onnx_session(path)), val, spec)
    assert from_checkpoint.miou >= MIN_VAL_MIOU
    assert abs(from_onnx.miou - from_checkpoint.miou) <= 0.005
    assert from_onnx.per_class_iou.keys() == from_checkpoint.per_class_iou.keys()


def test_cli_evaluates_an_exported_model(
    trained: Checkpoint, config: TrainConfig, easy_data: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cli.onnx"
    best = str(Path(config.run_dir) / "best.pt")
    assert main(["export", best, "--out", str(out), "--eval-split", "val", "--tile", "48"]) == 0
    card = card_of_file(out)
    assert card.input.tile == 48  # the tiles policy's default window
    assert card.training.val_miou >= MIN_VAL_MIOU
    assert set(card.training.per_class_iou) == {"background", "square", "disc"}
    assert len(card.training.checkpoint_sha256) == 64
    capsys.readouterr()
    args = ["evaluate", "--onnx", str(out), "--data-root", str(easy_data), "--split", "val"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "folder val (16 images)" in printed
    assert f"mIoU {card.training.val_miou:.4f}" in printed
    # A checkpoint knows its data: no dataset options needed.
    assert main(["evaluate", "--checkpoint", best, "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "folder val (16 images)" in printed
    miou = float(re.search(r"mIoU (\d\.\d+)", printed).group(1))
    assert abs(miou - card.training.val_miou) <= 0.005
