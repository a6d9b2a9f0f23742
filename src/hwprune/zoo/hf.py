"""Hugging Face transformers models: `hf:DIR` (a `save_pretrained` directory) and `hf-config:FILE` (a config,
random weights), with example inputs from the tokenizer or random token ids.

Only classes that ship with transformers are built (`trust_remote_code` is never passed): a directory's
config names an architecture (`"architectures": ["BertForSequenceClassification"]`) that must be one of
them. A saved hwprune model stores the config itself (`source["config"]`), so reloading needs neither the
original directory nor any code from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError

#: Token count of text example inputs when --seq-len is not given (BERT-style encoders' common setting).
DEFAULT_SEQ_LEN = 128


def _transformers():
    try:
        import transformers  # noqa: PLC0415  (optional dependency, slow to import)
    except ModuleNotFoundError:
        raise HwpruneError("hf: models need the transformers package: pip install 'hwprune[hf]'") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars on every load
    return transformers


def _config_from_dict(d: dict):
    tf = _transformers()
    model_type = d.get("model_type")
    if not isinstance(model_type, str):
        raise HwpruneError('a transformers config needs "model_type" (e.g. "bert", "llama", "vit")')
    try:
        return tf.AutoConfig.for_model(model_type, **{k: v for k, v in d.items() if k != "model_type"})
    except (ValueError, KeyError) as e:
        raise HwpruneError(f"transformers cannot build a {model_type!r} config: {str(e).splitlines()[0]}") from None


def _model_class(config):
    """The transformers class the config names (its first `architectures` entry), else the bare AutoModel."""
    tf = _transformers()
    names = getattr(config, "architectures", None) or []
    if names:
        cls = getattr(tf, names[0], None)
        if not isinstance(cls, type) or not issubclass(cls, tf.PreTrainedModel):
            raise HwpruneError(
                f"config names architecture {names[0]!r}, which transformers {tf.__version__} does not ship "
                "(models with their own code are not loaded: their code would run)"
            )
        return cls
    return None


def from_config(d: dict, seed: int = 0) -> nn.Module:
    """A randomly initialised model (fixed seed) from a config dict; KV caches off (pruning times one pass)."""
    tf = _transformers()
    config = _config_from_dict(d)
    config.use_cache = False
    torch.manual_seed(seed)
    cls = _model_class(config)
    model = cls(config) if cls is not None else tf.AutoModel.from_config(config)
    return model.eval()


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HwpruneError(f"hf-config:{path}: cannot read a JSON config ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise HwpruneError(f"hf-config:{path}: not a JSON object")
    return d


def from_directory(path: str | Path) -> tuple[nn.Module, object]:
    """(model with its weights, tokenizer or None) from a local `save_pretrained` directory."""
    tf = _transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise HwpruneError(f"hf:{path}: no config.json there (expected a save_pretrained directory)")
    config = tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
    config.use_cache = False
    cls = _model_class(config) or tf.AutoModel
    try:
        model = cls.from_pretrained(str(path), config=config, local_files_only=True)
    except (OSError, ValueError) as e:
        raise HwpruneError(f"hf:{path}: cannot load the weights ({str(e).splitlines()[0]})") from None
    return model.eval(), tokenizer_of(path)


def tokenizer_of(path: str | Path):
    """The directory's tokenizer, or None when it has none."""
    path = Path(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        return None
    return _transformers().AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def is_text(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None) is not None and getattr(model, "main_input_name", "") == "input_ids"


def text_inputs(
    model: nn.Module, batch_size: int, seq_len: int | None = None, tokenizer=None
) -> dict[str, torch.Tensor]:
    """Example inputs of a text model: `seq_len` (default DEFAULT_SEQ_LEN) random ids in the vocabulary,
    every position attended, between the tokenizer's CLS and SEP when it has them."""
    seq_len = DEFAULT_SEQ_LEN if seq_len is None else seq_len
    if seq_len < 1:
        raise HwpruneError("--seq-len must be at least 1")
    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(1000, vocab - 1), vocab, (batch_size, seq_len), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if tokenizer is not None and getattr(tokenizer, "cls_token_id", None) is not None:
        ids[:, 0] = tokenizer.cls_token_id
        ids[:, -1] = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else ids[:, -1]
    if "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


def vision_shape(model: nn.Module) -> tuple[int, ...] | None:
    """Per-sample pixel shape of an image model (channels, size, size) from its config, else None."""
    config = getattr(model, "config", None)
    size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", 3)
    if isinstance(size, int):
        return (channels, size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (channels, *size)
    return None


def hf_source(model: nn.Module) -> dict:
    """How to rebuild the architecture: the (dense) config itself and the class that reads it."""
    return {"kind": "hf", "class": type(model).__name__, "config": model.config.to_dict()}


def build_from_source(source: dict) -> nn.Module:
    config = source.get("config")
    if not isinstance(config, dict):
        raise HwpruneError("saved transformers model: its spec has no config")
    cls = source.get("class")
    config = {**config, "architectures": [cls]} if isinstance(cls, str) else config
    return from_config(config)
