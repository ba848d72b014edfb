"""Short retrieval experiments on the demo's model: how fast does passkey lookup form?

`python -m lwm.demo.retrieval --steps 150 --model.num_layers 2 ...` trains the demo's
model (configs/demo.yaml, its mesh and ring attention, through `lwm.train.loop.train`) on
passkey chats only (short single-needle documents and/or recall drills, the demo's generators
and encoders), then scores held-out chats teacher forced: "digits" is the share of the
answer's digit tokens predicted right (guessing: about 0.1), "exact" the share of answers right
in every token (greedy decoding then gives the whole answer). docs/demo.md records the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lwm.config import load_config
from lwm.data.records import ExampleEncoder
from lwm.data.synthetic import passkey_drill_records
from lwm.data.text_tokenizer import load_text_tokenizer
from lwm.demo.config import DemoConfig
from lwm.demo.evaluate import _forward_fn
from lwm.demo.pipeline import _with_instruction, data_configs, training_config
from lwm.model.params_io import load_model
from lwm.train.loop import train


def score_answers(forward: Any, examples: list[Any], text_tokenizer: Any, batch: int = 16) -> dict[str, float]:
    """Teacher-forced digit and exact-answer accuracy on the loss-masked (answer) tokens."""
    digit_ids = {i for i in range(text_tokenizer.vocab_size)
                 if (piece := text_tokenizer.decode([i]).strip()) and piece.isdigit()}
    digits = digits_right = exact = 0
    for begin in range(0, len(examples), batch):
        chunk = examples[begin:begin + batch]
        rows = chunk + [chunk[-1]] * (batch - len(chunk))
        length = int(np.ceil(max(len(e) for e in rows) / 64) * 64)
        ids = np.zeros((batch, length), np.int32)
        flags = np.zeros((batch, length), bool)
        for row, example in enumerate(rows):
            ids[row, :len(example)] = example.tokens
        text, _ = forward(ids, flags)
        for row, example in enumerate(chunk):
            positions = np.nonzero(example.loss_mask)[0]
            predicted = text[row, positions - 1].argmax(-1)
            truth = np.asarray(example.tokens)[positions]
            exact += int(np.all(predicted == truth))
            is_digit = np.array([int(t) in digit_ids for t in truth])
            digits += int(is_digit.sum())
            digits_right += int((predicted == truth)[is_digit].sum())
    return {"digits": digits_right / max(digits, 1), "exact": exact / max(len(examples), 1),
            "examples": len(examples)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parses the experiment's options, trains and scores; prints and returns one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--short", type=int, default=3000, help="short single-needle passkeys")
    parser.add_argument("--short-chars", type=int, default=120)
    parser.add_argument("--drills", type=int, default=0, help="recall drills")
    parser.add_argument("--drill-needles", type=int, default=4)
    parser.add_argument("--eval-chars", type=int, default=120, help="filler of held-out chats (max)")
    parser.add_argument("--output", default="/tmp/lwm-retrieval")
    # Anything else is a demo config override, e.g. --model.num_layers 2.
    args, overrides = parser.parse_known_args(argv)

    # The demo's mesh over fake CPU devices; set before JAX starts its backend.
    jax.config.update("jax_num_cpu_devices", 4)
    config = load_config(DemoConfig, Path(__file__).resolve().parents[2] / "configs" / "demo.yaml",
                         [*overrides, "--demo_data.chat_steps", "0", "--train.steps", str(args.steps)])
    text_tokenizer = load_text_tokenizer(config.data.tokenizer or None)
    encoder = ExampleEncoder(data_configs(config)["chat"], text_tokenizer)
    records = passkey_drill_records(config.seed, args.short, max_chars=args.short_chars)
    if args.drills:
        records += passkey_drill_records(config.seed, args.drills, max_chars=60, needles=args.drill_needles, stream=3)
    examples = [encoder(_with_instruction(record)) for record in records]
    held_out = [encoder(_with_instruction(record))
                for record in passkey_drill_records(config.seed + 1000, 64, max_chars=args.eval_chars, stream=4)]
    output = Path(args.output)
    run = training_config(config, output)
    run = dataclasses.replace(run, stages=(), logging=dataclasses.replace(run.logging, output_dir=str(output)))
    start = time.perf_counter()
    results = train(run, source=examples)
    seconds = time.perf_counter() - start
    forward = _forward_fn(load_model(results[-1].model_dir, ("--attention", "dense")))
    line = {"steps": args.steps, "seconds": round(seconds, 1), "short": args.short, "short_chars": args.short_chars,
            "drills": args.drills, "overrides": overrides,
            "mean_tokens": round(float(np.mean([len(e) for e in examples])), 1),
            **score_answers(forward, held_out, text_tokenizer)}
    print(json.dumps(line), flush=True)
    return line


if __name__ == "__main__":
    main()
