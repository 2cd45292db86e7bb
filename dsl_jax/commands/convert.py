"""``dsl-jax convert``: the command line of ``dsl_jax.conversion.convert``."""

from __future__ import annotations


from dsl_jax.conversion import convert
from dsl_jax.commands import add_command


def register(sub):
    p = add_command(sub, "convert", convert.__doc__)
    p.add_argument("--hf", required=True, metavar="DIR",
                   help="Hugging Face directory: config.json plus model.safetensors.index.json and "
                        "shards, a single model.safetensors, or pytorch_model*.bin (needs torch)")
    p.add_argument("--out", required=True, metavar="CKPT", help="output checkpoint directory")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="stored parameter dtype (default bfloat16)")
    p.add_argument("--mesh", default="fsdp=-1",
                   help="mesh the parameters are sharded over while converting, e.g. "
                        "'fsdp=4,tensor=2' (default: all devices on fsdp)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="folder whose tokenizer.json, tokenizer_config.json (chat template), "
                        "special_tokens_map.json are copied into CKPT (default: --hf's own, when "
                        "it has them; for a folder without them, e.g. LLaDA-8B-Instruct's)")
    p.add_argument("--overwrite", action="store_true", help="replace CKPT if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from dsl_jax import sharding
    mesh = sharding.make_mesh(sharding.parse_mesh(args.mesh))
    s = convert.convert(args.hf, args.out, dtype=args.dtype, mesh=mesh, overwrite=args.overwrite,
                        progress=not args.no_progress, tokenizer_dir=args.tokenizer)
    print(s["tokenizer_note"])
    if s["notes"]:
        print("; ".join(s["notes"]))
    print(f"converted {s['tensors']} tensors, {s['bytes'] / 1e9:.2f} GB in {s['seconds']:.1f} s "
          f"({s['bytes'] / 1e9 / max(s['seconds'], 1e-9):.2f} GB/s), peak memory "
          f"{s['peak_rss_bytes'] / 1e9:.2f} GB -> {s['out']}"
          + ((" (with DSL parameters and the converter's residual path)" if s["residual"]
              else " (with DSL parameters)") if s["dsl"] else ""))
    return 0
