"""The sweep's generator: prompts -> response token ids, for one sampler and NFE.

:func:`make_generator` loads the checkpoint once onto a mesh of this host's devices
(``settings.mesh``, compute dtype ``settings.dtype`` or the checkpoint's) and returns a
``GenerateFn``::

    generate(prompts, sampler, nfe, gen_length, seed) -> list[list[int]]

(the DSL samplers run with the settings' knobs, ``Settings.knobs``; with
``settings.shared_seed`` the sweep passes its ``seed`` for every batch, and every
prompt's draws come from that seed alone).

``prompts`` are chat-templated token-id lists; each result is the ``gen_length`` raw
response ids of its prompt (the sweep decodes them, which strips EOS/EoT).

``settings.generator = "module:factory"`` evaluates something else instead (another
model, a cached set of outputs, a fake for tests): ``factory(settings, tok)`` must
return a ``GenerateFn`` as above. The checkpoint is then optional.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Callable, Iterator, Sequence

from dsl_jax.errors import UserError, require
from dsl_jax.sampling.registry import DSL_SAMPLERS

GenerateFn = Callable[[Sequence[Sequence[int]], str, int, int, int], list]


def resolve_factory(spec: str) -> Callable:
    """The ``factory`` named by ``"module:factory"``; one-line error when it is missing."""
    require(spec.count(":") == 1 and all(spec.split(":")),
            f"config generator: expected 'module:factory', got {spec!r}")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"config generator: cannot import {module_name!r} ({e})") from None
    factory = getattr(module, attr, None)
    require(callable(factory), f"config generator: {module_name} has no callable {attr!r}")
    return factory


@contextlib.contextmanager
def compilation_cache(path: str) -> Iterator[None]:
    """JAX's persistent compilation cache in directory ``path`` (local or a bucket) for the
    block, nothing when ``path`` is empty: the samplers compiled by one sweep are read back
    by the next and by a resumed one instead of compiled again (which programs are stored
    is JAX's choice: those that took at least ``jax_persistent_cache_min_compile_time_secs``
    to compile). The previous setting is restored after the block."""
    if not path:
        yield
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(path))
    cc.reset_cache()  # (the cache object is made once per process otherwise)
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        cc.reset_cache()


def make_generator(settings, tok) -> GenerateFn:
    """A ``GenerateFn`` for the sweep's settings (see the module docstring); the model is
    ``dsl_jax.checkpoint.load``'s, the samplers ``dsl_jax.sampling.generate``."""
    if settings.generator:
        fn = resolve_factory(settings.generator)(settings, tok)
        require(callable(fn), f"config generator: {settings.generator} did not return a function")
        return fn

    import jax

    from dsl_jax import checkpoint, sampling
    from dsl_jax.sharding import make_mesh, parse_mesh

    require(settings.ckpt, "config ckpt: no checkpoint given (--config.ckpt=DIR)")
    # Each host samples its own share on its own devices (pods: see dsl_jax.evaluation.sweep).
    mesh = make_mesh(parse_mesh(settings.mesh), devices=jax.local_devices())
    run = {"dtype": settings.dtype} if settings.dtype else {}
    # Loaded once for every cell: a DSLModel when the checkpoint has DSL parameters (the
    # LLaDA samplers run on its backbone), else the LLaDA.
    kind = "dsl" if any(s in DSL_SAMPLERS for s in settings.samplers) else "auto"
    model = checkpoint.load(settings.ckpt, mesh, kind, **run)

    def generate(prompts, sampler, nfe, gen_length, seed):
        # batch_size fixed by the settings: a short last batch is filled with dummy rows
        # by the sampler, so every batch of a cell reuses one compilation per length bucket.
        return sampling.generate(model, [list(map(int, p)) for p in prompts], sampler=sampler,
                                 nfe=int(nfe), gen_length=int(gen_length), seed=int(seed),
                                 batch_size=max(len(prompts), int(settings.batch_size)), mesh=mesh,
                                 shared_seed=settings.shared_seed, **settings.knobs(sampler))

    return generate
