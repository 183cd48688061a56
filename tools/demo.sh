#!/usr/bin/env bash
# The main job: a long generation on the default model with a bounded KV cache.
# The BSD license text plus the answer pass the 256-token window, so the
# cache rotates; its memory stays flat.
set -euo pipefail
model=${MLX_LM_KVQ_DEFAULT_MODEL:?run through tools/run}
license=/usr/share/common-licenses/BSD
prompt="Here is a software license:

$(cat "$license")

Explain in plain words what this license allows, what it requires and what it disclaims."
set -x
mlx_lm.generate --model "$model" --max-kv-size 256 --max-tokens 300 \
  --temp 0 --prompt "$prompt"
