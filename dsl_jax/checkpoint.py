"""The dsl-jax checkpoint directory, and ``dsl_jax.load``.

A checkpoint written by ``dsl-jax convert`` (or by training) is a directory:

    CKPT/
      dsl_jax.json   {"format": "dsl-jax", "version": 1, "model": <LLaDA config.json dict>,
                      "run": {dtype, param_dtype, ...}, "dsl": <DSL fields or null>}
      params/        orbax checkpoint of {"model": <LLaDA params>, "dsl": <DSL params>?}

Parameters are stored as nested dicts of arrays keyed like the NNX module tree
(``model/blocks/wq`` ...). Restoring passes abstract arrays carrying the target
sharding, so a checkpoint written on one mesh restores onto any other.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any

import jax
from flax import nnx

from dsl_jax.config import ModelConfig
from dsl_jax.errors import UserError, require

META_FILE = "dsl_jax.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def read_meta(path: str) -> dict:
    require(os.path.isdir(path), f"{path}: no such checkpoint directory")
    meta_path = os.path.join(path, META_FILE)
    require(os.path.isfile(meta_path),
            f"{path}: not a dsl-jax checkpoint (no {META_FILE}); write one with 'dsl-jax convert'")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{meta_path}: not valid JSON ({e.msg})") from None
    require(meta.get("format") == "dsl-jax", f"{meta_path}: not a dsl-jax checkpoint")
    require(meta.get("version") == FORMAT_VERSION,
            f"{meta_path}: checkpoint format version {meta.get('version')} is not supported "
            f"(this dsl-jax reads version {FORMAT_VERSION})")
    return meta


def model_config(meta: dict, source: str = META_FILE, **run: Any) -> ModelConfig:
    fields = {**meta.get("run", {}), **run}
    return ModelConfig.from_hf_dict(meta["model"], source=source, **fields)


def make_meta(cfg: ModelConfig, dsl: dict | None = None) -> dict:
    return {"format": "dsl-jax", "version": FORMAT_VERSION, "model": cfg.to_hf_dict(),
            "run": cfg.run_fields(), "dsl": dsl}


def _checkpointer():
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer()


def save(path: str, params: dict, meta: dict, overwrite: bool = False,
         extra_files: dict[str, str] | None = None) -> None:
    """Write ``params`` (nested dict of arrays) and ``meta`` atomically to ``path``;
    ``extra_files`` maps names in the checkpoint to files copied in (a tokenizer.json).

    Everything is written into a temporary sibling directory first and renamed into
    place at the end, so ``path`` is either a complete checkpoint or absent.
    """
    path = os.path.abspath(path)
    if os.path.exists(path):
        require(overwrite, f"{path}: already exists; pass --overwrite to replace it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        ckptr = _checkpointer()
        ckptr.save(os.path.join(tmp, PARAMS_DIR), params)
        ckptr.wait_until_finished()
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, os.path.join(tmp, name))
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def abstract_pure(state: nnx.State, shardings: nnx.State) -> dict:
    """Pure-dict ShapeDtypeStructs with shardings, matching ``nnx.to_pure_dict(state)``."""
    values = nnx.to_pure_dict(state)
    shards = nnx.to_pure_dict(shardings)
    return jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                        values, shards)


def load(path: str, mesh=None, **run: Any):
    """Load the LLaDA model of a dsl-jax checkpoint onto ``mesh``.

    ``mesh`` defaults to the current mesh (``jax.set_mesh``) or all devices on
    ``fsdp``. ``run`` overrides how the model runs (``dtype="float32"``, ``remat=...``).
    Returns a :class:`dsl_jax.model.LLaDA` whose parameters are sharded on the mesh.
    """
    from dsl_jax.model import build
    from dsl_jax.sharding import state_shardings

    meta = read_meta(path)
    cfg = model_config(meta, source=os.path.join(path, META_FILE), **run)
    mesh = mesh if mesh is not None else current_mesh_or_default()
    graphdef, abstract_state = nnx.split(nnx.eval_shape(build(cfg)))
    shardings = state_shardings(abstract_state, mesh)
    target = {"model": abstract_pure(abstract_state, shardings)}
    tree = restore_partial(path, target)
    nnx.replace_by_pure_dict(abstract_state, tree["model"])
    return nnx.merge(graphdef, abstract_state)


def load_dsl(path: str, mesh=None, **run: Any):
    """Load a checkpoint with DSL parameters as a :class:`dsl_jax.dsl.DSLModel` on ``mesh``."""
    from dsl_jax.dsl import DSLConfig, build_dsl
    from dsl_jax.sharding import state_shardings

    meta = read_meta(path)
    require(meta.get("dsl") is not None,
            f"{path}: checkpoint has no DSL parameters (noise embedding and converter); "
            "convert a DSL-LLaDA checkpoint or train one with 'dsl-jax train'")
    cfg = model_config(meta, source=os.path.join(path, META_FILE), **run)
    dsl = DSLConfig.from_dict(meta["dsl"])
    mesh = mesh if mesh is not None else current_mesh_or_default()
    graphdef, abstract_state = nnx.split(nnx.eval_shape(build_dsl(cfg, dsl)))
    pure = abstract_pure(abstract_state, state_shardings(abstract_state, mesh))
    tree = restore_partial(path, {"model": pure["llada"],
                                  "dsl": {k: v for k, v in pure.items() if k != "llada"}})
    nnx.replace_by_pure_dict(abstract_state, {"llada": tree["model"], **tree["dsl"]})
    return nnx.merge(graphdef, abstract_state)


def has_dsl(path: str) -> bool:
    return read_meta(path).get("dsl") is not None


def restore_partial(path: str, target: dict) -> dict:
    """Restore only the top-level items of ``target`` (for example just ``model``)."""
    import orbax.checkpoint as ocp
    params_dir = os.path.join(os.path.abspath(path), PARAMS_DIR)
    require(os.path.isdir(params_dir), f"{path}: checkpoint has no {PARAMS_DIR}/ directory")
    ckptr = ocp.PyTreeCheckpointer()
    stored = ckptr.metadata(params_dir)
    stored_tree = getattr(stored, "item_metadata", stored)
    stored_tree = getattr(stored_tree, "tree", stored_tree)
    missing = [k for k in target if k not in stored_tree]
    require(not missing, f"{path}: checkpoint lacks parameter group(s) {missing}")
    _check_shapes(path, target, stored_tree)
    restore_args = jax.tree.map(
        lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype),
        target)
    return ckptr.restore(params_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))


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


def save_model(path: str, model, overwrite: bool = False,
               extra_files: dict[str, str] | None = None) -> None:
    """Save a :class:`LLaDA` or a :class:`DSLModel` as a dsl-jax checkpoint."""
    pure = nnx.to_pure_dict(nnx.state(model))
    if "llada" in pure:  # a DSLModel
        params = {"model": pure.pop("llada"), "dsl": pure}
        meta = make_meta(model.cfg, model.dsl.to_dict())
    else:
        params, meta = {"model": pure}, make_meta(model.cfg)
    save(path, params, meta, overwrite=overwrite, extra_files=extra_files)
