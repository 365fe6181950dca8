"""What an explanation costs beyond its prediction, and how complete it is, by step count.

On MNIST test digits and a real model file: the CPU time of the served prediction alone
(``LoadedModel.predict``, batch 1, the forward-only path) against the same prediction followed
by ``integrated_gradients`` at each step count, interleaved in one process (every round runs
every contender on the same images, the order rotated each round), one BLAS thread
(threadpoolctl, the bench extra), CPU time of the process (``time.process_time``). Every round
is printed, then the median and the spread of the extra milliseconds per image. Then the
completeness error, |Σ attributions - (logit - black's logit)|, over more digits, absolute and
relative to the logit difference. Last, each conv layer's input gradient alone (the backward
an explanation runs) in blocks of ``autodiff.conv.DX_BLOCK`` against the training blocks
(``BLOCK``), interleaved the same way.

    python -m bench.explain --model model.npz [--data-dir DIR] [--steps 16 32 64]
                            [--rounds 15] [--images 50] [--completeness-images 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import autodiff.conv
from autodiff import Conv2d
from models.explain import DEFAULT_STEPS, integrated_gradients
from server.model import LoadedModel
from trainer.data import load_mnist


def contenders(model: LoadedModel, steps: list[int]) -> dict:
    """name -> function of one image: the prediction alone, or followed by its explanation."""
    def plain(image):
        return model.predict(image[None])

    def explained(n):
        def run(image):
            digit = int(model.predict(image[None])[0].argmax())
            return integrated_gradients(model.module, image, model.preprocessing, digit, n)
        return run

    return {"predict": plain, **{f"+ explain {n}": explained(n) for n in steps}}


def cost(model: LoadedModel, images: np.ndarray, steps: list[int], rounds: int) -> None:
    runs = contenders(model, steps)
    for run in runs.values():  # warm up: first calls allocate
        run(images[0])
    times = {name: [] for name in runs}
    names = list(runs)
    print(f"CPU ms per image, {len(images)} images per contender per round")
    print("round  " + "  ".join(f"{n:>13}" for n in names))
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            started = time.process_time()
            for image in images:
                runs[name](image)
            times[name].append(1e3 * (time.process_time() - started) / len(images))
        print(f"{r + 1:>5}  " + "  ".join(f"{times[n][-1]:13.3f}" for n in names))
    print("extra CPU ms per explained image (explained - predict, per round): median [min, max]")
    for name in names[1:]:
        extra = [e - p for e, p in zip(times[name], times["predict"])]
        print(f"  {name:>13}: {statistics.median(extra):.3f} [{min(extra):.3f}, {max(extra):.3f}]"
              f"   (predict alone: median {statistics.median(times['predict']):.3f})")


def completeness(model: LoadedModel, images: np.ndarray, steps: list[int]) -> None:
    print(f"completeness error over {len(images)} test digits (trapezoid rule, black baseline)")
    print("steps   median |err|   p90 |err|   max |err|   median |err|/|Δ|   p90   max")
    for n in steps:
        errors, deltas = [], []
        for image in images:
            result = integrated_gradients(model.module, image, model.preprocessing, steps=n)
            errors.append(abs(result.completeness_error))
            deltas.append(abs(result.logit - result.baseline_logit))
        e, rel = np.array(errors), 100 * np.array(errors) / np.array(deltas)
        print(f"{n:>5}   {np.median(e):12.4f}   {np.percentile(e, 90):9.4f}   {e.max():9.4f}"
              f"   {np.median(rel):15.2f}%   {np.percentile(rel, 90):4.2f}%   {rel.max():.2f}%")
    print(f"|Δ| = |logit - black's logit|: median {np.median(deltas):.2f}, min {min(deltas):.2f}")


def conv_input_gradients(model: LoadedModel, rounds: int, batch: int) -> None:
    """Conv2d.backward with needs (x only) for each conv layer of the model at ``batch``."""
    if not hasattr(model.module, "convs"):
        return  # an MLP
    dx_block, cases, size = autodiff.conv.DX_BLOCK, [], model.module.image_size
    for k, conv in enumerate(model.module.convs):
        rng = np.random.default_rng(k)
        weights = conv.W.value
        x = rng.standard_normal((batch, weights.shape[1], size, size)).astype(np.float32)
        out, saved = Conv2d.forward(x, weights, conv.b.value, 1, conv.padding)
        g = out.copy(order="K")  # any gradient, in the memory order the next layer gives it
        cases.append((f"conv {k} {tuple(x.shape[1:])}", saved, g))
        size = (size + 2 * conv.padding - weights.shape[2] + 1) // model.module.pool
    print(f"input gradient alone, CPU ms per call at batch {batch}: median of {rounds} rounds")
    for name, saved, g in cases:
        times = {"BLOCK": [], "DX_BLOCK": []}
        for r in range(rounds):
            for label in (["BLOCK", "DX_BLOCK"] if r % 2 == 0 else ["DX_BLOCK", "BLOCK"]):
                autodiff.conv.DX_BLOCK = autodiff.conv.BLOCK if label == "BLOCK" else dx_block
                started = time.process_time()
                for _ in range(20):
                    Conv2d.backward(saved, g, [True, False, False])
                times[label].append(1e3 * (time.process_time() - started) / 20)
        autodiff.conv.DX_BLOCK = dx_block
        old, new = (statistics.median(times[k]) for k in ("BLOCK", "DX_BLOCK"))
        print(f"  {name}: BLOCK {old:.3f}, DX_BLOCK {new:.3f} ({old / new:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model file (python -m trainer)")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"),
                        help="the MNIST IDX files (default: $MNIST_DIR)")
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--images", type=int, default=50, help="timed images per round")
    parser.add_argument("--completeness-images", type=int, default=500)
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("pass --data-dir DIR (the MNIST files) or set MNIST_DIR")
    model = LoadedModel(args.model)
    test = load_mnist(args.data_dir, allow_download=False).test
    images = test.images.astype(np.float32)
    print(f"model {args.model} ({model.module!r}); one BLAS thread; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with threadpool_limits(limits=1):
        cost(model, images[: args.images], args.steps, args.rounds)
        completeness(model, images[: args.completeness_images], args.steps)
        conv_input_gradients(model, args.rounds, DEFAULT_STEPS + 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
