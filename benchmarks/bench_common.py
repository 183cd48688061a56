"""
Shared pieces of the benchmarks: the models, the table of KV cache settings,
the text, building and filling caches, statistics, the machine, JSON.

Everything goes through ``import mlx_lm``: whichever package is first on the
path (the exported fork in the repository, or a worktree given with
PYTHONPATH) is the one measured, and subprocesses (servers, workers) are
started with the same one first on their PYTHONPATH.
"""

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
QUICK_OUT = Path("/tmp/mlx-lm-kvq-bench-quick")
LICENSE_DIR = Path("/usr/share/common-licenses")
# One text of each license family (near-copies such as GFDL-1.2, LGPL-2 and
# GPL-1 left out, so that no two windows are almost the same text),
# joined by blank lines and cut into windows.
TEXTS = (
    "GPL-3", "GPL-2", "LGPL-2.1", "GFDL-1.3", "Apache-2.0",
    "MPL-2.0", "MPL-1.1", "Artistic", "CC0-1.0", "BSD",
)

# The two trained models: key -> (environment variable, description)
MODELS = {
    "smollm2": ("MLX_LM_KVQ_DEFAULT_MODEL", "full attention on all 30 layers"),
    "gemma3": ("MLX_LM_KVQ_GEMMA_MODEL", "sliding window of 512 on 15 of 18 layers"),
}

# Prompt chunk of generate_step (--prefill-step-size) where a part says so
PREFILL_STEP = 2048
# The bound of the bounded settings (--max-kv-size), and in quick runs
BOUND, QUICK_BOUND = 512, 128


# ---------------------------------------------------------------- settings


@dataclass
class Setting:
    """
    One KV cache setting. ``extra`` are more keyword arguments of
    ``maybe_quantize_kv_cache`` (e.g. ``{"kv_float_window": 64}``); a
    setting with ``extra`` needs a ``name``. ``speed``: also measured by the
    speed and server parts (which take more time per setting).
    """

    kv_bits: object = None  # None (float), N, or (keys, values)
    hadamard: bool = False
    max_kv_size: Optional[int] = None
    float_window: int = 0  # --kv-float-window
    extra: dict = field(default_factory=dict)
    name: Optional[str] = None
    group_size: int = 64
    speed: bool = False

    def __post_init__(self):
        if self.name is None:
            if self.extra:
                raise ValueError(f"a setting with {self.extra} needs a name")
            from mlx_lm.kv_plan import setting_name

            # As the planner names it (its --kv-quality-table keys)
            self.name = setting_name(
                self.kv_bits, self.hadamard, self.max_kv_size, self.float_window
            )

    @property
    def float(self):
        return self.kv_bits is None

    @property
    def bits(self):
        """(key bits, value bits), or None."""
        if self.kv_bits is None:
            return None
        b = self.kv_bits
        return tuple(b) if isinstance(b, (tuple, list)) else (b, b)

    def quantize(self, cache):
        """``maybe_quantize_kv_cache`` as generate_step calls it with
        ``--quantized-kv-start 0``: every layer from the first token on."""
        if self.kv_bits is None:
            return
        from mlx_lm.generate import maybe_quantize_kv_cache

        maybe_quantize_kv_cache(
            cache, 0, self.group_size, self.kv_bits, kv_hadamard=self.hadamard,
            kv_float_window=self.float_window, **self.extra,
        )

    def flags(self):
        """The command line flags of this setting (server, generate)."""
        out = []
        if self.kv_bits is not None:
            k, v = self.bits
            out += ["--kv-bits", f"{k},{v}" if k != v else str(k)]
            out += ["--kv-hadamard" if self.hadamard else "--no-kv-hadamard"]
            out += ["--quantized-kv-start", "0"]
            # Always given: the command line's default may differ
            out += ["--kv-float-window", str(self.float_window)]
            if self.group_size != 64:
                out += ["--kv-group-size", str(self.group_size)]
        if self.max_kv_size is not None:
            out += ["--max-kv-size", str(self.max_kv_size)]
        return out


# The settings every part measures. Add a row here to add a setting to the
# quality table, the planner's table and the memory table; with speed=True
# to the speed tables too.
def settings(quick=False):
    bound = QUICK_BOUND if quick else BOUND
    rows = [
        Setting(None, speed=True),
        Setting(8),
        Setting(8, True),
        Setting((8, 4)),
        Setting((8, 4), True, speed=True),
        Setting((6, 4), True),
        Setting((5, 4), True),
        Setting(4),
        Setting(4, True, speed=True),
        # A float window of the most recent positions (--kv-float-window)
        Setting((8, 4), True, float_window=32),
        Setting((8, 4), True, float_window=64, speed=True),
        Setting((6, 4), True, float_window=64),
        Setting(4, True, float_window=32),
        Setting(4, True, float_window=64, speed=True),
        Setting(4, True, float_window=128),
        Setting(None, max_kv_size=bound, speed=True),
        Setting((8, 4), True, max_kv_size=bound, speed=True),
        Setting(4, True, max_kv_size=bound, float_window=64, speed=True),
    ]
    names = [s.name for s in rows]
    assert len(set(names)) == len(names), f"duplicate setting names: {names}"
    return rows


def find(rows, name):
    for s in rows:
        if s.name == name:
            return s
    raise KeyError(name)


# ---------------------------------------------------------------- models


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def model_path(key):
    var = MODELS[key][0]
    path = os.environ.get(var)
    if not path:
        sys.exit(f"{var} is not set: run through tools/run")
    if not Path(path).is_dir():
        sys.exit(f"{var}={path} is not a directory: run `make models`")
    return path


def model_name(key):
    return Path(model_path(key)).name


_LOADED = {}


def load_model(key):
    """(model, tokenizer) of ``key``, loaded once per process."""
    if key not in _LOADED:
        from mlx_lm import load

        try:  # "sequence longer than the maximum" when encoding whole texts
            import transformers

            transformers.logging.set_verbosity_error()
        except ImportError:
            pass
        _LOADED.clear()  # one model at a time in memory
        t = time.perf_counter()
        _LOADED[key] = load(model_path(key))
        log(f"loaded {model_path(key)} in {time.perf_counter() - t:.1f}s")
    return _LOADED[key]


def kv_layers(model):
    """
    Per layer, what a one-token forward pass puts in the model's own cache:
    (kv heads, key dim, value dim, dtype, window or None). The window is the
    layer's own (a sliding window layer's ``max_size``), before any bound.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    model(mx.array([[1]]), cache=cache)
    mx.eval([c.state for c in cache])
    out = []
    for c in cache:
        if not isinstance(getattr(c, "keys", None), mx.array):
            raise ValueError(f"unexpected cache {type(c).__name__}")
        _, heads, _, kdim = c.keys.shape
        out.append((heads, kdim, c.values.shape[-1], c.keys.dtype,
                    getattr(c, "max_size", None)))
    return out


def describe_layers(layers):
    """'30 layers, 3 KV heads of dim 64 (float32), unbounded' and the like."""
    groups = {}
    for h, k, v, dtype, window in layers:
        key = (h, k, v, str(dtype).split(".")[-1], window)
        groups[key] = groups.get(key, 0) + 1
    parts = []
    for (h, k, v, dtype, window), n in groups.items():
        dims = f"dim {k}" if k == v else f"dims {k}/{v}"
        span = "full attention" if window is None else f"window {window}"
        parts.append(f"{n} layers {span}, {h} KV head{'s' if h > 1 else ''} of {dims} ({dtype})")
    return "; ".join(parts)


# ---------------------------------------------------------------- caches


def make_cache(model, s):
    """The model's own cache for setting ``s``, quantized from the start."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model, s.max_kv_size)
    s.quantize(cache)
    return cache


def schedule(n, step):
    """
    The (start, end) updates in which generate_step feeds ``n`` tokens: the
    first ``n - 1`` in chunks of ``step``, then the last one alone (decoding
    continues one token at a time).
    """
    out, start = [], 0
    while n - start > 1:
        k = min(step, n - start - 1)
        out.append((start, start + k))
        start += k
    out.append((start, start + 1))
    return out


def fill(model, s, layers, tokens, dtype, step=PREFILL_STEP, seed=0):
    """
    The cache of setting ``s`` after ``tokens`` positions fed as generate_step
    feeds a prompt (``schedule``), each layer given random keys and values of
    its shape in ``dtype`` directly: the cache objects, sizes and layout of a
    real run, without running the model.
    """
    import mlx.core as mx

    mx.random.seed(seed)
    cache = make_cache(model, s)
    # One block of random numbers per shape, sliced for every update
    blocks = {}
    for h, kd, vd, _, _ in layers:
        for d in (kd, vd):
            if (h, d) not in blocks:
                blocks[(h, d)] = mx.random.normal((1, h, step, d)).astype(dtype)
    mx.eval(blocks)
    for a, b in schedule(tokens, step):
        for c, (h, kd, vd, _, _) in zip(cache, layers):
            k = blocks[(h, kd)][:, :, : b - a]
            v = -blocks[(h, vd)][:, :, : b - a]
            c.update_and_fetch(k, v)
        s.quantize(cache)
        mx.eval([c.state for c in cache])
    return cache


def nbytes(cache):
    return sum(c.nbytes for c in cache)


def theory_bytes(layers, s, tokens, dtype_size):
    """
    The bytes the caches of setting ``s`` hold after ``tokens`` positions
    fed as ``fill`` feeds them, from first principles, or None for settings
    with ``extra`` (no size model here). A layer holds ``tokens`` positions
    (``tokens`` a multiple of 256, the step in which the caches grow), or
    its window (the smaller of its own and ``max_kv_size``) once it is full
    and a single-token update has trimmed it. A position of a head holds,
    for keys and for values, ``dim`` floats, or ``dim * bits / 8`` bytes
    and a scale and a bias (of the input's dtype) per group.
    """
    if s.extra:
        return None
    assert tokens % 256 == 0, tokens
    total = 0
    for h, kd, vd, _, window in layers:
        bounds = [w for w in (window, s.max_kv_size) if w is not None]
        positions = min([tokens] + bounds)
        if s.float:
            per = (kd + vd) * dtype_size
        else:
            kb, vb = s.bits
            per = sum(d * b // 8 + 2 * (d // s.group_size) * dtype_size
                      for d, b in ((kd, kb), (vd, vb)))
        total += positions * h * per
    return total


def planner_bytes(model, s, tokens, step=PREFILL_STEP, prompt_tokens=None):
    """``mlx_lm.kv_plan.cache_nbytes`` for setting ``s`` (the planner's size
    model), or None if it does not take the setting's ``extra``."""
    from mlx_lm.kv_plan import cache_nbytes, probe_layout

    try:
        return cache_nbytes(
            probe_layout(model), tokens, kv_bits=s.kv_bits, kv_group_size=s.group_size,
            max_kv_size=s.max_kv_size, quantized_kv_start=0, prefill_step_size=step,
            prompt_tokens=prompt_tokens, **s.extra,
        )
    except TypeError:
        return None


def eval_step(model, cache, s, tokens):
    """One forward pass of ``tokens`` (1-D) through ``cache``, then the cache
    quantized as generate_step does after each update; the logits."""
    logits = model(tokens[None], cache=cache)
    s.quantize(cache)
    return logits


# ---------------------------------------------------------------- text


def license_text():
    return "\n\n".join((LICENSE_DIR / n).read_text() for n in TEXTS)


def text_windows(tokenizer, length, count=None):
    """
    Windows of ``length`` tokens of the license texts, consecutive, each
    starting with BOS if the tokenizer puts one before a text: a list of
    lists of token ids.
    """
    ids = tokenizer.encode(license_text(), add_special_tokens=False)
    probe = tokenizer.encode("a")
    bos = tokenizer.bos_token_id
    prefix = [bos] if bos is not None and probe and probe[0] == bos else []
    n = length - len(prefix)
    out = [prefix + ids[i : i + n] for i in range(0, len(ids) - n + 1, n)]
    return out if count is None else out[:count]


# ---------------------------------------------------------------- statistics


def mean(xs):
    return sum(xs) / len(xs) if xs else None


def median(xs):
    return statistics.median(xs) if xs else None


def sem(xs):
    """Standard error of the mean of ``xs`` (None for fewer than 2)."""
    if len(xs) < 2:
        return None
    return statistics.stdev(xs) / math.sqrt(len(xs))


def quartiles(xs):
    """The 25th and 75th percentiles (the spread of ratios)."""
    if not xs:
        return None
    if len(xs) < 2:
        return [xs[0], xs[0]]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return [q[0], q[2]]


def ratio_summary(ratios):
    """Median, quartiles, min, max and count of per-pair ratios."""
    return {
        "median": median(ratios),
        "quartiles": quartiles(ratios),
        "min": min(ratios) if ratios else None,
        "max": max(ratios) if ratios else None,
        "n": len(ratios),
        "values": [round(r, 4) for r in ratios],
    }


# ---------------------------------------------------------------- machine


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model():
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib():
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def openblas_loaded():
    """True if OpenBLAS is mapped into this process (tools/run preloads it)."""
    return "openblas" in _read("/proc/self/maps")


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def package_root():
    """The directory whose ``mlx_lm`` is the one measured."""
    import mlx_lm

    return Path(mlx_lm.__file__).resolve().parent.parent


def git_commit(path):
    """``<sha>`` (``+dirty`` with local changes) of the repository at
    ``path``, or None."""
    try:
        sha = subprocess.run(["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain",
                                "--untracked-files=no", "--", "mlx_lm"],
                               capture_output=True, text=True, timeout=30)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def pristine_root():
    path = os.environ.get("MLX_LM_PRISTINE")
    if not path or not (Path(path) / "mlx_lm").is_dir():
        return None
    return Path(path)


def subprocess_env(root):
    """The environment of a subprocess that imports ``mlx_lm`` from ``root``."""
    env = dict(os.environ)
    path = [str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def machine():
    import mlx.core as mx
    import mlx_lm

    root = package_root()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "openblas": openblas_loaded(),
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm.__version__,
        "mlx_lm_path": str(root),
        "mlx_lm_commit": git_commit(root),
        "python": platform.python_version(),
    }


def now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------- JSON


def save_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    log(f"wrote {path}")


def load_json(path):
    return json.loads(path.read_text()) if path.exists() else None


def result_path(out, part, key=None):
    """<out>/benchmarks/<part>[_<model>].json"""
    return out / "benchmarks" / (f"{part}_{key}.json" if key else f"{part}.json")
