"""DSL adaptation of LLaDA-8B-Instruct (docs/method.md section 2): 1,000 steps on packed
4096-token blocks, AdamW lr 2e-5 (100 warm-up steps, then constant), weight decay 0.1,
clip 1.0, bf16 compute, global batch 64.

    dsl-jax train --config configs/dsl_llada_8b.py --config.init_ckpt=ckpts/llada-8b \
        --config.data.name=fineweb_edu --config.data.data_dir=gs://BUCKET/tfds \
        --config.out_dir=gs://BUCKET/runs/dsl   # a bucket, or a directory every host sees
"""

from dsl_jax.train import default_config


def get_config():
    c = default_config()  # its defaults are this recipe's
    c.model = "llada-8b"
    c.out_dir = "runs/dsl_llada_8b"
    return c
