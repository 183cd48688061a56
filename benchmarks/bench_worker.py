"""
A generation worker for the default-path comparison (bench_default.py): it
imports whichever ``mlx_lm`` is first on its PYTHONPATH (the fork or
pristine 0.32.2), loads the model once, then for each line of JSON on stdin,
``{"prompt": N, "max_tokens": M}``, runs ``mlx_lm.stream_generate`` as
``mlx_lm.generate`` does with no KV flags (the license text's first N tokens
as the prompt, greedy, end of sequence banned so that all M tokens are
generated) and prints one line of JSON: the prompt and generation tok/s that
``mlx_lm.generate`` reports, and the CPU and wall seconds of the trial.

    python benchmarks/bench_worker.py MODEL_PATH
"""

import json
import sys
import time
from pathlib import Path

LICENSE = Path("/usr/share/common-licenses/GPL-3")


def main():
    import mlx.core as mx
    import mlx_lm
    from mlx_lm import load, stream_generate

    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass
    model, tokenizer = load(sys.argv[1])
    ids = tokenizer.encode(LICENSE.read_text())
    eos = sorted(tokenizer.eos_token_ids)

    biases = {}

    def ban(tokens, logits):
        key = (logits.shape[-1], logits.dtype)
        if key not in biases:
            bias = mx.zeros((logits.shape[-1],), dtype=logits.dtype)
            bias[mx.array(eos)] = -1e9
            biases[key] = bias
        return logits + biases[key]

    print(json.dumps({"ready": True, "mlx_lm": mlx_lm.__file__,
                      "version": mlx_lm.__version__}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        prompt = ids[: job["prompt"]]
        last = None
        cpu, wall = time.process_time(), time.perf_counter()
        for last in stream_generate(model, tokenizer, prompt,
                                    max_tokens=job["max_tokens"],
                                    logits_processors=[ban]):
            pass
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(json.dumps({
            "prompt_tokens": last.prompt_tokens,
            "prompt_tps": last.prompt_tps,
            "generation_tokens": last.generation_tokens,
            "generation_tps": last.generation_tps,
            "peak_memory_gb": last.peak_memory,
            # CPU time of the process (all threads) and wall time of the trial
            "cpu_seconds": cpu,
            "wall_seconds": wall,
        }), flush=True)


if __name__ == "__main__":
    main()
