"""One training step of DeepNetwork(784, 10, 100, 2): digitgrad vs hand-written numpy, side by side.

Each step is forward, mean cross-entropy, backward and a momentum update, float32, on a fixed
random batch. The two implementations alternate in one process (round robin), with one BLAS
thread, so machine noise hits both alike; the figure that matters is the ratio of medians.

    python -m bench.engine [--batch-sizes 64 256] [--rounds 30] [--steps 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from autodiff import SGDWithMomentum, cross_entropy
from models import DeepNetwork

LR, MOMENTUM = 0.01, 0.9


class HandWritten:
    """The same MLP with forward, backward and update written out in numpy: the floor."""

    def __init__(self, sizes, rng):
        self.W = []
        self.b = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            self.W.append(rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out)).astype(np.float32))
            self.b.append(np.zeros((1, fan_out), np.float32))
        self.params = self.W + self.b
        self.velocities = [np.zeros_like(p) for p in self.params]

    def step(self, x, y):
        n = len(self.W)
        hs = [x]
        for i in range(n):
            z = hs[-1] @ self.W[i] + self.b[i]
            hs.append(np.maximum(z, 0) if i < n - 1 else z)
        logits = hs[-1]
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        rows = np.arange(len(y))
        loss = -logp[rows, y].mean()
        g = np.exp(logp)
        g[rows, y] -= 1
        g /= len(y)
        grads_w, grads_b = [None] * n, [None] * n
        for i in reversed(range(n)):
            grads_w[i] = hs[i].T @ g
            grads_b[i] = g.sum(axis=0, keepdims=True)
            if i:
                g = (g @ self.W[i].T) * (hs[i] > 0)
        for p, v, grad in zip(self.params, self.velocities, grads_w + grads_b):
            v *= MOMENTUM
            v -= LR * grad
            p += v
        return loss


class Engine:
    """digitgrad: the model, the loss and the optimizer as a user writes them."""

    def __init__(self, rng):
        self.model = DeepNetwork(784, 10, 100, 2, rng=rng)
        self.optimizer = SGDWithMomentum(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def step(self, x, y):
        self.optimizer.zero_grad()
        loss = cross_entropy()(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.value


def measure(batch: int, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per step of each implementation over interleaved rounds."""
    rng = np.random.default_rng(0)
    x = rng.random((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    contenders = {"numpy": HandWritten([784, 100, 100, 10], rng), "digitgrad": Engine(rng)}
    times = {name: [] for name in contenders}
    for contender in contenders.values():  # warm up caches and BLAS
        for _ in range(steps):
            contender.step(x, y)
    for _ in range(rounds):
        for name, contender in contenders.items():
            start = time.perf_counter()
            for _ in range(steps):
                contender.step(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (median taken)")
    parser.add_argument("--steps", type=int, default=50, help="steps per round")
    args = parser.parse_args(argv)
    targets = {64: 1.3, 256: 1.1}
    with threadpool_limits(limits=1):
        for batch in args.batch_sizes:
            t = measure(batch, args.rounds, args.steps)
            ratio = t["digitgrad"] / t["numpy"]
            target = f" (target <= {targets[batch]}x)" if batch in targets else ""
            print(f"batch {batch:4d}: numpy {t['numpy'] * 1e3:.3f} ms/step, "
                  f"digitgrad {t['digitgrad'] * 1e3:.3f} ms/step, ratio {ratio:.2f}x{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
