"""Stage 6: recover accuracy after pruning.

- `train`: the fine-tuning loop (AdamW, one-cycle schedule, distillation from the dense model);
- `weights`: weight-level pruning schedules that mask while fine-tuning (one-shot, iterative, gradual).
"""
