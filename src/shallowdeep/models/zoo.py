"""Classifiers of the torchvision and timm zoos by name (``torchvision:resnet18``, ``timm:convnext_atto``),
their pretrained weights, a user's weights file, and the classifier swap of fine-tuning.

Nothing here is unpickled: weights files are safetensors, or PyTorch files read with
``torch.load(weights_only=True)``; the zoos' own downloads go through the same restricted loading.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ArgumentError, DataError, MissingExtraError

ZOOS = ("torchvision", "timm")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def is_zoo_name(arch: str) -> bool:
    """Whether ``arch`` names a zoo model (``ZOO:NAME``)."""
    zoo, sep, name = arch.partition(":")
    return bool(sep) and zoo in ZOOS


@dataclass
class ZooModel:
    """A zoo classifier: the module, its default input size and, for pretrained weights, their
    normalisation (``mean``/``std``; ``None`` for random weights: the data's own statistics apply)."""

    module: nn.Module
    input_size: int
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    notes: list[str] = field(default_factory=list)


def _timm():
    try:
        import timm  # type: ignore[import-not-found]
    except ImportError:
        raise MissingExtraError("timm models need the timm package: pip install 'shallowdeep[zoo]'", "zoo") from None
    return timm


def _offline(arch: str, url: str, filename: str, where: str, e: BaseException) -> DataError:
    return DataError(
        f"cannot download the pretrained weights of {arch} ({type(e).__name__}): fetch {url} and "
        f"put {filename} in {where}, or pass the file as `weights`"
    )


def _hub_cached(hub_id: str) -> bool:
    """Whether the hub's cache already holds the model's weights (then no network is needed)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in ("model.safetensors", "pytorch_model.bin"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within ``timeout`` seconds (behind a proxy,
    or with the hub offline on purpose, the hub's own client decides)."""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE")):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """The hub client's warnings and log lines silenced: a failure becomes the tool's one line."""
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hub_log.setLevel(level)


def default_input_size(arch: str) -> int:
    """The input size a zoo model is made for (no model is built): torchvision's 224 (299 for
    Inception), timm's from its pretrained configuration."""
    zoo, _, name = arch.partition(":")
    if zoo == "timm":
        cfg = _timm().models.get_pretrained_cfg(name)
        return int(cfg.input_size[-1]) if cfg is not None else 224
    return 299 if name.startswith("inception") else 224


def _memory_bytes() -> int:
    """This machine's physical memory (a large number where the system does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1 << 50


def _check_size(arch: str, build: Callable[[], nn.Module]) -> None:
    """Refuse a model whose parameters alone would not fit in half this machine's memory, counted
    on the meta device (nothing allocated): a run.json naming a giant model must not end in the
    allocator's traceback."""
    with torch.device("meta"):
        params = sum(p.numel() for p in build().parameters())
    need, have = params * 4, _memory_bytes()
    if need > have // 2:
        raise ArgumentError(
            f"{arch} has {params / 1e9:.1f} billion parameters ({need / 2**30:.0f} GiB in fp32), more than half "
            f"of this machine's {have / 2**30:.0f} GiB: choose a smaller `arch`"
        )


def zoo_model(arch: str, num_classes: int, pretrained: bool = False, image_size: int | None = None) -> ZooModel:
    """Build ``arch`` (``torchvision:NAME`` or ``timm:NAME``) for ``num_classes`` classes; with
    ``pretrained`` the zoo's weights are loaded (downloaded when online) and the classifier replaced
    when the class count differs. ``image_size`` other than the model's own is given to a model built
    for one size (a ViT's patch grid and position embedding: timm's ``img_size``, torchvision's
    ``image_size``; timm interpolates pretrained position embeddings to it)."""
    zoo, _, name = arch.partition(":")
    sized = _size_kwargs(arch, image_size)
    if zoo == "torchvision":
        zm = _torchvision_model(arch, name, num_classes, pretrained, image_size, sized)
    elif zoo == "timm":
        zm = _timm_model(arch, name, num_classes, pretrained, image_size, sized)
    else:
        raise ArgumentError(f"unknown model zoo {zoo!r} in `arch`: use {' or '.join(z + ':NAME' for z in ZOOS)}")
    if not pretrained:
        return zm
    if classes_of(zm.module) != num_classes:
        replace_classifier(zm.module, num_classes)
        zm.notes.append(f"classifier replaced: {num_classes} classes (pretrained for another count)")
    return zm


def _timm_filtered(module: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` through the ``checkpoint_filter_fn`` of the timm family ``module`` belongs to, where
    it has one and it takes them; else ``tensors`` unchanged (the shape check then names a mismatch)."""
    import sys

    family = sys.modules.get(type(module).__module__) if type(module).__module__.startswith("timm.") else None
    fn = getattr(family, "checkpoint_filter_fn", None)
    if fn is None:
        return tensors
    try:
        out = fn(dict(tensors), module)
    except Exception:  # a file of another layout: the shape check below says where it differs
        return tensors
    return out if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()) else tensors


def _torchvision_model(
    arch: str, name: str, num_classes: int, pretrained: bool, image_size: int | None, sized: dict[str, int]
) -> ZooModel:
    """:func:`zoo_model` for torchvision (the classifier swap left to it)."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ArgumentError(
            f"unknown torchvision classifier {name!r} in `arch`: e.g. "
            f"{', '.join([k for k in known if k.startswith(('resnet', 'vgg'))][:3])}; see "
            "torchvision.models.list_models()"
        )
    size = default_input_size(arch)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
    if sized and pretrained:
        raise ArgumentError(
            f"torchvision's pretrained {name} is for {size} px images only: use its `image_size` {size}, "
            "or a timm model (timm interpolates position embeddings)"
        )
    kwargs |= sized
    _check_size(arch, lambda: torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs))
    if not pretrained:
        module = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        return ZooModel(module, image_size if sized else size)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    filename = weights.url.rsplit("/", 1)[-1]
    try:
        module = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a truncated file a RuntimeError
        raise _offline(arch, weights.url, filename, str(hub), e) from None
    t = weights.transforms()
    zm = ZooModel(module, int(getattr(t, "crop_size", [size])[0]), tuple(t.mean), tuple(t.std))
    return zm


def _timm_model(
    arch: str, name: str, num_classes: int, pretrained: bool, image_size: int | None, sized: dict[str, int]
) -> ZooModel:
    """:func:`zoo_model` for timm (the classifier swap left to it)."""
    timm = _timm()
    if not timm.is_model(name):
        raise ArgumentError(f"unknown timm model {name!r} in `arch`: see timm.list_models()")
    _check_size(arch, lambda: timm.create_model(name, pretrained=False, num_classes=num_classes, **sized))
    if not pretrained:
        module = timm.create_model(name, pretrained=False, num_classes=num_classes, **sized)
        return ZooModel(module, image_size if sized else default_input_size(arch))
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) or name
    try:
        if not _hub_cached(hub_id) and not _hub_reachable():
            raise ConnectionError("the Hugging Face hub cannot be reached")  # at once, not after its retries
        with _quiet_hub():
            module = timm.create_model(name, pretrained=True, **sized)
    except Exception as e:  # huggingface_hub's offline errors have no common base below Exception
        # the hub cache is a tree of hashed snapshots, not a folder to drop a file into
        raise DataError(
            f"cannot download the pretrained weights of {arch} ({type(e).__name__}): where there "
            f"is network run `huggingface-cli download {hub_id} model.safetensors` and copy the "
            f"Hugging Face cache (HF_HOME) here, or fetch https://huggingface.co/{hub_id} "
            "model.safetensors and pass that file as `weights`"
        ) from None
    cfg = module.pretrained_cfg
    size = image_size if sized else int(cfg.get("input_size", (3, 224, 224))[-1])
    zm = ZooModel(module, size, tuple(cfg["mean"]), tuple(cfg["std"]))
    return zm


def _size_kwargs(arch: str, image_size: int | None) -> dict[str, int]:
    """The constructor argument that builds ``arch`` for ``image_size`` px, where the model is built for
    one size and the size is not its own; else nothing (a CNN takes any size). timm's: ``img_size``
    where its constructor takes it (tried on the meta device: nothing is allocated); torchvision's
    ViTs: ``image_size``."""
    if image_size is None or image_size == default_input_size(arch):
        return {}
    zoo, _, name = arch.partition(":")
    if zoo == "torchvision":
        return {"image_size": image_size} if name.startswith("vit_") else {}
    timm = _timm()
    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, img_size=image_size)
    except TypeError:  # "unexpected keyword argument 'img_size'": a model of any size
        return {}
    except Exception:  # it takes the argument but not this size: the trace says so in one line
        return {"img_size": image_size}
    return {"img_size": image_size}


def classes_of(module: nn.Module) -> int | None:
    """The class count of a classifier's last linear (or 1x1 convolution) layer."""
    last = _classifier(module)
    if last is None:
        return None
    layer = last[1]
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _classifier(module: nn.Module) -> tuple[str, nn.Module] | None:
    if hasattr(module, "get_classifier"):  # timm
        layer = module.get_classifier()
        for name, m in module.named_modules():
            if m is layer:
                return name, m
    found = None
    for name, m in module.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            found = (name, m)
    return found


def replace_classifier(module: nn.Module, num_classes: int) -> None:
    """Swap the last linear (or 1x1 convolution) layer for a fresh one with ``num_classes`` outputs."""
    if hasattr(module, "reset_classifier"):  # timm's own way (it knows heads with several layers)
        module.reset_classifier(num_classes)
        return
    found = _classifier(module)
    if found is None:
        raise ArgumentError(f"{type(module).__name__} has no linear classifier layer to replace")
    name, old = found
    new: nn.Module
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(
            old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
        )
    parent_name, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, attr, new.to(old.weight.device))


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or from a PyTorch file read with ``weights_only``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"`weights` {p} is not a file: give a .safetensors (or PyTorch state dict) file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(p))
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
            tensors = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
    except Exception as e:
        raise DataError(
            f"cannot read `weights` {p} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}): "
            "give a safetensors file or a plain PyTorch state dict"
        ) from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise DataError(f"`weights` {p} holds no state dict (name -> tensor)")
    return tensors


def load_backbone_weights(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load a state dict into ``module``; a classifier of another class count is left freshly initialised
    (the fine-tuning path). Any other mismatch raises, naming the first key and both shapes. A timm
    model's own checkpoint filter runs first, as timm's loader runs it: it interpolates a ViT's position
    embedding to the model's patch grid (weights for 224 px into a model built for 32 px)."""
    tensors = _timm_filtered(module, tensors)
    expected = module.state_dict()
    head = _classifier(module)
    head_keys = {f"{head[0]}.{k}" for k in ("weight", "bias")} if head else set()
    for k, v in tensors.items():
        if k in expected and expected[k].shape != v.shape and k not in head_keys:
            raise ArgumentError(
                f"`weights` {source} do not fit: {k} is {list(v.shape)} in the file, "
                f"{list(expected[k].shape)} in the model"
            )
    missing = sorted(set(expected) - set(tensors) - head_keys)
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        k = (missing or extra)[0]
        raise ArgumentError(
            f"`weights` {source} do not fit: {k} is {'missing from the file' if missing else 'not in the model'} "
            f"({len(missing)} missing, {len(extra)} unexpected)"
        )
    skip = {k for k in head_keys if k in tensors and tensors[k].shape != expected[k].shape}
    module.load_state_dict(
        {k: v for k, v in tensors.items() if k not in skip}, strict=not skip and head_keys <= set(tensors)
    )
    return [
        f"classifier kept fresh: the file's has {len(tensors[k])} outputs" for k in sorted(skip) if k.endswith("bias")
    ]
