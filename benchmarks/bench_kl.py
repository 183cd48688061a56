"""
Least-squares grids (kv_quantize) vs mx.quantize's: the KL divergence of the
next-token distributions from the float cache's, per token, on every window
of the license texts. Perplexity alone cannot tell them apart: a quantized
window's loss moves by more than their difference with float rounding alone.

Not part of `make bench` (about 12 minutes): `python benchmarks/run.py kl`.
"""

import tempfile
import time
from pathlib import Path

from bench_common import label, license_text, load_model, log
from bench_quality import MX_QUANTIZE, summarize, window_stats


def plan(quick):
    if quick:
        return dict(seq=128, windows=3, chunk=64)
    return dict(seq=512, windows=26, chunk=64)


def run(quick=False, budget=None):
    import mlx.core as mx
    import mlx_lm.models.cache as cache_module
    from mlx_lm.perplexity import load_data

    p = plan(quick)
    model, tokenizer = load_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "licenses.txt"
        path.write_text(license_text())
        data = load_data(tokenizer, str(path), p["windows"], p["seq"])
    p["windows"] = data.shape[0]
    settings = [(bits, rotate, steps) for bits, rotate in MX_QUANTIZE for steps in (0, None)]
    stats = {s: [] for s in settings}
    kl = {s: [] for s in settings}
    ref = []
    t = time.perf_counter()
    def args(bits, rotate=False, mx_quantize=False):
        return {"chunk_size": p["chunk"], "max_kv_size": None, "kv_bits": bits,
                "kv_group_size": 64, "quantized_kv_start": 0, "kv_rotate": rotate,
                "mx_quantize": mx_quantize}

    # Window by window: the float log-probabilities of one window at a time
    for i in range(data.shape[0]):
        window = data[i : i + 1]
        (m, sd, ref_lp), = window_stats(model, window, args(None), logprobs=True)
        ref.append((m, sd))
        for bits, rotate, steps in settings:
            (m, sd, lp), = window_stats(
                model, window, args(bits, rotate, steps == 0), logprobs=True)
            stats[(bits, rotate, steps)].append((m, sd))
            window_kl = mx.sum(mx.exp(ref_lp) * (ref_lp - lp), axis=-1).mean()
            kl[(bits, rotate, steps)].append(window_kl.item())
        log(f"  kl: window {i + 1}/{data.shape[0]} [{time.perf_counter() - t:.0f}s]")
    rows = []
    for (bits, rotate, steps), w in stats.items():
        row = summarize(w, p["seq"] - 1, ref)
        row.update(setting=label(bits) + (" rotated" if rotate else ""), bits=list(bits),
                   rotate=rotate,
                   quantizer="mx.quantize" if steps == 0 else "least squares",
                   kl=sum(kl[(bits, rotate, steps)]) / len(w),
                   window_kl=kl[(bits, rotate, steps)])
        rows.append(row)
        log(f"  {row['setting']} {row['quantizer']}: KL {row['kl'] * 1e3:.2f}e-3, "
            f"ppl {row['delta_pct']:+.2f}% (±{row['delta_se_pct'] or 0:.2f})")
    p["refine_steps"] = cache_module.KV_REFINE_STEPS
    return {"plan": p, "rows": rows, "seconds": round(time.perf_counter() - t, 1)}
