"""One inference pass of a model over a split -> an :class:`~shallowdeep.analysis.ExitRecord`."""

from __future__ import annotations

import torch

from ..analysis.record import ExitRecord
from ..compute.distributed import current, gather_rows
from ..data import Dataset, batches
from ..models.costs import output_costs
from ..models.sdn import outputs_of


def forward_batch_size(device: torch.device | str) -> int:
    """Inputs per batch of a forward-only pass (records, training's validation): 1024 on a GPU, where
    an eager forward of a small network is bound by its kernel launches, not its arithmetic; 256
    elsewhere."""
    return 1024 if torch.device(device).type == "cuda" else 256


@torch.no_grad()
def collect(
    model: torch.nn.Module,
    data: Dataset,
    split: str = "test",
    *,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    meta: dict | None = None,
    progress: bool = False,
) -> ExitRecord:
    """Run ``model`` once over ``data``'s ``split`` (no augmentation) and record every output.
    ``batch_size`` defaults to :func:`forward_batch_size`. ``progress`` shows a bar on a terminal
    (none when stderr is redirected). Under torchrun each rank runs a disjoint share of every batch
    and every rank gets the whole record."""
    import sys

    from tqdm import tqdm

    if batch_size is None:
        batch_size = forward_batch_size(device)

    was_training = model.training
    model.eval().to(device)
    chunks, labels = [], []
    place = current()
    stream = batches(data, split, batch_size, device=device, shard=(place.rank, place.world))
    try:
        with tqdm(
            total=len(stream),
            desc=f"collecting {split}",
            leave=False,
            file=sys.stderr,
            disable=None if progress else True,
        ) as bar:
            # fp32 whatever precision the run trained in: the thresholds calibrated on these records are
            # applied by the engine and the ONNX export, which compute in fp32 by default
            for x, y in stream:
                chunks.append(torch.stack(outputs_of(model, x), dim=1).float().cpu())
                labels.append(y.cpu())
                bar.update(1)
    finally:
        model.train(was_training)
    s = data.split(split)
    costs = output_costs(model)
    logits = torch.cat(chunks) if chunks else torch.zeros(0, len(costs.outputs), data.num_classes)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    if place.enabled:  # put the shards back in input order, from the positions each rank's batches held
        per_rank = [batches(data, split, batch_size, shard=(r, place.world)).positions() for r in range(place.world)]
        sizes = [len(i) for i in per_rank]
        order = torch.cat(per_rank)
        logits = torch.cat(gather_rows(logits.to(device), sizes)).cpu()[torch.argsort(order)]
        y = torch.cat(gather_rows(y.to(device), sizes)).cpu()[torch.argsort(order)]
    return ExitRecord.from_arrays(logits, y, costs.outputs, costs.cnn, s.ids, {"split": split, **(meta or {})})
