"""Common corruptions of a split's images, seeded: six of the CIFAR-10-C families (Hendrycks and
Dietterich, ICLR 2019) at their five severities, applied by torchvision.transforms.v2 where it has them.

The severities are CIFAR-10-C's parameters (its ``make_cifar_c.py``) for 32 px images; blur and
pixelation scale with the image size so a larger image is corrupted as much, relatively.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F

from ..core.errors import ArgumentError

# family -> its parameter at severities 1..5 (CIFAR-10-C's)
SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise standard deviation, pixels in [0, 1]
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # blur sigma in pixels of a 32 px image
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # contrast factor
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV's value
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # down-scaling factor before scaling back
}
FAMILIES = tuple(SEVERITIES)
_BATCH = 1024  # images corrupted at once (JPEG round trips one by one inside torchvision)


@dataclass(frozen=True)
class Corruption:
    """One family at one severity (1..5)."""

    family: str
    severity: int

    def __post_init__(self) -> None:
        if self.family not in SEVERITIES:
            families = ", ".join(FAMILIES)
            raise ArgumentError(f"unknown corruption {self.family!r} in `corruptions`: choose among {families}")
        if isinstance(self.severity, bool) or self.severity not in range(1, 6):
            raise ArgumentError(f"a corruption's severity (`corruptions` FAMILY:N) is 1..5, not {self.severity!r}")

    @property
    def label(self) -> str:
        """``gaussian_noise-3``: the name in file names and reports."""
        return f"{self.family}-{self.severity}"

    @property
    def parameter(self) -> float:
        return SEVERITIES[self.family][self.severity - 1]


def parse_corruptions(text: str) -> tuple[Corruption, ...]:
    """``"all"`` (every family at every severity), or a comma-separated list of families (each at
    every severity) and ``family:severity`` pairs."""
    chosen: list[Corruption] = []
    for part in [p.strip() for p in text.split(",") if p.strip()] or ["all"]:
        family, _, sev = part.partition(":")
        families = FAMILIES if family == "all" else (family,)
        if sev and not sev.isdigit():
            raise ArgumentError(f"a corruption's severity is 1..5, as jpeg:3; got {part!r}")
        for f in families:
            chosen += [Corruption(f, int(sev))] if sev else [Corruption(f, s) for s in range(1, 6)]
    return tuple(dict.fromkeys(chosen))


def _brightness(x: torch.Tensor, amount: float) -> torch.Tensor:
    """CIFAR-10-C's brightness: HSV's value raised by ``amount`` (clipped at 1), hue and saturation
    kept. With hue and saturation fixed, RGB is proportional to the value, so this scales each pixel."""
    v = x.amax(dim=1, keepdim=True)
    return x * (torch.clamp(v + amount, max=1.0) / v.clamp_min(1e-6))


def _apply(x: torch.Tensor, c: Corruption, generator_seed: int) -> torch.Tensor:
    """``x``: uint8 ``[N, 3, H, W]`` -> the corrupted uint8 images."""
    p, size = c.parameter, x.shape[-1]
    if c.family == "jpeg":
        return F.jpeg(x, quality=int(p))
    f = x.float() / 255
    if c.family == "gaussian_noise":
        with torch.random.fork_rng(devices=[]):  # the noise is seeded without touching the caller's stream
            torch.manual_seed(generator_seed)
            f = F.gaussian_noise(f, sigma=p, clip=True)
    elif c.family == "gaussian_blur":
        sigma = p * size / 32
        k = 2 * max(1, round(3 * sigma)) + 1
        f = F.gaussian_blur(f, kernel_size=[k, k], sigma=[sigma, sigma])
    elif c.family == "contrast":
        f = F.adjust_contrast(f, p)
    elif c.family == "brightness":
        f = _brightness(f, p)
    else:  # pixelate: down with an antialiased filter, back up by nearest neighbour (blocky)
        small = max(1, round(size * p))
        f = F.resize(
            F.resize(f, [small, small], antialias=True), [size, size], interpolation=F.InterpolationMode.NEAREST
        )
    return (f.clamp(0, 1) * 255).round().to(torch.uint8)


def corrupt(images: torch.Tensor, c: Corruption, seed: int = 0) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` images with ``c`` applied; the same ``seed`` gives the same images."""
    out = []
    for i, a in enumerate(range(0, len(images), _BATCH)):
        x = images[a : a + _BATCH].permute(0, 3, 1, 2).contiguous()
        out.append(
            _apply(x, c, (seed * 1_000_003 + zlib.crc32(c.label.encode())) * 1009 + i).permute(0, 2, 3, 1).contiguous()
        )
    return torch.cat(out) if out else images.clone()
