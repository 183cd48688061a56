"""
The default path, fork vs pristine mlx-lm 0.32.2 ($MLX_LM_PRISTINE) in the
same run, on SmolLM2 with no KV flags:

- generation as ``mlx_lm.generate`` runs it (``stream_generate``): prompt
  and generation tok/s. Two workers (bench_worker.py), one importing each
  package, loaded once; they take turns trial by trial, the order swapped
  each pair, and the ratio is taken within each pair (same load).
- ``mlx_lm server`` with 8 concurrent streams: one server of each, taking
  turns round by round.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from bench_common import (
    log,
    model_name,
    model_path,
    package_root,
    pristine_root,
    ratio_summary,
    subprocess_env,
)
from bench_server import STREAMS, interleaved_rounds, prompts, start_server, stop_server, warm_up

KEY = "smollm2"


def plan(quick):
    if quick:
        return dict(prompt=128, max_tokens=16, pairs=2, max_tokens_server=8, rounds=2)
    return dict(prompt=1024, max_tokens=128, pairs=10, max_tokens_server=128, rounds=6)


class Worker:
    def __init__(self, root):
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("bench_worker.py")),
             model_path(KEY)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=subprocess_env(root),
        )
        self.info = self._read()
        if not Path(self.info["mlx_lm"]).resolve().is_relative_to(Path(root).resolve()):
            raise RuntimeError(f"worker imported {self.info['mlx_lm']}, not from {root}")

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the worker exited")
        return json.loads(line)

    def generate(self, prompt, max_tokens):
        self.process.stdin.write(json.dumps({"prompt": prompt, "max_tokens": max_tokens}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def generation(p, fork, pristine):
    workers = {}
    try:
        workers["fork"] = Worker(fork)
        workers["pristine"] = Worker(pristine)
        for w in workers.values():  # warm up
            w.generate(64, 4)
        trials = {"fork": [], "pristine": []}
        for i in range(p["pairs"]):
            order = ["fork", "pristine"] if i % 2 == 0 else ["pristine", "fork"]
            for name in order:
                r = workers[name].generate(p["prompt"], p["max_tokens"])
                trials[name].append(r)
            f, q = trials["fork"][-1], trials["pristine"][-1]
            log(f"  pair {i + 1}: prompt {f['prompt_tps']:.0f} / {q['prompt_tps']:.0f} "
                f"tok/s, generation {f['generation_tps']:.1f} / {q['generation_tps']:.1f} "
                "tok/s (fork / pristine)")
        info = {n: w.info for n, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    out = {"workers": info, "trials": trials}
    pairs = list(zip(trials["fork"], trials["pristine"]))
    for metric in ("prompt_tps", "generation_tps"):
        out[metric] = ratio_summary([f[metric] / q[metric] for f, q in pairs])
    # Speed by CPU time (pristine's seconds over the fork's): less sensitive
    # to other jobs than wall time, blind to time spent waiting
    out["cpu_speed"] = ratio_summary([q["cpu_seconds"] / f["cpu_seconds"] for f, q in pairs])
    short = [t for ts in trials.values() for t in ts if t["generation_tokens"] != p["max_tokens"]]
    out["short_trials"] = len(short)
    return out


def server(p, fork, pristine):
    servers = {}
    try:
        servers["fork"] = start_server(KEY, [], root=fork)
        servers["pristine"] = start_server(KEY, [], root=pristine)
        warm_up(servers)
        runs = interleaved_rounds(servers, prompts(STREAMS), p["max_tokens_server"],
                                  p["rounds"])
    finally:
        for s in servers.values():
            stop_server(s)
    xs = [a["tok_per_s"] / b["tok_per_s"] for a, b in zip(runs["fork"], runs["pristine"])]
    return {"runs": runs, "ratio": ratio_summary(xs)}


def run(key=KEY, quick=False):
    p = plan(quick)
    fork, pristine = package_root(), pristine_root()
    if pristine is None:
        raise SystemExit("MLX_LM_PRISTINE is not set or holds no mlx_lm: run through tools/run")
    t0 = time.perf_counter()
    log(f"default path: {p['pairs']} pairs of generations ({p['prompt']} prompt tokens, "
        f"{p['max_tokens']} generated), fork {fork} vs pristine {pristine}")
    gen = generation(p, fork, pristine)
    log(f"  fork / pristine: prompt {gen['prompt_tps']['median']:.3f}x, "
        f"generation {gen['generation_tps']['median']:.3f}x, "
        f"by CPU time {gen['cpu_speed']['median']:.3f}x")
    log(f"default path: server, {STREAMS} streams x {p['max_tokens_server']} tokens, "
        f"{p['rounds']} rounds")
    srv = server(p, fork, pristine)
    log(f"  fork / pristine: {srv['ratio']['median']:.3f}x")
    return {
        "model": model_name(KEY),
        "plan": p,
        "fork": str(fork),
        "pristine": str(pristine),
        "generation": gen,
        "server": srv,
        "seconds": round(time.perf_counter() - t0, 1),
    }
