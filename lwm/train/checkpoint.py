"""Orbax checkpoints of a training run: full state for resuming, parameters only for finetuning.

A checkpoint step directory holds three items: `state` (parameters, optimizer state and step,
written by every process collectively), `data` (every process's data iterator state, JSON, so
a resumed run reads exactly the batches it would have read; each process reads its own share,
so each has its own state, gathered to the primary host that writes the item) and `meta`
(stage, config digest). Orbax writes into a temporary directory and renames it when complete,
so an interrupted save never shadows the previous good checkpoint; `keep` bounds how many
remain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lwm.config import CheckpointConfig


def gather_json(value: Any) -> list[Any]:
    """Every process's `value` (JSON-serialisable), in process order; collective."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([encoded.size], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:encoded.size] = encoded
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:length]).decode()) for row, length in zip(rows, lengths)]


class Checkpointer:
    """Saves and restores full training states in one directory (one per stage)."""

    def __init__(self, directory: str | Path, config: CheckpointConfig):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep,
            enable_async_checkpointing=config.async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Starts saving (asynchronously when configured); returns once the state is copied.

        Collective: every process calls it with its own `data_state`.
        """
        ocp = self._ocp
        data_states = gather_json(data_state)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave({"process_count": len(data_states), "processes": data_states}),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """The state (placed like `abstract_state`'s shardings), this process's data state and
        the metadata."""
        ocp = self._ocp
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        data = restored["data"]
        if data["process_count"] != jax.process_count():
            raise ValueError(
                f"checkpoint {self.directory / str(step)} was written by {data['process_count']} processes, "
                f"this job has {jax.process_count()}: the data iterators cannot resume. Resume with "
                f"{data['process_count']} processes, or start a new run from its parameters "
                f"(checkpoint.init_from)")
        return restored["state"], data["processes"][jax.process_index()], restored["meta"]

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """Shape, dtype and sharding of every array, for restoring onto the same layout."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
