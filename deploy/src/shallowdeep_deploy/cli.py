"""``shallowdeep-deploy classify EXPORT IMAGE_OR_FOLDER...``: early exits of an export, no torch.

One line per image (its class, the output that answered, the confidence), or ``--json``; bad input
ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

from .errors import UserError
from .images import image_paths


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line (imports nothing heavy)."""
    p = _Parser(prog="shallowdeep-deploy", description="Early exits of a shallowdeep export, without torch.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    c = sub.add_parser("classify", help="classify images with the export's early exits")
    c.add_argument("export", help="a folder `shallowdeep export` wrote")
    c.add_argument("paths", nargs="+", help="image files or folders of images")
    c.add_argument("--json", action="store_true", help="print one JSON list, a row per image")
    c.add_argument("--threads", type=int, help="onnxruntime's intra-op threads (default: its own)")
    return p


def classify(args: argparse.Namespace) -> tuple[list[dict], float]:
    """The rows ``classify`` prints, and the seconds the stages and decisions took."""
    from .runtime import load

    files = image_paths(args.paths)
    model = load(args.export, threads=args.threads)
    res = model.classify([str(f) for f in files])
    last = model.num_outputs - 1
    rows = [
        {
            "file": str(f),
            "class_index": int(p),
            "class": model.classes[int(p)],
            "exit": "final" if int(e) == last else f"IC {int(e) + 1}",
            "confidence": round(float(c), 6),
        }
        for f, p, e, c in zip(files, res.predictions, res.exits, res.confidence)
    ]
    return rows, float(res.seconds or 0.0)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line and status 2 for bad input, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        rows, seconds = classify(args)
    except UserError as e:
        print(f"shallowdeep-deploy {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"shallowdeep-deploy {args.command}: error: {e.filename or ''} {e.strerror or e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['file']}: {r['class']} (at {r['exit']}, confidence {r['confidence']:.3f})")
        per = 1e3 * seconds / max(len(rows), 1)
        print(f"realised latency: {per:.4g} ms per image in one batch of {len(rows)} (decoding not included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
