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
    analyze_run(run)
    data = run_data(run)
    x = normalize(data.test.images, data.mean, data.std).contiguous()
    conf = engine_from_run(run).ic_confidences(x, normalized=True).numpy()
    path = run / "calibration.json"
    cal = json.loads(path.read_text())
    cal["exit_rule"]["thresholds"] = [float(np.quantile(conf, 0.6))]
    path.write_text(json.dumps(cal))
    engine = engine_from_run(run)
    return engine, RunFolder(run).meta().data.class_names, data.test.images.numpy()


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _app(served, **kw):
    from shallowdeep.serving.app import Limits, create_app

    engine, classes, _ = served
    limits = kw.pop("limits", Limits(max_bytes=1 << 20, max_images=8, timeout=20))
    return create_app(engine, classes, limits, **kw)


def test_answers_equal_the_engine_whatever_the_order_and_concurrency(served):
    engine, _, images = served
    n = 96
    want = engine.classify(images[:n], batch_size=32)
    order = np.random.default_rng(0).permutation(n)
    with Server(_app(served, max_batch=8, max_wait=0.004)) as s, httpx.Client(base_url=s.url, timeout=30) as c:

        def one(i: int) -> tuple[int, dict]:
            r = c.post("/predict", content=_png(images[i]), headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text
            return i, r.json()["results"][0]

        with ThreadPoolExecutor(16) as pool:
            got = dict(pool.map(one, order.tolist()))
        several = c.post("/predict", json={"images": [base64.b64encode(_png(images[i])).decode() for i in range(5)]})
        metrics = c.get("/metrics").text
    q = engine.thresholds[0]
    for i in range(n):
        near = abs(float(want.confidence[i]) - q) < 1e-6
        assert near or (got[i]["exit"], got[i]["class_index"]) == (int(want.exits[i]), int(want.predictions[i])), i
    assert len({g["exit"] for g in got.values()}) > 1, "the test needs inputs leaving at different outputs"
    assert [r["exit"] for r in several.json()["results"]] == want.exits[:5].tolist()
    assert 'shallowdeep_requests_total{status="200"} 97.0' in metrics
    assert "shallowdeep_queue_depth" in metrics and "shallowdeep_exits_total" in metrics


def test_malformed_requests_get_4xx_and_one_line_json_while_it_keeps_serving(served):
    from shallowdeep.serving.app import Limits

    _, _, images = served
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
    _, _, images = served
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
    _, _, images = served
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

    engine, _, images = served
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
