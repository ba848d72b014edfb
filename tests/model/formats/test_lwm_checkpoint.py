"""LWM's streaming `params` files: fixtures written as tux's StreamingCheckpointer writes them
(msgpack + flax.serialization called directly) from parameter trees of LWM's flax modules
(rebuilt in lwm_reference.py); read, converted to an lwm model directory, compared with LWM's
own forward pass, and written back bit for bit."""

from __future__ import annotations

import dataclasses

import flax.serialization
import jax
import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from lwm_reference import init_lwm_llama, lwm_logits, write_like_tux

from lwm.config import ModelConfig
from lwm.config.vision import VisionVocab
from lwm.errors import LwmError
from lwm.model.formats.lwm_checkpoint import is_lwm_release, jax_to_lwm, lwm_to_jax
from lwm.model.formats.lwm_streaming import (
    CheckpointFormatError,
    iter_streaming_records,
    read_lwm_params,
    write_streaming,
)
from lwm.model.formats.safe_files import WeightMappingError

SHAPE = dict(vocab=64, hidden=32, intermediate=48, layers=2, heads=4, theta=10000.0, eps=1e-6, vision_vocab=24)


def our_config(scan_layers: bool = True, **changes) -> ModelConfig:
    fields = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                  rms_norm_eps=1e-6, rope_theta=10000.0, max_seq_len=64, vision_vocab_size=24,
                  vision=VisionVocab(codebook_size=16, tokens_per_frame=4), attention="dense",
                  scan_layers=scan_layers, dtype="float32", param_dtype="float32")
    fields.update(changes)
    return ModelConfig(**fields)


@pytest.fixture(scope="module")
def lwm_tree():
    return init_lwm_llama(SHAPE, scan_layers=True, seed=0)


def _flat(tree):
    return {key: np.asarray(value) for key, value in flatten_dict(tree).items()}


def test_every_spec_kind_reads_what_tux_wrote(tmp_path, lwm_tree):
    expected = _flat(lwm_tree["params"])
    write_like_tux(tmp_path / "params", lwm_tree)
    train_state = {"step": np.asarray(7, np.int32), "params": lwm_tree,
                   "opt_state": {"mu": jax_tree_zeros(lwm_tree)}}
    write_like_tux(tmp_path / "train_state", train_state)
    # flax_params: one plain msgpack tree of the parameters, as flax.serialization writes it.
    (tmp_path / "flax").write_bytes(flax.serialization.to_bytes(lwm_tree["params"]))
    for spec in (f"params::{tmp_path / 'params'}", str(tmp_path / "params"),
                 f"trainstate::{tmp_path / 'train_state'}", f"trainstate_params::{tmp_path / 'train_state'}",
                 f"flax_params::{tmp_path / 'flax'}"):
        got = dict(read_lwm_params(spec, progress=False))
        assert set(got) == set(expected), spec
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value)
    assert ("transformer", "h", "scan_decoder", "attention", "wq", "kernel") in expected


def jax_tree_zeros(tree):
    return {key: np.zeros_like(value) for key, value in flatten_dict(tree, sep="/").items()}


def test_bfloat16_and_chunked_arrays(tmp_path, lwm_tree, monkeypatch):
    tree = {"params": {k: v for k, v in lwm_tree["params"].items()}}
    bf16 = {key: value.astype(ml_dtypes.bfloat16) for key, value in _flat(tree).items()}
    from flax.traverse_util import unflatten_dict

    # flax chunks arrays above MAX_CHUNK_SIZE bytes; shrink it so tiny arrays are chunked.
    monkeypatch.setattr(flax.serialization, "MAX_CHUNK_SIZE", 256)
    write_like_tux(tmp_path / "params", unflatten_dict(bf16))
    raw = (tmp_path / "params").read_bytes()
    assert b"__msgpack_chunked_array__" in raw
    got = dict(iter_streaming_records(tmp_path / "params", progress=False))
    for key, value in bf16.items():
        assert got[key].dtype == ml_dtypes.bfloat16 and got[key].shape == value.shape
        assert got[key].tobytes() == value.tobytes()
    # Our writer, chunking at the same size, gives the same bytes as tux + flax.
    write_streaming(tmp_path / "ours", bf16.items(), chunk_bytes=256)
    assert (tmp_path / "ours").read_bytes() == raw
    # ... and flax's own reader reads each of its records.
    unpacker = msgpack.Unpacker(open(tmp_path / "ours", "rb"), max_buffer_size=0)
    for key, value in unpacker:
        assert flax.serialization.from_bytes(None, value).tobytes() == bf16[tuple(key)].tobytes()


@pytest.mark.parametrize(("file_scanned", "model_scanned"), [(True, True), (False, False), (False, True)])
def test_converted_model_gives_lwm_logits(tmp_path, file_scanned, model_scanned):
    import lwm

    tree = init_lwm_llama(SHAPE, scan_layers=file_scanned, seed=1)
    write_like_tux(tmp_path / "params", tree)
    out = jax_to_lwm(f"params::{tmp_path / 'params'}", tmp_path / "model", our_config(model_scanned), progress=False)
    assert is_lwm_release(out)
    model = lwm.load_model(str(out))
    rng = np.random.default_rng(0)
    # A text prefix, a "frame" of vision codes with <eof>/<eov>, then text again.
    ids = np.concatenate([rng.integers(0, 64, 5), rng.integers(0, 16, 4), [16], rng.integers(0, 16, 4), [17],
                          rng.integers(0, 64, 3)])[None].astype(np.int32)
    vision = np.zeros_like(ids, bool)
    vision[0, 5:15] = True
    want_vision, want_text = lwm_logits(SHAPE, tree, ids, vision, file_scanned)
    text, vision_logits = _our_logits(model, ids, vision)
    np.testing.assert_allclose(np.asarray(text), np.asarray(want_text), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(vision_logits), np.asarray(want_vision), atol=1e-4, rtol=0)
    # Without the q/k permutation the logits would differ: the test can fail.
    assert np.abs(np.asarray(want_text)).max() > 1e-3


def test_text_model_logits(tmp_path):
    import lwm

    shape = {**SHAPE, "vision_vocab": 0}
    tree = init_lwm_llama(shape, scan_layers=True, seed=2)
    write_like_tux(tmp_path / "params", tree)
    out = jax_to_lwm(tmp_path / "params", tmp_path / "model", our_config(vision_vocab_size=0), progress=False)
    ids = np.arange(10, dtype=np.int32)[None] * 5 % 64
    _, want = lwm_logits(shape, tree, ids, np.zeros_like(ids, bool), True)
    got, _ = _our_logits(lwm.load_model(str(out)), ids, None)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=0)


def _our_logits(model, ids, vision):
    """Our model's (text, vision) logits, compiled once (eager dispatch is slow on CPU)."""
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, vision):
        return nnx.merge(graphdef, state).logits_both_heads(ids, input_is_vision_BT=vision)

    return run(state, jnp.asarray(ids), None if vision is None else jnp.asarray(vision))


@pytest.mark.parametrize("scan", [True, False])
def test_round_trip_is_bit_exact(tmp_path, scan):
    tree = init_lwm_llama(SHAPE, scan_layers=scan, seed=3)
    bf16 = {key: value.astype(ml_dtypes.bfloat16) for key, value in _flat(tree).items()}
    from flax.traverse_util import unflatten_dict

    write_like_tux(tmp_path / "params", unflatten_dict(bf16))
    model_dir = jax_to_lwm(tmp_path / "params", tmp_path / "model",
                           our_config(scan_layers=not scan, param_dtype="bfloat16"), progress=False)
    lwm_to_jax(model_dir, tmp_path / "back", dtype="bfloat16", scan_layers=scan)
    back = dict(iter_streaming_records(tmp_path / "back", progress=False))
    assert set(back) == set(bf16)
    for key, value in bf16.items():
        assert back[key].dtype == value.dtype and back[key].tobytes() == value.tobytes(), key
    # float32 output of bfloat16 weights is exact too.
    lwm_to_jax(model_dir, tmp_path / "back32", dtype="float32", scan_layers=scan)
    for key, value in iter_streaming_records(tmp_path / "back32", progress=False):
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, bf16[key].astype(np.float32))


def test_bad_files_name_the_file_and_key(tmp_path, lwm_tree):
    config = our_config()
    path = tmp_path / "params"
    write_like_tux(path, lwm_tree)
    data = path.read_bytes()
    (tmp_path / "truncated").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointFormatError, match=r"truncated.*truncated after key params/"):
        list(read_lwm_params(tmp_path / "truncated", progress=False))

    flat = _flat(lwm_tree)
    wrong = dict(flat)
    key = ("params", "transformer", "h", "scan_decoder", "feed_forward", "w1", "kernel")
    wrong[key] = np.zeros((2, 32, 47), np.float32)
    _write_flat(tmp_path / "wrong_shape", wrong)
    with pytest.raises(WeightMappingError, match=r"wrong_shape: transformer/h/scan_decoder/feed_forward/w1/kernel "
                                                 r"has shape \(2, 32, 47\)"):
        jax_to_lwm(tmp_path / "wrong_shape", tmp_path / "m1", config, progress=False)

    missing = {k: v for k, v in flat.items() if k[1:] != ("vision_head", "kernel")}
    _write_flat(tmp_path / "missing", missing)
    with pytest.raises(WeightMappingError, match=r"missing: missing 1 parameter.*vision_head/kernel"):
        jax_to_lwm(tmp_path / "missing", tmp_path / "m2", config, progress=False)

    extra = {**flat, ("params", "transformer", "wpe", "embedding"): np.zeros((4, 32), np.float32)}
    _write_flat(tmp_path / "extra", extra)
    with pytest.raises(WeightMappingError, match=r"extra: transformer/wpe/embedding is not a parameter"):
        jax_to_lwm(tmp_path / "extra", tmp_path / "m3", config, progress=False)

    (tmp_path / "garbage").write_bytes(b"\x93\x01\x02\x03")  # a msgpack array, not a record
    with pytest.raises(CheckpointFormatError, match="garbage: the record after key"):
        list(read_lwm_params(tmp_path / "garbage", progress=False))
    with pytest.raises(CheckpointFormatError, match="streaming checkpoint, load it as params::"):
        list(read_lwm_params(f"flax_params::{path}", progress=False))
    with pytest.raises(CheckpointFormatError, match="unknown load spec kind 'pickle'"):
        list(read_lwm_params(f"pickle::{path}", progress=False))
    # A text-only config does not silently drop the vision tables.
    with pytest.raises(WeightMappingError, match="vte/embedding is not a parameter"):
        jax_to_lwm(path, tmp_path / "m4", dataclasses.replace(config, vision_vocab_size=0), progress=False)
    for error in (CheckpointFormatError, WeightMappingError):
        assert issubclass(error, LwmError)


def _write_flat(path, flat):
    packer = msgpack.Packer()
    with open(path, "wb") as handle:
        for key, value in flat.items():
            handle.write(packer.pack((key, flax.serialization.to_bytes(value))))


def test_cli_round_trip(tmp_path, lwm_tree, capsys):
    from lwm.cli import main

    write_like_tux(tmp_path / "params", lwm_tree)
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "model:\n  vocab_size: 64\n  hidden_size: 32\n  intermediate_size: 48\n  num_layers: 2\n"
        "  num_heads: 4\n  rms_norm_eps: 1.0e-6\n  rope_theta: 50000000.0\n  vision_vocab_size: 24\n"
        "  vision: {codebook_size: 16, tokens_per_frame: 4}\n  param_dtype: float32\n"
    )
    assert main(["convert", "jax2lwm", f"params::{tmp_path / 'params'}", str(tmp_path / "model"),
                 "--model-config", str(preset), "--model.rope_theta", "10000.0"]) == 0
    from lwm.model.params_io import load_model_config

    assert load_model_config(tmp_path / "model").rope_theta == 10000.0
    assert main(["convert", "lwm2jax", str(tmp_path / "model"), str(tmp_path / "back"), "--dtype", "float32"]) == 0
    back = dict(iter_streaming_records(tmp_path / "back", progress=False))
    for key, value in _flat(lwm_tree).items():
        np.testing.assert_array_equal(back[key], value)
    assert "params::" in capsys.readouterr().out
