"""``sanawm serve --ray``: the fleet's flags (added to ``sanawm serve`` by ``serve.cli``) and entry point.

Refusals raise ``UserError`` (one line, exit 2) before Ray starts.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from ..cli.base import UserError
from . import DEFAULT_SNAPSHOT_EVERY

FLEET_FLAGS = ("address", "replicas", "sessions_per_replica", "snapshot_every")
DEFAULT_SESSIONS_PER_REPLICA = 2
GPU_BACKENDS = ("tensorrt", "tensorrt_rtx")


def add_arguments(p) -> None:
    g = p.add_argument_group("fleet (--ray; pip install 'sanawm[fleet]')")
    g.add_argument("--ray", action="store_true", help="serve from a Ray Serve fleet of engine replicas: sticky sessions, "
                   "admission control, migration by snapshot (README: Fleet)")
    g.add_argument("--address", help="Ray cluster to join, e.g. auto or HEAD_IP:6379 (default: start a local one)")
    g.add_argument("--replicas", type=int, help="engine replicas (default: one per GPU for TensorRT backends, else 1)")
    g.add_argument("--sessions-per-replica", type=int, help="live sessions one replica hosts (K; default "
                   f"{DEFAULT_SESSIONS_PER_REPLICA}); when all are full, new sessions get HTTP 503 + Retry-After")
    g.add_argument("--snapshot-every", type=int, help="chunks between a session's migration snapshots (default "
                   f"{DEFAULT_SNAPSHOT_EVERY}); with --snapshot-dir on storage every node reaches")


def check_flags(args) -> None:
    """Fleet flags without --ray, and non-positive counts, are refused."""
    given = [f for f in FLEET_FLAGS if getattr(args, f, None) is not None]
    if not args.ray:
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is a fleet flag; add --ray (or drop it)")
        return
    for name in ("replicas", "sessions_per_replica", "snapshot_every"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1; got {v}")


def serve_ray(args, bundle: Path, limits) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UserError("--ray needs Ray Serve: pip install 'sanawm[fleet]'") from None
    from ..serve.manager import default_snapshot_dir
    from .app import FleetConfig, run

    gpu = args.backend in GPU_BACKENDS
    ray.init(address=args.address, include_dashboard=False) if args.address else ray.init(include_dashboard=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    replicas = args.replicas or (gpus if gpu else 1)
    if gpu and replicas > gpus:
        raise UserError(f"{replicas} replicas need {replicas} GPUs (one each); the cluster has {gpus}: lower --replicas")
    snapshot_dir = Path(args.snapshot_dir) if args.snapshot_dir else default_snapshot_dir()
    encoder = ({"tiny": args.tiny_encoder, "stage1_encoder": args.stage1_encoder}
               if args.tiny_encoder or args.stage1_encoder else None)
    cfg = FleetConfig(bundle=str(bundle), replicas=replicas,
                      sessions_per_replica=args.sessions_per_replica or DEFAULT_SESSIONS_PER_REPLICA,
                      snapshot_dir=str(snapshot_dir), snapshot_every=args.snapshot_every or DEFAULT_SNAPSHOT_EVERY,
                      backend=args.backend, engine_options={"threads": args.threads} if args.threads and not gpu else {},
                      gpus_per_replica=1.0 if gpu else 0.0, encoder=encoder, limits=limits, token=args.token)
    try:
        cfg.check()
    except ValueError as e:
        raise UserError(str(e)) from None
    # Ctrl-C / SIGTERM is how a server stops. A handler that only sets an event, not KeyboardInterrupt: a Ctrl-C
    # that lands inside serve.run() was swallowed by Ray there, and the CLI then served on, deaf to it.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        run(cfg, args.host, args.port, blocking=False)
        if not stop.is_set():
            print(f"sanawm serve --ray: {bundle} on http://{args.host}:{args.port}/ ({replicas} replicas x "
                  f"{cfg.sessions_per_replica} sessions; snapshots in {snapshot_dir})", file=sys.stderr)
        while not stop.wait(1.0):
            pass
        print("sanawm serve --ray: stopping the fleet", file=sys.stderr)
    finally:
        serve.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
