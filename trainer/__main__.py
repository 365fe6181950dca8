"""``python -m trainer`` / ``digitgrad-train``: fit a network on MNIST, write the model file.

Exit status: 0 success, 2 usage or data error, 1 anything else: divergence, or Ctrl-C (after
writing a checkpoint; the message says how to resume).
"""

from __future__ import annotations

import contextlib
import sys
import time

from autodiff import reuse_freed_memory
from models import ModelFileError
from trainer.cli import EXIT_FAILURE, EXIT_USAGE, parse
from trainer.config import UsageError
from trainer.data import DataError
from trainer.loop import DivergenceError, StopFlag
from trainer.run import train


def blas_threads(n: int):
    """Limit numpy's BLAS to ``n`` threads inside the block (threadpoolctl; a no-op without it).

    Multi-threaded BLAS on 64-image batches spends more time waking threads than multiplying,
    the augmentation thread needs the second core, and on a busy machine more threads are
    several times slower than one.
    """
    if n == 0:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), train, and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    job = None
    try:
        job = parse(argv)
        # every step allocates the same large arrays: keep freed ones for reuse instead of
        # paying page faults on fresh memory each step (autodiff/memory.py measures it)
        reuse_freed_memory()
        with blas_threads(job.threads):
            return train(job, StopFlag())
    except (UsageError, DataError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DivergenceError as exc:
        print(f"error: {exc}. {job.paths.out} was not written.", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        where = job.paths.checkpoint_dir if job else "the checkpoint directory"
        print(f"interrupted after {time.perf_counter() - start:.0f} s; the last completed "
              f"epoch's checkpoint (if any) is in {where}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # disk full, permission denied while writing outputs
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def run() -> None:
    """Console-script entry point (``digitgrad-train``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
