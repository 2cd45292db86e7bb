"""The masked-diffusion control for the 8B DSL recipe: the same steps, data, batch and
optimizer, trained with LLaDA's own objective (t ~ U(0,1), mask with p = (1-1e-3)t + 1e-3,
loss = sum over masked tokens of CE / p over B*L).

    dsl-jax train --config configs/mdm_llada_8b.py --config.init_ckpt=ckpts/llada-8b \
        --config.data.name=fineweb_edu --config.data.data_dir=gs://BUCKET/tfds
"""

from dsl_jax.train import default_config


def get_config():
    c = default_config()
    c.objective = "mdm"
    c.model = "llada-8b"
    c.out_dir = "runs/mdm_llada_8b"
    return c
