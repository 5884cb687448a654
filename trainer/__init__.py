"""The trainer: config, data preflight and split, QLoRA model, training, evaluation, metrics."""

import logging


def _not_the_kernels_hint(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()


# bitsandbytes, imported on a CPU with AVX512-BF16, logs that it could fetch a faster CPU
# inference kernel from the Hugging Face Hub ("pip install kernels"). tac2sol never fetches code
# at run time (runs are offline and pinned), and its training path does not use that kernel
# (model.keep_4bit_layout_trainable); bitsandbytes' built-in CPU kernels do the work.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_not_the_kernels_hint)
