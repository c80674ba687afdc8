"""The exit rule: how an IC decides to let an input out, one type for every layer that uses one.

Analysis simulates a rule on records, ``calibration.json`` stores it, the engine (torch) and the
deployment runtime (numpy) carry it out, the export manifest ships it: all of them take an
:class:`ExitRule`. A rule scores every IC's output in [0, 1] and an input leaves at the first IC
whose score reaches that IC's threshold:

- ``max_softmax``: the IC's maximum softmax (the paper's rule);
- ``entropy``: certainty ``1 - H(p) / log(C)`` of the IC's softmax (BranchyNet exits on low entropy);
- ``patience:k``: exit once ``k`` consecutive ICs agree (PABEE); the score of IC i is the length of
  the run of equal predictions ending at i divided by the number of ICs, the threshold ``k / ICs``.

``+T`` runs the rule on temperature-scaled logits (one temperature per output, fitted on validation).
``+E`` runs it on Zero Time Waste's geometric ensemble of the outputs so far (Wołczyk et al., NeurIPS
2021; :class:`GeometricEnsemble`, fitted on validation); ``ztw`` is ``max_softmax+E``.
An input that no IC lets out gets the ``fallback``: the most confident output (the reference's) or
the final one. :func:`exit_scores` is the numpy runtime's decision (records and deployment); the
engine has the torch one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import ArgumentError
from .names import EXIT_RULES, FALLBACKS, JSONObject

RULES = EXIT_RULES


def check_fallback(fallback: str) -> str:
    """``fallback`` if it is a known rule, else an :class:`ArgumentError`."""
    if fallback not in FALLBACKS:
        raise ArgumentError(f"unknown `fallback` {fallback!r}: choose one of {', '.join(FALLBACKS)}")
    return fallback


def _numbers(values: Any, what: str, positive: bool) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ArgumentError(f"`{what}` must be a list of numbers, got {values!r}") from None
    ok = all(0 < v < math.inf for v in out) if positive else all(v >= 0.0 for v in out)  # NaN fails both
    if not ok:
        need = "positive finite numbers" if positive else "numbers >= 0 (above 1: no IC exits)"
        raise ArgumentError(f"`{what}` must be {need}, got {list(out)}")
    return out


@dataclass(frozen=True)
class GeometricEnsemble:
    """Zero Time Waste's geometric ensemble: output ``m`` answers with the softmax of
    ``sum_{j<=m} weights[m][j] * log_softmax(z_j) + biases[m]`` (a product of the outputs' softmaxes
    so far, each raised to its weight, with class biases), so no earlier output's work is thrown
    away. Weights are >= 0 (as ZTW's exp-parametrised ones), one set per output, fitted on the
    validation record by maximum likelihood (``shallowdeep.analysis.ensemble``)."""

    weights: tuple[tuple[float, ...], ...]
    biases: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        try:
            w = tuple(tuple(float(v) for v in row) for row in self.weights)
            b = tuple(tuple(float(v) for v in row) for row in self.biases)
        except (TypeError, ValueError):
            raise ArgumentError("an ensemble's `weights` and `biases` are lists of lists of numbers") from None
        if not w or len(b) != len(w) or any(len(row) != m + 1 for m, row in enumerate(w)):
            raise ArgumentError(
                f"an ensemble has one weight row per output, output m with m + 1 weights, and one bias row "
                f"per output; got weight rows of {[len(r) for r in w]} and {len(b)} bias rows"
            )
        if len({len(row) for row in b}) != 1 or len(b[0]) < 2:
            raise ArgumentError(f"an ensemble's bias rows have one bias per class, got {[len(r) for r in b]}")
        if not all(0.0 <= v < math.inf for row in w for v in row) or not all(
            math.isfinite(v) for row in b for v in row
        ):
            raise ArgumentError("an ensemble's weights are finite numbers >= 0 and its biases finite numbers")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "biases", b)

    @property
    def num_outputs(self) -> int:
        return len(self.weights)

    @property
    def num_classes(self) -> int:
        return len(self.biases[0])

    def logits(self, logps: np.ndarray, m: int) -> np.ndarray:
        """Output ``m``'s ensemble logits ``[N, C]`` from the log-softmaxes of outputs ``0..m``,
        ``logps`` ``[N, m + 1, C]`` (double precision)."""
        w = np.asarray(self.weights[m], np.float64)
        return np.einsum("nkc,k->nc", logps[:, : m + 1].astype(np.float64), w) + np.asarray(self.biases[m])

    def to_json(self) -> JSONObject:
        return {"weights": [list(r) for r in self.weights], "biases": [list(r) for r in self.biases]}

    @classmethod
    def from_json(cls, d: Any) -> GeometricEnsemble:
        """Rebuild an ensemble from :meth:`to_json`; anything else is an :class:`ArgumentError`."""
        if not isinstance(d, dict) or set(d) != {"weights", "biases"}:
            raise ArgumentError("an ensemble is a JSON object with `weights` and `biases`")
        if not all(isinstance(d[k], list) and all(isinstance(r, list) for r in d[k]) for k in d):
            raise ArgumentError("an ensemble's `weights` and `biases` are lists of lists of numbers")
        return cls(tuple(map(tuple, d["weights"])), tuple(map(tuple, d["biases"])))


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Log-softmax of logit rows ``[N, C]`` in double precision (what the ensemble combines)."""
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class ExitRule:
    """A rule by ``name`` (``max_softmax``, ``entropy``, ``patience``) with ``k`` agreeing ICs for
    patience and ``temperature`` (the ``+T`` variant) or ``ensembled`` (``+E``: on the geometric
    ensemble of the outputs so far). Once calibrated it carries its per-output ``temperatures``, its
    fitted ``ensemble`` and per-IC ``thresholds``; ``fallback`` answers inputs no IC lets out."""

    name: str = "max_softmax"
    k: int = 0
    temperature: bool = False
    temperatures: tuple[float, ...] | None = None
    thresholds: tuple[float, ...] | None = None
    fallback: str = "most_confident"
    ensembled: bool = False
    ensemble: GeometricEnsemble | None = None

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ArgumentError(
                f"unknown exit rule {self.name!r}: choose max_softmax, entropy or patience:K, "
                "each optionally with +T (temperature-scaled)"
            )
        if not isinstance(self.k, int) or isinstance(self.k, bool):
            raise ArgumentError(f"patience's `k` is a count of agreeing ICs, got {self.k!r}")
        if self.name == "patience" and self.k < 1:
            raise ArgumentError(f"patience:K needs K >= 1, got {self.k}")
        if self.name != "patience" and self.k:
            raise ArgumentError(f"the {self.name} rule takes no ':' argument, got k={self.k}")
        check_fallback(self.fallback)
        if self.ensembled and self.temperature:
            raise ArgumentError("an ensemble (+E) fits its own scale of each output: leave out +T")
        if self.ensemble is not None and not self.ensembled:
            raise ArgumentError("an ensemble belongs to a +E rule (ensembled=True)")
        if self.ensemble is not None and not isinstance(self.ensemble, GeometricEnsemble):
            raise ArgumentError(f"`ensemble` is a GeometricEnsemble, got {type(self.ensemble).__name__}")
        if self.temperatures is not None:
            object.__setattr__(self, "temperatures", _numbers(self.temperatures, "temperatures", True))
            if self.ensembled and any(t != 1.0 for t in self.temperatures):
                raise ArgumentError("an ensemble (+E) fits its own scale of each output: its `temperatures` are all 1")
        if self.thresholds is not None:
            object.__setattr__(self, "thresholds", _numbers(self.thresholds, "threshold", False))

    @classmethod
    def parse(cls, text: str, temperature: bool = False) -> ExitRule:
        """``"max_softmax"``, ``"entropy"`` or ``"patience:K"``; a ``+T`` suffix (or ``temperature``)
        runs it on temperature-scaled logits, ``+E`` on the geometric ensemble; ``"ztw"`` is
        ``max_softmax+E`` (Zero Time Waste's rule)."""
        text = text.strip()
        written, ensembled = text, False
        if text == "ztw":
            text = "max_softmax+E"
        if text.endswith("+E"):
            text, ensembled = text[:-2], True
        if text.endswith("+T"):
            text, temperature = text[:-2], True
        if ensembled and temperature:
            raise ArgumentError(f"{written!r}: an ensemble (+E) fits its own scale of each output, leave out +T")
        name, _, arg = text.partition(":")
        if name not in RULES:
            raise ArgumentError(
                f"unknown exit rule {written!r} in `rules`: choose max_softmax, entropy or patience:K, "
                "each optionally with +T (temperature-scaled) or +E (ensembled), or ztw"
            )
        if name != "patience":
            if arg:
                raise ArgumentError(f"the {name} rule takes no ':' argument, got {written!r}")
            return cls(name, 0, temperature, ensembled=ensembled)
        try:
            k = int(arg)
        except ValueError:
            raise ArgumentError(f"patience needs a count of agreeing ICs, as patience:2; got {written!r}") from None
        return cls(name, k, temperature, ensembled=ensembled)

    @property
    def label(self) -> str:
        """The rule as written on the command line: ``entropy+T``, ``patience:2``."""
        base = f"patience:{self.k}" if self.name == "patience" else self.name
        return base + ("+T" if self.temperature else "") + ("+E" if self.ensembled else "")

    def calibrated(
        self,
        thresholds: float | list[float],
        temperatures: list[float] | None,
        fallback: str,
        ensemble: GeometricEnsemble | None = None,
    ) -> ExitRule:
        """This rule with its thresholds (one for every IC, or one per IC), temperatures, fallback and
        (a +E rule) its fitted ensemble."""
        qs = [thresholds] if isinstance(thresholds, (int, float)) else list(thresholds)
        return replace(
            self,
            thresholds=tuple(qs),
            temperatures=None if temperatures is None else tuple(temperatures),
            fallback=fallback,
            ensemble=ensemble,
        )

    def fitted_ensemble(self, num_outputs: int) -> GeometricEnsemble | None:
        """The ensemble a +E rule runs (refused if it has none or one for other outputs); None otherwise."""
        if not self.ensembled:
            return None
        if self.ensemble is None:
            raise ArgumentError(f"the {self.label} rule has no fitted ensemble: calibrate it on validation records")
        if self.ensemble.num_outputs != num_outputs:
            raise ArgumentError(f"an ensemble of {self.ensemble.num_outputs} outputs for {num_outputs}")
        return self.ensemble

    def per_ic(self, num_ics: int) -> list[float]:
        """One threshold per IC (a single threshold repeated); refused if the count does not fit."""
        if self.thresholds is None:
            raise ArgumentError(f"the {self.label} rule has no `threshold`: calibrate it or give one")
        qs = list(self.thresholds) * num_ics if len(self.thresholds) == 1 else list(self.thresholds)
        if len(qs) != num_ics:
            raise ArgumentError(f"{len(qs)} thresholds for {num_ics} ICs")
        return qs

    def scales(self, num_outputs: int) -> list[float]:
        """The temperature of every output (1 where the rule runs on raw logits)."""
        temps = [1.0] * num_outputs if self.temperatures is None else list(self.temperatures)
        if len(temps) != num_outputs:
            raise ArgumentError(f"`temperatures` must be {num_outputs} positive numbers, got {temps}")
        return temps

    def to_json(self) -> JSONObject:
        return {
            "name": self.name,
            "k": self.k,
            "temperature": self.temperature,
            "temperatures": None if self.temperatures is None else list(self.temperatures),
            "thresholds": None if self.thresholds is None else list(self.thresholds),
            "fallback": self.fallback,
            "ensembled": self.ensembled,
            "ensemble": None if self.ensemble is None else self.ensemble.to_json(),
        }

    @classmethod
    def from_json(cls, d: Any) -> ExitRule:
        """Rebuild a rule from :meth:`to_json`; anything else is an :class:`ArgumentError`."""
        if not isinstance(d, dict):
            raise ArgumentError(f"an exit rule is a JSON object, got {type(d).__name__}")
        unknown = set(d) - {
            "name",
            "k",
            "temperature",
            "temperatures",
            "thresholds",
            "fallback",
            "ensembled",
            "ensemble",
        }
        if unknown:
            raise ArgumentError(f"unknown exit-rule keys {sorted(unknown)}")
        temp = d.get("temperature", False)
        if not isinstance(temp, bool):
            raise ArgumentError(f"an exit rule's `temperature` is true or false, got {temp!r}")
        ensembled, ens = d.get("ensembled", False), d.get("ensemble")
        if not isinstance(ensembled, bool):
            raise ArgumentError(f"an exit rule's `ensembled` is true or false, got {ensembled!r}")
        return cls(
            str(d.get("name", "max_softmax")),
            d.get("k", 0),
            temp,
            d.get("temperatures"),
            d.get("thresholds"),
            str(d.get("fallback", "most_confident")),
            ensembled,
            None if ens is None else GeometricEnsemble.from_json(ens),
        )


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax of logit rows ``[N, C]`` in double precision (as records and the engine compute it)."""
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def exit_scores(
    rule: ExitRule, probs: np.ndarray, pred: np.ndarray, num_ics: int, prev: np.ndarray, run: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The numpy runtime's decision at one IC: the rule's score of each input ``[N]`` and the new run
    of agreeing ICs. ``probs`` ``[N, C]`` is the IC's softmax (temperature applied), ``pred`` its
    prediction, ``prev`` and ``run`` the previous IC's prediction and run (-1 and 0 before the first)."""
    run = np.where(pred == prev, run + 1, 1.0)
    if rule.name == "max_softmax":
        return probs.max(-1), run
    if rule.name == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(-1)
        return 1.0 - h / math.log(max(probs.shape[-1], 2)), run
    return run / max(num_ics, 1), run
