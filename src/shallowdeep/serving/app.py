"""The HTTP service of a run's early exits: FastAPI on uvicorn, dynamic batching between exits.

``POST /predict``: one image as the body (``Content-Type: image/png``, ``image/jpeg``, ...) or
several as JSON (``{"images": [base64, ...]}``); the answer is JSON: per image the class, its
label, the output that answered, the confidence and the relative cost, and the milliseconds the
request spent in the server. ``GET /health``; ``GET /metrics`` (Prometheus text: requests by status,
latency histograms by the output that answered, exits per output, queue depth per stage, the drift
monitor's windows). Every refusal is a 4xx with a one-line JSON ``{"error": ...}``; a full queue is
503 with ``Retry-After``; a request not answered in ``timeout`` seconds is 504.

This module imports fastapi (the ``serve`` extra). FastAPI (with uvicorn) rather than LitServe: its
request handling is plain asyncio, so the batcher
(:mod:`.batcher`) owns the batching between stages, which no serving framework's batcher does (they
batch whole requests into one forward pass).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..core.errors import RunFolderError, UserError
from ..core.outputs import output_names
from .batcher import Overloaded, StageBatcher
from .stages import Answer, Stages, stages_of

if TYPE_CHECKING:
    from ..inference.deploy import Deployment
    from ..inference.engine import EarlyExitEngine

MAX_HEADER_BYTES = 16 << 10


@dataclass(frozen=True)
class Limits:
    """What one request may hold, and how long it may wait."""

    max_bytes: int = 8 << 20
    max_images: int = 64
    max_pixels: int = 4096 * 4096
    timeout: float = 10.0


class BadRequest(UserError):
    """A request the service refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _decode(data: bytes, size: int, limits: Limits) -> np.ndarray:
    """One image's bytes as uint8 ``[size, size, 3]`` (resized as predict --resize does)."""
    from PIL import Image, UnidentifiedImageError

    from ..core.images import fit_image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size[0] * im.size[1] > limits.max_pixels:
                raise BadRequest(413, f"an image of {im.size[0]}x{im.size[1]} pixels, more than {limits.max_pixels}")
            im.load()
            return np.asarray(fit_image(im.convert("RGB"), size), np.uint8)
    except BadRequest:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadRequest(
            400, f"not a readable image ({type(e).__name__}): send PNG, JPEG or another PIL format"
        ) from None


def _images(body: bytes, content_type: str, size: int, limits: Limits) -> np.ndarray:
    """The request's images, checked against ``limits``."""
    kind = content_type.split(";")[0].strip().lower()
    if kind.startswith("image/") or kind == "application/octet-stream":
        blobs = [body]
    elif kind == "application/json":
        blobs = _json_images(body)
    else:
        raise BadRequest(415, f'Content-Type {kind or "missing"}: send an image (image/*) or JSON {{"images": [...]}}')
    if not 1 <= len(blobs) <= limits.max_images:
        raise BadRequest(422, f"{len(blobs)} images in one request: send 1..{limits.max_images}")
    return np.stack([_decode(b, size, limits) for b in blobs])


def _json_images(body: bytes) -> list[bytes]:
    import json

    try:
        d = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(400, 'the body is not JSON: send {"images": [base64, ...]}') from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list):
        raise BadRequest(422, 'the JSON body must be {"images": [base64, ...]}')
    if not all(isinstance(x, str) for x in d["images"]):
        raise BadRequest(422, "every entry of images must be a base64 string")
    try:
        return [base64.b64decode(x, validate=True) for x in d["images"]]
    except (binascii.Error, ValueError):
        raise BadRequest(400, "an entry of images is not base64") from None


class _Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self, outputs: list[str], stages: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("shallowdeep_requests", "requests by HTTP status", ["status"], registry=r)
        self.latency = Histogram(
            "shallowdeep_image_latency_seconds",
            "time in the server per image, by the output that answered",
            ["output"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )
        self.exits = Counter("shallowdeep_exits", "images by the output they exited at", ["output"], registry=r)
        self.depth = Gauge("shallowdeep_queue_depth", "inputs waiting before each stage", ["stage"], registry=r)
        self.drift = Gauge(
            "shallowdeep_drift_windows", "drift monitor windows tested, by verdict", ["verdict"], registry=r
        )
        self.outputs, self.stages = outputs, stages


def create_app(
    model: EarlyExitEngine | Deployment, classes: list[str], limits: Limits | None = None, **batching
) -> FastAPI:
    """The FastAPI app serving ``model``, a run's torch engine or a loaded export (its batcher started
    with the app, closed after its last request); ``batching``: :class:`StageBatcher`'s
    ``max_batch``, ``max_wait``, ``max_queued``."""
    limits = limits or Limits()
    stages: Stages = stages_of(model)
    names = output_names(stages.num_stages)
    metrics = _Metrics(names, stages.num_stages)
    monitor = stages.monitor()
    state: dict[str, StageBatcher] = {}

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = StageBatcher(stages, **batching)
        yield
        state.pop("batcher").close()  # uvicorn has answered every request by now: the queues are empty

    app = FastAPI(title="shallowdeep", lifespan=lifespan)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        metrics.requests.labels(str(status)).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.middleware("http")
    async def header_limit(request: Request, call_next):
        size = sum(len(k) + len(v) for k, v in request.headers.raw)
        if size > MAX_HEADER_BYTES:  # uvicorn's httptools parser takes any size
            return error(431, f"{size} bytes of headers, more than {MAX_HEADER_BYTES}")
        return await call_next(request)

    @app.post("/predict")
    async def predict(request: Request):
        started = time.perf_counter()
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limits.max_bytes):
            return error(413, f"a body of {declared} bytes, more than {limits.max_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_bytes:
                return error(413, f"a body of more than {limits.max_bytes} bytes")
        try:
            images = _images(bytes(body), request.headers.get("content-type", ""), stages.image_size, limits)
            futures = state["batcher"].submit(images)
        except BadRequest as e:
            return error(e.status, str(e))
        except Overloaded as e:
            return error(503, str(e), {"Retry-After": "1"})
        try:
            answers = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)), limits.timeout)
        except TimeoutError:
            return error(504, f"not answered within {limits.timeout:g} s")
        ms = 1e3 * (time.perf_counter() - started)
        _observe(metrics, monitor, answers, ms)
        metrics.requests.labels("200").inc()
        return {"results": [_row(a, classes, names) for a in answers], "server_ms": ms}

    _info_routes(app, state, metrics)
    return app


def _info_routes(app: FastAPI, state: dict[str, StageBatcher], metrics: _Metrics) -> None:
    """``GET /health`` and ``GET /metrics``."""

    @app.get("/health")
    async def health():
        return {"status": "ok", "outputs": len(metrics.outputs), "in_flight": state["batcher"].in_flight}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        for k, d in enumerate(state["batcher"].depths()):
            metrics.depth.labels(str(k + 1)).set(d)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _row(a: Answer, classes: list[str], names: list[str]) -> dict:
    return {
        "class_index": a.prediction,
        "class": classes[a.prediction],
        "answered_by": names[a.answered],
        "exit": a.exit,
        "confidence": a.confidence,
        "relative_cost": a.relative_cost,
    }


def _observe(metrics: _Metrics, monitor, answers: list[Answer], ms: float) -> None:
    for a in answers:
        metrics.exits.labels(metrics.outputs[a.exit]).inc()
        metrics.latency.labels(metrics.outputs[a.exit]).observe(ms / 1e3)
    if monitor is not None:
        exits = np.asarray([a.exit for a in answers])
        for check in monitor.observe(exits, np.asarray([a.confidence for a in answers])):
            metrics.drift.labels("drifted" if check.drifted else "ok").inc()


def load_served(target: str | Path, device: str = "cpu") -> tuple[EarlyExitEngine | Deployment, list[str]]:
    """What ``target`` serves and its class names: a calibrated run's torch engine, or an export's
    onnxruntime stages (a folder with ``manifest.json``: the torch-free deploy runtime)."""
    target = Path(target)
    if (target / "manifest.json").is_file():  # torch is not imported for an export served on the CPU
        from ..inference import deploy

        model = deploy.load_for(target, "cpu" if device == "cpu" else _device_type(device))
        return model, list(model.classes)
    from ..runs import RunFolder, engine_from_run

    if target.is_dir() and not (target / "run.json").is_file():
        raise RunFolderError(
            f"{target} is neither a run folder (run.json) nor an export (manifest.json): serve a calibrated run "
            "or its export (shallowdeep export)"
        )
    engine = engine_from_run(target, device=device)
    return engine, RunFolder(target).meta().data.class_names


def _device_type(device: str) -> str:
    from ..compute.devices import pick_device

    return pick_device(device).type


def build_app(target: str | Path, device: str = "cpu", limits: Limits | None = None, **batching) -> FastAPI:
    """The app of :func:`create_app` for a run or an export (see :func:`load_served`); the batching
    settings are checked here, before any server starts."""
    model, classes = load_served(target, device)
    StageBatcher(model, **batching).close()
    return create_app(model, classes, limits, **batching)


def serve_run(
    target: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    limits: Limits | None = None,
    on_ready: Callable[[], None] | None = None,
    **batching,
) -> None:
    """Serve a calibrated run's (or an export's) early exits with uvicorn until interrupted
    (SIGINT/SIGTERM: what is queued is answered first); ``on_ready`` is called once the model is
    loaded and the settings checked, before the server starts."""
    import uvicorn

    check_port(port)
    app = build_app(target, device, limits, **batching)
    if on_ready is not None:
        on_ready()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=int(limits.timeout) + 5 if limits else 15,
    )


def check_port(port: int) -> None:
    """A TCP port number, or the one-line error."""
    if not 0 <= port <= 65535:
        raise UserError(f"`port` must lie in 0..65535, got {port}")
