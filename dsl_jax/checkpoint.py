"""The dsl-jax checkpoint directory, and ``dsl_jax.load``: the one module that writes,
reads and restores it.

A checkpoint written by ``dsl-jax convert`` (or by training) is a directory:

    CKPT/
      dsl_jax.json   {"format": "dsl-jax", "version": 1, "model": <LLaDA config.json dict>,
                      "run": {dtype, param_dtype, ...}, "dsl": <DSL fields or null>}
      params/        orbax checkpoint of {"model": <LLaDA params>, "dsl": <DSL params>?}

Parameters are stored as nested dicts of arrays keyed like the NNX module tree
(``model/blocks/wq`` ...). Restoring passes abstract arrays carrying the target
sharding, so a checkpoint written on one mesh restores onto any other.

Writing: ``save`` (a whole tree) or ``save_pieces`` (one piece at a time, so that
memory peaks near one parameter); both go through ``atomic_dir``, so the checkpoint is
complete or absent. Reading: ``read_meta``, ``restore`` (any part of the tree, down
to one parameter) and ``load`` (a model).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import tempfile
import time
import warnings
from typing import Any, Iterable, Iterator

import jax
from flax import nnx

from dsl_jax import storage
from dsl_jax.config import ModelConfig
from dsl_jax.errors import UserError, require
from dsl_jax.textfiles import read_json

META_FILE = "dsl_jax.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1
KINDS = ("llada", "dsl", "auto")
GC_BYTES = 64 * 1024 * 1024  # collect garbage after saving or restoring arrays this large


# ---- the directory -----------------------------------------------------------------------

def is_checkpoint(path: str) -> bool:
    """A complete checkpoint: its ``dsl_jax.json`` is written last (on a bucket too)."""
    return storage.isfile(storage.join(path, META_FILE))


def check_target(path: str, overwrite: bool, marker: str = META_FILE) -> str:
    """``path`` made absolute (a bucket path as given); an error when it exists and
    ``overwrite`` is off, or when its bucket does not exist. What a killed replacement
    of ``path`` left (see :func:`recover`) is settled first."""
    path = storage.abspath(path)
    storage.require_bucket(path)
    if jax.process_index() == 0:
        recover(path, marker)
    if storage.exists(path) and not overwrite:
        what = "already holds a dsl-jax checkpoint" if is_checkpoint(path) else "already exists"
        raise UserError(f"{path}: {what}; pass --overwrite to replace it")
    return path


def sync_hosts(name: str) -> None:
    """Wait until every process of a multi-process run has reached the point ``name``
    (the same name on every process); nothing for a single process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def temp_dir_for(path: str) -> str:
    """The temporary directory a save to ``path`` writes in: named after ``path`` alone,
    so that every host of a run agrees on it without talking, and a save that died
    leaves it where the next save to ``path`` finds (and removes) it."""
    parent, name = _split(path)
    return storage.join(parent, f".{name}.tmp")


def aside_for(path: str) -> str:
    """Where replacing ``path`` moves the old output (``.NAME.old`` beside it) until the
    new one is in place."""
    parent, name = _split(path)
    return storage.join(parent, f".{name}.old")


def _complete(path: str, marker: str | None) -> bool:
    """Whether ``path`` holds a whole output: locally anything there (every move is one
    rename); on a bucket, its ``marker`` file (copied last)."""
    if not storage.is_remote(path):
        return os.path.lexists(path)
    return storage.isfile(storage.join(path, marker)) if marker else storage.exists(path)


def recover(path: str, marker: str | None = META_FILE) -> None:
    """Settle what a replacement of ``path`` killed midway left: the old output moved
    aside (:func:`aside_for`) is removed when a whole new one is at ``path``, else put
    back (the run that was killed changed nothing); and the temporary directory
    (:func:`temp_dir_for`) is removed."""
    aside = aside_for(path)
    if storage.exists(aside):
        if _complete(path, marker) or not _complete(aside, marker):
            _remove(aside)
        elif storage.is_remote(path):
            _move_remote(aside, path, marker)
        else:
            os.replace(aside, path)
    _remove(temp_dir_for(path))


def _remove(path: str) -> None:
    """Delete the file, link or directory ``path`` (local or remote); missing is fine."""
    if storage.is_remote(path):
        storage.rmtree(path)
        storage.remove(path)
    elif os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _split(path: str) -> tuple[str, str]:
    """(parent directory, name) of an absolute local path or a bucket path."""
    parent, name = str(path).rstrip("/").rsplit("/", 1)
    return parent, name


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False, marker: str | None = None) -> Iterator[str]:
    """A new temporary directory beside ``path``, moved to ``path`` (replacing what is
    there, which needs ``overwrite``) when the block ends without error and removed
    when it raises: locally ``path`` ends up complete or as it was. The temporary name
    depends on ``path`` only (see :func:`temp_dir_for`), so two concurrent saves to one
    ``path`` are not supported.

    On several processes every one enters the block with the same ``path`` and writes
    its share under the same temporary directory (:func:`temp_dir_for`); the lead host
    (process 0) prepares it, and commits only once every host has left the block
    (:func:`sync_hosts`), and no host returns before the commit. Writes that only one
    host should make (metadata) are the caller's to guard with ``jax.process_index()``.
    A host that dies leaves no ``path``, only the temporary directory, which the next
    save to ``path`` removes first. On a bucket the move copies objects one by one (not
    atomic): ``marker``, the file that tells a complete directory (``dsl_jax.json``), is
    then written last. Replacing an output moves the old one aside and deletes it only
    once the new one is in place (:func:`_commit`); a kill at any point leaves the old
    output or the new one, whole, and the next save to (or check of) ``path`` settles
    what was left (:func:`recover`).
    """
    path = check_target(path, overwrite, marker)  # (removes what a save that died left)
    lead = jax.process_index() == 0
    tmp = temp_dir_for(path)
    if lead:
        storage.makedirs(_split(path)[0])
        storage.makedirs(tmp)
    sync_hosts(f"dsl_jax.atomic_dir.begin:{path}")
    try:
        with _named_as_output(tmp, path):  # a failed write (a full disk) names the output
            yield tmp
    except BaseException:
        if lead:  # (a multi-process run's other hosts stop too, or wait for the commit)
            storage.rmtree(tmp)
        raise
    sync_hosts(f"dsl_jax.atomic_dir.written:{path}")
    if lead:
        try:
            with storage.named_errors(path):
                _commit(tmp, path, marker)
        finally:
            storage.rmtree(tmp)
    sync_hosts(f"dsl_jax.atomic_dir.committed:{path}")


@contextlib.contextmanager
def _named_as_output(tmp: str, path: str) -> Iterator[None]:
    """An OSError in the block names the output ``path`` (the file under it) rather than
    the temporary directory ``tmp`` it was written in, or ``path`` when it names none."""
    try:
        yield
    except OSError as e:
        name = None if e.filename is None else str(e.filename)
        if (name is None and e.errno is not None) or (
                name is not None and (name == tmp or name.startswith(tmp + "/"))):
            e.filename = path if name is None else path + name[len(tmp):]
        raise


def _commit(tmp: str, path: str, marker: str | None) -> None:
    """Move the written directory ``tmp`` to ``path``. An output already there is moved
    aside first (:func:`aside_for`) and deleted only once the new one is in place, so
    a kill at any point leaves a whole old or new output (see :func:`recover`)."""
    aside = aside_for(path)
    _remove(aside)
    if not storage.is_remote(path):
        if os.path.lexists(path):
            os.replace(path, aside)
        os.replace(tmp, path)
        _remove(aside)
        return
    if storage.exists(path):
        _move_remote(path, aside, marker)
    _move_remote(tmp, path, marker)
    _remove(aside)


def _move_remote(src: str, dst: str, marker: str | None) -> None:
    """Copy directory ``src`` over ``dst`` (emptied first) object by object, ``marker``
    last, then delete ``src``, its marker first: at every moment one of the two holds
    a whole copy with its marker."""
    _remove(dst)
    storage.copytree(src, dst, last=marker)
    if marker:
        storage.remove(storage.join(src, marker))
    storage.rmtree(src)


# ---- metadata ----------------------------------------------------------------------------

def make_meta(cfg: ModelConfig, dsl: dict | None = None, **extra: Any) -> dict:
    return {"format": "dsl-jax", "version": FORMAT_VERSION, "model": cfg.to_hf_dict(),
            "run": cfg.run_fields(), "dsl": dsl, **extra}


def _write_meta(directory: str, meta: dict, extra_files: dict[str, str] | None) -> None:
    """``extra_files`` first, ``dsl_jax.json`` last: the file that marks a complete
    checkpoint (:func:`is_checkpoint`)."""
    for name, src in (extra_files or {}).items():
        with storage.user_errors(src):
            storage.write_bytes(storage.join(directory, name), storage.read_bytes(src))
    storage.write_text(storage.join(directory, META_FILE), json.dumps(meta, indent=2))


def read_meta(path: str, kind: str = "auto", why: str = "") -> dict:
    """The checkpoint's ``dsl_jax.json``. ``kind="dsl"`` requires DSL parameters; the
    error then says ``why`` (what needs them, what to do instead) or how to get them."""
    require(kind in KINDS, f"checkpoint kind must be one of {', '.join(KINDS)}, got {kind!r}")
    meta_path = storage.join(path, META_FILE)
    if not storage.isfile(meta_path):
        require(storage.isdir(path), f"{path}: no such checkpoint directory")
        raise UserError(f"{path}: not a dsl-jax checkpoint (no {META_FILE}); write one with "
                        "'dsl-jax convert'")
    meta = read_json(meta_path, obj=True)
    require(meta.get("format") == "dsl-jax", f"{meta_path}: not a dsl-jax checkpoint")
    require(meta.get("version") == FORMAT_VERSION,
            f"{meta_path}: checkpoint format version {meta.get('version')} is not supported "
            f"(this dsl-jax reads version {FORMAT_VERSION})")
    require(kind != "dsl" or meta.get("dsl") is not None,
            f"{path}: checkpoint has no DSL parameters (noise embedding and converter); "
            + (why or "convert a DSL-LLaDA checkpoint or train one with 'dsl-jax train'"))
    return meta


def model_config(meta: dict, source: str = META_FILE, **run: Any) -> ModelConfig:
    fields = {**meta.get("run", {}), **run}
    return ModelConfig.from_hf_dict(meta["model"], source=source, **fields)


def dsl_config(meta: dict):
    """The checkpoint's :class:`dsl_jax.dsl.DSLConfig`, or None without DSL parameters."""
    from dsl_jax.dsl import DSLConfig
    return DSLConfig.from_dict(meta["dsl"]) if meta.get("dsl") is not None else None


# ---- parameter trees ---------------------------------------------------------------------

def to_groups(pure: dict) -> dict:
    """A model's pure-dict state as the checkpoint's groups: ``{"model": LLaDA}`` or, for a
    DSLModel, ``{"model": its backbone, "dsl": the rest}``."""
    if "llada" not in pure:
        return {"model": pure}
    rest = dict(pure)
    return {"model": rest.pop("llada"), "dsl": rest}


def from_groups(groups: dict) -> dict:
    """The inverse of :func:`to_groups`."""
    return {"llada": groups["model"], **groups["dsl"]} if "dsl" in groups else groups["model"]


def abstract_model(cfg: ModelConfig, dsl=None, mesh=None):
    """(graphdef, abstract state) of a LLaDA (``dsl`` None) or a DSLModel; on ``mesh`` the
    leaves are ShapeDtypeStructs carrying the parameters' shardings, else none."""
    from dsl_jax.dsl import build_dsl
    from dsl_jax.model import build
    from dsl_jax.sharding import abstract_with_shardings

    builder = build(cfg) if dsl is None else build_dsl(cfg, dsl)
    if mesh is None:
        return nnx.split(nnx.eval_shape(builder))
    return abstract_with_shardings(builder, mesh)


def abstract_params(cfg: ModelConfig, dsl=None, mesh=None) -> dict:
    """The checkpoint's parameter groups as ShapeDtypeStructs (see :func:`abstract_model`)."""
    return to_groups(nnx.to_pure_dict(abstract_model(cfg, dsl, mesh)[1]))


# ---- writing -----------------------------------------------------------------------------

def save(path: str, params: dict, meta: dict, overwrite: bool = False,
         extra_files: dict[str, str] | None = None) -> None:
    """Write ``params`` (nested dict of arrays) and ``meta`` atomically to ``path``;
    ``extra_files`` maps names in the checkpoint to files copied in (a tokenizer.json)."""
    import orbax.checkpoint as ocp

    storage.bound_array_io_retries()
    with atomic_dir(path, overwrite, marker=META_FILE) as tmp:
        ckptr = ocp.StandardCheckpointer()  # every host writes its shards
        ckptr.save(storage.join(tmp, PARAMS_DIR), params)
        ckptr.wait_until_finished()
        if jax.process_index() == 0:
            _write_meta(tmp, meta, extra_files)


def save_pieces(path: str, pieces: Iterable[dict], meta: dict, overwrite: bool = False) -> None:
    """Write a checkpoint a piece at a time, so that memory holds one piece: ``pieces``
    yields parts of the parameter groups (nested dicts holding, say, one parameter,
    built when asked for) that together hold every parameter once. Atomic as
    :func:`save`. Arrays are stored uncompressed (compressing costs a copy and most of
    the time, and random-looking weights barely compress)."""
    from orbax.checkpoint import v1 as ocp1
    from orbax.checkpoint.experimental.v1 import partial

    storage.bound_array_io_retries()
    context = ocp1.Context()
    context.array.saving.use_compression = False

    def quietly(fn, *args):
        with warnings.catch_warnings(), context:
            warnings.simplefilter("ignore")
            fn(*args)

    remote = storage.is_remote(path)
    if remote and jax.process_count() > 1:
        # Orbax's partial saves rename directories, which a bucket cannot do, and a host's
        # local staging would hold its own shards only. On a pod the pieces (arrays
        # sharded over the pod's devices: a host holds its share, a fraction of the
        # checkpoint) are joined into one tree that every host writes at once.
        tree: dict = {}
        for piece in pieces:
            _merge(tree, piece)
        save(path, tree, meta, overwrite=overwrite)
        return
    with atomic_dir(path, overwrite, marker=META_FILE) as tmp, contextlib.ExitStack() as stack:
        # Orbax's partial saves cannot write to a bucket (they rename directories): for
        # one, the pieces are staged in a local temporary directory, removed whatever
        # happens, and the finished tree uploaded (local disk holds the checkpoint once).
        if remote:
            root = tempfile.mkdtemp(prefix="dsl-jax-pieces-")
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        staging = os.path.join(root, "_orbax") if remote else storage.join(tmp, "_orbax")
        for piece in pieces:
            quietly(partial.save, staging, piece)
            big = sum(x.nbytes for x in jax.tree.leaves(piece)) > GC_BYTES
            del piece
            if big:
                gc.collect()  # orbax's save leaves reference cycles that hold the arrays
        quietly(partial.finalize, staging)
        sync_hosts(f"dsl_jax.save_pieces.finalized:{path}")
        if jax.process_index() != 0:
            return  # the lead host lays the tree out and writes the metadata
        params_dir = storage.join(tmp, PARAMS_DIR)
        if remote:
            storage.copytree(os.path.join(staging, "state"), params_dir)
        else:
            storage.replace_dir(storage.join(staging, "state"), params_dir)
            storage.rmtree(staging)
        # The checkpoint-level file ``save`` (StandardCheckpointer) writes beside the tree.
        now = time.time_ns()
        storage.write_text(storage.join(params_dir, "_CHECKPOINT_METADATA"), json.dumps(
            {"item_handlers": "orbax.checkpoint._src.handlers.standard_checkpoint_"
                              "handler.StandardCheckpointHandler", "metrics": {},
             "performance_metrics": {}, "init_timestamp_nsecs": now,
             "commit_timestamp_nsecs": now, "custom_metadata": {}}))
        if remote:  # the file by which orbax tells a finished tree on a bucket
            storage.write_text(storage.join(params_dir, "commit_success.txt"),
                               f"Checkpoint commit was successful to {params_dir}")
        _write_meta(tmp, meta, None)


def _merge(into: dict, piece: dict) -> None:
    """Add the leaves of nested dict ``piece`` to nested dict ``into``."""
    for k, v in piece.items():
        if isinstance(v, dict):
            _merge(into.setdefault(k, {}), v)
        else:
            into[k] = v


def save_model(path: str, model, overwrite: bool = False,
               extra_files: dict[str, str] | None = None) -> None:
    """Save a :class:`LLaDA` or a :class:`DSLModel` as a dsl-jax checkpoint."""
    dsl = getattr(model, "dsl", None)
    meta = make_meta(model.cfg, dsl.to_dict() if dsl is not None else None)
    save(path, to_groups(nnx.to_pure_dict(nnx.state(model))), meta, overwrite=overwrite,
         extra_files=extra_files)


# ---- reading -----------------------------------------------------------------------------

def restore(path: str, target: dict) -> dict:
    """The arrays of ``target`` read from checkpoint ``path``.

    ``target`` is a nested dict of ShapeDtypeStructs under the groups (``model``,
    ``dsl``): all the parameters, or any part of them down to a single one. A leaf with
    a sharding becomes a ``jax.Array`` on it, one without a host numpy array. Shapes are
    checked against the stored ones first, with one clear error.
    """
    import numpy as np
    import orbax.checkpoint as ocp

    params_dir = storage.join(storage.abspath(path),
                              PARAMS_DIR)
    require(storage.isdir(params_dir), f"{path}: checkpoint has no {PARAMS_DIR}/ directory")
    storage.bound_array_io_retries()
    ckptr = ocp.PyTreeCheckpointer()
    with storage.user_errors(path), read_errors(path):
        stored = ckptr.metadata(params_dir)
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)
    require(isinstance(stored, dict), f"{path}: the checkpoint is damaged or incomplete (no "
            f"readable tree metadata in {PARAMS_DIR}/)")
    missing = [k for k in target if k not in stored]
    require(not missing, f"{path}: checkpoint lacks parameter group(s) {missing}")
    _check_shapes(path, target, stored)

    def restore_args(s):
        if s.sharding is None:
            return ocp.RestoreArgs(restore_type=np.ndarray, dtype=s.dtype)
        return ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype)

    with storage.user_errors(path), read_errors(path):
        tree = ckptr.restore(params_dir, args=ocp.args.PyTreeRestore(
            item=target, restore_args=jax.tree.map(restore_args, target), partial_restore=True))
    if sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(target)) > GC_BYTES:
        gc.collect()  # orbax's restore leaves reference cycles that hold the arrays
    return tree


# How TensorStore and orbax word a missing, truncated or garbled file of the tree.
_DAMAGE_SIGNS = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "FAILED_PRECONDITION", "OCDBT",
                 "TensorStore", "_METADATA", "not a valid checkpoint", "JSONDecodeError",
                 "Expecting value", "No such file")


@contextlib.contextmanager
def read_errors(path: str) -> Iterator[None]:
    """A read of the parameter tree that fails on its files (one deleted, truncated or
    garbled) becomes one :class:`UserError` line naming the checkpoint and the cause."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - only the damage orbax/TensorStore report
        chain, c = [], e
        while c is not None and len(chain) < 8:
            chain.append(c)
            c = c.__cause__ or c.__context__
        text = " ".join(f"{type(x).__name__} {x}" for x in chain)
        if not any(sign in text for sign in _DAMAGE_SIGNS) and not isinstance(e, OSError):
            raise
        lines = [x.strip() for x in str(chain[-1]).splitlines() if x.strip()]
        reason = lines[0] if lines else type(chain[-1]).__name__
        reason = reason if len(reason) <= 240 else reason[:237] + "..."
        raise UserError(f"{path}: the checkpoint is damaged or incomplete ({reason})") from None


def _check_shapes(path: str, target: dict, stored: Any, prefix: str = "") -> None:
    """One clear error when the checkpoint's shapes disagree with the config's."""
    if isinstance(target, dict):
        require(isinstance(stored, dict), f"{path}: parameter {prefix or '/'} has an unexpected layout")
        for k, v in target.items():
            key = f"{prefix}/{k}" if prefix else k
            require(k in stored, f"{path}: checkpoint lacks parameter {key}")
            _check_shapes(path, v, stored[k], key)
        return
    shape = getattr(stored, "shape", None)
    if shape is not None:
        require(tuple(shape) == tuple(target.shape),
                f"{path}: parameter {prefix} has shape {list(shape)} but the model config "
                f"expects {list(target.shape)}")


def current_mesh_or_default():
    from dsl_jax.sharding import make_mesh
    mesh = jax.sharding.get_concrete_mesh() if hasattr(jax.sharding, "get_concrete_mesh") else None
    if mesh is not None and not getattr(mesh, "empty", False) and mesh.devices.size:
        return mesh
    return make_mesh()


def load(path: str, mesh=None, kind: str = "auto", why: str = "", **run: Any):
    """Load a dsl-jax checkpoint as a model whose parameters are sharded on ``mesh``.

    ``kind``: ``"auto"`` (the default) a :class:`dsl_jax.dsl.DSLModel` when the checkpoint
    has DSL parameters, else a :class:`dsl_jax.model.LLaDA`; ``"llada"`` the LLaDA backbone
    of any checkpoint; ``"dsl"`` a DSLModel, an error (saying ``why``, see
    :func:`read_meta`) when the checkpoint has no DSL parameters. ``mesh`` defaults to the current mesh
    (``jax.set_mesh``) or all devices on ``fsdp``. ``run`` overrides how the model runs
    (``dtype="float32"``, ``remat=...``).
    """
    meta = read_meta(path, kind, why)
    cfg = model_config(meta, source=storage.join(path, META_FILE), **run)
    dsl = dsl_config(meta) if kind != "llada" else None
    mesh = mesh if mesh is not None else current_mesh_or_default()
    graphdef, state = abstract_model(cfg, dsl, mesh)
    tree = restore(path, to_groups(nnx.to_pure_dict(state)))
    nnx.replace_by_pure_dict(state, from_groups(tree))
    return nnx.merge(graphdef, state)

