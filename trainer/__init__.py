"""The trainer: config, data preflight and split, QLoRA model, training, evaluation, metrics."""
