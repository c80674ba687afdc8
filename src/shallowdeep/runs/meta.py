"""``run.json`` as a type: :class:`RunMeta`, written by training alone, checked once where it is read.

A run folder describes itself: the model (enough to rebuild it), the resolved configuration, the
recipe, how training ran, the data (with the normalisation the model expects), every epoch, the
time it took. Every module reads those through :class:`RunMeta`'s fields; none re-spells a key.
The file format is ``shallowdeep-run/1``; the folders written by 0.2.0 have the same shape and load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..core.errors import ArgumentError
from ..core.fields import check_fields
from ..core.io import JSONObject
from ..models.sdn import CNN, SDN
from ..training import Recipe

FORMAT = "shallowdeep-run/1"
MAX_CLASSES = 100_000
SIZES = (8, 1024)


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


class MetaError(ValueError):
    """What is wrong with a ``run.json`` (the folder turns it into a :class:`RunFolderError`)."""


@dataclass(frozen=True)
class ModelMeta:
    """The architecture: enough to rebuild the model with no other input. ``source`` says where a
    zoo or user model came from and where it was cut (``None`` for a paper backbone)."""

    kind: str
    arch: str
    num_classes: int
    image_size: int
    ic_positions: tuple[int, ...] = ()
    source: JSONObject | None = None
    cascade: bool = False  # ZTW's cascade links between the ICs

    @classmethod
    def of(cls, model: CNN | SDN) -> ModelMeta:
        """The description of ``model``."""
        cnn = model.cnn if isinstance(model, SDN) else model
        positions = tuple(model.positions) if isinstance(model, SDN) else ()
        kind = "sdn" if isinstance(model, SDN) else "cnn"
        source = cnn.source
        if isinstance(model, SDN) and source is not None:  # how its token heads pool, to rebuild them
            source = source | {"token_pool": model.token_pool}
        cascade = isinstance(model, SDN) and model.cascade
        return cls(kind, cnn.arch, cnn.num_classes, cnn.image_size, positions, source, cascade)

    def to_json(self) -> JSONObject:
        d = {
            "kind": self.kind,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "ic_positions": list(self.ic_positions),
        }
        return (
            d
            | ({"source": self.source} if self.source is not None else {})
            | ({"cascade": True} if self.cascade else {})
        )

    @classmethod
    def from_json(cls, d: Any) -> ModelMeta:
        """Checked: bounded sizes keep a crafted file from making the tool allocate without limit."""
        if not isinstance(d, dict):
            raise MetaError("no model description")
        if d.get("kind") not in ("cnn", "sdn") or not isinstance(d.get("arch"), str):
            raise MetaError("model kind or architecture missing")
        if not _is_int(d.get("num_classes"), 1, MAX_CLASSES):
            raise MetaError(f"num_classes {d.get('num_classes')!r} is not an integer in 1..{MAX_CLASSES}")
        if not _is_int(d.get("image_size"), *SIZES):
            raise MetaError(f"image_size {d.get('image_size')!r} is not an integer in {SIZES[0]}..{SIZES[1]}")
        pos = d.get("ic_positions")
        if not isinstance(pos, list) or not all(_is_int(p, 0, 10_000) for p in pos):
            raise MetaError("ic_positions is not a list of block indices")
        source = d.get("source")
        if source is not None and not isinstance(source, dict):
            raise MetaError("the model's source is not an object")
        cascade = d.get("cascade", False)
        if not isinstance(cascade, bool) or (cascade and d["kind"] != "sdn"):
            raise MetaError(f"cascade {cascade!r} is not true or false (true only for an SDN)")
        return cls(d["kind"], d["arch"], d["num_classes"], d["image_size"], tuple(pos), source, cascade)


@dataclass
class RunConfig:
    """What a training resolved to (the request merged with defaults, a resumed run's settings and
    an ic-only run's CNN): everything needed to train it again."""

    mode: str
    arch: str
    data: str
    from_run: str | None = None
    seed: int | None = None
    data_root: str | None = None
    image_size: int | None = None
    pretrained: bool | None = None
    weights: str | None = None
    ic_cuts: list[str] | None = None
    ic_fractions: list[float] | None = None
    data_mode: str | None = None
    backdoor: JSONObject | None = None  # Backdoor.to_json() once resolved
    token_pool: str | None = None  # how IC heads on tokens pool them (None: mean)
    cascade: bool | None = None  # ZTW's cascade links between the ICs (None: none)
    teacher: str | None = None  # a separate run the ICs distil from (None: the network's own final output)

    def to_json(self) -> JSONObject:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, d: Any) -> RunConfig:
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("mode", "arch", "data")):
            raise MetaError("the configuration (mode, arch, data) is missing")
        if d.get("seed") is not None and not _is_int(d["seed"], 0, 2**63 - 1):
            raise MetaError(f"the seed {d['seed']!r} is not an integer in 0..2^63-1")
        if d.get("image_size") is not None and not _is_int(d["image_size"], *SIZES):
            raise MetaError(f"the configured image_size {d['image_size']!r} is not an integer in 8..1024")
        if d.get("backdoor") is not None and not isinstance(d["backdoor"], dict):
            raise MetaError("the backdoor is not an object")
        config = cls(**{f.name: d.get(f.name) for f in fields(cls)})
        try:
            check_fields(config)
        except ArgumentError as e:
            raise MetaError(f"the configuration is damaged ({e})") from None
        return config


@dataclass(frozen=True)
class DataMeta:
    """The data a run was trained on: its name, classes, size and the normalisation the model
    expects; ``details`` keeps what the data set adds (flips, sizes, class names, streaming)."""

    name: str
    classes: list[str]
    image_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    details: JSONObject = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        """Readable class names (a data set may name its class folders by id)."""
        names = self.details.get("class_names")
        return list(names) if isinstance(names, list) else list(self.classes)

    def to_json(self) -> JSONObject:
        base = {"name": self.name, "classes": self.classes, "image_size": self.image_size}
        return base | {"mean": list(self.mean), "std": list(self.std)} | self.details

    @classmethod
    def from_json(cls, d: Any, num_classes: int) -> DataMeta:
        if not isinstance(d, dict):
            raise MetaError("the data description is missing")
        norm = []
        for key in ("mean", "std"):
            v = d.get(key)
            if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
                raise MetaError(f"data {key} is not three numbers")
            norm.append(tuple(float(x) for x in v))
        if any(x <= 0 for x in norm[1]):
            raise MetaError("data std has a value <= 0")
        classes = d.get("class_names", d.get("classes"))
        if not isinstance(classes, list) or len(classes) != num_classes:
            named = len(classes) if isinstance(classes, list) else "no"
            raise MetaError(f"the data set names {named} classes for a model of {num_classes}")
        details = {k: v for k, v in d.items() if k not in ("name", "classes", "image_size", "mean", "std")}
        listed = d.get("classes") if isinstance(d.get("classes"), list) else classes
        return cls(str(d.get("name", "")), [str(c) for c in listed], d.get("image_size"), norm[0], norm[1], details)


@dataclass
class RunMeta:
    """``run.json``. ``runtime`` (precision, compilation, devices, DDP facts) and each epoch's
    figures are reported as training recorded them; ``costs`` is :class:`~shallowdeep.models.costs.Costs`
    as JSON, once training finished."""

    status: str
    model: ModelMeta
    config: RunConfig
    recipe: Recipe
    data: DataMeta
    runtime: JSONObject = field(default_factory=dict)
    epochs: list[JSONObject] = field(default_factory=list)
    wall_seconds: float = 0.0
    setup_seconds: float = 0.0
    time_parts: dict[str, float] = field(default_factory=dict)
    from_run_weights_sha256: str | None = None
    weights_sha256: str | None = None
    costs: JSONObject | None = None
    teacher_weights_sha256: str | None = None

    @property
    def complete(self) -> bool:
        """Whether training finished (the weights were written)."""
        return self.status == "complete"

    @property
    def last_val_acc(self) -> list[float] | None:
        """Each output's validation accuracy after the last epoch, if any epoch ran."""
        return list(self.epochs[-1]["val_acc"]) if self.epochs and "val_acc" in self.epochs[-1] else None

    def epoch_seconds(self) -> list[float]:
        """Each epoch's seconds, as recorded."""
        return [float(e["seconds"]) for e in self.epochs if isinstance(e.get("seconds"), (int, float))]

    def to_json(self) -> JSONObject:
        d = {
            "format": FORMAT,
            "status": self.status,
            "model": self.model.to_json(),
            "config": self.config.to_json(),
            "recipe": self.recipe.to_json(),
            "runtime": self.runtime,
            "data": self.data.to_json(),
            "epochs": self.epochs,
            "wall_seconds": self.wall_seconds,
            "setup_seconds": self.setup_seconds,
            "time_parts": self.time_parts,
        }
        optional = ("from_run_weights_sha256", "weights_sha256", "costs", "teacher_weights_sha256")
        return d | {k: getattr(self, k) for k in optional if getattr(self, k) is not None}

    @classmethod
    def from_json(cls, d: Any) -> RunMeta:
        """Checked field by field; anything wrong is a :class:`MetaError` naming it."""
        if not isinstance(d, dict):
            raise MetaError("not a JSON object")
        model = ModelMeta.from_json(d.get("model"))
        config = RunConfig.from_json(d.get("config"))
        if not isinstance(d.get("recipe"), dict):
            raise MetaError("the recipe is missing")
        try:
            recipe = Recipe.from_json(d["recipe"])
        except (ArgumentError, TypeError, ValueError) as e:
            raise MetaError(f"the recipe is damaged ({e})") from None
        data = DataMeta.from_json(d.get("data"), model.num_classes)
        if not isinstance(d.get("epochs", []), list) or not all(isinstance(e, dict) for e in d.get("epochs", [])):
            raise MetaError("the epoch history is not a list")
        runtime = d.get("runtime", {})
        return cls(
            str(d.get("status", "")),
            model,
            config,
            recipe,
            data,
            runtime if isinstance(runtime, dict) else {},
            list(d.get("epochs", [])),
            _seconds(d.get("wall_seconds")),
            _seconds(d.get("setup_seconds")),
            _seconds_by_key(d.get("time_parts")),
            _text(d.get("from_run_weights_sha256")),
            _text(d.get("weights_sha256")),
            d["costs"] if isinstance(d.get("costs"), dict) else None,
            _text(d.get("teacher_weights_sha256")),
        )


def _seconds(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _seconds_by_key(d: Any) -> dict[str, float]:
    """A run.json's ``time_parts`` as recorded, or empty (a run from before they were, or a damaged entry)."""
    if not isinstance(d, dict):
        return {}
    return {str(k): float(v) for k, v in d.items() if isinstance(v, (int, float))}
