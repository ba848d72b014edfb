"""`lwm eval`: RULER's long-context task suite, or the video needle (V-NIAH).

Takes `--config PATH` plus dotted overrides; `--tasks`, `--lengths`, `--samples`, `--model`
and `--output-dir` are shorthands for the overrides they name.
"""

from __future__ import annotations

import argparse
import json

from lwm.cli.common import add_config_command

EVAL_DESCRIPTION = """\
Long-context evaluation through the inference engine (greedy; the KV cache is split over the
mesh's sp devices, so long contexts spread over many devices).

suite=ruler: RULER's 13 tasks (niah_single_1..3, niah_multikey_1..3, niah_multivalue,
niah_multiquery, vt, cwe, fwe, and qa_1/qa_2 given local SQuAD / HotpotQA files) at the lengths
asked (tokens, prompt + answer budget), scored as RULER does. Writes OUTPUT_DIR/results.json
after every item (a rerun resumes and extends it), table.md / summary.json (per task x length,
the average and RULER's weighted averages) and heatmap_TASK.png (depth x length).

suite=vniah: a needle frame (a rendered number, word or shape) hidden at each depth of a
haystack video (a local video, or a generated one) of each length in frames, VQ-encoded; the
question asks what the needle shows. Writes results.json and heatmap.png.

examples:
  lwm eval --config configs/eval/ruler-tiny.yaml --model runs/tiny/model
  lwm eval --config configs/eval/ruler-7b-1m.yaml --model ckpt/lwm-text-1m --ruler.essay pg.txt \\
      --tasks niah_single_2,vt --lengths 131072,1048576 --samples 20
  lwm eval --config configs/eval/vniah-tiny.yaml --model runs/vision/model --load.vq runs/vq-tiny
"""


def _list(value: str, kind=str) -> list:
    return [kind(part.strip()) for part in value.split(",") if part.strip()]


def _shorthands(args: argparse.Namespace) -> list[str]:
    overrides: list[str] = []
    if args.model:
        overrides += ["--load.model", json.dumps(args.model)]
    if args.tasks:
        overrides += ["--ruler.tasks", json.dumps(_list(args.tasks))]
    if args.lengths:
        overrides += ["--ruler.lengths", json.dumps(_list(args.lengths, _length))]
    if args.samples:
        overrides += ["--ruler.samples", str(args.samples)]
    if args.output_dir:
        overrides += ["--ruler.output_dir", json.dumps(args.output_dir),
                      "--vniah.output_dir", json.dumps(args.output_dir)]
    return overrides


def _length(text: str) -> int:
    """`4096`, `4K`, `128k` or `1M` as a token count (K = 1024, M = 1024 * 1024)."""
    from lwm.config import ConfigError

    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:].lower(), 1)
    try:
        return int(text[:-1] if scale > 1 else text) * scale
    except ValueError as error:
        raise ConfigError(f"--lengths: {text!r} is not a length (write 4096, 4K or 1M)") from error


def _run_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from lwm.config import load_config
    from lwm.config.eval import EvalRunConfig

    config = load_config(EvalRunConfig, args.config, _shorthands(args) + list(overrides))
    if config.cpu_devices:
        import jax

        # Fake CPU devices must be requested before JAX starts its backend.
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_num_cpu_devices", config.cpu_devices)
    from lwm.infer.cache import load_inference_model
    from lwm.model.formats.lwm_checkpoint import is_lwm_release

    engine = load_inference_model(
        config.load.model, mesh_config=config.mesh, dtype=config.load.dtype, cache_dtype=config.cache.dtype,
        prefill_chunk_size=config.cache.prefill_chunk, key_chunk_size=config.cache.key_chunk,
    )
    lwm_release = is_lwm_release(config.load.model)
    tokenizer = _tokenizer(config, lwm_release)
    # The engine's own prefill bar only where one item is long enough to wait for.
    engine.progress = config.progress and config.suite == "ruler" and max(config.ruler.lengths) >= 65536
    if config.suite == "vniah":
        return _run_vniah(config, engine, tokenizer, lwm_release)
    return _run_ruler(config, engine, tokenizer)


def _tokenizer(config, lwm_release: bool):
    """The project's tokenizer, or LLaMA's (as LWM applies it) for a converted LWM release."""
    if lwm_release:
        from lwm.config import ConfigError
        from lwm.data.lwm_layout import LwmTokenizer

        if not config.load.tokenizer:
            raise ConfigError(f"load.model={config.load.model} is an LWM release: pass LLaMA's tokenizer as "
                              f"--load.tokenizer PATH/tokenizer.model")
        return LwmTokenizer(config.load.tokenizer)
    from lwm.data.text_tokenizer import load_text_tokenizer

    return load_text_tokenizer(config.load.tokenizer or None)


def _run_ruler(config, engine, tokenizer) -> int:
    from lwm.eval.ruler.haystacks import generated_essay, read_text
    from lwm.eval.ruler.runner import CachedGenerator, load_qa_datasets, run_ruler

    settings = config.ruler
    essay = read_text(settings.essay, "ruler.essay") if settings.essay else generated_essay(settings.seed)
    generator = CachedGenerator(engine, tokenizer, max(config.cache.max_len, max(settings.lengths)))
    print(f"eval: cache of {generator.cache_size} positions over sp={engine.sequence_parallel} device(s)")
    report = run_ruler(generator, tokenizer, settings, settings.output_dir, essay=essay,
                       qa_datasets=load_qa_datasets(settings), progress=config.progress)
    print(report.table_path.read_text(), end="")
    if report.haystack_repeats > 1:
        print(f"eval: the essay was repeated {report.haystack_repeats} times to fill the longest context")
    print(f"eval: {report.new_items} new items, {report.resumed_items} resumed; results {report.results_path}; "
          f"table {report.table_path}; heatmaps {', '.join(str(p) for p in report.heatmaps.values()) or 'none'}")
    return 0


def _run_vniah(config, engine, tokenizer, lwm_release: bool) -> int:
    from lwm.eval.vniah import run_vniah
    from lwm.infer.video_qa import ChatSession, LwmChatSession
    from lwm.model.vq_tokenizer import load_vq_tokenizer

    vq = load_vq_tokenizer(config.load.vq, resolution=config.load.vq_resolution)
    report = run_vniah(engine, tokenizer, vq, config.vniah, config.vniah.output_dir, progress=config.progress,
                       session_class=LwmChatSession if lwm_release else ChatSession)
    for frames, accuracy in report.by_frames().items():
        print(f"  {frames:>6d} frames: accuracy {accuracy:.2f}")
    print(f"eval: {report.new_cells} new cells, {report.resumed_cells} resumed; accuracy {report.accuracy:.3f}; "
          f"results {report.results_path}; heatmap {report.heatmap_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `lwm eval`."""
    parser = add_config_command(
        subparsers, "eval", help="RULER's long-context tasks or the video needle", description=EVAL_DESCRIPTION,
        run=_run_eval, default_config="configs/eval/ruler-tiny.yaml",
    )
    parser.add_argument("--model", help="model directory (= --load.model)")
    parser.add_argument("--tasks", help="comma-separated RULER tasks (= --ruler.tasks)")
    parser.add_argument("--lengths", help="comma-separated lengths, e.g. 4K,8K,128K,1M (= --ruler.lengths)")
    parser.add_argument("--samples", type=int, help="items per task and length (= --ruler.samples)")
    parser.add_argument("--output-dir", dest="output_dir", help="results folder (= --ruler.output_dir / --vniah.output_dir)")
