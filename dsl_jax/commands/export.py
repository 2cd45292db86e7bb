"""``dsl-jax export``: the command line of ``dsl_jax.conversion.export``."""

from __future__ import annotations


from dsl_jax.conversion import export
from dsl_jax.commands import add_command


def register(sub):
    p = add_command(sub, "export", export.__doc__)
    p.add_argument("--ckpt", required=True, metavar="CKPT", help="dsl-jax checkpoint directory")
    p.add_argument("--hf", required=True, metavar="DIR", help="output Hugging Face directory")
    p.add_argument("--max-shard-bytes", type=int, default=export.DEFAULT_MAX_SHARD_BYTES,
                   help=f"largest safetensors file in bytes (default {export.DEFAULT_MAX_SHARD_BYTES:,})")
    p.add_argument("--copy-from", default=None, metavar="HF_DIR",
                   help="the Hugging Face folder the checkpoint came from: its remote code "
                        "(*.py), config.json (checked to match), generation_config.json, tokenizer "
                        "files and other files that are not weights are copied into DIR, so it "
                        "loads in transformers as HF_DIR does")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    s = export.export(args.ckpt, args.hf, overwrite=args.overwrite,
                      max_shard_bytes=args.max_shard_bytes, progress=not args.no_progress,
                      copy_from=args.copy_from)
    print(f"exported {s['tensors']} tensors, {s['bytes'] / 1e9:.2f} GB in {s['files']} file(s), "
          f"{s['seconds']:.1f} s, peak memory {s['peak_rss_bytes'] / 1e9:.2f} GB -> {s['out']}"
          + (f" (with {len(s['copied'])} file(s) of {args.copy_from})" if s["copied"] else ""))
    return 0
