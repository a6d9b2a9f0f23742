"""Saving never destroys, loading never runs code, a saved model is self-contained."""

import json
import shutil

import pytest
import torch
import torch.nn as nn
from helpers import assert_one_line_error, run_cli, uniformly_pruned
from tiny_models import tiny_cnn

import hwprune
from hwprune.core.errors import HwpruneError
from hwprune.export.model import save_model
from hwprune.report.files import prepare_out
from hwprune.zoo.specs import resolve

EVIL = """
from pathlib import Path

import torch.nn as nn

Path({marker!r}).write_text("this file ran")


def net():
    return nn.Linear(4, 2)
"""


@pytest.fixture
def evil(tmp_path):
    """(saved directory, marker path): the directory's spec names a file that writes the marker when imported."""
    marker = tmp_path / "marker"
    src = tmp_path / "src" / "evil.py"
    src.parent.mkdir()
    src.write_text(EVIL.format(marker=str(marker)))
    torch.manual_seed(0)
    save_model(nn.Linear(4, 2), tmp_path / "saved", {"kind": "file", "path": str(src), "function": "net"})
    return tmp_path / "saved", marker


def test_load_runs_no_code_without_trust_code(evil):
    saved, marker = evil
    with pytest.raises(HwpruneError, match=r"model=\.\.\.\)\), or trust_code=True \(CLI: --trust-code\)") as e:
        hwprune.load(saved)
    assert "evil.py:net" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    # The dense architecture passed in: the weights load, still nothing runs.
    back = hwprune.load(saved, model=nn.Linear(4, 2))
    torch.manual_seed(0)
    assert torch.equal(back.weight, nn.Linear(4, 2).weight) and not marker.exists()
    # Trusted: the copy stored in the directory is imported (and so its top level runs).
    assert isinstance(hwprune.load(saved, trust_code=True), nn.Linear)
    assert marker.read_text() == "this file ran"


def test_cli_saved_dir_needs_trust_code(capsys, evil):
    saved, marker = evil
    code, _, err = run_cli(capsys, "bench", "--model", saved)
    assert_one_line_error(code, err, "or trust_code=True (CLI: --trust-code) if you trust this directory")
    assert not marker.exists()


def test_spec_naming_a_file_outside_the_directory_is_not_followed(evil):
    saved, marker = evil
    spec = json.loads((saved / "spec.json").read_text())
    outside = str(marker.parent / "src" / "evil.py")
    for source, trust in (({"kind": "file", "path": outside, "function": "net"}, False),
                          ({"kind": "file", "file": "../src/evil.py", "function": "net"}, True),
                          ({"kind": "file", "file": outside, "function": "net"}, True)):  # fmt: skip
        (saved / "spec.json").write_text(json.dumps({**spec, "source": source}))
        with pytest.raises(HwpruneError, match="trust_code=True" if not trust else "not a .py in the directory"):
            hwprune.load(saved, trust_code=trust)
    assert not marker.exists()


def test_moved_directory_loads_without_the_original_file(tmp_path, tiny_file):
    user_py = tmp_path / "mine" / "nets.py"
    user_py.parent.mkdir()
    shutil.copy(tiny_file, user_py)
    _, x, _, pruned = uniformly_pruned(tiny_cnn)
    pruned.eval()
    save_model(pruned, tmp_path / "run" / "model", {"kind": "file", "path": str(user_py), "function": "tiny_cnn"})
    spec = json.loads((tmp_path / "run" / "model" / "spec.json").read_text())
    assert spec["source"] == {"kind": "file", "function": "tiny_cnn", "origin": str(user_py), "file": "nets.py"}

    shutil.move(tmp_path / "run", tmp_path / "elsewhere")
    shutil.rmtree(user_py.parent)
    moved = tmp_path / "elsewhere" / "model"
    back = hwprune.load(moved, trust_code=True)
    with torch.no_grad():
        torch.testing.assert_close(back(x), pruned(x), rtol=0, atol=0)
    assert back.conv1.out_channels == 8

    # Pruned again from the moved directory, the source is the stored copy, and it is stored once more.
    r = resolve(str(moved), batch_size=2, input_shape="3x8x8", trust_code=True)
    assert r.source == {"kind": "file", "path": str((moved / "nets.py").resolve()), "function": "tiny_cnn"}
    save_model(r.model, tmp_path / "again", r.source)
    assert (tmp_path / "again" / "nets.py").read_text() == (moved / "nets.py").read_text()


def test_save_refuses_a_non_empty_path_unless_overwrite(tmp_path):
    model = nn.Linear(3, 2)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("x")
    with pytest.raises(HwpruneError, match=r"is a directory that is not empty; .* pass overwrite=True"):
        hwprune.save(model, tmp_path / "d")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["thesis.tex"]
    (tmp_path / "f").write_text("notes")
    with pytest.raises(HwpruneError, match="is a file; choose another path, or pass overwrite=True"):
        hwprune.save(model, tmp_path / "f")
    assert (tmp_path / "f").read_text() == "notes"

    hwprune.save(model, tmp_path / "new")
    with pytest.raises(HwpruneError, match="overwrite=True"):  # an earlier save is not replaced silently either
        hwprune.save(nn.Linear(3, 4), tmp_path / "new")
    hwprune.save(nn.Linear(3, 4), tmp_path / "new", overwrite=True)
    assert hwprune.load(tmp_path / "new", model=nn.Linear(3, 2)).out_features == 4
    (tmp_path / "empty").mkdir()
    assert hwprune.save(model, tmp_path / "empty") == tmp_path / "empty"


def test_output_directory_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "report.json").write_text("{}")
    with pytest.raises(HwpruneError, match="holds an earlier hwprune output; pass overwrite=True to replace it"):
        prepare_out(out)
    assert prepare_out(out, overwrite=True) == out
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("1,2")
    with pytest.raises(HwpruneError, match="is not an hwprune output directory"):  # never, even with overwrite
        prepare_out(tmp_path / "mine", overwrite=True)
