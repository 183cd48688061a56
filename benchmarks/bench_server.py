"""
``mlx_lm server`` on one model: throughput with 8 concurrent streams, float
vs ``--kv-bits 8,4`` (ratios within a round, the servers taking turns), and
16 concurrent requests to a bounded quantized server, all of which must
complete while the process's memory stays flat (RSS sampled).

The server helpers here also serve bench_default.py (fork vs pristine).
"""

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_common import (
    BOUND,
    QUICK_BOUND,
    LICENSE_DIR,
    Setting,
    log,
    median,
    model_name,
    model_path,
    package_root,
    quartiles,
    subprocess_env,
)

TIMEOUT = 1800
STREAMS = 8
CONCURRENT = 16


def plan(quick):
    if quick:
        return dict(max_tokens=8, rounds=1, flat_tokens=48, bound=QUICK_BOUND)
    return dict(max_tokens=128, rounds=4, flat_tokens=1024, bound=BOUND)


# ---------------------------------------------------------------- prompts


def prompts(n):
    """``n`` distinct prompts: paragraphs of GPL-3 of 300 to 600 characters."""
    text = (LICENSE_DIR / "GPL-3").read_text()
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    paragraphs = [p for p in paragraphs if 300 <= len(p) <= 600]
    if len(paragraphs) < n:
        raise ValueError(f"only {len(paragraphs)} paragraphs")
    return paragraphs[:n]


def eos_ids(key):
    """The model's end-of-sequence ids (banned, so every request generates
    max_tokens)."""
    ids = set()
    for name in ("config.json", "generation_config.json"):
        path = Path(model_path(key)) / name
        if path.exists():
            e = json.loads(path.read_text()).get("eos_token_id")
            ids.update(e if isinstance(e, list) else [] if e is None else [e])
    return sorted(ids)


# ---------------------------------------------------------------- servers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(key, flags, root=None):
    """An ``mlx_lm server`` subprocess importing mlx_lm from ``root`` (default:
    the package measured), its log in a temporary file. Not waited for."""
    root = root or package_root()
    port = free_port()
    out = tempfile.TemporaryFile(mode="w+")
    command = [sys.executable, "-m", "mlx_lm", "server", "--model", model_path(key),
               "--host", "127.0.0.1", "--port", str(port),
               "--decode-concurrency", "32", "--prompt-concurrency", "8",
               # No prompt reuse: every round processes its prompts again
               "--prompt-cache-size", "0", *flags]
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                               env=subprocess_env(root))
    return dict(port=port, process=process, log=out, flags=flags, root=str(root),
                eos=eos_ids(key))


def server_output(server):
    server["log"].seek(0)
    return server["log"].read()


def wait_ready(server, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server["process"].poll() is not None:
            raise RuntimeError("the server exited:\n" + server_output(server)[-2000:])
        try:
            url = f"http://127.0.0.1:{server['port']}/health"
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.3)
    raise RuntimeError("the server did not start")


def stop_server(server):
    process = server["process"]
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    server["log"].close()


def post(server, prompt, max_tokens):
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "logit_bias": {str(i): -100.0 for i in server["eos"]},
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{server['port']}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())


def send(server, texts, max_tokens):
    """``texts`` sent at once (one thread each): wall time and usage."""
    t = time.perf_counter()
    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(lambda p: post(server, p, max_tokens), texts))
    wall = time.perf_counter() - t
    usage = [a["usage"] for a in answers]
    completion = [u["completion_tokens"] for u in usage]
    return {
        "seconds": round(wall, 3),
        "requests": len(texts),
        "completion_tokens": sum(completion),
        "prompt_tokens": [u["prompt_tokens"] for u in usage],
        "short": sum(c < max_tokens for c in completion),
        "finish_reasons": sorted({a["choices"][0].get("finish_reason") for a in answers}),
        "tok_per_s": sum(completion) / wall,
    }


def rss_bytes(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Sampler(threading.Thread):
    """Samples a process's RSS every ``every`` seconds until stopped."""

    def __init__(self, pid, every=0.5):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples = []
        self.done = threading.Event()
        self.t0 = time.perf_counter()

    def run(self):
        while not self.done.is_set():
            rss = rss_bytes(self.pid)
            if rss is not None:
                self.samples.append((round(time.perf_counter() - self.t0, 2), rss))
            self.done.wait(self.every)

    def stop(self):
        self.done.set()
        self.join()
        return self.samples


def interleaved_rounds(servers, texts, max_tokens, rounds):
    """
    ``rounds`` rounds; in each, every server gets ``texts`` at once, in
    turn (the order rotated each round). Per server: the runs.
    """
    names = list(servers)
    runs = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            res = send(servers[name], texts, max_tokens)
            runs[name].append(res)
            log(f"  round {r + 1} {name}: {res['tok_per_s']:.1f} tok/s "
                f"({res['requests']} x {max_tokens} tokens in {res['seconds']:.1f}s)")
    return runs


def ratios(runs, a, b):
    """Per-round tok/s ratios a / b, and their summary."""
    xs = [x["tok_per_s"] / y["tok_per_s"] for x, y in zip(runs[a], runs[b])]
    return {"median": median(xs), "quartiles": quartiles(xs),
            "min": min(xs), "max": max(xs), "values": [round(x, 4) for x in xs]}


def warm_up(servers):
    """The first request of a server is seconds slower: one short request."""
    for name, server in servers.items():
        wait_ready(server)
        send(server, prompts(1), 2)


# ---------------------------------------------------------------- parts


def throughput(key, p):
    """8 concurrent streams: float vs --kv-bits 8,4 (hadamard, from the
    first token)."""
    configs = {"float": [], "K8V4 hadamard": Setting((8, 4), True).flags()}
    servers = {}
    try:
        for name, flags in configs.items():
            servers[name] = start_server(key, flags)
        warm_up(servers)
        runs = interleaved_rounds(servers, prompts(STREAMS), p["max_tokens"], p["rounds"])
    finally:
        for server in servers.values():
            stop_server(server)
    return {
        "flags": configs,
        "runs": runs,
        "tok_per_s": {n: median([r["tok_per_s"] for r in rs]) for n, rs in runs.items()},
        "ratio": ratios(runs, "K8V4 hadamard", "float"),
    }


def bounded_flat(key, p):
    """16 concurrent requests to a bounded K8V4 server, RSS sampled."""
    s = Setting((8, 4), True, max_kv_size=p["bound"])
    server = start_server(key, s.flags())
    try:
        wait_ready(server)
        send(server, prompts(1), 2)
        idle = rss_bytes(server["process"].pid)
        sampler = Sampler(server["process"].pid)
        sampler.start()
        try:
            res = send(server, prompts(CONCURRENT), p["flat_tokens"])
        finally:
            samples = sampler.stop()
        alive = server["process"].poll() is None
    finally:
        stop_server(server)
    wall = samples[-1][0] if samples else 0

    def at(fraction):
        """The largest RSS sampled up to ``fraction`` of the run."""
        xs = [r for t, r in samples if t <= fraction * wall]
        return max(xs) if xs else None

    return {
        "setting": s.name,
        "flags": s.flags(),
        "requests": CONCURRENT,
        "max_tokens": p["flat_tokens"],
        "result": res,
        "completed": CONCURRENT - res["short"],
        "server_alive": alive,
        "rss_idle": idle,
        "rss_samples": samples,
        "rss_max_by": {f"{int(f * 100)}%": at(f) for f in (0.25, 0.5, 0.75, 1.0)},
    }


def run(key, quick=False):
    p = plan(quick)
    t0 = time.perf_counter()
    log(f"server {key}: {STREAMS} streams x {p['max_tokens']} tokens, float vs K8V4, "
        f"{p['rounds']} rounds")
    tp = throughput(key, p)
    log(f"  K8V4 hadamard / float: {tp['ratio']['median']:.2f}x")
    log(f"server {key}: {CONCURRENT} concurrent x {p['flat_tokens']} tokens, bounded "
        f"at {p['bound']}")
    flat = bounded_flat(key, p)
    m = flat["rss_max_by"]
    log(f"  completed {flat['completed']}/{CONCURRENT} in {flat['result']['seconds']:.0f}s; "
        f"RSS max by 25/50/75/100%: "
        + " / ".join(f"{(v or 0) / 2**20:.0f}" for v in m.values()) + " MiB")
    return {
        "model": model_name(key),
        "plan": p,
        "throughput": tp,
        "bounded": flat,
        "seconds": round(time.perf_counter() - t0, 1),
    }
