"""Input policies: how an image of any size becomes model inputs, and how their labels map back.

- ``stretch``: the image resized to the model's size, aspect ratio ignored; labels stretched back.
- ``letterbox``: scaled to fit the model's size with its aspect ratio kept, placed top-left on a
  canvas of zeros (the mean colour, after normalisation; black for a uint8 input); labels
  cropped to the image's part.
- ``native``: the image itself (scaled down when its long side exceeds ``max_side``), padded
  right and bottom (its last column and row repeated) to a shape bucket: a multiple of the
  model's stride, rounded up to 32 px steps so that images of similar sizes share batches (a
  4:3 photo at 640x480 needs no padding); labels cropped back.
- ``tiles``: the image scaled by ``scale``, cut into ``tile`` x ``tile`` windows overlapping by
  ``overlap``; the windows' scores are blended with a Gaussian weight (heaviest in a window's
  centre, after MONAI's ``sliding_window_inference``) and the argmax taken, band by band
  (``Stitcher``), so no seam shows and no full-size score array is ever held.

Everything here is pure: sizes in, sizes or arrays out. ``service.pipeline`` runs the plan.

    policy = resolve(card.input, PolicyRequest(resize="tiles", tile=256), any_size=True)
    content = content_size(policy, card.input, (4000, 3000))     # (w, h) the image is scaled to
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidParameter
from service.model_card import InputSpec, Resize

Size = tuple[int, int]  # (width, height), as PIL says it
_BUCKET_STEP = 32  # native inputs are padded up to multiples of this (and of the stride)
_GAUSSIAN_SIGMA = 0.125  # of the tile side, as MONAI's default
_MIN_WEIGHT = 1e-6  # > 0: a window's corner still counts where no other window reaches


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """A request's overrides of the card's defaults (None: the card's)."""

    resize: Resize | None = None
    max_side: int | None = None
    tile: int | None = None
    overlap: float | None = None
    scale: float | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    resize: Resize
    max_side: int
    stride: int
    tile: int
    overlap: float
    scale: float


def resolve(spec: InputSpec, request: PolicyRequest, *, any_size: bool) -> Policy:
    """The policy a request gets: its overrides over the card's defaults. Raises
    InvalidParameter when the model cannot run it (a fixed-size graph takes only its own size)."""
    policy = Policy(
        resize=request.resize or spec.resize,
        max_side=request.max_side or spec.max_side,
        stride=spec.stride,
        tile=request.tile or spec.tile or max(spec.height, spec.width),
        overlap=spec.overlap if request.overlap is None else request.overlap,
        scale=request.scale or spec.scale,
    )
    if not any_size and policy.resize == "native":
        raise InvalidParameter(
            f"resize=native needs a model that takes any input size; this one takes only "
            f"{spec.width}x{spec.height} (use stretch, letterbox or tiles)"
        )
    if (
        not any_size
        and policy.resize == "tiles"
        and (spec.height, spec.width) != (policy.tile,) * 2
    ):
        raise InvalidParameter(
            f"this model takes only {spec.width}x{spec.height} inputs: resize=tiles needs "
            f"tile={spec.height}"
            if spec.height == spec.width
            else "resize=tiles needs a model with square or any-size inputs"
        )
    return policy


def content_size(policy: Policy, spec: InputSpec, image: Size) -> Size:
    """The size (w, h) the image is resized to before it meets the model."""
    width, height = image
    if policy.resize == "stretch":
        return spec.width, spec.height
    if policy.resize == "letterbox":
        factor = min(spec.width / width, spec.height / height)
    elif policy.resize == "native":
        factor = min(1.0, policy.max_side / max(width, height))
    else:
        factor = policy.scale
    return max(1, round(width * factor)), max(1, round(height * factor))


def input_shape(policy: Policy, spec: InputSpec, content: Size) -> tuple[int, int]:
    """(height, width) of the model input that holds ``content``."""
    if policy.resize in ("stretch", "letterbox"):
        return spec.height, spec.width
    if policy.resize == "tiles":
        return policy.tile, policy.tile
    step = bucket_step(policy.stride)
    width, height = content
    return _round_up(height, step), _round_up(width, step)


def bucket_step(stride: int) -> int:
    """``native`` inputs are padded to multiples of this: 32 px, or the next multiple of the
    model's stride."""
    return stride * math.ceil(_BUCKET_STEP / stride)


def tile_count(policy: Policy, content: Size) -> int:
    width, height = content
    return len(tile_origins(width, policy.tile, policy.overlap)) * len(
        tile_origins(height, policy.tile, policy.overlap)
    )


def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Window starts along one axis: every ``tile * (1 - overlap)`` pixels, the last flush with
    the end, so every pixel is covered; a single window (padded) when the axis is shorter."""
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def tile_weight(tile: int) -> np.ndarray:
    """The (tile, tile) blending weight: a Gaussian of sigma 0.125 x tile around the centre,
    1 there, never below 1e-6 (a floor only for corners that no other window reaches: a higher
    one would weigh the edges of two windows alike where both are far from their centres)."""
    centre = (tile - 1) / 2
    axis = np.exp(-0.5 * ((np.arange(tile) - centre) / (_GAUSSIAN_SIGMA * tile)) ** 2)
    weight = np.outer(axis, axis).astype(np.float32)
    return np.maximum(weight / weight.max(), _MIN_WEIGHT)


class Stitcher:
    """Blends the scores of overlapping windows into labels as they come.

    Windows must come band by band, top to bottom (``add(y, x, scores)``; a band is the windows
    of one ``y``). When a band starts, the rows above its top are final (no later window reaches
    them) and are argmax-ed into ``labels``. The running sums cover only ``tile`` rows, kept as
    a ring (content row r in buffer row r % tile, so finished rows are zeroed in place, never
    shifted): memory stays at classes x tile x width floats, and no window is held once added."""

    def __init__(self, content: Size, tile: int, classes: int) -> None:
        self.width, self.height = content
        self.tile = tile
        self.labels = np.zeros((self.height, self.width), np.uint8)
        self._weight = tile_weight(tile)
        self._sums = np.zeros((classes, tile, self.width), np.float32)
        self._top = 0  # the first content row not yet final

    def add(self, y: int, x: int, scores: np.ndarray) -> None:
        """``scores`` (classes, tile, tile) is the window at (``x``, ``y``)."""
        self._finish(y)
        rows = min(self.tile, self.height - y)
        cols = min(self.tile, self.width - x)
        for buffer_row, offset, count in self._ring(y, rows):
            self._sums[:, buffer_row : buffer_row + count, x : x + cols] += (
                scores[:, offset : offset + count, :cols]
                * self._weight[offset : offset + count, :cols]
            )

    def finish(self) -> np.ndarray:
        self._finish(self.height)
        return self.labels

    def _finish(self, until: int) -> None:
        """Argmax the rows from the top up to ``until`` and clear them for the rows to come."""
        done = min(until, self.height, self._top + self.tile) - self._top
        # A pixel's weights are the same for every class, so the weighted sums need no division
        # by them before the argmax.
        for buffer_row, offset, count in self._ring(self._top, done):
            rows = self._sums[:, buffer_row : buffer_row + count]
            self.labels[self._top + offset : self._top + offset + count] = rows.argmax(axis=0)
            rows[:] = 0
        self._top += max(done, 0)

    def _ring(self, start: int, count: int) -> list[tuple[int, int, int]]:
        """Content rows ``start`` to ``start + count`` as (buffer row, offset, count) pieces."""
        if count <= 0:
            return []
        first = start % self.tile
        head = min(count, self.tile - first)
        return [(first, 0, head)] + ([(0, head, count - head)] if count > head else [])


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step
