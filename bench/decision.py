"""What the "not a digit" decision adds to a prediction's CPU, measured in one process.

Two model files side by side, e.g. one without a decision (ten outputs) and one with (eleven
outputs, temperature, threshold): each round times ``LoadedModel.answer`` on the same batch
for both, interleaved (A, B, A, B...), with process CPU time, one BLAS thread; every round is
printed with the ratio, then the median and the spread.

    OPENBLAS_NUM_THREADS=1 python -m bench.decision --baseline before.npz --model model.npz
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from server.model import LoadedModel


def cpu_per_call(model: LoadedModel, images: np.ndarray, calls: int) -> float:
    """Process CPU seconds per ``answer(images)``, over ``calls`` calls."""
    start = time.process_time()
    for _ in range(calls):
        model.answer(images)
    return (time.process_time() - start) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="model file without a decision")
    parser.add_argument("--model", required=True, help="model file with a decision")
    parser.add_argument("--batch", type=int, default=1, help="images per prediction")
    parser.add_argument("--calls", type=int, default=300, help="calls per round and model")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    baseline, model = LoadedModel(args.baseline), LoadedModel(args.model)
    images = np.random.default_rng(0).random((args.batch, 28, 28)).astype(np.float32)
    for m in (baseline, model):  # warm-up: first calls allocate
        cpu_per_call(m, images, 20)
    ratios = []
    for r in range(args.rounds):
        a = cpu_per_call(baseline, images, args.calls)
        b = cpu_per_call(model, images, args.calls)
        ratios.append(b / a)
        print(f"round {r + 1}: baseline {1e6 * a:.1f} us, with the decision {1e6 * b:.1f} us, "
              f"ratio {b / a:.3f}")
    print(f"median ratio {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max "
          f"{max(ratios):.3f}) over {args.rounds} rounds of {args.calls} calls, batch "
          f"{args.batch}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
