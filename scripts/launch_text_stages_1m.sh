#!/usr/bin/env bash
# LWM's progressive context stages 32K → 1M as one resumable run (each stage from the last).
#   scripts/launch_text_stages_1m.sh --data.store_path /data/books-store --checkpoint.init_from runs/llama2-7b
set -euo pipefail
exec lwm train --config configs/long/lwm-text-stages.yaml --distributed.enabled true "$@"
