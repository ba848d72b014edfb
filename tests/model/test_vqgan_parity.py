"""The Flax VQGAN against diffusers' PyTorch `VQModel`: weights imported from a save_pretrained
folder give identical codes and matching pixels; the
parameter-file loader refuses pickles that would run code."""

import functools
import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402

from lwm.model.formats.diffusers_vq import diffusers_config_to_vq  # noqa: E402
from lwm.model.formats.safe_files import UnsafeFileError, load_param_file  # noqa: E402
from lwm.model.vq_tokenizer import load_vq_tokenizer  # noqa: E402

TINY = dict(
    block_out_channels=(32, 32, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    latent_channels=8,
    vq_embed_dim=8,
    num_vq_embeddings=64,
    norm_num_groups=8,
)
VARIANTS = {
    "amused-like": dict(norm_type="group", mid_block_add_attention=False),
    "attention-spatial": dict(norm_type="spatial", mid_block_add_attention=True),
    "attention-group": dict(norm_type="group", mid_block_add_attention=True),
}


@functools.cache
def _reference(variant: str, seed: int = 0):
    """A random tiny diffusers VQModel with a codebook drawn from its own latents (so that the
    codes are diverse), some uint8 frames, and diffusers' codes and decoded pixels for them."""
    torch.manual_seed(seed)
    model = diffusers.VQModel(**TINY, **VARIANTS[variant]).eval()
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    frames[:2, 8:20, 4:28] = (250, 20, 20)  # some structure besides noise
    pixels = torch.from_numpy(frames.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:  # non-trivial norm scales and biases
                parameter.add_(0.1 * torch.randn_like(parameter))
        latents = model.encode(pixels).latents
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        chosen = flat[torch.randperm(len(flat))[: TINY["num_vq_embeddings"]]]
        model.quantize.embedding.weight.copy_(chosen + 0.05 * torch.randn_like(chosen))
        _, _, (_, _, indices) = model.quantize(latents)
        codes = indices.reshape(latents.shape[0], latents.shape[2], latents.shape[3]).numpy()
        decoded = model.decode(latents).sample.permute(0, 2, 3, 1).numpy()
    return model, frames, codes, decoded


@pytest.fixture(scope="module")
def tokenizer_for(tmp_path_factory):
    """Saves the variant's diffusers model with save_pretrained and loads it as our tokenizer
    (once per variant and module)."""
    loaded = {}

    def get(variant: str):
        if variant not in loaded:
            folder = tmp_path_factory.mktemp(variant)
            _reference(variant)[0].save_pretrained(folder)
            loaded[variant] = load_vq_tokenizer(folder, resolution=32, batch_size=4)
        return loaded[variant]

    return get


@pytest.mark.parametrize("variant", ["amused-like", "attention-spatial"])
def test_diffusers_folder_parity(tokenizer_for, variant):
    _, frames, codes, decoded = _reference(variant)
    tokenizer = tokenizer_for(variant)
    assert tokenizer.config.norm_type == VARIANTS[variant]["norm_type"]
    assert tokenizer.config.downsample_factor == 4 and tokenizer.tokens_per_frame == 64

    ours = tokenizer.encode(frames)
    assert ours.dtype == np.int32 and ours.shape == codes.shape == (4, 8, 8)
    assert len(np.unique(codes)) >= 16
    np.testing.assert_array_equal(ours, codes)

    pixels = tokenizer.decode_pixels(ours)
    assert pixels.dtype == np.float32 and np.abs(pixels - decoded).max() < 1e-4
    frames_back = tokenizer.decode(ours)
    assert frames_back.dtype == np.uint8 and frames_back.shape == frames.shape
    expected = np.clip(np.rint((decoded + 1) * 127.5), 0, 255)
    assert np.abs(frames_back.astype(int) - expected).max() <= 1


# LWM's own vqgan files (flax auto names) are tested in tests/model/formats/test_lwm_vqgan.py.


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "vqgan.pkl"
    path.write_bytes(pickle.dumps({"params": {"kernel": np.ones(2), "x": _RunsCode(marker)}}))
    with pytest.raises(UnsafeFileError, match=r"vqgan\.pkl.*(posix|os)\.system"):
        load_param_file(path)
    assert not marker.exists()
    # Other ways of reaching code are refused the same way.
    path.write_bytes(pickle.dumps({"f": eval}))
    with pytest.raises(UnsafeFileError, match="builtins.eval"):
        load_param_file(path)
    path.write_bytes(pickle.dumps({"s": "a string, not an array"}))
    with pytest.raises(UnsafeFileError, match="str"):
        load_param_file(path)
    torch.save({"w": torch.ones(2)}, tmp_path / "torch.pt")  # a zip with pickled torch storages
    with pytest.raises(ValueError, match="torch.pt"):
        load_param_file(tmp_path / "torch.pt")
    # Plain arrays, the legitimate content, still load (protocol 2 and 5 included).
    for protocol in (2, 5):
        path.write_bytes(pickle.dumps({"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}},
                                      protocol=protocol))
        loaded = load_param_file(path)
        np.testing.assert_array_equal(loaded["a"]["b"], np.arange(6).reshape(2, 3))


def test_tokenizer_input_checks(tokenizer_for):
    _, frames, _, _ = _reference("amused-like")
    tokenizer = tokenizer_for("amused-like")
    with pytest.raises(ValueError, match="multiple of the downsampling factor 4"):
        tokenizer.encode(np.zeros((1, 30, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 64\)"):
        tokenizer.decode(np.full((1, 8, 8), 64))
    assert tokenizer.encode(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 8, 8)
    # Batches larger than batch_size and ragged tails give the same codes as one by one.
    many = np.concatenate([frames, frames[:3]])
    codes = tokenizer.encode(many)
    np.testing.assert_array_equal(codes[4:], codes[:3])
    assert jax.numpy.asarray(codes).shape == (7, 8, 8)


# diffusers' config for the aMUSEd f16 VQGAN (amused/amused-256, subfolder vqvae) as REFERENCE.md
# describes it: 128 channels x (1, 2, 2, 4, 6), 2 res blocks, no attention, 64-d latents, 8192 codes.
AMUSED_VQ = dict(
    act_fn="silu", block_out_channels=[128, 256, 256, 512, 768],
    down_block_types=["DownEncoderBlock2D"] * 5, up_block_types=["UpDecoderBlock2D"] * 5,
    in_channels=3, out_channels=3, latent_channels=64, layers_per_block=2, norm_num_groups=32,
    norm_type="group", mid_block_add_attention=False, num_vq_embeddings=8192, vq_embed_dim=None,
    lookup_from_codebook=True, force_upcast=False, sample_size=32,
)


def test_amused_f16_architecture_matches_diffusers_layer_for_layer():
    """Every tensor of diffusers' aMUSEd VQModel maps onto a variable of our model built from
    configs/vq/amused-f16.yaml with the same shape, and nothing is left over (no weights are
    needed: torch builds the model on the meta device)."""
    from pathlib import Path

    from lwm.config import load_config
    from lwm.config.vq import VQTrainRunConfig
    from lwm.model.formats.diffusers_vq import diffusers_state_to_ours
    from lwm.model.formats.vq_assign import iter_variables as _iter_variables
    from lwm.model.vqgan import abstract_vqgan

    preset = Path(__file__).resolve().parents[2] / "configs" / "vq" / "amused-f16.yaml"
    config = load_config(VQTrainRunConfig, preset).model
    assert diffusers_config_to_vq(AMUSED_VQ, resolution=256) == config
    with torch.device("meta"):
        reference = diffusers.VQModel(**AMUSED_VQ)
    state = {key: np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), tuple(value.shape),
                                                  (0,) * value.dim())
             for key, value in reference.state_dict().items()}
    shapes = {name: value.shape for name, value in diffusers_state_to_ours(state).items()}
    ours = {".".join(map(str, path)): tuple(variable.shape)
            for path, variable in _iter_variables(abstract_vqgan(config))}
    assert shapes == ours
    assert ours["quantize.codebook"] == (8192, 64)
    parameters = sum(int(np.prod(shape)) for shape in ours.values())
    assert parameters == sum(value.numel() for value in reference.state_dict().values())
