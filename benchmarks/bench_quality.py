"""
Quality of each KV cache setting on one model: perplexity change from the
float cache (paired over windows), next-token KL divergence from the float
cache, top-1 agreement with it, and the cache's bytes; and the planner's
quality table (``mlx_lm.kv_plan --kv-quality-table``).

Each window of the license texts is teacher-forced through the model's own
caches (``make_prompt_cache(model)``, quantized from the first token), fed
as generate_step feeds a prompt: chunks of ``chunk`` tokens, then the last
one alone. All settings run in lockstep, chunk by chunk, so the float
cache's next-token distributions are at hand to compare each setting's with
without keeping a window's logits (Gemma's vocabulary is 262,144 wide).
"""

import math
import time

from bench_common import (
    PREFILL_STEP,
    TEXTS,
    describe_layers,
    eval_step,
    fill,
    kv_layers,
    load_model,
    log,
    make_cache,
    mean,
    model_name,
    nbytes,
    planner_bytes,
    schedule,
    sem,
    settings,
    text_windows,
    theory_bytes,
)


def plan(quick):
    if quick:
        # Harness test: the bounded settings wrap (bound 128), Gemma's
        # sliding layers do not (window 512)
        return dict(length=320, windows=2, chunk=64, contexts=[2048, 4096])
    # 2048 tokens: Gemma's sliding layers (window 512) wrap 3 times per window
    return dict(length=2048, windows=None, chunk=256, contexts=[2048, 4096])


def window_pass(model, rows, window, chunk):
    """
    One window through every setting's cache. Per setting: sums over the
    window's predictions of the NLL of the next token, of the KL divergence
    from the float cache's distribution (and from the float cache with the
    same bound, for bounded settings), and of top-1 agreement with them;
    the cache's bytes at the end.
    """
    import mlx.core as mx

    tokens = mx.array(window)
    caches = {s.name: make_cache(model, s) for s in rows}
    sums = {s.name: dict(nll=0.0, kl=0.0, top1=0, kl_bound=0.0, top1_bound=0, n=0)
            for s in rows}
    # The float caches first: the others compare with their distributions
    order = sorted(rows, key=lambda s: (not s.float, s.max_kv_size is not None))
    for a, b in schedule(len(window) - 1, chunk):
        targets = tokens[a + 1 : b + 1]
        refs = {}  # max_kv_size -> (log-probabilities, probabilities, argmax)
        for s in order:
            logits = eval_step(model, caches[s.name], s, tokens[a:b])[0]
            logits = logits.astype(mx.float32)
            lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            top = mx.argmax(lp, axis=-1)
            nll = -mx.take_along_axis(lp, targets[:, None], axis=-1).sum()
            out = {"nll": nll}
            for key, bound in (("", None), ("_bound", s.max_kv_size)):
                if key and (bound is None or bound not in refs):
                    continue
                if bound in refs and not (s.float and s.max_kv_size == bound):
                    ref_lp, ref_p, ref_top = refs[bound]
                    out["kl" + key] = (ref_p * (ref_lp - lp)).sum()
                    out["top1" + key] = (top == ref_top).sum()
            if s.float:
                p = mx.exp(lp)
                refs[s.max_kv_size] = (lp, p, top)
                mx.eval(p, top)
            mx.eval(out)
            acc = sums[s.name]
            for k, v in out.items():
                acc[k] += v.item()
            acc["n"] += b - a
    for s in rows:
        sums[s.name]["nbytes"] = nbytes(caches[s.name])
    return sums


def summarize(rows, per_window, tokens):
    """The table's numbers per setting from the per-window sums."""
    ref = per_window["float"]
    nll_ref = [w["nll"] / w["n"] for w in ref]
    out = []
    for s in rows:
        ws = per_window[s.name]
        nll = [w["nll"] / w["n"] for w in ws]
        N = sum(w["n"] for w in ws)
        row = {
            "setting": s.name,
            "kv_bits": list(s.bits) if s.bits else None,
            "group_size": None if s.float else s.group_size,
            "hadamard": s.hadamard,
            "max_kv_size": s.max_kv_size,
            "float_window": s.float_window,
            "extra": s.extra,
            "speed": s.speed,
            "windows": len(ws),
            "predictions": N,
            "ppl": math.exp(sum(w["nll"] for w in ws) / N),
            "window_nll": [round(x, 6) for x in nll],
        }

        def change(base):
            d = [a - b for a, b in zip(nll, base)]
            dm = mean(d)
            se = sem(d)
            return 100 * math.expm1(dm), None if se is None else 100 * math.exp(dm) * se

        def per_token(key):
            xs = [w[key] / w["n"] for w in ws]
            return mean(xs), sem(xs)

        if s.name != "float":
            row["ppl_change_pct"], row["ppl_change_se_pct"] = change(nll_ref)
            row["kl"], row["kl_se"] = per_token("kl")
            row["top1"], row["top1_se"] = per_token("top1")
        bound_ref = f"float, window {s.max_kv_size:,}" if s.max_kv_size else None
        if not s.float and bound_ref in per_window:
            base = [w["nll"] / w["n"] for w in per_window[bound_ref]]
            row["vs_bounded_float"] = bound_ref
            row["ppl_change_bound_pct"], row["ppl_change_bound_se_pct"] = change(base)
            row["kl_bound"], row["kl_bound_se"] = per_token("kl_bound")
            row["top1_bound"], row["top1_bound_se"] = per_token("top1_bound")
        out.append(row)
    return out


def bytes_rows(model, rows, layers, contexts):
    """
    The bytes of each setting's cache after ``contexts`` tokens, measured
    (``nbytes`` of the model's own caches fed as a prompt through
    generate_step, with random keys and values) in the model's dtype and in
    float16, next to theory (``theory_bytes``) and the planner's
    ``cache_nbytes``.
    """
    import mlx.core as mx

    dtype = layers[0][3]
    out = {}
    for s in rows:
        row = {}
        for t in contexts:
            for name, dt in (("model", dtype), ("float16", mx.float16)):
                cache = fill(model, s, layers, t, dt)
                row[f"{name}_{t}"] = nbytes(cache)
                row[f"{name}_{t}_theory"] = theory_bytes(layers, s, t, dt.size)
                del cache
            row[f"planner_{t}"] = planner_bytes(model, s, t)
        out[s.name] = row
    for s in rows:
        for t in contexts:
            out[s.name][f"vs_float16_{t}"] = (
                out[s.name][f"float16_{t}"] / out["float"][f"float16_{t}"])
    return out


def run(key, quick=False, windows=None):
    p = plan(quick)
    if windows:
        p["windows"] = windows
    model, tokenizer = load_model(key)
    rows = settings(quick)
    layers = kv_layers(model)
    data = text_windows(tokenizer, p["length"], p["windows"])
    if len(data) < 2:
        raise SystemExit("quality: fewer than 2 windows")
    log(f"quality {key}: {len(data)} windows of {p['length']} tokens, chunks of "
        f"{p['chunk']}, {len(rows)} settings; {describe_layers(layers)}")

    t0 = time.perf_counter()
    log("quality: bytes at " + ", ".join(map(str, p["contexts"])) + " tokens")
    sizes = bytes_rows(model, rows, layers, p["contexts"])
    per_window = {s.name: [] for s in rows}
    # The bytes a window leaves, predicted by the planner for its schedule
    end_bytes = {s.name: planner_bytes(model, s, p["length"] - 1, p["chunk"])
                 for s in rows}
    mismatches = []
    for i, window in enumerate(data):
        t = time.perf_counter()
        sums = window_pass(model, rows, window, p["chunk"])
        for s in rows:
            per_window[s.name].append(sums[s.name])
            predicted = end_bytes[s.name]
            if predicted is not None and sums[s.name]["nbytes"] != predicted:
                mismatches.append((s.name, i, sums[s.name]["nbytes"], predicted))
        dt = time.perf_counter() - t
        ref = sums["float"]
        log(f"  window {i + 1}/{len(data)} in {dt:.0f}s "
            f"({len(rows) * (len(window) - 1) / dt:.0f} tok/s over all settings): "
            f"float nll {ref['nll'] / ref['n']:.3f}; "
            + ", ".join(f"{s.name} {100 * math.expm1((sums[s.name]['nll'] - ref['nll']) / ref['n']):+.2f}%"
                        for s in rows if s.name != "float"))
    seconds = time.perf_counter() - t0
    table = summarize(rows, per_window, p["length"])
    for r in table:
        r["bytes"] = sizes[r["setting"]]
        r["window_end_nbytes"] = per_window[r["setting"]][0]["nbytes"]
        r["window_end_planner"] = end_bytes[r["setting"]]
    for m in mismatches:
        log(f"  WARNING: {m[0]} window {m[1]}: nbytes {m[2]:,} != planner {m[3]:,}")
    log(f"quality {key}: done in {seconds / 60:.1f} min")
    return {
        "model": model_name(key),
        "layers": describe_layers(layers),
        "plan": dict(p, windows=len(data), texts=list(TEXTS),
                     bos=data[0][0] == tokenizer.bos_token_id,
                     prefill_step=PREFILL_STEP),
        "rows": table,
        "bytes_mismatches": mismatches,
        "seconds": round(seconds, 1),
    }


def planner_table(result):
    """
    The quality table ``mlx_lm.kv_plan --kv-quality-table`` reads: the
    perplexity change (%) from the float cache by setting name. Bounded
    settings too, vs the unbounded float cache (the planner looks up the
    unbounded names; the others are there for people).
    """
    p = result["plan"]
    return {
        "model": result["model"],
        "settings": {
            r["setting"]: round(r["ppl_change_pct"], 3)
            for r in result["rows"] if r["setting"] != "float"
        },
        "measured": (
            f"make bench (benchmarks/bench_quality.py): perplexity change from the "
            f"float cache, {p['windows']} windows of {p['length']} tokens of "
            f"/usr/share/common-licenses, cache quantized from the first token, "
            f"group size 64"
        ),
        "standard_error_pct": {
            r["setting"]: round(r["ppl_change_se_pct"], 3)
            for r in result["rows"]
            if r["setting"] != "float" and r["ppl_change_se_pct"] is not None
        },
    }
