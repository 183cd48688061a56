"""Perplexity of the default model through each KV cache setting."""

import math
import tempfile
import time
from pathlib import Path

from bench_common import label, license_text, load_model, log

BITS = [(8, 8), (8, 4), (4, 8), (4, 4), (4, 2)]
# Every quantized setting plain and Hadamard-rotated (the CLI default).
ROTATE = (False, True)
# The settings of the rotation targets (group 64), measured again on more
# windows with what is left of the budget: (name, bits, rotate).
TARGETS = [("float", None, False), ("K8V4 rotated", (8, 4), True),
           ("K4V4 rotated", (4, 4), True)]
# Settings also measured with mx.quantize's grids (KV_REFINE_STEPS = 0, as
# upstream quantizes) instead of the least-squares ones: (bits, rotate).
MX_QUANTIZE = [((8, 4), False), ((8, 4), True), ((4, 4), True)]
# (bits, rotate) of the bounded caches
BOUNDED_BITS = [(None, False), ((8, 8), False), ((8, 4), False), ((8, 4), True)]


def plan(quick):
    if quick:
        return dict(seq=128, windows=3, chunk=64, groups=[64, 32],
                    bseq=256, bwindows=2, bsizes=[64, 128])
    # 26 windows of 512: all the license texts hold
    return dict(seq=512, windows=26, chunk=64, groups=[64, 32],
                bseq=1024, bwindows=4, bsizes=[256, 512])


def window_stats(model, data, cache_args, batch_size=1, logprobs=False):
    """
    Per-window (mean NLL, NLL standard deviation), the windows fed through
    the cache as ``eval_ppl`` does (its ``_cache_logits``), with
    ``mx.quantize``'s grids if ``cache_args["mx_quantize"]``; with
    ``logprobs``, each window's log-probabilities too. One window at a
    time: batching them is barely faster on CPU, and its other rounding moves
    a quantized window's NLL by up to ~0.005.
    """
    from unittest import mock

    import mlx_lm.models.cache as cache_module

    steps = 0 if cache_args.get("mx_quantize") else cache_module.KV_REFINE_STEPS
    with mock.patch.object(cache_module, "KV_REFINE_STEPS", steps):
        return _window_stats(model, data, cache_args, batch_size, logprobs)


def _window_stats(model, data, cache_args, batch_size, logprobs):
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.generate import maybe_quantize_kv_cache
    from mlx_lm.models.cache import kv_head_dims, make_prompt_cache
    from mlx_lm.perplexity import _cache_logits

    a = cache_args
    make_cache = partial(make_prompt_cache, model, a["max_kv_size"])
    quantize = partial(
        maybe_quantize_kv_cache,
        quantized_kv_start=a["quantized_kv_start"],
        kv_group_size=a["kv_group_size"],
        kv_bits=a["kv_bits"],
        head_dims=kv_head_dims(model) if a["kv_bits"] else None,
        kv_rotate=a.get("kv_rotate", False),
    )
    out = []
    for s in range(0, data.shape[0], batch_size):
        batch = data[s : s + batch_size]
        logits = _cache_logits(model, batch[:, :-1], a["chunk_size"], make_cache, quantize)
        logits = logits.astype(mx.float32)
        losses = nn.losses.cross_entropy(logits, batch[:, 1:], reduction="none")
        mean = losses.mean(axis=1)
        sd = mx.sqrt(mx.var(losses, axis=1, ddof=1))
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True) if logprobs else None
        mx.eval(mean, sd, lp)
        rows = list(zip(mean.tolist(), sd.tolist()))
        out += [(*r, lp[i]) for i, r in enumerate(rows)] if logprobs else rows
    return out


def summarize(windows, n, ref=None):
    """
    ppl and its standard error over all tokens (as ``eval_ppl`` would give
    on the whole set), and, against ``ref`` (same windows), the % change
    with a paired standard error over windows.
    """
    W = len(windows)
    N = n * W
    means = [m for m, _ in windows]
    mean = sum(means) / W
    ss = sum((n - 1) * s * s for _, s in windows) + n * sum((m - mean) ** 2 for m in means)
    sd = math.sqrt(ss / (N - 1))
    ppl = math.exp(mean)
    row = {"ppl": ppl, "se": ppl * sd / math.sqrt(N), "nll": mean, "windows": W,
           "tokens": N}
    if ref is not None:
        d = [a[0] - b[0] for a, b in zip(windows, ref)]
        dm = sum(d) / W
        dse = math.sqrt(sum((x - dm) ** 2 for x in d) / (W - 1) / W) if W > 1 else None
        row["delta_pct"] = 100 * (math.exp(dm) - 1)
        row["delta_se_pct"] = 100 * math.exp(dm) * dse if dse is not None else None
    return row


# Time of a quantized pass relative to a float one (measured ~1.0-1.2x now
# that chunks attend through the float kernel; on the high side, so a loaded
# machine does not overrun the budget).
QUANT_COST = 1.25


def choose_windows(p, sec_per_token, budget):
    """
    The most windows (up to the plan's) whose passes fit ``budget`` seconds,
    at least 3 of ``seq`` tokens and 1 of ``bseq`` tokens.
    """
    n_quant = len(BITS) * len(p["groups"]) * len(ROTATE) + len(MX_QUANTIZE)
    n_bq = sum(b is not None for b, _ in BOUNDED_BITS) * len(p["bsizes"])
    n_bf = 1 + len(p["bsizes"])

    def cost(w, wb):
        return sec_per_token * (
            w * (p["seq"] - 1) * (1 + QUANT_COST * n_quant)
            + wb * (p["bseq"] - 1) * (n_bf + QUANT_COST * n_bq))

    best = (min(3, p["windows"]), 1)
    for w in range(best[0], p["windows"] + 1):
        wb = max(1, min(p["bwindows"], round(w * p["bwindows"] / p["windows"])))
        if cost(w, wb) <= budget:
            best = (w, wb)
    return best, cost(*best)


def run(quick=False, budget=None):
    from mlx_lm.perplexity import load_data

    p = plan(quick)
    start = time.perf_counter()
    model, tokenizer = load_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "licenses.txt"
        path.write_text(license_text())
        data = load_data(tokenizer, str(path), p["windows"], p["seq"])
        bdata = load_data(tokenizer, str(path), p["bwindows"], p["bseq"])
    log(f"quality: {data.shape[0]} windows of {p['seq']}, "
        f"{bdata.shape[0]} windows of {p['bseq']} for bounded caches")

    def args(bits, group, max_kv=None, rotate=False, mx_quantize=False):
        return {"chunk_size": p["chunk"], "max_kv_size": max_kv, "kv_bits": bits,
                "kv_group_size": group, "quantized_kv_start": 0, "kv_rotate": rotate,
                "mx_quantize": mx_quantize}

    rows = []
    stats = {}

    def measure(section, bits, group, max_kv, d, ref, before=(), rotate=False,
                mx_quantize=False):
        t = time.perf_counter()
        w = list(before) + window_stats(
            model, d, args(bits, group, max_kv, rotate, mx_quantize))
        dt = time.perf_counter() - t
        row = summarize(w, d.shape[1] - 1, ref)
        name = label(bits, group) + (" rotated" if rotate else "")
        stats[(section, name, max_kv)] = w
        row.update(section=section, setting=name, mx_quantize=mx_quantize,
                   bits=list(bits) if bits else None, group=group if bits else None,
                   rotate=rotate,
                   max_kv_size=max_kv, seq=d.shape[1], seconds=round(dt, 1),
                   window_nll=[m for m, _ in w])
        if ref is not None:
            row["delta_vs"] = "float" if max_kv is None else "float, same max_kv_size"
        rows.append(row)
        change = (f" {row['delta_pct']:+.2f}% (±{row['delta_se_pct'] or 0:.2f})"
                 if ref else "")
        log(f"  {section} {row['setting']}"
            f"{'' if max_kv is None else f' max_kv_size={max_kv}'}: "
            f"ppl {row['ppl']:.3f} ± {row['se']:.3f}{change} [{dt:.0f}s]")
        return w

    t = time.perf_counter()
    if budget and not quick:
        # Time one float window, then take as many windows as the budget allows.
        t = time.perf_counter()
        first = window_stats(model, data[:1], args(None, 64))
        spt = (time.perf_counter() - t) / (p["seq"] - 1)
        (w, wb), est = choose_windows(p, spt, budget - (time.perf_counter() - t))
        if (w, wb) != (p["windows"], p["bwindows"]):
            log(f"  budget {budget / 60:.1f} min at {1 / spt:.0f} tok/s: {w} windows of "
                f"{p['seq']} (planned {p['windows']}), {wb} of {p['bseq']} "
                f"(planned {p['bwindows']}), est. {est / 60:.1f} min")
        p.update(planned_windows=p["windows"], planned_bwindows=p["bwindows"],
                 windows=w, bwindows=wb, float_tok_per_s=1 / spt,
                 budget_seconds=round(budget))
        data, extra, bdata = data[:w], data[w:], bdata[:wb]
        ref = measure("unbounded", None, 64, None, data[1:], None, first)
    else:
        extra = data[data.shape[0]:]
        ref = measure("unbounded", None, 64, None, data, None)
    # Group 64 first (the default and the DESIGN.md comparison), then 32.
    for group in p["groups"]:
        for bits in BITS:
            for rotate in ROTATE:
                measure("unbounded", bits, group, None, data, ref, rotate=rotate)
    # The same settings with mx.quantize's grids (upstream's quantization)
    for bits, rotate in MX_QUANTIZE:
        measure("mx.quantize", bits, 64, None, data, ref, rotate=rotate, mx_quantize=True)
    if budget and not quick:
        # Re-fit the bounded windows to what is left of the budget, from the
        # speed the unbounded passes actually had (the load may have changed).
        spent = time.perf_counter() - t
        n_unb = 1 + len(BITS) * len(p["groups"]) * len(ROTATE) + len(MX_QUANTIZE)
        per_pass_token = spent / (n_unb * data.shape[0] * (p["seq"] - 1))
        n_bounded = 1 + len(BOUNDED_BITS) * len(p["bsizes"])
        fit = int((budget - spent) / (per_pass_token * n_bounded * (p["bseq"] - 1)))
        wb = max(1, min(bdata.shape[0], fit))
        if wb < bdata.shape[0]:
            log(f"  {(budget - spent) / 60:.1f} min left: {wb} bounded windows of {p['bseq']}")
            bdata = bdata[:wb]
            p["bwindows"] = wb
    bref = measure("bounded", None, 64, None, bdata, None)
    for max_kv in p["bsizes"]:
        fref = None
        for bits, rotate in BOUNDED_BITS:
            w = measure("bounded", bits, 64, max_kv, bdata, fref, rotate=rotate)
            if bits is None:
                fref = w
        # The bounded float row: vs the unbounded float cache, same windows.
        fb = summarize(fref, bdata.shape[1] - 1, bref)
        frow = rows[-len(BOUNDED_BITS)]
        frow.update(delta_pct=fb["delta_pct"], delta_se_pct=fb["delta_se_pct"],
                    delta_vs="float unbounded")
    targets = measure_targets(model, extra, args, stats, p,
                              budget and budget - (time.perf_counter() - start))
    return {"plan": p, "rows": rows, "targets": targets}


def measure_targets(model, extra, args, stats, p, left):
    """
    The rotation targets' settings on the table's windows plus as many of
    the remaining planned windows as ``left`` seconds allow (all settings on
    a window, then the next): more windows, smaller paired errors.
    """
    windows = {name: list(stats[("unbounded", name, None)]) for name, _, _ in TARGETS}
    t0 = time.perf_counter()
    per_window = None
    for i in range(extra.shape[0]):
        if left is None or (per_window and time.perf_counter() - t0 + per_window > left):
            break
        t = time.perf_counter()
        for name, bits, rotate in TARGETS:
            windows[name] += window_stats(model, extra[i : i + 1], args(bits, 64, None, rotate))
        per_window = time.perf_counter() - t
    ref = windows["float"]
    out = []
    for name, w in windows.items():
        row = summarize(w, p["seq"] - 1, None if name == "float" else ref)
        row.update(setting=name, window_nll=[m for m, _ in w])
        out.append(row)
        log(f"  targets {name} ({row['windows']} windows): ppl {row['ppl']:.3f}"
            + (f" {row['delta_pct']:+.2f}% (±{row['delta_se_pct'] or 0:.2f})"
               if name != "float" else ""))
    return out
