#!/usr/bin/env bash
# Vision+text training from a text checkpoint; the token store comes from `lwm tokenize`.
#   scripts/launch_vision_text.sh --data.store_path /data/video-store --checkpoint.init_from runs/lwm-text-stages/32k/model
set -euo pipefail
exec lwm train --config configs/vision/lwm-vision-text.yaml --distributed.enabled true "$@"
