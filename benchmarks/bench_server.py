"""
Server throughput: ``mlx_lm server`` (continuous batching) with 1, 4 and 8
concurrent streams, float vs K8V4 caches, bounded vs unbounded, as ratios
measured in one run.

The four servers are started at once and stay up for the whole part. The
measurements are interleaved: each stream count runs on every setting in
turn (the order rotated each round), so all settings see the same load, and
ratios are taken within a round. One stream is measured by sending requests
one at a time; with all 8 prompts, that is the "8 one at a time" baseline of
the 8 concurrent streams.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_common import log, median, model_path, pyplot, save_figure

# Measured on pristine mlx-lm 0.32.2 with float caches and the default model
# (the issue): 8 concurrent requests of 96 tokens took 0.60x the time of
# sending them one by one.
PRISTINE_8X96 = 0.60
STREAMS = (1, 4, 8)
TIMEOUT = 600
# Given explicitly, at the server's defaults: up to 32 sequences decoded in
# one batch (>= 8 streams), 8 prompts prefilled together.
DECODE_CONCURRENCY = 32
PROMPT_CONCURRENCY = 8
# Distinct prompts of 64 to 72 tokens with the chat template (its default
# system prompt included): they fill a bounded cache of 64 positions, which
# therefore decodes past its wrap from the first generated token.
QUESTIONS = [
    "Tell me a long story about a lighthouse keeper who lives alone on a rocky island, "
    "keeps a diary of every ship that passes, and one stormy night sees a light "
    "that should not be there.",
    "Explain how a bicycle works, in detail: the frame, the wheels and spokes, the chain "
    "and gears, the brakes, and why a moving bicycle stays upright while a standing one "
    "falls over.",
    "Describe a walk through a forest in autumn, from the car park at dawn to the top of "
    "the hill at noon: the colours of the leaves, the sounds, the smells, and the animals "
    "you meet.",
    "What should I pack for a week of hiking in the mountains in late spring, sleeping in "
    "huts, with rain likely on some days and snow possible above two thousand metres?",
    "Write a letter to an old friend about learning to cook this year: the first burnt "
    "dinners, the dishes that worked, the cookbook that helped most, and an invitation "
    "to come and taste.",
    "How do plants turn sunlight into food? Explain photosynthesis step by step for a "
    "curious twelve year old, with the roles of the leaves, water, carbon dioxide and "
    "chlorophyll.",
    "Describe the city of Paris to a child who has never been there: the river, the "
    "bridges, the tower, the museums, the bakeries, and what a day there could look like.",
    "Give me advice on learning to play the piano as an adult beginner with half an hour "
    "a day: what to practise first, how to read music, and how to stay motivated.",
]
# Budget: the first server times one request and 8 concurrent ones of 16
# tokens; a request or batch of T tokens is assumed to take FIXED of that
# (prompt processing, overhead) plus the rest scaled by T / 16, and 4
# streams the mean of 1 and 8. (Completion tokens per request, requests
# sent one at a time for 1 stream), preferred first: the first whose round
# fits is used.
FIXED = 0.5
CHOICES = [(96, 8), (96, 4), (64, 4), (64, 2), (48, 2), (32, 2), (32, 1), (16, 1)]


def plan(quick):
    if quick:
        return dict(max_tokens=4, sequential=1, window=64, rounds=1)
    return dict(max_tokens=96, sequential=8, window=64, rounds=2)


def settings(window):
    """(name, server flags) of the four settings; the first is the reference."""
    k8v4 = ["--kv-bits", "8,4", "--quantized-kv-start", "0"]
    bounded = ["--max-kv-size", str(window)]
    return [
        ("float", []),
        ("float bounded", bounded),
        ("K8V4", k8v4),
        ("K8V4 bounded", k8v4 + bounded),
    ]


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------- servers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(flags):
    """An ``mlx_lm server`` subprocess (not waited for), its log in a temp file."""
    port = free_port()
    out = tempfile.TemporaryFile(mode="w+")
    command = [sys.executable, "-m", "mlx_lm", "server", "--model", model_path()]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "DEBUG"]
    command += ["--decode-concurrency", str(DECODE_CONCURRENCY)]
    command += ["--prompt-concurrency", str(PROMPT_CONCURRENCY)]
    # No prompt cache: a prompt sent again is processed again, like the
    # first time (and no setting reuses the shared system prompt).
    command += ["--prompt-cache-size", "0", *flags]
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return dict(port=port, process=process, log=out)


def server_output(server):
    server["log"].seek(0)
    return server["log"].read()


def server_error(server, exc):
    """The server's first logged error, else the client's exception."""
    errors = re.findall(r" - ERROR - (.*)", server_output(server))
    return errors[0] if errors else f"{type(exc).__name__}: {exc}"


def wait_ready(server, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server["process"].poll() is not None:
            raise RuntimeError("the server exited")
        try:
            url = f"http://127.0.0.1:{server['port']}/health"
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def stop_server(server):
    process = server["process"]
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    server["log"].close()


def max_batch(server):
    """The largest batch the server decoded, from its DEBUG log."""
    sizes = re.findall(r"Decoded (\d+) sequences in one batch", server_output(server))
    return max(map(int, sizes), default=None)


# ---------------------------------------------------------------- requests


def chat(question, max_tokens):
    return {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        # No end of turn (<|im_end|>): every request generates max_tokens
        "logit_bias": {"2": -100.0},
    }


def post(port, body):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())


def send(port, questions, max_tokens, concurrent):
    """
    Wall time, completion and prompt tokens of ``questions`` sent together
    (one thread each) or one at a time.
    """
    bodies = [chat(q, max_tokens) for q in questions]
    t = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: post(port, b), bodies))
    else:
        answers = [post(port, b) for b in bodies]
    wall = time.perf_counter() - t
    usage = [a["usage"] for a in answers]
    return {
        "seconds": round(wall, 3),
        "requests": len(bodies),
        "completion_tokens": sum(u["completion_tokens"] for u in usage),
        "prompt_tokens": [u["prompt_tokens"] for u in usage],
        "short": sum(u["completion_tokens"] < max_tokens for u in usage),
    }


def tps(run):
    return run["completion_tokens"] / run["seconds"]


# ---------------------------------------------------------------- measure


def choose(one16, eight16, n_settings, left):
    """(tokens, requests one at a time) of the first choice whose round fits."""

    def cost(t, k):
        scale = FIXED + (1 - FIXED) * t / 16
        one, eight = one16 * scale, eight16 * scale
        return n_settings * (k * one + (one + eight) / 2 + eight)

    for t, k in CHOICES:
        if cost(t, k) <= left:
            return t, k
    return CHOICES[-1]


def measure_round(servers, order, max_tokens, sequential, runs, failed):
    """One round: one stream (requests one at a time), then 4 and 8 at once."""
    for n in STREAMS:
        for name in order:
            if name in failed:
                continue
            server = servers[name]
            questions = QUESTIONS[: sequential if n == 1 else n]
            try:
                r = send(server["port"], questions, max_tokens, n > 1)
            except Exception as e:  # a server that died: the others go on
                failed[name] = server_error(server, e)
                log(f"  {name}: FAILED: {failed[name]}")
                continue
            runs[name][str(n)].append(r)
            log(
                f"  {name:13s} {n} stream{'s' if n > 1 else ''}: {tps(r):6.1f} tok/s "
                f"({r['requests']} x {max_tokens} tokens in {r['seconds']:.1f}s)"
            )


def summarize(runs, names):
    """Per setting and stream count: median tok/s and per-round ratios."""
    ref = names[0]
    n_max = str(max(STREAMS))
    rows = []
    for name in names:
        ones = runs[name]["1"]
        for n in STREAMS:
            rs = runs[name][str(n)]
            row = {
                "setting": name,
                "streams": n,
                "tok_per_s": median([tps(r) for r in rs]),
                "tok_per_s_runs": [round(tps(r), 2) for r in rs],
                "seconds_runs": [r["seconds"] for r in rs],
                # Ratios within a round (same load), median over rounds
                "ratio_vs_float": median(
                    [tps(a) / tps(b) for a, b in zip(rs, runs[ref][str(n)])]
                ),
                "speedup_vs_1_stream": median(
                    [tps(a) / tps(b) for a, b in zip(rs, ones)]
                ),
                "short_requests": sum(r["short"] for r in rs),
            }
            if str(n) == n_max:
                # n requests one at a time take n times the mean time of one
                row["time_vs_sequential"] = median(
                    [
                        a["seconds"] / (n * b["seconds"] / b["requests"])
                        for a, b in zip(rs, ones)
                    ]
                )
            rows.append(row)
    return rows


def run(quick=False, budget=None):
    p = plan(quick)
    budget = None if quick else budget
    t0 = time.perf_counter()
    load_before = loadavg()
    configs = settings(p["window"])
    names = [name for name, _ in configs]
    servers, failed, warm = {}, {}, {}
    runs = {n: {str(s): [] for s in STREAMS} for n in names}
    max_tokens, sequential = p["max_tokens"], p["sequential"]
    round_seconds = []
    try:
        log(f"server: starting {len(configs)} servers")
        for name, flags in configs:
            servers[name] = start_server(flags)
        for name in names:
            try:
                wait_ready(servers[name])
            except RuntimeError as e:
                failed[name] = server_error(servers[name], e)
                log(f"  {name}: FAILED: {failed[name]}")
        start_seconds = round(time.perf_counter() - t0, 1)
        log(f"server: up in {start_seconds:.0f}s")

        # Warm up with a one-token request (the first one a server answers
        # takes seconds longer); time 1 and 8 requests of 16 tokens on the
        # first server for the budget
        calib = None
        for name in names:
            if name in failed:
                continue
            port = servers[name]["port"]
            try:
                t = time.perf_counter()
                send(port, QUESTIONS[-1:], 1, False)
                if calib is None and budget:
                    calib = [
                        send(port, QUESTIONS[-1:], 16, False)["seconds"],
                        send(port, QUESTIONS[: max(STREAMS)], 16, True)["seconds"],
                    ]
                warm[name] = round(time.perf_counter() - t, 1)
            except Exception as e:
                failed[name] = server_error(servers[name], e)
                log(f"  {name}: FAILED: {failed[name]}")
        if calib:
            left = budget - (time.perf_counter() - t0) - 10
            max_tokens, sequential = choose(*calib, len(names) - len(failed), left)
            log(
                f"server: 16 tokens take {calib[0]:.1f}s for 1 request, {calib[1]:.1f}s "
                f"for {max(STREAMS)}: {max_tokens} tokens per request, 1 stream = "
                f"{sequential} request{'s' if sequential > 1 else ''} one at a time"
            )

        rounds = 0
        while rounds < p["rounds"] and len(failed) < len(names):
            if budget and round_seconds:
                if max(round_seconds) > budget - (time.perf_counter() - t0) - 5:
                    break
            order = names[rounds % len(names) :] + names[: rounds % len(names)]
            log(f"server: round {rounds + 1}")
            t = time.perf_counter()
            measure_round(servers, order, max_tokens, sequential, runs, failed)
            round_seconds.append(round(time.perf_counter() - t, 1))
            rounds += 1
        batches = {name: max_batch(servers[name]) for name in names}
    finally:
        for server in servers.values():
            stop_server(server)

    rows = summarize(runs, names)
    prompt_tokens = sorted(
        {
            t
            for s in runs.values()
            for rs in s.values()
            for r in rs
            for t in r["prompt_tokens"]
        }
    )
    p.update(
        max_tokens_used=max_tokens,
        sequential_used=sequential,
        rounds_run=rounds,
        streams=list(STREAMS),
        decode_concurrency=DECODE_CONCURRENCY,
        prompt_concurrency=PROMPT_CONCURRENCY,
        prompt_tokens=(
            [min(prompt_tokens), max(prompt_tokens)] if prompt_tokens else None
        ),
    )
    if budget:
        p["budget_seconds"] = round(budget)
    for row in rows:
        if row["streams"] == max(STREAMS) and row["tok_per_s"] is not None:
            log(
                f"  {row['setting']:13s} {row['streams']} streams: "
                f"{row['tok_per_s']:.1f} tok/s, "
                + (
                    f"x{row['ratio_vs_float']:.2f} float, "
                    if row["ratio_vs_float"] is not None
                    else ""
                )
                + f"x{row['speedup_vs_1_stream']:.2f} 1 stream, "
                f"{row['time_vs_sequential']:.2f}x the time one at a time"
            )
    return {
        "plan": p,
        "settings": [
            {"name": n, "flags": f + ["--prompt-cache-size", "0"]} for n, f in configs
        ],
        "rows": rows,
        "runs": runs,
        "failed": failed,
        "max_batch": batches,
        "server_start_seconds": start_seconds,
        "warmup_seconds": warm,
        "calibration_seconds_16_tokens_1_and_8": calib,
        "round_seconds": round_seconds,
        "load_avg_before": load_before,
        "load_avg_after": loadavg(),
        "reference_pristine_8x96_time_vs_sequential": PRISTINE_8X96,
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ---------------------------------------------------------------- page


STYLES = {
    "float": ("C7", "-"),
    "float bounded": ("C7", ":"),
    "K8V4": ("C1", "-"),
    "K8V4 bounded": ("C1", ":"),
}


def _row(result, setting, streams):
    for r in result["rows"]:
        if r["setting"] == setting and r["streams"] == streams:
            return r
    return None


def _x(v, fmt="{:.2f}x"):
    return "-" if v is None else fmt.format(v)


def plot(result, path):
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4))
    for s in result["settings"]:
        name = s["name"]
        rows = [_row(result, name, n) for n in STREAMS]
        pts = [(n, r) for n, r in zip(STREAMS, rows) if r["tok_per_s"] is not None]
        if not pts:
            continue
        c, ls = STYLES.get(name, (None, "-"))
        kw = dict(color=c, ls=ls, marker="o", label=name)
        a1.plot([n for n, _ in pts], [r["tok_per_s"] for _, r in pts], **kw)
        pts = [(n, r) for n, r in pts if r["ratio_vs_float"] is not None]
        a2.plot([n for n, _ in pts], [r["ratio_vs_float"] for _, r in pts], **kw)
    a1.set_ylabel("aggregate completion tok/s")
    a1.set_title("Server throughput", fontsize=10)
    a1.set_ylim(bottom=0)
    a2.axhline(1, color="k", lw=0.6)
    a2.set_ylabel("tok/s vs float unbounded, same streams")
    a2.set_title("Relative to the float cache (same run)", fontsize=10)
    for ax in (a1, a2):
        ax.set_xticks(STREAMS)
        ax.set_xlabel("concurrent streams")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def page_section(result, out_dir):
    """The markdown section of the page; saves benchmarks/server.png in out_dir."""
    if not result:
        return "## Server throughput\n\nNot run yet.\n"
    p = result["plan"]
    names = [s["name"] for s in result["settings"]]
    n_max = max(STREAMS)
    k = p["sequential_used"]
    flags = "; ".join(
        f"{s['name']} `{' '.join(s['flags'])}`" for s in result["settings"]
    )
    before, after = result.get("load_avg_before"), result.get("load_avg_after")
    pt = p.get("prompt_tokens") or ["?", "?"]
    lines = [
        "## Server throughput",
        "",
        f"`mlx_lm server` (continuous batching, `--decode-concurrency "
        f"{p['decode_concurrency']}`) on the default model, {len(names)} servers up at "
        f"once and warmed up. {', '.join(map(str, STREAMS[1:]))} streams: that many "
        f"requests sent at once; 1 stream: {k} request{'s' if k > 1 else ''} sent one at a "
        f"time. Distinct chat prompts of {pt[0]}–{pt[1]} tokens, {p['max_tokens_used']} "
        "completion tokens each (greedy, end of turn banned so none stops early); tok/s = "
        "completion tokens / wall time. The settings take turns at each stream count, "
        f"{p['rounds_run']} round{'s' if p['rounds_run'] != 1 else ''} in rotated order: "
        "medians over rounds of the tok/s and of the ratios taken within a round. "
        f"Bounded caches hold {p['window']} positions, which the prompt fills: they "
        f"decode past the wrap. Flags: {flags}."
        + (
            f" 1-min load average {before[0]:.1f} before, {after[0]:.1f} after."
            if before and after
            else ""
        ),
        "",
        "![server throughput](benchmarks/server.png)",
        "",
    ]
    head = [
        "setting",
        "streams",
        "tok/s",
        "vs float, same streams",
        "vs 1 stream",
        f"time vs {n_max} one at a time",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        for n in STREAMS:
            r = _row(result, name, n)
            cells = [
                name,
                n,
                _x(r["tok_per_s"], "{:.1f}"),
                _x(r["ratio_vs_float"]),
                _x(r["speedup_vs_1_stream"]),
                _x(r.get("time_vs_sequential")) if n == n_max else "",
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    ref = _row(result, names[0], n_max)
    lines += [""]
    if k < n_max:
        lines += [
            f"{n_max} one at a time: estimated as {n_max} times the mean time of the "
            f"{k} request{'s' if k > 1 else ''} of 1 stream (fewer than {n_max}, to save "
            "time).",
            "",
        ]
    if ref["time_vs_sequential"] is not None:
        lines += [
            f"For reference, on pristine mlx-lm 0.32.2 (float caches, default model) "
            f"{n_max} concurrent requests of 96 tokens took {PRISTINE_8X96:.2f}x the time "
            f"of sending them one by one; here, float: {ref['time_vs_sequential']:.2f}x"
            + (
                f" (with {p['max_tokens_used']} tokens)"
                if p["max_tokens_used"] != 96
                else ""
            )
            + ".",
            "",
        ]
    for name, error in (result.get("failed") or {}).items():
        lines += [f"**{name} failed**: `{error}`", ""]
    short = sum(r["short_requests"] for r in result["rows"])
    batches = result.get("max_batch") or {}
    small = {n: b for n, b in batches.items() if n not in result.get("failed", {})}
    if short or any(b != n_max for b in small.values()):
        lines += [
            f"Warning: {short} requests stopped early; largest batches decoded: "
            + ", ".join(f"{n} {b}" for n, b in batches.items())
            + ".",
            "",
        ]
    plot(result, Path(out_dir) / "benchmarks" / "server.png")
    return "\n".join(lines)


def summary_line(result):
    """One bullet (without the leading ``- ``) of the key numbers."""
    names = [s["name"] for s in result["settings"]]
    n_max = max(STREAMS)
    ref = _row(result, names[0], n_max)
    streams = "/".join(map(str, STREAMS))
    per = "; ".join(
        f"{name} "
        + "/".join(
            _x(_row(result, name, n)["ratio_vs_float"], "{:.2f}") for n in STREAMS
        )
        + "x"
        for name in names[1:]
    )
    failed = result.get("failed") or {}
    return (
        f"Server ({result['plan']['max_tokens_used']} tokens per request): float "
        f"{_x(ref['tok_per_s'], '{:.1f}')} tok/s with {n_max} streams = "
        f"{_x(ref['speedup_vs_1_stream'])} one stream; {n_max} concurrent requests in "
        f"{_x(ref['time_vs_sequential'])} the time of one at a time "
        f"({PRISTINE_8X96:.2f}x on pristine 0.32.2). Vs float at {streams} streams: "
        f"{per}." + (f" Failed: {', '.join(failed)}." if failed else "")
    )
