"""
Where one decode step's time goes, for the float and quantized caches.

The full step (Python graph building + evaluation) is timed as generation
runs it. The pieces are then timed in isolation, each as one evaluation of
the 30 layers' worth of that piece: attention over the cache (mlx's fused
``scaled_dot_product_attention`` for float, two ``quantized_matmul`` and a
softmax for quantized), the cache update (quantize + write one token), and
the projections, MLP and LM head. What the pieces do not add up to is
reported as the remainder (norms, RoPE, scheduling, and overlap between
pieces that an isolated timing cannot see).
"""

import time

from bench_common import HEAD_DIM, KV_HEADS, LAYERS, load_model, log, median
from bench_speed import build_cache

SETTINGS = [("float", None), ("K8V8", (8, 8)), ("K8V4", (8, 4))]


def plan(quick):
    if quick:
        return dict(contexts=[256, 1024], sweeps=3)
    return dict(contexts=[1024, 4096], sweeps=8)


def _timed(fn):
    import mlx.core as mx

    t = time.perf_counter()
    mx.eval(fn())
    return time.perf_counter() - t


def run(quick=False, budget=None):
    import mlx.core as mx
    from mlx_lm.models.base import scaled_dot_product_attention

    p = plan(quick)
    model, _ = load_model()
    layers = model.model.layers
    n_heads = model.args.num_attention_heads
    hidden = model.args.hidden_size
    if getattr(model.args, "tie_word_embeddings", True):
        head = model.model.embed_tokens.as_linear
    else:
        head = model.lm_head
    x = mx.random.normal((1, 1, hidden))
    q = mx.random.normal((1, n_heads, 1, HEAD_DIM))
    one = mx.random.normal((1, KV_HEADS, 1, HEAD_DIM))
    mx.eval(x, q, one)

    def projections():
        out = []
        for l in layers:
            a = l.self_attn
            out += [a.q_proj(x), a.k_proj(x), a.v_proj(x), a.o_proj(x), l.mlp(x)]
        return out + [head(x)]

    rows = []
    for n in p["contexts"]:
        caches = {name: build_cache(bits, False, n) for name, bits in SETTINGS}
        times = {name: {k: [] for k in ("step", "python", "attention", "cache", "proj")}
                 for name in caches}

        def reset(cs):
            for c in cs:
                c.trim(c.offset - n)

        for r in range(p["sweeps"] + 1):
            for name, cs in caches.items():
                tt = times[name]
                y = mx.array([[1]])
                t0 = time.perf_counter()
                logits = model(y, cache=cs)
                t1 = time.perf_counter()
                mx.eval(logits)
                t2 = time.perf_counter()
                reset(cs)
                att = _timed(lambda: [
                    scaled_dot_product_attention(
                        q, *c.keys_and_values(), cache=c, scale=HEAD_DIM**-0.5, mask=None)
                    for c in cs])
                upd = _timed(lambda: [c.update_and_fetch(one, one) for c in cs])
                reset(cs)
                prj = _timed(projections)
                if r == 0:
                    continue  # warm-up
                tt["step"].append(t2 - t0)
                tt["python"].append(t1 - t0)
                tt["attention"].append(att)
                tt["cache"].append(upd)
                tt["proj"].append(prj)
        for name in caches:
            med = {k: median(v) * 1000 for k, v in times[name].items()}
            med["remainder"] = med["step"] - sum(
                med[k] for k in ("python", "attention", "cache", "proj"))
            rows.append({"context": n, "setting": name, "ms": med})
            log(f"  profile @{n} {name}: " + ", ".join(f"{k} {v:.1f}ms" for k, v in med.items()))
        del caches
        mx.clear_cache()
    return {"plan": p, "rows": rows}
