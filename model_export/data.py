"""Feeding a dataset to PyTorch: augmentation, the service's normalisation, tensors."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from model_export.datasets import Sample, SegmentationDataset
from model_export.transforms import Augment, resize_pair
from service.imaging import prepare
from service.model_card import InputSpec


class InMemory:
    """Materialises a dataset once (synthetic scenes cost more to render than to train on)."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.name = dataset.name
        self.classes = dataset.classes
        self.samples = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


class TrainingSamples(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Augmented, normalised training pairs. The augmentation of sample i in epoch e is drawn
    from ``(seed, e, i)``, so a run is reproducible whatever the loader's worker count."""

    def __init__(
        self, dataset: SegmentationDataset, spec: InputSpec, augment: Augment | None, seed: int
    ) -> None:
        self.dataset = dataset
        self.spec = spec
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[index]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, mask = self.augment(image, mask, rng)
        else:
            # Unaugmented samples are stretched to the input size, as the service does.
            size = (self.spec.width, self.spec.height)
            image, mask = resize_pair(image, mask, size)
        # The service's own normalisation; its resize is a no-op at this point.
        spec = self.spec.model_copy(update={"height": mask.shape[0], "width": mask.shape[1]})
        x = prepare(Image.fromarray(image), spec)
        return torch.from_numpy(x), torch.from_numpy(mask.astype(np.int64))
