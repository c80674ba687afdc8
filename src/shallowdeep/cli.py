"""The ``shallowdeep`` command: the only module that knows flags and exit codes.

Building the parser imports nothing heavy (no torch), so ``--help`` and ``list`` answer at once;
each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .core.catalog import (
    ARCHITECTURES,
    DATASETS,
    DEFAULT_SEED,
    FALLBACKS,
    MODES,
    TOKEN_POOLS,
    ZOO_ARCH_HELP,
    ZOO_PREFIXES,
)
from .core.errors import MissingExtraError, NotCalibratedError, UserError, render_names
from .core.words import counted

if TYPE_CHECKING:
    import torch

    from .core.io import JSONObject
    from .runs.shape import PlannedShape

DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when available)"
DEMO_MARKER = "DEMO"

# library argument names that differ from the parser's destination for the same value
_LIBRARY_NAMES = {
    "limit": "max",
    "convention": "flops",
    "cuts": "ic_cuts",
    "fractions": "ic_fractions",
    "module": "import_module",
    "window": "drift_window",
    "cpus_per_replica": "replica_cpus",
    "address": "ray_address",
}


@functools.cache
def flags() -> dict[str, str]:
    """Library argument name -> the flag that sets it (error messages name the flag to change),
    read from the parser itself, so a new flag is named without a second table."""
    table: dict[str, str] = {}
    for action in build_parser()._subparsers._group_actions[0].choices.values():  # one parser per command
        for arg in action._actions:
            longs = [o for o in arg.option_strings if o.startswith("--")]
            if longs and arg.dest != "help":
                table.setdefault(arg.dest, longs[0])
    return table | {name: table[dest] for name, dest in _LIBRARY_NAMES.items()}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------------------------------
# commands


def _table(rows: list[JSONObject], key: str = "val_acc") -> str:
    """A text table of per-output rows; the accuracy column is ``key`` ("val_acc" -> "val acc")."""
    has_acc = bool(rows) and key in rows[0]
    lines = [f"{'output':<8} {'GFLOPs':>10} {'rel. cost':>10}" + (f" {key.replace('_', ' '):>8}" if has_acc else "")]
    for r in rows:
        line = f"{r['output']:<8} {r['gflops']:>10.4f} {100 * r['relative_cost']:>9.1f}%"
        if has_acc:
            line += f" {100 * r[key]:>7.2f}%"
        lines.append(line)
    return "\n".join(lines)


def _user_module(args: argparse.Namespace) -> torch.nn.Module | None:
    """The module ``--import-module MODULE:FACTORY`` names, built by calling ``FACTORY()``: the one
    place the tool imports and runs code, and only when the user asks by that flag."""
    spec = getattr(args, "import_module", None)
    if spec is None:
        return None
    import importlib

    import torch

    name, sep, attr = spec.partition(":")
    if not (sep and name and attr.isidentifier()):
        raise UserError(f"--import-module takes MODULE:FACTORY (for example mynets:make), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a console script's path lacks the current folder
    try:
        factory = getattr(importlib.import_module(name), attr)
        module = factory()
    except Exception as e:  # the user's code: any error it raises is theirs, said in one line
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(f"--import-module {spec}: {type(e).__name__}: {first}") from None
    if not isinstance(module, torch.nn.Module):
        raise UserError(f"--import-module {spec}: {attr}() returned a {type(module).__name__}, not an nn.Module")
    return module


def cmd_info(args: argparse.Namespace) -> int:
    from .core.outputs import output_names
    from .models.costs import output_costs
    from .models.sdn import SDN

    if args.run:
        model, val_acc, head = _info_of_run(args)
    else:
        if not (args.arch and args.data):
            raise UserError("give a RUN folder, or both --arch and --data")
        shape = _info_shape(args)
        if args.cuts:
            return _print_cuts(args, shape.num_classes, shape.image_size)
        head = {"arch": args.arch, "data": args.data, "kind": "sdn"}
        head |= {"classes_from": shape.classes_from, "image_size_from": render_names(shape.size_from, flags())}
        model, val_acc = _info_of_arch(args, shape), None
    if args.cuts:
        raise UserError(
            "--cuts lists the cut points of a zoo model: give --arch torchvision:NAME (or timm:NAME) and --data"
        )
    costs = output_costs(model, args.flops)
    cnn = model.cnn if isinstance(model, SDN) else model
    p_cnn = sum(p.numel() for p in cnn.parameters())
    p_sdn = sum(p.numel() for p in model.parameters()) if isinstance(model, SDN) else None  # a CNN run has no ICs
    rows = []
    for i, name in enumerate(output_names(len(costs.outputs))):
        row = {"output": name, "gflops": costs.outputs[i] / 1e9, "relative_cost": costs.relative[i]}
        if val_acc is not None:
            row["val_acc"] = val_acc[i]
        rows.append(row)
    obj = head | {
        "image_size": model.image_size,
        "num_classes": model.num_classes,
        "params_cnn": p_cnn,
        "params_sdn": p_sdn,
        "gflops_cnn": costs.cnn / 1e9,
        "flop_convention": args.flops,
        "outputs": rows,
    }
    if args.json:
        print(json.dumps(obj, indent=2))
    else:
        sources = f" (classes: {head['classes_from']}; size: {head['image_size_from']})" if not args.run else ""
        print(
            f"{obj['arch']} on {obj['data']} ({counted(model.num_classes, 'class', 'classes')}, {model.image_size} px)"
            + (f", {obj['kind']} run trained with --mode {obj['mode']}" if args.run else sources)
        )
        sdn = f"  SDN {p_sdn:,}" if p_sdn is not None else ""
        print(f"parameters: CNN {p_cnn:,}{sdn}   CNN GFLOPs {costs.cnn / 1e9:.4f} ({args.flops} count)")
        print(_table(rows))
    return 0


def _info_of_run(args: argparse.Namespace) -> tuple[Any, list[float] | None, JSONObject]:
    """A run's model, its last validation accuracies and what info says of it."""
    from . import runs

    if args.arch or args.data:
        raise UserError("give either a RUN folder or --arch and --data, not both")
    model = runs.load(args.run, module=_user_module(args))
    meta = runs.RunFolder(args.run).meta()
    head = {"run": str(args.run), "arch": model.arch, "data": meta.config.data}
    return model, meta.last_val_acc, head | {"kind": meta.model.kind, "mode": meta.config.mode}


def _info_shape(args: argparse.Namespace) -> PlannedShape:
    """The classes and image size ``train`` gives ``--arch`` on ``--data`` with the same flags."""
    from .runs.shape import planned_shape

    return planned_shape(args.arch, args.data, args.data_root, args.image_size, args.data_mode)


def _info_of_arch(args: argparse.Namespace, shape: PlannedShape) -> Any:
    """An untrained SDN of ``--arch`` for ``--data``."""
    from .models.convert import build_model
    from .models.sdn import SDN

    cnn, _ = build_model(args.arch, shape.num_classes, shape.image_size, pretrained=bool(args.pretrained))
    return SDN(cnn)


def _print_cuts(args: argparse.Namespace, classes: int, image_size: int) -> int:
    """Every cut point of a zoo model an IC may follow, with the paper's placement marked."""
    from .models.convert import candidates, chain_of, choose_cuts
    from .models.zoo import is_zoo_name, zoo_model

    if not is_zoo_name(args.arch):
        raise UserError(f"{args.arch} declares its blocks (see `info` without --cuts); --cuts is for zoo models")
    zm = zoo_model(args.arch, classes, bool(args.pretrained), image_size)
    chain = chain_of(zm.module, image_size)
    cands = candidates(chain)
    chosen = set(choose_cuts(chain, cands=cands))
    rows = [c.to_json() | {"paper_placement": c.cut.name in chosen} for c in cands]
    if args.json:
        print(json.dumps({"arch": args.arch, "image_size": chain.image_size, "cuts": rows}, indent=2))
        return 0
    print(
        f"{args.arch} at {chain.image_size} px: {len(rows)} cut points an IC may follow "
        "(* the paper's placement: closest to 15/30/45/60/75/90 % of the FLOPs)"
    )
    print(f"  {'cut point':<32} {'cost':>7}  {'feature':<16} {'layout':<9} produced by")
    for r in rows:
        shape = "x".join(str(d) for d in r["shape"])
        layout = r["layout"] + (f"+{r['prefix']}" if r["prefix"] else "")
        print(
            f"{'*' if r['paper_placement'] else ' '} {r['name']:<32} {100 * r['relative']:>6.1f}%  "
            f"{shape:<16} {layout:<9} {r['where']}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .workflows import export_run

    out = export_run(args.run, args.out, args.opset, args.quantize)
    print(
        f"exported to {out} (manifest.json + one ONNX graph per stage); run it with shallowdeep.inference.deploy.load"
    )
    if args.quantize:
        q = json.loads((out / "manifest.json").read_text())["quantization"]
        for name in ("fp32", "int8"):
            v, t = q[name]["val"], q[name]["test"]
            test = f"; test {100 * t['accuracy']:.2f}% at {100 * t['relative_cost']:.1f}%" if t else ""
            print(
                f"  {name} early exits: validation {100 * v['accuracy']:.2f}% at {100 * v['relative_cost']:.1f}%{test}"
            )
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .runs.latency import check_latency_out, latency_file, profile_export, profile_run, write_latency

    target = Path(args.target)
    export = (target / "manifest.json").is_file()
    if not export:
        from .runs import RunFolder

        RunFolder(target).meta()  # not a run: said before anything else
    runtime = args.runtime or ("onnx" if export else "torch")
    if export and runtime == "torch":
        raise UserError("an export runs in onnxruntime: profile it with --runtime onnx, or profile its run")
    out = check_latency_out(args.out or latency_file(target))
    if export:
        profile = profile_export(target, _device(args), args.batch, args.repeats)
    else:
        profile = profile_run(target, runtime, _device(args), args.batch, args.repeats)
    write_latency(profile, out)
    print(f"{profile.describe()}, ms per input over {profile.repeats} repeats: mean, median (p95)")
    for k, s in enumerate(profile.stages):
        name = f"stage {k + 1}" + (" (final)" if k == len(profile.stages) - 1 else "")
        print(f"  {name:<16} {s.mean:9.4f} {s.p50:9.4f} ({s.p95:.4f})")
    plain, full = profile.plain_ms(), float(profile.cumulative_ms()[-1])
    print(f"  no exit: {full:.4f} ms on average; the network without ICs: {plain:.4f} ms")
    print(f"written to {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .workflows import compare_runs

    rules = [r for r in args.rules.split(",") if r.strip()] if args.rules is not None else None
    done = compare_runs(args.runs, rules, args.chart, device=_device(args))
    if args.json:
        print(json.dumps([r.to_json() | {"curve": None} for r in done.rows], indent=2))
        return 0
    costs = [f"{100 * p.budget:.0f}%" for p in done.rows[0].tradeoff.points]
    print(f"| run | mode | rule | final | {' | '.join(costs)} | area |")
    print("|" + "---|" * (5 + len(costs)))
    for r in done.rows:
        acc = [("-" if p.test_accuracy is None else f"{100 * p.test_accuracy:.2f}") for p in r.tradeoff.points]
        print(
            f"| {r.run} | {r.mode} | {r.rule} | {100 * r.final_accuracy:.2f} | {' | '.join(acc)} | "
            f"{r.tradeoff.auc:.4f} |"
        )
    print("test accuracy (%) at each share of the CNN's cost, thresholds chosen on validation")
    if done.chart is not None:
        print(f"chart: {done.chart}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    print("architectures:")
    for name, doc in ARCHITECTURES.items():
        print(f"  {name:<18} {doc}")
    for prefix, doc in ZOO_PREFIXES.items():
        print(f"  {prefix + 'NAME':<18} {doc}")
    print("data sets:")
    for name, doc in DATASETS.items():
        print(f"  {name:<18} {doc}")
    return 0


MAX_CONFIG = 64 << 20  # a settings file is a few hundred bytes; a replayed run.json is bounded as run.json is


def _config_file(path: str) -> JSONObject:
    """Training settings from a JSON or YAML file, or from a finished run's ``run.json`` (replay)."""
    p = Path(path)
    if p.exists() and not p.is_file():  # a folder, a FIFO, /dev/zero: never read
        raise UserError(f"--config {path} is not a regular file: give a JSON or YAML file (or a run's run.json)")
    if not p.is_file():
        raise UserError(f"--config {path} does not exist: give a JSON or YAML file (or a run's run.json)")
    if p.stat().st_size > MAX_CONFIG:
        raise UserError(
            f"--config {path} is {p.stat().st_size} bytes, far more than a settings file: give the right file"
        )
    try:
        text = p.read_text()
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            # aliases can make a few bytes stand for a billion values (a "billion laughs" file);
            # settings never need them
            if any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader)):
                raise UserError(f"--config {path} uses YAML aliases (*name): write every setting out")
            obj = yaml.safe_load(text)
        else:
            obj = json.loads(text)
    except UserError:
        raise
    except Exception as e:  # any parse error of either format (or not text at all): one line
        raise UserError(
            f"--config {path} is not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"--config {path} must hold one mapping of settings")
    if "format" in obj and "config" in obj:  # a run.json: replay its configuration and recipe
        cfg = dict(obj.get("config") or {})
        cfg.update(obj.get("recipe") or {})
        cfg.pop("backdoor", None) if not cfg.get("backdoor") else None
        return cfg
    return {k.replace("-", "_"): v for k, v in obj.items()}


# TrainConfig's fields a flag or a --config file may set (the rest: the output folder, resuming,
# DDP's batch-norm sync, the backdoor's own flags, a Python module)
_NOT_SETTINGS = {"out", "resume", "sync_bn", "backdoor", "module"}


def _train_keys() -> list[str]:
    from dataclasses import fields

    from .runs import TrainConfig

    return [f.name for f in fields(TrainConfig) if f.name not in _NOT_SETTINGS]


def _train_config(args: argparse.Namespace):
    from .runs import TrainConfig

    settings: JSONObject = {}
    backdoor = None
    if args.config:
        settings = _config_file(args.config)
        b = settings.pop("backdoor", None)
        if b is not None and b is not False:  # false or absent: no backdoor
            if not isinstance(b, dict):
                raise UserError(
                    f"--config {args.config}: backdoor must be a mapping (rate, target, size, row, col), got {b!r}"
                )
            backdoor = {
                "rate": b.get("rate"),
                "target": b.get("target"),
                "size": b.get("size"),
                "pos": [b.get("row"), b.get("col")] if "row" in b or "col" in b else b.get("pos"),
            }
        unknown = sorted(set(settings) - set(_train_keys()))
        if unknown:
            raise UserError(f"--config {args.config} has unknown settings: {', '.join(unknown)}")
    for key in _train_keys():  # flags override the file
        v = getattr(args, key, None)
        if v is not None:
            settings[key] = v
    if args.backdoor:
        pos = None
        if args.trigger_pos is not None:
            try:
                pos = [int(v) for v in args.trigger_pos.split(",")]
                if len(pos) != 2:
                    raise ValueError
            except ValueError:
                raise UserError(f"--trigger-pos takes ROW,COL (two integers), got {args.trigger_pos!r}") from None
        backdoor = {"rate": args.poison_rate, "target": args.target_class, "size": args.trigger_size, "pos": pos}
    elif any(v is not None for v in (args.poison_rate, args.target_class, args.trigger_size, args.trigger_pos)):
        raise UserError("--poison-rate, --target-class, --trigger-size and --trigger-pos need --backdoor")
    if isinstance(settings.get("milestones"), str):
        try:
            settings["milestones"] = tuple(int(m) for m in settings["milestones"].split(",") if m.strip())
        except ValueError:
            raise UserError(f"--milestones takes comma-separated epochs, got {settings['milestones']!r}") from None
    for key, kind in (("ic_cuts", str), ("ic_fractions", float)):
        v = settings.get(key)
        if isinstance(v, str):
            try:
                v = [kind(x.strip()) for x in v.split(",") if x.strip()]
            except ValueError:
                raise UserError(
                    f"{flags()[key]} takes comma-separated {'numbers' if kind is float else 'names'}, "
                    f"got {settings[key]!r}"
                ) from None
        if isinstance(v, list):
            settings[key] = tuple(v)  # else TrainConfig refuses it, naming the setting
    return TrainConfig(out=args.out, resume=args.resume, backdoor=backdoor, sync_bn=args.sync_bn, **settings)


def cmd_train(args: argparse.Namespace) -> int:
    from .workflows import train

    out = train(_train_config(args), progress=not args.quiet, log=None if args.quiet else print)
    from .compute.distributed import current

    if current().main:
        print(f"run written to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a CNN on the embedded digits, make it an SDN (IC-only), train an SDN from scratch."""
    from .runs import TrainConfig, train_run
    from .workflows import analyze_run

    if args.epochs < 1 or args.ic_epochs < 1:
        raise UserError(f"{'--epochs' if args.epochs < 1 else '--ic-epochs'} must be at least 1")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not out.is_dir() or not (out / DEMO_MARKER).is_file():
            raise UserError(f"{out} exists and is not an empty folder or an earlier demo: pass --out another folder")
        shutil.rmtree(out)  # only a folder this command made itself is replaced
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("made by `shallowdeep demo`; the next demo run replaces this folder\n")
    t0 = time.perf_counter()
    log = None if args.quiet else print
    common = dict(arch="small", data="digits", seed=args.seed, device=args.device)
    train_run(
        TrainConfig(out=str(out / "cnn"), mode="cnn", epochs=args.epochs, **common), progress=not args.quiet, log=log
    )
    train_run(
        TrainConfig(
            out=str(out / "ic-only"),
            mode="ic-only",
            from_run=str(out / "cnn"),
            epochs=args.ic_epochs,
            seed=args.seed,
            device=args.device,
        ),
        progress=not args.quiet,
        log=log,
    )
    train_run(
        TrainConfig(out=str(out / "sdn"), mode="sdn", epochs=args.epochs, **common), progress=not args.quiet, log=log
    )
    # the reports collect every output's logits once; the tables below read them from there
    reports = [analyze_run(out / name, log=None) for name in ("ic-only", "sdn")]
    summaries = []
    for name, done in zip(("ic-only", "sdn"), reports):
        a = done.analysis
        rows = [
            {"output": o.output, "gflops": o.gflops, "relative_cost": o.relative_cost, "test_acc": o.test_accuracy}
            for o in a.outputs
        ]
        print(f"\n{name} SDN (small on digits): test accuracy and cost of each output")
        print(_table(rows, "test_acc"))
        summaries.append(
            f"{name}: early exits at {_early_exit_line(a.calibrated, 1, '.3g')}; {_overthinking_line(a, 'are ')}"
        )
    print("\n" + "\n".join(summaries))
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s; runs in {out}")
    for done in reports:
        print(f"report: {done.html}")
    return 0


def _gpu_list(text: str | None) -> list[int] | None:
    """``--gpus 0,1`` as numbers."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--gpus takes GPU numbers separated by commas (such as 0,1), got {text!r}") from None


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduction import reproduce

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    # the IC-training stages on the frozen CNN share --ic-epochs; the mixed one has its own
    by_flag = (
        ("--cnn-epochs", args.cnn_epochs, ("cnn",)),
        ("--ic-epochs", args.ic_epochs, ("ic-only", "ztw", "distill")),
        ("--mixed-epochs", args.mixed_epochs, ("mixed",)),
        ("--sdn-epochs", args.sdn_epochs, ("sdn",)),
    )
    epochs = {k: v for _, v, kinds in by_flag if v is not None for k in kinds}
    for flag, v, _ in by_flag:
        if v is not None and v < 1:
            raise UserError(f"{flag} must be at least 1, got {v}")
    methods = tuple(x.strip() for x in args.methods.split(",") if x.strip())
    stages = None if args.stages is None else tuple(x.strip() for x in args.stages.split(",") if x.strip())
    log = None if args.quiet else print
    reproduce(
        args.data,
        args.out,
        archs,
        data_root=args.data_root,
        image_size=args.image_size,
        epochs=epochs,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        seed=args.seed,
        methods=methods,
        stages=stages,
        max_concurrent=args.max_concurrent,
        gpus=_gpu_list(args.gpus),
        log=log,
        progress=not args.quiet,
    )
    from .compute.distributed import current

    if current().main:
        print(f"reproduction written to {Path(args.out) / 'reproduction.md'} (and .json, index.html)")
    return 0


def _device(args: argparse.Namespace) -> str:
    from .compute.devices import pick_device

    return str(pick_device(args.device))


def cmd_analyze(args: argparse.Namespace) -> int:
    from .compute.distributed import join

    place, device = join(_device(args))  # under torchrun the records are collected in shards
    if not place.main:
        args.quiet = True
    from .workflows import analyze_run

    rules = [r for r in args.rules.split(",") if r.strip()] if args.rules is not None else None
    done = analyze_run(
        args.run,
        args.out,
        max_drop=args.max_drop,
        budget=args.budget,
        fallback=args.fallback,
        device=device,
        rules=rules,
        rule=args.rule,
        thresholds=args.thresholds.replace("-", "_"),
        log=None if args.quiet else print,
        module=_user_module(args),
        corruptions=args.corruptions,
        ood=args.ood,
        latency_budget=args.latency_budget,
        latency_percentile=args.latency_percentile,
        latency=args.latency,
        html=not args.no_html,
    )
    if not place.main:
        return 0
    if not args.quiet:
        _print_analysis(done.analysis, args)
        _print_shifts(done.analysis)
    print(f"report: {done.html}\nfigures: {done.json}" if done.html else f"analysis: {done.json} (no report.html)")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from .inference.attack import SlowdownAttack
    from .runs.attacks import attack_run

    attack = SlowdownAttack(
        args.norm, args.epsilon, args.steps, args.step_size, args.universal, args.craft_inputs, args.seed
    )
    done = attack_run(
        args.run, attack, split=args.split, inputs=args.inputs, device=_device(args), log=None if args.quiet else print
    )
    final = done.record.num_outputs - 1
    print(
        f"{done.record.num_inputs} {args.split} inputs attacked ({attack.label}) in {done.seconds:.1f} s; "
        f"record: {done.path}; `shallowdeep analyze {args.run}` reports the exits on them "
        f"(final output {100 * done.record.accuracy()[final]:.2f}% right on them)"
    )
    return 0


def _early_exit_line(cal: Any, digits: int, q: str) -> str:
    """A calibration's test point: its threshold, accuracy beside the final output's, and cost."""
    t = cal.test
    return (
        f"q={cal.threshold:{q}} (chosen on validation): test accuracy {100 * t.accuracy:.{digits}f}% "
        f"(final output {100 * t.final_accuracy:.{digits}f}%) at {100 * t.relative_cost:.1f}% of the CNN's cost"
    )


def _overthinking_line(a: Any, are: str = "") -> str:
    o = a.overthinking
    return (
        f"{100 * o.early_share:.1f}% of test inputs {are}right at some IC; {o.destructive_union_count} of the final "
        f"output's {o.final_errors} errors are right at some IC"
    )


def _tradeoff_text(t: Any) -> str:
    """A rule's test accuracy at the fixed costs (chosen on validation) and its curve's area."""
    if t is None:
        return ""
    acc = "/".join("-" if p.test_accuracy is None else f"{100 * p.test_accuracy:.1f}" for p in t.points)
    costs = "/".join(f"{100 * p.budget:.0f}" for p in t.points)
    return f"at {costs}% cost {acc}%, area {t.auc:.4f}"


def _print_analysis(a: Any, args: argparse.Namespace) -> None:
    """What ``analyze`` prints: the calibrated early exits, the engine's rule, each rule, overthinking."""
    if a.num_outputs > 1:
        for cal, label in (
            (a.calibrated, f"within {counted(100 * args.max_drop, 'point')} of the final output"),
            (a.calibrated_budget, f"most accurate within a cost of {args.budget}"),
        ):
            if cal is not None and cal.test is not None:
                print(f"early exits, {label}: {_early_exit_line(cal, 2, '.4g')}")
        per = a.per_ic
        if per.test is not None and per.thresholds:
            print(
                f"  per-IC thresholds {' '.join(f'{q:.3g}' for q in per.thresholds)} (chosen on validation): "
                f"test accuracy {100 * per.test.accuracy:.2f}% at {100 * per.test.relative_cost:.1f}% "
                "of the CNN's cost"
            )
    if a.engine is not None:
        used = a.engine.calibration
        qs = used.thresholds or [used.threshold]
        cv = used.cross_validation
        if cv and "per_ic" in cv:
            print(
                f"  cross-validated on validation (held-out, {cv['folds']} folds): one threshold "
                f"{100 * cv['single']['accuracy']:.2f}% at {100 * cv['single']['relative_cost']:.1f}%, per-IC "
                f"{100 * cv['per_ic']['accuracy']:.2f}% at {100 * cv['per_ic']['relative_cost']:.1f}%: "
                f"{'per-IC' if cv['per_ic_wins'] else 'one threshold'} chosen"
            )
        budget_point = a.calibrated_budget is not None and args.rule == "max_softmax"
        point = "--latency-budget" if a.engine.latency is not None else "--budget" if budget_point else "--max-drop"
        print(
            f"predict uses the {a.engine.rule.label} rule at "
            f"{'per-IC thresholds ' if len(qs) > 1 else 'q='}{' '.join(f'{q:.4g}' for q in qs)} (the {point} point)"
        )
        _print_latency(a.engine.latency)
    for res in a.rules.results if a.rules is not None else []:
        cal = res.calibration
        print(
            f"  rule {res.rule.label:<15} q={cal.threshold:.4g}: test accuracy {100 * cal.test.accuracy:.2f}% "
            f"at {100 * cal.test.relative_cost:.1f}% of the CNN's cost; {_tradeoff_text(res.tradeoff)}"
        )
    if a.num_outputs > 1:
        print(f"overthinking: {_overthinking_line(a)}")
    else:  # "0.0 % of test inputs right at some IC" said nothing true of a network without ICs
        print(
            f"a CNN run has no ICs: no overthinking or early exits to measure (train them: `shallowdeep train "
            f"--mode ic-only --from {args.run} --out RUN`)"
        )


def _print_latency(lat: Any) -> None:
    """The latency calibration's lines: expected latency on both splits, the FLOP-calibrated beside."""
    if lat is None:
        return
    stat = lat.budget.statistic
    print(
        f"  latency budget {lat.budget.ms:g} ms ({stat}) on {lat.device}; the network without ICs {lat.plain_ms:.4g} ms"
    )
    for name, e in (("validation", lat.val), ("test", lat.test), ("test, FLOP-calibrated", lat.flops)):
        print(
            f"  expected {name}: accuracy {100 * e.accuracy:.2f}%, mean {e.mean_ms:.4g} ms, "
            f"{'p95' if stat == 'mean' else stat} {e.percentile_ms:.4g} ms"
        )


def _print_shifts(a: Any) -> None:
    """What ``analyze`` prints of attacked, corrupted and unfamiliar inputs (one line each)."""
    for x in a.shifts:
        c, t = x.clean, x.shifted
        kept = "no clean saving to keep" if x.saving_kept is None else f"{100 * x.saving_kept:.0f}% of the saving kept"
        print(
            f"{x.kind} {x.name} ({x.inputs} inputs): early exits {100 * t.accuracy:.2f}% "
            f"(final {100 * t.final_accuracy:.2f}%) at {100 * t.relative_cost:.1f}% of the cost; clean "
            f"{100 * c.accuracy:.2f}% at {100 * c.relative_cost:.1f}%: {kept}; "
            f"{x.bound}: {'holds' if x.holds else 'broken'} (clean: {'holds' if x.clean_holds else 'broken'})"
        )
    for u in a.unfamiliar:
        aucs = " ".join("-" if v is None else f"{v:.3f}" for v in u.confidence_auroc)
        conf = "-" if u.confusion_auroc is None else f"{u.confusion_auroc:.3f}"
        print(
            f"unfamiliar {u.source} ({u.inputs} inputs): {100 * u.unfamiliar.relative_cost:.1f}% of the cost "
            f"(test {100 * u.test.relative_cost:.1f}%), {100 * u.unfamiliar.exit_shares[-1]:.1f}% run to the end "
            f"(test {100 * u.test.exit_shares[-1]:.1f}%); AUROC of each output's confidence {aucs}, of confusion {conf}"
        )


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .data import image_paths, read_image
    from .runs import RunFolder, engine_from_run

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:  # NaN fails too
        raise UserError(f"--threshold is a softmax confidence in [0, 1], got {args.threshold}")
    files = image_paths(args.paths)
    engine = engine_from_run(args.run, args.threshold, args.fallback, _device(args), module=_user_module(args))
    meta = RunFolder(args.run).meta().data
    size = engine.sdn.image_size
    chunk = max(args.batch_size, 64)
    monitor = engine.monitor(window=args.drift_window) if engine.profile is not None else None  # checked first

    def batches():  # files decoded a chunk at a time: memory does not grow with the number of images
        for i in range(0, len(files), chunk):
            # uint8 [N, H, W, 3], the engine's one convention: it normalises with the run's statistics
            x = torch.stack([torch.from_numpy(read_image(f, size, resize=args.resize)) for f in files[i : i + chunk]])
            yield from (x[j : j + 1] for j in range(len(x))) if args.batch_size == 1 else (x,)

    if args.batch_size == 1:  # latency: one image at a time through the batch-1 path
        parts = [engine.classify(x, batch_size=1) for x in batches()]
        seconds = [float(p.seconds or 0.0) for p in parts]
    else:  # throughput: the re-batching engine, timed without the decoding
        parts = [engine.classify(x, batch_size=args.batch_size) for x in batches()]
        seconds = [float(p.seconds or 0.0) / max(len(p), 1) for p in parts for _ in range(len(p))]
    fields = ("predictions", "exits", "confidence", "relative_cost", "answered")
    res = {f: torch.cat([getattr(p, f) for p in parts]) for f in fields}
    rows = _prediction_rows(files, res, meta, engine.num_outputs - 1)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_predictions(rows, engine, float(res["relative_cost"].mean()))
        print(_realised_latency(args, seconds, res["exits"].numpy()))
    if monitor is not None:
        _print_drift(monitor, res, args)
    return 0


def _realised_latency(args: argparse.Namespace, seconds: list[float], exits: Any) -> str:
    """The engine's measured time per image, beside what the run's latency profile expects for these
    exits when it profiles this path (same runtime, batch and device kind)."""
    import numpy as np

    from .runs.latency import latency_file, read_latency

    ms = np.asarray(seconds) * 1e3
    line = (
        f"realised latency: {ms.mean():.4g} ms per image (median {np.median(ms):.4g}, p95 {np.percentile(ms, 95):.4g})"
    )
    path = latency_file(args.run)
    if path.is_file():
        try:
            prof = read_latency(path, args.run)
        except UserError:
            return line + f"; {path} is not usable: profile the run again"
        same = prof.runtime == "torch" and prof.batch == args.batch_size
        if same and prof.device.startswith("cuda") == _device(args).startswith("cuda"):
            line += f"; expected from {path}: {float(prof.cumulative_ms()[exits].mean()):.4g} ms"
    return line


def _print_drift(monitor: Any, res: dict[str, Any], args: argparse.Namespace) -> None:
    """The drift monitor's line for every window of the images that exits unlike the validation
    split (on standard error under ``--json``, so the JSON stays whole)."""
    for check in monitor.observe(res["exits"].numpy(), res["confidence"].numpy()):
        if check.drifted:
            print(check.line(), file=sys.stderr if args.json else sys.stdout)


def _prediction_rows(files: list[Path], res: dict[str, torch.Tensor], meta: Any, last: int) -> list[JSONObject]:
    """One row per image: its class, the output that answered, confidence, cost; the true class of
    an image in a class folder."""
    names, folders = meta.class_names, {c: i for i, c in enumerate(meta.classes)}
    rows = []
    for n, f in enumerate(files):
        p, e, a = int(res["predictions"][n]), int(res["exits"][n]), int(res["answered"][n])
        answered = f"IC {a + 1}" if e < last else ("final" if a == last else f"IC {a + 1} (fallback)")
        row = {
            "file": str(f),
            "class_index": p,
            "class": names[p],
            "exit": e,
            "answered_by": answered,
            "answered_output": a,
            "confidence": float(res["confidence"][n]),
            "relative_cost": float(res["relative_cost"][n]),
        }
        if f.parent.name in folders:  # a class folder: the true label is known
            row |= {"true_class": names[folders[f.parent.name]], "correct": folders[f.parent.name] == p}
        rows.append(row)
    return rows


def _print_predictions(rows: list[JSONObject], engine: Any, mean_cost: float) -> None:
    width = max(len(r["file"]) for r in rows)
    labelled = [r for r in rows if "correct" in r]
    print(
        f"{'file':<{width}}  {'class':<14} {'answered by':<16} {'conf.':>6} {'rel. cost':>9}"
        + ("  true class" if labelled else "")
    )
    for r in rows:
        truth = f"  {r['true_class'][:14]}{'' if r['correct'] else '  (wrong)'}" if "correct" in r else ""
        print(
            f"{r['file']:<{width}}  {r['class'][:14]:<14} {r['answered_by']:<16} {r['confidence']:>6.3f} "
            f"{100 * r['relative_cost']:>8.1f}%{truth}"
        )
    qs = engine.thresholds
    q = f"{qs[0]:.6g}" if len(set(qs)) == 1 else "per IC " + ", ".join(f"{v:.4g}" for v in qs)
    accuracy = (
        f"; accuracy {sum(r['correct'] for r in labelled) / len(labelled):.1%} on {counted(len(labelled), 'image')} "
        "in class folders"
        if labelled
        else ""
    )
    print(f"threshold {q}, fallback {engine.fallback}; average cost {100 * mean_cost:.1f}% of the CNN{accuracy}")


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serving.app import Limits, serve_run
    except ImportError:
        raise MissingExtraError("serving needs fastapi, uvicorn and prometheus-client", "serve") from None
    if not (args.max_images >= 1 and args.max_bytes >= 1 and 0 < args.timeout <= 3600):
        raise UserError("--max-images and --max-bytes must be at least 1, --timeout in (0, 3600] seconds")
    if not args.ray and (args.replicas, args.ray_address, args.replica_cpus) != (None, None, None):
        raise UserError("--replicas, --replica-cpus and --ray-address serve on Ray: add --ray")
    limits = Limits(args.max_bytes, args.max_images, timeout=args.timeout)
    batching = dict(max_batch=args.max_batch, max_wait=args.max_wait_ms / 1e3, max_queued=args.max_queued)
    where = f"on http://{args.host}:{args.port} (POST /predict, GET /health, GET /metrics)"
    if args.ray:
        from .serving.replicas import serve_ray

        replicas = 2 if args.replicas is None else args.replicas
        ready = _say(f"serving {args.run} on Ray, {counted(replicas, 'replica')}, {where}; Ctrl-C stops it")
        options = dict(host=args.host, port=args.port, device=_device(args), limits=limits, address=args.ray_address)
        options["cpus_per_replica"] = 1.0 if args.replica_cpus is None else args.replica_cpus
        serve_ray(args.run, replicas, on_ready=ready, **options, **batching)
        return 0
    serve_run(
        args.run, args.host, args.port, _device(args), limits, on_ready=_say(f"serving {args.run} {where}"), **batching
    )
    return 0


def _say(line: str) -> Callable[[], None]:
    """A callback printing ``line`` at once (a service's log is read while it runs)."""

    def say() -> None:
        print(line, flush=True)

    return say


def cmd_explain(args: argparse.Namespace) -> int:
    from .workflows import analyze_run, explain_run

    device = _device(args)
    log = None if args.quiet else print
    res = explain_run(args.run, args.split, args.max, device, log=log)
    print(
        f"{counted(res['count_total'], args.split + ' input')} {'is' if res['count_total'] == 1 else 'are'} right "
        "at IC 1 and wrong at the final output; explained "
        f"{len(res['inputs'])}"
    )
    for f in res["files"]:
        print(f"  {Path(res['folder']) / f}")
    html_path = analyze_run(args.run, device=device, log=log).html
    print(f"report (with the explanations): {html_path}")
    return 0


# --------------------------------------------------------------------------------------------------
# the parser


def _shared() -> dict[str, argparse.ArgumentParser]:
    """Parent parsers for options several commands share."""
    device = _Parser(add_help=False)
    device.add_argument("--device", help=DEVICE_HELP)
    quiet = _Parser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    data = _Parser(add_help=False)
    data.add_argument("--data-root", help="folder holding (or receiving) the data set files")
    data.add_argument("--image-size", type=int, help="resize images to this size (default: the data set's own)")
    module = _Parser(add_help=False)
    module.add_argument(
        "--import-module",
        metavar="MODULE:FACTORY",
        help="IMPORTS AND RUNS CODE: for a run trained from your own nn.Module, the module (FACTORY() "
        "builds it, e.g. mynets:make; imported from the current folder or PYTHONPATH); give only your own",
    )
    return {"device": device, "quiet": quiet, "data": data, "module": module}


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (imports nothing heavy)."""
    shared = _shared()
    p = _Parser(prog="shallowdeep", description="Shallow-Deep Networks: ICs, overthinking, early exits.")
    p.add_argument("--version", action="version", version=f"shallowdeep {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_train(sub, shared)
    _add_info(sub, shared)
    _add_export(sub, shared)
    _add_profile(sub, shared)
    _add_list(sub, shared)
    _add_analyze(sub, shared)
    _add_attack(sub, shared)
    _add_compare(sub, shared)
    _add_predict(sub, shared)
    _add_explain(sub, shared)
    _add_serve(sub, shared)
    _add_reproduce(sub, shared)
    _add_demo(sub, shared)
    return p


def _add_train(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``train`` command and its flags."""
    t = sub.add_parser(
        "train",
        parents=[shared["device"], shared["quiet"], shared["data"]],
        help="train a CNN, an SDN from scratch, or the ICs of a trained CNN",
        description="Train into a run folder (safetensors + JSON). The paper's recipe is the default.",
    )
    t.add_argument("--arch", help=f"architecture: {', '.join(ARCHITECTURES)}, {ZOO_ARCH_HELP}")
    t.add_argument("--data", help=f"data set: {', '.join(DATASETS)} (imagefolder as imagefolder:PATH)")
    t.add_argument(
        "--mode",
        choices=MODES,
        help="required for a new run (a --config file may give it; --resume takes the run's): cnn: plain CNN; "
        "ic-only: ICs on a frozen CNN run (--from); sdn: from scratch; mixed: the whole SDN on a trained CNN "
        "run (--from), backbone unfrozen (Kubaty et al. 2024)",
    )
    t.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    t.add_argument("--from", dest="from_run", metavar="RUN", help="the trained CNN run (for --mode ic-only or mixed)")
    t.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a JSON or YAML file, or a finished run's run.json to replay it; flags override",
    )
    t.add_argument("--seed", type=int, help=f"seed (default {DEFAULT_SEED}, the reference's)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed epoch")
    _recipe_flags(t)
    _speed_flags(t)
    _zoo_flags(t)
    _backdoor_flags(t)
    t.set_defaults(func=cmd_train)


def _recipe_flags(t: argparse.ArgumentParser) -> None:
    """Train: the recipe's flags (default: the paper's for the mode)."""
    r = t.add_argument_group("recipe (default: the paper's for the mode)")
    r.add_argument(
        "--epochs", type=int, help="epochs (paper: 100, ic-only 25; mixed 25); default milestones scale with it"
    )
    r.add_argument("--batch-size", type=int, help="batch size (paper: 128)")
    r.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), help="paper: sgd (adam for ic-only; mixed too)")
    r.add_argument("--lr", type=float, help="initial learning rate (paper: 0.1 SGD, 1e-3 Adam for ic-only; mixed too)")
    r.add_argument("--momentum", type=float, help="SGD momentum (paper: 0.9)")
    r.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum (SGD)")
    r.add_argument("--weight-decay", type=float, help="weight decay (paper: 5e-4 VGG/WRN, 1e-4 ResNet/MobileNet)")
    r.add_argument(
        "--milestones",
        help="comma-separated epochs at which the rate is multiplied by --gamma (paper: 35,60,85; ic-only 15)",
    )
    r.add_argument("--gamma", type=float, help="learning-rate decay factor at each milestone (paper: 0.1)")
    r.add_argument("--warmup-epochs", type=int, help="linear learning-rate warm-up epochs (paper: 0)")
    r.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (paper: 0)")
    r.add_argument(
        "--schedule",
        choices=("multistep", "cosine"),
        help="learning-rate schedule after the warm-up: x--gamma at each milestone (paper) or a half cosine to 0",
    )
    r.add_argument(
        "--clip-grad-norm", type=float, metavar="NORM", help="clip the gradients' global norm to NORM (paper: off)"
    )
    r.add_argument(
        "--distill",
        type=float,
        metavar="WEIGHT",
        help="distil the final output (detached) into every IC: each IC's loss is (1 - WEIGHT) x cross-entropy "
        "+ WEIGHT x T^2 x KL (default 0: off; ic-only, sdn, mixed)",
    )
    r.add_argument(
        "--cascade",
        action="store_true",
        default=None,
        help="Zero Time Waste's cascade: every IC after the first also reads the previous IC's logits "
        "(detached), through a linear link that starts at zero (ic-only, sdn, mixed)",
    )
    r.add_argument(
        "--distill-temperature", type=float, metavar="T", help="the distillation's softmax temperature (default 3)"
    )
    r.add_argument(
        "--teacher",
        metavar="RUN",
        help="with --distill: a finished run (CNN or SDN, same data) whose final output the ICs distil from, "
        "frozen (default: the network's own final output)",
    )


def _speed_flags(t: argparse.ArgumentParser) -> None:
    """Train: how fast it trains (the results stay the recipe's)."""
    s = t.add_argument_group("speed (the results stay the paper's recipe)")
    s.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="bf16 autocast (default on GPUs with native bf16, Ampere or later; weights stay fp32; half "
        "the activation memory, 2.82 against 3.26 s per compiled SDN epoch on an H100, slower eager) "
        "or fp32 (default elsewhere)",
    )
    s.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the training step (CUDA graphs on one GPU); default: on for one GPU when the "
        "run is long enough to pay the compilation back (see docs/reproduction.md), else off",
    )
    s.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun on CUDA: synchronise batch-norm statistics across processes",
    )


def _zoo_flags(t: argparse.ArgumentParser) -> None:
    """Train: zoo models, their weights and IC placement, and how data is held."""
    z = t.add_argument_group("zoo models (--arch torchvision:NAME or timm:NAME) and data")
    z.add_argument(
        "--pretrained",
        action="store_true",
        default=None,
        help="start from the zoo's weights (downloaded once; the classifier is replaced for other classes)",
    )
    z.add_argument(
        "--weights",
        metavar="FILE",
        help="start from these backbone weights (.safetensors, or a PyTorch state dict read with weights_only)",
    )
    z.add_argument("--ic-cuts", metavar="NAMES", help="comma-separated cut points for the ICs (see `info --cuts`)")
    z.add_argument(
        "--ic-fractions",
        metavar="F,F,...",
        help="ICs at the cut points closest to these fractions of the FLOPs (default 0.15,...,0.9)",
    )
    z.add_argument(
        "--token-pool",
        choices=TOKEN_POOLS,
        help="ICs on transformer tokens read their mean (default) or the class token (where there is one)",
    )
    z.add_argument(
        "--data-mode",
        choices=("memory", "stream"),
        help="image folders: decode once into memory, or per batch by workers (default: stream above 2 GiB)",
    )


def _backdoor_flags(t: argparse.ArgumentParser) -> None:
    """Train: the backdoor experiment's flags (spec section 11)."""
    bd = t.add_argument_group("backdoor (spec section 11)")
    bd.add_argument(
        "--backdoor",
        action="store_true",
        help="poison the training split: paste a white square trigger and relabel to the target class",
    )
    bd.add_argument("--poison-rate", type=float, help="share of training inputs poisoned (default 0.1)")
    bd.add_argument("--target-class", type=int, help="class the trigger points to (default 0)")
    bd.add_argument("--trigger-size", type=int, help="side in pixels (default 5 at 32 px, scaled to the image size)")
    bd.add_argument("--trigger-pos", metavar="ROW,COL", help="top-left corner (default 26,26 at 32 px, scaled)")


def _add_info(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``info`` command and its flags."""
    i = sub.add_parser(
        "info",
        parents=[shared["data"], shared["module"]],
        help="costs, parameters and accuracy of each output",
        description="For each output: cumulative GFLOPs and cost relative to the plain CNN; "
        "parameters of the CNN and the SDN; a run's validation accuracy.",
    )
    i.add_argument("run", nargs="?", help="a run folder")
    i.add_argument("--arch", help=f"architecture (instead of a run): {', '.join(ARCHITECTURES)}, {ZOO_ARCH_HELP}")
    i.add_argument("--data", help="data set (instead of a run): sets classes and image size")
    i.add_argument(
        "--flops",
        choices=("torch", "reference"),
        default="torch",
        help="torch: true counts (default); reference: grouped convs counted as dense, like the paper's profiler",
    )
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument(
        "--cuts",
        action="store_true",
        help="zoo models: list every cut point an IC may follow, with its cumulative cost and feature shape",
    )
    i.add_argument("--pretrained", action="store_true", default=None, help="zoo models: with the zoo's weights")
    i.add_argument(
        "--data-mode",
        choices=("memory", "stream"),
        help="as for train: a zoo model on a streamed folder takes its own input size unless --image-size",
    )
    i.set_defaults(func=cmd_info)


def _add_export(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``export`` command and its flags."""
    ex = sub.add_parser(
        "export",
        help="ONNX graphs per stage + manifest, for early exits outside PyTorch",
        description="Export a calibrated SDN run: one ONNX file per stage (the blocks up to an IC and "
        "that IC's head; the last with the final classifier) and manifest.json (order, "
        "thresholds, fallback, input size, normalisation, classes, costs, hashes).",
    )
    ex.add_argument("run", help="an SDN run folder, analysed (calibrated)")
    ex.add_argument("--out", required=True, help="the export folder to create")
    ex.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (the only format)")
    ex.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    ex.add_argument(
        "--quantize",
        choices=("int8",),
        help="INT8 stages (ONNX Runtime static quantization, calibrated on validation images) with the exit "
        "thresholds re-calibrated on the quantized stages' outputs",
    )
    ex.set_defaults(func=cmd_export)


def _add_profile(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``profile`` command and its flags."""
    pr = sub.add_parser(
        "profile",
        parents=[shared["device"]],
        help="measure every stage's latency on this machine (latency.json, for analyze --latency-budget)",
        description="Time each stage of a calibrated SDN run (its blocks, IC head and exit decision) on the path "
        "you will deploy: batch 1, or the throughput engine at --batch B; warm-up dropped, the device "
        "synchronised, median, p95 and p99 over repeats; the network without ICs beside. A run is timed on its "
        "validation images; an export (onnxruntime only) on seeded random images of its size.",
    )
    pr.add_argument("target", metavar="RUN-or-EXPORT", help="a calibrated SDN run folder, or an export folder")
    pr.add_argument(
        "--runtime", choices=("torch", "onnx"), help="the torch engine (a run's default) or onnxruntime (an export's)"
    )
    pr.add_argument("--batch", type=int, default=1, help="1: one input at a time (default); B: batches of B")
    pr.add_argument("--repeats", type=int, default=50, help="timed passes per stage (default 50)")
    pr.add_argument("--out", help="the profile's file (default RUN-or-EXPORT/latency.json)")
    pr.set_defaults(func=cmd_profile)


def _add_compare(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``compare`` command and its flags."""
    c = sub.add_parser(
        "compare",
        parents=[shared["device"]],
        help="several SDN runs' methods side by side: accuracy at 25/50/75/100%% cost, curve areas",
        description="Compare SDN runs of one data set (e.g. sdn, mixed, ic-only, with or without --distill) "
        "under exit rules: per run and rule, the test accuracy at 25, 50, 75 and 100%% of the CNN's cost "
        "(each threshold chosen on the validation split) and the area under the test accuracy-cost curve.",
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="SDN run folders trained on the same data set")
    c.add_argument("--rules", help="exit rules, comma-separated (default max_softmax,ztw; see analyze --rules)")
    c.add_argument("--chart", metavar="FILE.svg", help="also draw every run's curves into this SVG file")
    c.add_argument("--json", action="store_true", help="print the rows as JSON")
    c.set_defaults(func=cmd_compare)


def _add_list(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``list`` command and its flags."""
    ls = sub.add_parser(
        "list", help="registered architectures and data sets", description="List architectures and data sets."
    )
    ls.set_defaults(func=cmd_list)


def _add_analyze(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``analyze`` command and its flags."""
    a = sub.add_parser(
        "analyze",
        parents=[shared["device"], shared["quiet"], shared["module"]],
        help="overthinking, calibrated early exits and confusion of a run, as an HTML report",
        description="Collect every output's logits once per split (cached in RUN/records/), then write "
        "a self-contained HTML report and a JSON of every figure.",
    )
    a.add_argument("run", help="an SDN run folder")
    a.add_argument("--out", help="report folder (default RUN/report)")
    a.add_argument(
        "--no-html",
        action="store_true",
        help="write report.json and the calibration only: no figures and no report.html (drawing them is most "
        "of a small run's analysis; an older report.html is removed)",
    )
    a.add_argument(
        "--max-drop",
        type=float,
        default=0.01,
        help="calibration: cheapest threshold within this accuracy drop of the final output (default 0.01)",
    )
    a.add_argument("--budget", type=float, help="also calibrate for the best accuracy under this relative cost")
    a.add_argument(
        "--fallback",
        choices=FALLBACKS,
        default="most_confident",
        help="prediction when no IC is confident (default: the most confident output, as the reference)",
    )
    a.add_argument(
        "--rules",
        help="exit rules to compare: max_softmax, entropy, patience:K, each optionally +T "
        "(temperature-scaled) or +E (Zero Time Waste's ensemble of the outputs so far, fitted on validation); "
        "ztw = max_softmax+E (default: max_softmax,max_softmax+T,entropy,entropy+T,patience:2,max_softmax+E)",
    )
    a.add_argument(
        "--rule", default="max_softmax", help="the exit rule predict uses (default max_softmax; ztw: the ensemble)"
    )
    a.add_argument(
        "--thresholds",
        choices=("auto", "per-ic", "single"),
        default="auto",
        help="what predict and export use: one threshold per IC chosen on validation (per-ic), one for "
        "every IC (single, the paper's), or per-IC where 5-fold cross-validation on the validation "
        "split says they beat one threshold on held-out inputs (auto, the default)",
    )
    a.add_argument(
        "--corruptions",
        nargs="?",
        const="all",
        metavar="LIST",
        help="also measure the exits on the test split corrupted (seeded): all (the default with the flag: "
        "gaussian_noise, gaussian_blur, jpeg, contrast, brightness, pixelate at severities 1-5, CIFAR-10-C's), "
        "or families and family:severity pairs, comma-separated (jpeg,contrast:3)",
    )
    a.add_argument(
        "--ood",
        metavar="DATA",
        help="also measure where unfamiliar inputs exit and how well each output's confidence tells them "
        "from the test split (AUROC): a data set name (digits, imagefolder:PATH) or a folder of images",
    )
    _latency_flags(a)
    a.set_defaults(func=cmd_analyze)


def _latency_flags(a: argparse.ArgumentParser) -> None:
    """``analyze``'s flags for thresholds chosen against measured time."""
    a.add_argument(
        "--latency-budget",
        type=float,
        metavar="MS",
        help="choose the engine's thresholds for the best validation accuracy whose expected latency on the "
        "profiled device fits MS milliseconds (measured stage times, RUN/latency.json from `profile`, not FLOPs)",
    )
    a.add_argument(
        "--latency-percentile",
        type=int,
        choices=(50, 95, 99),
        help="the budget bounds this percentile of the inputs' latency instead of the mean",
    )
    a.add_argument("--latency", metavar="FILE", help="the latency profile (default RUN/latency.json)")


def _add_attack(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``attack`` command and its flags."""
    at = sub.add_parser(
        "attack",
        parents=[shared["device"], shared["quiet"]],
        help="DeepSloth's slowdown attack on an SDN run: attacked inputs' exit records for analyze",
        description="Perturb a split's images so that every IC grows unsure and inputs run to the end "
        "(Hong et al., ICLR 2021: PGD towards the uniform answer at every IC), and record every output "
        "on them in RUN/records/ beside the clean records; `shallowdeep analyze RUN` then reports how "
        "much of the saving survives. Defaults are DeepSloth's: linf 8/256 (0.03125), 30 steps of 0.002 "
        "per input, 20 steps of 0.005 universal; l2 1.0, 30 (universal 20) steps of 0.1.",
    )
    at.add_argument("run", help="an SDN run folder")
    at.add_argument("--norm", choices=("linf", "l2"), default="linf", help="the perturbation's norm (default linf)")
    at.add_argument("--epsilon", type=float, help="the bound, in pixels of [0, 1] (default: DeepSloth's)")
    at.add_argument("--steps", type=int, help="gradient steps (default: DeepSloth's)")
    at.add_argument("--step-size", type=float, help="step length, in pixels of [0, 1] (default: DeepSloth's)")
    at.add_argument(
        "--universal",
        action="store_true",
        help="one perturbation for every input, crafted on training images (saved in RUN/attacks/)",
    )
    at.add_argument(
        "--craft-inputs", type=int, default=128, help="training images a universal perturbation is crafted on"
    )
    at.add_argument("--split", choices=("test", "val"), default="test", help="the split attacked (default test)")
    at.add_argument("--inputs", type=int, help="attack only the split's first N inputs (default: all)")
    at.add_argument("--seed", type=int, default=0, help="seed of the random start (default 0)")
    at.set_defaults(func=cmd_attack)


def _add_predict(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``predict`` command and its flags."""
    pr = sub.add_parser(
        "predict",
        parents=[shared["device"], shared["module"]],
        help="classify image files with early exits",
        description="Classify images with the run's SDN, each stopping at the first confident IC. "
        "The threshold is the run's calibrated one (`shallowdeep analyze`) unless given.",
    )
    pr.add_argument("run", help="an SDN run folder")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    pr.add_argument("--threshold", type=float, help="confidence threshold (default: the run's calibration)")
    pr.add_argument(
        "--fallback", choices=FALLBACKS, help="prediction when no IC is confident (default: the calibration's)"
    )
    pr.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="the throughput engine's batch size (default 64); 1: one image at a time (latency)",
    )
    pr.add_argument("--resize", action="store_true", help="resize images whose size differs from the model's")
    pr.add_argument("--json", action="store_true", help="print a JSON list")
    pr.add_argument(
        "--drift-window",
        type=int,
        default=500,
        metavar="N",
        help="test every N images' exits against the validation split's (chi-square, false alarms at 1e-3 "
        "per window) and print a line when they differ (default 500; the run's calibrated rule only)",
    )
    pr.set_defaults(func=cmd_predict)


def _add_serve(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``serve`` command and its flags."""
    sv = sub.add_parser(
        "serve",
        parents=[shared["device"]],
        help="serve a run's (or an export's) early exits over HTTP (POST /predict, GET /health, GET /metrics)",
        description="An HTTP service (FastAPI on uvicorn) of a calibrated SDN run (torch engine) or of its export "
        "(the torch-free onnxruntime stages): requests are batched between the stages, each answered as soon as "
        "its input exits. Needs the serve extra (pip install 'shallowdeep[serve]'); --ray runs replicas on Ray "
        "Serve (the ray extra).",
    )
    sv.add_argument("run", help="a calibrated SDN run folder, or an export (a folder with manifest.json)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sv.add_argument("--max-batch", type=int, default=32, help="a stage runs at this many inputs (default 32)")
    sv.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="or when its oldest input has waited this long, if inputs arrived while the last stage ran "
        "(else at once; default 5)",
    )
    sv.add_argument("--max-queued", type=int, default=1024, help="inputs in flight before 503s (default 1024)")
    sv.add_argument("--max-images", type=int, default=64, help="images per request (default 64)")
    sv.add_argument("--max-bytes", type=int, default=8 << 20, help="bytes per request (default 8 MiB)")
    sv.add_argument("--timeout", type=float, default=10.0, help="seconds a request may wait (default 10)")
    sv.add_argument("--ray", action="store_true", help="serve on Ray Serve: several replicas behind Ray's proxy")
    sv.add_argument("--replicas", type=int, help="with --ray: replicas, each with its own batcher (default 2)")
    sv.add_argument(
        "--replica-cpus",
        type=float,
        help="with --ray: CPUs Ray reserves for each replica (default 1; fractions share a core)",
    )
    sv.add_argument(
        "--ray-address",
        help="with --ray: a running Ray cluster to join (auto, HOST:6379 or ray://HOST:10001; default: start "
        "Ray on this machine for the service's lifetime)",
    )
    sv.set_defaults(func=cmd_serve)


def _add_explain(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``explain`` command and its flags."""
    e = sub.add_parser(
        "explain",
        parents=[shared["device"], shared["quiet"]],
        help="Grad-CAM of inputs IC 1 gets right and the final output gets wrong",
        description="Grad-CAM, guided backprop and guided Grad-CAM (grad-cam package, the `explain` "
        "extra) of IC 1's prediction on the network cut after IC 1, beside the final "
        "output's; PNG grids in RUN/explain/, added to the run's HTML report.",
    )
    e.add_argument("run", help="an SDN run folder")
    e.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="the split whose inputs to explain (default test)",
    )
    e.add_argument("--max", type=int, default=8, help="explain at most this many inputs (default 8)")
    e.set_defaults(func=cmd_explain)


def _add_reproduce(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``reproduce`` command and its flags."""
    rp = sub.add_parser(
        "reproduce",
        parents=[shared["device"], shared["quiet"], shared["data"]],
        help="the paper's pipeline per architecture, then one table beside the paper's claims",
        description="Per architecture: CNN (100 epochs), IC-only SDN from it (25), SDN from scratch "
        "(100), both SDNs analyzed with thresholds calibrated on validation (--methods adds mixed, ztw "
        "and distill SDNs, and the table compares them); then "
        "reproduction.md, reproduction.json and index.html in --out. A killed reproduction "
        "continues where it stopped when run again with the same arguments. Stages that "
        "do not depend on each other (the CNN and the SDN from scratch, other architectures) "
        "run at once, each in its own process, up to --max-concurrent (default 2 per GPU, 1 "
        "on the CPU). With --max-concurrent 1 on one GPU, a background process compiles the "
        "stages' training steps (a stage trains eagerly until its step is compiled) and "
        "another analyzes the IC-only SDN while the SDN trains.",
    )
    rp.add_argument("--data", required=True, help=f"data set: {', '.join(DATASETS)} (imagefolder as imagefolder:PATH)")
    rp.add_argument("--out", required=True, help="folder for every run and the table")
    rp.add_argument("--archs", default="resnet56", help="comma-separated architectures (default resnet56)")
    rp.add_argument(
        "--methods",
        default="ic-only,sdn",
        help="comma-separated SDN methods, one stage and table row each (default the paper's: ic-only,sdn); "
        "also mixed (the whole SDN trained on the CNN), ztw (ZTW's cascaded ICs on the frozen CNN) and "
        "distill (IC-only heads distilled from the CNN's output, weight 0.5, T 3); the methods table reads "
        "each at 25/50/75/100 %% of the CNN's cost under max softmax and ZTW's ensemble",
    )
    rp.add_argument(
        "--stages",
        help="comma-separated stages to run now (default all: cnn, if a method is built on it, and the "
        "methods); a method built on the CNN needs a finished cnn",
    )
    rp.add_argument("--cnn-epochs", type=int, help="CNN epochs (paper: 100)")
    rp.add_argument("--ic-epochs", type=int, help="IC-only epochs, also of ztw and distill (paper: 25)")
    rp.add_argument("--mixed-epochs", type=int, help="mixed epochs (default 25)")
    rp.add_argument("--sdn-epochs", type=int, help="SDN epochs (paper: 100)")
    rp.add_argument("--seed", type=int, help=f"seed (default {DEFAULT_SEED})")
    rp.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="bf16 autocast (default on GPUs with native bf16, Ampere or later) or fp32 (default elsewhere)",
    )
    rp.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the training steps (default: as train decides per stage)",
    )
    rp.add_argument(
        "--max-concurrent",
        type=int,
        help="stages run at once, each in its own process (default: 1 on the CPU, 2 per GPU); "
        "1 runs them one after another in this process",
    )
    rp.add_argument(
        "--gpus",
        help="comma-separated GPUs to spread the stages over (default: every visible GPU; numbers "
        "counted within CUDA_VISIBLE_DEVICES)",
    )
    rp.set_defaults(func=cmd_reproduce)


def _add_demo(sub: Any, shared: dict[str, argparse.ArgumentParser]) -> None:
    """The ``demo`` command and its flags."""
    d = sub.add_parser(
        "demo",
        parents=[shared["device"], shared["quiet"]],
        help="the main job on the embedded digits data (offline, CPU)",
        description="Train a small CNN on digits, turn it into an SDN by IC-only training, train an SDN "
        "from scratch, and print every output's accuracy and relative cost.",
    )
    d.add_argument("--out", default="runs/demo", help="folder for the three runs (default runs/demo)")
    d.add_argument("--epochs", type=int, default=15, help="epochs of the CNN and SDN runs")
    d.add_argument("--ic-epochs", type=int, default=10, help="epochs of the IC-only run")
    d.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of all three runs (default {DEFAULT_SEED})")
    d.set_defaults(func=cmd_demo)


def _message(e: UserError, args: argparse.Namespace) -> str:
    msg = e.render(flags())
    if isinstance(e, NotCalibratedError):
        msg += f" (`shallowdeep analyze {getattr(args, 'run', 'RUN')}`)"
        if hasattr(args, "threshold"):  # only the commands that take one are told to give one
            msg += ", or give --threshold"
    if isinstance(e, MissingExtraError):
        msg += f": install it with pip install 'shallowdeep[{e.extra}]'"
    return msg


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input ends with one line on stderr and exit status 2, never a traceback."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse says so from the top parser, pointing to `shallowdeep --help`; the command's own helps
        parser._subparsers._group_actions[0].choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    status = _run(args)
    try:
        worker = _torchrun_worker()
    except UserError:  # torchrun's variables are wrong: _run has said so, and there is no group to leave
        worker = False
    if worker:
        from .compute.distributed import exit_worker

        exit_worker(status)  # leaves the group; the worker's end is the group's business (see exit_worker)
    return status


# the commands that share their work between torchrun's ranks; any other would run once per rank,
# each writing the same files
TORCHRUN_COMMANDS = ("train", "analyze", "reproduce")


def _torchrun_worker() -> bool:
    from .core.torchrun import torchrun_place

    return torchrun_place()[1] > 1


class _Warnings:
    """Warnings as one line each, like errors (no source line). The library's are printed at once;
    other packages' (PIL's about an image, torch's) are held and printed when the command ends well,
    once each: where a bad input ends the command, its one line is all that shows (PIL warns about a
    file it then fails to read)."""

    def __init__(self, command: str) -> None:
        self.command, self.held = command, {}
        self._own = str(Path(__file__).resolve().parent)

    def __enter__(self) -> _Warnings:
        import warnings

        self._saved = warnings.showwarning
        warnings.showwarning = self._show
        return self

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = f"shallowdeep {self.command}: warning: {message}"
        if str(filename).startswith(self._own):
            print(text, file=sys.stderr)
        else:
            self.held[text] = self.held.get(text, 0) + 1

    def release(self) -> None:
        """Print what was held (a repeated warning once, with its count)."""
        for text, n in self.held.items():
            print(text + (f" ({n} times)" if n > 1 else ""), file=sys.stderr)
        self.held.clear()

    def __exit__(self, *exc: object) -> None:
        import warnings

        warnings.showwarning = self._saved


class _Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and `kill` send), ended as Ctrl-C is: the checkpoint in flight is
    written whole, and the one line says how far the run got."""


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise _Terminated()


def _how_to_continue(e: KeyboardInterrupt, args: argparse.Namespace) -> str:
    """What an interrupted command leaves and the command that continues it."""
    notes = "; ".join(getattr(e, "__notes__", []))
    if args.command == "train" and notes:
        return f": {notes}; continue it with `shallowdeep train --out {args.out} --resume`"
    if args.command == "reproduce":
        return f": {notes + '; ' if notes else ''}the same `shallowdeep reproduce` command continues it"
    return f": {notes}" if notes else ""


def _run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; expected failures become one line and a status."""
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()  # only it may handle signals
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        with _Warnings(args.command) as said:
            status = _run_command(args)
            if status == 0:
                said.release()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return status


def _run_command(args: argparse.Namespace) -> int:
    import warnings

    # inductor's hint on every compiled fp32 CUDA run names a PyTorch call the command line cannot
    # make; fp32 keeps full-precision matrix products on purpose (docs/reproduction.md), and the
    # faster numerics are `--precision bf16`
    warnings.filterwarnings(
        "ignore", message="TensorFloat32 tensor cores for float32 matrix multiplication", category=UserWarning
    )
    try:
        if _torchrun_worker() and args.command not in TORCHRUN_COMMANDS:
            raise UserError(
                f"{args.command} runs in one process, not under torchrun (each rank would repeat it): "
                f"start it without torchrun; {', '.join(TORCHRUN_COMMANDS)} share their work between ranks"
            )
        status = args.func(args)
        # `shallowdeep info --json | head`: a reader that left shows up at this flush as a
        # BrokenPipeError, handled below with Python's documented recipe (stdout to devnull)
        sys.stdout.flush()  # inside the try: a reader that left shows up here, not at exit
        return status
    except UserError as e:
        print(f"shallowdeep {args.command}: error: {_message(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        ended = "terminated" if isinstance(e, _Terminated) else "interrupted"
        print(f"shallowdeep {args.command}: {ended}{_how_to_continue(e, args)}", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    except MemoryError:
        print(
            f"shallowdeep {args.command}: error: out of memory: use a smaller --batch-size or --image-size",
            file=sys.stderr,
        )
        return 2
    except OSError as e:  # read-only or full disks, permissions: the file and the reason, not a traceback
        if isinstance(e, BrokenPipeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        where = f"{e.filename}: " if e.filename else ""
        kept = "".join(f"; {UserError(note).render(flags())}" for note in getattr(e, "__notes__", []))
        print(
            f"shallowdeep {args.command}: error: {where}{e.strerror or e}: check that the folder exists, is writable "
            f"and has space{kept}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
