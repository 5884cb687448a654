"""tac2sol: fine-tune code LLMs that decompile EVM three-address code (TAC) into Solidity.

Import root of one distribution: ``tac2sol.operator`` (the TrainingRun API, planner and kopf
operator; never imports torch) and ``tac2sol.trainer`` (QLoRA training, data, evaluation).
"""

__version__ = "0.1.0"
