"""One plain training loop (timm's ``train_one_epoch`` / ``validate`` shape).

``fit`` trains over any per-epoch iterable of ``(images, labels)`` batches; what wraps a step
(precision, memory format, compilation, distribution) is the :class:`~.runtime.Runtime`, so
speed-ups never touch the loop body. The loss is accumulated on the device: one host
synchronisation per epoch, not per step.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..compute.distributed import all_reduce_sum
from ..core.io import JSONObject
from ..models.sdn import num_outputs, outputs_of
from .modes import Mode, Objective
from .recipe import Recipe, make_optimizer, make_schedule
from .runtime import Runtime

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class EpochResult:
    """One epoch's learning rate, mean training loss, every output's validation accuracy and time;
    ``eager``: a compiled run's epoch trained eagerly while its step compiled elsewhere."""

    epoch: int
    lr: float
    train_loss: float
    val_acc: list[float]
    seconds: float
    eager: bool = False
    images_per_second: float = 0.0  # training images (every rank's) over the training part of the epoch

    def to_json(self) -> JSONObject:
        d = asdict(self)
        if not self.eager:  # said only where it happened
            del d["eager"]
        d["images_per_second"] = round(self.images_per_second, 1)
        return d


def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch draws its shuffling, augmentation and dropout from its own seed, so an epoch
    replays identically after a resume without saving any random-number-generator state."""
    return seed * 1_000_003 + epoch


def _bar(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal, so redirected logs hold no \r frames
    return tqdm(
        total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, disable=None if enabled else True
    )


# off a terminal (a log file, a scheduler's output) there is no bar: a line this often instead
HEARTBEAT_SECONDS = 30.0


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class _Heartbeat:
    """Lines for a log: every :data:`HEARTBEAT_SECONDS` the batch, the rate and when the epoch ends
    (host clocks and counts only: no device synchronisation)."""

    def __init__(self, desc: str, total: int | None, enabled: bool) -> None:
        self.desc, self.total = desc, total
        self.enabled = enabled and not sys.stderr.isatty()  # a terminal has the bar
        self.started = self.last = time.perf_counter()

    def beat(self, batches: int, images: int) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < HEARTBEAT_SECONDS:
            return
        self.last, rate = now, images / max(now - self.started, 1e-9)
        where = f"batch {batches}/{self.total}" if self.total else f"batch {batches}"
        ends = ""
        if self.total:
            ends = f"  epoch ends in {_clock((self.total - batches) * (now - self.started) / batches)}"
        print(f"{self.desc}  {where}  {rate:,.0f} img/s{ends}", file=sys.stderr, flush=True)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, runtime: Runtime | None = None) -> list[float]:
    """Accuracy of every output over ``batches`` (model in eval mode, restored afterwards)."""
    runtime = runtime or Runtime(torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct: torch.Tensor | None = None
    n = 0
    try:
        for x, y in batches:
            with runtime.autocast():
                preds = torch.stack([o.argmax(1) for o in outputs_of(model, x)])  # [outputs, B]
            hits = (preds == y).sum(1)
            correct = hits if correct is None else correct + hits
            n += len(y)
    finally:
        model.train(was_training)
    if correct is None:
        return []
    # sharded validation (torchrun): every rank saw its share; sum the counts over ranks
    counts = all_reduce_sum(
        torch.cat([correct.double(), torch.tensor([float(n)], dtype=torch.float64, device=correct.device)])
    )
    return (counts[:-1].cpu() / max(float(counts[-1]), 1.0)).tolist()


def train_one_epoch(
    model: nn.Module,
    stepped: nn.Module,
    mode: Mode,
    batches: Batches,
    opt: torch.optim.Optimizer,
    runtime: Runtime,
    epoch: int,
    epochs: int,
    progress: bool = True,
    desc: str = "",
    clip_grad_norm: float = 0.0,
) -> float:
    """One pass over ``batches``; returns the mean loss. ``stepped`` is
    ``runtime.prepare(Objective(model, mode))``: called as ``stepped(x, y, weights)``, it returns the loss.
    ``clip_grad_norm`` > 0 clips the optimised parameters' gradient norm before each step."""
    return _train_epoch(model, stepped, mode, batches, opt, runtime, epoch, epochs, progress, desc, clip_grad_norm)[0]


def _train_epoch(
    model: nn.Module,
    stepped: nn.Module,
    mode: Mode,
    batches: Batches,
    opt: torch.optim.Optimizer,
    runtime: Runtime,
    epoch: int,
    epochs: int,
    progress: bool,
    desc: str,
    clip_grad_norm: float = 0.0,
) -> tuple[float, int]:
    """:func:`train_one_epoch`, and the number of training images (every rank's)."""
    params = [p for g in opt.param_groups for p in g["params"]] if clip_grad_norm > 0 else []
    mode.set_train(model)
    total = torch.zeros((), dtype=torch.float64, device=runtime.device)
    weights = torch.tensor(mode.output_weights(num_outputs(model), epoch, epochs), device=runtime.device)
    count = 0
    total_batches = len(batches) if hasattr(batches, "__len__") else None
    heartbeat = _Heartbeat(desc, total_batches, progress)
    with _bar(total_batches, desc, progress) as bar:
        for i, (x, y) in enumerate(batches):
            runtime.step_begin()
            with runtime.autocast():
                loss = stepped(x, y, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if params:
                nn.utils.clip_grad_norm_(params, clip_grad_norm)
            opt.step()
            total += loss.detach().double() * len(y)
            count += len(y)
            bar.update(1)
            heartbeat.beat(i + 1, count)
    both = all_reduce_sum(torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=total.device)]))
    return float(both[0]) / max(float(both[1]), 1.0), int(both[1])


def _optimiser(
    params: list[nn.Parameter],
    recipe: Recipe,
    runtime: Runtime,
    start_epoch: int,
    restore: Callable[[torch.optim.Optimizer], None] | None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and its schedule, at ``start_epoch`` (a resumed run's state restored)."""
    opt = make_optimizer(params, recipe, fused=runtime.fused_optimizer)
    schedule = make_schedule(opt, recipe)
    with warnings.catch_warnings():  # replaying before any optimiser step is intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start_epoch):  # the schedule is a function of the epoch: replay it
            schedule.step()
    if restore is not None:
        restore(opt)
    return opt, schedule


def _epoch_line(result: EpochResult, epochs: int, left: float | None = None) -> str:
    """The log line of one epoch: learning rate, loss, every output's validation accuracy, seconds,
    training images per second, and (``left``: seconds) when the run should end."""
    names = [f"IC{i + 1}" for i in range(len(result.val_acc) - 1)] + ["final"]
    how = ", eager while the step compiles" if result.eager else ""
    ends = f"; run ends in ~{_clock(left)}" if left else ""
    return (
        f"epoch {result.epoch}/{epochs}  lr {result.lr:.3g}  loss {result.train_loss:.4f}  val acc "
        + " ".join(f"{name} {100 * a:.1f}" for name, a in zip(names, result.val_acc))
        + f"  ({result.seconds:.1f}s, {result.images_per_second:,.0f} img/s{how}{ends})"
    )


def fit(
    model: nn.Module,
    mode: Mode,
    recipe: Recipe,
    train_batches: Callable[[int], Batches],
    val_batches: Callable[[], Batches],
    *,
    seed: int,
    runtime: Runtime | None = None,
    start_epoch: int = 0,
    restore: Callable[[torch.optim.Optimizer], None] | None = None,
    on_epoch: Callable[[EpochResult, torch.optim.Optimizer], None] | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    compile_ready: Callable[[], bool] | None = None,
    teacher: nn.Module | None = None,
) -> list[EpochResult]:
    """Train ``model`` from ``start_epoch`` to ``recipe.epochs``, validating every output each epoch.

    ``train_batches(epoch)`` yields that epoch's batches; ``val_batches()`` the validation batches.
    ``restore(opt)`` loads a resumed optimiser state; ``on_epoch(result, opt)`` runs after each
    epoch (the run folder checkpoints there). ``stop_after`` ends after that many epochs of this
    call, as a killed process would. ``compile_ready()``, for a compiled runtime whose step another
    process is compiling into the compiler's on-disk cache: asked before each epoch, and until it
    says yes the epochs train the same step eagerly instead of compiling it here (the compiled step
    then loads from the cache in seconds, and the epochs meanwhile were not lost to waiting).
    ``teacher``: a separate trained network whose final output the ICs distil from (``recipe.distill``).
    """
    runtime = runtime or Runtime(torch.device("cpu"))
    params = mode.parameters(model)  # first: ic-only freezes the backbone, which DDP's wrapping reads
    stepped = runtime.prepare(Objective(model, mode, teacher))
    # torch.compile compiles at the first call: the module it wraps steps eagerly until then
    eager = getattr(stepped, "_orig_mod", None) if compile_ready is not None and runtime.compile else None
    opt, schedule = _optimiser(params, recipe, runtime, start_epoch, restore)
    results = []
    for epoch in range(start_epoch, recipe.epochs):
        t0 = time.perf_counter()
        lr = float(opt.param_groups[0]["lr"])
        torch.manual_seed(epoch_seed(seed, epoch))  # dropout
        if eager is not None and compile_ready is not None and compile_ready():
            eager = None
            if log is not None and results:
                log(f"the compiled step is ready: compiled from epoch {epoch + 1}")
        step, label = eager if eager is not None else stepped, f"epoch {epoch + 1}/{recipe.epochs}"
        batches, n, clip = train_batches(epoch), recipe.epochs, recipe.clip_grad_norm
        loss, images = _train_epoch(model, step, mode, batches, opt, runtime, epoch, n, progress, label, clip)
        rate = images / max(time.perf_counter() - t0, 1e-9)  # after the loss's synchronisation: all stepped
        schedule.step()
        runtime.end_epoch(model)
        acc = evaluate(model, val_batches(), runtime)
        seconds = time.perf_counter() - t0
        result = EpochResult(epoch + 1, lr, loss, acc, seconds, eager=eager is not None, images_per_second=rate)
        results.append(result)
        if log is not None:
            log(_epoch_line(result, recipe.epochs, left=seconds * (recipe.epochs - epoch - 1)))
        if on_epoch is not None:
            on_epoch(result, opt)
        if stop_after is not None and len(results) >= stop_after:
            break
    return results
