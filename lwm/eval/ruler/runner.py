"""Running RULER: generate every item of the grid, ask the model, score, save, report.

`run_ruler` takes any `generate(prompt_ids, max_new_tokens) -> answer_text` (greedy for
RULER's protocol); `CachedGenerator` is that callable over one slot of `lwm.infer.engine.Engine`
(the KV cache sharded over `sp`). Results go to `output_dir/results.json` after every item, keyed by
`task/length/index`: a rerun with the same haystack, seed and template skips what is done
and adds what is new (more tasks, lengths or samples). The table (Markdown and JSON) and a
heatmap per task are rewritten at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from lwm.config.data import ChatTemplateConfig
from lwm.config.eval import RulerConfig
from lwm.eval.ruler.qa import QADataset, load_hotpotqa, load_squad
from lwm.eval.ruler.report import format_table, plot_task_heatmap, summary
from lwm.eval.ruler.scoring import reference_hits, score
from lwm.eval.ruler.tasks import EvalError, TaskContext, make_item
from lwm.infer.engine import Engine
from lwm.infer.generate import check_text_vocabulary
from lwm.infer.requests import Request

RESULTS_FILE = "results.json"
TABLE_FILE = "table.md"
SUMMARY_FILE = "summary.json"


@dataclasses.dataclass
class RulerReport:
    """What a run produced: every result (resumed ones included), the table and the files."""

    results: list[dict[str, Any]]
    table: dict[str, Any]
    results_path: Path
    table_path: Path
    heatmaps: dict[str, Path]
    new_items: int
    resumed_items: int
    haystack_repeats: int


class CachedGenerator:
    """`generate(prompt_ids, max_new_tokens) -> text` over one engine slot (greedy).

    The slot holds `max_length` positions (rounded to the cache granularity) sharded over the
    mesh's `sp` devices and is allocated once; it runs on `lwm.infer.engine.Engine`, the path
    the server takes, so prompts that share a prefix (one haystack, several questions) reuse it.
    """

    def __init__(self, engine: Any, tokenizer: Any, max_length: int, stop_ids: Sequence[int] | None = None):
        check_text_vocabulary(engine, tokenizer)
        self.engine = Engine(engine, slots=1, queue_size=1, slot_size=max_length)
        self.tokenizer = tokenizer
        self.cache_size = self.engine.slot_size
        self.stop_ids = tuple(stop_ids) if stop_ids is not None else (tokenizer.eos_id,)

    def __call__(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 is_vision: Sequence[bool] | None = None) -> str:
        """The greedy answer to `prompt_ids` (`is_vision` flags vision tokens), at most
        `max_new_tokens` tokens, stop token removed."""
        if len(prompt_ids) + max_new_tokens > self.cache_size:
            raise EvalError(f"a prompt of {len(prompt_ids)} tokens + {max_new_tokens} to generate exceeds the cache "
                            f"of {self.cache_size} positions; raise cache.max_len")
        flags = None if is_vision is None else tuple(bool(flag) for flag in is_vision)
        request = Request(tuple(int(t) for t in prompt_ids), flags, max_tokens=max_new_tokens, seed=0,
                          stop_ids=self.stop_ids)
        return self.tokenizer.decode(list(self.engine.generate([request])[0].tokens))


def load_qa_datasets(settings: RulerConfig) -> dict[str, QADataset]:
    """The QA files the chosen tasks need (none for the synthetic tasks)."""
    datasets = {}
    if "qa_1" in settings.tasks:
        datasets["squad"] = load_squad(settings.squad)
    if "qa_2" in settings.tasks:
        datasets["hotpotqa"] = load_hotpotqa(settings.hotpotqa)
    return datasets


def fingerprint(settings: RulerConfig, context: TaskContext, template: ChatTemplateConfig) -> dict[str, Any]:
    """What items depend on besides (task, length, index): a rerun must match it to resume."""
    return {
        "seed": settings.seed, "max_new_tokens": settings.max_new_tokens, "system": template.system,
        "user_prefix": template.user_prefix, "assistant_prefix": template.assistant_prefix,
        "essay_tokens": int(len(context.essay.ids)), "essay_head": [int(t) for t in context.essay.ids[:16]],
        "squad": settings.squad, "hotpotqa": settings.hotpotqa,
    }


def _write_json(path: Path, data: Any) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def load_results(path: Path, expected: dict[str, Any]) -> list[dict[str, Any]]:
    """Finished results of an earlier run with the same settings (none if the file is absent)."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EvalError(f"{path}: not valid JSON ({error}); move it away to start over") from error
    if data.get("settings") != expected:
        raise EvalError(f"{path} was written with other settings {data.get('settings')} (now {expected}): use another "
                        f"ruler.output_dir, or delete the file to start over")
    return list(data.get("results", []))


def run_ruler(
    generate: Callable[[list[int], int], str],
    tokenizer: Any,
    settings: RulerConfig,
    output_dir: str | Path | None = None,
    *,
    essay: str,
    qa_datasets: dict[str, QADataset] | None = None,
    progress: bool = True,
    max_new_items: int | None = None,
    heatmaps: bool = True,
) -> RulerReport:
    """Runs (or resumes) the grid `settings.tasks x settings.lengths x settings.samples`.

    `essay` is the essay haystack's text. `max_new_items` stops after that many new items (the
    rest are left for a rerun); `heatmaps=False` skips the PNGs.
    """
    output_dir = Path(output_dir if output_dir is not None else settings.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    context = TaskContext(tokenizer, essay=essay, template=settings.template, seed=settings.seed,
                          max_new_tokens=settings.max_new_tokens, qa_datasets=qa_datasets)
    expected = fingerprint(settings, context, settings.template)
    results_path = output_dir / RESULTS_FILE
    results = load_results(results_path, expected)
    done = {result["key"] for result in results}
    todo = [(task, length, index) for task in settings.tasks for length in sorted(settings.lengths)
            for index in range(settings.samples) if f"{task}/{length}/{index}" not in done]
    if max_new_items is not None:
        todo = todo[:max_new_items]
    bar = None
    if progress and todo:
        from tqdm import tqdm

        if jax.process_index() == 0:
            bar = tqdm(total=len(todo), desc="ruler", unit="item")
    for task, length, index in todo:
        item = make_item(task, length, index, context)
        response = generate(item.ids, item.max_new_tokens)
        results.append({
            "key": f"{task}/{length}/{index}", "task": task, "length": length, "index": index,
            "prompt_tokens": len(item.ids), "max_new_tokens": item.max_new_tokens, "metric": item.metric,
            "references": item.references, "depths": item.depths, "response": response,
            "hits": reference_hits(response, item.references), "score": score(response, item.references, item.metric),
        })
        _write_json(results_path, {"settings": expected, "results": results})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(task=task, length=length)
    if bar is not None:
        bar.close()
    if not results_path.is_file():
        _write_json(results_path, {"settings": expected, "results": results})
    chosen = [r for r in results if r["task"] in settings.tasks and r["length"] in settings.lengths]
    table = summary(chosen, [t for t in settings.tasks], sorted(settings.lengths))
    _write_json(output_dir / SUMMARY_FILE, table)
    table_path = output_dir / TABLE_FILE
    table_path.write_text(format_table(table))
    plots = {}
    for task in settings.tasks if heatmaps else ():
        path = plot_task_heatmap(chosen, task, output_dir / f"heatmap_{task}.png")
        if path is not None:
            plots[task] = path
    return RulerReport(results, table, results_path, table_path, plots, len(todo), len(done),
                       context.essay.repeats)
