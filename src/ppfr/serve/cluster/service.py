"""The recognition service on Ray Serve: the same FastAPI app, replicated, over sharded galleries.

``ppfr serve --cluster ADDRESS|local --shards K --replicas R`` calls :func:`serve_cluster`,
which

1. builds the app once here, as ``ppfr serve`` would, so a bad bundle, threshold or store
   URL fails before anything starts on the cluster (and to get the model's SlerpFace);
2. connects to the Ray cluster at ADDRESS (``local``: starts one in this process);
3. starts the K shard actors (:mod:`ppfr.serve.cluster.shard`) and waits until each has
   loaded its partition from the store;
4. deploys R Serve replicas of the app from :func:`ppfr.serve.app.create_app` with
   ``matcher=ShardedMatcher.factory(...)`` (``@serve.ingress`` with a builder function:
   each replica builds its own app, model and store connection; nothing unpicklable
   crosses the wire), behind Serve's HTTP proxy on the head node at ``host:port``.

Replicas do the per-request work that is not matching: decoding, checks, auth, and
embedding (the server's main cost), so R scales that; shards scale gallery memory and scan
time. The API, authentication, size limits, error codes and OpenAPI document are those of
the single-process service because the same ``create_app`` builds it.

Overload. Each replica's app has the admission gate of ``ppfr serve`` (``--max-concurrent``,
``--max-queue``, ``--queue-timeout``); Serve lets that many requests into a replica and
queues at most ``--max-queue`` more in its router when no replica has room (answering 503
with ``Retry-After`` past that). Behind the replicas, every shard call carries a deadline
of ``--queue-timeout`` seconds: a shard that reaches a call later drops it and the request
is answered 503 (:mod:`ppfr.serve.cluster.matcher`). So the service sheds load instead of
queueing without bound, as in one process.

Ctrl-C or SIGTERM deletes the Serve application and the shard actors (both are detached:
they would outlive this process otherwise); with ``local`` it also stops Ray.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ppfr.errors import InputError
from ppfr.serve.app import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_QUEUE_TIMEOUT,
    create_app,
)
from ppfr.serve.cluster.matcher import ShardedMatcher
from ppfr.serve.cluster.shard import ShardSet, ShardSpec

__all__ = ["build_application", "serve_cluster"]

log = logging.getLogger("ppfr.serve")

#: name of the Serve deployment (the application takes the service's name)
DEPLOYMENT = "ppfr"


def absolute_db_url(url: str) -> str:
    """A SQLite URL with an absolute path: Ray workers do not share the caller's directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url[len(prefix) :]).resolve())
    return url


def _one_of(resource: str | None) -> dict[str, float]:
    """Ray's ``resources`` for an actor taking one unit of ``resource`` (none: empty)."""
    if resource is None:
        return {}
    if not resource or resource in ("CPU", "GPU", "memory", "object_store_memory"):
        raise InputError(
            f"--replica-resource takes a custom resource name, not {resource!r} "
            "(set CPUs with --replica-cpus)"
        )
    return {resource: 1.0}


def build_application(
    model_dir: Path,
    db_url: str,
    spec: ShardSpec,
    *,
    replicas: int,
    replica_cpus: float = 1.0,
    replica_resource: str | None = None,
    shard_timeout: float = 30.0,
    app_options: dict[str, Any] | None = None,
) -> Any:
    """The Serve application: R replicas of the service app over ``spec``'s shards.

    Overload: each replica's app keeps its own admission gate (``max_concurrent`` at work,
    ``max_queue`` waiting, ``queue_timeout``; :mod:`ppfr.serve.app`), so Serve lets that
    many requests into a replica and the app decides. Requests Serve's router cannot place
    on any replica (all full, or restarting) wait in a queue of ``max_queue`` at most;
    past it Serve answers 503 with the same ``Retry-After``.
    """
    from ray import serve

    if not isinstance(replicas, int) or replicas < 1:
        raise InputError(f"replicas must be a positive integer, got {replicas!r}")
    options = dict(app_options or {})
    model_dir = Path(model_dir).resolve()
    at_work = int(options.get("max_concurrent", DEFAULT_MAX_CONCURRENT))
    waiting = int(options.get("max_queue", DEFAULT_MAX_QUEUE))
    retry_after = float(options.get("queue_timeout", DEFAULT_QUEUE_TIMEOUT))

    def build_asgi_app() -> Any:
        # runs in each replica when it starts (Serve calls a builder function there)

        # the shards bound a call's wait in their queue as the gate bounds it at the door
        factory = ShardedMatcher.factory(spec, timeout=shard_timeout, queue_timeout=retry_after)
        return create_app(model_dir, db_url, matcher=factory, **options)

    deployment = serve.deployment(
        serve.ingress(build_asgi_app)(),
        name=DEPLOYMENT,
        num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus, "resources": _one_of(replica_resource)},
        max_ongoing_requests=at_work + waiting,
        max_queued_requests=max(1, waiting),
        backpressure_config={"status_code": 503, "retry_after_s": max(1.0, retry_after)},
    )
    return deployment.bind()


def serve_cluster(
    model_dir: Path,
    db_url: str,
    *,
    address: str,
    shards: int = 1,
    replicas: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    shard_cpus: float = 1.0,
    replica_cpus: float = 1.0,
    replica_resource: str | None = None,
    shard_timeout: float = 30.0,
    load_timeout: float = 3600.0,
    name: str = "ppfr",
    app_options: dict[str, Any] | None = None,
    matcher_options: dict[str, Any] | None = None,
    announce: Any = print,
) -> None:
    """Run the service on a Ray cluster until interrupted (see the module docstring).

    Args:
        address: a Ray cluster address (``HEAD_IP:6379``, as ``ray start --address``
            takes) or ``local`` to start Ray in this process.
        shards, replicas: K shard actors, R Serve replicas.
        shard_cpus, replica_cpus: Ray CPUs reserved by each.
        replica_resource: a custom Ray resource that the nodes meant for replicas declare
            (``ray start --resources '{"NAME": R}'``: up to R replicas there); each replica
            takes one unit, so replicas run only there (GPU or ingress nodes, say) and a
            node without it holds shards only. None: anywhere.
        shard_timeout: seconds a request waits for the shards before answering 503.
        load_timeout: seconds to wait for the shards' first load.
        name: Serve application name, prefix of the shard actors' names.
        app_options: keyword arguments of ``create_app`` (threshold, max_body_bytes, ...).
        matcher_options: keyword arguments of each shard's ``Matcher``
            (``index_dtype=torch.float16``, ``compact_fraction``, ...).
        announce: called with one line once the service answers.
    """
    import ray
    from ray import serve

    if not address:
        raise InputError("--cluster needs a Ray address (HEAD_IP:6379) or 'local'")
    model_dir = Path(model_dir).resolve()
    db_url = absolute_db_url(db_url)
    options = dict(app_options or {})
    # the same checks as `ppfr serve`, here, before the cluster is touched
    probe = create_app(model_dir, db_url, **options).state.service
    protection = probe.protection
    probe.store.close()
    spec = ShardSpec(
        name, shards, db_url, num_cpus=shard_cpus, matcher_options=dict(matcher_options or {})
    )
    application = build_application(
        model_dir,
        db_url,
        spec,
        replicas=replicas,
        replica_cpus=replica_cpus,
        replica_resource=replica_resource,
        shard_timeout=shard_timeout,
        app_options=options,
    )

    local = address == "local"
    ray.init(
        address=None if local else address,
        include_dashboard=False if local else None,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    shard_set = ShardSet(spec, protection)
    # SIGTERM (a service manager stopping us) must clean up like Ctrl-C: the shards and the
    # Serve application are detached and would outlive this process otherwise
    restore = _interrupt_on_sigterm()
    try:
        total = ray.cluster_resources().get("CPU", 0.0)
        need = shards * shard_cpus + replicas * replica_cpus
        if need > total:
            raise InputError(
                f"{shards} shards x {shard_cpus:g} CPU + {replicas} replicas x "
                f"{replica_cpus:g} CPU need {need:g} CPUs; the cluster has {total:g} "
                "(add nodes, or lower --shard-cpus / --replica-cpus)"
            )
        if replica_resource is not None:
            declared = ray.cluster_resources().get(replica_resource, 0.0)
            if declared < replicas:
                raise InputError(
                    f"{replicas} replicas need {replicas} units of the Ray resource "
                    f"{replica_resource!r}; the cluster's nodes declare {declared:g} "
                    f"(ray start --resources '{{\"{replica_resource}\": {replicas}}}')"
                )
        machines = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
        if db_url.startswith("sqlite") and len(machines) > 1:
            log.warning(
                "a SQLite store is one file on one machine: shards on other machines cannot "
                "open it; use postgresql:// for a cluster of several machines"
            )
        where = shard_set.wait_ready(timeout=load_timeout)
        serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
        serve.run(application, name=name, route_prefix="/")
        announce(
            f"serving on http://{host}:{port} through Ray Serve: {replicas} replicas, "
            f"{shards} shards (loaded in {max(w['load_s'] for w in where):.1f} s), "
            f"store {db_url}"
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("interrupted")
    except BaseException as e:
        # logged here too: a SystemExit from Ray (its driver exits on fatal errors) would
        # otherwise end the service without a word
        log.error("stopping on %s: %s", type(e).__name__, e)
        raise
    finally:
        restore()
        log.info("stopping: deleting the Serve application %s and its shards", name)
        try:
            # not blocking: Serve's controller drains the replicas' requests in flight
            # on its own; waiting for it here can take long on a cluster that lost a node
            serve.delete(name, _blocking=False)
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.warning("could not delete the Serve application %s", name)
        shard_set.stop()
        if local:
            serve.shutdown()
            ray.shutdown()


def _interrupt_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM raise KeyboardInterrupt (as Ctrl-C does); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals reach the main thread only

    def interrupt(signum: int, frame: Any) -> None:
        log.warning("received %s: stopping", signal.Signals(signum).name)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)
