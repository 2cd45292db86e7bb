"""The LLaDA model configuration: read from a Hugging Face ``config.json``, or a preset.

``ModelConfig`` holds the architecture (what ``config.json`` says) plus how the model
is run (compute dtype, parameter dtype, rematerialisation, attention kernel). Run
configs (``configs/*.py``, ml_collections) name a preset or a ``config.json`` and may
override the run fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from dsl_jax.errors import UserError, require

# LLaDA special tokens (docs/method.md section 1).
BOS_ID = 126080
EOS_ID = 126081
MASK_ID = 126336
START_HEADER_ID = 126346
END_HEADER_ID = 126347
EOT_ID = 126348

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # Architecture (config.json).
    vocab_size: int = 126464
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    mlp_hidden_size: int = 12288
    rope_theta: float = 500000.0
    max_sequence_length: int = 4096
    rms_norm_eps: float = 1e-5
    mask_token_id: int = MASK_ID
    eos_token_id: int = EOS_ID
    pad_token_id: int = EOS_ID
    # How the model runs.
    dtype: str = "bfloat16"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of the parameters
    remat: str = "full"  # rematerialisation policy of one scanned layer
    attention: str = "auto"  # attention kernel (dsl_jax/attention.py): auto, xla, cudnn, splash

    def __post_init__(self):
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                     "mlp_hidden_size", "max_sequence_length"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                    f"model config: {name} must be a positive integer, got {value!r}")
        require(self.d_model % self.n_heads == 0,
                f"model config: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        require(self.head_dim % 2 == 0,
                f"model config: head_dim {self.head_dim} must be even for rotary embeddings")
        require(self.n_heads % self.n_kv_heads == 0,
                f"model config: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        require(self.rope_theta > 0, f"model config: rope_theta must be positive, got {self.rope_theta}")
        require(self.rms_norm_eps > 0, f"model config: rms_norm_eps must be positive, got {self.rms_norm_eps}")
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            require(isinstance(value, int) and 0 <= value < self.vocab_size,
                    f"model config: {name} {value!r} is outside the vocabulary [0, {self.vocab_size})")
        require(self.dtype in DTYPES, f"model config: dtype must be one of {DTYPES}, got {self.dtype!r}")
        require(self.param_dtype in DTYPES,
                f"model config: param_dtype must be one of {DTYPES}, got {self.param_dtype!r}")
        require(self.remat in REMAT_POLICIES,
                f"model config: remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        require(self.attention in ATTENTION_IMPLS,
                f"model config: attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")

    def replace(self, **changes: Any) -> "ModelConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        require(not unknown, f"model config: unknown field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        d, f, v, L = self.d_model, self.mlp_hidden_size, self.vocab_size, self.n_layers
        kv = self.n_kv_heads * self.head_dim
        per_layer = 2 * d + d * d + 2 * d * kv + d * d + 3 * d * f
        return 2 * v * d + d + L * per_layer

    # ---- Hugging Face config.json -------------------------------------------------

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], source: str = "config.json", **run) -> "ModelConfig":
        """Build from a LLaDA ``config.json`` dict; unsupported variants are refused."""
        required = ("d_model", "n_layers", "n_heads", "max_sequence_length")
        missing = [k for k in required if k not in hf]
        if "embedding_size" not in hf and "vocab_size" not in hf:
            missing.append("vocab_size")
        require(not missing, f"{source}: missing field(s) {', '.join(missing)}")
        unsupported = {
            "block_type": ("llama", hf.get("block_type", "llama")),
            "activation_type": ("silu", hf.get("activation_type", "silu")),
            "layer_norm_type": ("rms", hf.get("layer_norm_type", "rms")),
            "alibi": (False, hf.get("alibi", False)),
            "rope": (True, hf.get("rope", True)),
            "weight_tying": (False, hf.get("weight_tying", False)),
            "include_bias": (False, hf.get("include_bias", False)),
            "include_qkv_bias": (False, hf.get("include_qkv_bias", False)),
            "scale_logits": (False, hf.get("scale_logits", False)),
            "attention_layer_norm": (False, hf.get("attention_layer_norm", False)),
            "input_emb_norm": (False, hf.get("input_emb_norm", False)),
        }
        for key, (want, got) in unsupported.items():
            require(got == want, f"{source}: {key}={got!r} is not supported (LLaDA uses {want!r})")
        for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "max_sequence_length",
                    "embedding_size", "vocab_size", "mlp_hidden_size", "mask_token_id",
                    "eos_token_id", "pad_token_id"):
            value = hf.get(key)
            require(value is None or (isinstance(value, int) and not isinstance(value, bool)),
                    f"{source}: {key} must be an integer, got {value!r}")
        for key in ("rope_theta", "rms_norm_eps", "mlp_ratio"):
            value = hf.get(key)
            require(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
                    f"{source}: {key} must be a number, got {value!r}")
        vocab = hf.get("embedding_size") or hf.get("vocab_size")
        if "embedding_size" in hf and "vocab_size" in hf and hf["vocab_size"] is not None:
            require(hf["vocab_size"] <= hf["embedding_size"],
                    f"{source}: vocab_size {hf['vocab_size']} exceeds embedding_size {hf['embedding_size']}")
        d_model = hf["d_model"]
        n_heads = hf["n_heads"]
        n_kv = hf.get("n_kv_heads") or n_heads
        if hf.get("multi_query_attention"):
            n_kv = 1
        mlp = hf.get("mlp_hidden_size")
        if mlp is None:
            ratio = hf.get("mlp_ratio")
            require(ratio is not None, f"{source}: missing field(s) mlp_hidden_size")
            mlp = int(ratio * d_model)
        fields = dict(
            vocab_size=vocab, d_model=d_model, n_layers=hf["n_layers"], n_heads=n_heads,
            n_kv_heads=n_kv, mlp_hidden_size=mlp,
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            max_sequence_length=hf["max_sequence_length"],
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            mask_token_id=hf.get("mask_token_id", MASK_ID),
            eos_token_id=hf.get("eos_token_id", EOS_ID),
            pad_token_id=hf.get("pad_token_id", hf.get("eos_token_id", EOS_ID)),
        )
        try:
            return cls(**fields, **run)
        except UserError as e:
            raise UserError(f"{source}: {e}") from None
        except TypeError as e:  # wrong value types that dataclass arithmetic trips on
            raise UserError(f"{source}: {e}") from None

    @classmethod
    def from_hf_json(cls, path: str, **run) -> "ModelConfig":
        """Read a ``config.json`` file (or a directory holding one)."""
        from dsl_jax import storage
        from dsl_jax.textfiles import read_json

        if storage.isdir(path):
            path = storage.join(path, "config.json")
        require(storage.isfile(path), f"{path}: no such config file")
        return cls.from_hf_dict(read_json(path, obj=True), source=path, **run)

    def to_hf_dict(self) -> dict:
        """A LLaDA ``config.json`` for this architecture (what PyTorch LLaDA loads)."""
        return {
            "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
            "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0,
            "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
            "auto_map": {
                "AutoConfig": "configuration_llada.LLaDAConfig",
                "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                "AutoModel": "modeling_llada.LLaDAModelLM",
            },
            "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
            "d_model": self.d_model, "embedding_dropout": 0.0,
            "embedding_size": self.vocab_size, "eos_token_id": self.eos_token_id,
            "flash_attention": False, "include_bias": False, "include_qkv_bias": False,
            "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell",
            "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
            "layer_norm_with_affine": True, "mask_token_id": self.mask_token_id,
            "max_sequence_length": self.max_sequence_length,
            "mlp_hidden_size": self.mlp_hidden_size,
            "mlp_ratio": max(1, self.mlp_hidden_size // self.d_model), "model_type": "llada",
            "multi_query_attention": None, "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads, "n_layers": self.n_layers,
            "pad_token_id": self.pad_token_id, "precision": "amp_bf16",
            "residual_dropout": 0.0, "rms_norm_eps": self.rms_norm_eps, "rope": True,
            "rope_full_precision": True, "rope_theta": self.rope_theta, "scale_logits": False,
            "use_cache": False, "vocab_size": self.vocab_size, "weight_tying": False,
        }

    def run_fields(self) -> dict:
        return {k: getattr(self, k) for k in ("dtype", "param_dtype", "remat", "attention")}


# Presets. "tiny" is for tests, "small" for CPU benchmarks and the demo scale,
# "1b" for accelerator benchmarks, "llada-8b" is LLaDA-8B-Instruct.
PRESETS: dict[str, dict] = {
    "llada-8b": dict(),
    "1b": dict(d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16, mlp_hidden_size=5632,
               vocab_size=126464),
    "small": dict(vocab_size=4096, d_model=512, n_layers=8, n_heads=8, n_kv_heads=8,
                  mlp_hidden_size=1536, max_sequence_length=1024, mask_token_id=2,
                  eos_token_id=1, pad_token_id=1),
    "tiny": dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4,
                 mlp_hidden_size=192, max_sequence_length=256, mask_token_id=2,
                 eos_token_id=1, pad_token_id=1, dtype="float32"),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    require(name in PRESETS, f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    fields = {**PRESETS[name], **overrides}
    unknown = set(fields) - {f.name for f in dataclasses.fields(ModelConfig)}
    require(not unknown, f"model config: unknown field(s) {sorted(unknown)}")
    return ModelConfig(**fields)


def resolve(spec: str, **overrides: Any) -> ModelConfig:
    """A preset name, a ``config.json`` path, or a directory holding one."""
    if spec in PRESETS:
        return preset(spec, **overrides)
    return ModelConfig.from_hf_json(spec, **overrides)
