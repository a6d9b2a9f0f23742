"""PyTorch's 2:4 semi-structured sparse kernels for 2:4-masked Linear layers (CUDA, sparse tensor cores).

Masks alone (`hwprune.apply.masks`) keep dense shapes and dense kernels; swapping a 2:4-masked weight
for a `torch.sparse` semi-structured tensor lets cuSPARSELt or CUTLASS skip the zeros (Mishra et al.
2021, "Accelerating Sparse Deep Neural Networks").
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

from hwprune.apply.masks import check_nm, masked_modules, remove_mask_hooks
from hwprune.core.errors import HwpruneError


def to_semi_structured(model: nn.Module, strict: bool = True) -> list[str]:
    """Swap the weights of 2:4-masked Linear layers for PyTorch's semi-structured sparse tensors (in place).

    Needs the model on an NVIDIA GPU with sparse tensor cores (compute capability 8.0+, Ampere or
    newer) in float16 or bfloat16. Layers whose shape the kernels do not take (minimum sizes and
    multiples that PyTorch's backend declares) raise when `strict`, else stay dense. Masked convs are
    left as they are (the kernels are matmuls). Inference only: the sparse weights take no gradient.
    Returns the converted layer names.
    """
    candidates = {
        n: m
        for n, m in masked_modules(model).items()
        if isinstance(m, nn.Linear) and getattr(m, "hwprune_sparsity", None) == "2:4"
    }
    if not candidates:
        raise HwpruneError("no 2:4-masked Linear layer in the model; mask it with pattern 2:4 first")
    if not torch.cuda.is_available():
        raise HwpruneError("2:4 semi-structured kernels need an NVIDIA GPU (CUDA); none is available here")
    first = next(iter(candidates.values())).weight
    if first.device.type != "cuda":
        raise HwpruneError("move the model to the GPU first (model.cuda()); 2:4 kernels run on CUDA only")
    major, minor = torch.cuda.get_device_capability(first.device)
    if major < 8:
        raise HwpruneError(
            f"{torch.cuda.get_device_name(first.device)} (compute capability {major}.{minor}) has no sparse "
            "tensor cores; 2:4 kernels need 8.0+ (Ampere, Ada, Hopper or newer)"
        )
    backend = (
        torch.sparse.SparseSemiStructuredTensorCUTLASS
        if SparseSemiStructuredTensor._FORCE_CUTLASS
        else torch.sparse.SparseSemiStructuredTensorCUSPARSELT
    )
    converted, bad = [], []
    for name, m in candidates.items():
        w = m.weight
        if w.dtype not in (torch.float16, torch.bfloat16):
            raise HwpruneError(f"layer '{name}' is {w.dtype}; 2:4 kernels take float16/bfloat16 (call model.half())")
        lim = backend._DTYPE_SHAPE_CONSTRAINTS[w.dtype]
        r, c = w.shape
        if r < lim.sparse_min_rows or r % lim.sparse_min_rows or c < lim.sparse_min_cols or c % lim.sparse_min_cols:
            bad.append(
                f"'{name}' {r}x{c} (rows must be a multiple of {lim.sparse_min_rows}, columns of {lim.sparse_min_cols})"
            )
            continue
        masked = w.detach().masked_fill(~m.hwprune_mask, 0)
        if not check_nm(masked, 2, 4):
            raise HwpruneError(f"layer '{name}' is not 2:4 sparse; re-apply its mask")
        sparse = to_sparse_semi_structured(masked.contiguous())
        remove_mask_hooks(m)
        m.weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    if bad and strict:
        raise HwpruneError("shapes the 2:4 kernels do not take: " + "; ".join(bad) + " (pass strict=False to skip)")
    return converted
