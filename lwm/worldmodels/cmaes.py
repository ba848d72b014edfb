"""CMA-ES (pycma) around a population objective, with a log, evaluation checkpoints and resume.

`evolve` asks pycma for a population, scores all candidates in one call of `objective` (real
environment workers or the vmapped dream), tells pycma the negated returns (pycma minimises),
and every `eval_every` generations scores the search distribution's mean and the generation's
best candidate with `evaluate`, keeping the better as the run's best controller. The pycma state
is pickled after each generation, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config.worldmodels import ControllerConfig

Objective = Callable[[np.ndarray, int], np.ndarray]  # (candidates [P, N], generation) → returns [P]
Evaluate = Callable[[np.ndarray, int], float]  # (θ [N], generation) → mean return
OnBest = Callable[[np.ndarray, float, int], None]  # (θ, score, generation)


@dataclasses.dataclass
class EvolutionResult:
    """Where the search ended."""

    best_theta: np.ndarray
    best_score: float
    generations: int
    seconds: float
    history: list[dict[str, Any]]

    def summary(self) -> str:
        """One line for the terminal."""
        last = self.history[-1] if self.history else {}
        return (f"CMA-ES: {self.generations} generations in {self.seconds:.0f} s; best evaluated score "
                f"{self.best_score:.1f}; last population mean {last.get('mean', float('nan')):.1f}, "
                f"max {last.get('max', float('nan')):.1f}")


def make_strategy(dim: int, settings: ControllerConfig, x0: np.ndarray | None = None) -> Any:
    """pycma's strategy with the config's population, σ0, seed and covariance form."""
    import cma

    options = {"popsize": settings.population, "seed": settings.seed + 1, "verbose": -9}
    if settings.diagonal:
        options["CMA_diagonal"] = True
    start = np.zeros(dim) if x0 is None else np.asarray(x0, np.float64)
    return cma.CMAEvolutionStrategy(start, settings.sigma0, options)


def _save_state(directory: Path, state: dict[str, Any]) -> None:
    temporary = directory / ".cmaes.pkl.tmp"
    with open(temporary, "wb") as handle:
        pickle.dump(state, handle)
    os.replace(temporary, directory / "cmaes.pkl")


def evolve(objective: Objective, dim: int, settings: ControllerConfig, directory: str | Path | None,
           evaluate: Evaluate | None = None, on_best: OnBest | None = None, progress: bool = True,
           tag: str = "") -> EvolutionResult:
    """Runs CMA-ES for `settings.generations` generations or `settings.max_seconds`.

    Without `evaluate`, the best candidate by training return is kept. With a `directory`,
    writes `log.jsonl` (one line per generation) and `cmaes.pkl`, and resumes from the latter
    when `settings.resume` is set and its dimension, population and `tag` (what the objective
    is, e.g. dream or real) match; otherwise it starts afresh and says so in the log.
    """
    from tqdm import tqdm

    directory = Path(directory) if directory is not None else None
    state: dict[str, Any] = {"generation": 0, "best_theta": np.zeros(dim), "best_score": -np.inf, "es": None}
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        saved = directory / "cmaes.pkl"
        note = None
        if settings.resume and saved.exists():
            with open(saved, "rb") as handle:
                previous = pickle.load(handle)
            found = (previous.get("dim"), previous.get("population"), previous.get("tag"))
            if found == (dim, settings.population, tag):
                state = previous
            else:
                note = f"not resuming {saved}: it holds (dim, population, tag) {found}, this run {(dim, settings.population, tag)}"
        if state["es"] is None:  # a fresh search starts a fresh log
            with open(directory / "log.jsonl", "w") as handle:
                if note:
                    handle.write(json.dumps({"note": note}) + "\n")
    strategy = state["es"] if state["es"] is not None else make_strategy(dim, settings)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    first = state["generation"]
    bar = tqdm(total=settings.generations, initial=first, desc="CMA-ES", unit="gen", disable=not progress)
    generation = first
    while generation < settings.generations:
        candidates = np.asarray(strategy.ask())
        returns = np.asarray(objective(candidates, generation), np.float64)
        if returns.shape != (len(candidates),):
            raise ValueError(f"objective returned shape {returns.shape}, expected ({len(candidates)},)")
        strategy.tell(list(candidates), list(-returns))
        generation += 1
        record = {"generation": generation, "mean": float(returns.mean()), "max": float(returns.max()),
                  "min": float(returns.min()), "sigma": float(strategy.sigma),
                  "seconds": round(time.perf_counter() - start, 2)}
        out_of_time = bool(settings.max_seconds) and time.perf_counter() - start > settings.max_seconds
        last = generation >= settings.generations or out_of_time
        champion = candidates[int(np.argmax(returns))]
        if evaluate is None:
            if returns.max() > state["best_score"]:
                state["best_theta"], state["best_score"] = champion.copy(), float(returns.max())
                if on_best is not None:
                    on_best(state["best_theta"], state["best_score"], generation)
        elif generation % settings.eval_every == 0 or last:
            scores = {"mean": evaluate(np.asarray(strategy.mean), generation),
                      "champion": evaluate(champion, generation)}
            record["eval"] = scores
            name = max(scores, key=scores.get)
            if scores[name] > state["best_score"]:
                theta = np.asarray(strategy.mean) if name == "mean" else champion
                state["best_theta"], state["best_score"] = theta.copy(), float(scores[name])
                if on_best is not None:
                    on_best(state["best_theta"], state["best_score"], generation)
        history.append(record)
        state.update(generation=generation, es=strategy, dim=dim, population=settings.population, tag=tag)
        if directory is not None:
            with open(directory / "log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            _save_state(directory, state)
        bar.update(1)
        bar.set_postfix(mean=f"{record['mean']:.1f}", max=f"{record['max']:.1f}")
        if out_of_time:
            break
    bar.close()
    return EvolutionResult(np.asarray(state["best_theta"]), float(state["best_score"]), generation,
                           time.perf_counter() - start, history)
