"""``sanawm serve`` arguments and entry point (``sanawm.cli.serve`` adds the subcommand with these).

Refusals raise ``UserError`` (one line, exit 2 at the CLI boundary); anything else is a bug with its traceback.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..cli.base import UserError

DEFAULT_BUNDLE = "sanawm-demo-bundle"  # the folder `sanawm demo` builds and reuses
TOKEN_ENV = "SANAWM_SERVE_TOKEN"


def add_arguments(p) -> None:
    p.add_argument("--bundle", help=f"engine bundle folder with a VAE (default: the demo bundle ./{DEFAULT_BUNDLE}, "
                                    "built on first use like `sanawm demo`)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; others need --token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime | tensorrt | tensorrt_rtx")
    p.add_argument("--verify", action="store_true", help="re-hash every bundle file against the manifest (slow for large "
                   "bundles; by default existence, sizes and path safety are checked)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per engine call (0: its default, "
                   "all cores). 1 keeps a core for the event loop and reprojection and lets sessions run side by side; on "
                   "small CPUs it gives lower key latency and more frames/s (bench/results/serve-cpu.json)")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                   help=f"bearer token the API and WebSocket require (default ${TOKEN_ENV}; none: open)")
    p.add_argument("--max-sessions", type=int, default=4, help="concurrent sessions; more get HTTP 503 + Retry-After")
    p.add_argument("--idle-timeout", type=float, default=300.0, help="seconds without input before a session is "
                                                                     "snapshotted and freed")
    p.add_argument("--max-seconds", type=float, default=60.0, help="longest clip one session may generate")
    p.add_argument("--snapshot-dir", help="where snapshots go (default $SANAWM_CACHE/snapshots or ~/.cache/sanawm/snapshots)")
    p.add_argument("--tiny-encoder", action="store_true", help="encode prompts with the tiny random Gemma-2 (tiny "
                                                               "bundles; the default for the demo bundle)")
    p.add_argument("--stage1-encoder", help="local Gemma-2 folder for prompts (without it, and without "
                                            "--tiny-encoder, prompts are empty)")
    from ..fleet.cli import add_arguments as add_fleet_arguments  # --ray and its flags (sanawm.fleet)

    add_fleet_arguments(p)


def _ensure_demo_bundle(bundle: Path) -> None:
    from ..cli.demo import DEMO_ENGINES, demo_bundle_ready

    if demo_bundle_ready(bundle):
        return
    print(f"building the tiny random demo bundle in {bundle} (once) ...", file=sys.stderr)
    code = "import sys; from sanawm.export.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "--random", "--config", "tiny", "--out", str(bundle), "--backends",
                        "onnxruntime", "--precision", "fp32", "--engines", ",".join(DEMO_ENGINES)])
    if r.returncode != 0:
        raise UserError(f"building the demo bundle in {bundle} failed (exit {r.returncode}); pass --bundle DIR instead")


def _prompt_encoder(args, runtime):
    """text -> prompt embeddings through `sanawm encode-prompt` (subprocess, cached), or None."""
    if not args.tiny_encoder and args.stage1_encoder is None:
        return None
    from ..cli.prompting import encode_prompt_text
    from ..runtime.prompt import load_prompt

    def encode(text: str):
        with tempfile.TemporaryDirectory(prefix="sanawm-serve-prompt-") as tmp:
            out = Path(tmp) / "prompt.safetensors"
            encode_prompt_text(text, out, tiny=args.tiny_encoder, stage1_encoder=args.stage1_encoder,
                               caption_length=runtime.cfg.caption_length)
            return load_prompt(out, runtime.cfg)

    return encode


def serve(args) -> int:
    from aiohttp import web

    from ..runtime import Runtime
    from .app import create_app
    from .manager import Limits

    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not args.token:
        raise UserError(f"--host {args.host} is reachable from other machines; set --token (or ${TOKEN_ENV}) first")
    for name in ("max_sessions", "idle_timeout", "max_seconds"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    from ..fleet.cli import check_flags, serve_ray

    check_flags(args)
    if args.bundle is None:
        bundle = Path(DEFAULT_BUNDLE)
        _ensure_demo_bundle(bundle)
        args.tiny_encoder = args.tiny_encoder or args.stage1_encoder is None
    else:
        bundle = Path(args.bundle)
        if not bundle.is_dir():
            raise UserError(f"--bundle {bundle} does not exist; build one with sanawm-export or omit --bundle for the demo")
    if args.ray:
        return serve_ray(args, bundle, Limits(idle_timeout_s=args.idle_timeout, max_seconds=args.max_seconds))
    options = {"threads": args.threads} if args.threads and args.backend == "onnxruntime" else {}
    runtime = Runtime.load(bundle, args.backend, verify=args.verify, **options)
    if not runtime.has_decoder or not runtime.has_encoder:
        raise UserError(f"bundle {bundle} lacks the VAE encoder/decoder; serve needs images in and out: "
                         "rebuild it with `sanawm-export ... --engines generator,vae_encoder,vae_decoder`")
    limits = Limits(max_sessions=args.max_sessions, idle_timeout_s=args.idle_timeout, max_seconds=args.max_seconds)
    app = create_app(runtime, limits, snapshot_dir=args.snapshot_dir, token=args.token,
                     prompt_encoder=_prompt_encoder(args, runtime))
    print(f"sanawm serve: {bundle} on http://{args.host}:{args.port}/ (max {limits.max_sessions} sessions)", file=sys.stderr)
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0
