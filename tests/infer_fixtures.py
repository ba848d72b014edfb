"""Fixtures of the inference and evaluation tests: one small vision-language model (so compiled
steps are shared between tests), meshes, and checkpoints written to temporary folders. The
`conftest.py` of each folder that uses them imports them."""

import pytest
from infer_helpers import CHUNK, SMALL, make_model

from lwm.config import MeshConfig
from lwm.mesh import make_mesh


@pytest.fixture(scope="session")
def mesh_sp8():
    """All eight fake devices on the sequence axis: the KV cache is split in eight."""
    return make_mesh(MeshConfig(dp=1, fsdp=1, tp=1, sp=8))


@pytest.fixture(scope="session")
def small_model():
    return make_model(SMALL, seed=0)


@pytest.fixture(scope="session")
def single_engine(small_model):
    from lwm.infer.cache import InferenceModel

    return InferenceModel(small_model, None, prefill_chunk_size=CHUNK, key_chunk_size=CHUNK,
                           min_cache_size=256)


@pytest.fixture(scope="session")
def sharded_engine(small_model, mesh_sp8):
    from lwm.infer.cache import InferenceModel

    return InferenceModel(small_model, mesh_sp8, prefill_chunk_size=CHUNK, key_chunk_size=CHUNK,
                           min_cache_size=256)


@pytest.fixture(scope="session")
def tokenizer():
    from lwm.data.text_tokenizer import TextTokenizer

    return TextTokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, small_model):
    """The small model saved as an lwm model directory."""
    from lwm.model.params_io import save_model

    return save_model(small_model, tmp_path_factory.mktemp("model") / "small")


@pytest.fixture(scope="session")
def vq_dir(tmp_path_factory):
    """A VQ tokenizer checkpoint: 8x8 frames -> 2x2 = 4 codes from a 16-code codebook."""
    from lwm.config.vq import VQModelConfig
    from lwm.model.vqgan import init_vqgan
    from lwm.model.vqgan_convert import save_vq_checkpoint

    config = VQModelConfig(resolution=8, hidden_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                           z_channels=8, codebook_size=16, codebook_dim=8, norm_num_groups=4)
    return save_vq_checkpoint(tmp_path_factory.mktemp("vq") / "vq", init_vqgan(config, seed=0))


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory):
    """A 6-frame 16x16 mp4 of a moving bright square."""
    import numpy as np

    from lwm.data.video import write_video

    frames = np.zeros((6, 16, 16, 3), np.uint8)
    for index in range(6):
        frames[index, 4:10, 2 + index:8 + index] = (240, 60, 40)
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames, fps=4)

