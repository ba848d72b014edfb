"""LWM's prompt layout, and `lwm chat` answering through a model and a VQGAN written as LWM's
code writes them: the answer is the greedy continuation LWM's own forward pass (rebuilt in
lwm_reference.py) gives for the prompt LWM's `vision_chat` builds."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lwm_reference import LwmVQGAN, init_lwm_llama, init_lwm_vqgan, lwm_logits, write_like_tux

from lwm.config import ModelConfig
from lwm.config.vision import VisionVocab
from lwm.data import lwm_layout
from lwm.model.formats.lwm_checkpoint import jax_to_lwm

# 7 levels: a 256x256 frame (LWM's fixed size) becomes 4x4 = 16 codes from a 16-code codebook.
VQ = dict(resolution=256, hidden_channels=32, channel_mult=(1,) * 7, num_res_blocks=1, z_channels=8,
          num_embeddings=16, quantized_embed_dim=8)
SHAPE = dict(vocab=64, hidden=32, intermediate=48, layers=2, heads=4, theta=10000.0, eps=1e-6, vision_vocab=8448)


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A small LLaMA-style SentencePiece model (BOS 1, EOS 2, dummy prefix, spaces kept)."""
    import sentencepiece as spm

    text = ["You are a helpful assistant.", "USER: what happens in the video?", "ASSISTANT: a ball",
            "<vision> </vision> frames of a red ball moving left", "the quick brown fox jumps"] * 20
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buffer, vocab_size=60,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   remove_extra_whitespaces=False, hard_vocab_limit=False)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_bytes(buffer.getvalue())
    return path


def test_prompt_layout_as_vision_chat_builds_it(sp_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    tokenizer = lwm_layout.LwmTokenizer(sp_model)
    codes = np.arange(2 * 16).reshape(2, 16) % 16
    ids, flags = lwm_layout.chat_prompt(tokenizer, "what happens?", codes)
    # Each of vision_chat's five tokenizer.encode calls adds BOS; "<s>" in the text is BOS too.
    expected = ([1, 1] + sp.encode("You are a helpful assistant. USER: what happens?\n")
                + [1] + sp.encode("<vision>")
                + list(codes[0]) + [8193] + list(codes[1]) + [8193]
                + [1] + sp.encode("</vision>") + [1] + sp.encode(" ASSISTANT:"))
    assert ids == expected
    assert ids[:2] == [1, 1]
    vision = [i for i, flag in enumerate(flags) if flag]
    assert len(vision) == 2 * 17 and ids[vision[16]] == 8193 and ids[vision[-1]] == 8193
    # Training data ends frames with <eof> and only the last with <eov>.
    assert lwm_layout.training_vision_tokens(codes)[16] == 8192
    assert lwm_layout.training_vision_tokens(codes)[-1] == 8193
    # Left padding to vision_chat's length; positions restart at 0 on the first real token.
    length = lwm_layout.padded_length(2, block_size=128)
    assert length == 896  # 2 * 257 + 256 = 770 -> 7 blocks of 128
    batch = lwm_layout.left_pad([(ids, flags)], length)
    assert batch["attention_mask"].sum() == len(ids) and batch["input_ids"][0, -1] == ids[-1]
    assert batch["position_ids"][0, -len(ids)] == 0 and batch["position_ids"][0, -1] == len(ids) - 1
    # Frame choice: linspace truncated to int, never repeated.
    assert lwm_layout.frame_indices(100, 8) == [0, 14, 28, 42, 56, 70, 84, 99]
    assert lwm_layout.frame_indices(5, 8) == [0, 1, 2, 3, 4]
    assert lwm_layout.forced_end_of_frame(257) and not lwm_layout.forced_end_of_frame(256)
    cond, uncond = lwm_layout.generation_prompts("fireworks")
    assert cond.endswith("Generate an image of fireworks ASSISTANT: <vision>") and uncond == "<s><vision>"


def test_process_frame_resizes_and_crops_like_lwm():
    frame = np.random.default_rng(0).integers(0, 256, (240, 427, 3)).astype(np.uint8)
    out = lwm_layout.process_frame(frame)
    assert out.shape == (256, 256, 3) and out.dtype == np.float32
    from PIL import Image

    # vision_chat: short side 256, long side int(256 * 427 / 240) = 455, crop box (99.5, 0, 355.5, 256).
    image = Image.fromarray(frame).resize((455, 256)).crop((99.5, 0, 355.5, 256))
    np.testing.assert_array_equal(out, np.asarray(image, np.float32) / 127.5 - 1)


def test_lwm_chat_answers_like_lwm(tmp_path, sp_model, capsys):
    from lwm.cli import main
    from lwm.data.video import write_video

    # LWM's files, written as LWM's code writes them.
    tree = init_lwm_llama(SHAPE, scan_layers=True, seed=4)
    write_like_tux(tmp_path / "params", tree)
    vq_tree = init_lwm_vqgan(VQ, seed=5)
    import pickle

    (tmp_path / "vqgan").write_bytes(pickle.dumps(vq_tree))
    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                         rms_norm_eps=1e-6, rope_theta=10000.0, max_seq_len=4096, vision_vocab_size=8448,
                         vision=VisionVocab(codebook_size=8192, tokens_per_frame=16), attention="dense",
                         param_dtype="float32")
    model_dir = jax_to_lwm(f"params::{tmp_path / 'params'}", tmp_path / "model", config, progress=False)
    rng = np.random.default_rng(6)
    write_video(tmp_path / "clip.mp4", rng.integers(0, 256, (10, 96, 128, 3)).astype(np.uint8), fps=4)

    question = "what happens?"
    assert main(["chat", "--config", "configs/infer/chat-tiny.yaml", "--model", str(model_dir),
                 "--load.tokenizer", str(sp_model), "--load.vq", str(tmp_path / "vqgan"),
                 "--video", str(tmp_path / "clip.mp4"), "--question", question,
                 "--sampling.max_new_tokens", "6", "--chat.max_frames", "4"]) == 0
    answer = capsys.readouterr().out.split("ASSISTANT: ", 1)[1].split("\n", 1)[0]

    # LWM's side: its frames and codes, its prompt, its forward pass, greedy.
    pixels = lwm_layout.read_vision(tmp_path / "clip.mp4", max_n_frames=4)
    module = LwmVQGAN(VQ)
    _, codes = jax.jit(lambda p, x: module.apply({"params": p}, x, method=module.encode))(vq_tree, pixels)
    tokenizer = lwm_layout.LwmTokenizer(sp_model)
    ids, flags = lwm_layout.chat_prompt(tokenizer, question, np.asarray(codes).reshape(4, -1))
    generated: list[int] = []
    length = len(ids) + 6  # right-padded to one length (causal: the padding is never attended)
    for _ in range(6):
        row = ids + generated
        padded = np.zeros((1, length), np.int32)
        padded[0, :len(row)] = row
        vision = np.zeros((1, length), bool)
        vision[0, :len(flags)] = flags
        _, text_logits = lwm_logits(SHAPE, tree, padded, vision, True)
        token = int(jnp.argmax(text_logits[0, len(row) - 1]))
        if token == tokenizer.eos_id:
            break
        generated.append(token)
    assert answer == tokenizer.decode(generated).strip()
    assert generated  # something was generated
