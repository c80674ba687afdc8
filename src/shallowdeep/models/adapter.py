"""Any image classifier as a chain of segments: trace it, find its single-tensor cut points, split there.

A *cut point* is a node of the model's torch.fx graph through which all later computation flows:
once it is computed, nothing computed before it is needed again (parameters aside). Residual block
outputs, the points between VGG layers and MobileNet/EfficientNet/ConvNeXt blocks are cut points;
the inside of a residual block is not (the shortcut is still alive). Splitting the graph at cut
points gives segments that run one after another, so early exits stop for real.

Cut points in the middle of a layer (a convolution whose output goes to its batch norm, a norm whose
output goes to its activation) are not offered as IC positions: an IC there would see a feature no
layer of the network ever hands on.

Models that torch.fx cannot trace may declare their blocks by module name instead
(:func:`declared_chain`): the named modules, run in order, must compute the model's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..core.errors import ArgumentError
from .layout import CHW, TOKENS, declared_prefix, graph_layout, prefix_tokens, reads_shape_only, shape_layout

# the users that make a cut point "mid-layer": normalisations and activations of the same layer
_MID_LAYER_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Mish,
    nn.PReLU,
    nn.Softplus,
    nn.GLU,
)
_MID_LAYER_FUNCTIONS = {
    torch.relu,
    torch.relu_,
    torch.sigmoid,
    torch.tanh,
    torch.batch_norm,
    torch.layer_norm,
    torch.group_norm,
    nn.functional.relu,
    nn.functional.relu6,
    nn.functional.silu,
    nn.functional.gelu,
    nn.functional.hardswish,
    nn.functional.hardsigmoid,
    nn.functional.leaky_relu,
    nn.functional.elu,
    nn.functional.mish,
    nn.functional.batch_norm,
    nn.functional.layer_norm,
    nn.functional.group_norm,
    nn.functional.sigmoid,
}
_MID_LAYER_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}


@dataclass(frozen=True)
class CutPoint:
    """One place a model can be split: ``name`` (graph node or module name), ``index`` (graph order),
    ``shape`` (the feature's shape without batch), ``where`` (the module or function producing it) and
    ``layout`` (what its axes are: :mod:`.layout`) with, for tokens, ``prefix``: the class and
    distillation tokens before the patch grid."""

    name: str
    index: int
    shape: tuple[int, ...]
    where: str
    layout: str = CHW
    prefix: int = 0


class Chain:
    """A model seen as a chain of cut points; :meth:`split` makes the segments between chosen ones.

    ``cuts`` are every single-tensor cut point in order; ``ic_cuts`` those an IC may follow (a
    module's output, not mid-layer, and before ``head_cut``, where the classifier head starts).
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        num_classes: int,
        cuts: list[CutPoint],
        ic_cuts: list[CutPoint],
        splitter: Callable[[list[str]], list[nn.Module]],
    ) -> None:
        self.model = model
        self.image_size = image_size
        self.num_classes = num_classes
        self.cuts = cuts
        self.ic_cuts = ic_cuts
        self._splitter = splitter

    @property
    def head_cut(self) -> CutPoint:
        """Where the classifier head starts: the last cut point with a feature map or tokens (so the
        head is pooling + classifier, and Grad-CAM of the final output sees the last map), else the last."""
        return head_cut(self.cuts)

    def find(self, names: Sequence[str]) -> list[CutPoint]:
        """The cut points named, in order; a name that is no single-tensor cut point raises."""
        by_name = {c.name: c for c in self.cuts}
        found = []
        for name in names:
            if name not in by_name:
                near = ", ".join(c.name for c in self.ic_cuts[:8])
                raise ArgumentError(
                    f"`cuts` names {name!r}, which is not a single-tensor cut point of this model "
                    f"(candidates: {near}{', …' if len(self.ic_cuts) > 8 else ''}; "
                    "`shallowdeep info` lists them all)"
                )
            found.append(by_name[name])
        if [c.index for c in found] != sorted({c.index for c in found}):
            raise ArgumentError(f"`cuts` must name distinct cut points in network order, got {list(names)}")
        if found and found[-1].index >= self.head_cut.index:
            raise ArgumentError(
                f"cut point {found[-1].name!r} is where the classifier head starts, or after it: an IC needs "
                "a later part of the network to stop before"
            )
        return found

    def split(self, names: Sequence[str]) -> list[nn.Module]:
        """Segments between the named cut points, then up to where the head starts, then the head:
        ``len(names) + 2`` modules whose composition is the model."""
        self.find(names)
        return self._splitter(list(names) + [self.head_cut.name])


def head_cut(cuts: Sequence[CutPoint]) -> CutPoint:
    """The last cut point with a map or tokens (two or three axes), else the last cut point."""
    maps = [c for c in cuts if len(c.shape) in (2, 3)]
    return maps[-1] if maps else cuts[-1]


# --------------------------------------------------------------------------------------------------
# tracing


class _Tracer(fx.Tracer):
    """torch.fx's tracer with extra leaf modules, that remembers the module it was inside when it failed."""

    def __init__(self, leaves: tuple[type[nn.Module], ...], autowrap: tuple[Callable, ...]) -> None:
        super().__init__(autowrap_functions=autowrap)
        self.leaves = leaves
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module: the first to see the error
                self.failed_in = self.path_of_module(m) or type(m).__name__
            raise


def _zoo_leaves() -> tuple[tuple[type[nn.Module], ...], tuple[Callable, ...]]:
    """The modules and functions timm declares untraceable (it wraps them as leaves in its own tracing)."""
    try:
        from timm.layers import _fx as timm_fx  # type: ignore[import-not-found]
    except ImportError:
        return (), ()
    try:
        return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())
    except AttributeError:  # older timm names
        return tuple(getattr(timm_fx, "_leaf_modules", ())), tuple(getattr(timm_fx, "_autowrap_functions", ()))


def _no_inplace(model: nn.Module) -> None:
    """Turn off in-place activations: an IC reads a segment's output that the next segment's first
    in-place op would overwrite before the backward pass needs it. The values are the same."""
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False


def quiet(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` called as a plain module: torch.fx's call wrapper prints the generated code and a
    traceback to stderr for any error raised in it, before the tool can turn the error into its one
    line. Every graph module has a class of its own, so only ``gm`` changes."""
    type(gm).__call__ = nn.Module.__call__
    return gm


def trace(model: nn.Module, image_size: int, leaf_modules: Sequence[type[nn.Module]] = ()) -> fx.GraphModule:
    """Trace ``model`` with torch.fx (timm's untraceable layers and ``leaf_modules`` kept whole) and
    annotate every node with its shape for one ``image_size`` input; one-line errors otherwise."""
    leaves, autowrap = _zoo_leaves()
    tracer = _Tracer(leaves + tuple(leaf_modules), autowrap)
    name = type(model).__name__
    was_training = model.training
    model.eval()
    try:
        try:
            graph = tracer.trace(model, concrete_args=_defaults(model))
        except Exception as e:
            where = f" in module `{tracer.failed_in}`" if tracer.failed_in else ""
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ArgumentError(
                f"{name} cannot be traced by torch.fx{where}: {first[:200]}; declare its blocks by module name "
                "instead (to_sdn(model, blocks=[...]), see docs/models.md) or keep that module whole "
                "(leaf_modules=[...])"
            ) from None
        _drop_fixed_inputs(graph)
        gm = quiet(fx.GraphModule(tracer.root, graph, name))
        inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise ArgumentError(
                f"{name}.forward takes {len(inputs)} inputs; an image classifier takes one batch of images"
            )
        x = torch.zeros(2, 3, image_size, image_size, device=device_of(model))
        try:
            with torch.no_grad():
                gm(x)  # first plainly: ShapeProp prints a traceback for an error before raising it
                out = ShapeProp(gm).propagate(x)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ArgumentError(
                f"{name} cannot take {image_size} px images ({first[:160]}): choose another `image_size`"
            ) from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ArgumentError(
                f"{name} returns {shape}, not [N, classes] logits: give a classifier (its forward "
                "must return one logits tensor)"
            )
        return gm
    finally:
        model.train(was_training)


def _defaults(model: nn.Module) -> dict[str, object] | None:
    """The forward's optional arguments after the image batch, fixed at their defaults (timm's ViT
    takes an attention mask, for instance), so that the graph has the one input it is called with."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    fixed = {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return fixed or None


def _drop_fixed_inputs(graph: fx.Graph) -> None:
    """Remove the inputs fixed at their defaults and the checks torch.fx adds for them (nothing else
    uses them), so that the graph takes the image batch alone."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for p in [n for n in graph.nodes if n.op == "placeholder"][1:]:
        seen, todo = {p}, [p]
        while todo:
            for u in todo.pop().users:
                if u not in seen:
                    seen.add(u)
                    todo.append(u)
        if any(n.op == "output" for n in seen):
            continue  # really used: the one-input check below reports it
        for n in sorted(seen, key=order.get, reverse=True):
            graph.erase_node(n)


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape[1:]) if isinstance(meta, TensorMetadata) else None


def _where(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(node.target)).__name__})"
    op = getattr(node.target, "__name__", str(node.target))
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if not stack:
        return op
    path, cls = stack[-1]  # the block whose forward ends in this op (a residual sum, a reshape)
    return f"{op} in {path} ({getattr(cls, '__name__', cls)})"


def _mid_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether every layer reading ``node`` is a norm or an activation of the same layer (a pre-norm
    block's output also feeds the residual sum, so it is not mid-layer)."""
    readers = [u for u in node.users if not reads_shape_only(u)]
    return bool(readers) and all(_mid_layer_op(gm, u) for u in readers)


def _mid_layer_op(gm: fx.GraphModule, user: fx.Node) -> bool:
    if user.op == "call_module":
        return isinstance(gm.get_submodule(user.target), _MID_LAYER_MODULES)
    if user.op == "call_function":
        return user.target in _MID_LAYER_FUNCTIONS
    return user.op == "call_method" and user.target in _MID_LAYER_METHODS


def cut_points(gm: fx.GraphModule, prefix: int | None = None) -> list[CutPoint]:
    """Every single-tensor cut point of a traced (shape-annotated) graph, in graph order; the output's
    producer (the logits) is not one. ``prefix``: the class tokens the model declares."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    last_use = [max((index[u] for u in n.users), default=i) for i, n in enumerate(nodes)]
    out = nodes[-1]
    logits = out.args[0] if isinstance(out.args[0], fx.Node) else None
    cuts: list[CutPoint] = []
    alive_until = 0  # the last index at which any value computed so far is still used
    for i, n in enumerate(nodes):
        if n.op in ("call_module", "call_function", "call_method") and alive_until <= i and n is not logits:
            shape = _shape(n)
            if shape is not None and len(shape) >= 1:
                layout = graph_layout(gm, n, shape)
                first = prefix_tokens(shape[0], prefix) if layout == TOKENS else 0
                cuts.append(CutPoint(n.name, i, shape, _where(gm, n), layout, first))
        if n.op != "get_attr":  # parameters and buffers are copied into every segment that reads them
            alive_until = max(alive_until, last_use[i])
    return cuts


def split_graph(gm: fx.GraphModule, names: Sequence[str]) -> list[fx.GraphModule]:
    """Split ``gm`` at the named cut points: ``len(names) + 1`` graph modules run one after another.
    Modules and parameters are shared with ``gm`` (and so with the traced model), not copied."""
    nodes = list(gm.graph.nodes)
    by_name = {n.name: n for n in nodes}
    bounds = [by_name[name] for name in names]
    index = {n: i for i, n in enumerate(nodes)}
    starts = [nodes[0]] + bounds
    segments = []
    for s, start in enumerate(starts):
        stop = index[bounds[s]] if s < len(bounds) else len(nodes) - 1
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {start: g.placeholder("x")}

        def lookup(n: fx.Node, env=env, g=g) -> fx.Node:
            if n not in env:
                if n.op != "get_attr":
                    raise ArgumentError(f"{n.name!r} is needed across a cut: not a single-tensor cut point")
                env[n] = g.node_copy(n, lambda a: a)
            return env[n]

        for n in nodes[index[start] + 1 : stop + 1]:
            if n.op != "get_attr":
                env[n] = g.node_copy(n, lookup)
        if s < len(bounds):
            g.output(env[bounds[s]])
        else:
            g.node_copy(nodes[-1], lookup)
        g.lint()
        segments.append(quiet(fx.GraphModule(gm, g, f"Segment{s}")))
    return segments


def traced_chain(model: nn.Module, image_size: int, leaf_modules: Sequence[type[nn.Module]] = ()) -> Chain:
    """``model`` traced into a :class:`Chain` (see the module's docstring for what counts as a cut)."""
    _no_inplace(model)
    gm = trace(model, image_size, leaf_modules)
    cuts = cut_points(gm, declared_prefix(model))
    if not cuts:
        raise ArgumentError(f"{type(model).__name__} has no single-tensor cut point: nothing to attach an IC to")
    end = head_cut(cuts).index
    nodes, modules = list(gm.graph.nodes), dict(model.named_modules())
    ic_cuts = [
        c
        for c in cuts
        if c.index < end and _module_output(modules, nodes, c.index) and not _mid_layer(gm, nodes[c.index])
    ]
    logits = list(gm.graph.nodes)[-1].args[0]  # trace() checked it is one [N, classes] tensor
    num_classes = int(logits.meta["tensor_meta"].shape[1])
    return Chain(model, image_size, num_classes, cuts, ic_cuts, lambda names: list(split_graph(gm, names)))


def _scopes(node: fx.Node) -> list[str]:
    """The module calls ``node`` was made in, outermost first (a module's own call included)."""
    return [str(path) for path, _ in (node.meta.get("nn_module_stack") or {}).values()]


def _module_output(modules: dict[str, nn.Module], nodes: list[fx.Node], i: int) -> bool:
    """Whether node ``i`` is where a block ends: it ends a module call that is a block (a module with
    parts of its own) or one step of a sequence (a layer of an ``nn.Sequential``, of the model's own
    forward). A point inside a block (between a transformer block's attention and its MLP, inside a
    patch merging) is not. A graph traced without module scopes has no way to tell: every node counts."""
    if not any("nn_module_stack" in n.meta for n in nodes):
        return True
    later = next((n for n in nodes[i + 1 :] if n.op not in ("get_attr", "output")), None)
    if later is None:
        return True
    ending = [p for p in _scopes(nodes[i]) if p not in set(_scopes(later))]

    def is_step(path: str) -> bool:
        parent = modules.get(path.rpartition(".")[0]) if "." in path else None
        has_parts = next(modules[path].children(), None) is not None if path in modules else False
        return has_parts or "." not in path or isinstance(parent, (nn.Sequential, nn.ModuleList, nn.ModuleDict))

    return any(is_step(p) for p in ending)


# --------------------------------------------------------------------------------------------------
# declared blocks (the way out for models torch.fx cannot trace)


class _Run(nn.Module):
    """Modules run in sequence, flattening before a linear layer that gets a feature map (as every
    classifier's ``forward`` does between its pooling and its ``fc``)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.parts:
            if isinstance(m, nn.Linear) and x.dim() > 2:
                x = torch.flatten(x, 1)
            x = m(x)
        return x


def _declared_cuts(
    model: nn.Module, names: list[str], parts: list[nn.Module], shapes: list[tuple[int, ...]]
) -> list[CutPoint]:
    """The cut point after each declared block, its layout read from its shape (there is no graph)."""
    prefix = declared_prefix(model)
    return [
        CutPoint(
            b, i, s, f"{b} ({type(m).__name__})", shape_layout(s), prefix_tokens(s[0], prefix) if len(s) == 2 else 0
        )
        for i, (b, m, s) in enumerate(zip(names, parts, shapes))
    ]


def declared_chain(model: nn.Module, image_size: int, blocks: Sequence[str]) -> Chain:
    """A :class:`Chain` from module names whose modules, run in order, compute ``model``'s output (checked
    on a random input). Every name but the last is a cut point; the last is the classifier."""
    _no_inplace(model)
    names = list(blocks)
    if len(names) < 2:
        raise ArgumentError(
            "`blocks` must name at least two modules: the network's parts in order, the classifier last"
        )
    mods = dict(model.named_modules())
    missing = [b for b in names if b not in mods or b == ""]
    if missing:
        raise ArgumentError(
            f"`blocks` names {missing[0]!r}, which is not a module of {type(model).__name__} "
            f"(its children: {', '.join(n for n, _ in model.named_children())})"
        )
    parts = [mods[b] for b in names]
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device_of(model))
        shapes = []
        with torch.no_grad():
            want = model(x)
            h = x
            for b in names:
                try:
                    h = _Run([mods[b]])(h)
                except Exception as e:  # a shape mismatch: the names are not the forward's order
                    raise ArgumentError(
                        f"the `blocks` {names} run in order do not compute {type(model).__name__}'s "
                        f"output: {b!r} fails ({str(e).splitlines()[0][:120]}); name every module its "
                        "forward uses, in the order it uses them"
                    ) from None
                shapes.append(tuple(h.shape[1:]))
        if not isinstance(want, torch.Tensor) or want.dim() != 2:
            raise ArgumentError(f"{type(model).__name__} does not return [N, classes] logits: give a classifier")
        if h.shape != want.shape or not torch.allclose(h, want, rtol=1e-4, atol=1e-5):
            raise ArgumentError(
                f"the `blocks` {names} run in order do not compute {type(model).__name__}'s output: "
                "name every module its forward uses, in the order it uses them"
            )
    finally:
        model.train(was_training)
    cuts = _declared_cuts(model, names[:-1], parts, shapes)

    def splitter(at: list[str]) -> list[nn.Module]:
        bounds = [names.index(a) + 1 for a in at]
        edges = [0] + bounds + [len(names)]
        return [_Run(parts[a:b]) for a, b in zip(edges, edges[1:])]

    end = head_cut(cuts).index
    return Chain(model, image_size, int(want.shape[1]), cuts, [c for c in cuts if c.index < end], splitter)


# --------------------------------------------------------------------------------------------------
# placement


PAPER_FRACTIONS = (0.15, 0.30, 0.45, 0.60, 0.75, 0.90)


def place(cumulative: Sequence[float], total: float, fractions: Sequence[float] = PAPER_FRACTIONS) -> list[int]:
    """Indices of the cut points whose cumulative cost is closest to each fraction of ``total`` (the
    paper's rule), in order and never two at one cut; ties go to the later cut (a smaller feature)."""
    if any(not (0 < f < 1) or math.isnan(f) for f in fractions) or list(fractions) != sorted(set(fractions)):
        raise ArgumentError(f"IC `fractions` must be increasing numbers between 0 and 1, got {list(fractions)}")
    chosen: list[int] = []
    wanted = list(fractions)[-len(cumulative) :] if len(cumulative) < len(fractions) else list(fractions)
    for j, f in enumerate(wanted):
        start = chosen[-1] + 1 if chosen else 0
        # leave one cut for every later fraction, so that no IC is lost to an early greedy pick
        left = range(start, len(cumulative) - (len(wanted) - 1 - j))
        chosen.append(min(left, key=lambda i: (abs(cumulative[i] - f * total), -i)))
    return chosen
