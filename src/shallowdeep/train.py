"""One training loop; the paper's three modes plug into it as small objects.

The loop is plain (timm's ``train_one_epoch`` / ``validate`` shape) so that precision, memory
format, compilation and DDP can later wrap it rather than be woven into it.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .data import Dataset, batches
from .errors import UserError
from .models import CNN
from .sdn import SDN

# weight decay of the paper's recipes by architecture (spec section 5); others use 5e-4
WEIGHT_DECAY = {"vgg16_bn": 5e-4, "wrn32_4": 5e-4, "resnet56": 1e-4, "mobilenet": 1e-4}
IC_CAPS = (0.15, 0.30, 0.45, 0.60, 0.75, 0.90)
MODES = ("cnn", "ic-only", "sdn")


@dataclass
class Recipe:
    """Every hyperparameter of a training run (the paper's by default, see :func:`default_recipe`)."""

    epochs: int
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" or "adam"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch`` (step decay by ``gamma`` at each milestone)."""
        return self.lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Recipe":
        return cls(**{**d, "milestones": tuple(d.get("milestones", ()))})


def default_recipe(mode: str, arch: str, epochs: int | None = None) -> Recipe:
    """The paper's recipe for ``mode`` (spec section 5); milestones scale with ``epochs``."""
    wd = WEIGHT_DECAY.get(arch, 5e-4)
    if mode == "ic-only":
        base, milestones = 25, (15,)
        r = Recipe(epochs=base, optimizer="adam", lr=1e-3, weight_decay=wd, milestones=milestones)
    elif mode in ("cnn", "sdn"):
        base, milestones = 100, (35, 60, 85)
        r = Recipe(epochs=base, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=wd, milestones=milestones)
    else:
        raise UserError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if epochs is not None and epochs != base:
        if epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {epochs}")
        # keep the schedule's shape: each decay at the same fraction of training
        r = replace(r, epochs=epochs, milestones=tuple(sorted({max(1, round(m * epochs / base)) for m in milestones
                                                               if round(m * epochs / base) < epochs})))
    return r


# --------------------------------------------------------------------------------------------------
# the three modes


class Mode:
    """What one training mode changes: which parameters learn, train/eval flags, and the loss."""

    name = ""

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return list(model.parameters())

    def set_train(self, model: nn.Module) -> None:
        model.train()

    def loss(self, outputs: list[torch.Tensor], y: torch.Tensor, epoch: int, epochs: int) -> torch.Tensor:
        raise NotImplementedError


class CNNMode(Mode):
    """Plain CNN training: cross-entropy on the one output."""

    name = "cnn"

    def loss(self, outputs, y, epoch, epochs):
        return F.cross_entropy(outputs[-1], y)


class ICOnlyMode(Mode):
    """Train only the ICs of an SDN made from a trained CNN; the CNN does not change at all.

    Its parameters get no gradient and it stays in eval mode, so BN running statistics and dropout
    are untouched and the final output predicts exactly as the CNN did.
    """

    name = "ic-only"

    def parameters(self, model):
        for p in model.cnn.parameters():
            p.requires_grad_(False)
        return model.ic_parameters()

    def set_train(self, model):
        model.train()
        model.cnn.eval()

    def loss(self, outputs, y, epoch, epochs):
        return sum(F.cross_entropy(o, y) for o in outputs[:-1])


class SDNMode(Mode):
    """SDN training from scratch: ``sum_i tau_i * CE(IC_i) + CE(final)`` (spec section 5).

    IC i's weight grows linearly from 0.01 to its cap C_i: ``tau_i = min(C_i, 0.01 + e * C_i / E)``
    for epoch e counted from 1 of E.
    """

    name = "sdn"

    def weights(self, n_ics: int, epoch: int, epochs: int) -> list[float]:
        caps = [IC_CAPS[i] if i < len(IC_CAPS) else IC_CAPS[-1] for i in range(n_ics)]
        e = epoch + 1
        return [min(c, 0.01 + e * c / epochs) for c in caps]

    def loss(self, outputs, y, epoch, epochs):
        taus = self.weights(len(outputs) - 1, epoch, epochs)
        return sum(t * F.cross_entropy(o, y) for t, o in zip(taus, outputs)) + F.cross_entropy(outputs[-1], y)


def make_mode(name: str) -> Mode:
    """The mode object for ``"cnn"``, ``"ic-only"`` or ``"sdn"``."""
    modes = {"cnn": CNNMode, "ic-only": ICOnlyMode, "sdn": SDNMode}
    if name not in modes:
        raise UserError(f"unknown mode {name!r}: choose one of {', '.join(MODES)}")
    return modes[name]()


# --------------------------------------------------------------------------------------------------
# the loop


def outputs_of(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every output of a CNN (one) or an SDN (ICs then final) as a list."""
    out = model(x)
    return out if isinstance(out, list) else [out]


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, split: str = "val", batch_size: int = 512,
             device: torch.device | str = "cpu") -> list[float]:
    """Accuracy of every output on ``split``."""
    was_training = model.training
    model.eval()
    correct: torch.Tensor | None = None
    n = 0
    for x, y in batches(data, split, batch_size, device=device):
        preds = torch.stack([o.argmax(1) for o in outputs_of(model, x)])  # [outputs, B]
        hits = (preds == y).sum(1).cpu()
        correct = hits if correct is None else correct + hits
        n += len(y)
    model.train(was_training)
    return [] if correct is None else (correct.double() / max(n, 1)).tolist()


def make_optimizer(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """SGD with momentum or Adam, with the recipe's weight decay."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise UserError(f"unknown optimizer {recipe.optimizer!r}: choose sgd or adam")


def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch draws its shuffling, augmentation and dropout from its own seed, so an epoch
    replays identically after a resume without saving any random-number-generator state."""
    return seed * 1_000_003 + epoch


@dataclass
class EpochResult:
    epoch: int
    lr: float
    train_loss: float
    val_acc: list[float]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def train_one_epoch(model: nn.Module, mode: Mode, data: Dataset, recipe: Recipe, opt: torch.optim.Optimizer,
                    epoch: int, seed: int, device: torch.device | str = "cpu", progress: bool = True) -> float:
    """One pass over the training split; returns the mean loss."""
    for group in opt.param_groups:
        group["lr"] = recipe.lr_at(epoch)
    mode.set_train(model)
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    torch.manual_seed(epoch_seed(seed, epoch))  # dropout
    total, count = 0.0, 0
    n_batches = math.ceil(len(data.train) / recipe.batch_size)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False, file=sys.stderr,
                   dynamic_ncols=True)
    for x, y in batches(data, "train", recipe.batch_size, train=True, generator=gen, device=device):
        loss = mode.loss(outputs_of(model, x), y, epoch, recipe.epochs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(y)
        count += len(y)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.3f}")
    if bar is not None:
        bar.close()
    return total / max(count, 1)


def fit(model: nn.Module, mode: Mode, data: Dataset, recipe: Recipe, *, seed: int,
        device: torch.device | str = "cpu", start_epoch: int = 0,
        restore: Callable[[torch.optim.Optimizer], None] | None = None,
        on_epoch: Callable[[EpochResult, torch.optim.Optimizer], None] | None = None,
        stop_after: int | None = None, progress: bool = True, log: Callable[[str], None] | None = None,
        ) -> list[EpochResult]:
    """Train ``model`` from ``start_epoch`` to ``recipe.epochs``, validating every output each epoch.

    ``restore(opt)`` loads a resumed optimiser state; ``on_epoch(result, opt)`` runs after each
    epoch (the run folder checkpoints there). ``stop_after`` ends after that many epochs of this
    call, as a killed process would.
    """
    opt = make_optimizer(mode.parameters(model), recipe)
    if restore is not None:
        restore(opt)
    results = []
    for epoch in range(start_epoch, recipe.epochs):
        t0 = time.perf_counter()
        loss = train_one_epoch(model, mode, data, recipe, opt, epoch, seed, device, progress)
        acc = evaluate(model, data, "val", device=device)
        result = EpochResult(epoch + 1, recipe.lr_at(epoch), loss, acc, time.perf_counter() - t0)
        results.append(result)
        if log is not None:
            log(f"epoch {epoch + 1}/{recipe.epochs}  loss {loss:.4f}  val acc "
                + " ".join(f"{100 * a:.1f}" for a in acc) + f"  ({result.seconds:.1f}s)")
        if on_epoch is not None:
            on_epoch(result, opt)
        if stop_after is not None and len(results) >= stop_after:
            break
    return results


# --------------------------------------------------------------------------------------------------
# training into a run folder


@dataclass
class TrainConfig:
    """What ``shallowdeep train`` was asked for; ``None`` means the default (or, on resume, the run's)."""

    out: str
    mode: str | None = None
    arch: str | None = None
    data: str | None = None
    from_run: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    seed: int | None = None
    data_root: str | None = None
    image_size: int | None = None
    resume: bool = False
    device: str | None = None
    backdoor: dict[str, Any] | None = None  # {"rate", "target", "size", "pos"}: any may be None


DEFAULT_SEED = 1221  # the reference code's


def pick_device(name: str | None) -> torch.device:
    """``name`` as a device (``None``: CUDA when available, else CPU), or a one-line error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available: use --device cpu")
    return dev


def _resolve(cfg: TrainConfig, previous: dict[str, Any] | None) -> dict[str, Any]:
    """Merge the request with a resumed run's settings; a contradiction is an error."""
    from .runs import read_json

    prev = (previous or {}).get("config", {})
    resolved: dict[str, Any] = {}
    for key in ("mode", "arch", "data", "from_run", "seed", "data_root", "image_size"):
        asked = getattr(cfg, key)
        if key in ("from_run", "data_root") and asked is not None:
            asked = str(Path(asked).resolve())  # the run must still find it from another folder
        if previous is not None and asked is not None and prev.get(key) != asked:
            raise UserError(f"{cfg.out} holds a different run ({key} {prev.get(key)!r}, not {asked!r}): "
                            "choose another --out")
        resolved[key] = asked if previous is None else prev.get(key)
    if resolved["mode"] is None:
        raise UserError("--mode is required: cnn, ic-only or sdn")
    make_mode(resolved["mode"])
    if resolved["mode"] == "ic-only":
        if not resolved["from_run"]:
            raise UserError("--mode ic-only needs --from RUN, a finished CNN run")
        src = read_json(Path(resolved["from_run"]) / "run.json")
        if src.get("model", {}).get("kind") != "cnn" or src.get("format") is None:
            raise UserError(f"--from {resolved['from_run']} is not a CNN run (kind "
                            f"{src.get('model', {}).get('kind')!r}): ic-only needs a run trained with --mode cnn")
        if src.get("status") != "complete":
            raise UserError(f"--from {resolved['from_run']} has not finished training: resume it first")
        for key in ("arch", "data", "data_root", "image_size"):
            theirs = src["config"].get(key)
            if resolved[key] is not None and key in ("arch", "data") and resolved[key] != theirs:
                raise UserError(f"--{key.replace('_', '-')} {resolved[key]} contradicts the CNN run's {theirs}: "
                                "leave it out (ic-only uses the CNN's)")
            if resolved[key] is None:
                resolved[key] = theirs
    elif resolved["from_run"]:
        raise UserError("--from is only for --mode ic-only")
    if not resolved["arch"]:
        raise UserError("--arch is required (see `shallowdeep list`)")
    if not resolved["data"]:
        raise UserError("--data is required (see `shallowdeep list`)")
    if resolved["seed"] is None:
        resolved["seed"] = DEFAULT_SEED
    if previous is not None:
        if cfg.backdoor is not None and not prev.get("backdoor"):
            raise UserError(f"{cfg.out} holds a different run (not backdoored): choose another --out")
        resolved["backdoor"] = prev.get("backdoor")
    else:
        if cfg.backdoor is not None and resolved["mode"] == "ic-only":
            raise UserError("--backdoor poisons the training of a CNN or SDN (--mode cnn or sdn); ic-only trains "
                            "the ICs of a (backdoored) CNN run on clean data")
        resolved["backdoor"] = cfg.backdoor  # resolved to pixels once the data's image size is known
    return resolved


def train_run(cfg: TrainConfig, *, stop_after: int | None = None, progress: bool = True,
              log: Callable[[str], None] | None = print) -> Path:
    """Train into the run folder ``cfg.out`` (creating or resuming it) and return its path.

    Every input is checked before anything is written, so bad input leaves no partial folder.
    """
    from . import runs
    from .costs import output_costs
    from .data import load_dataset, parse_data_name
    from .models import build_cnn, list_archs
    from .sdn import SDN

    out = Path(cfg.out)
    previous = None
    if (out / runs.RUN_JSON).is_file():
        previous = runs.read_json(out / runs.RUN_JSON)
        if previous.get("format") != runs.FORMAT:
            raise UserError(f"{out} holds something that is not a shallowdeep run: choose another --out")
        if not cfg.resume:
            raise UserError(f"{out} already holds a run: continue it with --resume or choose another --out")
        if previous.get("status") == "complete":
            raise UserError(f"{out} holds a finished run: nothing to resume; choose another --out")
    elif cfg.resume:
        raise UserError(f"nothing to resume: {out} holds no run")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder: choose another --out")

    r = _resolve(cfg, previous)
    parse_data_name(r["data"])
    if r["arch"] not in list_archs():
        raise UserError(f"unknown architecture {r['arch']!r}: choose one of {', '.join(list_archs())}")
    device = pick_device(cfg.device)
    mode = make_mode(r["mode"])

    if previous is not None:
        recipe = Recipe.from_json(previous["recipe"])
        asked = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay}
        for k, v in asked.items():
            if v is not None and getattr(recipe, k) != v:
                raise UserError(f"{out} holds a different run ({k} {getattr(recipe, k)}, not {v}): choose another --out")
    else:
        recipe = default_recipe(r["mode"], r["arch"], cfg.epochs)
        for k in ("batch_size", "lr", "weight_decay"):
            v = getattr(cfg, k)
            if v is None:
                continue
            if v < 0 or (v == 0 and k != "weight_decay"):
                raise UserError(f"--{k.replace('_', '-')} must be {'non-negative' if k == 'weight_decay' else 'positive'}, "
                                f"got {v}")
            recipe = replace(recipe, **{k: v})

    data = load_dataset(r["data"], r["data_root"], r["image_size"])
    if r["backdoor"] is not None:
        from .backdoor import Backdoor, poisoned_dataset

        bd = r["backdoor"]
        if previous is None:  # options (any of them None) -> the spec's trigger scaled to this data
            pos = tuple(bd["pos"]) if bd.get("pos") is not None else None
            b = Backdoor.default(data.image_size, bd.get("rate"), bd.get("target"), bd.get("size"), pos)
            r["backdoor"] = b.to_json()
        data = poisoned_dataset(data, Backdoor.from_json(r["backdoor"]))
    torch.manual_seed(r["seed"])  # weight initialisation
    if r["mode"] == "ic-only":
        cnn = runs.load(r["from_run"])
        if cnn.num_classes != data.num_classes or cnn.image_size != data.image_size:
            raise UserError(f"the CNN run takes {cnn.num_classes} classes at {cnn.image_size} px, the data has "
                            f"{data.num_classes} at {data.image_size} px")
        model: nn.Module = SDN(cnn)
    else:
        cnn = build_cnn(r["arch"], data.num_classes, data.image_size)
        model = cnn if r["mode"] == "cnn" else SDN(cnn)
    model.to(device)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    restore = None
    if previous is not None:
        runs.remove_stale_temps(out)  # a kill during a write leaves its temporary file behind
    if previous is not None and (out / runs.CHECKPOINT).is_file():
        tensors, ck = runs.read_tensors(out / runs.CHECKPOINT)
        runs.load_weights(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, out / runs.CHECKPOINT)
        start_epoch, history = int(ck["epoch"]), list(ck["history"])

        def restore(opt: torch.optim.Optimizer) -> None:
            runs.optimizer_from_tensors(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")}, ck["optimizer"])

    meta: dict[str, Any] = {
        "format": runs.FORMAT,
        "status": "running",
        "model": runs.describe(model),
        "config": r,
        "recipe": recipe.to_json(),
        "data": {"name": r["data"], "classes": data.classes, "image_size": data.image_size,
                 "mean": list(data.mean), "std": list(data.std), "flip": data.flip, "jitter": data.jitter,
                 "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
                 **data.meta},
        "epochs": history,
    }
    if r["mode"] == "ic-only":
        meta["from_run_weights_sha256"] = runs.sha256_file(Path(r["from_run"]) / runs.WEIGHTS)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / runs.RUN_JSON, meta)
    if log is not None:
        log(f"{'resuming' if start_epoch else 'training'} {r['arch']} ({r['mode']}) on {r['data']}: "
            f"{len(data.train)} train / {len(data.val)} val images, {recipe.epochs} epochs, {device}")

    def on_epoch(result: EpochResult, opt: torch.optim.Optimizer) -> None:
        history.append(result.to_json())
        opt_tensors, opt_meta = runs.optimizer_to_tensors(opt)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_tensors
        runs.write_bytes(out / runs.CHECKPOINT, runs.tensors_to_bytes(
            tensors, {"epoch": result.epoch, "history": history, "optimizer": opt_meta}))
        runs.write_json(out / runs.RUN_JSON, meta | {"epochs": history})

    fit(model, mode, data, recipe, seed=r["seed"], device=device, start_epoch=start_epoch, restore=restore,
        on_epoch=on_epoch, stop_after=stop_after, progress=progress, log=log)
    if len(history) < recipe.epochs:
        return out  # stopped early on request: the checkpoint lets --resume continue
    model.eval()
    runs.save_weights(out / runs.WEIGHTS, model)
    meta |= {"epochs": history, "status": "complete", "costs": output_costs(model.cpu()).to_json(),
             "weights_sha256": runs.sha256_file(out / runs.WEIGHTS)}
    runs.write_json(out / runs.RUN_JSON, meta)
    (out / runs.CHECKPOINT).unlink(missing_ok=True)
    return out
