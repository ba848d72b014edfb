"""Installs the `lwm` and `ringattention` packages and the `lwm` console script."""

from setuptools import find_packages, setup

# Pinned so that a fresh clone installs exactly what CI tested. torch is the CPU build that the
# development machines hold as a local wheel; an unpinned torch would pull CUDA packages.
CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorstore==0.1.86",
    "einops==0.8.2",
    "numpy==2.4.6",
    "transformers==5.23.0",
    "sentencepiece==0.2.3",
    "safetensors==0.8.0",
    "grain==0.2.18",
    "av==18.1.0",
    "imageio==2.38.1",
    "draccus==0.11.6",
    "pyyaml==6.0.4",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    # LWM's streaming checkpoint format is msgpack records of flax-serialized arrays.
    "msgpack==1.2.4",
    "ml_dtypes==0.7.0",
    # One filesystem layer for local paths and gs:// URLs alike.
    "etils[epath]==1.15.0",
    "fsspec==2026.9.0",
    # `lwm serve`: the OpenAI-compatible HTTP server.
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
    # RULER's frequent-words task (zeta) and rendered needles (PIL, with matplotlib).
    "scipy==1.17.1",
    "pillow==13.0.0",
]
PARITY = [
    "torch==2.13.0",
    "diffusers==0.42.1",
]
WORLDMODELS = [
    "gymnasium==1.4.0",
    "box2d==2.3.10",
    "cma==4.5.0",
    # CarRacing renders with pygame; the -ce build is the one vizdoom also uses.
    "pygame-ce==2.5.8",
]
DOOM = ["vizdoom==1.3.2"]
DEV = PARITY + WORLDMODELS + [
    "pytest==8.4.2",
    "pytest-xdist==3.8.0",
    "hypothesis==6.170.17",
    "ruff==0.17.6",
    # Real clients of `lwm serve` in its tests.
    "openai==3.57.0",
    "httpx==0.28.1",
    "lm-eval==0.4.13",
    "tenacity==9.2.1",  # lm-eval's API models (local-completions) need it
]

setup(
    name="lwm",
    version="0.1.0",
    description="Long-context video+language world models in JAX, with ring attention.",
    packages=find_packages(include=["lwm", "lwm.*", "ringattention", "ringattention.*"]),
    package_data={"lwm": ["assets/*"]},
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require={
        "parity": PARITY,
        "worldmodels": WORLDMODELS,
        "doom": DOOM,
        "dev": DEV,
    },
    entry_points={"console_scripts": ["lwm=lwm.cli:main"]},
)
