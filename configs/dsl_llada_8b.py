"""DSL adaptation of LLaDA-8B-Instruct (DESIGN.md section 3): 1,000 steps on packed
4096-token blocks, AdamW lr 2e-5 (100 warm-up steps, then constant), weight decay 0.1,
clip 1.0, bf16 compute, global batch 64.

    dsl-jax train --config configs/dsl_llada_8b.py --config.init_ckpt=ckpts/llada-8b \
        --config.data.name=fineweb_edu --config.data.data_dir=gs://BUCKET/tfds \
        --config.out_dir=/mnt/shared/runs/dsl   # a directory every host sees (NFS, gcsfuse)
"""

from dsl_jax.train import default_config


def get_config():
    c = default_config()
    c.objective = "dsl"
    c.model = "llada-8b"
    c.global_batch = 64
    c.micro_batches = 1
    c.seq_len = 4096
    c.out_dir = "runs/dsl_llada_8b"
    return c
