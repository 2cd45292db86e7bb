"""dsl-jax as an lm-evaluation-harness model (docs/evaluation.md section 3).

Two parts:

- :func:`masked_loglikelihood`, LLaDA's Monte-Carlo estimate of log p(target | prefix):
  ``mc_samples`` noisy copies of prefix + target in batches of ``batch_size`` rows; in
  each batch one k ~ U{1..T} (T target tokens) sets stratified mask counts
  x_j = ((round(k + j T / B) - 1) mod T) + 1 for rows j = 0..B-1, row j masks x_j target
  positions drawn uniformly (the prefix is never masked), and a batch's loss is
  sum_j sum_{masked i} -log p(token_i | noisy_j) / (x_j / T) / B; the estimate is minus the
  mean of the batches' losses. Jitted and seeded: the masks depend on the seed, the
  lengths and the batch shape alone (the choices of a question that have equal lengths
  are scored on the same masks). A DSL model is scored through its LLaDA (mask-token ids).
- the adapter class, registered in lm_eval's model registry as ``dsl-jax`` by
  :func:`register` (which imports lm_eval: this module imports without it).
  ``generate_until`` runs the project's samplers (``dsl_jax.sampling.generate``, batched),
  ``loglikelihood`` the estimate above; ``loglikelihood_rolling`` is not implemented
  (LLaDA's adapter does not implement it either).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from dsl_jax.errors import UserError, require

MODEL_NAME = "dsl-jax"
DEFAULT_MC_SAMPLES = 128  # LLaDA's mc_num
DEFAULT_BATCH_SIZE = 32
DEFAULT_GEN_LENGTH = 256
DEFAULT_NFE = 64
LENGTH_BUCKET = 32  # sequences are right-padded to a geometric bucket from this (batch.buckets)

_JIT_CACHE: dict = {}


# ---- the Monte-Carlo masked log-likelihood ---------------------------------------------

def draw_masks(key, prefix_len, target_len, length: int, rows: int):
    """One batch's masks: ``(masked [rows, length] bool, counts [rows] int32)``.

    ``counts`` are the stratified mask counts x_j of the module docstring (k drawn from
    ``key``); row j masks x_j positions drawn uniformly among the target's
    ``prefix_len .. prefix_len + target_len - 1``. Traceable (``prefix_len`` and
    ``target_len`` may be traced, ``target_len >= 1``)."""
    import jax
    import jax.numpy as jnp

    k_key, u_key = jax.random.split(key)
    t = jnp.asarray(target_len, jnp.int32)
    k = jax.random.randint(k_key, (), 1, t + 1)
    x = jnp.round(k.astype(jnp.float32) + jnp.arange(rows, dtype=jnp.float32)
                  * (t.astype(jnp.float32) / rows)).astype(jnp.int32)
    x = (x - 1) % t + 1
    pos = jnp.arange(length)
    in_target = (pos >= prefix_len) & (pos < prefix_len + t)
    u = jnp.where(in_target[None], jax.random.uniform(u_key, (rows, length)), jnp.inf)
    rank = jnp.argsort(jnp.argsort(u, axis=1), axis=1)  # the T target positions rank 0..T-1
    return rank < x[:, None], x


def batch_keys(seed: int, batches: int):
    """The PRNG key of each of ``batches`` batches: ``fold_in(PRNGKey(seed), i)``."""
    import jax
    base = jax.random.PRNGKey(int(seed))
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(np.arange(batches, dtype=np.uint32))


def _batch_losses_fn(graphdef, mesh, length: int, rows: int, batches: int):
    """The jitted (state, ids [length], prefix_len, target_len, keys) -> losses [batches]."""
    key = (graphdef, mesh, length, rows, batches)
    if key not in _JIT_CACHE:
        import jax
        import jax.numpy as jnp
        from flax import nnx

        def fn(state, ids, prefix_len, target_len, keys):
            model = nnx.merge(graphdef, state)
            mask_id = model.cfg.mask_token_id
            real = jnp.arange(length) < prefix_len + target_len
            attention = jnp.broadcast_to(real, (rows, length))

            def one(_, k):
                masked, x = draw_masks(k, prefix_len, target_len, length, rows)
                noisy = jnp.where(masked, mask_id, ids[None])
                logits = model(noisy, attention_mask=attention)
                logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
                token_lp = jnp.take_along_axis(logp, ids[None, :, None].astype(jnp.int32),
                                               axis=-1)[..., 0]
                p_mask = x.astype(jnp.float32) / target_len.astype(jnp.float32)
                row_loss = -jnp.sum(jnp.where(masked, token_lp, 0.0), axis=1) / p_mask
                return None, jnp.sum(row_loss) / rows

            return jax.lax.scan(one, None, keys)[1]

        _JIT_CACHE[key] = jax.jit(fn)
    return _JIT_CACHE[key]


def masked_loglikelihood(model, prefix: Sequence[int], target: Sequence[int], *,
                         mc_samples: int = DEFAULT_MC_SAMPLES,
                         batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
                         bucket: int = LENGTH_BUCKET, return_batches: bool = False):
    """LLaDA's Monte-Carlo estimate of log p(``target`` | ``prefix``) (module docstring).

    ``model``: a LLaDA, or a DSLModel (its LLaDA is used). ``mc_samples`` must be a
    multiple of ``batch_size``; batch i's masks come from ``batch_keys(seed, n)[i]``
    alone, so two targets of equal length are scored on the same masks. The sequence is
    right-padded to a bucket length (:func:`dsl_jax.sampling.batch.bucket_length`: 32, 48,
    64, 96, ... for ``bucket`` 32) with the padding masked out of attention
    (one compilation per padded length). An empty target has log-likelihood 0.
    ``return_batches``: also return each batch's loss (numpy float32 [n])."""
    import jax
    from flax import nnx

    from dsl_jax.sampling.batch import bucket_length

    require(int(mc_samples) > 0 and int(batch_size) > 0,
            f"mc_samples and batch_size must be positive, got {mc_samples} and {batch_size}")
    require(int(mc_samples) % int(batch_size) == 0,
            f"mc_samples ({mc_samples}) must be a multiple of batch_size ({batch_size})")
    llada = getattr(model, "llada", model)
    cfg = llada.cfg
    prefix, target = [int(i) for i in prefix], [int(i) for i in target]
    batches = int(mc_samples) // int(batch_size)
    if not target:
        return (0.0, np.zeros(batches, np.float32)) if return_batches else 0.0
    n = len(prefix) + len(target)
    require(n <= cfg.max_sequence_length,
            f"{len(prefix)} context + {len(target)} continuation tokens exceed the model's "
            f"maximum sequence length {cfg.max_sequence_length}")
    ids = np.asarray(prefix + target, np.int32)
    require(ids.min() >= 0 and ids.max() < cfg.vocab_size,
            f"token id {int(ids.max())} is out of range for vocabulary size {cfg.vocab_size}")
    length = bucket_length(n, bucket, cfg.max_sequence_length)
    ids = np.pad(ids, (0, length - n), constant_values=cfg.pad_token_id)
    graphdef, state = nnx.split(llada)
    leaf = jax.tree.leaves(state)[0]
    mesh = getattr(leaf.sharding, "mesh", None)
    fn = _batch_losses_fn(graphdef, mesh, length, int(batch_size), batches)
    args = (state, ids, np.int32(len(prefix)), np.int32(len(target)),
            batch_keys(seed, batches))
    if mesh is not None and not getattr(mesh, "empty", False):
        with jax.set_mesh(mesh):
            losses = fn(*args)
    else:
        losses = fn(*args)
    from dsl_jax.sharding import host_array
    losses = host_array(losses).astype(np.float32)
    value = -float(np.mean(losses.astype(np.float64)))
    return (value, losses) if return_batches else value


# ---- the lm-evaluation-harness adapter -------------------------------------------------

def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any of the ``until`` strings."""
    cut = len(text)
    for stop in until:
        if stop:
            i = text.find(stop)
            if 0 <= i < cut:
                cut = i
    return text[:cut]


def _as_int(name: str, value, minimum: int = 0) -> int:
    try:
        out = int(str(value).strip()) if not isinstance(value, int) else int(value)
    except ValueError:
        raise UserError(f"model_args {name}: expected an integer, got {value!r}") from None
    require(out >= minimum, f"model_args {name}: expected an integer >= {minimum}, got {value!r}")
    return out


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    require(text in ("true", "false", "1", "0", "yes", "no"),
            f"model_args {name}: expected true or false, got {value!r}")
    return text in ("true", "1", "yes")


@dataclasses.dataclass
class HarnessArgs:
    """The ``--model_args`` of ``dsl-jax`` (docs/evaluation.md section 3)."""

    ckpt: str = ""
    tokenizer: str = ""  # default CKPT/tokenizer.json
    sampler: str = ""  # default sde for a DSL checkpoint, else remask
    nfe: int = DEFAULT_NFE
    gen_length: int = 0  # 0: each request's max_gen_toks, else DEFAULT_GEN_LENGTH
    batch_size: int = DEFAULT_BATCH_SIZE
    mesh: str = "fsdp=-1"  # over this host's devices; "1x4x2" (data x fsdp x tensor) too
    dtype: str = ""  # compute dtype override; empty: the checkpoint's
    seed: int = 0
    mc_samples: int = DEFAULT_MC_SAMPLES
    add_bos: bool = True  # BOS before a context that does not start with it
    generator: str = ""  # "module:factory" (dsl_jax.evaluation.generation): no model

    @classmethod
    def parse(cls, kwargs: dict, lm_eval_batch_size=None) -> "HarnessArgs":
        """From lm_eval's model arguments. ``batch_size`` given in ``model_args`` wins over
        lm_eval's ``--batch_size`` (``auto`` means the default); lm_eval's ``device`` and
        ``max_batch_size`` are ignored; any other unknown name is an error."""
        kwargs = dict(kwargs)
        for ignored in ("device", "max_batch_size", "trust_remote_code"):
            kwargs.pop(ignored, None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        require(not unknown, f"model_args: unknown argument(s) {unknown}; known: "
                f"{', '.join(sorted(known))}")
        if "batch_size" not in kwargs and lm_eval_batch_size is not None \
                and not str(lm_eval_batch_size).startswith("auto"):
            kwargs["batch_size"] = lm_eval_batch_size
        out = cls()
        for f in dataclasses.fields(cls):
            if f.name not in kwargs or kwargs[f.name] is None:
                continue
            v = kwargs[f.name]
            if f.type == "int":
                v = _as_int(f.name, v, minimum=1 if f.name in ("batch_size", "mc_samples",
                                                                "nfe") else 0)
            elif f.type == "bool":
                v = _as_bool(f.name, v)
            else:
                v = str(v)
            setattr(out, f.name, v)
        require(out.ckpt or out.generator, "model_args: no checkpoint given (ckpt=DIR)")
        require(out.mc_samples % out.batch_size == 0 or out.mc_samples < out.batch_size,
                f"model_args mc_samples ({out.mc_samples}) must be a multiple of batch_size "
                f"({out.batch_size}) or smaller")
        return out


class _Adapter:
    """The methods of the ``dsl-jax`` lm_eval model; :func:`model_class` mixes them into
    lm_eval's ``TemplateLM`` (which splits a context/continuation pair into ids)."""

    backend = "causal"

    def __init__(self, batch_size=None, **kwargs: Any):
        super().__init__()
        from dsl_jax import storage
        from dsl_jax.tokenizer import Tokenizer

        self.args = a = HarnessArgs.parse(kwargs, batch_size)
        tok_path = a.tokenizer or (storage.join(a.ckpt, "tokenizer.json") if a.ckpt else "")
        require(tok_path, "model_args: no tokenizer given (tokenizer=FILE)")
        self.tok = Tokenizer.from_file(tok_path)
        self.model = self.mesh = None
        self._generate_fn = None
        if a.ckpt:
            import jax

            from dsl_jax import checkpoint
            from dsl_jax.sharding import make_mesh, parse_mesh
            self.mesh = make_mesh(parse_mesh(a.mesh), devices=jax.local_devices())
            run = {"dtype": a.dtype} if a.dtype else {}
            self.tok.check_model(checkpoint.model_config(checkpoint.read_meta(a.ckpt)), a.ckpt)
            self.model = checkpoint.load(a.ckpt, self.mesh, "auto", **run)
        from dsl_jax.dsl import DSLModel
        from dsl_jax.sampling import registry
        self.sampler = a.sampler or ("sde" if isinstance(self.model, DSLModel) else "remask")
        registry.get(self.sampler)
        if a.generator:
            from dsl_jax.evaluation.generation import make_generator
            settings = _GeneratorSettings(generator=a.generator, ckpt=a.ckpt, mesh=a.mesh,
                                          dtype=a.dtype, samplers=[self.sampler],
                                          batch_size=a.batch_size)
            self._generate_fn = make_generator(settings, self.tok)
        self.max_length = self.model.cfg.max_sequence_length if self.model is not None else None

    # -- what lm_eval asks of a model ---------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:  # the context of an empty-context request
        return self.tok.bos_id

    @property
    def tokenizer_name(self) -> str:
        return self.tok.source.replace("/", "__")

    def chat_template(self, chat_template=False) -> str:
        """The tokenizer's chat template source (LLaDA's as coded here when it has none)."""
        ct = self.tok.chat_template
        return ct.source if ct is not None else "llada_chat"

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        """The chat as text, through the tokenizer's chat template (or LLaDA's)."""
        return self.tok.render_chat(chat_history, add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        """Ids of ``string``; BOS first (unless it starts with BOS already) when
        ``add_bos`` and ``add_special_tokens`` is not False."""
        ids = self.tok.encode(string)
        if add_special_tokens is not False and self.args.add_bos and (
                not ids or ids[0] != self.tok.bos_id):
            ids = [self.tok.bos_id] + ids
        return ids

    def tok_decode(self, ids, **kwargs) -> str:
        return self.tok.decode(ids)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        require(self.model is not None,
                "loglikelihood needs a checkpoint (model_args ckpt=DIR), not only a generator")
        out = []
        for (context, continuation), prefix, target in requests:
            limit = self.max_length - len(target)
            require(limit > 0, f"a continuation of {len(target)} tokens does not fit the "
                    f"model's maximum sequence length {self.max_length}")
            prefix = list(prefix)[-limit:]  # left-truncated, as lm_eval's models do
            value = masked_loglikelihood(self.model, prefix, target,
                                         mc_samples=self.args.mc_samples,
                                         batch_size=min(self.args.batch_size,
                                                        self.args.mc_samples),
                                         seed=self.args.seed)
            # is_greedy is not computed (LLaDA's adapter recommends switching it off).
            result = (value, False)
            self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "dsl-jax: loglikelihood_rolling (perplexity tasks) is not implemented: a masked "
            "diffusion model has no left-to-right likelihood; LLaDA's adapter does not "
            "implement it either")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request's response: ``gen_length`` (``max_gen_toks``) positions from the
        sampler, cut at the first EOS/EoT token, decoded, cut at the first ``until``
        string. Requests are batched by response length; every request draws from
        ``seed`` alone (results do not depend on batching or order)."""
        a = self.args
        out: list[str | None] = [None] * len(requests)
        plans = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            gen = a.gen_length or int(gen_kwargs.get("max_gen_toks") or DEFAULT_GEN_LENGTH)
            ids = self.tok_encode(context)
            if self.max_length is not None:
                gen = min(gen, self.max_length - 1)
                ids = ids[-(self.max_length - gen):]  # left-truncated, as lm_eval's models do
            plans.append((gen, len(ids), i, ids, until, context, gen_kwargs))
        plans.sort(key=lambda p: (p[0], p[1]))
        by_gen: dict[int, list] = {}
        for p in plans:
            by_gen.setdefault(p[0], []).append(p)
        for gen, group in by_gen.items():
            for s in range(0, len(group), a.batch_size):
                chunk = group[s:s + a.batch_size]
                responses = self._generate([p[3] for p in chunk], gen)
                for p, resp in zip(chunk, responses):
                    text = cut_at_stops(self.tok.decode(self._until_eos(resp)), p[4])
                    self.cache_hook.add_partial("generate_until", (p[5], p[6]), text)
                    out[p[2]] = text
        return out

    # -- helpers --------------------------------------------------------------------------

    def _until_eos(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        for j, t in enumerate(ids):
            if t in (self.tok.eos_id, self.tok.eot_id):
                return ids[:j]
        return ids

    def _generate(self, prompts: list[list[int]], gen_length: int) -> list[list[int]]:
        """Response ids of one batch: the project's samplers (``sampling.generate``, one
        seed for every prompt) or, with ``generator=``, that GenerateFn."""
        a = self.args
        if self._generate_fn is not None:
            return self._generate_fn(prompts, self.sampler, a.nfe, gen_length, a.seed)
        from dsl_jax import sampling
        return sampling.generate(self.model, prompts, sampler=self.sampler, nfe=a.nfe,
                                 gen_length=gen_length, seed=a.seed,
                                 batch_size=max(len(prompts), a.batch_size), mesh=self.mesh,
                                 shared_seed=True)

    def get_model_info(self) -> dict:
        return {"dsl_jax": {k: v for k, v in dataclasses.asdict(self.args).items() if v != ""},
                "sampler": self.sampler}


@dataclasses.dataclass
class _GeneratorSettings:
    """What ``generation.make_generator`` reads of a sweep's settings."""

    generator: str
    ckpt: str
    mesh: str
    dtype: str
    samplers: list
    batch_size: int
    shared_seed: bool = True


_CLASS = None


def model_class():
    """The lm_eval model class of dsl-jax (``TemplateLM`` with :class:`_Adapter`'s
    methods), made and registered as ``dsl-jax`` on the first call (imports lm_eval)."""
    global _CLASS
    if _CLASS is None:
        try:
            from lm_eval.api.model import TemplateLM
            from lm_eval.api.registry import model_registry, register_model
        except ImportError:
            raise UserError("lm-evaluation-harness is not installed: pip install -e "
                            "\".[lmeval]\"") from None
        cls = type("DSLJaxLM", (_Adapter, TemplateLM), {
            "__doc__": "dsl-jax checkpoints in lm-evaluation-harness (dsl_jax.evaluation."
                       "harness).", "__module__": __name__})
        if MODEL_NAME in model_registry:
            _CLASS = model_registry.get(MODEL_NAME)
        else:
            _CLASS = register_model(MODEL_NAME)(cls)
    return _CLASS


def register() -> str:
    """Register the ``dsl-jax`` model with lm_eval (once); returns its name."""
    model_class()
    return MODEL_NAME
