from setuptools import find_packages, setup

setup(
    name="dashjax",
    version="0.1.0",
    description="JAX-native RL for reasoning LMs with verifiable rewards: DASH (preemptive sampling + gradient filtering) and baselines",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dashjax", "dashjax.*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "transformers>=4.56",
        "datasets",
        "ml-collections",
        "tensorboardX",
        "safetensors",
        "gguf>=0.17",
        "numpy",
        "tqdm",
        "matplotlib",
        "math-verify>=0.7",
        "reasoning-gym>=0.1.20",
        "absl-py",
        "jinja2",  # chat templates (transformers needs it; it otherwise arrives only with torch)
        # gs:// workdirs: etils.epath (Orbax's own path layer) reads and writes buckets through fsspec's gcsfs.
        "etils[epath]",
        "gcsfs",
    ],
    extras_require={
        # torch is used only by parity tests against transformers' PyTorch models (CPU build).
        # libtpu (through jax's own tpu extra, matched to the jax version) for TPU runs and for `dashjax-fit
        # --topology`, which compiles for a TPU slice on any machine.
        # libtpu ships Linux wheels only: on macOS and Windows the extras install without it (its tests skip).
        "tpu": ['jax[tpu]; sys_platform == "linux"'],
        # gcp-storage-emulator: a real GCS server on loopback for the gs:// workdir tests; nbclient + ipykernel
        # run the Colab notebook in a real Jupyter kernel.
        # accelerate: transformers' own GGUF loader (the reference in tests/test_gguf.py) needs it.
        "test": ["pytest", "torch==2.13.0", "accelerate", 'jax[tpu]; sys_platform == "linux"', "gcp-storage-emulator",
                 "nbclient", "nbformat", "ipykernel"],
    },
    entry_points={
        "console_scripts": [
            "dashjax-generate=dashjax.cli.generate:main",
            "dashjax-train=dashjax.cli.train:main",
            "dashjax-eval=dashjax.cli.eval:main",
            "dashjax-fit=dashjax.cli.fit:main",
            "dashjax-plan=dashjax.cli.plan:main",
        ],
    },
)
