"""``tac2sol torchrun ARGS``: torchrun (``torch.distributed.run``) in this process, exiting with the
code a restart policy needs.

torchrun exits 1 whenever a rank fails, whatever the rank's own exit code, and 1 again when it is
itself stopped by a signal. A PyTorchJob's ``ExitCode`` restart policy (and the chart's
ClusterTrainingRuntime's pod failure policy) treat 1-127 as the trainer's own verdict and fail the
job, so a worker pod deleted, evicted or preempted mid-run failed the whole run: the other pod's
ranks saved a checkpoint and exited 143, and torchrun turned that into 1.

This launcher exits with what stopped the ranks instead:

* the first failed rank's exit code (torch's ``ChildFailedError.get_first_failure``); a rank
  ended by signal N (torch reports ``-N``) as ``128 + N``, as a shell does;
* the agent itself stopped by signal N (``SignalException``, after torchrun forwarded it to the
  ranks and waited for them) as ``128 + N``.

So 143 (SIGTERM: checkpointed and stopped) and 137 (SIGKILL, OOM) re-create the pods, and the
trainer resumes from the checkpoint on the volume; 1 or 2 from a rank still fails the job at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

FALLBACK_EXIT_CODE = 1  # torchrun's own, for anything else that ends it


def exit_code_of(exc: BaseException) -> int | None:
    """The launcher's exit code for what ended torchrun (None: not a rank's failure or a signal)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if isinstance(exc, SignalException):
        return 128 + int(exc.sigval)
    if isinstance(exc, ChildFailedError) and exc.failures:
        _, failure = exc.get_first_failure()
        code = failure.exitcode
        if code < 0:  # ended by signal -code
            return 128 - code
        return code if 0 < code < 256 else FALLBACK_EXIT_CODE
    return None


def run(args: Sequence[str]) -> int:
    """Run torchrun with ``args`` (its own command line) and return the launcher's exit code."""
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(list(args))  # @record: writes the first failure's error file, logs it, re-raises
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else FALLBACK_EXIT_CODE
    except Exception as exc:
        code = exit_code_of(exc)
        if code is None:
            raise
        print(f"tac2sol torchrun: {type(exc).__name__}: exit code {code}", file=sys.stderr, flush=True)
        return code
    return 0
