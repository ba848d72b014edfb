"""The `openai` SDK, unmodified, against `lwm serve`: answers and log-probabilities equal what lwm
computes directly (ChatSession, a full forward pass)."""

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_helpers import direct_logprobs

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def _chat_prompt(tokenizer, question, codes=None):
    """LWM's chat prompt as the training data renders it (what `lwm chat` feeds)."""
    from serve_helpers import MODEL

    from lwm.config.data import ChatTemplateConfig, DataConfig
    from lwm.data.chat import encode_conversation

    vision = None if codes is None else np.asarray(codes).reshape(-1).tolist()
    example = encode_conversation([{"role": "user", "content": question, "vision": vision}], tokenizer,
                                  DataConfig(chat=ChatTemplateConfig(), vision=MODEL.vision), MODEL.vocab_size,
                                  generation_prompt=True)
    return [int(t) for t in example.tokens], [bool(f) for f in example.is_vision]


def _lwm_answer(inference_model, tokenizer, question, max_new_tokens, codes=None):
    """The greedy answer of lwm's own decoding path (prefill, then the compiled decode loop)."""
    import jax

    from lwm.infer.generate import split_generated

    ids, flags = _chat_prompt(tokenizer, question, codes)
    cache = inference_model.init_cache(1, inference_model.round_cache_size(len(ids) + max_new_tokens))
    cache, hidden = inference_model.prefill(cache, [ids], [flags])
    _, _, tokens = inference_model.decode(cache, hidden, max_new_tokens=max_new_tokens, stop_ids=(tokenizer.eos_id,))
    answer, _ = split_generated(np.asarray(jax.device_get(tokens))[0], (tokenizer.eos_id,))
    return tokenizer.decode(answer).lstrip()


def test_models_and_health(client, server):
    assert [model.id for model in client.models.list().data] == ["lwm"]
    import httpx

    health = httpx.get(server.url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["slots"] == 4


def test_chat_equals_lwm_chat(client, inference_model, tokenizer):
    question = "What is the colour of the sky?"
    expected = _lwm_answer(inference_model, tokenizer, question, 12)
    response = client.chat.completions.create(
        model="lwm", messages=[{"role": "user", "content": question}], max_tokens=12, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens == len(_chat_prompt(tokenizer, question)[0])
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens

    # Streaming: the deltas add up to the same answer, then one finish reason.
    stream = client.chat.completions.create(
        model="lwm", messages=[{"role": "user", "content": question}], max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert text == expected and reasons == [choice.finish_reason]
    assert chunks[-1].usage.completion_tokens == response.usage.completion_tokens


def test_follow_up_reuses_the_prefix(client):
    first = [{"role": "user", "content": "Tell me about the sea."}]
    answer = client.chat.completions.create(model="lwm", messages=first, max_tokens=6, temperature=0)
    follow = first + [{"role": "assistant", "content": answer.choices[0].message.content},
                      {"role": "user", "content": "And the ships?"}]
    again = client.chat.completions.create(model="lwm", messages=follow, max_tokens=6, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens >= answer.usage.prompt_tokens - 1


def test_completion_logprobs_and_echo_equal_the_model(client, small_model, tokenizer):
    prompt = "The ships sail over the sea"
    response = client.completions.create(model="lwm", prompt=prompt, max_tokens=3, temperature=0, echo=True,
                                         logprobs=2)
    ids = tokenizer.encode(prompt, add_bos=True)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(ids) + 3 and logprobs.token_logprobs[0] is None
    assert response.choices[0].text.startswith(tokenizer.decode(ids))
    # The prompt's and the answer's log-probabilities are the model's own, from one forward pass
    # over the prompt and the generated tokens.
    generated = [_token_id(tokenizer, piece) for piece in logprobs.tokens[len(ids):]]
    expected = direct_logprobs(small_model, ids + generated)
    np.testing.assert_allclose(logprobs.token_logprobs[1:], expected, atol=2e-5)
    for token_lp, top in zip(logprobs.token_logprobs[len(ids):], logprobs.top_logprobs[len(ids):]):
        assert token_lp == pytest.approx(max(top.values()))  # greedy picks the most likely
        assert 2 <= len(top) <= 3
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert response.usage.prompt_tokens == len(ids)

    # A second request sharing the prefix is served from the cache with the same numbers.
    longer = client.completions.create(model="lwm", prompt=prompt + " and the", max_tokens=1, temperature=0,
                                       echo=True, logprobs=1)
    assert longer.usage.prompt_tokens_details.cached_tokens > 0
    np.testing.assert_allclose(longer.choices[0].logprobs.token_logprobs[1:len(ids)],
                               logprobs.token_logprobs[1:len(ids)], atol=1e-6)


def _token_id(tokenizer, piece):
    matches = [index for index in range(tokenizer.vocab_size)
               if tokenizer.id_to_piece(index).replace("\u2581", " ") == piece]
    assert matches, piece
    return matches[0]


def test_token_prompts_stop_and_seed(client):
    batch = client.completions.create(model="lwm", prompt=[[1, 50, 60, 70], [1, 80]], max_tokens=5, temperature=0)
    assert [choice.index for choice in batch.choices] == [0, 1]
    alone = client.completions.create(model="lwm", prompt=[1, 80], max_tokens=5, temperature=0)
    assert batch.choices[1].text == alone.choices[0].text
    sampled = [client.completions.create(model="lwm", prompt="Once", max_tokens=6, temperature=1.0, top_p=0.9,
                                         seed=7).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]
    stop = alone.choices[0].text[2:4]
    cut = client.completions.create(model="lwm", prompt=[1, 80], max_tokens=5, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
    assert alone.choices[0].text.startswith(cut.choices[0].text)


def test_concurrent_requests_equal_each_alone(client):
    prompts = [f"Story number {index} begins with" for index in range(8)]

    def ask(prompt):
        return client.completions.create(model="lwm", prompt=prompt, max_tokens=10, temperature=0).choices[0].text

    alone = [ask(prompt) for prompt in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone


def _data_url(frames, suffix):

    if suffix == ".png":
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(frames[0]).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    raise AssertionError(suffix)


def test_video_chat_equals_lwm_chat(client, inference_model, tokenizer, vq, media_root):
    from lwm.data.video import write_video
    from lwm.infer.video_qa import encode_video

    frames = np.zeros((6, 16, 16, 3), np.uint8)
    for index in range(6):
        frames[index, 4:10, 2 + index:8 + index] = (240, 60, 40)
    path = write_video(media_root / "clip.mp4", frames, fps=4)
    question = "What moves?"
    codes = encode_video(vq, path, 3)  # the server samples serve.video_frames = 3 frames
    expected = _lwm_answer(inference_model, tokenizer, question, 8, codes)
    messages = [{"role": "user", "content": [{"type": "text", "text": question},
                                             {"type": "video_url", "video_url": {"url": "clip.mp4"}}]}]
    response = client.chat.completions.create(model="lwm", messages=messages, max_tokens=8, temperature=0)
    assert response.choices[0].message.content == expected
    tokens, _ = _chat_prompt(tokenizer, question, codes)
    assert response.usage.prompt_tokens == len(tokens)

    # The same video again (a follow-up) hits the cached prefix; an image is one frame.
    again = client.chat.completions.create(model="lwm", messages=messages, max_tokens=8, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens == len(tokens) - 1
    image = [{"role": "user", "content": [{"type": "text", "text": "And this?"},
                                          {"type": "image_url", "image_url": {"url": _data_url(frames[:1], ".png")}}]}]
    one = client.chat.completions.create(model="lwm", messages=image, max_tokens=2, temperature=0)
    from lwm.data.video import resize_and_center_crop

    image_tokens, _ = _chat_prompt(tokenizer, "And this?", vq.encode(resize_and_center_crop(frames[:1], vq.resolution)))
    assert one.usage.prompt_tokens == len(image_tokens)
