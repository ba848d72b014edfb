"""Chat template: LWM's prompt form, multi-turn, loss on assistant answers only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lwm.config.data import ChatTemplateConfig, DataConfig
from lwm.config.vision import VisionVocab
from lwm.data.chat import _encode_run, chat_prompt, encode_conversation
from lwm.data.records import ExampleEncoder, RecordProblem

CHAT = DataConfig(format="chat", vision=VisionVocab(codebook_size=16, tokens_per_frame=2))


def loss_text(tokenizer, example) -> str:
    """The tokens that carry loss, decoded (segments joined with '|')."""
    pieces, current = [], []
    for token, vision, loss in zip(example.tokens, example.is_vision, example.loss_mask):
        if loss:
            current.append(tokenizer.decode([token], [vision]))
        elif current:
            pieces.append("".join(current))
            current = []
    if current:
        pieces.append("".join(current))
    return "|".join(pieces)


def test_single_turn_matches_lwm_prompt(tokenizer):
    record = {"messages": [{"role": "user", "content": "What is 2+2?"},
                           {"role": "assistant", "content": "4."}]}
    example = ExampleEncoder(CHAT, tokenizer)(record)
    assert tokenizer.decode(example.tokens) == (
        "<s>You are a helpful assistant. USER: What is 2+2? ASSISTANT: 4.</s>")
    assert loss_text(tokenizer, example) == " 4.</s>"


def test_vision_goes_after_the_question(tokenizer):
    record = {"vision": [1, 2, 3, 4],
              "messages": [{"role": "user", "content": "Describe."},
                           {"role": "assistant", "content": "A cat."}]}
    example = ExampleEncoder(CHAT, tokenizer)(record)
    assert tokenizer.decode(example.tokens, example.is_vision) == (
        "<s>You are a helpful assistant. USER: Describe.\n<vision><v1><v2><v16><v3><v4><v17>"
        "</vision> ASSISTANT: A cat.</s>")
    assert example.is_vision.sum() == 6
    assert loss_text(tokenizer, example) == " A cat.</s>"


def test_multi_turn_loss_only_on_answers_and_custom_system(tokenizer):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]
    example = ExampleEncoder(CHAT, tokenizer)({"messages": messages})
    assert tokenizer.decode(example.tokens) == (
        "<s>Be brief. USER: Hi ASSISTANT: Hello</s> USER: Bye ASSISTANT: Ciao</s>")
    assert loss_text(tokenizer, example) == " Hello</s>| Ciao</s>"


def test_configurable_template(tokenizer):
    config = dataclasses.replace(CHAT, chat=ChatTemplateConfig(
        system="", user_prefix="[U]", assistant_prefix="[A]", answer_prefix="", add_bos=False,
        eos_after_answer=False))
    example = encode_conversation([{"role": "user", "content": "q"},
                                   {"role": "assistant", "content": "a"}], tokenizer, config, 261)
    assert tokenizer.decode(example.tokens) == "[U]q[A]a"
    assert loss_text(tokenizer, example) == "a"


@pytest.mark.parametrize("messages,reason", [
    ([{"role": "assistant", "content": "a"}], "bad_chat"),
    ([{"role": "user", "content": "q"}], "bad_chat"),
    ([{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}], "bad_chat"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}], "wrong_type"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}], "empty_example"),
    ("not a list", "bad_chat"),
])
def test_bad_conversations(tokenizer, messages, reason):
    with pytest.raises(RecordProblem) as caught:
        ExampleEncoder(CHAT, tokenizer)({"messages": messages})
    assert caught.value.reason == reason


def test_joint_encoding_keeps_the_tokenizers_own_split():
    class WordTokenizer:
        """Attaches a leading space to the following word, like sentencepiece."""

        def __init__(self):
            self.vocab = {}

        def encode(self, text):
            import re

            return [self.vocab.setdefault(w, len(self.vocab)) for w in re.findall(r" ?\S+| +", text)]

    words = WordTokenizer()
    pieces = _encode_run(words, [("USER: hi ASSISTANT:", False), (" fine", True)])
    assert pieces == [(words.encode("USER: hi ASSISTANT:"), False), (words.encode(" fine"), True)]
    # When the boundary merges (no prefix relation) each piece is encoded on its own.
    merged = _encode_run(words, [("ab", False), ("cd", True)])
    assert merged == [(words.encode("ab"), False), (words.encode("cd"), True)]


def test_generation_prompt(tokenizer):
    ids, is_vision = chat_prompt("Why?", tokenizer, CHAT, 261, vision=[0, 1])
    assert tokenizer.decode(ids, is_vision) == (
        "<s>You are a helpful assistant. USER: Why?\n<vision><v0><v1><v17></vision> ASSISTANT:")
    assert is_vision.dtype == bool and np.sum(is_vision) == 3


def test_projects_sentencepiece_tokenizer_keeps_the_loss_on_the_answer():
    from lwm.data.text_tokenizer import load_text_tokenizer

    sentencepiece = load_text_tokenizer()
    record = {"vision": [1, 2], "messages": [{"role": "user", "content": "Describe."},
                                             {"role": "assistant", "content": "A cat."}]}
    example = ExampleEncoder(CHAT, sentencepiece)(record)
    answer = example.tokens[example.loss_mask]
    assert sentencepiece.decode(answer).strip() == "A cat."
    assert answer[-1] == sentencepiece.eos_id
    # The answer's tokens are the ones the tokenizer gives the whole prompt + answer text.
    prompt = "You are a helpful assistant. USER: Why? ASSISTANT:"
    pieces = _encode_run(sentencepiece, [(prompt, False), (" Because.", True)])
    assert pieces[0][0] + pieces[1][0] == sentencepiece.encode(prompt + " Because.")
