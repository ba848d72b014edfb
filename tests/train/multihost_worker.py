"""One process of a two-process CPU training job (run by test_multihost.py, not by pytest)."""

import faulthandler
import sys

import jax

from lwm.config import TrainRunConfig, load_config
from lwm.data.toy import progression_examples
from lwm.train import distributed
from lwm.train.loop import train


def main() -> None:
    port, process_id, output_dir, stop_after = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    config = load_config(TrainRunConfig, None, [
        "--model.vocab_size", "128", "--model.hidden_size", "64", "--model.intermediate_size", "128",
        "--model.num_layers", "2", "--model.num_heads", "4", "--model.num_kv_heads", "2",
        "--model.max_seq_len", "64", "--data.seq_len", "32", "--data.batch_size", "8",
        "--mesh.dp", "1", "--mesh.fsdp", "-1", "--train.steps", "4", "--train.warmup_steps", "1",
        "--checkpoint.every_steps", "2", "--logging.log_every", "1", "--logging.progress_bar", "false",
        "--logging.peak_tflops_per_device", "1", "--logging.output_dir", output_dir,
        "--distributed.enabled", "true", "--distributed.auto", "false",
        "--distributed.coordinator_address", f"127.0.0.1:{port}", "--distributed.num_processes", "2",
        "--distributed.process_id", str(process_id), "--distributed.local_device_count", "2",
    ])
    examples = progression_examples(200, 128, min_length=8, max_length=40, seed=0)
    results = train(config, source=examples, stop_after_steps=stop_after or None)
    assert jax.process_count() == 2 and jax.device_count() == 4
    print(f"process {process_id}: step {results[-1].steps} preempted {results[-1].preempted}", flush=True)
    # If leaving the job stalls, say where every thread is (the test shows this output).
    faulthandler.dump_traceback_later(120, exit=False)
    distributed.shutdown()
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main()
