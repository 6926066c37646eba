"""segmentation_models_pytorch's ``Unet``, ``FPN`` and ``DeepLabV3Plus`` with any encoder,
from a local state dict.

    built = build("Unet", encoder="resnet34", classes=19, weights=Weights(Path("unet.pt")))

The network is built with ``encoder_weights=None`` (no ImageNet download) and the state dict
loaded into it. smp refuses inputs whose sides are not multiples of the encoder's output
stride, so the graph's height and width are exported as multiples of it.
"""

from __future__ import annotations

import torch

from model_export.export import Graph
from model_export.importers.publish import Built
from model_export.importers.torchvision_ops import declare_missing_ops
from model_export.importers.weights import (
    RANDOM_INIT_SEED,
    Weights,
    load_into,
    read_state_dict,
)

declare_missing_ops()  # before the library's first import (torchvision_ops says why)
import segmentation_models_pytorch as smp  # noqa: E402


def build(architecture: str, *, encoder: str, classes: int, weights: Weights) -> Built:
    """``architecture`` (one of ``SMP_ARCHITECTURES``) on ``encoder`` with ``classes`` outputs.
    ValueError for an unknown encoder, download weights (smp publishes none for these), or
    weights that do not fit."""
    if weights.pretrained:
        raise ValueError("smp has no segmentation weights to download: pass --weights FILE")
    torch.manual_seed(RANDOM_INIT_SEED)
    try:
        model = getattr(smp, architecture)(
            encoder_name=encoder, encoder_weights=None, classes=classes
        )
    except KeyError:
        raise ValueError(
            f"unknown encoder {encoder!r}: smp.encoders.get_encoder_names() lists them"
        ) from None
    what = f"smp.{architecture}({encoder})"
    if weights.path is not None:
        load_into(model, read_state_dict(weights.path), what)
    stride = model.encoder.output_stride
    return Built(
        module=model.eval(),
        num_classes=classes,
        architecture=f"smp-{architecture}",
        backbone=encoder,
        weights=weights,
        graph=Graph(size_multiple=stride),
        stride=stride,
        libraries=("segmentation_models_pytorch", "timm", "torchvision"),
        provenance={"imported_from": f"segmentation_models_pytorch.{architecture}"},
    )
