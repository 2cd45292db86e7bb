"""Zero-shot summarization sweep (DESIGN.md section 5): ``dsl-jax eval --config THIS``.

Every benchmark x sampler x NFE cell: 1,000 test examples drawn with seed 42, sources
cut to 1,500 words, the benchmark's prompt and generation length, the chat template.
Lists are comma-separated strings so that overrides read naturally:

    dsl-jax eval --config configs/eval_summarization.py --config.ckpt=ckpts/dsl \
        --config.tokenizer=llada/tokenizer.json --config.benchmarks=xsum,cnn_dailymail \
        --config.nfe=8,16,32,64 --config.samplers=sde,remask,eos_block
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.ckpt = ""  # dsl-jax checkpoint directory (required); DSL parameters needed for sde/ode
    c.tokenizer = ""  # LLaDA tokenizer.json; default: CKPT/tokenizer.json
    c.data_dir = ""  # prepared TFDS data dir (local or gs://); default $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.benchmarks = "xsum,cnn_dailymail,pubmed,arxiv,billsum"  # also: aeslc (own prompt); "name:1.2.3" pins a TFDS version
    c.samplers = "sde,remask,eos_block"  # of sde, ode, remask, random, eos_block
    c.nfe = "8,16,32,64"  # forward passes per sample (sde/ode: NFE/2 Heun steps + 1 final pass)
    c.split = "test"
    c.num_examples = 1000  # per benchmark
    c.max_words = 1500  # sources cut to their first words
    c.data_seed = 42  # shuffle of the split's indices
    c.seed = 0  # sampling noise
    c.batch_size = 16  # prompts per sampler call (per host)
    c.gen_length = 0  # response positions; 0: the benchmark's (XSum 128, AESLC 64, others 256)
    c.out_dir = "runs/eval"  # the run directory; a killed sweep resumes in it
    c.mesh = "fsdp=-1"  # mesh over this host's devices
    c.dtype = ""  # compute dtype override (float32, bfloat16); empty: the checkpoint's
    c.generator = ""  # advanced: "module:factory"; factory(settings, tok) returns generate(prompts, sampler, nfe, gen_length, seed) -> id lists
    c.plots = True
    return c
