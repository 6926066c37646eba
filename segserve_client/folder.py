"""Segment a folder: every image through the service, ``concurrency`` at a time, resumable.

    summary = asyncio.run(segment_folder(client, Path("photos"), Path("masks"), "rle", 8))

Each image's answer is written next to its relative path under ``out`` as ``<name>.mask.png``,
``<name>.rle.json`` or ``<name>.overlay.png``, atomically (a temporary file, then a rename), so
an interrupted run leaves no half-written file and a rerun skips every image already answered.
With ``rle``, ``coco_results.json`` gathers every answer in the COCO results format.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from segserve_client.client import AsyncClient, Format, SegserveError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
OUTPUT_SUFFIXES: dict[str, str] = {
    "png": ".mask.png",
    "rle": ".rle.json",
    "overlay": ".overlay.png",
}
COCO_RESULTS = "coco_results.json"


@dataclass
class Summary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    retries: int = 0
    elapsed_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)  # problem code -> images

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def images_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"segmented {self.done}, skipped {self.skipped} (done before), failed {self.failed} "
            f"of {self.total} images in {self.elapsed_s:.1f} s ({self.images_per_s:.1f} images/s); "
            f"{self.retries} retries"
        ]
        if self.errors:
            by_code = ", ".join(f"{code} {n}" for code, n in self.errors.most_common())
            lines.append(f"errors by code: {by_code}")
        return "\n".join(lines)


def find_images(source: Path) -> list[Path]:
    """The image files under ``source`` (any depth), relative to it, in a stable order."""
    return sorted(
        p.relative_to(source)
        for p in source.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def output_path(out: Path, image: Path, fmt: str) -> Path:
    return out / image.parent / (image.name + OUTPUT_SUFFIXES[fmt])


async def segment_folder(
    client: AsyncClient,
    source: Path,
    out: Path,
    fmt: Format,
    concurrency: int,
    *,
    progress: TextIO | None = sys.stderr,
    **options: Any,
) -> Summary:
    """Segment every image under ``source`` not yet answered in ``out``; ``options`` go to
    ``AsyncClient.segment`` (model, version, alpha). Failures are counted, never raised."""
    images = find_images(source)
    todo = [image for image in images if not output_path(out, image, fmt).exists()]
    summary = Summary(total=len(images), skipped=len(images) - len(todo))
    reporter = _Progress(summary, progress)
    started = time.monotonic()
    slots = asyncio.Semaphore(concurrency)

    async def one(image: Path) -> None:
        async with slots:
            try:
                result = await client.segment(source / image, fmt=fmt, **options)
            except SegserveError as exc:
                summary.errors[exc.code] += 1
                summary.retries += exc.attempts - 1
                reporter.failure(image, exc)
            else:
                _write_atomically(output_path(out, image, fmt), result.content)
                summary.done += 1
                summary.retries += result.attempts - 1
            summary.elapsed_s = time.monotonic() - started
            reporter.update()

    await asyncio.gather(*(one(image) for image in todo))
    summary.elapsed_s = time.monotonic() - started
    reporter.finish()
    if fmt == "rle":
        write_coco_results(out, images)
    return summary


def write_coco_results(out: Path, images: list[Path]) -> Path:
    """``out/coco_results.json``: one COCO result per class of every answered image, with
    ``image_id`` the image's 1-based position in ``images`` (``file_name`` says which it is),
    ``category_id`` the class id and ``segmentation`` the compressed RLE."""
    results = []
    for image_id, image in enumerate(images, start=1):
        answer = output_path(out, image, "rle")
        if not answer.exists():
            continue
        for mask in json.loads(answer.read_bytes())["masks"]:
            results.append(
                {
                    "image_id": image_id,
                    "file_name": image.as_posix(),
                    "category_id": mask["class_id"],
                    "segmentation": mask["rle"],
                    "area": mask["area"],
                    "score": 1.0,
                }
            )
    path = out / COCO_RESULTS
    _write_atomically(path, json.dumps(results).encode())
    return path


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class _Progress:
    """One line rewritten in place on a terminal; elsewhere a line every few seconds."""

    def __init__(self, summary: Summary, stream: TextIO | None, every_s: float = 5.0) -> None:
        self.summary, self.stream, self.every_s = summary, stream, every_s
        self.tty = bool(stream is not None and stream.isatty())
        self.last = 0.0

    def line(self) -> str:
        s = self.summary
        finished = s.done + s.failed + s.skipped
        return (
            f"[{finished}/{s.total}] {s.done} segmented, {s.skipped} skipped, {s.failed} failed,"
            f" {s.images_per_s:.1f} images/s"
        )

    def update(self) -> None:
        if self.stream is None:
            return
        if self.tty:
            print(f"\r{self.line()}", end="", file=self.stream, flush=True)
        elif time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            print(self.line(), file=self.stream, flush=True)

    def failure(self, image: Path, error: SegserveError) -> None:
        if self.stream is not None:
            prefix = "\n" if self.tty else ""
            print(f"{prefix}failed: {image.as_posix()}: {error}", file=self.stream, flush=True)

    def finish(self) -> None:
        if self.stream is not None:
            print(f"\r{self.line()}" if self.tty else self.line(), file=self.stream, flush=True)
