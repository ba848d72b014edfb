#!/usr/bin/env bash
# Text pretraining at 32K tokens on one GPU node or TPU slice. Run it on every host of the job;
# jax.distributed finds the others (SLURM, TPU pods) from the environment.
#   scripts/launch_text_32k.sh --data.store_path /data/books-store --checkpoint.init_from runs/llama2-7b
set -euo pipefail
exec lwm train --config configs/long/lwm-text-32k.yaml --distributed.enabled true "$@"
