"""Decode and prefill speed of the quantized caches, as ratios to float."""

import time

from bench_common import HEAD_DIM, KV_HEADS, LAYERS, license_text, load_model, log, median

KEEP = 4
# (name, (key bits, value bits) or None, bounded, Hadamard-rotated)
SETTINGS = [
    ("float", None, False, False),
    ("float bounded", None, True, False),
    ("K8V8", (8, 8), False, False),
    ("K8V8 bounded", (8, 8), True, False),
    ("K8V4", (8, 4), False, False),
    ("K8V4 bounded", (8, 4), True, False),
    ("K8V4 rotated", (8, 4), False, True),
    ("K8V4 rotated bounded", (8, 4), True, True),
]


def plan(quick):
    if quick:
        return dict(contexts=[256, 1024], sweeps=6,
                    prefill=[256, 512], prefill_rounds=1)
    return dict(contexts=[1024, 4096, 8192, 16384], sweeps=24,
                prefill=[1024, 4096], prefill_rounds=2)


def build_cache(bits, bounded, n, rotate=False):
    """
    A 30-layer cache holding ``n`` synthetic float32 positions: unbounded, or
    a rotating cache of ``max_size = n`` that has wrapped (filled with ``n``
    positions, then single-token steps), as a long generation leaves it.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import (
        KVCache,
        QuantizedKVCache,
        QuantizedRotatingKVCache,
        RotatingKVCache,
    )

    caches = []
    one = mx.random.normal((1, KV_HEADS, 1, HEAD_DIM))
    for _ in range(LAYERS):
        if bounded:
            c = (RotatingKVCache(n, KEEP) if bits is None
                 else QuantizedRotatingKVCache(n, KEEP, 64, bits, rotate))
        else:
            c = KVCache() if bits is None else QuantizedKVCache(64, bits, rotate)
        k = mx.random.normal((1, KV_HEADS, n, HEAD_DIM))
        v = mx.random.normal((1, KV_HEADS, n, HEAD_DIM))
        c.update_and_fetch(k, v)
        if bounded:
            for _ in range(3):
                c.update_and_fetch(one, one)
        mx.eval([c.state])
        caches.append(c)
    return caches


def decode(model, cache, n):
    """tok/s of ``n`` greedy decode steps, each evaluated."""
    import mlx.core as mx

    y = mx.array([[1]])
    t = time.perf_counter()
    for _ in range(n):
        logits = model(y, cache=cache)
        y = mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)
        mx.eval(y)
    return n / (time.perf_counter() - t)


def quartiles(xs):
    """The 25th and 75th percentiles (the spread of per-sweep ratios)."""
    import statistics

    if len(xs) < 2:
        return [xs[0], xs[0]] if xs else None
    q = statistics.quantiles(xs, n=4)
    return [q[0], q[2]]


# Relative cost of a sweep at each context (for the time budget).
WEIGHT = {1024: 1.0, 4096: 1.3, 8192: 1.7, 16384: 2.5}
# The pairs compared step against step for their targets (a / b): bounded
# after the wrap vs unbounded (>= 0.97x), rotated vs plain (cost < 5%).
PAIRS = {"bounded": ("K8V4 bounded", "K8V4"), "rotated": ("K8V4 rotated", "K8V4")}
# Share of each context's budget for the pairs, and their number.
PAIR_SHARE, MIN_PAIRS, MAX_PAIRS = 0.4, 16, 40


def step(model, caches, n):
    """tok/s of one decode step; unbounded caches are trimmed back to ``n``."""
    t = decode(model, caches, 1)
    for c in caches:
        if not hasattr(c, "max_size"):
            c.trim(c.offset - n)
    return t


def paired_ratios(model, a, b, n, pairs):
    """
    tok/s of ``a`` over ``b`` in adjacent single steps, the order alternating
    (ab, ba, ...): the two steps of a pair see the same load, which per-sweep
    ratios of eight settings do not when other jobs come and go.
    """
    ratios = []
    for i in range(pairs):
        if i % 2 == 0:
            ta, tb = step(model, a, n), step(model, b, n)
        else:
            tb, ta = step(model, b, n), step(model, a, n)
        ratios.append(ta / tb)
    return ratios


def decode_speed(model, contexts, sweeps, budget=None):
    import mlx.core as mx

    out = []
    weights = [WEIGHT.get(n, n / 8192 + 0.5) for n in contexts]
    for i, n in enumerate(contexts):
        t0 = time.perf_counter()
        ctx_budget = budget * weights[i] / sum(weights) if budget else None
        caches = {name: build_cache(bits, bounded, n, rot)
                  for name, bits, bounded, rot in SETTINGS}
        sizes = {name: sum(c.nbytes for c in cs) for name, cs in caches.items()}
        tps = {name: [] for name in caches}
        names = list(caches)
        # Interleave one step at a time: each sweep times one decode step of
        # every setting, so all see the same load; ratios are taken per sweep.
        target = sweeps + 2
        pairs = MAX_PAIRS if budget is None else sweeps
        r = 0
        while r < target:
            if r == 2 and ctx_budget:
                # Fit the sweeps and the pairs in this context's share of the budget.
                per_sweep = (time.perf_counter() - t_sweeps) / 2
                left = ctx_budget - (time.perf_counter() - t0)
                per_pair = 2 * per_sweep / len(names)
                pairs = max(MIN_PAIRS, min(MAX_PAIRS, int(
                    PAIR_SHARE * left / (len(PAIRS) * per_pair))))
                left -= len(PAIRS) * pairs * per_pair
                target = 2 + max(8, min(sweeps, int(left / per_sweep)))
            if r == 0:
                t_sweeps = time.perf_counter()
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                t = step(model, caches[name], n)
                if r >= 2:  # two warm-up sweeps
                    tps[name].append(t)
            r += 1
        # Ratios per sweep (same load), then the median over sweeps.
        per_sweep = {n_: [a / b for a, b in zip(tps[n_], tps["float"])] for n_ in names}
        ratios = {name: median(v) for name, v in per_sweep.items()}
        spread = {name: quartiles(v) for name, v in per_sweep.items()}
        bf = median([a / b for a, b in zip(tps["float bounded"], tps["float"])])
        pair = {key: paired_ratios(model, caches[a], caches[b], n, pairs)
                for key, (a, b) in PAIRS.items()}
        bq, rot = median(pair["bounded"]), median(pair["rotated"])
        row = {
            "context": n, "sweeps": target - 2, "tok_per_s": tps, "median_tok_per_s":
            {k: median(v) for k, v in tps.items()}, "ratio_vs_float": ratios,
            "ratio_quartiles": spread,
            "pairs": pairs,
            "k8v4_bounded_vs_unbounded": bq,
            "k8v4_bounded_vs_unbounded_quartiles": quartiles(pair["bounded"]),
            "float_bounded_vs_unbounded": bf,
            "k8v4_rotated_vs_plain": rot,
            "k8v4_rotated_vs_plain_quartiles": quartiles(pair["rotated"]),
            "cache_bytes": sizes, "seconds": round(time.perf_counter() - t0, 1),
        }
        out.append(row)
        log(f"  decode @{n}: float {row['median_tok_per_s']['float']:.1f} tok/s; "
            + ", ".join(f"{k} x{v:.2f}" for k, v in ratios.items() if k != "float")
            + f"; K8V4 bounded/unbounded x{bq:.3f}, rotated/plain x{rot:.3f} "
            f"({pairs} pairs) [{row['seconds']:.0f}s]")
        del caches
        mx.clear_cache()
    return out


def prefill_speed(model, tokenizer, lengths, rounds, budget=None):
    import mlx.core as mx
    from mlx_lm.generate import generate_step, maybe_quantize_kv_cache
    from mlx_lm.models.cache import kv_head_dims, make_prompt_cache

    ids = tokenizer.encode(license_text())
    head_dims = kv_head_dims(model)
    for _ in generate_step(mx.array(ids[:64]), model, max_tokens=1):  # warm up
        break
    out = []
    start = time.perf_counter()
    per_token = None  # seconds per prompt token of a float + K8V4 pair
    for n in lengths:
        prompt = mx.array(ids[:n])
        tps = {"float": [], "K8V4": []}
        n_rounds = rounds
        if budget and per_token:
            # Attention makes a token of a longer prompt dearer: scale the
            # last length's cost per token by the length ratio.
            left = budget - (time.perf_counter() - start)
            cost = per_token * n * max(1.0, n / last_n)
            n_rounds = max(1, min(rounds, int(left / cost)))
        last_n = n
        t_len = time.perf_counter()
        for r in range(n_rounds):
            order = ["float", "K8V4"] if r % 2 == 0 else ["K8V4", "float"]
            for name in order:
                bits = None if name == "float" else (8, 4)
                cache = make_prompt_cache(model)
                if bits:
                    # Quantized from the first token: even the first chunk.
                    maybe_quantize_kv_cache(cache, 0, 64, bits, head_dims=head_dims)
                t = time.perf_counter()
                for _ in generate_step(prompt, model, prompt_cache=cache, max_tokens=1,
                                       kv_bits=bits, quantized_kv_start=0):
                    break
                tps[name].append(n / (time.perf_counter() - t))
                kind = type(cache[0]).__name__
                del cache
                mx.clear_cache()
        per_token = (time.perf_counter() - t_len) / n_rounds / n
        ratio = median([a / b for a, b in zip(tps["K8V4"], tps["float"])])
        out.append({"prompt_tokens": n, "rounds": n_rounds, "tok_per_s": tps,
                    "median_tok_per_s": {k: median(v) for k, v in tps.items()},
                    "ratio_k8v4_vs_float": ratio, "quantized_cache": kind})
        log(f"  prefill {n}: float {median(tps['float']):.0f} tok/s, K8V4 x{ratio:.2f}")
    return out


def run(quick=False, budget=None):
    p = plan(quick)
    budget = None if quick else budget
    model, tokenizer = load_model()
    log("speed: decode")
    dec = decode_speed(model, p["contexts"], p["sweeps"], budget and 0.55 * budget)
    log("speed: prefill")
    pre = prefill_speed(model, tokenizer, p["prefill"], p["prefill_rounds"],
                        budget and 0.45 * budget)
    if budget:
        p["budget_seconds"] = round(budget)
    return {"plan": p, "decode": dec, "prefill": pre}
