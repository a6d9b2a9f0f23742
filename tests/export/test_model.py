import pytest
import tiny_models
import torch
from helpers import uniformly_pruned
from tiny_models import tiny_cnn

import hwprune
from hwprune.core.errors import HwpruneError
from hwprune.export.model import save_model


@pytest.mark.parametrize("fn", ["tiny_cnn", "tiny_resnet"])
def test_save_load_parity(tmp_path, tiny_file, fn):
    _, x, _, pruned = uniformly_pruned(getattr(tiny_models, fn))
    pruned.eval()
    save_model(pruned, tmp_path / "m", {"kind": "file", "path": tiny_file, "function": fn})
    # The user's .py travels with the weights, so the directory is self-contained.
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "spec.json", "tiny_models.py"]
    loaded = hwprune.load(tmp_path / "m", trust_code=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x), rtol=0, atol=0)


def test_load_rejects_damaged_files(tmp_path, tiny_file):
    _, x, _, pruned = uniformly_pruned(tiny_cnn)
    save_model(pruned, tmp_path / "m", {"kind": "file", "path": tiny_file, "function": "tiny_cnn"})
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(HwpruneError, match="cannot read weights"):
        hwprune.load(tmp_path / "m", model=tiny_cnn()[0])
    (tmp_path / "m" / "spec.json").write_text("{not json")
    with pytest.raises(HwpruneError, match="not a saved hwprune model"):
        hwprune.load(tmp_path / "m", model=tiny_cnn()[0])


class _Versioned(torch.nn.Module):
    """Checks its state-dict version on load, as torchvision's MNASNet does (it raises without one)."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if local_metadata.get("version") != 2:
            raise ValueError(f"version should be 2, got {local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


def test_a_module_that_checks_its_state_dict_version_reloads(tmp_path):
    model = _Versioned()
    save_model(model, tmp_path / "m", {"kind": "python", "object": "_Versioned"})
    loaded = hwprune.load(tmp_path / "m", model=_Versioned())
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
