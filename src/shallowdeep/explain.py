"""Grad-CAM, guided backprop and guided Grad-CAM of IC–final disagreements (spec section 10).

The CAM methods come from the maintained ``grad-cam`` package (pytorch-grad-cam); this module is a
thin adapter: :class:`OutputSelector` turns an SDN (or an SDN cut after IC k) into a network with the
one output the library expects, and the target layer is the block whose output that output reads.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .sdn import SDN, feature_shapes


class OutputSelector(nn.Module):
    """``model(x)[index]``: one output of a multi-output network, for libraries that need a tensor."""

    def __init__(self, model: nn.Module, index: int) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.index]


def target_block(sdn: SDN, output: int) -> nn.Module:
    """The last block with a spatial (4-D) output at or before the point ``output`` reads from."""
    shapes = feature_shapes(sdn.cnn)
    last = sdn.positions[output] if output < len(sdn.positions) else len(sdn.cnn.blocks) - 1
    for i in range(last, -1, -1):
        if len(shapes[i]) == 3:
            return sdn.cnn.blocks[i]
    raise UserError(f"{sdn.arch} has no convolutional block before output {output}: Grad-CAM needs one")


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
    from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    sdn.eval()
    net = sdn.cut(output) if output < len(sdn.positions) else sdn
    wrapped = OutputSelector(net, -1)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with torch.enable_grad():
        with GradCAM(model=wrapped, target_layers=[target_block(sdn, output)]) as cam:
            masks = cam(input_tensor=x, targets=targets)  # [N, H, W], scaled to [0, 1]
        private = copy.deepcopy(wrapped)
        for p in private.parameters():
            p.requires_grad_(True)
        gb_model = GuidedBackpropReLUModel(model=private, device=x.device)
        guided = np.stack([gb_model(x[i : i + 1].clone(), target_category=int(c)) for i, c in enumerate(classes)])
    guided_cam = np.stack([_deprocess(masks[i][..., None] * guided[i]) for i in range(len(classes))])
    return Explanation(output, np.asarray(classes), masks, guided, guided_cam)


def disagreements(record, limit: int) -> np.ndarray:
    """Positions of inputs the first IC gets right and the final output gets wrong (at most ``limit``)."""
    c = record.correct
    if record.num_outputs < 2:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(c[:, 0] & ~c[:, -1])[:limit]


def explanation_grid(images: np.ndarray, first: Explanation, final: Explanation, true: np.ndarray,
                     names: list[str]) -> bytes:
    """A PNG: per input, the image and the three maps for IC 1 and for the final output."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from .report import _plt, png_bytes

    plt = _plt()
    n = len(true)
    cols = ["input", "IC 1 Grad-CAM", "IC 1 guided BP", "IC 1 guided Grad-CAM",
            "final Grad-CAM", "final guided BP", "final guided Grad-CAM"]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.5 * len(cols), 1.7 * n + 0.4), squeeze=False)
    for i in range(n):
        img = images[i].astype(np.float32) / 255
        panels = [images[i],
                  show_cam_on_image(img, first.cam[i], use_rgb=True), _deprocess(first.guided[i]), first.guided_cam[i],
                  show_cam_on_image(img, final.cam[i], use_rgb=True), _deprocess(final.guided[i]), final.guided_cam[i]]
        for j, panel in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=6.5)
        axes[i][0].set_ylabel(f"true {names[true[i]]}\nIC 1: {names[first.classes[i]]}\nfinal: {names[final.classes[i]]}",
                              fontsize=6)
    fig.tight_layout()
    return png_bytes(fig, dpi=120)


def explain_run(run: str | Path, split: str = "test", limit: int = 8, out: str | Path | None = None,
                device: str = "cpu", log=None) -> dict[str, Any]:
    """Explain a run's IC-1-right/final-wrong inputs; write PNG grids and ``explain.json``."""
    from .data import normalize
    from .record import load_run_data, run_records
    from .runs import RUN_JSON, load, read_json, write_bytes, write_json

    run = Path(run)
    meta = read_json(run / RUN_JSON)
    if meta.get("model", {}).get("kind") != "sdn":
        raise UserError(f"{run} is a plain CNN run: explanations compare IC 1 with the final output; make it an SDN "
                        f"with `shallowdeep train --mode ic-only --from {run} --out DIR`")
    if limit < 1:
        raise UserError(f"--max must be at least 1, got {limit}")
    model = load(run, device)
    data = load_run_data(run)
    record = run_records(run, (split,), model=model, data=data, device=device, log=log)[split]
    pick = disagreements(record, limit)
    out = Path(out) if out else run / "explain"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("input_*.png"):  # images of an earlier, possibly longer, explanation
        old.unlink()
    names = list(data.meta.get("class_names", data.classes))
    result: dict[str, Any] = {"split": split, "count_total": int((record.correct[:, 0] & ~record.correct[:, -1]).sum()),
                              "inputs": [], "files": []}
    if len(pick):
        s = data.split(split)
        x = normalize(s.images[pick], data.mean, data.std).contiguous().to(device)
        first = explain_output(model, x, 0, record.preds[pick, 0])
        final = explain_output(model, x, model.num_outputs - 1, record.preds[pick, -1])
        images = s.images[pick].numpy()
        png = explanation_grid(images, first, final, record.labels[pick], names)
        write_bytes(out / "explanations.png", png)
        result["files"].append("explanations.png")
        for j, i in enumerate(pick):
            single = explanation_grid(images[j : j + 1], _take(first, j), _take(final, j), record.labels[pick][j : j + 1], names)
            name = f"input_{int(record.ids[i])}.png"
            write_bytes(out / name, single)
            result["files"].append(name)
            result["inputs"].append({"id": int(record.ids[i]), "true": names[record.labels[i]],
                                     "ic1": names[record.preds[i, 0]], "final": names[record.preds[i, -1]],
                                     "ic1_cam_mean": float(first.cam[j].mean()), "final_cam_mean": float(final.cam[j].mean()),
                                     "file": name})
    write_json(out / "explain.json", result)
    return result | {"folder": str(out)}


def _take(e: Explanation, j: int) -> Explanation:
    return Explanation(e.output, e.classes[j : j + 1], e.cam[j : j + 1], e.guided[j : j + 1], e.guided_cam[j : j + 1])
