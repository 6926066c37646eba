"""Weights for an imported network: where they come from, reading a state dict, fitting it.

weights = Weights(path=Path("unet.pt"))   # or Weights(pretrained=True); Weights(): random
load_into(module, read_state_dict(weights.path), "smp.Unet")   # ValueError if it misfits
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model_export.checkpoint import sha256

# Seeded, so that --random-init writes the same file every time.
RANDOM_INIT_SEED = 0


class DownloadError(RuntimeError):
    """A library could not download weights; the message says what to fetch and where to put
    it, in one line."""


@dataclass(frozen=True)
class Weights:
    """A weights file or directory (``path``), the library's own download (``pretrained``), or
    neither: random initialisation, for tests and timing."""

    path: Path | None = None
    pretrained: bool = False

    @property
    def random(self) -> bool:
        return self.path is None and not self.pretrained

    def provenance(self) -> dict[str, object]:
        """The card's record of these weights: a file's name and sha256, the seed of a random
        initialisation; nothing for a download, which each family describes."""
        if self.path is not None and self.path.is_file():
            return {"checkpoint_sha256": sha256(self.path), "weights": self.path.name}
        if self.path is not None:  # a directory: its family finds the file in it
            return {"weights": self.path.name}
        if self.random:
            return {"seed": RANDOM_INIT_SEED, "weights": "random initialisation"}
        return {}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors in a ``.safetensors`` file or a ``torch.save``d state dict (read with
    ``weights_only``: no code runs). FileNotFoundError or ValueError, naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch's own errors all mean "not a state dict"
        raise ValueError(f"{path}: not a PyTorch state dict ({exc})") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return dict(state)


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module`` strictly. ValueError in one line when it does not fit:
    missing and unexpected names, and shapes that differ (a different number of classes)."""
    own = module.state_dict()
    problems = []
    if missing := sorted(own.keys() - state.keys()):
        problems.append(f"{len(missing)} missing ({_some(missing)})")
    if unexpected := sorted(state.keys() - own.keys()):
        problems.append(f"{len(unexpected)} unexpected ({_some(unexpected)})")
    for name in sorted(own.keys() & state.keys()):
        if own[name].shape != state[name].shape:
            problems.append(
                f"{name} is {tuple(state[name].shape)} in the weights but "
                f"{tuple(own[name].shape)} in {what}"
            )
            break  # the first says enough: usually the classifier, a different class count
    if problems:
        raise ValueError(f"the weights do not fit {what}: " + "; ".join(problems))
    module.load_state_dict(state)


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
