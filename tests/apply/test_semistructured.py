"""Weight-level sparsity: pattern masks, keeping masks through fine-tuning, schedules, compressed save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import magnitude

from hwprune.apply.masks import (
    apply_masks,
    compute_masks,
)
from hwprune.apply.semistructured import to_semi_structured
from hwprune.core.errors import HwpruneError


def test_semi_structured_errors_without_cuda_or_masks():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    with pytest.raises(HwpruneError, match="no 2:4-masked Linear"):
        to_semi_structured(model)
    apply_masks(model, compute_masks(model, magnitude(model), "2:4"), "2:4")
    if not torch.cuda.is_available():
        with pytest.raises(HwpruneError, match="need an NVIDIA GPU"):
            to_semi_structured(model)
    else:
        with pytest.raises(HwpruneError, match="move the model to the GPU"):
            to_semi_structured(model)


@pytest.mark.gpu
def test_semi_structured_matches_masked_dense_on_gpu():
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("needs compute capability 8.0+")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 128), nn.Linear(128, 10))
    apply_masks(model, compute_masks(model, magnitude(model), "2:4"), "2:4")
    model = model.half().cuda().eval()
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        ref = model(x)
        assert to_semi_structured(model) == ["0", "2"]
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    bad = nn.Sequential(nn.Linear(64, 24), nn.Linear(24, 2))  # 24 rows: not a multiple of the kernels' tile
    apply_masks(bad, compute_masks(bad, magnitude(bad), "2:4"), "2:4")
    with pytest.raises(HwpruneError, match="'0' 24x64"):
        to_semi_structured(bad.half().cuda())
