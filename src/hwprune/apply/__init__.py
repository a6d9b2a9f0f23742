"""Stage 5: apply a pruning decision to the model.

- `channels`: a width plan applied by Torch-Pruning's channel surgery, then BatchNorm re-estimation;
- `heads`: attention heads removed (`HeadPrunedAttention`), scored per head;
- `blocks`: residual blocks found, scored and replaced by `nn.Identity`;
- `common`: helpers the last two share (module replacement, parameter counts, calibration batches);
- `masks`: weight-level sparsity patterns (unstructured, N:M, block) and the masks that keep them;
- `semistructured`: 2:4-masked Linear weights swapped for PyTorch's sparse tensor-core kernels.
"""
