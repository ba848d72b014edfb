"""`lwm eval` end to end on a tiny random model over 8 fake devices with the KV cache sharded
over `sp`: the command writes RULER's table, a heatmap and results a rerun extends; V-NIAH's
grid and heatmap through a VQ tokenizer."""

import json

import numpy as np
import pytest

from lwm.config.eval import VniahConfig
from lwm.config.model import ModelConfig, VisionVocab
from lwm.eval.vniah import draw_needle, insert_needle, render_needle, run_vniah

CHUNK = 64


def _model():

    from lwm.model.params_io import numpy_initialised_model

    config = ModelConfig(vocab_size=2048, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_seq_len=4096, rms_norm_eps=1e-6, vision_vocab_size=20,
                         vision=VisionVocab(codebook_size=16, tokens_per_frame=4))
    model = numpy_initialised_model(config, 0)
    return model


@pytest.fixture(scope="module")
def engine():
    from lwm.config import MeshConfig
    from lwm.infer.cache import InferenceModel
    from lwm.mesh import make_mesh

    mesh = make_mesh(MeshConfig(dp=1, fsdp=1, tp=1, sp=8))
    # The sizes of the command's engine below, so both share compiled steps.
    return InferenceModel(_model(), mesh, prefill_chunk_size=CHUNK, key_chunk_size=16, min_cache_size=512,
                          progress=False)


@pytest.fixture(scope="module")
def tokenizer():
    from lwm.data.text_tokenizer import TextTokenizer

    return TextTokenizer()


@pytest.fixture(scope="module")
def vq():
    from lwm.config.vq import VQModelConfig
    from lwm.model.vq_tokenizer import VQTokenizer
    from lwm.model.vqgan import init_vqgan

    config = VQModelConfig(resolution=8, hidden_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                           z_channels=8, codebook_size=16, codebook_dim=8, norm_num_groups=4)
    return VQTokenizer(init_vqgan(config, seed=0))


def test_needle_frames_and_insertion():
    rng = np.random.default_rng(0)
    for kind in ("digits", "word", "shape"):
        needle = draw_needle(rng, kind)
        frame = render_needle(needle, 32)
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8 and frame.max() > 200
    haystack = np.zeros((10, 4), np.int32)
    needle = np.ones((2, 4), np.int32)
    for depth, start in ((0, 0), (50, 5), (100, 10)):
        frames, first = insert_needle(haystack, needle, depth)
        assert first == start and len(frames) == 12 and frames[start:start + 2].all()


def test_vniah_grid_and_heatmap(engine, tokenizer, vq, tmp_path):
    settings = VniahConfig(frames=(4, 8), depth_intervals=3, rounds=1, max_new_tokens=4)
    report = run_vniah(engine, tokenizer, vq, settings, tmp_path, progress=False)
    assert report.new_cells == 6 and len(report.results) == 6
    assert sorted({r["frames"] for r in report.results}) == [4, 8]
    assert {r["needle_frame"] for r in report.results if r["frames"] == 8} == {0, 4, 7}
    assert report.heatmap_path.stat().st_size > 1000
    again = run_vniah(engine, tokenizer, vq, settings, tmp_path, progress=False)
    assert (again.new_cells, again.resumed_cells) == (0, 6)


def test_lwm_eval_command(tmp_path, capsys):
    from lwm.cli import main
    from lwm.model.params_io import save_model

    model_dir = save_model(_model(), tmp_path / "model")
    config = tmp_path / "eval.yaml"
    config.write_text(
        "suite: ruler\n"
        "mesh: {dp: 1, fsdp: 1, tp: 1, sp: -1}\n"
        "cache: {prefill_chunk: 64, key_chunk: 16, max_len: 512}\n"
        f"ruler: {{tasks: [niah_single_1], lengths: [384], samples: 1, max_new_tokens: 4, output_dir: {tmp_path / 'out'}}}\n"
        "progress: false\n"
    )
    assert main(["eval", "--config", str(config), "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "over sp=8 device(s)" in out and "| niah_single_1 |" in out and "1 new items, 0 resumed" in out
    assert (tmp_path / "out" / "heatmap_niah_single_1.png").stat().st_size > 1000
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert [r["prompt_tokens"] for r in results] == [380] and isinstance(results[0]["response"], str)
    assert results[0]["score"] == 0.0  # a random model does not find a 7-digit number by luck
    # --samples, --lengths and --tasks extend the same results.
    assert main(["eval", "--config", str(config), "--model", str(model_dir), "--samples", "2"]) == 0
    assert "1 new items, 1 resumed" in capsys.readouterr().out
    # A user mistake is one line naming the field.
    assert main(["eval", "--config", str(config), "--model", str(model_dir), "--tasks", "niah_single_9"]) == 2
    assert "unknown task 'niah_single_9'" in capsys.readouterr().err
