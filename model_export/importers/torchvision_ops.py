"""Let torchvision import beside a CPU build of torch when its compiled ops cannot load.

The only torchvision wheels for torch 2.13.0 on the package registries (0.28.0, built for CUDA
13.0) link libtorch_cuda and libc10_cuda, so their ``_C`` extension does not load beside the CPU
build of torch. torchvision then carries on without its ops, except that
``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` unconditionally (every other registration there checks
``extension._has_ops()``), and ``import torchvision`` fails with "operator torchvision::nms does
not exist". Declaring the two schemas first lets the import through. The segmentation models use
no compiled torchvision op; detection ops (nms, roi_align, ...) stay unavailable and raise when
called. docs/MODEL.md has the whole story.

    declare_missing_ops()  # before the first import of torchvision, transformers or smp
    import torchvision
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
# The declarations live as long as this Library object: kept for the life of the process.
_library: torch.library.Library | None = None


def declare_missing_ops() -> None:
    """Declare torchvision's nms and qnms schemas when torchvision is installed, not yet
    imported, and its own ``_C`` extension does not load; otherwise do nothing."""
    global _library
    if _library is not None or "torchvision" in sys.modules:
        return
    package = importlib.util.find_spec("torchvision")
    if package is None or not package.submodule_search_locations:
        return
    if _extension_loads(Path(next(iter(package.submodule_search_locations)))):
        return
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        library.define(schema)
    _library = library


def _extension_loads(package: Path) -> bool:
    """Whether torchvision's ``_C`` extension in ``package`` loads (which registers its ops),
    tried the way torchvision's own ``extension._load_library`` does."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = package / f"_C{suffix}"
        if path.is_file():
            try:
                torch.ops.load_library(str(path))
            except (ImportError, OSError):
                return False
            return True
    return False
