"""The same service on Ray Serve: several replicas (processes here, or machines of a Ray cluster).

Each replica builds the FastAPI app of :mod:`.app` for itself (Ray Serve's ingress builder runs in
the replica, so the model is loaded there, never pickled) with its own batcher between the exits;
Ray's HTTP proxy spreads the requests over the replicas. Ray's own batcher (``@serve.batch``) is not
used: it batches whole requests into one call, which is what defeats early exits. Needs the ``ray``
extra (``pip install 'shallowdeep[ray]'``).

``address``: ``None`` starts a Ray instance on this machine for the service's lifetime; ``"auto"``
(or ``ray://HOST:10001``, ``HOST:6379``) joins a running cluster, where the replicas need the run or
export at the same path and shallowdeep installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import ArgumentError, MissingExtraError, UserError
from .app import Limits, build_app, check_port

APP = "shallowdeep"


def _serve() -> Any:
    try:
        from ray import serve
    except ImportError:
        raise MissingExtraError("serving on Ray needs ray[serve]", "ray") from None
    return serve


def _check(replicas: int, cpus_per_replica: float) -> None:
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= 1024:
        raise ArgumentError(f"`replicas` must be an integer in 1..1024, got {replicas!r}")
    if not 0 < cpus_per_replica <= 1024:
        raise ArgumentError(f"`cpus_per_replica` must lie in (0, 1024], got {cpus_per_replica:g}")


def ray_app(
    target: str | Path,
    replicas: int = 2,
    device: str = "cpu",
    limits: Limits | None = None,
    cpus_per_replica: float = 1.0,
    **batching,
) -> Any:
    """The Ray Serve application of the service: ``replicas`` copies of :func:`.app.build_app` for
    ``target`` (a calibrated run or an export, at a path every replica can read)."""
    _check(replicas, cpus_per_replica)
    serve = _serve()
    path = str(Path(target).resolve())

    def builder() -> Any:  # a function, not a partial: Ray Serve runs functions in each replica
        return build_app(path, device, limits, **batching)

    gpus = 0 if device == "cpu" else 1
    deployment = serve.deployment(
        name=APP,
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus},
        graceful_shutdown_timeout_s=(limits.timeout if limits else 10.0) + 5,
    )(serve.ingress(builder)())
    return deployment.bind()


def start_ray(
    target: str | Path,
    replicas: int = 2,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    limits: Limits | None = None,
    address: str | None = None,
    cpus_per_replica: float = 1.0,
    on_ready: Callable[[], None] | None = None,
    **batching,
) -> Any:
    """Deploy the service on Ray (started here, ``address`` None; or the cluster at ``address``) and
    return once every replica runs; the HTTP proxy listens on ``host:port``. ``on_ready`` is called
    then."""
    check_port(port)
    _check(replicas, cpus_per_replica)
    build_app(target, device, limits, **batching)  # a bad target or setting fails here, before Ray starts
    app = ray_app(target, replicas, device, limits, cpus_per_replica, **batching)
    import ray

    serve = _serve()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Ray's INFO lines would bury the service's
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level="warning", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            where = f"join the Ray cluster at {address}" if address else "start Ray on this machine"
            raise UserError(f"could not {where} ({first}): check `address`, or leave it out") from None
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(app, name=APP, route_prefix="/")  # returns when every replica runs
    if on_ready is not None:
        on_ready()
    return handle


def serve_ray(target: str | Path, replicas: int = 2, **options) -> None:
    """Serve on Ray until interrupted (SIGINT or SIGTERM), then stop the deployment (the replicas
    answer what they hold) and the Ray instance this call started."""
    import signal
    import threading

    import ray

    started_here = not ray.is_initialized() and options.get("address") is None
    start_ray(target, replicas, **options)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a service manager's stop, as Ctrl-C
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_ray(started_here)


def stop_ray(shutdown: bool = True) -> None:
    """Delete the service's deployment (its replicas drain first); ``shutdown``: stop Ray too."""
    import ray

    serve = _serve()
    serve.delete(APP)
    serve.shutdown()
    if shutdown:
        ray.shutdown()
