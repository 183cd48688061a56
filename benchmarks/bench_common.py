"""Shared helpers of the benchmarks: environment, model, settings, JSON."""

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
QUICK_OUT = Path("/tmp/mlx-lm-kvq-bench-quick")
LICENSES = ("GPL-3", "Apache-2.0", "MPL-2.0")
LICENSE_DIR = Path("/usr/share/common-licenses")

# The default model's KV shape (SmolLM2-135M-Instruct): checked at load.
LAYERS, KV_HEADS, HEAD_DIM = 30, 3, 64


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def label(bits, group=64):
    """``float``, ``K8V4``, ``K8V4 g32`` for a (keys, values) bits pair."""
    if bits is None:
        return "float"
    k, v = bits
    return f"K{k}V{v}" + ("" if group == 64 else f" g{group}")


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def openblas_loaded():
    """True if OpenBLAS is mapped into this process (tools/run preloads it)."""
    try:
        return any("openblas" in line for line in open("/proc/self/maps"))
    except OSError:
        return "openblas" in os.environ.get("LD_PRELOAD", "")


def environment(argv=None):
    import mlx.core as mx
    import mlx_lm

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "openblas": openblas_loaded(),
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(
            shlex.quote(a) for a in ["python", "benchmarks/run.py"] + list(argv or sys.argv[1:])
        ),
        "load_avg_1min_at_start": load,
    }


def model_path():
    path = os.environ.get("MLX_LM_KVQ_DEFAULT_MODEL")
    if not path:
        sys.exit("MLX_LM_KVQ_DEFAULT_MODEL is not set: run through tools/run")
    return path


_MODEL = None


def load_model():
    """The default model and tokenizer (loaded once per process)."""
    global _MODEL
    if _MODEL is None:
        from mlx_lm import load

        try:  # "sequence longer than the maximum" when encoding whole texts
            import transformers

            transformers.logging.set_verbosity_error()
        except ImportError:
            pass
        t = time.perf_counter()
        model, tokenizer = load(model_path())
        args = model.args
        shape = (
            args.num_hidden_layers,
            args.num_key_value_heads,
            args.hidden_size // args.num_attention_heads,
        )
        if shape != (LAYERS, KV_HEADS, HEAD_DIM):
            log(f"warning: model KV shape {shape}, expected {(LAYERS, KV_HEADS, HEAD_DIM)}")
        log(f"loaded {model_path()} in {time.perf_counter() - t:.1f}s")
        _MODEL = (model, tokenizer)
    return _MODEL


def license_text():
    return "\n\n".join((LICENSE_DIR / n).read_text() for n in LICENSES)


def median(xs):
    return statistics.median(xs) if xs else None


def save_json(out_dir, name, data):
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    log(f"wrote {path}")


def load_json(out_dir, name):
    path = out_dir / f"{name}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """Save a plot of the page (PNG) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
