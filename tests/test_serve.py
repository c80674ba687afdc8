"""The HTTP service (issue 33): a real uvicorn server on 127.0.0.1, answers, refusals, overload, shutdown."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")


class Server:
    """A uvicorn server of ``app`` in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=20))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="module")
def served(tiny_runs, tmp_path_factory):
    """The tiny SDN run, analysed, its threshold moved to the 60th percentile of the ICs' test
    confidences (inputs leave at several outputs); the engine, class names and test images."""
    from shallowdeep.data import normalize
    from shallowdeep.runs import RunFolder, engine_from_run, run_data
    from shallowdeep.workflows import analyze_run

    run = shutil.copytree(tiny_runs / "ic", tmp_path_factory.mktemp("serve") / "ic")
    analyze_run(run, html=False)  # the calibration only: the engine reads it
    data = run_data(run)
    x = normalize(data.test.images, data.mean, data.std).contiguous()
    conf = engine_from_run(run).ic_confidences(x, normalized=True).numpy()
    path = run / "calibration.json"
    cal = json.loads(path.read_text())
    cal["exit_rule"]["thresholds"] = [float(np.quantile(conf, 0.6))]
    path.write_text(json.dumps(cal))
    engine = engine_from_run(run)
    return engine, RunFolder(run).meta().data.class_names, data.test.images.numpy(), run


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _app(served, **kw):
    from shallowdeep.serving.app import Limits, create_app

    engine, classes, *_ = served
    limits = kw.pop("limits", Limits(max_bytes=1 << 20, max_images=8, timeout=20))
    return create_app(engine, classes, limits, **kw)


def _post_all(c, images: np.ndarray, order: list[int], threads: int) -> dict[int, dict]:
    def one(i: int) -> tuple[int, dict]:
        r = c.post("/predict", content=_png(images[i]), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        return i, r.json()["results"][0]

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, order))


def _assert_answers(got: dict[int, dict], want, threshold: float, n: int) -> None:
    """The service's exit and class for each of the first ``n`` inputs equal ``want``'s, except where a
    confidence lies within 1e-6 of the threshold (another batch's rounding may decide it otherwise)."""
    for i in range(n):
        near = abs(float(want.confidence[i]) - threshold) < 1e-6
        assert near or (got[i]["exit"], got[i]["class_index"]) == (int(want.exits[i]), int(want.predictions[i])), i


def test_answers_equal_the_engine_whatever_the_order_and_concurrency(served):
    engine, _, images, _ = served
    n = 96
    want = engine.classify(images[:n], batch_size=32)
    order = np.random.default_rng(0).permutation(n)
    with Server(_app(served, max_batch=8, max_wait=0.004)) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        got = _post_all(c, images, order.tolist(), 16)
        several = c.post("/predict", json={"images": [base64.b64encode(_png(images[i])).decode() for i in range(5)]})
        metrics = c.get("/metrics").text
    _assert_answers(got, want, engine.thresholds[0], n)
    assert len({g["exit"] for g in got.values()}) > 1, "the test needs inputs leaving at different outputs"
    assert [r["exit"] for r in several.json()["results"]] == want.exits[:5].tolist()
    assert 'shallowdeep_requests_total{status="200"} 97.0' in metrics
    assert "shallowdeep_queue_depth" in metrics and "shallowdeep_exits_total" in metrics


@pytest.fixture(scope="module")
def exported(served, tmp_path_factory):
    """The served run's export (ONNX stages, the same calibrated rule), loaded in onnxruntime."""
    from shallowdeep.inference import deploy
    from shallowdeep.workflows import export_run

    out = export_run(served[3], tmp_path_factory.mktemp("serve-export") / "export")
    return out, deploy.load(out)


def test_an_export_is_served_by_the_torch_free_runtime_with_its_answers(served, exported):
    """``serve EXPORT``: the onnxruntime stages batched between exits answer what the export's own
    ``classify`` answers, for inputs sent in shuffled order from 12 threads."""
    from shallowdeep.core.outputs import output_names
    from shallowdeep.inference.deploy import Deployment
    from shallowdeep.serving.app import Limits, build_app, load_served

    _, classes, images, _ = served
    folder, deployment = exported
    n = 64
    want = deployment.classify(images[:n])
    app = build_app(folder, limits=Limits(max_bytes=1 << 20, max_images=8, timeout=20), max_batch=8, max_wait=0.004)
    order = np.random.default_rng(1).permutation(n).tolist()
    with Server(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        got = _post_all(c, images, order, 12)
        health = c.get("/health").json()
    _assert_answers(got, want, deployment.thresholds[0], n)
    ref, names = served[0].classify(images[:n]), output_names(deployment.num_outputs)  # the torch engine's
    for i in range(n):
        near = abs(float(want.confidence[i]) - deployment.thresholds[0]) < 1e-6
        assert near or got[i]["answered_by"] == names[int(ref.answered[i])], i  # the fallback's pick too
        assert got[i]["class"] == classes[got[i]["class_index"]]
        assert got[i]["relative_cost"] == pytest.approx(float(deployment.relative_costs[got[i]["exit"]]))
    assert any(got[i]["answered_by"] != names[got[i]["exit"]] for i in range(n)), "no fallback pick to check"
    assert len({g["exit"] for g in got.values()}) > 1, "the test needs inputs leaving at different outputs"
    assert health == {"status": "ok", "outputs": deployment.num_outputs, "in_flight": 0}
    assert isinstance(load_served(folder)[0], Deployment)  # the export path, not the run's torch engine


def test_malformed_requests_get_4xx_and_one_line_json_while_it_keeps_serving(served):
    from shallowdeep.serving.app import Limits

    _, _, images, _ = served
    good = _png(images[0])
    limits = Limits(max_bytes=8192, max_images=2, timeout=20)
    with Server(_app(served, limits=limits)) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        cases = [
            (c.post("/predict", content=b"not an image", headers={"Content-Type": "image/png"}), 400),
            (c.post("/predict", content=good[: len(good) // 2], headers={"Content-Type": "image/png"}), 400),
            (c.post("/predict", content=good, headers={"Content-Type": "text/plain"}), 415),
            (c.post("/predict", content=good), 415),  # no Content-Type at all
            (c.post("/predict", json={"images": [base64.b64encode(good).decode()] * 3}), 422),
            (c.post("/predict", json={"images": ["%%%"]}), 400),
            (c.post("/predict", json={"pictures": []}), 422),
            (c.post("/predict", content=b"{", headers={"Content-Type": "application/json"}), 400),
            (c.post("/predict", content=b"x" * 9000, headers={"Content-Type": "image/png"}), 413),
        ]
        for r, status in cases:
            assert r.status_code == status, (status, r.status_code, r.text)
            body = r.json()
            assert set(body) == {"error"} and "\n" not in body["error"] and body["error"], body
        huge = c.post("/predict", content=good, headers={"Content-Type": "image/png", "X-Big": "a" * 70000})
        assert huge.status_code == 431 and set(huge.json()) == {"error"}, huge.status_code
        still = c.post("/predict", content=good, headers={"Content-Type": "image/png"})
        assert still.status_code == 200 and c.get("/health").json()["status"] == "ok"


def test_overload_is_503_with_retry_after_and_nothing_accepted_is_lost(served):
    _, _, images, _ = served
    # a stage waits for 64 inputs or 0.5 s, and at most 8 may be queued: a burst of 24 overflows
    with (
        Server(_app(served, max_batch=64, max_wait=0.5, max_queued=8)) as s,
        httpx.Client(base_url=s.url, timeout=30) as c,
    ):

        def one(i: int):
            return c.post("/predict", content=_png(images[i]), headers={"Content-Type": "image/png"})

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(one, range(24)))
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 1, codes
        assert all(r.headers.get("retry-after") == "1" for r in answers if r.status_code == 503)
        assert all(len(r.json()["results"]) == 1 for r in answers if r.status_code == 200)
        assert c.get("/health").json()["in_flight"] == 0  # every accepted input was answered


def test_shutdown_under_load_answers_what_was_accepted(served):
    _, _, images, _ = served
    server = Server(_app(served, max_batch=64, max_wait=0.3))
    with server, httpx.Client(base_url=server.url, timeout=30) as c:

        def one(i: int):
            try:
                return c.post("/predict", content=_png(images[i]), headers={"Content-Type": "image/png"}).status_code
            except httpx.HTTPError:
                return None  # refused: the server had stopped listening

        with ThreadPoolExecutor(12) as pool:
            sent = [pool.submit(one, i) for i in range(12)]
            time.sleep(0.1)  # they wait for the stage's 0.3 s
            server.server.should_exit = True
            codes = [f.result() for f in sent]
    assert codes.count(200) >= 1 and all(code in (200, None) for code in codes), codes


def test_a_quiet_batcher_runs_a_partial_batch_at_once_and_a_busy_one_waits_to_fill_it(served):
    """No input arrived while the last stage ran: nobody else is sending, so a lone input runs at once
    (a wait of max_wait could only delay it); after a stage that saw arrivals, a partial batch waits
    for max_wait to gather more. Both answer what the engine answers."""
    import time

    from shallowdeep.serving.batcher import StageBatcher

    engine, _, images, _ = served
    want = engine.classify(images[:2])
    batcher = StageBatcher(engine, max_batch=16, max_wait=0.6)
    try:
        t0 = time.monotonic()
        first = batcher.submit(images[:1])[0].result(timeout=30)
        quiet = time.monotonic() - t0
        with batcher._cond:
            batcher._last_arrived_busy = 1  # as after a stage during which requests came in
        t0 = time.monotonic()
        second = batcher.submit(images[1:2])[0].result(timeout=30)
        busy = time.monotonic() - t0
    finally:
        batcher.close()
    assert quiet < 0.3 <= 0.6 <= busy + 0.05, (quiet, busy)
    assert [first.prediction, second.prediction] == want.predictions.tolist()
    assert [first.exit, second.exit] == want.exits.tolist()


def test_serve_ray_runs_replicas_that_answer_as_the_export_and_stops_on_sigint(served, exported):
    """``shallowdeep serve EXPORT --ray --replicas 2``: the command starts a local Ray instance with two
    replicas (each with its own batcher) behind Ray's proxy on 127.0.0.1, answers as the export does,
    and on SIGINT deletes the deployment and stops that Ray instance."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile

    _, _, images, _ = served
    folder, deployment = exported
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    # Ray's sockets live under its temporary folder, and a socket path may hold only 107 bytes
    ray_tmp = tempfile.mkdtemp(prefix="sd-ray-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "shallowdeep", "serve", str(folder), "--ray", "--replicas", "2", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        n, url = 24, f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not any("on Ray, 2 replicas" in line for line in lines):  # printed once every replica runs
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-2000:]
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=30) as c:
            got = _post_all(c, images, list(range(n)), 8)
        _assert_answers(got, deployment.classify(images[:n]), deployment.thresholds[0], n)
        status = subprocess.run(
            [
                sys.executable,
                "-c",
                "import ray; from ray import serve; ray.init(address='auto', logging_level='error'); "
                "print(serve.status().applications['shallowdeep'].deployments['shallowdeep'].replica_states)",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "'RUNNING': 2" in status.stdout, status.stdout + status.stderr[-2000:]
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        reader.join(30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = "".join(lines)
    assert proc.returncode == 0, out[-2000:]
    assert "on Ray, 2 replicas" in out and "Traceback" not in out, out[-2000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)
