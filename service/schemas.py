"""The JSON bodies of the API as typed models: they are what ``/docs`` shows.

``/models`` answers are built from these; the ``rle`` answer of ``/segment`` is serialised
directly with orjson (it is on the hot path) in exactly the shape of ``RleResult``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.model_card import ClassInfo, InputType, Layout, Resize, TrainingCard


class Rle(BaseModel):
    size: tuple[int, int] = Field(description="[height, width]")
    counts: str = Field(description="COCO compressed RLE, as pycocotools.mask.encode writes it")


class ClassMask(BaseModel):
    class_id: int
    label: str
    color: tuple[int, int, int]
    area: int = Field(description="pixels of this class")
    rle: Rle


class RleResult(BaseModel):
    model: str
    version: int
    width: int
    height: int
    masks: list[ClassMask] = Field(description="one per class present, ordered by class id")


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="stable error code, see docs/API.md")


class InputInfo(BaseModel):
    height: int
    width: int
    layout: Layout = Field(
        description="the graph's; a prepared OIP input is always [N,3,H,W] (the service "
        "transposes it for NHWC)"
    )
    channels: Literal["RGB"]
    dtype: InputType = Field(description="uint8: the graph takes pixels 0..255")
    resize: Resize = Field(description="the default input policy; ?resize= chooses another")
    max_side: int = Field(description="native: longest side the model sees")
    stride: int = Field(description="native: inputs are padded to a multiple of it")
    tile: int | None = Field(description="tiles: window side (null: the model's input size)")
    overlap: float = Field(description="tiles: fraction windows overlap")
    scale: float = Field(description="tiles: image scale before tiling")


class Normalization(BaseModel):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    formula: str = "(pixel / 255 - mean) / std"


class VersionInfo(BaseModel):
    version: int
    description: str
    classes: list[ClassInfo]
    input: InputInfo
    normalization: Normalization | None = Field(
        description="null: the model takes pixels 0..255 (uint8) and normalises them itself"
    )
    output: Literal["logits", "labels"] = Field(description="labels: argmax inside the model")
    provider: str = Field(description="execution provider in use: CPU, CUDA or TensorRT")
    sessions: int
    training: TrainingCard | None = Field(description="the card the export embedded")


class Batching(BaseModel):
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue: int
    request_timeout_ms: float


class UnavailableVersion(BaseModel):
    version: int
    reason: str = Field(description="why this version in the repository is not served")


class ModelInfo(BaseModel):
    name: str
    default: bool
    latest_version: int
    versions: list[VersionInfo]
    unavailable_versions: list[UnavailableVersion] = Field(
        description="versions in the repository that failed to load (model control); the "
        "versions listed above keep serving"
    )
    batching: Batching


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]


class Status(BaseModel):
    status: str
