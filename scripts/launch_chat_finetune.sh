#!/usr/bin/env bash
# Long-context chat finetuning from pretrained weights (parameters only).
#   scripts/launch_chat_finetune.sh --data.store_path /data/qa-store --checkpoint.init_from runs/lwm-text-stages/1m/model
set -euo pipefail
exec lwm train --config configs/chat/chat-finetune.yaml --distributed.enabled true "$@"
