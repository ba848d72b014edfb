"""The main job on its embedded default, runnable on one CPU machine.

Today it trains the `tiny` model on generated token progressions, sharded over fake CPU
devices through the same `lwm.train.train` a cluster run uses, prints the falling loss and
writes a loss curve; the synthetic video+text world grows from here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lwm.config import ConfigError, TrainRunConfig


@dataclasses.dataclass(frozen=True)
class ToyDataConfig:
    """The generated training data: arithmetic progressions over a small token range."""

    num_examples: int = 2000
    token_range: int = 64
    min_length: int = 16
    max_length: int = 96

    def validate(self) -> None:
        """Raises `ConfigError` for impossible sizes."""
        if self.num_examples <= 0 or self.token_range < 2:
            raise ConfigError("toy.num_examples must be positive and toy.token_range at least 2")
        if not 2 <= self.min_length <= self.max_length:
            raise ConfigError(
                f"toy.min_length={self.min_length} and toy.max_length={self.max_length} must satisfy "
                f"2 <= min_length <= max_length"
            )


@dataclasses.dataclass(frozen=True)
class DemoConfig(TrainRunConfig):
    """A training run plus the generated data it trains on."""

    toy: ToyDataConfig = dataclasses.field(default_factory=ToyDataConfig)
    # Fake CPU devices to shard over when running on a CPU-only machine.
    cpu_devices: int = 4

    def validate(self) -> None:
        """Raises `ConfigError` when the token range exceeds the model's vocabulary."""
        if self.toy.token_range > self.model.vocab_size:
            raise ConfigError(
                f"toy.token_range={self.toy.token_range} exceeds model.vocab_size={self.model.vocab_size}"
            )


def plot_loss(metrics_path: Path, out_path: Path) -> Path:
    """Writes the loss curve of a `metrics.jsonl` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lwm.train.metrics import read_metrics

    records = read_metrics(metrics_path)
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([r["step"] for r in records], [r["loss"] for r in records], marker="o")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title("training loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return out_path


def run_demo(config: DemoConfig) -> dict[str, float]:
    """Generates the data, trains, prints the loss at every logged step, plots the curve."""
    from lwm.data.toy import progression_examples
    from lwm.train.loop import train
    from lwm.train.metrics import read_metrics

    examples = progression_examples(
        config.toy.num_examples, config.toy.token_range, min_length=config.toy.min_length,
        max_length=config.toy.max_length, seed=config.data.seed,
    )
    output_dir = Path(config.logging.output_dir)
    results = train(config, source=examples)
    records = read_metrics(output_dir / "metrics.jsonl")
    print("step   loss   accuracy")
    for record in records:
        print(f"{record['step']:5d}  {record['loss']:.3f}  {record['text_accuracy']:.3f}")
    curve = plot_loss(output_dir / "metrics.jsonl", output_dir / "loss.png")
    print(f"loss curve: {curve}; model: {results[-1].model_dir if results else output_dir / 'model'}")
    return results[-1].final_metrics if results else {}
