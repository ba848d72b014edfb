"""Serving benchmark: generated tokens/s at 1, 4 and 16 concurrent clients over HTTP, and time to
first token with and without a prefix hit on a long video prompt.

The model is `configs/tiny.yaml`'s shape with LWM's vision vocabulary (8192 codes + <eof>/<eov>,
256 codes per frame), random weights. Throughput: a `lwm serve` server (`ServerThread` on
127.0.0.1) with 16 slots; each client thread sends `--requests` greedy completions of
`--max-tokens` tokens through the `openai` SDK; tokens/s = completion tokens / wall time, all
client counts measured in this one run. Time to first token: the engine alone, a prompt of
`--frames` frames (257 vision tokens each) followed by a question; a miss is a new video, a hit the
same video with a new question (the slot keeps the video's keys and values); medians of
`--repeats`.

Example (the figures in docs/benchmarks.md)::

    .venv/bin/python scripts/bench_serve.py --markdown /tmp/bench_serve.md
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def tiny_model(seed: int = 0):
    """configs/tiny.yaml's model with a vision vocabulary, random weights (numpy, instant)."""

    from lwm.config import ModelConfig, read_yaml
    from lwm.config.loading import from_dict
    from lwm.config.vision import VisionVocab
    from lwm.model.params_io import numpy_initialised_model

    fields = read_yaml(REPO / "configs" / "tiny.yaml")["model"]
    config = dataclasses.replace(from_dict(ModelConfig, fields), vision_vocab_size=8448,
                                 vision=VisionVocab(codebook_size=8192, tokens_per_frame=256))
    model = numpy_initialised_model(config, seed)
    return model


def throughput(model, tokenizer, clients_list, requests, max_tokens) -> dict[int, float]:
    import openai

    from lwm.config.infer import CacheConfig, LoadConfig
    from lwm.config.serve import ServerSection, ServeRunConfig
    from lwm.infer.cache import InferenceModel
    from lwm.serve.server import ServerThread, build_state

    engine = InferenceModel(model, None, prefill_chunk_size=64, key_chunk_size=128, progress=False)
    config = ServeRunConfig(load=LoadConfig(model="(in memory)"), serve=ServerSection(slots=16, queue_size=64),
                            cache=CacheConfig(max_len=256, prefill_chunk=64, key_chunk=128))
    results = {}
    with ServerThread(build_state(config, inference_model=engine, tokenizer=tokenizer)) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)

        def run(index, count):
            tokens = 0
            for number in range(count):
                response = client.completions.create(model="lwm", prompt=f"Client {index} asks question {number}:",
                                                     max_tokens=max_tokens, temperature=0)
                tokens += response.usage.completion_tokens
            return tokens

        with ThreadPoolExecutor(16) as pool:  # compile every step shape first
            list(pool.map(lambda i: run(i, 1), range(16)))
        for clients in clients_list:
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                tokens = sum(pool.map(lambda i: run(i, requests), range(clients)))
            results[clients] = tokens / (time.perf_counter() - start)
    return results


def first_token(model, frames, repeats) -> tuple[list[float], list[float]]:
    from lwm.infer.cache import InferenceModel
    from lwm.infer.engine import Engine
    from lwm.infer.requests import Request

    tokens_per_frame = model.config.tokens_per_frame
    prompt_len = frames * (tokens_per_frame + 1) + 40
    inference = InferenceModel(model, None, prefill_chunk_size=512, key_chunk_size=512, progress=False)
    engine = Engine(inference, slots=2, slot_size=prompt_len + 64, queue_size=4, prefill_chunk=512)
    rng = np.random.default_rng(0)

    def video_prompt(video, question):
        codes = []
        for frame in video:
            codes += list(frame) + [8192]
        ids = [1, 20, 21, 22] + codes + [23, 24] + question
        flags = [False] * 4 + [True] * len(codes) + [False] * (2 + len(question))
        return Request(tuple(int(i) for i in ids), tuple(flags), max_tokens=1)

    def ttft(request):
        start = time.perf_counter()
        engine.generate([request])
        return time.perf_counter() - start

    def new_video():
        return rng.integers(0, 8192, (frames, tokens_per_frame))

    ttft(video_prompt(new_video(), [30, 31]))  # compile
    ttft(video_prompt(new_video(), [30, 31]))
    misses, hits = [], []
    for repeat in range(repeats):
        video = new_video()
        misses.append(ttft(video_prompt(video, [40 + repeat, 41])))
        hits.append(ttft(video_prompt(video, [60 + repeat, 61, 62])))
        # Push the video out of both free slots (LRU), so the next miss is a real one.
        ttft(video_prompt(new_video(), [70]))
        ttft(video_prompt(new_video(), [71]))
    return misses, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16, help="frames of the long video prompt (257 tokens each)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", help="write the tables to this file too")
    args = parser.parse_args()

    from lwm.data.text_tokenizer import TextTokenizer

    model = tiny_model()
    rates = throughput(model, TextTokenizer(), [int(c) for c in args.clients.split(",")], args.requests,
                       args.max_tokens)
    misses, hits = first_token(model, args.frames, args.repeats)
    base = rates[min(rates)]
    lines = ["| concurrent clients | generated tokens/s | × one client |", "|---:|---:|---:|"]
    lines += [f"| {clients} | {rate:.1f} | {rate / base:.2f} |" for clients, rate in rates.items()]
    miss, hit = statistics.median(misses), statistics.median(hits)
    prompt = args.frames * 257 + 40
    lines += ["", f"| video prompt | time to first token (median of {args.repeats}) |", "|---|---:|",
              f"| {args.frames} frames, {prompt} tokens, prefix miss | {miss * 1000:.0f} ms |",
              f"| same video, new question (prefix hit) | {hit * 1000:.0f} ms |",
              f"| hit / miss | {hit / miss:.3f} |"]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
