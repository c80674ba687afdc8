"""The ``shallowdeep`` command."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .errors import UserError


def _info_rows(costs, accuracy: list[float] | None, key: str = "val_acc") -> list[dict[str, Any]]:
    """One row per output: cumulative GFLOPs, cost relative to the CNN and, when given, accuracy."""
    from .sdn import output_names

    rows = []
    for i, name in enumerate(output_names(len(costs.outputs))):
        row = {"output": name, "gflops": costs.outputs[i] / 1e9, "relative_cost": costs.relative[i]}
        if accuracy is not None:
            row[key] = accuracy[i]
        rows.append(row)
    return rows


def _params(model) -> tuple[int, int]:
    from .sdn import SDN

    cnn = model.cnn if isinstance(model, SDN) else model
    return sum(p.numel() for p in cnn.parameters()), sum(p.numel() for p in model.parameters())


def _table(rows: list[dict[str, Any]], key: str = "val_acc") -> str:
    """A text table of :func:`_info_rows` rows; the accuracy column is ``key`` ("val_acc" -> "val acc")."""
    has_acc = bool(rows) and key in rows[0]
    lines = [f"{'output':<8} {'GFLOPs':>10} {'rel. cost':>10}" + (f" {key.replace('_', ' '):>8}" if has_acc else "")]
    for r in rows:
        line = f"{r['output']:<8} {r['gflops']:>10.4f} {100 * r['relative_cost']:>9.1f}%"
        if has_acc:
            line += f" {100 * r[key]:>7.2f}%"
        lines.append(line)
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from . import runs
    from .costs import output_costs
    from .data import load_dataset
    from .sdn import build_sdn

    if args.run:
        if args.arch or args.data:
            raise UserError("give either a RUN folder or --arch and --data, not both")
        model = runs.load(args.run)
        meta = runs.read_json(Path(args.run) / runs.RUN_JSON)
        val_acc = meta["epochs"][-1]["val_acc"] if meta.get("epochs") else None
        head = {"run": str(args.run), "arch": model.arch, "data": meta["config"]["data"], "kind": meta["model"]["kind"],
                "mode": meta["config"]["mode"]}
    else:
        if not (args.arch and args.data):
            raise UserError("give a RUN folder, or both --arch and --data")
        from .data import dataset_shape

        classes, size = dataset_shape(args.data) or (None, None)
        if classes is None:  # a folder data set: read it to learn its classes and image size
            d = load_dataset(args.data, args.data_root, args.image_size)
            classes, size = d.num_classes, d.image_size
        model = build_sdn(args.arch, classes, args.image_size or size)
        val_acc = None
        head = {"arch": args.arch, "data": args.data, "kind": "sdn"}
    costs = output_costs(model, args.flops)
    p_cnn, p_sdn = _params(model)
    rows = _info_rows(costs, val_acc)
    obj = head | {"image_size": model.image_size, "num_classes": model.num_classes, "params_cnn": p_cnn,
                  "params_sdn": p_sdn, "gflops_cnn": costs.cnn / 1e9, "flop_convention": args.flops, "outputs": rows}
    if args.json:
        print(json.dumps(obj, indent=2))
    else:
        print(f"{obj['arch']} on {obj['data']} ({model.num_classes} classes, {model.image_size} px)"
              + (f", {obj['kind']} run trained with --mode {obj['mode']}" if args.run else ""))
        print(f"parameters: CNN {p_cnn:,}  SDN {p_sdn:,}   CNN GFLOPs {costs.cnn / 1e9:.4f} ({args.flops} count)")
        print(_table(rows))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .data import list_datasets
    from .models import list_archs

    print("architectures:")
    for a in list_archs():
        print(f"  {a}")
    print("data sets:")
    for name, doc in list_datasets().items():
        print(f"  {name:<13} {doc}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train_run

    backdoor = None
    if args.backdoor:
        pos = None
        if args.trigger_pos is not None:
            try:
                pos = [int(v) for v in args.trigger_pos.split(",")]
                assert len(pos) == 2
            except (ValueError, AssertionError):
                raise UserError(f"--trigger-pos takes ROW,COL (two integers), got {args.trigger_pos!r}") from None
        backdoor = {"rate": args.poison_rate, "target": args.target_class, "size": args.trigger_size, "pos": pos}
    elif any(v is not None for v in (args.poison_rate, args.target_class, args.trigger_size, args.trigger_pos)):
        raise UserError("--poison-rate, --target-class, --trigger-size and --trigger-pos need --backdoor")
    cfg = TrainConfig(out=args.out, mode=args.mode, arch=args.arch, data=args.data, from_run=args.from_run,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      seed=args.seed, data_root=args.data_root, image_size=args.image_size, resume=args.resume,
                      device=args.device, backdoor=backdoor)
    out = train_run(cfg, progress=not args.quiet, log=None if args.quiet else print)
    print(f"run written to {out}")
    return 0


DEMO_MARKER = "DEMO"
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when available)"


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a CNN on the embedded digits, make it an SDN (IC-only), train an SDN from scratch."""
    from .train import TrainConfig, train_run

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).is_file():
            raise UserError(f"{out} exists, is not empty and holds no earlier demo: pass --out to another folder")
        shutil.rmtree(out)  # only a folder this command made itself is replaced
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("made by `shallowdeep demo`; the next demo run replaces this folder\n")
    t0 = time.perf_counter()
    log = None if args.quiet else print
    common = dict(arch="small", data="digits", seed=args.seed)
    train_run(TrainConfig(out=str(out / "cnn"), mode="cnn", epochs=args.epochs, **common), progress=not args.quiet, log=log)
    train_run(TrainConfig(out=str(out / "ic-only"), mode="ic-only", from_run=str(out / "cnn"), epochs=args.ic_epochs,
                          seed=args.seed), progress=not args.quiet, log=log)
    train_run(TrainConfig(out=str(out / "sdn"), mode="sdn", epochs=args.epochs, **common), progress=not args.quiet, log=log)
    from .report import analyze_run

    # the reports collect every output's logits once; the tables below read them from there
    reports = [analyze_run(out / name, log=None) for name in ("ic-only", "sdn")]
    summaries = []
    for name, (_, json_path) in zip(("ic-only", "sdn"), reports):
        r = json.loads(json_path.read_text())
        rows = [{"output": o["output"], "gflops": o["gflops"], "relative_cost": o["relative_cost"],
                 "test_acc": o["test_accuracy"]} for o in r["outputs"]]
        print(f"\n{name} SDN (small on digits): test accuracy and cost of each output")
        print(_table(rows, "test_acc"))
        cal, o = r["early_exit"]["calibrated"], r["overthinking"]
        summaries.append(
            f"{name}: early exits at q={cal['threshold']:.3g} (chosen on validation): test accuracy "
            f"{100 * cal['test']['accuracy']:.1f}% (final output {100 * cal['test']['final_accuracy']:.1f}%) at "
            f"{100 * cal['test']['relative_cost']:.1f}% of the CNN's cost; {100 * o['early_share']:.1f}% of test inputs "
            f"are right at some IC; {o['destructive']['union_count']} of the final output's {o['final_errors']} errors "
            "are right at some IC")
    print("\n" + "\n".join(summaries))
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s; runs in {out}")
    for html_path, _ in reports:
        print(f"report: {html_path}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .report import analyze_run
    from .train import pick_device

    html_path, json_path = analyze_run(args.run, args.out, max_drop=args.max_drop, budget=args.budget,
                                       fallback=args.fallback, device=str(pick_device(args.device)),
                                       log=None if args.quiet else print)
    print(f"report: {html_path}\nfigures: {json_path}")
    return 0


def _image_paths(paths: list[str]) -> list[Path]:
    from .data import IMAGE_SUFFIXES

    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"{p} does not exist: give image files or folders of images")
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {' '.join(paths)}")
    return found


def cmd_predict(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from .data import normalize
    from .engine import EarlyExitEngine
    from .runs import RUN_JSON, read_json
    from .train import pick_device

    files = _image_paths(args.paths)
    engine = EarlyExitEngine.from_run(args.run, args.threshold, args.fallback, str(pick_device(args.device)))
    meta = read_json(Path(args.run) / RUN_JSON)["data"]
    size = engine.sdn.image_size
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    if not args.resize:
                        raise UserError(f"{f} is {im.size[0]}x{im.size[1]} px; the model takes {size}x{size}: "
                                        "pass --resize to resize it")
                    im = im.resize((size, size), Image.BILINEAR)
                arrays.append(torch.from_numpy(__import__("numpy").asarray(im, dtype="uint8").copy()))
        except OSError as e:
            raise UserError(f"cannot read image {f}: {e}") from None
    x = normalize(torch.stack(arrays), tuple(meta["mean"]), tuple(meta["std"]))
    res = engine.classify(x, batch_size=args.batch_size)
    names = meta.get("class_names", meta["classes"])
    k = engine.num_outputs
    rows = [{"file": str(f), "label": int(p), "class": names[int(p)], "exit": int(e),
             "exit_name": f"IC {int(e) + 1}" if int(e) < k - 1 else "final (no IC exit)",
             "confidence": float(c), "relative_cost": float(rc)}
            for f, p, e, c, rc in zip(files, res.predictions, res.exits, res.confidence, res.relative_cost)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["file"]) for r in rows)
        print(f"{'file':<{width}}  {'class':<14} {'exit':<18} {'conf.':>6} {'rel. cost':>9}")
        for r in rows:
            print(f"{r['file']:<{width}}  {r['class'][:14]:<14} {r['exit_name']:<18} {r['confidence']:>6.3f} "
                  f"{100 * r['relative_cost']:>8.1f}%")
        print(f"threshold {engine.thresholds[0]:.6g}, fallback {engine.fallback}; average cost "
              f"{100 * float(res.relative_cost.mean()):.1f}% of the CNN")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_run
    from .report import analyze_run
    from .train import pick_device

    device = str(pick_device(args.device))
    log = None if args.quiet else print
    res = explain_run(args.run, args.split, args.max, args.out, device, log=log)
    shown = len(res["inputs"])
    print(f"{res['count_total']} {args.split} inputs are right at IC 1 and wrong at the final output; explained {shown}")
    for f in res["files"]:
        print(f"  {Path(res['folder']) / f}")
    html_path, _ = analyze_run(args.run, device=device, log=log)
    print(f"report (with the explanations): {html_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .data import list_datasets
    from .models import list_archs
    from .analysis.early_exit import FALLBACKS
    from .train import DEFAULT_SEED, MODES

    p = argparse.ArgumentParser(prog="shallowdeep", description="Shallow-Deep Networks: ICs, overthinking, early exits.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a CNN, an SDN from scratch, or the ICs of a trained CNN",
                       description="Train into a run folder (safetensors + JSON). The paper's recipe is the default.")
    t.add_argument("--arch", help=f"architecture: {', '.join(list_archs())}")
    t.add_argument("--data", help=f"data set: {', '.join(list_datasets())} (imagefolder:PATH)")
    t.add_argument("--mode", choices=MODES, help="cnn: plain CNN; ic-only: ICs on a frozen CNN run (--from); sdn: from scratch")
    t.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    t.add_argument("--from", dest="from_run", metavar="RUN", help="the trained CNN run (for --mode ic-only)")
    t.add_argument("--epochs", type=int, help="epochs (paper: 100, ic-only 25); LR milestones scale with it")
    t.add_argument("--batch-size", type=int, help="batch size (paper: 128)")
    t.add_argument("--lr", type=float, help="initial learning rate (paper: 0.1 SGD, 1e-3 Adam for ic-only)")
    t.add_argument("--weight-decay", type=float, help="weight decay (paper: 5e-4 VGG/WRN, 1e-4 ResNet/MobileNet)")
    t.add_argument("--seed", type=int, help=f"seed (default {DEFAULT_SEED}, the reference's)")
    t.add_argument("--data-root", help="folder holding (or receiving) the data set files")
    t.add_argument("--image-size", type=int, help="resize images to this size (default: the data set's own)")
    t.add_argument("--device", help=DEVICE_HELP)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed epoch")
    t.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    bd = t.add_argument_group("backdoor (spec section 11)")
    bd.add_argument("--backdoor", action="store_true",
                    help="poison the training split: paste a white square trigger and relabel to the target class")
    bd.add_argument("--poison-rate", type=float, help="share of training inputs poisoned (default 0.1)")
    bd.add_argument("--target-class", type=int, help="class the trigger points to (default 0)")
    bd.add_argument("--trigger-size", type=int, help="side in pixels (default 5 at 32 px, scaled to the image size)")
    bd.add_argument("--trigger-pos", metavar="ROW,COL", help="top-left corner (default 26,26 at 32 px, scaled)")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("info", help="costs, parameters and accuracy of each output",
                       description="For each output: cumulative GFLOPs and cost relative to the plain CNN; "
                                   "parameters of the CNN and the SDN; a run's validation accuracy.")
    i.add_argument("run", nargs="?", help="a run folder")
    i.add_argument("--arch", help="architecture (instead of a run)")
    i.add_argument("--data", help="data set (instead of a run): sets classes and image size")
    i.add_argument("--data-root", help="data folder, for data sets whose shape must be read from files")
    i.add_argument("--image-size", type=int, help="input size (default: the data set's)")
    i.add_argument("--flops", choices=("torch", "reference"), default="torch",
                   help="torch: true counts (default); reference: grouped convs counted as dense, like the paper's profiler")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=cmd_info)

    ls = sub.add_parser("list", help="registered architectures and data sets", description="List architectures and data sets.")
    ls.set_defaults(func=cmd_list)

    a = sub.add_parser("analyze", help="overthinking, calibrated early exits and confusion of a run, as an HTML report",
                       description="Collect every output's logits once per split (cached in RUN/records/), then write "
                                   "a self-contained HTML report and a JSON of every figure.")
    a.add_argument("run", help="an SDN run folder")
    a.add_argument("--out", help="report folder (default RUN/report)")
    a.add_argument("--max-drop", type=float, default=0.01,
                   help="calibration: cheapest threshold within this accuracy drop of the final output (default 0.01)")
    a.add_argument("--budget", type=float, help="also calibrate for the best accuracy under this relative cost")
    a.add_argument("--fallback", choices=FALLBACKS, default="most_confident",
                   help="prediction when no IC is confident (default: the most confident output, as the reference)")
    a.add_argument("--device", help=DEVICE_HELP)
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=cmd_analyze)

    pr = sub.add_parser("predict", help="classify image files with early exits",
                        description="Classify images with the run's SDN, each stopping at the first confident IC. "
                                    "The threshold is the run's calibrated one (`shallowdeep analyze`) unless given.")
    pr.add_argument("run", help="an SDN run folder")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    pr.add_argument("--threshold", type=float, help="confidence threshold (default: the run's calibration)")
    pr.add_argument("--fallback", choices=FALLBACKS,
                    help="prediction when no IC is confident (default: the calibration's)")
    pr.add_argument("--batch-size", type=int, default=1, help="1: one image at a time (default); more: batched")
    pr.add_argument("--resize", action="store_true", help="resize images whose size differs from the model's")
    pr.add_argument("--device", help=DEVICE_HELP)
    pr.add_argument("--json", action="store_true", help="print a JSON list")
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("explain", help="Grad-CAM of inputs IC 1 gets right and the final output gets wrong",
                       description="Grad-CAM, guided backprop and guided Grad-CAM (grad-cam package) of IC 1's prediction "
                                   "on the network cut after IC 1, beside the final output's; PNG grids in RUN/explain/, "
                                   "added to the run's HTML report.")
    e.add_argument("run", help="an SDN run folder")
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--max", type=int, default=8, help="explain at most this many inputs (default 8)")
    e.add_argument("--out", help="folder for the PNGs (default RUN/explain)")
    e.add_argument("--device", help=DEVICE_HELP)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_explain)

    d = sub.add_parser("demo", help="the main job on the embedded digits data (offline, CPU, about a minute)",
                       description="Train a small CNN on digits, turn it into an SDN by IC-only training, train an SDN "
                                   "from scratch, and print every output's accuracy and relative cost.")
    d.add_argument("--out", default="runs/demo", help="folder for the three runs (default runs/demo)")
    d.add_argument("--epochs", type=int, default=15, help="epochs of the CNN and SDN runs")
    d.add_argument("--ic-epochs", type=int, default=10, help="epochs of the IC-only run")
    d.add_argument("--seed", type=int, default=DEFAULT_SEED)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input ends with one line on stderr and exit status 2, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"shallowdeep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shallowdeep {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
