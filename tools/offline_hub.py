#!/usr/bin/env python3
"""Populate a local Hugging Face cache with stand-ins for the hub repos that
upstream mlx-lm's test suite loads, so that the suite runs offline.

Every stand-in is built on this machine, deterministically, from the
tokenizer of our converted SmolLM2-135M-Instruct (tools/convert_smollm2.py):

* ``mlx-community/Qwen1.5-0.5B-Chat-4bit``: a tiny ``qwen2`` model, written
  as a Hugging Face checkpoint and 4-bit quantized by mlx-lm's own
  ``convert`` (group size 64, as the real repo; float32 rather than float16
  scales, see QWEN15_MODEL), with a byte-level BPE
  tokenizer in Qwen's id layout (byte alphabet from id 0, special tokens at
  the end) and Qwen1.5's ChatML chat template.
* Tokenizer-only repos (byte-level BPE): Qwen3, Llama 3.2, Falcon3,
  DeepSeek-Coder-V2 and LFM2.5, each with its family's special tokens and a
  chat template that triggers the same tool-calling / thinking detection.
* Tokenizer-only SentencePiece repos (Mistral v0.2, Mistral v0.3,
  Phi-3.5): a tiny byte-fallback BPE SentencePiece model trained here in a
  fraction of a second, converted to ``tokenizer.json`` by transformers.
* The dataset ``FiscalNote/billsum`` (synthetic rows) in the ``datasets``
  cache, as ``load_dataset`` leaves it after a download, when the
  ``datasets`` package is installed.

The hub layout is the one huggingface_hub writes: ``models--ORG--NAME`` with
``blobs/``, ``refs/main`` and ``snapshots/<commit>/`` (relative symlinks), so
``snapshot_download(repo, local_files_only=True)`` and ``HF_HUB_OFFLINE=1``
find it. The cache location is resolved as huggingface_hub does
(``HF_HUB_CACHE``, else ``$HF_HOME/hub``). A marker file
(``.locks/mlx-lm-kvq/offline-hub.json`` in the hub cache) records what was
built from which inputs; a second run with the same inputs does nothing.

Usage:
    python tools/offline_hub.py [--hub-cache DIR] [--force] [--check] [--list]
"""

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from patchq import sha256 as file_sha256  # noqa: E402

# Bump when the stand-ins change, so old caches get rebuilt.
FORMAT_VERSION = "1"
# Marker and lock live under the hub cache's .locks/, which huggingface_hub's
# cache scan skips.
STATE_DIR = Path(".locks") / "mlx-lm-kvq"
MARKER = "offline-hub.json"
LOCK = "offline-hub.lock"
# Written inside every models--*/datasets cache dir this tool owns, so a
# real download is never overwritten.
STAMP = ".mlx-lm-kvq-standin"
SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct"
VERSIONED_PACKAGES = ["mlx", "transformers", "tokenizers", "sentencepiece"]

# ---------------------------------------------------------------------------
# Chat templates (compact versions of each family's real template).

CHATML_QWEN15 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != "
    "'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>"
    "\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CHATML_QWEN3 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}"
    "{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the "
    "user query.\\n\\nYou are provided with function signatures within "
    "<tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with "
    "function name and arguments within <tool_call></tool_call> XML tags:\\n"
    '<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not "
    "loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + "
    "'<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.content %}{{- message.content }}{%- endif %}"
    "{%- if message.tool_calls %}{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}"
    "{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}'
    '{{- \'", "arguments": \' }}'
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
    "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + "
    "'\\n</tool_response><|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)

LLAMA3 = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

FALCON3 = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}"
    "{%- endif %}"
)

DEEPSEEK_CODER_V2 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + "
    "'\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + "
    "message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

LFM2 = (
    "{{- bos_token }}{%- if tools %}{{- '<|im_start|>system\\nList of tools: "
    "<|tool_list_start|>' + (tools | tojson) + '<|tool_list_end|><|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MISTRAL_V02 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + "
    "' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)

MISTRAL_V03 = (
    "{{ bos_token }}{% if tools %}{{ '[AVAILABLE_TOOLS] ' + (tools | tojson) + "
    "'[/AVAILABLE_TOOLS]' }}{% endif %}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + "
    "'[/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{% if message.tool_calls %}{{ '[TOOL_CALLS] ' + (message.tool_calls | "
    "tojson) + eos_token }}{% else %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% elif message['role'] == 'tool' %}{{ '[TOOL_RESULTS] ' + "
    "message['content'] + '[/TOOL_RESULTS]' }}{% endif %}{% endfor %}"
)

PHI35 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}"
    "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}"
    "{% else %}{{ eos_token }}{% endif %}"
)

# ---------------------------------------------------------------------------
# What to build. "bpe" tokenizers reuse SmolLM2's byte-level BPE with the
# family's special tokens appended after the regular vocabulary; "spm" ones
# are trained here.

QWEN15_MODEL = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "max_window_layers": 21,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06,
    "sliding_window": 32768,
    "use_sliding_window": False,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    # The real repo is float16, but float16 runs ~30x slower than float32
    # on mlx's CPU backend (0.38 s vs 0.012 s a token here), which would
    # make the server tests take minutes.
    "torch_dtype": "float32",
    # Padded past the tokenizer, as the real checkpoints are.
    "vocab_size": 49152,
}

STANDINS = [
    {
        "repo": "mlx-community/Qwen1.5-0.5B-Chat-4bit",
        "what": "tiny qwen2 model, 4-bit (group 64) via mlx_lm.convert; "
        "ChatML template",
        "tokenizer": "bpe",
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "tokens": {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "bos_token": None,
            "unk_token": None,
        },
        "chat_template": CHATML_QWEN15,
        # test_tokenizers decodes id 3219 expecting half a character.
        "partial_utf8_id": 3219,
        "model": QWEN15_MODEL,
        "bos_id_token": "<|endoftext|>",
        "eos_id_token": "<|im_end|>",
        "generation_eos": ["<|im_end|>", "<|endoftext|>"],
        "quantize": {"q_bits": 4, "q_group_size": 64},
    },
    {
        "repo": "mlx-community/Qwen3-4B-4bit",
        "what": "tokenizer only: ChatML, <think>, <tool_call> (json_tools)",
        "tokenizer": "bpe",
        "specials": [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<tool_call>",
            "</tool_call>",
            "<tool_response>",
            "</tool_response>",
            "<think>",
            "</think>",
        ],
        "nonspecial": [
            "<tool_call>",
            "</tool_call>",
            "<tool_response>",
            "</tool_response>",
            "<think>",
            "</think>",
        ],
        "tokens": {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "bos_token": None,
            "unk_token": None,
        },
        "chat_template": CHATML_QWEN3,
    },
    {
        "repo": "mlx-community/Llama-3.2-1B-Instruct-4bit",
        "what": "tokenizer only: Llama 3 header template, BOS added",
        "tokenizer": "bpe",
        "specials": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
        ],
        "tokens": {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "pad_token": None,
            "unk_token": None,
        },
        "add_bos": True,
        "chat_template": LLAMA3,
    },
    {
        "repo": "mlx-community/Falcon3-7B-Instruct-4bit",
        "what": "tokenizer only: <|user|>/<|assistant|> template",
        "tokenizer": "bpe",
        "specials": [
            "<|endoftext|>",
            "<|pad|>",
            "<|system|>",
            "<|user|>",
            "<|assistant|>",
        ],
        "tokens": {
            "eos_token": "<|endoftext|>",
            "pad_token": "<|pad|>",
            "bos_token": None,
            "unk_token": None,
        },
        "chat_template": FALCON3,
    },
    {
        "repo": "mlx-community/DeepSeek-Coder-V2-Lite-Instruct-4bit-mlx",
        "what": "tokenizer only: full-width <｜end▁of▁sentence｜> EOS, BOS added",
        "tokenizer": "bpe",
        "specials": [
            "<｜begin▁of▁sentence｜>",
            "<｜end▁of▁sentence｜>",
            "<｜fim▁hole｜>",
            "<｜fim▁begin｜>",
            "<｜fim▁end｜>",
            "<|EOT|>",
        ],
        "tokens": {
            "bos_token": "<｜begin▁of▁sentence｜>",
            "eos_token": "<｜end▁of▁sentence｜>",
            "pad_token": "<｜end▁of▁sentence｜>",
            "unk_token": None,
        },
        "add_bos": True,
        "chat_template": DEEPSEEK_CODER_V2,
    },
    {
        "repo": "LiquidAI/LFM2.5-1.2B-Instruct-MLX-8bit",
        "what": "tokenizer only: ChatML, <|tool_call_start|> (pythonic)",
        "tokenizer": "bpe",
        "specials": [
            "<|pad|>",
            "<|startoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|tool_list_start|>",
            "<|tool_list_end|>",
            "<|tool_call_start|>",
            "<|tool_call_end|>",
            "<|tool_response_start|>",
            "<|tool_response_end|>",
        ],
        "tokens": {
            "bos_token": "<|startoftext|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|pad|>",
            "unk_token": None,
        },
        "add_bos": True,
        "chat_template": LFM2,
    },
    {
        "repo": "mlx-community/Mistral-7B-v0.2-4bit",
        "what": "tokenizer only: tiny SentencePiece BPE (byte fallback), "
        "[INST] template",
        "tokenizer": "spm",
        "control": [],
        "added": [],
        "add_bos": True,
        "tokens": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "chat_template": MISTRAL_V02,
    },
    {
        "repo": "mlx-community/Mistral-7B-Instruct-v0.3",
        "what": "tokenizer only: tiny SentencePiece BPE with v0.3 control "
        "tokens ([INST], [TOOL_CALLS], ...)",
        "tokenizer": "spm",
        "control": [
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ],
        "added": [],
        "add_bos": True,
        "tokens": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "chat_template": MISTRAL_V03,
    },
    {
        "repo": "mlx-community/Phi-3.5-mini-instruct-4bit",
        "what": "tokenizer only: tiny SentencePiece BPE + Phi-3 chat tokens",
        "tokenizer": "spm",
        "control": [],
        "added": [
            "<|endoftext|>",
            "<|assistant|>",
            "<|placeholder1|>",
            "<|placeholder2|>",
            "<|placeholder3|>",
            "<|placeholder4|>",
            "<|system|>",
            "<|end|>",
            "<|placeholder5|>",
            "<|placeholder6|>",
            "<|user|>",
        ],
        "add_bos": False,
        "tokens": {
            "bos_token": "<s>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "unk_token": "<unk>",
        },
        "chat_template": PHI35,
    },
]

DATASETS = [
    {
        "repo": "FiscalNote/billsum",
        "what": "synthetic rows (text, summary, title); train 100, test 10",
        "splits": {"train": 100, "test": 10},
    },
]


def log(msg):
    """Print a progress message to stderr."""
    print(f"[offline_hub] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Locations and freshness.


def default_hub_cache():
    """The hub cache huggingface_hub uses (HF_HUB_CACHE, else $HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def default_datasets_cache():
    """The cache ``datasets`` uses (HF_DATASETS_CACHE, else $HF_HOME/datasets)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "datasets"


def default_smollm2():
    """Where tools/convert_smollm2.py puts the converted SmolLM2."""
    if os.environ.get("MLX_LM_KVQ_DEFAULT_MODEL"):
        return Path(os.environ["MLX_LM_KVQ_DEFAULT_MODEL"]).expanduser()
    home = os.environ.get("MLX_LM_KVQ_HOME") or "~/.cache/mlx-lm-kvq"
    return Path(home).expanduser() / SMOLLM2_DIRNAME


def repo_folder(hub_cache, repo_id, repo_type="model"):
    """The cache folder of a repo, as huggingface_hub names it."""
    return Path(hub_cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"


def conversion_in_progress(path, idle=300):
    """A temporary output dir of convert_smollm2 next to path that changed in
    the last ``idle`` seconds (an older one is left over from a killed run)."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            latest = max(p.stat().st_mtime for p in [tmp, *tmp.iterdir()])
        except OSError:
            continue
        if now - latest < idle:
            return tmp
    return None


def ensure_smollm2(path, wait):
    """Return the SmolLM2 directory, converting it first if it is missing.

    If another process is converting it right now (a temporary output dir
    exists next to it), wait up to ``wait`` seconds for its marker first.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import convert_smollm2

    path = Path(path)
    deadline = time.monotonic() + wait
    while not convert_smollm2.is_complete(path):
        busy = conversion_in_progress(path)
        if not busy or time.monotonic() > deadline:
            break
        log(f"waiting for the SmolLM2 conversion in progress ({busy})")
        time.sleep(2)
    if not convert_smollm2.is_complete(path):
        log(f"converting SmolLM2 into {path}")
        convert_smollm2.main(["--output", str(path)])
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}/tokenizer.json is missing")
    return path


def package_versions():
    """Versions of the packages whose output ends up in the stand-ins."""
    out = {}
    for name in VERSIONED_PACKAGES + ["datasets"]:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_key(smollm2):
    """Everything the stand-ins depend on; a change triggers a rebuild."""
    return {
        "format": FORMAT_VERSION,
        "script": file_sha256(__file__),
        "source": file_sha256(Path(smollm2) / "tokenizer.json"),
        "versions": package_versions(),
    }


def read_marker(hub_cache):
    """The marker of the last build, or None."""
    try:
        return json.loads((Path(hub_cache) / STATE_DIR / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(hub_cache, datasets_cache, key):
    """True if the last build used ``key`` and its repos are still there."""
    marker = read_marker(hub_cache)
    if not marker or marker.get("key") != key:
        return False
    for repo_id, commit in marker.get("repos", {}).items():
        folder = repo_folder(hub_cache, repo_id)
        try:
            ref = (folder / "refs" / "main").read_text()
        except OSError:
            return False
        if ref != commit or not (folder / "snapshots" / commit).is_dir():
            return False
    for repo_id, rel in marker.get("datasets", {}).items():
        if not (Path(datasets_cache) / rel / "dataset_info.json").is_file():
            return False
    return True


# ---------------------------------------------------------------------------
# Tokenizers.


def bytes_to_unicode():
    """GPT-2's byte <-> printable character table (byte -> char)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def load_base_tokenizer(smollm2):
    """SmolLM2's tokenizer.json as a dict."""
    with open(Path(smollm2) / "tokenizer.json", encoding="utf-8") as f:
        return json.load(f)


def regular_vocab(base):
    """The base BPE vocabulary without its special tokens, renumbered from 0
    in the original order (so the byte alphabet starts at id 0)."""
    specials = {t["content"] for t in base["added_tokens"]}
    items = sorted(
        (i, tok) for tok, i in base["model"]["vocab"].items() if tok not in specials
    )
    return {tok: n for n, (_, tok) in enumerate(items)}


def pin_partial_utf8(vocab, pin_id):
    """Swap ids so that ``pin_id`` holds the lowest-id token made of two
    stray UTF-8 continuation bytes (it decodes to two U+FFFD), as id 3219
    does in Qwen's vocabulary."""
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        raw = bytes(byte_of[c] for c in tok)
        if raw.decode("utf-8", errors="replace").count("\ufffd") == 2:
            break
    else:
        raise ValueError("no partial UTF-8 token in the base vocabulary")
    other = next(t for t, j in vocab.items() if j == pin_id)
    vocab[tok], vocab[other] = pin_id, i
    return vocab


def bpe_tokenizer(base, spec):
    """A transformers fast tokenizer: SmolLM2's BPE + the family's specials."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    vocab = regular_vocab(base)
    if spec.get("partial_utf8_id") is not None:
        vocab = pin_partial_utf8(vocab, spec["partial_utf8_id"])
    nonspecial = set(spec.get("nonspecial", []))
    added = []
    for tok in spec["specials"]:
        if tok in vocab:
            raise ValueError(f"{tok!r} is already a regular token")
        vocab[tok] = len(vocab)
        added.append(
            {
                "id": vocab[tok],
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": tok not in nonspecial,
            }
        )
    data = dict(base)
    data["model"] = dict(base["model"], vocab=vocab)
    data["added_tokens"] = added
    if spec.get("add_bos"):
        bos = spec["tokens"]["bos_token"]
        data["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}},
        }
    tok = Tokenizer.from_str(json.dumps(data))
    kwargs = {k: v for k, v in spec["tokens"].items() if v is not None}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
        **kwargs,
    )
    fast.chat_template = spec["chat_template"]
    return fast


def spm_corpus(base, count=8000, per_line=12):
    """Deterministic training text: SmolLM2's first regular BPE tokens,
    decoded to text (frequent English words, code and some other scripts)."""
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    pieces = []
    for tok in list(regular_vocab(base))[:count]:
        try:
            pieces.append(bytes(byte_of[c] for c in tok).decode("utf-8"))
        except (KeyError, UnicodeDecodeError):
            continue
    lines = ["".join(pieces[i : i + per_line]) for i in range(0, len(pieces), per_line)]
    return [line for line in lines if line.strip()]


def train_spm(corpus, control):
    """Train a tiny byte-fallback BPE SentencePiece model; return its bytes."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=out,
        model_type="bpe",
        vocab_size=1000,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=control or [],
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


def spm_tokenizer(model_bytes, spec, workdir):
    """A transformers Llama-style tokenizer (tokenizer.json with the
    SentencePiece decoder) for a trained model."""
    from transformers import AutoTokenizer

    src = Path(workdir) / "spm-src"
    src.mkdir()
    (src / "tokenizer.model").write_bytes(model_bytes)
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": False,
        "add_bos_token": spec["add_bos"],
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(str(src))
    special = list(spec["control"]) + list(spec["added"])
    if special:
        tok.add_special_tokens({"additional_special_tokens": special})
    for name, value in spec["tokens"].items():
        setattr(tok, name, value)
    tok.chat_template = spec["chat_template"]
    return tok


# ---------------------------------------------------------------------------
# The model.


def seed_for(name):
    """A stable per-name seed."""
    return zlib.crc32(name.encode("utf-8"))


def qwen2_weights(cfg, seed):
    """Deterministic Hugging Face-named weights for a tiny qwen2.

    Random attention/MLP weights are kept small and the output head is a
    row permutation of the embedding, so the model mostly predicts a fixed
    permutation of the last token with a clear margin: greedy decoding is
    stable under 4-bit and KV-quantization noise, as with a real
    model, and the generated text is not a single repeated token.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    n_heads, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // n_heads
    vocab = cfg["vocab_size"]

    def normal(shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * std

    embed = rng.standard_normal((vocab, h), dtype=np.float32) * 0.1
    perm = rng.permutation(vocab)
    head = embed[perm] + rng.standard_normal((vocab, h), dtype=np.float32) * 0.02
    w = {
        "model.embed_tokens.weight": embed,
        "lm_head.weight": head,
        "model.norm.weight": np.ones((h,), np.float32),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = normal((n_heads * hd, h), 0.1)
        w[p + "self_attn.q_proj.bias"] = normal((n_heads * hd,), 0.02)
        w[p + "self_attn.k_proj.weight"] = normal((n_kv * hd, h), 0.1)
        w[p + "self_attn.k_proj.bias"] = normal((n_kv * hd,), 0.02)
        w[p + "self_attn.v_proj.weight"] = normal((n_kv * hd, h), 0.1)
        w[p + "self_attn.v_proj.bias"] = normal((n_kv * hd,), 0.02)
        w[p + "self_attn.o_proj.weight"] = normal((h, n_heads * hd), 0.02)
        w[p + "mlp.gate_proj.weight"] = normal((inter, h), 0.1)
        w[p + "mlp.up_proj.weight"] = normal((inter, h), 0.1)
        w[p + "mlp.down_proj.weight"] = normal((h, inter), 0.02)
        w[p + "input_layernorm.weight"] = np.ones((h,), np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones((h,), np.float32)
    return w


def write_json(path, obj):
    """Write obj as indented JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def build_model_repo(spec, tokenizer, workdir, out):
    """Write an HF checkpoint, then mlx_lm.convert (quantize) it."""
    import mlx.core as mx

    try:
        from mlx_lm import convert
    except ImportError:
        # Not installed: use the checkout this script belongs to.
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from mlx_lm import convert

    src = Path(workdir) / "hf-src"
    src.mkdir()
    vocab = tokenizer.get_vocab()
    cfg = dict(spec["model"])
    cfg["bos_token_id"] = vocab[spec["bos_id_token"]]
    cfg["eos_token_id"] = vocab[spec["eos_id_token"]]
    write_json(src / "config.json", cfg)
    write_json(
        src / "generation_config.json",
        {
            "bos_token_id": vocab[spec["bos_id_token"]],
            "eos_token_id": [vocab[t] for t in spec["generation_eos"]],
            "pad_token_id": vocab[spec["tokens"]["pad_token"]],
            "do_sample": True,
            "top_p": 0.8,
            "repetition_penalty": 1.1,
        },
    )
    weights = qwen2_weights(cfg, seed_for(spec["repo"]))
    mx.save_safetensors(
        str(src / "model.safetensors"),
        {k: mx.array(v) for k, v in weights.items()},
        {"format": "pt"},
    )
    tokenizer.save_pretrained(str(src))
    mx.random.seed(seed_for(spec["repo"]))
    with contextlib.redirect_stdout(sys.stderr):
        convert(
            str(src),
            mlx_path=str(out),
            quantize=True,
            dtype=cfg["torch_dtype"],
            **spec["quantize"],
        )


def model_card(repo_id, what, tags):
    """A README.md that huggingface_hub's ModelCard can load."""
    tag_lines = "".join(f"- {t}\n" for t in tags)
    return (
        "---\n"
        "license: apache-2.0\n"
        "language:\n- en\n"
        f"tags:\n{tag_lines}"
        "---\n\n"
        f"# {repo_id} (offline stand-in)\n\n"
        "Built locally by mlx-lm-kvq's tools/offline_hub.py so that upstream\n"
        "mlx-lm's tests run without network access. It is NOT the real\n"
        f"checkpoint: {what}.\n"
    )


def build_repo_files(spec, base, workdir):
    """Build one stand-in's files into a fresh directory and return it."""
    out = Path(workdir) / "files"
    if spec["tokenizer"] == "bpe":
        tokenizer = bpe_tokenizer(base, spec)
    else:
        model_bytes = train_spm(spm_corpus(base), spec["control"])
        tokenizer = spm_tokenizer(model_bytes, spec, workdir)
    if spec.get("model"):
        build_model_repo(spec, tokenizer, workdir, out)
        tags = ["mlx", "text-generation"]
    else:
        out.mkdir()
        tokenizer.save_pretrained(str(out))
        tags = ["mlx"]
    scrub_tokenizer_config(out / "tokenizer_config.json")
    (out / "README.md").write_text(
        model_card(spec["repo"], spec["what"], tags), encoding="utf-8"
    )
    return out


def scrub_tokenizer_config(path):
    """Drop the load-time keys transformers writes back (they depend on the
    environment, e.g. HF_HUB_OFFLINE), so the output is reproducible."""
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    write_json(path, config)


# ---------------------------------------------------------------------------
# Hub cache layout.


def git_blob_sha1(path):
    """The git blob id of a file (what the hub uses as etag for non-LFS)."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def blob_id(path):
    """sha256 for LFS-style files (weights), git sha1 otherwise."""
    if path.suffix in (".safetensors", ".model", ".gguf", ".bin"):
        return file_sha256(path)
    return git_blob_sha1(path)


def commit_for(entries):
    """A deterministic 40-hex commit id for a set of (path, blob) entries."""
    h = hashlib.sha1()
    for rel, blob in sorted(entries):
        h.update(f"{rel}\0{blob}\n".encode("utf-8"))
    return h.hexdigest()


def install_repo(hub_cache, repo_id, files_dir, force):
    """Move files_dir into the hub cache as repo_id's main revision."""
    folder = repo_folder(hub_cache, repo_id)
    if folder.exists() and not (folder / STAMP).exists() and not force:
        log(f"keeping {folder}: not a stand-in (real download?); --force replaces")
        return None
    files = sorted(p for p in Path(files_dir).rglob("*") if p.is_file())
    entries = [(p.relative_to(files_dir).as_posix(), blob_id(p)) for p in files]
    commit = commit_for(entries)

    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=hub_cache))
    try:
        (tmp / "blobs").mkdir()
        (tmp / "refs").mkdir()
        snap = tmp / "snapshots" / commit
        snap.mkdir(parents=True)
        for p, (rel, blob) in zip(files, entries):
            target = tmp / "blobs" / blob
            if not target.exists():
                shutil.copyfile(p, target)
            link = snap / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(target, link.parent), link)
        # huggingface_hub writes the ref without a trailing newline.
        (tmp / "refs" / "main").write_text(commit)
        (tmp / STAMP).write_text(FORMAT_VERSION + "\n")
        for d in [tmp] + [p for p in tmp.rglob("*") if p.is_dir()]:
            os.chmod(d, 0o755)
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=hub_cache))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit


# ---------------------------------------------------------------------------
# Datasets.


def billsum_rows(n, seed):
    """Deterministic bill-like rows with billsum's columns."""
    import numpy as np

    rng = np.random.default_rng(seed)
    subjects = ["tax", "health care", "education", "energy", "transport"]
    actions = ["amends", "establishes", "repeals", "extends", "funds"]
    rows = {"text": [], "summary": [], "title": []}
    for i in range(n):
        subject = subjects[int(rng.integers(len(subjects)))]
        action = actions[int(rng.integers(len(actions)))]
        year = 1990 + int(rng.integers(30))
        title = f"{subject.title()} Act of {year} (No. {i})"
        sections = [
            f"SECTION {k}. This section {action} the {subject} provisions of "
            f"title {int(rng.integers(1, 50))} for fiscal year {year + k}."
            for k in range(1, 2 + int(rng.integers(4)))
        ]
        rows["title"].append(title)
        rows["text"].append(f"SECTION 1. SHORT TITLE. {title}. " + " ".join(sections))
        rows["summary"].append(
            f"{title} - This bill {action} {subject} provisions ({len(sections)} "
            "sections)."
        )
    return rows


def install_dataset(datasets_cache, spec, workdir):
    """Prepare a dataset stand-in in the ``datasets`` cache the way
    ``load_dataset`` leaves a downloaded hub dataset; return its relative
    directory."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo_id = spec["repo"]
    namespace, name = repo_id.split("/")
    root = Path(datasets_cache) / f"{namespace}___{name}"
    if root.exists() and not (root / STAMP).exists():
        log(f"keeping {root}: not a stand-in (real download?)")
        return None
    src = Path(workdir) / "data"
    src.mkdir()
    data_files = {}
    for split, n in spec["splits"].items():
        table = pa.table(billsum_rows(n, seed_for(f"{repo_id}:{split}")))
        path = src / f"{split}-00000-of-00001.parquet"
        pq.write_table(table, path)
        data_files[split] = str(path)

    tmp_cache = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=datasets_cache))
    try:
        from datasets.data_files import DataFilesDict
        from datasets.packaged_modules.parquet.parquet import Parquet

        with contextlib.redirect_stdout(sys.stderr):
            datasets.disable_progress_bars()
            # A hub load caches under NAMESPACE___NAME; build it under NAME
            # from the local files, then move it there.
            builder = Parquet(
                cache_dir=str(tmp_cache),
                dataset_name=name,
                config_name="default",
                data_files=DataFilesDict.from_local_or_remote(
                    {k: [v] for k, v in data_files.items()}, base_path=str(src)
                ),
            )
            builder.download_and_prepare()
        infos = list((tmp_cache / name).rglob("dataset_info.json"))
        if len(infos) != 1:
            raise RuntimeError(f"unexpected datasets cache layout in {tmp_cache}")
        # load_dataset looks for NAMESPACE___NAME/CONFIG/VERSION/HASH.
        digest = hashlib.sha1()
        for split in sorted(data_files):
            digest.update(Path(data_files[split]).read_bytes())
        built = tmp_cache / f"{namespace}___{name}"
        rel = f"{built.name}/default/0.0.0/{digest.hexdigest()}"
        (tmp_cache / rel).parent.mkdir(parents=True)
        os.replace(infos[0].parent, tmp_cache / rel)
        for lock in built.rglob("*.lock"):
            lock.unlink()
        (built / STAMP).write_text(FORMAT_VERSION + "\n")
        if root.exists():
            old = Path(
                tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=datasets_cache)
            )
            os.replace(root, old / root.name)
            os.replace(built, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(built, root)
    finally:
        shutil.rmtree(tmp_cache, ignore_errors=True)
    return rel


# ---------------------------------------------------------------------------


def build_all(hub_cache, datasets_cache, smollm2, key, force):
    """Build every stand-in and write the marker."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    base = load_base_tokenizer(smollm2)
    repos, dsets = {}, {}
    for spec in STANDINS:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=hub_cache) as work:
            files = build_repo_files(spec, base, work)
            commit = install_repo(hub_cache, spec["repo"], files, force)
        if commit:
            repos[spec["repo"]] = commit
            log(f"{spec['repo']} -> {commit[:12]} ({time.perf_counter() - start:.1f}s)")
    try:
        import datasets  # noqa: F401
    except ImportError:
        log("datasets is not installed: skipping dataset stand-ins")
    else:
        datasets_cache.mkdir(parents=True, exist_ok=True)
        for spec in DATASETS:
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(dir=datasets_cache) as work:
                rel = install_dataset(datasets_cache, spec, work)
            if rel:
                dsets[spec["repo"]] = rel
                log(f"dataset {spec['repo']} ({time.perf_counter() - start:.1f}s)")
    marker = {"key": key, "repos": repos, "datasets": dsets}
    tmp = Path(hub_cache) / STATE_DIR / (MARKER + ".tmp")
    write_json(tmp, marker)
    os.replace(tmp, Path(hub_cache) / STATE_DIR / MARKER)
    return marker


def parse_args(argv=None):
    """Parse command line arguments."""
    parser = argparse.ArgumentParser(
        description="Build local stand-ins for the Hugging Face repos that "
        "upstream mlx-lm's tests load, in the hub cache (HF_HUB_CACHE, else "
        "$HF_HOME/hub)."
    )
    parser.add_argument(
        "--hub-cache",
        type=Path,
        default=None,
        help="hub cache directory (default: as huggingface_hub resolves it)",
    )
    parser.add_argument(
        "--datasets-cache",
        type=Path,
        default=None,
        help="datasets cache directory (default: HF_DATASETS_CACHE, else "
        "$HF_HOME/datasets)",
    )
    parser.add_argument(
        "--smollm2",
        type=Path,
        default=None,
        help="converted SmolLM2-135M-Instruct directory (default: "
        "$MLX_LM_KVQ_DEFAULT_MODEL or ~/.cache/mlx-lm-kvq/SmolLM2-135M-Instruct; "
        "converted with tools/convert_smollm2.py if missing)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=900,
        help="seconds to wait for a SmolLM2 conversion already in progress",
    )
    parser.add_argument("--force", action="store_true", help="rebuild everything")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only report: exit 0 if up to date, 1 if a build is needed",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the stand-ins and exit"
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Entry point: build the stand-ins unless they are up to date."""
    args = parse_args(argv)
    if args.list:
        for spec in STANDINS:
            print(f"{spec['repo']}\t{spec['what']}")
        for spec in DATASETS:
            print(f"datasets/{spec['repo']}\t{spec['what']}")
        return 0
    hub_cache = (args.hub_cache or default_hub_cache()).expanduser().absolute()
    datasets_cache = (
        (args.datasets_cache or default_datasets_cache()).expanduser().absolute()
    )
    smollm2 = (args.smollm2 or default_smollm2()).expanduser().absolute()
    if args.check:
        if not (smollm2 / "tokenizer.json").is_file():
            log(f"SmolLM2 tokenizer missing at {smollm2}")
            return 1
        ok = is_up_to_date(hub_cache, datasets_cache, build_key(smollm2))
        log(f"{hub_cache}: {'up to date' if ok else 'needs a build'}")
        return 0 if ok else 1

    (hub_cache / STATE_DIR).mkdir(parents=True, exist_ok=True)
    smollm2 = ensure_smollm2(smollm2, args.wait)
    key = build_key(smollm2)
    with open(hub_cache / STATE_DIR / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not args.force and is_up_to_date(hub_cache, datasets_cache, key):
            log(f"up to date: {hub_cache}")
        else:
            start = time.perf_counter()
            build_all(hub_cache, datasets_cache, smollm2, key, args.force)
            log(f"built in {time.perf_counter() - start:.1f}s: {hub_cache}")
    print(hub_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
