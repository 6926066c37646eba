"""torchvision's segmentation models (FCN, DeepLabV3, LR-ASPP), exported as their ``out``.

    built = build("deeplabv3_mobilenet_v3_large", classes=21, weights=Weights(pretrained=True))

The network is built without weights (no ImageNet backbone download either) and the weights
loaded into it, from a file or from torchvision's own download of the ``DEFAULT`` weights
(COCO images, the 20 VOC categories). Auxiliary heads are training aids: dropped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn

from model_export.checkpoint import sha256
from model_export.export import Graph
from model_export.importers.publish import Built
from model_export.importers.torchvision_ops import declare_missing_ops
from model_export.importers.weights import (
    RANDOM_INIT_SEED,
    DownloadError,
    Weights,
    load_into,
    read_state_dict,
)

declare_missing_ops()  # before the library's first import (torchvision_ops says why)
from torchvision.models import get_model_builder, get_model_weights  # noqa: E402

# Every backbone here reaches 1/8 (dilated ResNet) or 1/16 (MobileNetV3) and the heads scale
# the logits back to whatever size came in, so any size runs; 16 keeps every feature map whole.
STRIDE = 16


class _Out(nn.Module):
    """The model's ``out`` logits: torchvision returns a dict (with ``aux`` when trained so)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build(name: str, *, classes: int, weights: Weights) -> Built:
    """``name`` (one of ``TORCHVISION_MODELS``) with ``classes`` outputs and ``weights``.
    ValueError when the weights do not fit; DownloadError when the download fails."""
    torch.manual_seed(RANDOM_INIT_SEED)
    model = get_model_builder(name)(
        weights=None, weights_backbone=None, num_classes=classes, aux_loss=False
    )
    provenance: dict[str, object] = {"imported_from": f"torchvision.models.segmentation.{name}"}
    trained_on = None
    if weights.path is not None:
        _load(model, read_state_dict(weights.path), name)
    elif weights.pretrained:
        default = get_model_weights(name).DEFAULT
        file = _download(name, default.url)
        _load(model, read_state_dict(file), name)
        provenance |= {
            "weights": f"torchvision {default} ({default.url})",
            "checkpoint_sha256": sha256(file),
            "published_scores": default.meta["_metrics"],
        }
        trained_on = "COCO train2017 subset, the 20 PASCAL VOC categories"
    architecture, backbone = name.split("_", 1)
    return Built(
        module=_Out(model).eval(),
        num_classes=classes,
        architecture=architecture,
        backbone=backbone,
        weights=weights,
        graph=Graph(),
        stride=STRIDE,
        libraries=("torchvision",),
        trained_on=trained_on,
        provenance=provenance,
    )


def _load(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    heads = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    load_into(model, heads, name)


def _download(name: str, url: str) -> Path:
    """torchvision's weights file at ``url``: in torch hub's cache, downloaded there if need be
    (what ``load_state_dict_from_url`` does, without its "Downloading" line on stderr)."""
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if file.is_file():
        return file
    file.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(file.name)  # the name carries its sha256's first digits
    try:
        torch.hub.download_url_to_file(
            url, str(file), match.group(1) if match else None, progress=sys.stderr.isatty()
        )
    except (URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"cannot download the {name} weights ({reason}): on a machine with internet, "
            f"download {url} and put it in {file.parent}/ (or pass the file with --weights)"
        ) from exc
    return file
