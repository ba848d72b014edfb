"""The SentencePiece text tokenizer: the shipped model, its vision special tokens, and loading a
LLaMA-style model that lacks them."""

import io
import subprocess
import sys
from pathlib import Path

import pytest

from lwm.data.text_tokenizer import DEFAULT_TOKENIZER, TextTokenizer, load_text_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_text_tokenizer.py"


@pytest.fixture(scope="module")
def tokenizer():
    return load_text_tokenizer()


def test_shipped_model_ids(tokenizer):
    assert tokenizer.model_file == DEFAULT_TOKENIZER and DEFAULT_TOKENIZER.is_file()
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2, 3)
    assert 1000 <= tokenizer.vocab_size <= 4000 and len(tokenizer) == tokenizer.vocab_size
    assert tokenizer.id_to_piece(tokenizer.vision_start_id) == "<vision>"
    assert tokenizer.id_to_piece(tokenizer.vision_end_id) == "</vision>"
    assert len({tokenizer.vision_start_id, tokenizer.vision_end_id, tokenizer.bos_id,
                tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id}) == 6


def test_vision_tokens_are_single_ids_without_bos(tokenizer):
    start, end = tokenizer.vision_start_id, tokenizer.vision_end_id
    assert tokenizer.encode("<vision>") == [start]
    assert tokenizer.encode("</vision>") == [end]
    assert tokenizer.encode("<vision></vision>") == [start, end]
    prompt = "You are a helpful assistant. USER: What moves?\n<vision></vision> ASSISTANT:"
    ids = tokenizer.encode(prompt)
    assert tokenizer.bos_id not in ids and tokenizer.eos_id not in ids
    assert ids.count(start) == 1 and ids.count(end) == 1
    assert ids.index(end) == ids.index(start) + 1
    # Text around the span encodes as it would alone: no BOS or extra space piece is inserted.
    before, after = prompt.split("<vision></vision>")
    assert ids == tokenizer.encode(before) + [start, end] + tokenizer.encode(after)
    assert tokenizer.encode("a", add_bos=True, add_eos=True) == \
        [tokenizer.bos_id, *tokenizer.encode("a"), tokenizer.eos_id]


@pytest.mark.parametrize("text", [
    "The special magic Tokyo number is: 4817290.",
    "A red square bounces off the top wall.",
    "  leading spaces,\ttabs and\nnewlines  ",
    "Ünïcödé, 中文, emoji 🙂 and <visionary> look-alikes",
    "",
])
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(0 <= index < tokenizer.vocab_size for index in ids)
    assert tokenizer.unk_id not in ids  # byte fallback covers any UTF-8
    assert tokenizer.decode(ids) == text


def test_digits_are_split_and_text_is_compact(tokenizer):
    ids = tokenizer.encode("4817290")
    assert len(ids) == 7
    sentence = "The blue circle moves to the left and bounces off the bottom edge."
    assert len(tokenizer.encode(sentence)) <= 16
    assert tokenizer.decode([tokenizer.bos_id, *tokenizer.encode("hi"), tokenizer.eos_id]) == "hi"
    with pytest.raises(ValueError, match="outside the text vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])


def test_llama_style_model_gets_vision_symbols(tmp_path):
    """A model like LLaMA's (dummy-prefix space, no vision symbols) gains the two symbols as new
    ids and keeps its own segmentation of plain text."""
    import sentencepiece as spm

    lines = ["the quick brown fox jumps over the lazy dog", "hello world", "a b c d e f g"] * 50
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=300, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        minloglevel=2)
    path = tmp_path / "llama_like.model"
    path.write_bytes(model.getvalue())
    original = spm.SentencePieceProcessor(model_file=str(path))
    tokenizer = TextTokenizer(path)
    assert tokenizer.vision_start_id == original.get_piece_size()
    assert tokenizer.vision_end_id == original.get_piece_size() + 1
    assert tokenizer.pad_id == tokenizer.eos_id  # no pad piece: pad with EOS
    text = "hello world the fox"
    assert tokenizer.encode(text) == original.encode(text)  # includes the dummy-prefix space
    assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = tokenizer.encode("hello <vision></vision> world")
    assert ids[:len(original.encode("hello "))] == original.encode("hello ")
    assert tokenizer.vision_start_id in ids and tokenizer.bos_id not in ids
    assert tokenizer.encode("<vision>") == [tokenizer.vision_start_id]
    assert tokenizer.decode(ids) == "hello <vision></vision> world"


def test_training_script_is_reproducible(tmp_path):
    outputs = []
    for name in ("a.model", "b.model"):
        out = tmp_path / name
        subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--vocab-size", "400",
                        "--sentences", "3000"], check=True, capture_output=True, timeout=120)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    small = TextTokenizer(tmp_path / "a.model")
    assert small.vocab_size == 400 and small.encode("<vision>") == [small.vision_start_id]
    assert (small.bos_id, small.eos_id, small.pad_id) == (1, 2, 3)


def test_missing_or_bad_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        TextTokenizer(tmp_path / "nothing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x00garbage" * 20)
    with pytest.raises(ValueError, match="bad.model"):
        TextTokenizer(bad)
