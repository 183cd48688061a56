"""
Memory of the KV caches on one model: the bytes of every setting measured
against theory and the planner, and a bounded quantized cache over a long
generation (its bytes must stay flat once it wraps).
"""

import time

from bench_common import (
    BOUND,
    QUICK_BOUND,
    Setting,
    describe_layers,
    eval_step,
    kv_layers,
    license_text,
    load_model,
    log,
    make_cache,
    model_name,
    nbytes,
    planner_bytes,
    schedule,
    settings,
)
from bench_quality import bytes_rows


def plan(quick):
    if quick:
        return dict(contexts=[2048, 4096], generate=300, bound=QUICK_BOUND,
                    prompt=64, every=25)
    return dict(contexts=[2048, 4096], generate=3000, bound=BOUND, prompt=64, every=100)


def generation(model, tokenizer, s, prompt_tokens, n, every):
    """
    ``n`` greedy tokens after a prompt through the cache of ``s``, fed as
    generate_step feeds them (the prompt in one chunk but its last token,
    then one token at a time, quantizing after each update); every ``every``
    positions: the cache's ``nbytes``, the planner's prediction for that
    point, and MLX's active memory (model weights included).
    """
    import mlx.core as mx

    prompt = tokenizer.encode(license_text())[:prompt_tokens]
    cache = make_cache(model, s)
    float_s = Setting(None)
    points = []
    t = time.perf_counter()
    for a, b in schedule(len(prompt), 2048):
        logits = eval_step(model, cache, s, mx.array(prompt[a:b]))
    y = mx.argmax(logits[0, -1])
    for i in range(n):
        logits = eval_step(model, cache, s, y[None])
        y = mx.argmax(logits[0, -1])
        mx.eval(y)
        offset = cache[0].offset
        if offset % every == 0 or i == n - 1:
            points.append({
                "tokens": offset,
                "nbytes": nbytes(cache),
                "planner": planner_bytes(model, s, offset, prompt_tokens=len(prompt)),
                "float_unbounded_planner": planner_bytes(
                    model, float_s, offset, prompt_tokens=len(prompt)),
                "active_memory": mx.get_active_memory(),
            })
    seconds = time.perf_counter() - t
    from mlx_lm.models.cache import describe_prompt_cache

    return {
        "setting": s.name,
        "prompt_tokens": len(prompt),
        "generated": n,
        "seconds": round(seconds, 1),
        "tok_per_s": n / seconds,
        "points": points,
        "describe": describe_prompt_cache(cache),
    }


def run(key, quick=False):
    p = plan(quick)
    model, tokenizer = load_model(key)
    rows = settings(quick)
    layers = kv_layers(model)
    t0 = time.perf_counter()
    log(f"memory {key}: bytes of {len(rows)} settings at "
        + ", ".join(map(str, p["contexts"])) + " tokens")
    sizes = bytes_rows(model, rows, layers, p["contexts"])
    for name, r in sizes.items():
        t = p["contexts"][-1]
        log(f"  {name}: {r[f'model_{t}']:,} B at {t} (theory {r[f'model_{t}_theory']}, "
            f"planner {r[f'planner_{t}']}), {r[f'vs_float16_{t}']:.3f} of float16")
    s = Setting((8, 4), True, max_kv_size=p["bound"])
    log(f"memory {key}: {p['generate']} tokens through {s.name}")
    gen = generation(model, tokenizer, s, p["prompt"], p["generate"], p["every"])
    wrapped = [q["nbytes"] for q in gen["points"] if q["tokens"] > p["bound"]]
    gen["after_wrap"] = {"min": min(wrapped), "max": max(wrapped)} if wrapped else None
    gen["planner_mismatches"] = [q for q in gen["points"]
                                 if q["planner"] is not None and q["planner"] != q["nbytes"]]
    log(f"  {gen['generated']} tokens at {gen['tok_per_s']:.1f} tok/s; after the wrap "
        f"{gen['after_wrap']}; {gen['describe']}")
    return {
        "model": model_name(key),
        "layers": describe_layers(layers),
        "plan": p,
        "bytes": sizes,
        "settings": [r.name for r in rows],
        "generation": gen,
        "seconds": round(time.perf_counter() - t0, 1),
    }
