"""Orbax checkpoints of a training run: the full state for resuming, restored straight onto its
shardings.

A checkpoint step directory holds three items: `state` (parameters, optimizer state and step,
written by every process collectively), `data` (every process's data iterator state, JSON, so
a resumed run reads exactly the batches it would have read; each process reads its own share,
so each has its own state, gathered to the primary host that writes the item) and `meta`
(stage and step). Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it when
complete, so a save cut short (a kill, a second signal) leaves only a temporary folder that is
never read, and the previous checkpoint stays the newest; `keep` bounds how many remain.

A finished step directory can still be damaged afterwards (a truncated or missing file, a
disk that filled up). `restore_latest` then reports it in one line, moves it aside to
`<step>.corrupt` (nothing is deleted) and restores the next older one, so a run never trains
over a bad checkpoint silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from lwm.config import CheckpointConfig
from lwm.errors import LwmError
from lwm.paths import as_path
from lwm.train import distributed

CORRUPT_SUFFIX = ".corrupt"


class CheckpointMismatchError(LwmError, ValueError):
    """A checkpoint that cannot resume this job (written by another process layout)."""


def gather_json(value: Any) -> list[Any]:
    """Every process's `value` (JSON-serialisable), in process order; collective."""
    if jax.process_count() == 1:
        return [value]
    encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([encoded.size], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:encoded.size] = encoded
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:length]).decode()) for row, length in zip(rows, lengths)]


@dataclasses.dataclass
class Restored:
    """A restored checkpoint: its step, the state, this process's data state and the metadata."""

    step: int
    state: Any
    data_state: dict[str, Any]
    meta: dict[str, Any]


class Checkpointer:
    """Saves and restores full training states in one directory (one per stage).

    `directory` may be a local path or a URL (`gs://bucket/run/main`): it is kept as given
    (see `lwm.paths`). `notes` collects the one-line reports of skipped checkpoints.
    """

    def __init__(self, directory: str | epath.Path, config: CheckpointConfig):
        self.directory = as_path(directory)
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep,
            enable_async_checkpointing=config.async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=self._options, item_names=("state", "data", "meta")
        )
        self.notes: list[str] = []
        self.last_saved_step: int | None = None

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Starts saving (asynchronously when configured); returns once the state is copied.

        Collective: every process calls it with its own `data_state`.
        """
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
        self.last_saved_step = step

    def restore(self, step: int, abstract_state: Any) -> Restored:
        """The checkpoint of `step`, placed like `abstract_state`'s shapes and shardings."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        data, meta = restored["data"], restored["meta"]
        if data["process_count"] != jax.process_count():
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(step)} was written by {data['process_count']} processes, "
                f"this job has {jax.process_count()}: the data iterators cannot resume. Resume with "
                f"{data['process_count']} processes, or start a new run from its parameters "
                f"(checkpoint.init_from)")
        if int(meta.get("step", step)) != step:
            raise ValueError(f"its metadata names step {meta.get('step')}")
        return Restored(step, restored["state"], data["processes"][jax.process_index()], meta)

    def restore_latest(self, abstract_state: Any) -> Restored | None:
        """The newest checkpoint that restores completely, or None when there is none.

        A damaged one (a read error, a truncated file) is reported in `notes` (and on stderr
        by process 0), moved aside to `<step>.corrupt` and the next older one is tried.
        Collective: every process takes the same decision.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            error: Exception | None = None
            with _quiet_failed_reads():
                try:
                    restored = self.restore(step, abstract_state)
                except CheckpointMismatchError:
                    raise
                except Exception as caught:  # noqa: BLE001 - any read failure means "damaged"
                    error, restored = caught, None
            # A process that failed to read its share makes the whole step unusable.
            if all(gather_json(error is None)):
                self.last_saved_step = step
                return restored
            self._set_aside(step, error)
        return None

    def _set_aside(self, step: int, error: Exception | None) -> None:
        source = self.directory / str(step)
        target = self.directory / f"{step}{CORRUPT_SUFFIX}"
        index = 1
        while target.exists():
            index += 1
            target = self.directory / f"{step}{CORRUPT_SUFFIX}{index}"
        reason = _first_line(error) if error is not None else "another process could not read it"
        note = (f"checkpoint {source} is incomplete or corrupt ({reason}); moved to {target.name}, "
                f"resuming from an older one")
        if distributed.is_main_process():
            source.rename(target)
            print(f"lwm train: {note}", file=sys.stderr, flush=True)
        distributed.barrier(f"lwm-set-aside-{step}")
        self.notes.append(note)
        self.manager.reload()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


@contextlib.contextmanager
def _quiet_failed_reads() -> Iterator[None]:
    """Silences the leftovers of a failed restore.

    Orbax reads the arrays concurrently; when one read fails, the other reads' errors are never
    retrieved, and Python would print each (hundreds of lines of TensorStore specs) when it
    collects them. The one-line note of `restore_latest` says what matters.
    """
    logger = logging.getLogger("asyncio")
    level, hook = logger.level, sys.unraisablehook
    logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()
        logger.setLevel(level)
        sys.unraisablehook = hook


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # TensorStore appends a long object description; the sentence before it is the message.
    line = text[0].split(" See full TensorStore details")[0] if text else ""
    return f"{type(error).__name__}: {line[:160]}" if line else type(error).__name__


def abstract_like(tree: Any) -> Any:
    """Shape, dtype and sharding of every array, for restoring onto the same layout."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
