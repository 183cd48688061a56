"""
Decode and prefill speed of the KV cache settings on one model, as ratios
to the float cache measured in the same run, interleaved.

Decode: each setting's cache is filled as a prompt of N tokens would fill
it (the model's own caches, random keys and values: ``bench_common.fill``),
then the model decodes one token at a time. The settings take turns step
by step (the order rotated each sweep), and a ratio to float is taken
within each sweep, so all see the same load; the median and quartiles of
the per-sweep ratios are reported.

Prefill: the license text as a prompt of N tokens through each setting's
cache as generate_step processes it (chunks of 2048, quantized from the
first token), up to the first generated token; the settings take turns,
the order reversed each round.
"""

import time

from bench_common import (
    PREFILL_STEP,
    eval_step,
    fill,
    kv_layers,
    license_text,
    load_model,
    log,
    make_cache,
    median,
    model_name,
    quartiles,
    schedule,
    settings,
)


def plan(quick):
    if quick:
        return dict(contexts=[256, 512], sweeps=4, warmup=1,
                    prefill=[128, 256], rounds=1)
    return dict(contexts=[1024, 4096], sweeps=30, warmup=2,
                prefill=[1024, 4096], rounds=2)


def decode_step(model, cache, s, y):
    """Seconds of one decode step (evaluated) and its token."""
    import mlx.core as mx

    t = time.perf_counter()
    logits = eval_step(model, cache, s, y)
    y = mx.argmax(logits[0, -1])[None]
    mx.eval(y)
    return time.perf_counter() - t, y


def decode_speed(model, rows, layers, n, sweeps, warmup):
    import mlx.core as mx

    dtype = layers[0][3]
    caches = {s.name: fill(model, s, layers, n, dtype) for s in rows}
    ys = {s.name: mx.array([1]) for s in rows}
    times = {s.name: [] for s in rows}
    for r in range(warmup + sweeps):
        order = rows[r % len(rows):] + rows[: r % len(rows)]
        for s in order:
            dt, ys[s.name] = decode_step(model, caches[s.name], s, ys[s.name])
            if r >= warmup:
                times[s.name].append(dt)
    ref = times["float"]
    out = {}
    for s in rows:
        ratios = [b / a for a, b in zip(times[s.name], ref)]  # tok/s ratio
        out[s.name] = {
            "tok_per_s": 1 / median(times[s.name]),
            "ratio": median(ratios),
            "quartiles": quartiles(ratios),
            "cache_nbytes": sum(c.nbytes for c in caches[s.name]),
        }
    del caches
    mx.clear_cache()
    return out


def prefill_once(model, s, ids):
    """Seconds to process ``ids`` as a prompt and produce the first token."""
    import mlx.core as mx

    tokens = mx.array(ids)
    cache = make_cache(model, s)
    t = time.perf_counter()
    for a, b in schedule(len(ids), PREFILL_STEP):
        logits = eval_step(model, cache, s, tokens[a:b])
        mx.eval([c.state for c in cache], logits)
    y = mx.argmax(logits[0, -1])
    mx.eval(y)
    dt = time.perf_counter() - t
    del cache
    mx.clear_cache()
    return dt


def prefill_speed(model, tokenizer, rows, n, rounds):
    ids = tokenizer.encode(license_text())[:n]
    assert len(ids) == n
    prefill_once(model, rows[0], ids[:64])  # warm up
    times = {s.name: [] for s in rows}
    for r in range(rounds):
        for s in rows if r % 2 == 0 else rows[::-1]:
            times[s.name].append(prefill_once(model, s, ids))
    ref = times["float"]
    out = {}
    for s in rows:
        ratios = [b / a for a, b in zip(times[s.name], ref)]
        out[s.name] = {
            "tok_per_s": n / median(times[s.name]),
            "ratio": median(ratios),
            "ratios": [round(x, 4) for x in ratios],
        }
    return out


def run(key, quick=False):
    p = plan(quick)
    model, tokenizer = load_model(key)
    rows = [s for s in settings(quick) if s.speed]
    assert rows[0].name == "float"
    layers = kv_layers(model)
    t0 = time.perf_counter()
    decode = {}
    for n in p["contexts"]:
        t = time.perf_counter()
        decode[str(n)] = d = decode_speed(model, rows, layers, n, p["sweeps"], p["warmup"])
        log(f"speed {key} decode at {n}: float {d['float']['tok_per_s']:.1f} tok/s; "
            + ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in d.items() if k != "float")
            + f" [{time.perf_counter() - t:.0f}s]")
    prefill = {}
    for n in p["prefill"]:
        t = time.perf_counter()
        prefill[str(n)] = d = prefill_speed(model, tokenizer, rows, n, p["rounds"])
        log(f"speed {key} prefill {n}: float {d['float']['tok_per_s']:.0f} tok/s; "
            + ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in d.items() if k != "float")
            + f" [{time.perf_counter() - t:.0f}s]")
    return {
        "model": model_name(key),
        "plan": p,
        "settings": [s.name for s in rows],
        "decode": decode,
        "prefill": prefill,
        "seconds": round(time.perf_counter() - t0, 1),
    }
