"""``dsl-jax convert``: a Hugging Face LLaDA / DSL-LLaDA checkpoint -> a sharded orbax checkpoint.

Streaming: every input file's header is read and checked first (keys, shapes against
``config.json``, truncation), before anything is written. Then each parameter of the
dsl-jax model is assembled on its own: its device shards are filled from lazily read
tensors (layer by layer for the stacked ``blocks/*``; a layer's tensors may live in
different shards, the index decides), put onto the mesh with the parameter's
sharding, written with ``dsl_jax.checkpoint.save_pieces``, and freed. Host memory peaks near one
parameter (the larger of the largest tensor and the largest stacked parameter)
plus fixed overhead, never the whole checkpoint; on accelerators stacked parameters
are built on the devices one layer at a time, so the host holds one layer's tensor. Everything goes into a temporary
sibling directory renamed into place at the end: the output is complete or absent.

Also reads the released DSL-LLaDA checkpoints: the LLaDA keys plus
``noise_embed.weight`` and ``converter.{beta, logit_bias, backbone_embedding.*}``,
stored in the checkpoint's ``dsl`` group (``dsl_jax.load`` gives them as a ``DSLModel``),
the "Highpass" release's ``converter.residual_proj.*`` (``dsl.residual``), and the
authors' trained saves, which also hold ``log_snr_max`` (the checkpoint's ``snr_max``)
and sometimes ``converter.embed.weight`` (an alias of the noise embedding).

The tokenizer files (``tokenizer.json``, ``tokenizer_config.json`` with its chat
template, ...) of the Hugging Face folder, or of another one, are copied into the
checkpoint (docs/checkpoint.md section 3).
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from dsl_jax import storage
from dsl_jax.conversion import keymap
from dsl_jax.errors import UserError, require

CHUNK_BYTES = 64 * 1024 * 1024  # rows of a 2-D tensor are read in chunks of about this size
TRANSPOSE_CHUNK_BYTES = 8 * 1024 * 1024  # smaller chunks when transposing (cache friendly)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, from the OS.

    Linux: ``VmHWM`` of /proc/self/status (the peak of this process image; unlike
    ru_maxrss it does not include the parent's size at fork). Else ru_maxrss.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ---- planning: which tensor fills which parameter ---------------------------------------


def plan(hf, cfg):
    """Check the source's keys and shapes against ``cfg``.

    Returns (llada, dsl, noise_dim, extra): ``llada`` maps a LLaDA key to its TensorRef;
    ``dsl`` is the same for DSL keys, the residual path's included when present (None for
    a plain LLaDA checkpoint; :func:`has_residual` tells the "Highpass" variant); ``extra`` holds
    the authors' ``log_snr_max`` and ``converter.embed.weight`` when present (read by
    :func:`read_extras`). A save holding the alias but not ``noise_embed.weight`` has the
    alias read as the noise embedding.
    """

    llada, dsl, extra = {}, {}, {}
    for key, ref in hf.tensors.items():
        if key in (keymap.LOG_SNR_MAX, keymap.EMBED_ALIAS):
            extra[key] = ref
            continue
        found = keymap.lookup(key)
        if found is not None:
            entry, layer = found
            require(layer is None or layer < cfg.n_layers,
                    f"{ref.path}: unexpected key {key} (config.json has n_layers {cfg.n_layers})")
            llada[key] = ref
            continue
        require(key in keymap.DSL or key in keymap.DSL_RESIDUAL,
                f"{ref.path}: unexpected key {key}")
        dsl[key] = ref
    missing = [k for k in keymap.torch_keys(cfg) if k not in llada]
    if missing:
        raise UserError(f"{hf.dir}: missing key {missing[0]}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    alias = extra.get(keymap.EMBED_ALIAS)
    if alias is not None and "noise_embed.weight" not in dsl:
        dsl["noise_embed.weight"] = alias
    if extra and not dsl:
        ref = next(iter(extra.values()))
        raise UserError(f"{ref.path}: key {ref.key} without the DSL parameters "
                        "(noise_embed.weight, converter.*)")
    noise_dim = None
    if dsl:
        # The residual path's two keys come together (the "Highpass" release) or not at all.
        residual = any(k in dsl for k in keymap.DSL_RESIDUAL)
        missing = [k for k in keymap.dsl_entries(residual) if k not in dsl]
        if missing:
            raise UserError(f"{hf.dir}: DSL checkpoint is missing key {missing[0]}")
        ne = dsl["noise_embed.weight"]
        require(len(ne.shape) == 2 and ne.shape[1] > 0,
                f"{ne.path}: tensor noise_embed.weight has shape {list(ne.shape)}, expected "
                f"[{cfg.vocab_size}, noise_dim]")
        noise_dim = ne.shape[1]
    from dsl_jax.conversion.hf_io import require_float
    for ref in (*llada.values(), *dsl.values(), *extra.values()):
        require_float(ref)
    for key, ref in {**llada, **dsl}.items():
        entry = keymap.lookup(key)[0] if key in llada else keymap.dsl_entries(True)[key]
        want = tuple(noise_dim if s is None else s for s in entry.torch_shape(cfg))
        got = ref.shape
        if key == "converter.beta" and got == (1,):
            got = ()
        require(got == want, f"{ref.path}: tensor {key} has shape {list(ref.shape)} but "
                             f"config.json implies {list(want)}")
    if alias is not None:
        ne = dsl["noise_embed.weight"]
        require(alias.shape == ne.shape, f"{alias.path}: tensor {keymap.EMBED_ALIAS} has shape "
                f"{list(alias.shape)} but noise_embed.weight has {list(ne.shape)}")
    ref = extra.get(keymap.LOG_SNR_MAX)
    if ref is not None:
        require(ref.shape in ((), (1,)), f"{ref.path}: tensor {keymap.LOG_SNR_MAX} has shape "
                f"{list(ref.shape)}, expected [] (a scalar)")
    return llada, (dsl or None), noise_dim, extra


def has_residual(dsl: dict | None) -> bool:
    """Whether :func:`plan`'s ``dsl`` keys hold the converter's residual path."""
    return bool(dsl) and all(k in dsl for k in keymap.DSL_RESIDUAL)


def read_extras(extra: dict, dsl: dict | None) -> tuple[float | None, list[str]]:
    """(snr_max, notes) from the extra keys :func:`plan` found.

    ``log_snr_max`` gives the checkpoint's s_max (:func:`keymap.snr_max_from_log`);
    ``converter.embed.weight`` is ignored when it equals ``noise_embed.weight`` and
    refused when it differs (dsl-jax's converter and noising share one embedding).
    ``notes`` says in a few words what was read, for the command to print.
    """
    snr_max, notes = None, []
    ref = extra.get(keymap.LOG_SNR_MAX)
    if ref is not None:
        value = ref.read()
        v = float(value.astype(np.float64).reshape(-1)[0])
        require(bool(np.isfinite(v)), f"{ref.path}: {keymap.LOG_SNR_MAX} is {v}, not finite")
        require(abs(v) <= 50, f"{ref.path}: {keymap.LOG_SNR_MAX} is {v}: an SNR maximum of "
                f"exp({v:g}) is out of range")
        snr_max = keymap.snr_max_from_log(value)
        notes.append(f"read {keymap.LOG_SNR_MAX}: snr_max = {snr_max:g}")
    alias = extra.get(keymap.EMBED_ALIAS)
    if alias is not None:
        ne = dsl["noise_embed.weight"]
        if ne is alias:
            notes.append(f"read {keymap.EMBED_ALIAS} as noise_embed.weight")
        else:
            a, b = alias.read().astype(np.float32), ne.read().astype(np.float32)
            if not np.array_equal(a, b):
                raise UserError(f"{alias.path}: {keymap.EMBED_ALIAS} differs from "
                                f"noise_embed.weight (max abs diff "
                                f"{float(np.nanmax(np.abs(a - b))):.3g}); dsl-jax's converter "
                                "and noising use one embedding")
            notes.append(f"ignored {keymap.EMBED_ALIAS} (alias of noise_embed.weight)")
            del a, b
    return snr_max, notes


# ---- assembling one parameter into its device shards ------------------------------------


def _norm_index(index, shape):
    return tuple((s.indices(n)[0], s.indices(n)[1]) for s, n in zip(index, shape))


def aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """An uninitialised array whose data is ``align``-byte aligned (so that
    ``jax.device_put`` on CPU can use the buffer without copying it)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + n].view(dtype).reshape(shape)


def fill_jax_layout(out, ref, entry, cfg, index):
    """Write tensor ``ref`` in dsl-jax layout, only its part ``index`` (tuple of slices),
    into ``out`` (cast to ``out.dtype``).

    2-D tensors that are kept as they are or transposed (embeddings, LM head, MLP
    weights) are read in row chunks, only the rows needed, straight into ``out`` when
    no cast or column slice is needed; other tensors (per-layer attention weights,
    vectors) are read whole and rearranged.
    """

    if len(ref.shape) == 2 and entry.to_jax in (keymap._same, keymap._t):
        transposed = entry.to_jax is keymap._t
        rows_idx, cols_idx = (index[1], index[0]) if transposed else (index[0], index[1])
        r0, r1, _ = rows_idx.indices(ref.shape[0])
        c0, c1, _ = cols_idx.indices(ref.shape[1])
        row_bytes = ref.shape[1] * ref.dtype.itemsize
        direct = (not transposed and c0 == 0 and c1 == ref.shape[1] and out.dtype == ref.dtype
                  and out.flags.c_contiguous)
        chunk = (CHUNK_BYTES if not transposed else TRANSPOSE_CHUNK_BYTES) // max(1, row_bytes)
        step = max(1, chunk)
        for a in range(r0, r1, step):
            b = min(r1, a + step)
            if direct:
                ref.read(rows=slice(a, b), out=out[a - r0:b - r0])
                continue
            part = ref.read(rows=slice(a, b))[:, c0:c1]
            if transposed:
                out[:, a - r0:b - r0] = part.T
            else:
                out[a - r0:b - r0] = part
            del part
        return
    value = ref.read()
    if value.ndim == 1 and value.shape == (1,) and not entry.torch_shape(cfg):
        value = value.reshape(())
    out[...] = entry.to_jax(value, cfg)[index]


def assemble(sds, sources, cfg, on_tensor, stacked: bool):
    """A jax.Array for one parameter: ``sds`` gives shape, dtype and sharding.

    ``sources`` is [(ref, entry)] for a whole tensor, or one per layer for a stacked
    parameter (leading ``layers`` axis). Each distinct device shard is filled once in
    host memory, straight from the files, then put on its devices (on CPU devices
    without a copy: the buffers are aligned).
    """
    import jax

    shape, dtype, sharding = tuple(sds.shape), np.dtype(sds.dtype), sds.sharding
    index_map = sharding.addressable_devices_indices_map(shape)
    buffers: dict = {}
    for device, index in index_map.items():
        key = _norm_index(index, shape)
        if key not in buffers:
            buffers[key] = (tuple(slice(a, b) for a, b in key),
                            aligned_empty(tuple(b - a for a, b in key), dtype))
    if not stacked:
        ref, entry = sources[0]
        for index, buf in buffers.values():
            fill_jax_layout(buf, ref, entry, cfg, index)
        on_tensor(ref)
    else:
        for layer, (ref, entry) in enumerate(sources):
            for idx, buf in buffers.values():
                if idx[0].start <= layer < idx[0].stop:
                    fill_jax_layout(buf[layer - idx[0].start], ref, entry, cfg, idx[1:])
            on_tensor(ref)
    arrays = [jax.device_put(buffers[_norm_index(index, shape)][1], device)
              for device, index in index_map.items()]
    out = jax.make_array_from_single_device_arrays(shape, sharding, arrays)
    del arrays, buffers
    return out


def assemble_layerwise(sds, sources, cfg, on_tensor):
    """A stacked parameter built on the devices one layer at a time.

    Each layer's shards are filled on the host and put on the devices, then written
    into the stacked device array with a donated in-place update: host memory holds
    one layer's tensor, device memory the parameter plus one layer. This is the path
    for accelerators, where device memory is not host memory.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    shape, dtype, sharding = tuple(sds.shape), np.dtype(sds.dtype), sds.sharding
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    if spec[0] is not None:  # the layers axis itself is sharded: fill shards on the host
        return assemble(sds, sources, cfg, on_tensor, stacked=True)
    layer = jax.ShapeDtypeStruct(shape[1:], dtype,
                                 sharding=NamedSharding(sharding.mesh, P(*spec[1:])))
    acc = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
    update = jax.jit(lambda a, x, i: jax.lax.dynamic_update_index_in_dim(a, x, i, 0),
                     donate_argnums=0, out_shardings=sharding)
    for i, source in enumerate(sources):
        x = assemble(layer, [source], cfg, on_tensor, stacked=False)
        acc = update(acc, x, i)
        del x
    return acc


# ---- the conversion ----------------------------------------------------------------------


def tokenizer_sources(hf_dir: str, tokenizer_dir: str | None, vocab_size: int
                      ) -> tuple[dict[str, str], str]:
    """(name -> path, note): the tokenizer files :func:`convert` copies into the
    checkpoint (:data:`dsl_jax.tokenizer.TOKENIZER_FILES` found in ``tokenizer_dir``, by
    default ``hf_dir``), checked first: the tokenizer loads with LLaDA's special tokens,
    its ids fit the model's vocabulary and its chat template compiles. A named
    ``tokenizer_dir`` must hold a ``tokenizer.json``; ``hf_dir`` may have none, which the
    note then says."""
    from dsl_jax.tokenizer import Tokenizer, tokenizer_files

    where = tokenizer_dir or hf_dir
    require(storage.isdir(where), f"{where}: no such directory")
    files = tokenizer_files(where)
    if "tokenizer.json" not in files:
        require(tokenizer_dir is None, f"{where}: no tokenizer.json")
        return {}, (f"no tokenizer.json in {where}: pass --tokenizer DIR (e.g. LLaDA-8B-Instruct's "
                    "folder) to put one in the checkpoint")
    tok = Tokenizer.from_file(files["tokenizer.json"])
    require(tok.vocab_size <= vocab_size, f"{files['tokenizer.json']}: {tok.vocab_size} tokens, "
            f"more than the model's vocabulary of {vocab_size}")
    if tok.chat_template is not None:
        tok.chat_template.compile()
    template = " and its chat template" if tok.chat_template is not None else ""
    return files, f"copied {', '.join(files)}{template}"


def convert(hf_dir: str, out: str, dtype: str = "bfloat16", mesh=None, overwrite: bool = False,
            progress: bool = True, layerwise: bool | None = None,
            tokenizer_dir: str | None = None) -> dict:
    """Convert a Hugging Face LLaDA (or DSL-LLaDA) directory into a dsl-jax checkpoint ``out``.

    ``dtype`` is the stored parameter dtype (``bfloat16`` or ``float32``; the DSL
    noise embedding, ``beta`` and ``logit_bias`` stay float32 as in the model).
    ``mesh`` is where the parameters are assembled (default: the current mesh or all
    devices on ``fsdp``). ``layerwise`` builds stacked parameters on the devices one
    layer at a time (host memory: one layer's tensor); the default is on for
    accelerators and off for CPU devices, whose memory is host memory (there each
    stacked parameter is filled in host buffers that become the device arrays
    without a copy). The authors' ``log_snr_max`` sets the checkpoint's
    ``dsl.snr_max`` and their ``converter.embed.weight`` alias is checked and skipped
    (:func:`read_extras`); ``converter.residual_proj.*`` (the "Highpass" release) sets
    ``dsl.residual``. The tokenizer files of ``tokenizer_dir`` (default ``hf_dir``) are
    checked before anything is written and copied into the checkpoint
    (:func:`tokenizer_sources`), where ``train``, ``sample`` and ``eval`` look for them.
    Returns a summary dict: tensors, bytes, seconds,
    peak_rss_bytes, largest_tensor_bytes, largest_param_bytes, out, dsl, residual,
    snr_max (the checkpoint's, None without DSL parameters), notes (what was read besides
    the parameters, a few words each), tokenizer_files (the names copied),
    tokenizer_note (one line on them), mesh.
    """
    import jax
    from tqdm import tqdm

    from dsl_jax.conversion.hf_io import HFCheckpoint
    from dsl_jax import checkpoint
    from dsl_jax.config import ModelConfig
    from dsl_jax.dsl import DSLConfig

    t0 = time.perf_counter()
    require(dtype in ("bfloat16", "float32"), f"--dtype must be bfloat16 or float32, got {dtype!r}")
    storage.check_output_apart(out, {"--hf": hf_dir, "--tokenizer": tokenizer_dir}, "--out")
    out = checkpoint.check_target(out, overwrite)
    hf = HFCheckpoint(hf_dir)
    cfg = ModelConfig.from_hf_json(hf.config_path, param_dtype=dtype, dtype=dtype)
    llada, dsl, noise_dim, extra = plan(hf, cfg)
    used = {**llada, **(dsl or {})}
    snr_max, notes = read_extras(extra, dsl)
    tok_files, tok_note = tokenizer_sources(hf_dir, tokenizer_dir, cfg.vocab_size)
    if mesh is None:
        mesh = checkpoint.current_mesh_or_default()
    if layerwise is None:
        layerwise = mesh.devices.flat[0].platform != "cpu"

    dsl_cfg = None
    if dsl:
        dsl_cfg = DSLConfig(noise_dim=noise_dim, residual=has_residual(dsl),
                            **({} if snr_max is None else {"snr_max": snr_max}))
    target = checkpoint.abstract_params(cfg, dsl_cfg, mesh)

    # (group, path in group) -> [(ref, entry)] (one per layer for stacked parameters)
    jobs: dict[tuple, list] = {}
    for key in keymap.torch_keys(cfg):
        entry, layer = keymap.lookup(key)
        jobs.setdefault(("model",) + entry.jax_path, []).append((llada[key], entry))
    for key, entry in (keymap.dsl_entries(dsl_cfg.residual).items() if dsl else ()):
        jobs[("dsl",) + entry.jax_path] = [(dsl[key], entry)]
    flat_target = {path: keymap.get_path(target, path) for path in jobs}
    leaves = {tuple(str(getattr(k, "key", k)) for k in p): v for p, v in
              jax.tree_util.tree_flatten_with_path(target)[0]}
    require(set(leaves) == set(jobs), "internal: the key map does not cover the model's parameters: "
            f"{sorted(set(leaves) ^ set(jobs))[:3]}")

    total = sum(ref.nbytes for ref in used.values())
    largest_tensor = max(r.nbytes for r in used.values())
    largest_param = max(int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize
                        for s in flat_target.values())
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="convert",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    done = {"tensors": 0}

    def on_tensor(ref):
        done["tensors"] += 1
        bar.update(ref.nbytes)
        bar.set_postfix_str(f"tensors {done['tensors']}/{len(used)}", refresh=False)

    meta = checkpoint.make_meta(cfg, dsl_cfg.to_dict() if dsl_cfg else None,
                                source={"hf_dir": storage.abspath(hf_dir),
                                        "dsl": bool(dsl)})
    def pieces():
        # Largest parameters first: the peak is then reached early and stays put. Each
        # array is handed over without a reference kept here, so it is freed once saved.
        for path in sorted(jobs, key=lambda p: -int(np.prod(flat_target[p].shape, dtype=np.int64))):
            stacked = path[:2] == ("model", "blocks")
            if stacked and layerwise:
                yield keymap.nest(path, assemble_layerwise(flat_target[path], jobs[path], cfg,
                                                           on_tensor))
            else:
                yield keymap.nest(path, assemble(flat_target[path], jobs[path], cfg, on_tensor,
                                                 stacked=stacked))

    try:
        checkpoint.save_pieces(out, pieces(), meta, overwrite=overwrite)
    finally:
        bar.close()
    if tok_files and jax.process_index() == 0:
        # Beside the finished checkpoint, where train/sample/eval look (CKPT/tokenizer.json).
        for name, src in tok_files.items():
            with storage.user_errors(src):
                storage.write_bytes(storage.join(out, name), storage.read_bytes(src))
    seconds = time.perf_counter() - t0
    return {"out": out, "tensors": done["tensors"], "bytes": total, "seconds": seconds,
            "peak_rss_bytes": peak_rss_bytes(), "largest_tensor_bytes": largest_tensor,
            "largest_param_bytes": largest_param, "dsl": bool(dsl),
            "residual": bool(dsl_cfg and dsl_cfg.residual), "tokenizer_files": sorted(tok_files),
            "tokenizer_note": tok_note,
            "snr_max": dsl_cfg.snr_max if dsl_cfg else None, "notes": notes,
            "mesh": dict(zip(mesh.axis_names, (int(s) for s in mesh.axis_sizes)))}
