"""Stage 6: recover accuracy after pruning.

- `trainer`: `fit(model, data, TrainConfig(...))`, the fine-tuning stage: AdamW/SGD, schedules with warm-up,
  accumulation, clipping, evaluation with keep-best and early stopping, distillation on logits and features,
  bf16/fp16, checkpoints and resume, DistributedDataParallel under torchrun;
- `checkpoint`: atomic checkpoints (safetensors + JSON, nothing pickled); `distributed`: the process group;
- `train`: the short loop the sensitivity probes, weight schedules and methods call (`train_steps`);
- `weights`: weight-level pruning schedules that mask while fine-tuning (one-shot, iterative, gradual).
"""
