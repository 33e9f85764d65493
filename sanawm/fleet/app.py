"""Build and run the fleet: an engine deployment (N replicas, up to K sessions each, sticky router) behind
one ingress deployment speaking the WebSocket protocol of ``sanawm serve``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ray import serve
from ray.serve.config import RequestRouterConfig

from ..runtime.live import DEFAULT_MAX_FRAMES
from ..serve.manager import Limits
from . import DEFAULT_SNAPSHOT_EVERY
from .engine import FleetEngine
from .ingress import FleetIngress
from .router import SessionRouter

APP_NAME = "sanawm"
ENGINE_NAME = "SanawmEngine"
INGRESS_NAME = "SanawmIngress"
QUEUE_PER_SESSION = 4  # calls one session may have queued at its replica (step, snapshot, input echo)
DRAIN_TIMEOUT_S = 120.0  # a stopping replica gets this long to finish its chunk and save its sessions


@dataclass
class FleetConfig:
    bundle: str
    replicas: int = 2
    sessions_per_replica: int = 2
    snapshot_dir: str = ""
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    backend: str = "onnxruntime"
    engine_options: dict = field(default_factory=dict)  # Runtime.load options, e.g. {"threads": 1}
    gpus_per_replica: float = 0.0  # 1: one replica per GPU
    cpus_per_replica: float = 1.0
    encoder: dict | None = None  # {"tiny": bool, "stage1_encoder": path}; None: empty prompts
    limits: Limits = field(default_factory=Limits)
    token: str | None = None

    def check(self) -> "FleetConfig":
        for name in ("replicas", "sessions_per_replica", "snapshot_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if not self.snapshot_dir:
            raise ValueError("the fleet needs a snapshot directory every replica can reach; pass --snapshot-dir DIR")
        if not Path(self.bundle).is_dir():
            raise ValueError(f"bundle {self.bundle} does not exist; build one with sanawm-export")
        return self


def build_app(cfg: FleetConfig):
    """The Serve application (bind it with ``serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")``)."""
    cfg.check()
    k = cfg.sessions_per_replica
    args = (str(Path(cfg.bundle).resolve()), cfg.backend)
    kwargs = dict(options=cfg.engine_options, max_sessions=k, snapshot_dir=str(Path(cfg.snapshot_dir).resolve()),
                  snapshot_every=cfg.snapshot_every, max_frames=min(DEFAULT_MAX_FRAMES, cfg.limits.max_frames),
                  encoder=cfg.encoder)
    actor = {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica}
    engine = serve.deployment(
        FleetEngine, name=ENGINE_NAME, num_replicas=cfg.replicas,
        max_ongoing_requests=k * QUEUE_PER_SESSION, ray_actor_options=actor,
        request_router_config=RequestRouterConfig(request_router_class=SessionRouter),
        graceful_shutdown_timeout_s=DRAIN_TIMEOUT_S,
    ).bind(*args, **kwargs)
    ingress = serve.deployment(FleetIngress, name=INGRESS_NAME, num_replicas=1, ray_actor_options={"num_cpus": 0})
    return ingress.bind(engine, asdict(cfg.limits), cfg.token)  # nothing that changes with --replicas


def app_from_args(args: dict):
    """Application builder for Serve configs (``serve deploy``): ``import_path: sanawm.fleet.app:app_from_args``,
    ``args``: the ``FleetConfig`` fields. Deployed this way, a new ``num_replicas`` for the engine deployment
    is a scale, not a new version: Serve stops only the replicas it drops (each drains its sessions to the
    others) and the ingress keeps its WebSockets. ``serve.run`` (``run`` below) redeploys everything."""
    d = dict(args)
    d["limits"] = Limits(**d.get("limits", {}))
    return build_app(FleetConfig(**d))


def deploy_config(cfg: FleetConfig) -> dict:
    """The Serve application config that deploys ``cfg`` through ``app_from_args``."""
    args = asdict(cfg)
    del args["replicas"]  # set per deployment below: a change of args would make a new code version
    return {"name": APP_NAME, "route_prefix": "/", "import_path": f"{__name__}:app_from_args", "args": args,
            "deployments": [{"name": ENGINE_NAME, "num_replicas": cfg.replicas}]}


def run(cfg: FleetConfig, host: str, port: int, blocking: bool = True):
    """Start Serve's HTTP proxy on ``host:port`` and deploy the fleet (Ray must be initialised)."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=blocking)
