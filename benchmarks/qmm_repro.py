"""
Standalone repro for docs/mlx-issue-quantized-matmul.md: mx.quantized_matmul
vs mx.matmul on the shapes of KV cache attention (CPU).

    tools/run python benchmarks/qmm_repro.py
"""

import time
import mlx.core as mx

def timeit(f, n=20):
    for _ in range(3):
        f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2] * 1e3

# One layer of a small GQA model: 3 KV heads x 3 query heads each, head dim 64
H, R, D = 3, 3, 64
for N in (1024, 4096, 16384):
    k = mx.random.normal((1, H, 1, N, D))
    v = mx.random.normal((1, H, 1, N, D))
    for bits in (8, 4):
        qk = mx.quantize(k, group_size=64, bits=bits)
        qv = mx.quantize(v, group_size=64, bits=bits)
        mx.eval(qk, qv)
        for L in (1, 64):
            q = mx.random.normal((1, H, R, L, D))
            p = mx.softmax(mx.random.normal((1, H, R, L, N)), axis=-1)
            mx.eval(q, p)
            s_q = timeit(lambda: mx.eval(mx.quantized_matmul(q, *qk, transpose=True, group_size=64, bits=bits)))
            s_f = timeit(lambda: mx.eval(q @ k.swapaxes(-1, -2)))
            o_q = timeit(lambda: mx.eval(mx.quantized_matmul(p, *qv, transpose=False, group_size=64, bits=bits)))
            o_f = timeit(lambda: mx.eval(p @ v))
            print(f"N={N:5d} bits={bits} rows={L:2d}: q@K^T {s_q:7.3f} ms quantized vs {s_f:7.3f} float ({s_q/s_f:4.1f}x); "
                  f"P@V {o_q:7.3f} vs {o_f:7.3f} ({o_q/o_f:4.1f}x)", flush=True)
