"""lm-eval-harness's `local-completions`, unmodified, scores a multiple-choice task through
`lwm serve`; its log-likelihoods and accuracy equal lwm's own scoring of the same items."""

import json
import os

import numpy as np
import pytest
from serve_helpers import direct_logprobs

TASKS = os.path.join(os.path.dirname(__file__), "tasks")


def _encode_pair(tokenizer, context, continuation):
    """Context and continuation ids as a causal LM harness splits them: trailing spaces of the
    context move to the continuation; the continuation is what the whole adds to the context."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def test_lm_eval_local_completions(server, small_model, tokenizer, tmp_path):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    data = os.path.join(TASKS, "lwm_tiny_mc.jsonl")
    with open(os.path.join(TASKS, "lwm_tiny_mc.yaml")) as source:
        text = source.read().replace("DATA_FILE", data).replace("CACHE_DIR", str(tmp_path / "hf-cache"))
    (task_dir / "lwm_tiny_mc.yaml").write_text(text)

    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"base_url": server.url + "/completions", "model": "lwm", "tokenizer_backend": "remote",
                    "tokenized_requests": True, "num_concurrent": 4, "max_retries": 1, "max_length": 256},
        tasks=["lwm_tiny_mc"], task_manager=TaskManager(include_path=str(task_dir), include_defaults=False), log_samples=True,
        batch_size=1,
    )
    samples = results["samples"]["lwm_tiny_mc"]
    docs = [json.loads(line) for line in open(data)]
    assert len(samples) == len(docs)

    correct = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        harness = [float(resp[0][0]) for resp in sample["resps"]]
        ours = []
        for context, continuation in sample["arguments"]:
            context_ids, continuation_ids = _encode_pair(tokenizer, context, continuation)
            ids = context_ids + continuation_ids
            ours.append(float(direct_logprobs(small_model, ids)[len(context_ids) - 1:].sum()))
        np.testing.assert_allclose(harness, ours, atol=1e-4)
        correct.append(int(np.argmax(ours)) == sample["doc"]["answer"])
    assert results["results"]["lwm_tiny_mc"]["acc,none"] == pytest.approx(np.mean(correct))
