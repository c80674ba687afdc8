"""Grad-CAM, guided backprop and guided Grad-CAM of IC–final disagreements (spec section 10).

The CAM methods come from the maintained ``grad-cam`` package (pytorch-grad-cam); this module is a
thin adapter: :class:`OutputSelector` turns an SDN (or an SDN cut after IC k) into a network with the
one output the library expects, and the target layer is the block whose output that output reads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..analysis.examples import spread_over_classes
from ..core.errors import ArgumentError, MissingExtraError
from ..models.layout import CHW, HWC, TOKENS, FeatureLayout, shape_layout, token_grid
from ..models.sdn import SDN, feature_shapes


class OutputSelector(nn.Module):
    """``model(x)[index]``: one output of a multi-output network, for libraries that need a tensor."""

    def __init__(self, model: nn.Module, index: int) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.index]


Reshape = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CamTarget:
    """The block Grad-CAM reads, and ``reshape``: its output as a ``[N, C, h, w]`` map (``None``: it is
    one), for channels-last maps and for tokens on a square patch grid (class tokens left out)."""

    block: nn.Module
    reshape: Reshape | None


def _map_view(shape: tuple[int, ...], layout: FeatureLayout) -> tuple[bool, Reshape | None]:
    """Whether a feature of ``shape`` and ``layout`` is a map Grad-CAM can read, and how."""
    if layout.axes == CHW and len(shape) == 3:
        return True, None
    if layout.axes == HWC:
        return True, lambda t: t.permute(0, 3, 1, 2)
    side = token_grid(shape[0], layout.prefix) if layout.axes == TOKENS else None
    if side is None:
        return False, None
    p = layout.prefix
    return True, lambda t: t[:, p:].reshape(t.shape[0], side, side, t.shape[-1]).permute(0, 3, 1, 2)


def cam_target(sdn: SDN, output: int) -> CamTarget:
    """The last block with a map (or tokens on a patch grid) at or before the point ``output`` reads from."""
    shapes = feature_shapes(sdn.cnn)
    layouts = sdn.cnn.layouts or tuple(FeatureLayout(shape_layout(s)) for s in shapes)
    last = sdn.positions[output] if output < len(sdn.positions) else len(sdn.cnn.blocks) - 1
    for i in range(last, -1, -1):
        is_map, reshape = _map_view(shapes[i], layouts[i])
        if is_map:
            return CamTarget(sdn.cnn.blocks[i], reshape)
    raise ArgumentError(
        f"{sdn.arch} has no block with a feature map, or tokens on a square patch grid, before output "
        f"{output}: Grad-CAM needs one"
    )


def target_block(sdn: SDN, output: int) -> nn.Module:
    """The block of :func:`cam_target`."""
    return cam_target(sdn, output).block


@dataclass
class Explanation:
    """Maps for N inputs and one output: ``cam`` [N, H, W] in [0, 1], ``guided`` [N, H, W, 3]
    (raw guided-backprop gradients) and ``guided_cam`` [N, H, W, 3] uint8 (guided Grad-CAM)."""

    output: int
    classes: np.ndarray
    cam: np.ndarray
    guided: np.ndarray
    guided_cam: np.ndarray


def _deprocess(img: np.ndarray) -> np.ndarray:
    from pytorch_grad_cam.utils.image import deprocess_image

    return deprocess_image(img)


def explain_output(sdn: SDN, x: torch.Tensor, output: int, classes: np.ndarray) -> Explanation:
    """Grad-CAM, guided backprop and guided Grad-CAM of ``classes`` at ``output`` for inputs ``x``.

    An IC is explained on the network cut after it (its own computation only); the final output on
    the whole SDN. Hooks are registered and removed by the library's context manager; guided
    backprop swaps ReLUs on a private copy, so ``sdn`` is left exactly as it was.
    """
    require_grad_cam()
    from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    sdn.eval()
    net = sdn.cut(output) if output < len(sdn.positions) else sdn
    wrapped = OutputSelector(net, -1)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with torch.enable_grad():
        target = cam_target(sdn, output)
        with GradCAM(model=wrapped, target_layers=[target.block], reshape_transform=target.reshape) as cam:
            masks = cam(input_tensor=x, targets=targets)  # [N, H, W], scaled to [0, 1]
        private = copy.deepcopy(wrapped)
        for p in private.parameters():
            p.requires_grad_(True)
        gb_model = GuidedBackpropReLUModel(model=private, device=x.device)
        guided = np.stack([gb_model(x[i : i + 1].clone(), target_category=int(c)) for i, c in enumerate(classes)])
    guided_cam = np.stack([_deprocess(masks[i][..., None] * guided[i]) for i in range(len(classes))])
    return Explanation(output, np.asarray(classes), masks, guided, guided_cam)


def disagreements(record, limit: int) -> np.ndarray:
    """Positions of inputs the first IC gets right and the final output gets wrong (at most
    ``limit``, spread over the classes: :func:`~shallowdeep.analysis.examples.spread_over_classes`)."""
    c = record.correct
    if record.num_outputs < 2:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(spread_over_classes(c[:, 0] & ~c[:, -1], record.labels, limit), dtype=np.int64)


PANEL_TITLES = (
    "input",
    "IC 1 Grad-CAM",
    "IC 1 guided BP",
    "IC 1 guided Grad-CAM",
    "final Grad-CAM",
    "final guided BP",
    "final guided Grad-CAM",
)


def explanation_panels(images: np.ndarray, first: Explanation, final: Explanation) -> np.ndarray:
    """Per input the seven RGB panels of :data:`PANEL_TITLES`: uint8 ``[N, 7, H, W, 3]``."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rows = []
    for i in range(len(images)):
        img = images[i].astype(np.float32) / 255
        rows.append(
            np.stack(
                [
                    images[i],
                    show_cam_on_image(img, first.cam[i], use_rgb=True),
                    _deprocess(first.guided[i]),
                    first.guided_cam[i],
                    show_cam_on_image(img, final.cam[i], use_rgb=True),
                    _deprocess(final.guided[i]),
                    final.guided_cam[i],
                ]
            )
        )
    return np.stack(rows) if rows else np.zeros((0, 7, *images.shape[1:]), np.uint8)


def require_grad_cam() -> None:
    """Raise :class:`MissingExtraError` unless the optional ``grad-cam`` package is importable."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            "explanations need the optional grad-cam package, which is not installed", extra="explain"
        ) from None
