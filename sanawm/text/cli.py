"""``sanawm encode-prompt``: encode a prompt once into a file the torch-free runtime reads.

    sanawm encode-prompt --prompt "..." [--negative-prompt ""] --stage1-encoder DIR [--refiner-encoder DIR]
                         --out prompt.safetensors [--cache-dir DIR] [--device cpu|cuda] [--caption-length 300]
    sanawm encode-prompt --tiny --prompt "..." --out prompt.safetensors      # tiny random Gemma-2, offline

Encoder folders are read with ``local_files_only=True`` (never downloads). ``--stage1-encoder`` takes either a
transformers Gemma-2 folder (config.json + weights + tokenizer files) or a diffusers pipeline folder holding
``text_encoder/`` and ``tokenizer/``. ``--refiner-encoder`` takes the refiner folder: Gemma-3 in
``text_encoder/gemma3_12b``, ``text_encoder`` or ``gemma3_12b`` (or the folder itself), tokenizer in ``tokenizer/``
(or next to the encoder) and ``connectors/`` (diffusers ``LTX2TextConnectors``); with ``--tiny`` it may be the word
``tiny`` (tiny random Gemma-3 + connectors, sequence length 16).

Encoder identity = ``"<name>@<content fingerprint>"``; the name is the folder's (the repo name for a Hugging Face
cache snapshot, the model config's ``_name_or_path`` for a pipeline folder; see ``sanawm.text.spec.encoder_name``).
A cache hit imports no torch. ``--status-json`` prints one JSON line on stdout: ``{"cache_hit", "out", "key",
"stage1_encoder", "refiner_encoder"}`` (what ``sanawm generate --prompt`` reads).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
from pathlib import Path

from .cache import cache_key, encode_cached, encoder_identity
from .spec import DEFAULT_CHI_PROMPT, TINY_REFINER_ID, TINY_STAGE1_ID, encoder_name

TINY = "tiny"


def _log(msg: str) -> None:
    print(f"[encode-prompt] {msg}", file=sys.stderr)


def _first_dir(cands, marker_names) -> Path | None:
    for c in cands:
        if c.is_dir() and any((c / m).is_file() for m in marker_names):
            return c
    return None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _resolve_stage1(folder: Path) -> tuple[Path, Path]:
    enc = _first_dir([folder / "text_encoder", folder], ["config.json"])
    tok = _first_dir([folder / "tokenizer", folder, folder / "text_encoder"], _TOKENIZER_FILES)
    if enc is None or tok is None:
        raise SystemExit(
            f"error: --stage1-encoder {folder}: no Gemma-2 {'config.json' if enc is None else 'tokenizer files'} found "
            f"(looked in {folder} and {folder}/text_encoder, {folder}/tokenizer). Point it at the local "
            f"gemma-2-2b-it folder (config.json, *.safetensors, tokenizer.json) or the SANA-WM pipeline folder."
        )
    return enc, tok


def _resolve_refiner(folder: Path) -> tuple[Path, Path, Path]:
    enc = _first_dir(
        [folder / "text_encoder" / "gemma3_12b", folder / "text_encoder", folder / "gemma3_12b", folder], ["config.json"]
    )
    tok = _first_dir([folder / "tokenizer", *([enc] if enc else []), folder], _TOKENIZER_FILES)
    conn = _first_dir([folder / "connectors"], ["config.json"])
    if enc is None or tok is None or conn is None:
        what = "Gemma-3 config.json" if enc is None else "tokenizer files" if tok is None else "connectors/config.json"
        raise SystemExit(
            f"error: --refiner-encoder {folder}: no {what} found. Point it at the local SANA-WM refiner folder "
            f"(text_encoder/gemma3_12b or text_encoder/, tokenizer/, connectors/)."
        )
    return enc, tok, conn


def _load_model(folder: Path, dtype, device):
    import transformers

    arch = None
    try:
        arch = (json.loads((folder / "config.json").read_text()).get("architectures") or [None])[0]
    except (OSError, json.JSONDecodeError):
        pass
    cls = getattr(transformers, arch, None) if arch else None
    cls = cls or transformers.AutoModel
    model = cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    return model.to(device).eval()


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("sanawm", "torch", "transformers", "diffusers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing version string must not stop encoding
            out[mod] = "unknown"
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sanawm encode-prompt", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="", help="CFG negative prompt (encoded without the preamble)")
    p.add_argument("--stage1-encoder", type=Path, help="local Gemma-2 (gemma-2-2b-it) folder")
    p.add_argument("--refiner-encoder", help="local refiner folder (Gemma-3 + tokenizer + connectors)")
    p.add_argument("--tiny", action="store_true", help="tiny random Gemma-2 + byte tokenizer (offline demo / tests)")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors")
    p.add_argument("--cache-dir", type=Path, help="reuse / store encoded prompts here")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="encoder weights dtype (auto: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--caption-length", type=int, help="kept stage-1 tokens (default 300; 8 with --tiny)")
    p.add_argument("--refiner-max-length", type=int, help="refiner tokens (default 1024; 16 for the tiny refiner)")
    p.add_argument("--no-chi-prompt", action="store_true", help="omit the chi preamble (not what the release does)")
    p.add_argument("--status-json", action="store_true",
                   help="print one JSON line on stdout: cache_hit, out, key, stage1_encoder, refiner_encoder")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.tiny == (args.stage1_encoder is not None):
        raise SystemExit("error: give exactly one of --stage1-encoder DIR or --tiny")
    if args.refiner_encoder == TINY and not args.tiny:
        raise SystemExit("error: --refiner-encoder tiny needs --tiny")
    if args.out.suffix != ".safetensors":
        raise SystemExit(f"error: --out {args.out} must end in .safetensors")

    chi = None if args.no_chi_prompt else DEFAULT_CHI_PROMPT
    caption_length = args.caption_length or (8 if args.tiny else 300)
    refiner_len = args.refiner_max_length or (16 if args.refiner_encoder == TINY else 1024)

    if args.tiny:
        stage1_id = TINY_STAGE1_ID
    else:
        enc_dir, tok_dir = _resolve_stage1(args.stage1_encoder)
        stage1_id = f"{encoder_name(args.stage1_encoder, enc_dir)}@{encoder_identity(enc_dir).split('@')[1]}"
    refiner_id = None
    if args.refiner_encoder == TINY:
        refiner_id = TINY_REFINER_ID
    elif args.refiner_encoder:
        r_enc, r_tok, r_conn = _resolve_refiner(Path(args.refiner_encoder))
        fp = hashlib.sha256(
            (encoder_identity(r_enc) + encoder_identity(r_conn) + encoder_identity(r_tok)).encode()
        ).hexdigest()[:16]
        refiner_id = f"{Path(args.refiner_encoder).resolve().name}@{fp}"

    key = cache_key(
        args.prompt,
        negative_prompt=args.negative_prompt,
        stage1_encoder=stage1_id,
        refiner_encoder=refiner_id,
        chi_prompt=chi,
        caption_length=caption_length,
        refiner_max_length=refiner_len,
    )

    def encode(out: Path) -> None:
        import torch

        from .refiner_text import encode_refiner
        from .stage1 import encode_stage1
        from .store import save_prompt_embeddings

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but torch sees no CUDA device; use --device cpu")
        dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]

        if args.tiny:
            from .tiny import tiny_gemma2, tiny_tokenizer

            tok, enc = tiny_tokenizer(), tiny_gemma2().to(device=device, dtype=dtype)
        else:
            _log(f"loading stage-1 encoder {enc_dir} ({dtype}, {device})")
            tok, enc = _load_tokenizer(tok_dir), _load_model(enc_dir, dtype, device)
        s1 = encode_stage1(args.prompt, tok, enc, caption_length, chi_prompt=chi)
        neg = encode_stage1(args.negative_prompt, tok, enc, caption_length, chi_prompt=chi, negative=True)
        channels = int(s1[0].shape[-1])
        del tok, enc
        _free(device)

        refiner = None
        if refiner_id is not None:
            if args.refiner_encoder == TINY:
                from .tiny import tiny_connectors, tiny_gemma3, tiny_tokenizer

                rtok, renc, rconn = tiny_tokenizer(), tiny_gemma3().to(device, dtype), tiny_connectors().to(device)
                if dtype != torch.float32:
                    rconn = rconn.to(dtype)
            else:
                from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors

                _log(f"loading refiner text encoder {r_enc} and connectors {r_conn} ({dtype}, {device})")
                rtok, renc = _load_tokenizer(r_tok), _load_model(r_enc, dtype, device)
                rconn = LTX2TextConnectors.from_pretrained(str(r_conn), local_files_only=True, torch_dtype=dtype)
                rconn = rconn.to(device).eval()
            refiner = encode_refiner(args.prompt, rtok, renc, rconn, max_length=refiner_len)
            del rtok, renc, rconn
            _free(device)

        meta = {
            "prompt": args.prompt,
            "negative_prompt": args.negative_prompt,
            "stage1_encoder": stage1_id,
            "refiner_encoder": refiner_id,
            "caption_length": caption_length,
            "caption_channels": channels,
            "chi_prompt_sha256": hashlib.sha256(("\n".join(chi) if chi else "").encode()).hexdigest(),
            "refiner_max_length": refiner_len if refiner_id else None,
            "refiner_channels": int(refiner[0].shape[-1]) if refiner else None,
            "encoder_dtype": str(dtype).replace("torch.", ""),
            "versions": _versions(),
        }
        save_prompt_embeddings(
            out,
            stage1=(s1[0].numpy(), s1[1].numpy()),
            stage1_negative=(neg[0].numpy(), neg[1].numpy()),
            refiner=None if refiner is None else (refiner[0].numpy(), refiner[1].numpy()),
            meta=meta,
        )

    hit = encode_cached(args.cache_dir, key, args.out, encode)
    _log(f"{'cache hit' if hit else 'encoded'} -> {args.out} (key {key[:12]})")
    if args.status_json:
        status = {"cache_hit": bool(hit), "out": str(args.out), "key": key, "stage1_encoder": stage1_id,
                  "refiner_encoder": refiner_id}
        print(json.dumps(status, ensure_ascii=False), flush=True)
    return 0


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
