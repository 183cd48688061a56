"""
docs/benchmarks.md from the JSON files of the parts (bench_common.result_path),
and its plots (matplotlib, optional). Numbers only come from those files.
"""

from pathlib import Path

from bench_common import MODELS, load_json, log, result_path

TITLES = {"smollm2": "SmolLM2-135M-Instruct", "gemma3": "Gemma 3 270M"}
PART_NAMES = ("quality", "memory", "speed", "server", "default")


# ---------------------------------------------------------------- format


def pct(x, se=None, sign=True):
    if x is None:
        return "-"
    s = f"{x:+.2f}%" if sign else f"{x:.2f}%"
    return s + (f" ± {se:.2f}" if se is not None else "")


def ratio(x, q=None):
    if x is None:
        return "-"
    s = f"{x:.2f}x"
    return s + (f" ({q[0]:.2f}–{q[1]:.2f})" if q else "")


def mib(b):
    return "-" if b is None else f"{b / 2**20:,.1f} MiB"


def k(n):
    return f"{n // 1024}K" if n % 1024 == 0 else f"{n:,}"


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def save_plot(plt, fig, out, name):
    """Write ``fig`` to <out>/benchmarks/<name>; its path from the page."""
    path = out / "benchmarks" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"benchmarks/{name}"


def pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------- data


def load_all(out):
    data = {}
    for part in PART_NAMES:
        for key in MODELS:
            r = load_json(result_path(out, part, key))
            if r is not None:
                data[(part, key)] = r
    return data


def rows_by_name(q):
    return {r["setting"]: r for r in q["rows"]} if q else {}


def bytes_fraction(row, context):
    b = row.get("bytes", {})
    return b.get(f"vs_float16_{context}")


# ---------------------------------------------------------------- summary


def frontier(q):
    """The unbounded quantized settings no other one beats in both bytes
    (4K, float16) and perplexity change, fewest bytes last."""
    ctx = q["plan"].get("contexts", [4096])[-1]
    rows = [r for r in q["rows"] if r["setting"] != "float" and not r["max_kv_size"]
            and not r["extra"]]
    out = []
    for r in rows:
        fb = bytes_fraction(r, ctx)
        dominated = any(
            bytes_fraction(o, ctx) <= fb and o["ppl_change_pct"] < r["ppl_change_pct"]
            and o is not r for o in rows)
        if not dominated:
            out.append(r)
    return sorted(out, key=lambda r: -bytes_fraction(r, ctx))


def pick(q, limit):
    """The unbounded quantized setting with the fewest bytes whose ppl change
    plus two standard errors stays under ``limit`` percent."""
    ctx = q["plan"].get("contexts", [4096])[-1]
    ok = [r for r in q["rows"] if r["setting"] != "float" and not r["max_kv_size"]
          and r["ppl_change_pct"] + 2 * (r["ppl_change_se_pct"] or 0) <= limit]
    return min(ok, key=lambda r: bytes_fraction(r, ctx), default=None)


def summary(data, key):
    """The 'which setting' bullets of one model."""
    q = data.get(("quality", key))
    if not q:
        return ["Not measured yet (run the quality part)."]
    rows = rows_by_name(q)
    ctx = q["plan"].get("contexts", [4096])[-1]
    sp = data.get(("speed", key))
    lines = []

    def cost(r):
        return (f"{pct(r['ppl_change_pct'], r['ppl_change_se_pct'])} ppl, "
                f"{bytes_fraction(r, ctx):.3f} of a float16 cache")

    def speed_of(name, n):
        if not sp or str(n) not in sp["decode"] or name not in sp["decode"][str(n)]:
            return None
        return sp["decode"][str(n)][name]["ratio"]

    safe, tight = pick(q, 0.5), pick(q, 10)
    if safe:
        lines.append(f"**Near-lossless** (ppl change + 2 SE ≤ 0.5%): **{safe['setting']}**, "
                     f"{cost(safe)}.")
    else:
        lines.append("No quantized setting stays within 0.5% (ppl change + 2 SE).")
    if tight and tight is not safe:
        lines.append(f"**Fewest bytes within 10%**: {tight['setting']}, {cost(tight)}.")
    pairs = [(n, f"{n} hadamard") for n in ("K8V8", "K8V4", "K4V4")]
    had = [f"{a} {pct(rows[a]['ppl_change_pct'])} → {pct(rows[b]['ppl_change_pct'])}"
           for a, b in pairs if a in rows and b in rows]
    if had:
        lines.append("Hadamard (without → with): " + "; ".join(had) + ".")
    front = frontier(q)
    if front:
        lines.append("Trade-off (no setting has both fewer bytes and a smaller change): "
                     + "; ".join(f"{r['setting']} {bytes_fraction(r, ctx):.3f} / "
                                 f"{pct(r['ppl_change_pct'])}" for r in front) + ".")
    bounded = [r for r in q["rows"] if r["max_kv_size"]]
    if bounded:
        parts = []
        for r in bounded:
            s = f"{r['setting']} {pct(r['ppl_change_pct'], r['ppl_change_se_pct'])} vs float"
            if r.get("ppl_change_bound_pct") is not None:
                s += (f" ({pct(r['ppl_change_bound_pct'], r['ppl_change_bound_se_pct'])} "
                      f"vs {r['vs_bounded_float']})")
            parts.append(s)
        lines.append(f"Bounded ({q['plan']['length']:,}-token windows): "
                     + "; ".join(parts) + ".")
    if sp:
        n = max(int(c) for c in sp["decode"])
        sps = [f"{name} {ratio(speed_of(name, n))}" for name in sp["settings"]
               if name != "float" and speed_of(name, n) is not None]
        lines.append(f"Decode speed at {k(n)} tokens vs float (CPU): " + "; ".join(sps) + ".")
    return lines


# Memory classes of the goals: (name, largest fraction of a float16 cache at
# the longest context, goal in percent of ppl change per model)
CLASSES = (
    ("4-bit class (about 0.30 of float16)", 0.33, {"smollm2": 3.0, "gemma3": 5.0}),
    ("K8V4 class (about 0.41 of float16)", 0.42, {"smollm2": 0.2, "gemma3": 0.2}),
)


def goals(data):
    """Per memory class and model: the best unbounded setting within the
    class's bytes, and whether it meets the goal."""
    rows = []
    for name, limit, goal in CLASSES:
        for key in MODELS:
            q = data.get(("quality", key))
            if not q:
                continue
            ctx = q["plan"].get("contexts", [4096])[-1]
            ok = [r for r in q["rows"] if r["kv_bits"] and not r["max_kv_size"]
                  and bytes_fraction(r, ctx) <= limit]
            if not ok:
                continue
            best = min(ok, key=lambda r: r["ppl_change_pct"])
            met = best["ppl_change_pct"] <= goal[key]
            rows.append([name, TITLES[key], best["setting"],
                         f"{bytes_fraction(best, ctx):.3f}",
                         pct(best["ppl_change_pct"], best["ppl_change_se_pct"]),
                         f"≤ {pct(goal[key])}", "met" if met else "**missed**"])
    if not rows:
        return []
    return ["## Goals", "",
            "The best measured setting of each memory class (bytes at the longest "
            "context of the quality tables, vs a float16 cache; unbounded caches), and the "
            "goal of its class:", ""] + table(
        ["class", "model", "best setting", "of float16", "ppl vs float", "goal", ""],
        rows) + [""]


def differences(data):
    """Where the advice differs between the two models."""
    qs = {key: data.get(("quality", key)) for key in MODELS}
    if not all(qs.values()):
        return []
    lines = []
    picks = {key: pick(q, 0.5) for key, q in qs.items()}
    names = {key: (p["setting"] if p else "none") for key, p in picks.items()}
    if len(set(names.values())) > 1:
        lines.append("Near-lossless pick differs: " + "; ".join(
            f"{TITLES[k]} {n}" for k, n in names.items()) + ".")
    else:
        lines.append(f"Near-lossless pick is the same on both: {names['smollm2']}.")
    for name in ("K4V4", "K4V4 hadamard", "K8V4", "K8V4 hadamard"):
        vals = {key: rows_by_name(q).get(name) for key, q in qs.items()}
        if all(vals.values()):
            lines.append(f"{name}: " + "; ".join(
                f"{TITLES[key]} {pct(v['ppl_change_pct'], v['ppl_change_se_pct'])}"
                for key, v in vals.items()) + ".")
    bounded = {key: [r for r in q["rows"] if r["max_kv_size"] and r["kv_bits"] is None]
               for key, q in qs.items()}
    if all(bounded.values()):
        bound = bounded["gemma3"][0]["max_kv_size"]
        lines.append("Bounding the cache: " + "; ".join(
            f"{TITLES[key]} {b[0]['setting']} {pct(b[0]['ppl_change_pct'], b[0]['ppl_change_se_pct'])}"
            for key, b in bounded.items())
            + " vs the unbounded float cache ("
            + ("Gemma's sliding layers hold 512 positions anyway: the bound only shortens its "
               "3 global layers" if bound >= 512 else "the bound shortens every layer of both")
            + ").")
    return lines


# ---------------------------------------------------------------- sections


def runs_section(data):
    lines = ["## Machine and runs", ""]
    metas = [r["meta"] for r in data.values() if "meta" in r]
    if not metas:
        return lines + ["Nothing measured yet.", ""]
    m = metas[0]
    lines += [
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}; "
        f"OpenBLAS {'preloaded' if m['openblas'] else 'not loaded'} (tools/run); shared "
        "with other jobs (see the load averages).",
        f"- mlx {m['mlx']}, Python {m['python']}; package measured: mlx-lm {m['mlx_lm']} "
        f"(mlx-lm-kvq) from `{m['mlx_lm_path']}`"
        + (f", commit {m['mlx_lm_commit']}" if m.get("mlx_lm_commit") else "") + ".",
        "",
    ]
    head = ["part", "model", "started", "wall time", "1-min load at start / end",
            "commit", "command"]
    body = []
    total = 0
    for (part, key), r in sorted(data.items(), key=lambda x: x[1].get("meta", {}).get("started", "")):
        me = r.get("meta")
        if not me:
            continue
        total += me["wall_seconds"]
        la, lb = me.get("load_avg_start"), me.get("load_avg_end")
        body.append([part, TITLES[key], me["started"], f"{me['wall_seconds'] / 60:.1f} min",
                     f"{la[0]:.1f} / {lb[0]:.1f}" if la and lb else "-",
                     me.get("mlx_lm_commit") or "-",
                     f"`{me['command']}`" + (" (quick)" if me["quick"] else "")])
    lines += table(head, body)
    lines += ["", f"Total wall time of the parts: {total / 60:.1f} min."]
    commits = {r["meta"].get("mlx_lm_commit") for r in data.values() if "meta" in r}
    if len(commits) > 1:
        lines += ["", "**Warning**: the parts measured different commits of the package: "
                  + ", ".join(sorted(str(c) for c in commits)) + "."]
    if any(r["meta"]["quick"] for r in data.values() if "meta" in r):
        lines += ["", "**Quick run** (`--quick`, `BENCH_QUICK=1`): minimal sizes to test the "
                  "harness; the numbers mean little."]
    lines += [
        "",
        "Speeds are ratios to the float cache (or to pristine mlx-lm 0.32.2) measured in the "
        "same part, the settings taking turns step by step or round by round so that all see "
        "the same load; absolute tok/s depend on the machine's load and are indicative only.",
        "",
    ]
    return lines


def quality_section(data, key, out):
    q = data.get(("quality", key))
    lines = [f"### {TITLES[key]}", ""]
    if not q:
        return lines + ["Not measured yet.", ""]
    p = q["plan"]
    ctx = p.get("contexts", [2048, 4096])
    lines += [
        f"{q['layers']}. {p['windows']} windows of {p['length']:,} tokens "
        f"({'BOS, then ' if p.get('bos') else ''}consecutive text of "
        f"{', '.join(p['texts'])} from /usr/share/common-licenses, joined by blank lines), "
        f"{p['windows'] * (p['length'] - 1):,} predictions per setting; each window fed "
        f"through the model's own cache in chunks of {p['chunk']} then its last token "
        "(generate_step's schedule), quantized from the first token.",
        "",
    ]
    head = ["setting", "ppl", "ppl vs float", "KL from float", "top-1 = float",
            f"bytes vs float16, {k(ctx[0])}", f"{k(ctx[-1])}"]
    body = []
    for r in q["rows"]:
        body.append([
            r["setting"],
            f"{r['ppl']:.3f}",
            "reference" if r["setting"] == "float"
            else pct(r["ppl_change_pct"], r["ppl_change_se_pct"]),
            "-" if r.get("kl") is None else f"{r['kl']:.4f} ± {r['kl_se'] or 0:.4f}",
            "-" if r.get("top1") is None else f"{100 * r['top1']:.2f}%",
            f"{bytes_fraction(r, ctx[0]):.3f}" if bytes_fraction(r, ctx[0]) else "-",
            f"{bytes_fraction(r, ctx[-1]):.3f}" if bytes_fraction(r, ctx[-1]) else "-",
        ])
    lines += table(head, body)
    bounded = [r for r in q["rows"] if r.get("vs_bounded_float")]
    if bounded:
        lines += ["", "Bounded quantized caches against the float cache with the same bound "
                  "(what quantizing adds to bounding):", ""]
        lines += table(["setting", "vs", "ppl change", "KL", "top-1 ="], [
            [r["setting"], r["vs_bounded_float"],
             pct(r["ppl_change_bound_pct"], r["ppl_change_bound_se_pct"]),
             f"{r['kl_bound']:.4f} ± {r['kl_bound_se'] or 0:.4f}",
             f"{100 * r['top1_bound']:.2f}%"] for r in bounded])
    mism = q.get("bytes_mismatches") or []
    lines += ["",
              "ppl vs float: the change of the perplexity, ± the paired standard error over "
              "windows (each window scored by both settings). KL: mean per prediction of "
              "KL(float ‖ setting) of the next-token distributions, ± its standard error over "
              "windows. top-1: predictions whose most likely token is the float cache's. Bytes: "
              "`nbytes` of the model's caches after a float16 prompt of that many tokens, vs "
              "the float16 float cache (see Memory). The planner's table: "
              f"`docs/benchmarks/kv_quality_{key}.json` "
              f"(`mlx_lm.kv_plan --kv-quality-table`).",
              ""]
    if mism:
        lines += [f"**Warning**: after {len(mism)} setting-windows the cache's `nbytes` differed "
                  "from the planner's `cache_nbytes`: "
                  + "; ".join(f"{m[0]} window {m[1]} {m[2]:,} vs {m[3]:,}" for m in mism[:5]),
                  ""]
    else:
        lines += ["After every window the caches' `nbytes` equalled the planner's "
                  "`cache_nbytes` for that schedule (settings it can model).", ""]
    return lines


def quality_plot(data, out):
    plt = pyplot()
    qs = [(key, data.get(("quality", key))) for key in MODELS]
    qs = [(key, q) for key, q in qs if q]
    if plt is None or not qs:
        return None
    fig, axes = plt.subplots(1, len(qs), figsize=(5.5 * len(qs), 4), squeeze=False)
    for ax, (key, q) in zip(axes[0], qs):
        ctx = q["plan"].get("contexts", [4096])[-1]
        for r in q["rows"]:
            if r["setting"] == "float" or r["max_kv_size"]:
                continue
            x, y = bytes_fraction(r, ctx), r["ppl_change_pct"]
            color = "C1" if r["hadamard"] else "C0"
            ax.errorbar([x], [y], yerr=[2 * (r["ppl_change_se_pct"] or 0)], fmt="o",
                        color=color, capsize=3)
            ax.annotate(r["setting"].replace(" hadamard", " H"), (x, y), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel(f"bytes vs float16 cache ({k(ctx)} tokens)")
        ax.set_ylabel("ppl change vs float (%), ± 2 SE")
        ax.set_title(f"{TITLES[key]} (orange: Hadamard)", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_plot(plt, fig, out, "quality.png")


def memory_section(data, key):
    m = data.get(("memory", key))
    lines = [f"### {TITLES[key]}", ""]
    if not m:
        return lines + ["Not measured yet.", ""]
    ctx = m["plan"]["contexts"]
    lines += [
        f"{m['layers']}. Bytes (`nbytes`) of the model's own caches "
        "(`make_prompt_cache`, quantized from the first token) after a prompt of N tokens "
        f"fed as generate_step feeds it (chunks of 2048, then the last token), with random "
        "keys and values in the model's dtype and in float16; theory: positions held × "
        "bytes per position (N, or the layer's window once full; `dim` floats, or "
        "`dim × bits / 8` bytes plus a scale and a bias per group of 64 in the input's "
        "dtype); planner: `mlx_lm.kv_plan.cache_nbytes`.",
        "",
    ]
    head = ["setting"]
    for t in ctx:
        head += [f"{k(t)}: measured", "theory", "planner", "float16 measured", "vs float16"]
    body, bad = [], []
    for name in m["settings"]:
        r = m["bytes"][name]
        row = [name]
        for t in ctx:
            meas, th, pl = r[f"model_{t}"], r[f"model_{t}_theory"], r[f"planner_{t}"]
            f16, f16t = r[f"float16_{t}"], r[f"float16_{t}_theory"]
            for label, a, b in (("theory", meas, th), ("planner", meas, pl),
                                ("float16 theory", f16, f16t)):
                if b is not None and a != b:
                    bad.append(f"{name} at {t}: measured {a:,} vs {label} {b:,}")
            row += [f"{meas:,}", "=" if th == meas else ("n/a" if th is None else f"{th:,}"),
                    "=" if pl == meas else ("n/a" if pl is None else f"{pl:,}"),
                    f"{f16:,}", f"{r[f'vs_float16_{t}']:.3f}"]
        body.append(row)
    lines += table(head, body)
    lines += [""]
    lines += (["**Measured ≠ theory**: " + "; ".join(bad), ""] if bad else
              ["Every measured size equals theory and the planner (= in the table).", ""])

    g = m["generation"]
    pts = g["points"]
    wrap = g.get("after_wrap")
    bound = m["plan"]["bound"]
    lines += [
        f"**A long bounded generation**: {g['generated']:,} greedy tokens after a "
        f"{g['prompt_tokens']}-token prompt through {g['setting']} "
        f"({g['tok_per_s']:.1f} tok/s on the shared machine). Cache bytes after the wrap "
        f"(past {bound} positions): "
        + (f"{wrap['min']:,} – {wrap['max']:,} B" if wrap else "-")
        + (" (flat)" if wrap and wrap["min"] == wrap["max"] else " (**not flat**)")
        + f"; the planner predicted every point {'exactly' if not g['planner_mismatches'] else 'wrongly at ' + str(len(g['planner_mismatches'])) + ' points'}. "
        f"At the end: {g['describe']}.",
        "",
    ]
    step = max(1, len(pts) // 8)
    sel = pts[::step] + ([pts[-1]] if pts[-1] not in pts[::step] else [])
    lines += table(
        ["tokens in the cache's history", "cache bytes", "planner", "float unbounded (planner)",
         "MLX active memory"],
        [[f"{p['tokens']:,}", f"{p['nbytes']:,}",
          "=" if p["planner"] == p["nbytes"] else f"{p['planner']}",
          f"{p['float_unbounded_planner']:,}", mib(p["active_memory"])] for p in sel])
    lines += [""]
    return lines


def memory_plot(data, out):
    plt = pyplot()
    ms = [(key, data.get(("memory", key))) for key in MODELS]
    ms = [(key, m) for key, m in ms if m]
    if plt is None or not ms:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (key, m) in enumerate(ms):
        pts = m["generation"]["points"]
        x = [p["tokens"] for p in pts]
        ax.plot(x, [p["nbytes"] / 2**20 for p in pts], color=f"C{i}",
                label=f"{TITLES[key]}: {m['generation']['setting']}")
        ax.plot(x, [p["float_unbounded_planner"] / 2**20 for p in pts], color=f"C{i}",
                ls=":", label=f"{TITLES[key]}: float unbounded (planner)")
    ax.set_xlabel("tokens")
    ax.set_ylabel("KV cache MiB")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_plot(plt, fig, out, "memory.png")


def server_memory_section(data, key):
    s = data.get(("server", key))
    if not s:
        return []
    b = s["bounded"]
    res = b["result"]
    m = data.get(("memory", key))
    grow = ""
    if m:
        # What an unbounded float cache adds per token (theory = measured above)
        by = m["bytes"]["float"]
        t0, t1 = m["plan"]["contexts"][:2]
        per_token = (by[f"model_{t1}"] - by[f"model_{t0}"]) / (t1 - t0)
        tokens = b["requests"] * (b["max_tokens"] + max(res["prompt_tokens"]))
        grow = (f" For scale, unbounded float caches would hold up to "
                f"{mib(per_token * tokens)} at the end of these requests "
                "(full-attention layers' bytes per token from the table above).")
    rss = b["rss_max_by"]
    verdict = ""
    if m and rss.get("50%") and rss.get("100%"):
        half = b["requests"] * b["max_tokens"] / 2 * per_token
        verdict = (f" In the second half of the run the RSS grew by "
                   f"{mib(rss['100%'] - rss['50%'])}; unbounded float caches would have "
                   f"grown by about {mib(half)} in it.")
    lines = [
        f"**{b['requests']} concurrent server requests** ({TITLES[key]}, `mlx_lm server "
        f"{' '.join(b['flags'])}`, {b['max_tokens']:,} tokens each after prompts of "
        f"{min(res['prompt_tokens'])}–{max(res['prompt_tokens'])} tokens): "
        f"{b['completed']}/{b['requests']} completed with all their tokens in "
        f"{res['seconds']:.0f} s ({res['tok_per_s']:.1f} tok/s); server "
        f"{'still up' if b['server_alive'] else '**gone**'}. Process RSS, idle after a "
        f"warm-up request: {mib(b['rss_idle'])}; the largest sample by 25/50/75/100% of the "
        "run: " + " / ".join(mib(v) for v in rss.values()) + "." + verdict + grow,
        "",
    ]
    return lines


def speed_section(data, key):
    sp = data.get(("speed", key))
    lines = [f"### {TITLES[key]}", ""]
    if not sp:
        return lines + ["Not measured yet.", ""]
    p = sp["plan"]
    ctxs = [c for c in sp["decode"]]
    pres = [c for c in sp["prefill"]]
    head = ["setting"] + [f"decode at {k(int(c))}" for c in ctxs] + \
           [f"prefill {k(int(c))}" for c in pres]
    body = []
    for name in sp["settings"]:
        row = [name]
        for c in ctxs:
            d = sp["decode"][c][name]
            row.append(f"{d['tok_per_s']:.1f} tok/s" if name == "float"
                       else ratio(d["ratio"], d["quartiles"]))
        for c in pres:
            d = sp["prefill"][c][name]
            row.append(f"{d['tok_per_s']:.0f} tok/s" if name == "float" else ratio(d["ratio"]))
        body.append(row)
    lines += table(head, body)
    lines += [
        "",
        f"Decode: caches filled as a prompt of N tokens fills them (random keys and values), "
        f"then {p['sweeps']} timed steps per setting after {p['warmup']} warm-up, the settings "
        "taking turns each step; ratio to float = median of the per-sweep ratios "
        f"(quartiles in brackets). Prefill: the license text as a prompt through "
        f"generate_step's schedule (chunks of 2048), to the first token, {p['rounds']} "
        "rounds with the order reversed each round; median ratio.",
        "",
    ]
    s = data.get(("server", key))
    if s:
        tp = s["throughput"]
        r = tp["ratio"]
        n = len(tp["runs"]["float"])
        mt = s["plan"]["max_tokens"]
        lines += [
            f"**Server, 8 concurrent streams** ({mt} tokens each, {n} rounds, the servers "
            f"taking turns): float {tp['tok_per_s']['float']:.1f} tok/s, K8V4 hadamard "
            f"(`{' '.join(tp['flags']['K8V4 hadamard'])}`) "
            f"{tp['tok_per_s']['K8V4 hadamard']:.1f} tok/s: {ratio(r['median'])} "
            f"(per round {r['min']:.2f}–{r['max']:.2f}).",
            "",
        ]
    return lines


def default_section(data):
    d = data.get(("default", "smollm2"))
    lines = ["## The default path: fork vs pristine mlx-lm 0.32.2", ""]
    if not d:
        return lines + ["Not measured yet.", ""]
    p = d["plan"]
    g, s = d["generation"], d["server"]

    def line(name, r):
        ok = r["median"] >= 0.99
        within = not ok and r["quartiles"] and r["quartiles"][1] >= 1.0
        verdict = ("meets 0.99x" if ok else
                   "below 0.99x, within the noise (upper quartile ≥ 1)" if within
                   else "**below 0.99x**")
        return [name, ratio(r["median"]), f"{r['quartiles'][0]:.3f}–{r['quartiles'][1]:.3f}",
                f"{r['min']:.3f}–{r['max']:.3f}", r["n"], verdict]

    lines += [
        f"SmolLM2-135M-Instruct, no KV flags, the fork (`{d['fork']}`) against pristine "
        f"0.32.2 (`{d['pristine']}`) in the same run. Generation: two worker processes "
        f"loaded once, one per package, `stream_generate` (what `mlx_lm.generate` runs) on a "
        f"{p['prompt']:,}-token prompt then {p['max_tokens']} tokens (greedy, end of sequence "
        f"banned), the tok/s it reports, and the trial's CPU time (all threads; pristine's over the fork's, which other jobs disturb less than wall time but which misses time spent waiting); {p['pairs']} pairs of trials, the order swapped each "
        f"pair, ratio within each pair. Server: `mlx_lm server` of each, 8 concurrent "
        f"requests of {p['max_tokens_server']} tokens, {p['rounds']} rounds taking turns.",
        "",
    ]
    lines += table(["fork / pristine", "median", "quartiles", "min–max", "pairs", "target ≥ 0.99x"],
                   [line("generation: prompt tok/s", g["prompt_tps"]),
                    line("generation: decode tok/s", g["generation_tps"])]
                   + ([line("generation: whole trial, by CPU time", g["cpu_speed"])]
                      if g.get("cpu_speed") else [])
                   + [line("server: 8 streams tok/s", s["ratio"])])
    tf, tp = g["trials"]["fork"], g["trials"]["pristine"]
    from statistics import median

    lines += ["",
              f"Absolute (medians): prompt {median(t['prompt_tps'] for t in tf):.0f} vs "
              f"{median(t['prompt_tps'] for t in tp):.0f} tok/s, decode "
              f"{median(t['generation_tps'] for t in tf):.1f} vs "
              f"{median(t['generation_tps'] for t in tp):.1f} tok/s, server "
              f"{median(r['tok_per_s'] for r in s['runs']['fork']):.1f} vs "
              f"{median(r['tok_per_s'] for r in s['runs']['pristine']):.1f} tok/s "
              "(fork vs pristine).", ""]
    if g.get("short_trials"):
        lines += [f"**Warning**: {g['short_trials']} trials generated fewer tokens than asked.", ""]
    return lines


# ---------------------------------------------------------------- page


def write(out):
    out = Path(out)
    data = load_all(out)
    lines = [
        "# mlx-lm-kvq benchmarks",
        "",
        "Quantized and bounded KV caches on two trained models, on CPU: "
        "SmolLM2-135M-Instruct (float32, full attention) and Gemma 3 270M (float32, a "
        "sliding window of 512 on 15 of its 18 layers). Generated by `make bench` "
        "(`benchmarks/run.py`) from the JSON files in `docs/benchmarks/`; every number "
        "here was measured by those scripts on the machine below, none is taken from "
        "elsewhere. Setting names are the planner's (`mlx_lm.kv_plan`): K*k*V*v = "
        "*k*-bit keys and *v*-bit values in groups of 64, `hadamard` = "
        "`--kv-hadamard` (on by default with `--kv-bits`), `window N` = `--max-kv-size N`.",
        "",
    ]
    lines += runs_section(data)
    lines += ["## Which setting", ""]
    for key in MODELS:
        lines += [f"**{TITLES[key]}**", ""] + [f"- {x}" for x in summary(data, key)] + [""]
    diff = differences(data)
    if diff:
        lines += ["**Where the two models differ**", ""] + [f"- {x}" for x in diff] + [""]
    lines += goals(data)

    lines += ["## Quality", ""]
    img = quality_plot(data, out)
    if img:
        lines += [f"![perplexity change vs bytes]({img})", ""]
    for key in MODELS:
        lines += quality_section(data, key, out)

    lines += ["## Memory", ""]
    img = memory_plot(data, out)
    if img:
        lines += [f"![cache bytes over a long generation]({img})", ""]
    for key in MODELS:
        lines += memory_section(data, key)
        lines += server_memory_section(data, key)

    lines += ["## Speed (vs the float cache, same run)", ""]
    for key in MODELS:
        lines += speed_section(data, key)
    lines += default_section(data)
    path = out / "benchmarks.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
    log(f"wrote {path}")
