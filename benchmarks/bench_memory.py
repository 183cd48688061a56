"""KV cache bytes: per token vs theory, over a long run, in a real generation."""

import time

from bench_common import HEAD_DIM, KV_HEADS, LAYERS, label, load_model, log

BITS = [(8, 8), (8, 4), (4, 8), (4, 4), (4, 2)]
GROUPS = [64, 32]


def plan(quick):
    if quick:
        return dict(per_token=512, trace_total=6000, trace_max=1024, trace_chunk=512,
                    gen_tokens=200, gen_max_kv=64, record_every=10)
    return dict(per_token=1024, trace_total=20000, trace_max=4096, trace_chunk=512,
                gen_tokens=2000, gen_max_kv=256, record_every=25)


def theory_bits(bits, group, s):
    """Bits per cached element (keys and values averaged)."""
    if bits is None:
        return s
    return sum(b + 2 * s / group for b in bits) / 2


def per_token(n):
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    rows = []
    for dtype, s in ((mx.float16, 16), (mx.float32, 32)):
        k = mx.random.normal((1, KV_HEADS, n, HEAD_DIM)).astype(dtype)
        v = mx.random.normal((1, KV_HEADS, n, HEAD_DIM)).astype(dtype)
        settings = [(None, None)] + [(b, g) for g in GROUPS for b in BITS]
        for bits, group in settings:
            c = KVCache() if bits is None else QuantizedKVCache(group, bits)
            c.update_and_fetch(k, v)
            mx.eval(c.keys, c.values)
            per_layer = c.nbytes / n
            bits_el = theory_bits(bits, group, s)
            theory = 2 * KV_HEADS * HEAD_DIM * bits_el / 8
            rows.append({
                "dtype": "float16" if s == 16 else "float32",
                "setting": label(bits, group or 64),
                "bits": list(bits) if bits else None, "group": group,
                "bits_per_element": bits_el,
                "bytes_per_token": per_layer * LAYERS,
                "theory_bytes_per_token": theory * LAYERS,
                "measured_vs_theory": per_layer / theory,
                "vs_float16": bits_el / 16, "vs_float32": bits_el / 32,
            })
    for r in rows:
        log(f"  {r['dtype']} {r['setting']}: {r['bytes_per_token']:.0f} B/token "
            f"(theory {r['theory_bytes_per_token']:.0f}, x{r['measured_vs_theory']:.3f})")
    return rows


def trace(total, max_size, chunk):
    """
    Bytes of three 30-layer caches fed synthetic float32 keys and values:
    chunks (prefill-like), single tokens after the wrap (decode-like),
    chunks again, and single tokens to finish.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, QuantizedRotatingKVCache, RotatingKVCache

    keep = 4
    caches = {
        "float unbounded": [KVCache() for _ in range(LAYERS)],
        f"float bounded {max_size}": [RotatingKVCache(max_size, keep) for _ in range(LAYERS)],
        f"K8V4 bounded {max_size}": [
            QuantizedRotatingKVCache(max_size, keep, 64, (8, 4)) for _ in range(LAYERS)
        ],
    }
    kc = mx.random.normal((1, KV_HEADS, chunk, HEAD_DIM))
    k1 = mx.random.normal((1, KV_HEADS, 1, HEAD_DIM))
    mx.eval(kc, k1)
    singles = 512 if total >= 4 * max_size else 128
    a = max_size + max_size // 2  # chunks up to here (past the wrap)
    b = a + singles  # then single tokens
    d = total - singles // 2  # chunks again, then single tokens to the end
    points = {name: [] for name in caches}
    offset = 0

    def feed(n):
        x = kc[:, :, :n] if n > 1 else k1
        for cs in caches.values():
            for c in cs:
                c.update_and_fetch(x, -x)

    def record(phase):
        for name, cs in caches.items():
            mx.eval([c.state for c in cs])
            points[name].append((offset, sum(c.nbytes for c in cs), phase))

    t = time.perf_counter()
    record("start")
    while offset < total:
        if offset < a or b <= offset < d:
            n = min(chunk, (a if offset < a else d) - offset)
            feed(n)
            offset += n
            record("chunk")
        else:
            for i in range(min((b if offset < b else total) - offset, 32)):
                feed(1)
                offset += 1
            record("single")
    dt = time.perf_counter() - t
    per_tok = 2 * KV_HEADS * HEAD_DIM * 4 * LAYERS
    final = {name: p[-1][1] for name, p in points.items()}
    singles_after_wrap = {
        name: [v for o, v, ph in p if ph == "single" and o > max_size]
        for name, p in points.items() if name != "float unbounded"
    }
    log(f"  trace to {total} tokens in {dt:.1f}s: "
        + ", ".join(f"{n} {v / 2**20:.1f} MiB" for n, v in final.items()))
    return {
        "total": total, "max_size": max_size, "keep": keep, "chunk": chunk,
        "schedule": f"chunks of {chunk} to {a}, single tokens to {b}, chunks of "
                    f"{chunk} to {d}, single tokens to {total}",
        "float32_bytes_per_token": per_tok,
        "points": points, "final": final, "seconds": round(dt, 1),
        "bounded_single_steps_after_wrap": {
            n: {"min": min(v), "max": max(v), "expected": max_size * per_tok * (
                1 if n.startswith("float") else 0.21875)}
            for n, v in singles_after_wrap.items() if v
        },
        "k8v4_vs_float_bounded": final[f"K8V4 bounded {max_size}"]
        / final[f"float bounded {max_size}"],
    }


def generation(n_tokens, max_kv, every, deadline=None):
    """A real K8V4 bounded generation with the default model."""
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import describe_prompt_cache, make_prompt_cache
    import mlx.core as mx

    model, tokenizer = load_model()
    messages = [{"role": "user", "content":
                 "Write a long, detailed story about a lighthouse keeper who "
                 "finds a message in a bottle. Describe every day of the year."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    prompt = mx.array(prompt)
    cache = make_prompt_cache(model, max_kv_size=max_kv)
    points = []
    t = time.perf_counter()
    tokens = []
    stopped = False
    min_tokens = 3 * max_kv  # well past the wrap whatever the time
    for n, (tok, _) in enumerate(
        generate_step(prompt, model, prompt_cache=cache, max_tokens=n_tokens,
                      kv_bits=(8, 4), kv_group_size=64, quantized_kv_start=0)
    ):
        tokens.append(int(tok))
        last = n == n_tokens - 1
        if (deadline and n + 1 >= min_tokens and n % every == every - 1
                and time.perf_counter() > deadline):
            stopped = last = True
        if n % every == 0 or last:
            points.append((cache[0].offset, sum(c.nbytes for c in cache)))
        if stopped:
            log(f"  generation stopped at {n + 1} of {n_tokens} tokens (time budget)")
            break
    dt = time.perf_counter() - t
    per_tok = 2 * KV_HEADS * HEAD_DIM * 4 * LAYERS
    desc = describe_prompt_cache(cache)
    wrap = [v for o, v in points if o > max_kv + 1]
    log(f"  generation: {len(tokens)} tokens in {dt:.0f}s ({len(tokens) / dt:.1f} tok/s); {desc}")
    return {
        "tokens": len(tokens), "planned_tokens": n_tokens, "stopped_by_budget": stopped,
        "prompt_tokens": int(prompt.size), "max_kv_size": max_kv,
        "kv_bits": [8, 4], "kv_group_size": 64, "quantized_kv_start": 0,
        "seconds": round(dt, 1), "tok_per_s": len(tokens) / dt,
        "points": points, "describe": desc,
        "float32_bytes_per_token": per_tok,
        "after_wrap": {"min": min(wrap), "max": max(wrap)} if wrap else None,
        "final_offset": cache[0].offset,
        "text_head": tokenizer.decode(tokens[:60]),
    }


def run(quick=False, budget=None):
    start = time.perf_counter()
    p = plan(quick)
    log("memory: bytes per token vs theory")
    rows = per_token(p["per_token"])
    log("memory: trace")
    tr = trace(p["trace_total"], p["trace_max"], p["trace_chunk"])
    log("memory: real generation")
    deadline = start + budget if budget and not quick else None
    gen = generation(p["gen_tokens"], p["gen_max_kv"], p["record_every"], deadline)
    return {"plan": p, "per_token": rows, "trace": tr, "generation": gen}
