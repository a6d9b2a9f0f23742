"""`example:tinylm`: a small byte-level Llama (grouped-query attention) trained here on Python's documentation.

No pretrained causal language model ships in any package the offline registries hold (searched on
2026-12-04 for gpt2, distilgpt2, pythia, smollm, tinyllama: the hits are API clients and training scripts,
no weights), so the example is trained on first use, in a few minutes on 2 cores, and cached like the
demo's CNN. It is transformers' own `LlamaForCausalLM` built from a config (RMSNorm, RoPE, SwiGLU FFN,
4 query heads sharing 2 key/value heads), so everything hwprune does to it applies to any Llama.

Tokens are UTF-8 bytes (vocabulary 256, no tokenizer files): perplexity is then per byte, and the model
needs nothing but its weights. The text is the `python-docs` corpus of `hwprune.zoo.text`: training on its
training chunks (stdlib docstrings and `pydoc_data` text), held out its held-out prose sentences, which
no training step sees.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from hwprune.core.data import LoaderData
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import classes_last_cross_entropy
from hwprune.zoo import hf, text

#: ~0.85 M parameters: 4 layers of width 128, 4 query heads of 32 sharing 2 KV heads (GQA), SwiGLU FFN 384.
#: Untied output layer (the output layer stays dense under pruning; a tied one would couple it to the input).
CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 256,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}
#: Tokens per training window and per prefill prompt (the structured benchmark's prompt length).
SEQ_LEN = 256
#: Training: 16 windows of 256 bytes per step, 600 steps (~2.5 M bytes, ~1.4 passes over the ~1.7 M bytes
#: of training text): ~0.4 s a step, about 4-5 min on this 2-core VM (2026-12-04); lr 3e-3, one-cycle.
TRAIN_STEPS, TRAIN_BATCH, TRAIN_LR, TRAIN_SEED = 600, 16, 3e-3, 0
#: Share of the corpus's (shuffled) training chunks held out as well, for a steadier perplexity.
HELD_OUT_CHUNKS = 0.03
#: Part of the cache key: bump when the config, corpus or training changes.
VERSION = "tinylm-v1"


def build() -> nn.Module:
    """The (untrained, seeded) architecture."""
    return hf.from_config(CONFIG)


def encode(s: str) -> torch.Tensor:
    """UTF-8 bytes as token ids (int64)."""
    return torch.tensor(list(s.encode("utf-8")), dtype=torch.long)


def decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class ByteTokenizer:
    """Bytes as tokens, called like a transformers tokenizer (`--data python-docs` / `text:PATH` batches):
    padded on the right with byte 0, the padding masked out (`attention_mask` 0)."""

    vocab_size = 256
    model_input_names = ["input_ids", "attention_mask"]

    def __call__(self, texts, padding="longest", truncation=True, max_length=None, return_tensors="pt"):
        rows = [encode(t) for t in ([texts] if isinstance(texts, str) else texts)]
        if truncation and max_length is not None:
            rows = [r[:max_length] for r in rows]
        n = max(len(r) for r in rows) if padding == "longest" else int(max_length or max(len(r) for r in rows))
        ids = torch.zeros(len(rows), n, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        return {"input_ids": ids, "attention_mask": mask}


@functools.cache
def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """(training bytes, held-out bytes) of the python-docs corpus, each its chunks joined by newlines.

    Held out: the corpus's held-out prose sentences (~10 kB) and the last HELD_OUT_CHUNKS of its shuffled
    training chunks, so that perplexity is measured on ~60 kB rather than 10 kB."""
    train, held_out = text.python_docs_split()
    cut = len(train) - max(1, int(len(train) * HELD_OUT_CHUNKS))
    return encode("\n".join(train[:cut])), encode("\n".join(held_out + train[cut:]))


def windows(ids: torch.Tensor, length: int, n: int, seed: int) -> torch.Tensor:
    """`n` random windows of `length` consecutive tokens of `ids` (seeded), shape (n, length)."""
    if len(ids) < length + 1:
        raise HwpruneError(f"the text has {len(ids)} tokens, fewer than one window of {length}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - length + 1, (n,), generator=g)
    return torch.stack([ids[s : s + length] for s in starts.tolist()])


#: Next-token cross-entropy: `outputs` (batch, tokens, vocab) at position t scored against `targets` at t (the
#: batch builder shifts them), the classes read from the last dimension.
lm_loss = classes_last_cross_entropy


def lm_batches(ids: torch.Tensor, n_batches: int, batch_size: int, seq_len: int, seed: int) -> list:
    """`n_batches` of ({"input_ids": x}, y): windows of seq_len + 1 bytes, y the next byte of every position."""
    w = windows(ids, seq_len + 1, n_batches * batch_size, seed)
    return [
        ({"input_ids": w[i : i + batch_size, :-1]}, w[i : i + batch_size, 1:])
        for i in range(0, n_batches * batch_size, batch_size)
    ]


def train(
    model: nn.Module,
    progress: bool = True,
    steps: int = TRAIN_STEPS,
    batch_size: int = TRAIN_BATCH,
    ids: torch.Tensor | None = None,
) -> nn.Module:
    """Train the model on `ids` (default the corpus's training bytes): next-byte cross-entropy, the shared
    trainer's AdamW with a one-cycle schedule."""
    from hwprune.finetune.train import train_steps  # noqa: PLC0415  (the examples module imports it anyway)

    ids = corpus()[0] if ids is None else ids
    torch.manual_seed(TRAIN_SEED)
    batches = lm_batches(ids, steps, batch_size, SEQ_LEN, TRAIN_SEED)
    return train_steps(model, batches, TRAIN_LR, desc="training dense tinylm", progress=progress, loss_fn=lm_loss)


def prompt_inputs(batch_size: int = 1, seq_len: int | None = None) -> dict[str, torch.Tensor]:
    """A real prompt as example inputs: the first `seq_len` (default SEQ_LEN) held-out bytes, repeated over
    the batch. Prefill latency is measured at this shape."""
    seq_len = SEQ_LEN if seq_len is None else seq_len
    if seq_len < 1:
        raise HwpruneError("--seq-len must be at least 1")
    _, held = corpus()
    ids = held[:seq_len]
    if len(ids) < seq_len:
        raise HwpruneError(f"--seq-len {seq_len}: the held-out text has only {len(held)} bytes")
    ids = ids.unsqueeze(0).expand(batch_size, -1).contiguous()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def lm_data(
    n_train: int = 64, batch_size: int = 8, seq_len: int = SEQ_LEN, n_val: int = 8, seed: int = 0
) -> LoaderData:
    """Unlabelled LM data for `hwprune.prune`: random training windows (fine-tuning distils from the dense
    model; calibration reads them), validation windows from the held-out text."""
    train_ids, held = corpus()
    tr = [{"input_ids": w} for w in windows(train_ids, seq_len, n_train * batch_size, seed).split(batch_size)]
    va = [{"input_ids": w} for w in windows(held, seq_len, n_val * batch_size, seed).split(batch_size)]
    return LoaderData(
        [(x, None) for x in tr],
        [(x, None) for x in va],
        description=f"python-docs bytes: {n_train} x {batch_size} training / {n_val} x {batch_size} held-out "
        f"windows of {seq_len}",
    )
