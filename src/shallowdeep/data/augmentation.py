"""The paper's augmentation on whole uint8 batches, and normalisation to the network's input."""

from __future__ import annotations

import torch


def augment(images: torch.Tensor, pad: int, flip: bool, jitter: float, generator: torch.Generator) -> torch.Tensor:
    """The paper's augmentation on a uint8 ``[B, H, W, 3]`` batch; returns float ``[B, H, W, 3]`` in [0, 1].

    Random crop after zero padding by ``pad`` pixels, horizontal flip with probability 0.5, and when
    ``jitter > 0`` brightness, contrast and saturation jitter by factors in [1 - jitter, 1 + jitter].
    """
    b, h, w, _ = images.shape
    dev = images.device  # random numbers are drawn where the images are (``generator`` lives there too)
    padded = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]  # [B, 1, W]
    if flip:
        flipped = torch.rand(b, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped[:, None, None], cols.flip(-1), cols)
    x = padded[torch.arange(b, device=dev)[:, None, None], rows, cols].float() / 255
    if jitter > 0:
        luma = torch.tensor([0.299, 0.587, 0.114], device=dev)

        def factor() -> torch.Tensor:
            return (1 + (torch.rand(b, generator=generator, device=dev) * 2 - 1) * jitter)[:, None, None, None]

        x = x * factor()
        gray = (x * luma).sum(-1, keepdim=True)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean
        gray = (x * luma).sum(-1, keepdim=True)
        x = (x - gray) * factor() + gray
        x = x.clamp(0, 1)
    return x


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (or [0, 1] float) ``[N, H, W, 3]`` images -> normalised float ``[N, 3, H, W]``.

    The result keeps NHWC memory under an NCHW view: channels-last for free.
    """
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    m = mean if isinstance(mean, torch.Tensor) else torch.tensor(mean, device=x.device)
    sd = std if isinstance(std, torch.Tensor) else torch.tensor(std, device=x.device)
    return ((x - m.view(1, 1, 1, 3)) / sd.view(1, 1, 1, 3)).permute(0, 3, 1, 2)
