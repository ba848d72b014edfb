"""Orbax checkpoints of a training run: full state for resuming, parameters only for finetuning.

A checkpoint step directory holds three items: `state` (parameters, optimizer state and step,
written by every process collectively), `data` (the data iterator's JSON state, so a resumed
run reads exactly the batches it would have read) and `meta` (stage, config digest). Orbax
writes into a temporary directory and renames it when complete, so an interrupted save never
shadows the previous good checkpoint; `keep` bounds how many remain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from lwm.config import CheckpointConfig


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
        """Starts saving (asynchronously when configured); returns once the state is copied."""
        ocp = self._ocp
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """The state (placed like `abstract_state`'s shardings), data state and metadata."""
        ocp = self._ocp
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["data"], restored["meta"]

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
