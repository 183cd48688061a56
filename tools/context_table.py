"""
The context-per-node tables of docs/distributed.md, from the KV cache size
model of ``mlx_lm.kv_plan`` (no weights needed: the layouts are built from
each model's layers, KV heads and head dim).

    tools/run python tools/context_table.py
"""

import mlx.core as mx

from mlx_lm.kv_plan import KVPart, bytes_per_token, max_context

GiB = 2**30
# name, parameters, layers, KV heads, head dim
MODELS = [
    ("Llama 3.1 8B", 8.03e9, 32, 8, 128),
    ("Qwen3 32B", 32.8e9, 64, 8, 128),
    ("Llama 3.3 70B", 70.6e9, 80, 8, 128),
    ("Qwen3 235B-A22B", 235e9, 94, 4, 128),
]
# (key bits, value bits) or None, at group size 64
SETTINGS = [("float16", None), ("K8V4", (8, 4)), ("K4V4", (4, 4))]
NODES_GB = (64, 128)
NODES = (1, 2, 4)
USABLE = 0.75  # close to macOS's default GPU working set limit
WEIGHT_BITS = 4.5  # 4-bit weights with scales and biases


def layout(layers, heads, dim, n=1):
    """One node's share: KV heads split by tensor parallelism, else layers."""
    if heads % n == 0:
        heads //= n
    else:
        layers = -(-layers // n)
    return [(KVPart(heads, dim, dim, mx.float16),)] * layers


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def main():
    rows = []
    for name, _, layers, heads, dim in MODELS:
        full = layout(layers, heads, dim)
        rows.append(
            [f"{name} ({layers}, {heads}, {dim})"]
            + [f"{bytes_per_token(full, bits) / 2**10:.0f}" for _, bits in SETTINGS]
        )
    out = table(
        ["Model (layers, KV heads, head dim)"]
        + [f"KV KiB/token {s}" if s == "float16" else s for s, _ in SETTINGS],
        rows,
    )
    rows = []
    for name, params, layers, heads, dim in MODELS:
        weights = params * WEIGHT_BITS / 8
        row = [name, f"{weights / GiB:.1f} GiB"]
        for gb in NODES_GB:
            for n in NODES:
                budget = int(USABLE * gb * GiB - weights / n)
                if budget <= 0:
                    row.append("-")
                    continue
                node = layout(layers, heads, dim, n)
                counts = [
                    max_context(node, budget, kv_bits=bits, kv_group_size=64)
                    for _, bits in SETTINGS[:2]
                ]
                row.append(" / ".join(f"{c // 1000}" for c in counts))
        rows.append(row)
    out += [""] + table(
        ["Model", "weights (4-bit)"]
        + [f"{gb} GB, n={n}" for gb in NODES_GB for n in NODES],
        rows,
    )
    print("\n".join(out))


if __name__ == "__main__":
    main()
