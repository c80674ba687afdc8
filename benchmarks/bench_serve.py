"""The early-exit service against the same service with no exit, under a bounded load on 127.0.0.1.

Both are ``shallowdeep serve`` (FastAPI on uvicorn, a process each) on the same run (or, ``--runtime
onnx``, on its export: the torch-free onnxruntime stages) and the same batching; the no-exit one
serves a copy with every threshold above 1, so each input runs every stage (it still pays the IC
heads: the plain network's own time is lower, see ``profile``'s last line).
The load generator sends ``--requests`` single-image requests (PNG, the run's test images) from
``--concurrency`` client threads, with a time limit, and stops by itself; it reports requests per
second, p50/p95/p99 latency, failed requests, and the p50 split by the output each input exited at.

    python benchmarks/bench_serve.py RUN [--requests 400] [--concurrency 1 4 16] [--max-batch 16] [--runtime onnx]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from shallowdeep.core.latency import processor_name
from shallowdeep.core.outputs import output_names
from shallowdeep.runs import engine_from_run, run_data


def _serve(run: str, batching: list[str]) -> tuple[subprocess.Popen, str]:
    """``shallowdeep serve RUN`` in its own process (a server sharing the load generator's
    interpreter would share its GIL) on a free port of 127.0.0.1, once it answers /health."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-m", "shallowdeep", "serve", run, "--port", str(port), *batching]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def _no_exit_copy(run: str, tmp: str) -> str:
    """A copy of the run whose calibrated thresholds lie above 1: every input runs every stage."""
    dst = Path(tmp) / "no-exit"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("records", "report", "attacks", "explain"))
    cal = json.loads((dst / "calibration.json").read_text())
    cal["exit_rule"]["thresholds"] = [2.0] * len(cal["exit_rule"]["thresholds"])
    cal.pop("exit_profile", None)  # the profile describes the calibrated rule only
    (dst / "calibration.json").write_text(json.dumps(cal))
    return str(dst)


def _export(run: str, tmp: str) -> tuple[str, str]:
    """The run exported (its calibrated rule), and a copy of the export whose thresholds lie above 1."""
    from shallowdeep.workflows import export_run

    out = export_run(run, Path(tmp) / "export")
    dst = Path(tmp) / "export-no-exit"
    shutil.copytree(out, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["exit"]["thresholds"] = [2.0] * len(manifest["exit"]["thresholds"])
    manifest.pop("drift", None)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return str(out), str(dst)


def load(url: str, pngs: list[bytes], requests: int, concurrency: int, limit_s: float, names: list[str]) -> dict:
    """``requests`` POSTs from ``concurrency`` threads (stopping at ``limit_s``): rate and latencies.
    One keep-alive connection per thread with TCP_NODELAY: without it the body waits on the
    headers' delayed ACK (40 ms on Linux), which would hide everything measured here."""
    import json

    host, port = url.removeprefix("http://").split(":")
    stop = time.monotonic() + limit_s
    lat: list[tuple[float, str]] = []
    failed = [0]
    local = threading.local()

    def one(i: int) -> None:
        if time.monotonic() > stop:
            return
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(host, int(port), timeout=30)
            local.conn.connect()
            local.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        local.conn.request("POST", "/predict", body=pngs[i % len(pngs)], headers={"Content-Type": "image/png"})
        r = local.conn.getresponse()
        body = r.read()
        if r.status != 200:
            failed[0] += 1
            return
        lat.append((time.perf_counter() - t0, names[json.loads(body)["results"][0]["exit"]]))

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(min(20, requests))))  # warm-up
        lat.clear()
        t0 = time.perf_counter()
        list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
    ms = np.asarray([t for t, _ in lat]) * 1e3
    by = {
        name: statistics.median(t * 1e3 for t, o in lat if o == name)
        for name in names
        if any(o == name for _, o in lat)
    }
    return {"rps": len(lat) / wall, "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95),
            "p99": np.percentile(ms, 99), "failed": failed[0], "done": len(lat), "p50_by_output": by}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--limit-s", type=float, default=60.0, help="each load stops after this many seconds")
    ap.add_argument("--runtime", choices=["torch", "onnx"], default="torch", help="onnx: serve the run's export")
    ap.add_argument("--device", default="cpu", help="where the services run their stages (serve --device)")
    ap.add_argument("--replicas", type=int, help="serve on Ray Serve with this many replicas (serve --ray)")
    ap.add_argument("--replica-cpus", type=float, default=1.0, help="with --replicas: CPUs Ray reserves for each")
    args = ap.parse_args()
    engine = engine_from_run(args.run)
    pngs = []
    for a in run_data(args.run).test.images[:256].numpy():
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    print(
        f"machine: {processor_name()}; run {args.run}, {args.runtime} on {args.device}; max_batch {args.max_batch}, "
        f"max_wait {args.max_wait_ms} ms" + (f"; Ray Serve, {args.replicas} replicas" if args.replicas else "")
    )
    batching = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queued", "4096"]
    batching += ["--device", args.device]
    if args.replicas:
        batching += ["--ray", "--replicas", str(args.replicas), "--replica-cpus", str(args.replica_cpus)]
    names = output_names(engine.num_outputs)
    with tempfile.TemporaryDirectory() as tmp:
        if args.runtime == "onnx":
            runs = dict(zip(("early exits", "no exit"), _export(args.run, tmp)))
        else:
            runs = {"early exits": args.run, "no exit": _no_exit_copy(args.run, tmp)}
        for c in args.concurrency:
            for name, run in runs.items():
                proc, url = _serve(run, batching)
                try:
                    r = load(url, pngs, args.requests, c, args.limit_s, names)
                finally:
                    proc.terminate()
                    proc.wait(60)
                by = ", ".join(f"{k} {v:.1f}" for k, v in r["p50_by_output"].items())
                print(
                    f"concurrency {c:>3} {name:<12}: {r['rps']:7.1f} req/s, p50 {r['p50']:.1f} p95 {r['p95']:.1f} "
                    f"p99 {r['p99']:.1f} ms, {r['done']} done, {r['failed']} failed; p50 by output: {by}"
                )
                sys.stdout.flush()


if __name__ == "__main__":
    main()
