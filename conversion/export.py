"""``dsl-jax export``: a dsl-jax checkpoint -> Hugging Face safetensors in LLaDA's names.

Writes safetensors shards, ``model.safetensors.index.json`` and ``config.json`` with
LLaDA's key names and PyTorch's [out, in] layout, so the (adapted) model loads back
into PyTorch; a checkpoint with DSL parameters also gets ``noise_embed.weight``,
``converter.{beta, logit_bias, backbone_embedding.weight, backbone_embedding.bias}`` and
``log_snr_max`` (log of its ``snr_max``, a float32 scalar, as the authors' saves hold it),
and one with the residual path (``dsl.residual``) ``converter.residual_proj.{weight, bias}``.
``copy_from`` (``--copy-from HF_DIR``, the folder the checkpoint was converted from) adds
what is not weights: its remote code (``*.py``), ``generation_config.json``, tokenizer
files, model card..., and its own ``config.json`` once that is checked to describe the
same model, so the folder loads in ``transformers`` as the original does.
Parameters are restored one at a time as host arrays and written at their offsets in
pre-planned shard files, so memory peaks near one (stacked) parameter. Output goes to
a temporary sibling directory renamed into place at the end. Either side may be on a
bucket (``gs://...``); for a bucket every shard is staged in a local temporary file
(local disk holds the whole export once) and uploaded at the end.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from dsl_jax import storage
from dsl_jax.conversion import keymap
from dsl_jax.errors import UserError, require

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
# Weight files and their indexes: never copied by ``copy_from`` (export writes its own).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf",
                   ".onnx", ".npz", ".index.json")


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


def companion_files(hf_dir: str, cfg) -> dict[str, str]:
    """name -> path of the files of ``hf_dir`` that :func:`export` copies with
    ``copy_from``: every top-level file that is not a weight file, an index or hidden
    (``config.json`` included, after checking that it describes ``cfg``: the same
    architecture field for field, weights aside). Checked before anything is written."""
    from dsl_jax.config import ModelConfig

    require(storage.isdir(hf_dir), f"{hf_dir}: no such directory")
    config_path = storage.join(hf_dir, "config.json")
    require(storage.isfile(config_path), f"{config_path}: missing config.json")
    theirs = ModelConfig.from_hf_json(config_path).to_hf_dict()
    ours = cfg.to_hf_dict()
    differ = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    if differ:
        k = differ[0]
        raise UserError(f"{config_path}: describes another model than the checkpoint ({k}: "
                        f"{theirs.get(k)!r} there, {ours.get(k)!r} in the checkpoint)")
    out = {}
    for name in sorted(storage.listdir(hf_dir)):
        path = storage.join(hf_dir, name)
        if name.startswith(".") or is_weight_file(name) or not storage.isfile(path):
            continue
        out[name] = path
    return out


def export(ckpt: str, hf_dir: str, overwrite: bool = False,
           max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, progress: bool = True,
           copy_from: str | None = None) -> dict:
    """Write checkpoint ``ckpt`` as a Hugging Face LLaDA directory ``hf_dir``; with
    ``copy_from`` (a Hugging Face folder of the same model) also its companion files
    (:func:`companion_files`), byte for byte.

    Returns a summary dict: tensors, bytes, files, seconds, peak_rss_bytes, out, dsl,
    copied (the names copied from ``copy_from``).
    """
    from tqdm import tqdm

    from dsl_jax.conversion.convert import peak_rss_bytes
    from dsl_jax.conversion.hf_io import INDEX_FILE, SafetensorsWriter, plan_shards, shard_name
    from dsl_jax import checkpoint

    import jax

    require(jax.process_count() == 1, "export writes from one process: run it on one host "
            "(not under dsl-jax launch or pod-sim)")
    t0 = time.perf_counter()
    require(max_shard_bytes > 0, f"--max-shard-bytes must be positive, got {max_shard_bytes}")
    storage.check_output_apart(hf_dir, {"--ckpt": ckpt, "--copy-from": copy_from}, "--hf")
    meta = checkpoint.read_meta(ckpt)
    out = checkpoint.check_target(hf_dir, overwrite, marker="config.json")
    cfg = checkpoint.model_config(meta, source=storage.join(ckpt, checkpoint.META_FILE))
    dsl = checkpoint.dsl_config(meta)
    copied = companion_files(copy_from, cfg) if copy_from else {}
    # No mesh: each parameter is restored as a host numpy array.
    target = checkpoint.abstract_params(cfg, dsl)

    # torch key -> (group path, layer or None, entry)
    items: list[tuple[str, tuple, int | None, object]] = []
    for key in keymap.torch_keys(cfg):
        entry, layer = keymap.lookup(key)
        items.append((key, ("model",) + entry.jax_path, layer, entry))
    if dsl is not None:
        for key, entry in keymap.dsl_entries(dsl.residual).items():
            items.append((key, ("dsl",) + entry.jax_path, None, entry))
    entries = []
    for key, path, layer, entry in items:
        sds = keymap.get_path(target, path)
        shape = sds.shape[1:] if layer is not None else sds.shape
        tshape = tuple(entry.to_torch(np.empty(shape, np.uint8), cfg).shape)
        entries.append((key, np.dtype(sds.dtype), tshape))
    log_snr_max = keymap.log_snr_max_tensor(dsl.snr_max) if dsl is not None else None
    if log_snr_max is not None:
        entries.append((keymap.LOG_SNR_MAX, log_snr_max.dtype, log_snr_max.shape))
    shards = plan_shards(entries, max_shard_bytes)
    names = [shard_name(i, len(shards)) for i in range(len(shards))]
    file_of = {key: i for i, shard in enumerate(shards) for key, _, _ in shard}
    total = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for _, d, s in entries)

    by_param: dict[tuple, list] = {}
    for key, path, layer, entry in items:
        by_param.setdefault(path, []).append((key, layer, entry))

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="export",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    writers = []
    done = 0
    try:
        # config.json last: on a bucket, where the move is object by object, a directory
        # without it is not read as a Hugging Face checkpoint.
        with checkpoint.atomic_dir(out, overwrite, marker="config.json") as tmp:
            writers = [SafetensorsWriter(storage.join(tmp, n), s) for n, s in zip(names, shards)]
            for path, keys in by_param.items():
                part_target = keymap.nest(path, keymap.get_path(target, path))
                value = keymap.get_path(checkpoint.restore(ckpt, part_target), path)
                for key, layer, entry in keys:
                    part = value if layer is None else value[layer]
                    writers[file_of[key]].write_rows(key, entry.to_torch(part, cfg))
                    done += 1
                    bar.update(part.nbytes)
                    bar.set_postfix_str(f"tensors {done}/{len(entries)}", refresh=False)
                del value
            if log_snr_max is not None:
                writers[file_of[keymap.LOG_SNR_MAX]].write(keymap.LOG_SNR_MAX, log_snr_max)
                done += 1
                bar.update(log_snr_max.nbytes)
            for w in writers:
                w.close()
            writers = []
            index = {"metadata": {"total_size": total},
                     "weight_map": {key: names[file_of[key]] for key, _, _ in entries}}
            storage.write_text(storage.join(tmp, INDEX_FILE), json.dumps(index, indent=2))
            for name, src in copied.items():
                if name != "config.json":
                    with storage.user_errors(src):
                        storage.write_bytes(storage.join(tmp, name), storage.read_bytes(src))
            if "config.json" in copied:  # the source's own, checked to match
                with storage.user_errors(copied["config.json"]):
                    storage.write_bytes(storage.join(tmp, "config.json"),
                                        storage.read_bytes(copied["config.json"]))
            else:
                storage.write_text(storage.join(tmp, "config.json"),
                                   json.dumps(cfg.to_hf_dict(), indent=2))
    finally:
        bar.close()
        for w in writers:
            w.discard()
    return {"out": out, "tensors": done, "bytes": total, "files": len(names),
            "seconds": time.perf_counter() - t0, "peak_rss_bytes": peak_rss_bytes(),
            "dsl": dsl is not None, "copied": sorted(copied)}
