"""An independent PyTorch reference: ``transformers`` Llama with a zero 4-D attention mask.

LLaDA's forward equals ``LlamaForCausalLM`` with the same weights (gate=ff_proj,
up=up_proj, down=ff_out, o=attn_out) called with a float mask of zeros [B, 1, T, T],
which removes the causal mask (docs/method.md section 1). Needs the ``verify`` extra.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from dsl_jax.config import ModelConfig
from dsl_jax.errors import UserError

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ff_norm.weight": "post_attention_layernorm.weight",
    "q_proj.weight": "self_attn.q_proj.weight",
    "k_proj.weight": "self_attn.k_proj.weight",
    "v_proj.weight": "self_attn.v_proj.weight",
    "attn_out.weight": "self_attn.o_proj.weight",
    "ff_proj.weight": "mlp.gate_proj.weight",
    "up_proj.weight": "mlp.up_proj.weight",
    "ff_out.weight": "mlp.down_proj.weight",
}


TORCH_EXTRA = 'pip install -e ".[verify]"'


def import_torch(purpose: str = "the PyTorch reference"):
    """(torch, transformers), or one clear error naming the extra that installs them."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise UserError(f"{purpose} needs torch and transformers: {TORCH_EXTRA}") from None
    return torch, transformers


def llama_name(llada_key: str) -> str:
    rest = llada_key[len("model.transformer."):]
    if rest == "wte.weight":
        return "model.embed_tokens.weight"
    if rest == "ln_f.weight":
        return "model.norm.weight"
    if rest == "ff_out.weight":
        return "lm_head.weight"
    _, i, name = rest.split(".", 2)
    return f"model.layers.{i}.{_LAYER_NAMES[name]}"


def build_llama(cfg: ModelConfig, tensors: Mapping[str, "np.ndarray | object"], dtype: str = "float32"):
    """A ``LlamaForCausalLM`` holding the LLaDA-keyed ``tensors`` (numpy or torch)."""
    torch, transformers = import_torch()
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden_size,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        max_position_embeddings=cfg.max_sequence_length, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, hidden_act="silu")
    hf_cfg._attn_implementation = "eager"
    tdtype = getattr(torch, dtype)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(hf_cfg)
    state = {}
    for key, value in tensors.items():
        t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
        state[llama_name(key)] = t.to(tdtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=hf_cfg)  # real buffers
    return model.eval()


def llama_logits(model, ids: np.ndarray | None, attention_mask: np.ndarray | None = None,
                 inputs_embeds: np.ndarray | None = None) -> np.ndarray:
    """Bidirectional logits [B, T, V] in float32; ``attention_mask`` is a key-padding mask.
    ``inputs_embeds`` [B, T, D] (cast to the model's dtype) replaces the token embedding
    of ``ids`` (then None), as the DSL converter's output does."""
    torch, _ = import_torch()
    dtype = next(model.parameters()).dtype
    if inputs_embeds is not None:
        feed = {"inputs_embeds": torch.from_numpy(np.asarray(inputs_embeds)).to(dtype)}
        B, T = inputs_embeds.shape[:2]
    else:
        ids_t = torch.from_numpy(np.asarray(ids, np.int64))
        feed = {"input_ids": ids_t}
        B, T = ids_t.shape
    mask = torch.zeros((B, 1, T, T), dtype=dtype)
    if attention_mask is not None:
        keep = torch.from_numpy(np.asarray(attention_mask, bool))[:, None, None, :]
        mask = mask.masked_fill(~keep, torch.finfo(dtype).min)
    with torch.no_grad():
        out = model(**feed, attention_mask=mask, use_cache=False)
    return out.logits.float().numpy()
