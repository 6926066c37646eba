"""The CLI's subcommands: argparse namespaces in, work done by the library modules."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from model_export.annotate import annotated_card, fixed_size, graph_signature, learn, signature
from model_export.architectures import ARCHITECTURES
from model_export.card import (
    card_from_checkpoint,
    card_of_file,
    load_onnx,
    with_scores,
    write_card,
)
from model_export.checkpoint import Checkpoint, TrainConfig, sha256
from model_export.datasets import SYNTHETIC, open_dataset
from model_export.evaluate import evaluate as score
from model_export.evaluate import onnx_predictor, onnx_session, torch_predictor
from model_export.export import PARITY, Graph, Tolerance
from model_export.export import export as export_model
from model_export.importers.presets import class_set
from model_export.importers.publish import IMPORT_PARITY, Built, Release, publish
from model_export.importers.weights import Weights
from model_export.train import train as train_model
from service.model_card import InputSpec, ModelCard, TrainingCard


def train(args: argparse.Namespace) -> int:
    config = train_config(args)
    best = train_model(config, resume=args.resume)
    print(f"best val mIoU {best.best_miou:.4f} at epoch {best.epoch}: {config.run_dir}/best.pt")
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The config the ``train`` options describe: each option is the field of the same name,
    except the two paths, which a checkpoint keeps as text."""
    paths = {
        "data_root": str(args.data_root) if args.data_root else None,
        "run_dir": str(args.run_dir or Path("runs") / args.name),
    }
    return TrainConfig.from_dict(vars(args) | paths)


def evaluate(args: argparse.Namespace) -> int:
    # Where the data comes from defaults to what the model was trained on (the checkpoint's
    # config, or the card's provenance); the command line overrides any part of it.
    model: Path = args.model or args.checkpoint or args.onnx
    if model.suffix == ".pt":
        checkpoint = Checkpoint.load(model)
        config = checkpoint.config
        spec = config.input_spec()
        predict = torch_predictor(checkpoint.build())
        dataset, root, seed, size = (
            config.dataset, config.data_root, config.data_seed, config.input_size
        )  # fmt: skip
        max_side = config.max_side
    else:
        card = card_of_file(model)
        spec = card.input
        predict = onnx_predictor(onnx_session(model, args.threads))
        extra = (card.training.model_extra if card.training else None) or {}
        dataset = card.training.dataset if card.training else "shapes"
        root, seed, size = None, extra.get("data_seed", 0), extra.get("scene_size", spec.height)
        max_side = extra.get("max_side")
    data = open_dataset(
        args.dataset or dataset,
        args.split,
        root=args.data_root or (Path(root) if root else None),
        seed=seed if args.data_seed is None else args.data_seed,
        size=size,
        length=args.length,
    )
    if args.max_side is not None:
        max_side = args.max_side or None
    scores = score(predict, data, spec, progress=True, max_side=max_side)
    how = f"native, long side <= {max_side}" if max_side else "stretched"
    print(f"{data.name} {args.split} ({len(data)} images), {how}\n{scores.table()}")
    return 0


def export(args: argparse.Namespace) -> int:
    checkpoint = Checkpoint.load(args.checkpoint)
    if args.max_side is not None:  # the policy the card's scores (and max_side) describe
        checkpoint = replace(
            checkpoint, config=replace(checkpoint.config, max_side=args.max_side or None)
        )
    config = checkpoint.config
    name = args.name or config.name
    out = args.out or Path("models") / name / "1" / "model.onnx"
    card = card_from_checkpoint(
        checkpoint,
        name=name,
        description=args.description,
        checkpoint_sha256=sha256(args.checkpoint),
    )
    if args.tile:  # validated as any card field is
        tiled = InputSpec.model_validate(card.input.model_dump() | {"tile": args.tile})
        card = card.model_copy(update={"input": tiled})
    parity = export_model(
        checkpoint.build(),
        card,
        out,
        fp16=args.fp16,
        labels=args.labels,
        dynamic_size=not args.static_size,
        tolerance=_tolerance(args),
        graph=Graph(full_size=ARCHITECTURES[config.architecture].output_stride == 1),
    )
    print(
        f"wrote {out}: max |Δlogit| {parity.max_abs_logit:.2e}, "
        f"argmax agreement {parity.argmax_agreement:.5f}"
    )
    if args.eval_split == "none":
        return 0
    # Score the file that will be served, in ONNX Runtime, and record that in its card.
    split = args.eval_split
    if config.dataset not in SYNTHETIC and split == "test":
        split = "val"  # VOC-style datasets publish no test masks
    data = open_dataset(
        config.dataset,
        split,
        root=Path(config.data_root) if config.data_root else None,
        seed=config.data_seed,
        size=config.input_size,
    )
    written = card_of_file(out)
    predict = onnx_predictor(onnx_session(out))
    scores = score(predict, data, written.input, progress=True, max_side=config.max_side)
    write_card(out, with_scores(written, scores, split, len(data), config.max_side))
    print(f"{data.name} {split} ({len(data)} images), ONNX Runtime\n{scores.table()}")
    return 0


def _tolerance(args: argparse.Namespace) -> Tolerance | None:
    if args.max_logit_diff is None:
        return None
    default = PARITY["fp16" if args.fp16 else "fp32"]
    return Tolerance(args.max_logit_diff, default.min_argmax_agreement)


def annotate(args: argparse.Namespace) -> int:
    given = ModelCard.model_validate_json(args.card.read_text()) if args.card else None
    output = args.output or (given.output.name if given else None)
    found = graph_signature(
        load_onnx(args.model, external_data=False), output=output, layout=args.layout
    )
    card = given or _card_from_options(args, fixed_size(found))
    learned = learn(
        args.model, (card.input.height, card.input.width), output=output, layout=args.layout
    )
    written = annotated_card(card, learned)
    write_card(args.model, written, args.out)
    spec = written.input
    pixels = "" if spec.dtype == "uint8" else f", mean {spec.mean}, std {spec.std}"
    print(f"annotated {args.out or args.model}")
    for line in learned.summary():
        print(f"  {line}")
    print(
        f"  card    '{written.name}': {written.num_classes} classes, input {spec.height}x"
        f"{spec.width}{pixels}, resize {spec.resize}"
    )
    return 0


def _card_from_options(args: argparse.Namespace, fixed: tuple[int, int] | None) -> ModelCard:
    """The card the options describe; the input size defaults to the one the graph fixes."""
    missing = [o for o in ("name", "labels") if getattr(args, o) is None]
    if missing:
        raise ValueError(
            "annotate needs --card, or all of: " + ", ".join("--" + m for m in missing)
        )
    if args.input_size:
        height, width = _size(args.input_size)
    elif fixed:
        height, width = fixed
    else:
        raise ValueError(
            "the graph takes any input size: give the size to serve it at with --input-size HxW"
        )
    return ModelCard.with_default_colors(
        [label.strip() for label in args.labels.split(",")],
        name=args.name,
        description=args.description,
        input=InputSpec(height=height, width=width, mean=_triple(args.mean), std=_triple(args.std)),
        training=TrainingCard(architecture=args.architecture, dataset=args.dataset),
    )


def inspect(args: argparse.Namespace) -> int:
    print(signature(load_onnx(args.model, external_data=False)))
    card = card_of_file(args.model)
    spec = card.input
    print(f"name: {card.name} (card schema {card.schema_version})")
    if card.description:
        print(f"description: {card.description}")
    print("classes:", ", ".join(f"{c.id} {c.label} {tuple(c.color)}" for c in card.classes))
    pixels = (
        "pixels 0..255 (normalised in the graph)"
        if spec.dtype == "uint8"
        else f"mean {spec.mean}, std {spec.std}"
    )
    print(f"input: {spec.height}x{spec.width} {spec.channels} {spec.layout} {spec.dtype}, "
          f"{pixels}, resize {spec.resize}")  # fmt: skip
    name = f" '{card.output.name}'" if card.output.name else ""
    print(f"output{name}: {card.output.kind}")
    if card.training:
        print("training:", json.dumps(card.training.model_dump(mode="json"), indent=2))
    if args.latency:
        from model_export.latency import measure

        print(measure(args.model, runs=args.latency, batch=args.batch, threads=args.threads))
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input-size must look like 512x512, not {text!r}") from None
    return h, w


def _triple(text: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 3:
        raise ValueError(f"expected three comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


def import_model(args: argparse.Namespace) -> int:
    dataset, classes = class_set(args.classes)
    built = _built(args, num_classes=len(classes))
    release = Release(args.name, args.repository, args.version, args.description)
    tolerance = IMPORT_PARITY
    if args.max_logit_diff is not None:
        tolerance = replace(tolerance, max_abs_logit=args.max_logit_diff)
    path, parity = publish(built, release, classes, dataset, size=args.size, tolerance=tolerance)
    print(
        f"wrote {path}: {len(classes)} classes, argmax agreement {parity.argmax_agreement:.5f}, "
        f"max |Δlogit| {parity.max_abs_logit:.2e} (ONNX Runtime against {args.family})"
    )
    return 0


def _built(args: argparse.Namespace, *, num_classes: int) -> Built:
    """The family's network with its weights; each family's library loads only when asked for."""
    if args.family == "segformer":
        from model_export.importers import segformer

        return segformer.build(args.source, download=args.pretrained, random_init=args.random_init)
    weights = Weights(path=args.weights, pretrained=getattr(args, "pretrained", False))
    if args.family == "torchvision":
        from model_export.importers import torchvision_models

        return torchvision_models.build(args.model, classes=num_classes, weights=weights)
    from model_export.importers import smp_models

    return smp_models.build(
        args.architecture, encoder=args.encoder, classes=num_classes, weights=weights
    )
