"""The model card: what an ONNX file tells the service about itself, via ``metadata_props``.

``model_export`` writes it; the service reads it. It lives under one metadata key as JSON so a
model can be inspected with any ONNX tool (``python -m model_export inspect model.onnx``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from service.errors import ModelLoadError

METADATA_KEY = "segserve.card"
SCHEMA_VERSION = 1

RGB = tuple[int, int, int]


class InvalidCard(ModelLoadError, ValueError):
    """A model file has no card, or one that is not valid.

    Also a ValueError: to a tool that reads a file it was handed (``model_export inspect``),
    this is bad input.
    """


def voc_palette(n: int = 256) -> list[RGB]:
    """The PASCAL VOC colour map (bit-interleaved class id): class i -> colour i."""
    colours: list[RGB] = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class ClassInfo(_Frozen):
    id: int = Field(ge=0, le=255)
    label: str = Field(min_length=1)
    color: RGB

    @field_validator("color")
    @classmethod
    def _byte_range(cls, v: RGB) -> RGB:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError("colour components must be 0..255")
        return v


Resize = Literal["stretch", "letterbox", "native", "tiles"]
Layout = Literal["NCHW", "NHWC"]
InputType = Literal["float32", "float16", "uint8"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what most pretrained backbones expect
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputSpec(_Frozen):
    """How to turn an RGB image into the model's input tensor."""

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    # The graph's: the service prepares (3, H, W) and hands NHWC graphs (H, W, 3).
    layout: Layout = "NCHW"
    channels: Literal["RGB"] = "RGB"
    # uint8: the graph takes the pixels 0..255 and normalises them itself.
    dtype: InputType = "float32"
    # x = (pixel / 255 - mean) / std, per channel (float inputs only)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # The default input policy (service/policies.py); a request may choose another:
    # "stretch": resize to (width, height) ignoring aspect ratio; labels are resized back the
    # same way. "letterbox": keep the aspect ratio, fit, pad. "native": the image's own
    # resolution (long side at most max_side), padded to a multiple of stride. "tiles": windows
    # of tile x tile pixels overlapping by ``overlap``, over the image scaled by ``scale``.
    resize: Resize = "stretch"
    max_side: int = Field(1024, ge=1, le=8192)
    stride: int = Field(32, ge=1, le=1024)
    tile: int | None = Field(None, ge=16, le=4096)  # None: the model's height and width
    overlap: float = Field(0.25, ge=0, lt=1)
    scale: float = Field(1.0, gt=0, le=4)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("std must be positive")
        return v

    @model_validator(mode="after")
    def _pixels_are_not_normalised(self) -> InputSpec:
        # A card stating a normalisation the service does not apply would mislead its reader.
        if self.dtype == "uint8" and (self.mean, self.std) != (IMAGENET_MEAN, IMAGENET_STD):
            raise ValueError(
                "a uint8 input takes the pixels 0..255 as they are (the graph normalises "
                "them): mean and std do not apply, leave them out"
            )
        return self


class OutputSpec(_Frozen):
    """The graph output the service reads. ``kind``: ``logits``, float scores (N, C, h, w) whose
    argmax the service takes; ``labels``, integer class ids (N, h, w) or (N, 1, h, w). An output
    smaller than the input (h, w a whole fraction of H, W) is scaled to the input's size.
    ``name``: which output, when the graph has several (None: it has exactly one)."""

    kind: Literal["logits", "labels"] = "logits"
    name: str | None = Field(None, min_length=1)


class TrainingCard(_Frozen):
    """Provenance and quality: how the weights were made and how good they are."""

    model_config = ConfigDict(frozen=True, extra="allow", protected_namespaces=())

    architecture: str
    backbone: str | None = None
    dataset: str
    seed: int | None = None
    epochs: int | None = None
    val_miou: float | None = None
    test_miou: float | None = None
    pixel_accuracy: float | None = None
    per_class_iou: dict[str, float] = Field(default_factory=dict)
    precision: Literal["fp32", "fp16"] = "fp32"
    library_versions: dict[str, str] = Field(default_factory=dict)
    export_time: str | None = None
    checkpoint_sha256: str | None = None


class ModelCard(_Frozen):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    classes: list[ClassInfo] = Field(min_length=2)
    input: InputSpec
    output: OutputSpec = OutputSpec()
    training: TrainingCard | None = None

    @model_validator(mode="after")
    def _dense_class_ids(self) -> ModelCard:
        if [c.id for c in self.classes] != list(range(len(self.classes))):
            raise ValueError("class ids must be 0..N-1 in order (0 = background)")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def palette(self) -> list[RGB]:
        return [c.color for c in self.classes]

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_KEY: self.model_dump_json()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], where: Path | None = None) -> ModelCard:
        """The card in ONNX ``metadata_props`` (of the file ``where``, named in errors).

        Raises InvalidCard when there is none, or it is not valid JSON for this schema.
        """
        raw = metadata.get(METADATA_KEY)
        if raw is None:
            raise _invalid(
                where,
                f"no '{METADATA_KEY}' entry in the model's metadata_props; "
                "add one with `python -m model_export annotate`",
            )
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise _invalid(where, str(exc)) from exc

    @classmethod
    def with_default_colors(cls, labels: list[str], **fields: object) -> ModelCard:
        palette = voc_palette(len(labels))
        classes = [ClassInfo(id=i, label=lab, color=palette[i]) for i, lab in enumerate(labels)]
        return cls(classes=classes, **fields)  # type: ignore[arg-type]


def _invalid(where: Path | None, reason: str) -> InvalidCard:
    return InvalidCard(("" if where is None else f"{where}: ") + f"invalid model card: {reason}")
