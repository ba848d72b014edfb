"""LWM's `vqgan` file: parameter trees of LWM's flax VQGAN (rebuilt in lwm_reference.py, flax's
automatic names), pickled as LWM's `VQGAN` class unpickles them; `lwm.load_vq` gives LWM's codes
exactly and its clipped decode, the default architecture maps array for array, and bad files
are refused with the file and the key named."""

from __future__ import annotations

import dataclasses
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict
from lwm_reference import LWM_VQ_DEFAULT, LwmVQGAN, init_lwm_vqgan, lwm_vqgan_shapes

import lwm
from lwm.config.vq import VQModelConfig
from lwm.errors import LwmError
from lwm.model.formats.lwm_vqgan import (
    infer_lwm_vq_config,
    load_lwm_vqgan,
    lwm_name_to_ours,
    ours_name_to_lwm,
    save_lwm_vqgan,
)
from lwm.model.formats.safe_files import ParamFileError, UnsafeFileError, WeightMappingError
from lwm.model.formats.vq_assign import variable_names
from lwm.model.vq_tokenizer import load_vq
from lwm.model.vqgan import VQGAN, abstract_vqgan

# Attention-free and small; channel_mult[0] = 2 exercises LWM's conv_in (hidden_channels wide,
# then a shortcut in the first residual block), and 3 levels the decoder's reversed numbering.
TINY = dict(resolution=16, hidden_channels=32, channel_mult=(2, 1, 2), num_res_blocks=1, z_channels=8,
            num_embeddings=64, quantized_embed_dim=8)


def _config(cfg: dict) -> VQModelConfig:
    return VQModelConfig(resolution=cfg["resolution"], hidden_channels=cfg["hidden_channels"],
                         channel_mult=tuple(cfg["channel_mult"]), num_res_blocks=cfg["num_res_blocks"],
                         z_channels=cfg["z_channels"], codebook_size=cfg["num_embeddings"],
                         codebook_dim=cfg["quantized_embed_dim"])


def test_default_tree_maps_every_array():
    shapes = {"/".join(key): leaf.shape for key, leaf in flatten_dict(lwm_vqgan_shapes(LWM_VQ_DEFAULT)).items()}
    assert len(shapes) == 277
    assert sum(int(np.prod(shape)) for shape in shapes.values()) == 146_244_675
    ours = {name: tuple(variable.shape) for name, variable in variable_names(abstract_vqgan(VQModelConfig())).items()}
    mapped = {}
    for name, shape in shapes.items():
        target = lwm_name_to_ours(name.replace("/", "."))
        assert target in ours, name
        assert ours[target] == tuple(shape), name
        assert ours_name_to_lwm(target) == name
        mapped[target] = name
    assert set(mapped) == set(ours)  # nothing left over on either side
    assert "decoder/UpsamplingBlock_0/ResnetBlock_0/Conv_0/kernel" in shapes  # k = 0: the deepest level
    assert shapes["decoder/UpsamplingBlock_0/ResnetBlock_0/Conv_0/kernel"] == (3, 3, 768, 768)
    assert infer_lwm_vq_config({"params": lwm_vqgan_shapes(LWM_VQ_DEFAULT)}) == VQModelConfig()


@pytest.fixture(scope="module")
def tiny():
    tree = init_lwm_vqgan(TINY, seed=0)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    pixels = frames.astype(np.float32) / 127.5 - 1
    module = LwmVQGAN(TINY)
    encode = jax.jit(lambda p, x: module.apply({"params": p}, x, method=module.encode))
    decode = jax.jit(lambda p, c: module.apply({"params": p}, c, method=module.decode))
    _, codes = encode(tree, pixels)
    return tree, frames, np.asarray(codes), np.asarray(decode(tree, codes))


@pytest.mark.parametrize("arrays", ["numpy", "jax", "frozen"])
def test_lwm_file_gives_lwm_codes(tmp_path, tiny, arrays):
    tree, frames, codes, decoded = tiny
    if arrays == "jax":  # LWM could pickle jax arrays: they reconstruct through jax._src.array
        tree = jax.tree.map(jnp.asarray, tree)
    if arrays == "frozen":  # or an older flax init's FrozenDict tree
        from flax.core import freeze

        tree = freeze(tree)
    path = tmp_path / "vqgan"
    with open(path, "wb") as handle:
        pickle.dump(tree, handle)
    if arrays == "jax":
        assert b"_reconstruct_array" in path.read_bytes()
    vq = lwm.load_vq(str(path)) if arrays == "numpy" else load_vq(path, batch_size=4)
    # The shape is read from the file (the frame size is LWM's 256).
    assert vq.config == dataclasses.replace(_config(TINY), resolution=256)
    got = vq.encode(frames)
    assert got.dtype == np.int32 and got.shape == (3, 4, 4)
    np.testing.assert_array_equal(got, codes)
    if arrays != "numpy":
        return
    np.testing.assert_array_equal(vq.encode(frames.astype(np.float32) / 127.5 - 1), codes)
    pixels = vq.decode(codes)
    assert pixels.dtype == np.float32 and pixels.min() >= -1 and pixels.max() <= 1
    np.testing.assert_allclose(pixels, decoded, atol=1e-5)
    assert (np.abs(decoded) == 1).any()  # LWM's clip is in play
    # Written back in LWM's layout: the same names, the same arrays.
    back = tmp_path / "back"
    save_lwm_vqgan(load_lwm_vqgan(path), back)
    with open(back, "rb") as handle:
        again = pickle.load(handle)
    original = flatten_dict(jax.tree.map(np.asarray, tree))
    assert set(flatten_dict(again)) == set(original)
    for key, value in flatten_dict(again).items():
        np.testing.assert_array_equal(value, original[key])


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_vqgan_files(tmp_path, tiny):
    tree = tiny[0]
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_vqgan"
    path.write_bytes(pickle.dumps({**tree, "quant_conv": {"kernel": _RunsCode(marker)}}))
    with pytest.raises(UnsafeFileError, match=r"evil_vqgan.*(posix|os)\.system"):
        lwm.load_vq(str(path))
    assert not marker.exists()
    # A jax reconstruction global whose rebuild function is not numpy's is refused too.
    path.write_bytes(pickle.dumps({"a": _FakeJaxArray()}))
    with pytest.raises(UnsafeFileError):
        lwm.load_vq(str(path))

    missing = {key: value for key, value in tree.items() if key != "post_quant_conv"}
    (tmp_path / "missing").write_bytes(pickle.dumps(missing))
    with pytest.raises(WeightMappingError, match=r"missing: .*missing \['post_quant_conv/bias'"):
        lwm.load_vq(str(tmp_path / "missing"))

    extra = {**tree, "encoder": {**tree["encoder"], "AttnBlock_0": {"Conv_0": {"kernel": np.zeros((1, 1, 4, 4))}}}}
    (tmp_path / "extra").write_bytes(pickle.dumps(extra))
    with pytest.raises(WeightMappingError, match=r"extra: encoder/AttnBlock_0/Conv_0/kernel .*no attention"):
        lwm.load_vq(str(tmp_path / "extra"))

    wrong = {**tree, "quant_conv": {**tree["quant_conv"], "bias": np.zeros(7, np.float32)}}
    (tmp_path / "wrong").write_bytes(pickle.dumps(wrong))
    with pytest.raises(WeightMappingError, match=r"wrong: quant_conv/bias has shape \(7,\)"):
        lwm.load_vq(str(tmp_path / "wrong"), _config(TINY))

    (tmp_path / "cut").write_bytes(pickle.dumps(tree)[:-50])
    with pytest.raises(ParamFileError, match="cut: not a readable pickle"):
        lwm.load_vq(str(tmp_path / "cut"))
    with pytest.raises(LwmError, match="does not exist"):
        lwm.load_vq(str(tmp_path / "nowhere"))
    for error in (UnsafeFileError, WeightMappingError, ParamFileError):
        assert issubclass(error, LwmError)


class _FakeJaxArray:
    def __reduce__(self):
        import jax._src.array as jax_array

        return (jax_array._reconstruct_array, (print, ("hello",), None, {}))


def test_patch_encoder_is_refused_by_lwm_format(tmp_path, tiny):
    """LWM's file holds the convolutional encoder only: neither direction maps `encoder: patch`."""
    path = tmp_path / "vqgan"
    path.write_bytes(pickle.dumps(tiny[0]))
    patch_config = dataclasses.replace(_config(TINY), encoder="patch")
    with pytest.raises(WeightMappingError, match=r"vqgan: LWM's VQGAN has the convolutional encoder; set encoder: vqgan"):
        load_lwm_vqgan(path, patch_config)
    with pytest.raises(WeightMappingError, match="encoder: patch cannot be written"):
        save_lwm_vqgan(VQGAN(patch_config, rngs=nnx.Rngs(0)), tmp_path / "out")
