#!/usr/bin/env bash
# The main job: a long generation on the default model with a bounded KV cache.
# A license excerpt plus the answer pass the 256-token window, so the cache
# rotates while its memory stays flat.
set -euo pipefail
model=${MLX_LM_KVQ_DEFAULT_MODEL:?run through tools/run}
license=$(sed -n '4,16p' /usr/share/common-licenses/BSD)
prompt="Here is part of a software license:

$license

Explain in plain words what this license allows and what it requires. Then write a short example of how a company could use software under this license."
set -x
mlx_lm.generate --model "$model" --max-kv-size 256 --kv-bits 8,4 --quantized-kv-start 0 \
  --max-tokens 320 \
  --temp 0.7 --top-p 0.9 --seed 1 --prompt "$prompt"
