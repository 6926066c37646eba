"""``python -m model_export {train,evaluate,export,import,annotate,inspect}``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pydantic

from model_export.architectures import ARCHITECTURES
from model_export.checkpoint import TrainConfig
from model_export.datasets import DATASETS
from model_export.importers import DEFAULT_SIZES, SMP_ARCHITECTURES, TORCHVISION_MODELS
from model_export.importers.presets import PRESETS

# `import` is a Python keyword: its function in `commands` has another name.
_FUNCTIONS = {"import": "import_model"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_export",
        description="Train, evaluate and export segmentation models as self-describing ONNX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_options(
        sub.add_parser(
            "train",
            help="train a model; checkpoints go to --run-dir",
            description="Train with cross-entropy (255 ignored), a poly LR decay, "
            "val mIoU after each epoch, best.pt (by mIoU) and last.pt checkpoints.",
        )
    )
    _evaluate_options(
        sub.add_parser(
            "evaluate",
            help="mIoU, per-class IoU and pixel accuracy of a checkpoint "
            "or an ONNX file, preprocessed exactly as the service does",
        )
    )
    _export_options(
        sub.add_parser("export", help="export a checkpoint to ONNX with a parity check and card")
    )
    _import_options(
        sub.add_parser(
            "import",
            help="a torchvision, SegFormer or smp network with its weights -> ONNX with a card, "
            "checked against the library's own forward pass, into the model repository",
        )
    )
    _annotate_options(
        sub.add_parser("annotate", help="add or replace the card of an ONNX model made elsewhere")
    )
    _inspect_options(sub.add_parser("inspect", help="print a model's I/O signature and card"))
    return parser


def _data_options(p: argparse.ArgumentParser, defaults: TrainConfig | None) -> None:
    """The dataset options; ``evaluate`` passes no ``defaults``, so that what is not given
    comes from the model's own training data."""
    dataset, data_seed = (defaults.dataset, defaults.data_seed) if defaults else (None, None)
    p.add_argument("--dataset", choices=DATASETS, default=dataset, help="dataset (%(default)s)")
    p.add_argument("--data-root", type=Path, help="dataset folder (voc, folder)")
    p.add_argument(
        "--data-seed", type=int, default=data_seed, help="shapes: scene stream (%(default)s)"
    )


def _train_options(p: argparse.ArgumentParser) -> None:
    _field(p, "--name", help="model name (%(default)s)")
    _field(
        p,
        "--architecture",
        choices=ARCHITECTURES,
        metavar="NAME",
        help=f"one of {', '.join(ARCHITECTURES)} (%(default)s)",
    )
    _field(p, "--width", type=int, help="channel width (default: the architecture's)")
    _data_options(p, TrainConfig())
    _field(p, "--train-length", type=int, help="shapes: scenes in the train split (2000)")
    _field(p, "--val-length", type=int, help="shapes: scenes in the val split (200)")
    _field(p, "--input-size", type=int, help="square input side (%(default)s)")
    _field(
        p,
        "--crop-size",
        type=int,
        help="square training crops (default: the input size); smaller is cheaper",
    )
    _field(
        p,
        "--max-side",
        type=int,
        help="validate as the native policy serves: each image at its own size, long side "
        "scaled down to at most this (default: stretched to the input size)",
    )
    _field(
        p,
        "--init-from",
        help="start from the weights of this exported ONNX model (same architecture and width) "
        "or training checkpoint (.pt: same width, and every tensor of the architecture in it)",
    )
    _field(p, "--epochs", type=int, help="(%(default)s)")
    _field(p, "--batch-size", type=int, help="(%(default)s)")
    _field(
        p,
        "--optimizer",
        choices=("adamw", "sgd"),
        help="both with a poly learning-rate decay (%(default)s)",
    )
    _field(p, "--lr", type=float, help="peak learning rate (%(default)s)")
    _field(p, "--weight-decay", type=float, help="(%(default)s)")
    _field(
        p,
        "--small-object-weight",
        type=float,
        help="weigh the pixels of small objects (and thin parts) up to this many times those "
        "of large ones in the loss; 0: plain cross-entropy (%(default)s)",
    )
    p.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        default=TrainConfig.augment,
        help="no random scale/crop/flip",
    )
    _field(p, "--seed", type=int, help="training seed (%(default)s)")
    p.add_argument("--run-dir", type=Path, help="checkpoint folder (default runs/NAME)")
    _field(p, "--device", help="auto (CUDA if present), cpu, cuda, cuda:1")
    _field(p, "--workers", type=int, help="data loader worker processes")
    _field(
        p,
        "--threads",
        type=int,
        help="PyTorch CPU threads (default: one per core); 1 copes best with a busy, "
        "shared machine",
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")


def _field(p: argparse.ArgumentParser, flag: str, **options: Any) -> None:
    """The option for the TrainConfig field of the same name, with that field's default:
    a training default is written once, in TrainConfig."""
    p.add_argument(flag, default=getattr(TrainConfig, flag[2:].replace("-", "_")), **options)


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "model", type=Path, nargs="?", help="a .pt checkpoint from `train`, or an ONNX model"
    )
    which.add_argument("--checkpoint", type=Path, help="the same as MODEL, a .pt checkpoint")
    which.add_argument("--onnx", type=Path, help="the same as MODEL, an ONNX model with a card")
    _data_options(p, defaults=None)
    p.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="(%(default)s)"
    )
    p.add_argument("--length", type=int, help="shapes: scenes to evaluate (500 for test)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--max-side",
        type=int,
        help="run each image as the native policy does, long side scaled down to at most this "
        "(default: the model's training setting; 0 = stretch to the input size)",
    )


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="a .pt checkpoint from `train` (best.pt)")
    p.add_argument("--out", type=Path, help="default models/NAME/1/model.onnx")
    p.add_argument("--name", help="model name in the card (default: the checkpoint's)")
    p.add_argument("--description", default="", help="one line for the card")
    p.add_argument("--fp16", action="store_true", help="half-precision weights and input")
    p.add_argument(
        "--labels",
        action="store_true",
        help="fold the argmax into the graph: uint8 (N, H, W) labels out",
    )
    p.add_argument("--static-size", action="store_true", help="fix H and W (batch stays dynamic)")
    p.add_argument(
        "--max-logit-diff",
        type=float,
        help="parity limit on max |ONNX - PyTorch| logit (1e-4 fp32, 5e-2 fp16)",
    )
    p.add_argument(
        "--max-side",
        type=int,
        help="score the export as the native policy runs it at this long-side limit, and "
        "record it in the card (default: the checkpoint's; 0 = stretch)",
    )
    p.add_argument(
        "--tile",
        type=int,
        help="the tiles policy's default window side, in the card (default: the input size)",
    )
    p.add_argument(
        "--eval-split",
        default="test",
        choices=("val", "test", "none"),
        help="split whose scores go into the card (%(default)s); scored with ONNX "
        "Runtime on the exported file",
    )


def _import_options(p: argparse.ArgumentParser) -> None:
    families = p.add_subparsers(
        dest="family", required=True, metavar="FAMILY", help="torchvision, segformer or smp"
    )
    tv = families.add_parser("torchvision", help="torchvision's FCN, DeepLabV3 and LR-ASPP")
    tv.add_argument("model", choices=TORCHVISION_MODELS, help="the builder's name")
    weights = _weights_options(tv, "a state dict saved from the same builder (aux heads ignored)")
    weights.add_argument(
        "--pretrained",
        action="store_true",
        help="torchvision's DEFAULT weights (COCO images, the 21 VOC classes), downloaded "
        "into TORCH_HOME (~/.cache/torch) unless already there",
    )
    _release_options(tv, "torchvision")
    seg = families.add_parser("segformer", help="transformers' SegformerForSemanticSegmentation")
    seg.add_argument(
        "source",
        help="a local Hugging Face directory (config.json and weights), or a Hub id with "
        "--pretrained",
    )
    how = seg.add_mutually_exclusive_group()
    how.add_argument(
        "--pretrained", action="store_true", help="download SOURCE from the Hugging Face Hub"
    )
    how.add_argument(
        "--random-init",
        action="store_true",
        help="SOURCE's config.json only, random weights (for tests and timing)",
    )
    _release_options(seg, "segformer")
    smp = families.add_parser("smp", help="segmentation_models_pytorch's Unet, FPN, DeepLabV3Plus")
    smp.add_argument("architecture", choices=SMP_ARCHITECTURES, help="the smp class")
    smp.add_argument("--encoder", required=True, help="the encoder's smp name, e.g. resnet34")
    _weights_options(smp, "a state dict of the same architecture, encoder and class count")
    _release_options(smp, "smp")


def _weights_options(p: argparse.ArgumentParser, weights_help: str) -> Any:
    """The required choice of weights: a file, or none (``--random-init``)."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--weights", type=Path, help=f"{weights_help} (.pt, .pth, .safetensors)")
    which.add_argument(
        "--random-init", action="store_true", help="no weights (for tests and timing)"
    )
    return which


def _release_options(p: argparse.ArgumentParser, family: str) -> None:
    p.add_argument(
        "--classes",
        required=True,
        help=f"{', '.join(PRESETS)} (names and palette), or a file with one label per line",
    )
    p.add_argument("--name", required=True, help="model name ([A-Za-z0-9._-])")
    p.add_argument("--version", type=int, help="default: one more than the highest there")
    p.add_argument(
        "--repository", type=Path, default=Path("models"), help="model repository (%(default)s)"
    )
    p.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZES[family],
        help="the card's input size and native long-side limit (%(default)s)",
    )
    p.add_argument("--description", default="", help="one line for the card")
    p.add_argument(
        "--max-logit-diff",
        type=float,
        help="also require max |ONNX - PyTorch| logit <= this (default: argmax agreement only)",
    )


def _annotate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="the ONNX model to annotate")
    p.add_argument("--out", type=Path, help="write here (its folder made) instead of in place")
    p.add_argument(
        "--card",
        type=Path,
        help="a card as JSON; the options below but --output and --layout are then ignored",
    )
    p.add_argument("--name", help="model name ([A-Za-z0-9._-])")
    p.add_argument("--labels", help="class labels in id order, comma-separated, background first")
    p.add_argument(
        "--input-size",
        help="HxW to serve the model at, e.g. 512x512 (default: the size the graph fixes); "
        "annotate runs the model once at this size",
    )
    p.add_argument(
        "--output",
        metavar="NAME",
        help="the graph output to serve, when it has several (e.g. 'out' beside 'aux')",
    )
    p.add_argument(
        "--layout",
        choices=("NCHW", "NHWC"),
        help="the input's layout (default: found from the axis of size 3)",
    )
    p.add_argument("--mean", default="0.485,0.456,0.406", help="per-channel mean (%(default)s)")
    p.add_argument("--std", default="0.229,0.224,0.225", help="per-channel std (%(default)s)")
    p.add_argument("--architecture", default="unknown", help="for the card (%(default)s)")
    p.add_argument("--dataset", default="unknown", help="trained on, for the card (%(default)s)")
    p.add_argument("--description", default="", help="one line for the card")


def _inspect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="an ONNX model")
    p.add_argument(
        "--latency",
        type=int,
        metavar="RUNS",
        help="also time RUNS forward passes in ONNX Runtime (after 10 warm-up runs)",
    )
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for --latency")
    p.add_argument("--batch", type=int, default=1, help="batch size for --latency")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("model_export").setLevel(logging.INFO)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    from model_export import commands  # ONNX and its Runtime load once the arguments are valid

    try:
        return getattr(commands, _FUNCTIONS.get(args.command, args.command))(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: Exception) -> str:
    """What went wrong, on one line (a card that fails validation lists each field's reason)."""
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
