"""Data commands: `lwm make-qa` (long-context QA chat data) and `lwm inspect-store`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lwm.cli.common import add_config_command

MAKE_QA_DESCRIPTION = """\
Builds long-context chat data as LWM did: documents (JSONL, qa.text_field) are split into chunks
of qa.chunk_tokens tokens, each chunk gets question/answer pairs, and consecutive chunks are
joined into contexts of up to each of qa.target_lengths tokens followed by questions about them.

examples:
  lwm make-qa --config configs/data/make_qa.yaml
  lwm make-qa --config configs/data/make_qa.yaml --qa.input books.jsonl --qa.output qa.jsonl \\
      --qa.target_lengths "[8192, 32768]" --data.tokenizer tokenizer.model
"""


def load_text_tokenizer(data_config: Any) -> Any:
    """The text tokenizer at `data.tokenizer` (a SentencePiece model; empty: the project's own)."""
    from lwm.data.integrity import reading
    from lwm.data.text_tokenizer import load_text_tokenizer as load

    with reading(data_config.tokenizer or "(the default)", "text tokenizer (data.tokenizer)"):
        return load(data_config.tokenizer or None)


def _run_make_qa(args: argparse.Namespace, overrides: list[str]) -> int:
    from lwm.config import load_config
    from lwm.config.data import MakeQAConfig
    from lwm.data.qa import make_qa
    from lwm.data.records import resolve_text_vocab_size

    config = load_config(MakeQAConfig, args.config, overrides)
    tokenizer = load_text_tokenizer(config.data)
    generate = None
    if config.qa.generator == "lm":
        from lwm.infer import load_inference_model
        from lwm.infer.generate import text_prompt_generator

        engine = load_inference_model(config.qa.model_dir)
        generate = text_prompt_generator(
            engine, tokenizer, max_prompt_tokens=config.qa.chunk_tokens * 2 + 256,
            max_new_tokens=config.qa.max_new_tokens, temperature=config.qa.temperature, seed=config.qa.seed,
        )
    summary = make_qa(config.qa, config.data, tokenizer, resolve_text_vocab_size(config.data, tokenizer),
                      generate=generate)
    print(f"wrote {config.qa.output}")
    print(summary.summary())
    return 0


def _run_inspect_store(args: argparse.Namespace) -> int:
    from lwm.data.store import TokenStore, rehash_store

    if args.rehash:
        chunks = rehash_store(args.path)
        print(f"recorded checksums of {sum(chunks.values())} chunks in {args.path}/store.json "
              f"({', '.join(f'{name} {count}' for name, count in chunks.items())})")
    store = TokenStore(args.path)
    if args.verify:
        checked = store.verify(show_progress=True)
        print(f"verified {sum(checked.values())} chunks of {args.path}: every checksum matches")
    info = store.summary()
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    for key in sorted(info):
        print(f"{key}: {info[key]}")
    for index in range(min(args.show, len(store))):
        example = store[index]
        print(f"example {index}: {len(example)} tokens, {int(example.is_vision.sum())} vision, "
              f"{int(example.loss_mask.sum())} with loss; first ids {example.tokens[:16].tolist()}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `make-qa` and `inspect-store`."""
    add_config_command(
        subparsers, "make-qa", help="build long-context QA chat data from documents",
        description=MAKE_QA_DESCRIPTION, run=_run_make_qa,
    )
    from lwm.cli import HelpFormatter

    parser = subparsers.add_parser(
        "inspect-store", help="print a token store's metadata and counts",
        description="Prints a token store's metadata, counts and length statistics. Opening a "
                    "store checks that every chunk file is present with its size; --verify also "
                    "reads every chunk and compares its checksum.\n\n"
                    "examples:\n  lwm inspect-store data/tokens --show 2\n"
                    "  lwm inspect-store data/tokens --verify",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("path", help="token store directory")
    parser.add_argument("--show", type=int, default=0, help="also print the first N examples")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--verify", action="store_true",
                        help="read every chunk and check it against the checksums in store.json")
    parser.add_argument("--rehash", action="store_true",
                        help="record checksums of the present contents (for stores written "
                             "before checksums were kept)")
    parser.set_defaults(func=_run_inspect_store, accepts_overrides=False)
