"""A small learnable class-conditional image set generated from a seed; nothing is read or written."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnncomp.data.catalog import Arrays, channel_stats
from cnncomp.data.tensor_loader import windows


def make_synthetic(num_classes: int, in_channels: int, size: int, num_train: int, num_test: int, seed: int) -> Arrays:
    """Class prototypes (smooth random patterns) plus noise and a small random shift, as uint8."""
    g = torch.Generator().manual_seed(seed)
    shift, noise, contrast = 2, 3.0, 12  # noise 3x the prototype's std: learnable, not trivial
    # Upsampling a 4x4 random grid gives patterns a small shift leaves recognizable.
    coarse = torch.randn(num_classes, in_channels, 4, 4, generator=g)
    protos = F.interpolate(coarse, size=(size + 2 * shift,) * 2, mode="bilinear", align_corners=False)
    protos /= protos.std(dim=(1, 2, 3), keepdim=True)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        top, left = torch.randint(2 * shift + 1, (2, n), generator=g)
        x = windows(protos[y], top, left, torch.zeros(n, dtype=torch.bool), size, size)
        x = x + noise * torch.randn(x.shape, generator=g)
        return (128 + contrast * x).round().clamp(0, 255).to(torch.uint8), y

    train_x, train_y = sample(num_train)
    test_x, test_y = sample(num_test)
    return Arrays(train_x, train_y, test_x, test_y, num_classes, *channel_stats(train_x))
