"""The demo's report: `results.json`, `report.md` and the loss-curve picture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from lwm.train.metrics import read_metrics  # noqa: E402

LOSS_PNG = "loss_curves.png"
CONTINUATION_GIF = "continuation.gif"
CONTINUATION_PNG = "continuation.png"
QA_PNG = "video_qa.png"
RESULTS_JSON = "results.json"
REPORT_MD = "report.md"



def plot_losses(metrics_path: Path, out_path: Path) -> dict[str, Any]:
    """Text and vision loss per step of each stage (steps restart at a stage boundary)."""
    records = read_metrics(metrics_path)
    stages, offset, last = [], 0, 0
    for record in records:
        if record["step"] <= last:
            offset += last
        last = record["step"]
        stages.append(offset)
    steps = [record["step"] + stage for record, stage in zip(records, stages)]
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, style in (("loss", "k-"), ("text_loss", "b.-"), ("vision_loss", "r.-")):
        # A logged step whose batch held no token of a modality has no loss for it.
        tokens = name.replace("loss", "tokens")
        values = [record.get(name, float("nan")) if record.get(tokens, 1) else float("nan") for record in records]
        axis.plot(steps, values, style, label=name)
    for boundary in sorted(set(stages) - {0}):
        axis.axvline(boundary, color="gray", ls="--")
        axis.text(boundary, axis.get_ylim()[1], " chat", va="top", color="gray")
    axis.set_xlabel("step (pretrain, then chat)")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    first, final = records[0], records[-1]
    return {"first": {k: first.get(k) for k in ("loss", "text_loss", "vision_loss")},
            "final": {k: final.get(k) for k in ("loss", "text_loss", "vision_loss", "text_accuracy", "vision_accuracy")},
            "logged_steps": len(records)}


def plot_qa(qa: dict[str, Any], out_path: Path) -> None:
    """Accuracy per question kind with and without the video, beside chance."""
    kinds = list(qa["by_kind"])
    rows = [qa["by_kind"][kind] for kind in kinds]
    x = np.arange(len(kinds))
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(kinds)), 4))
    axis.bar(x - 0.2, [row["accuracy"] for row in rows], 0.4, label="with the video", color="tab:blue")
    axis.bar(x + 0.2, [row["text_only_accuracy"] for row in rows], 0.4, label="without (same model)",
             color="tab:gray")
    for position, row in zip(x, rows):
        axis.hlines(row["chance"], position - 0.45, position + 0.45, colors="k", linestyles="dashed")
    axis.plot([], [], "k--", label="chance")
    axis.set_xticks(x, [f"{kind}\n({row.get('needs', '?')})" for kind, row in zip(kinds, rows)], fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy (held-out videos)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)


def write_report(numbers: dict[str, Any], output_dir: Path) -> Path:
    """`results.json` and `report.md` (with the pictures) in `output_dir`."""
    (output_dir / RESULTS_JSON).write_text(json.dumps(numbers, indent=1, default=float))
    qa, frame, needle, losses = numbers["video_qa"], numbers["next_frame"], numbers["needle"], numbers["losses"]
    go_on = numbers["continuation"]
    plot_qa(qa, output_dir / QA_PNG)
    met = [name for name, bar in numbers["bars"].items() if bar["met"]]
    missed = [name for name, bar in numbers["bars"].items() if not bar["met"]]
    lines = ["# lwm demo: a video+language world model learning on one CPU", "",
             f"Seed {numbers.get('seed', '?')} on {numbers.get('processor', '?')}. Wall time "
             f"{numbers['timings_s']['total']:.0f} s ({numbers['timings_s']}).", "",
             "## Learning bars", "",
             f"Met {len(met)} of {len(met) + len(missed)}" + (f"; not met: {', '.join(missed)}." if missed else "."),
             "", "| bar | value | threshold | met |", "| --- | --- | --- | --- |"]
    for name, bar in numbers["bars"].items():
        lines.append(f"| {name} | {bar['value']:.3f} | {bar['threshold']:.3f} | {'yes' if bar['met'] else 'NO'} |")
    lines += ["", "## Training", "", f"![loss curves]({LOSS_PNG})", "",
              f"First logged loss {losses['first']}, final {losses['final']}.", "",
              "## Video question answering (held-out videos, forced choice)", "",
              f"{qa['questions']} questions: accuracy **{qa['accuracy']:.3f}**, the same model without the "
              f"video {qa['text_only_accuracy']:.3f}, chance {qa['chance']:.3f}.", "",
              f"![video QA per kind]({QA_PNG})", "",
              "| kind | needs | questions | with video | text only | chance |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, row in qa["by_kind"].items():
        lines.append(f"| {kind} | {row.get('needs', '?')} | {row['questions']} | {row['accuracy']:.3f} | "
                     f"{row['text_only_accuracy']:.3f} | {row['chance']:.3f} |")
    lines += ["", "## Next-frame prediction (held-out videos, teacher forced)", "",
              f"{frame['codes']} codes: accuracy **{frame['accuracy']:.3f}** against "
              f"{frame['copy_last_frame_accuracy']:.3f} for copying the last frame; on the "
              f"{frame['changed_codes']} codes that change, {frame['changed_accuracy']:.3f} (copying: 0). "
              f"Held-out vision loss {frame['vision_loss']:.3f}"
              + (f" (after pretraining, before chat: {frame['pretrained_vision_loss']:.3f})"
                 if "pretrained_vision_loss" in frame else "") + ".", "",
              "## Continuation of a held-out video", "",
              f"Left: ground truth, right: the model (greedy) after {go_on['context_frames']} "
              f"given frames; a red bar marks generated frames. Over {go_on['videos']} held-out videos, code "
              f"accuracy of the generated frames {go_on['code_accuracy']:.3f} (copying the last given frame "
              f"{go_on['copy_code_accuracy']:.3f}); on the {go_on['changed_codes']} codes that change "
              f"{go_on['changed_accuracy']:.3f} (copying 0), on those that stay {go_on['unchanged_accuracy']:.3f} "
              f"(copying 1): balanced {go_on['balanced_accuracy']:.3f} against copying's 0.5.", "",
              f"![continuation]({CONTINUATION_GIF})", "", f"![continuation strip]({CONTINUATION_PNG})", "",
              "## Needle retrieval", "",
              f"Accuracy {needle['accuracy']:.3f} over lengths {needle['lengths']} and depths {needle['depths']}; "
              f"at the longest length {needle['accuracy_at_trained_length']:.3f}. Digits in place "
              f"{needle['digits_right']:.3f} (guessing: 0.1). Example answer: "
              f"`{needle['example_response'].strip()}`", ""]
    if needle.get("heatmap"):
        lines += [f"![needle heatmap]({needle['heatmap']})", ""]
    lines += ["## Data", "", f"```\n{json.dumps(numbers['data'], indent=1)}\n```", "",
              f"VQ tokenizer: {json.dumps(numbers['vq'])}", ""]
    path = output_dir / REPORT_MD
    path.write_text("\n".join(lines))
    return path
