"""A ConvNetwork training step and batch-1 inference: digitgrad vs PyTorch (CPU), side by side.

A training step is forward, mean cross-entropy, backward and a momentum update, float32, on a
fixed random batch; inference is one 28x28 image without gradients. Both frameworks get the
same network (same weights), one thread each, and alternate in one process (round robin, the
order swapped every round), so machine noise hits both alike: the figure that matters is the
ratio of the medians (targets: training <= 1.2x, batch-1 inference < 1x). Steps are timed in
CPU time of the process (``time.process_time``), which a busy machine inflates far less than
wall time: time spent descheduled is not counted.

    python -m bench.cnn [--configs default lenet wide] [--batch-sizes 64 128] [--rounds 15]
                        [--steps 20] [--profile CONFIG]

torch is an optional benchmark dependency (``pip install torch==2.13.0``): without it the
benchmark says so and exits 0. ``--profile`` prints where one config's training step spends
its time (cProfile, our side only).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time

import numpy as np

from autodiff import SGDWithMomentum, cross_entropy, no_grad, reuse_freed_memory
from models import ConvNetwork

LR, MOMENTUM = 0.01, 0.9

#: candidate architectures (ConvNetwork keyword arguments), by name
CONFIGS = {
    # the trainer's default (trainer/config.py) and its recipe (README)
    "default": {"channels": (8, 16), "kernel_sizes": (5, 5), "paddings": (2, 0),
                "hidden_dims": (120, 84)},
    "recipe": {"channels": (12, 24), "kernel_sizes": (5, 5), "paddings": (2, 0),
               "hidden_dims": (128,)},
    "lenet": {"channels": (6, 16), "kernel_sizes": (5, 5), "paddings": (2, 0),
              "hidden_dims": (120, 84)},
    "8-16": {"channels": (8, 16), "kernel_sizes": (5, 5), "paddings": (2, 0),
             "hidden_dims": (128,)},
    "wide": {"channels": (16, 32), "kernel_sizes": (5, 5), "paddings": (2, 2),
             "hidden_dims": (128,)},
    "3x3": {"channels": (32, 64), "kernel_sizes": (3, 3), "paddings": (1, 1),
            "hidden_dims": (128,)},
}


def torch_twin(torch, model: ConvNetwork):
    """The same network in torch.nn, with a copy of ``model``'s weights."""
    nn = torch.nn
    layers = []
    for conv in model.convs:
        f, c, k, _ = conv.W.value.shape
        layer = nn.Conv2d(c, f, k, padding=conv.padding)
        layer.weight.data = torch.from_numpy(conv.W.value.copy())
        layer.bias.data = torch.from_numpy(conv.b.value.copy())
        layers += [layer, nn.ReLU()]
        if model.pool > 1:
            layers.append(nn.MaxPool2d(model.pool))
    layers.append(nn.Flatten())
    for i, dense in enumerate(model.layers):
        fan_in, fan_out = dense.W.value.shape
        layer = nn.Linear(fan_in, fan_out)
        layer.weight.data = torch.from_numpy(dense.W.value.T.copy())
        layer.bias.data = torch.from_numpy(dense.b.value[0].copy())
        layers.append(layer)
        if i < len(model.layers) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def contenders(torch, kwargs: dict, batch: int):
    """(training step, batch-1 inference) callables for ours and torch's, on fixed data."""
    rng = np.random.default_rng(0)
    model = ConvNetwork(**kwargs, rng=rng)
    net = torch_twin(torch, model)
    x = rng.standard_normal((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    x1 = x[:1].copy()
    optimizer = SGDWithMomentum(model.parameters(), lr=LR, momentum=MOMENTUM)
    torch_optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x.reshape(-1, 1, 28, 28)), torch.from_numpy(y)
    tx1 = torch.from_numpy(x1.reshape(1, 1, 28, 28))

    def ours_step():
        optimizer.zero_grad()
        cross_entropy()(model(x), y).backward()
        optimizer.step()

    def torch_step():
        torch_optimizer.zero_grad(set_to_none=True)
        loss_fn(net(tx), ty).backward()
        torch_optimizer.step()

    def ours_infer():
        with no_grad():
            return model(x1).value.argmax()

    def torch_infer():
        with torch.inference_mode():
            return net(tx1).argmax().item()

    return {"ours": ours_step, "torch": torch_step}, {"ours": ours_infer, "torch": torch_infer}


def interleaved(functions: dict, rounds: int, steps: int) -> dict[str, float]:
    """Median CPU seconds per call of each function, in rounds alternating which goes first."""
    times = {name: [] for name in functions}
    for fn in functions.values():  # warm up caches, allocators and BLAS
        for _ in range(steps):
            fn()
    names = list(functions)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = functions[name]
            for _ in range(steps):
                start = time.process_time()
                fn()
                times[name].append(time.process_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def profile(torch, kwargs: dict, batch: int, steps: int) -> None:
    """Print the functions where our training step spends its time."""
    step = contenders(torch, kwargs, batch)[0]["ours"]
    step()
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cnn",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--profile", choices=list(CONFIGS), help="profile this config instead")
    args = parser.parse_args(argv)
    try:
        import torch
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        print(f"skipped: {exc.name} is not installed (pip install torch==2.13.0 threadpoolctl)")
        return 0
    torch.set_num_threads(1)
    reuse_freed_memory()  # as the trainer does: no page faults on every step's fresh arrays
    with threadpool_limits(1):
        if args.profile:
            profile(torch, CONFIGS[args.profile], args.batch_sizes[0], args.steps * 5)
            return 0
        print(f"one thread each, median of {args.rounds}x{args.steps} steps; torch "
              f"{torch.__version__}, numpy {np.__version__}")
        for name in args.configs:
            for i, batch in enumerate(args.batch_sizes):
                train, infer = contenders(torch, CONFIGS[name], batch)
                t = interleaved(train, args.rounds, args.steps)
                print(f"{name:>6} batch {batch:4d}: train ours {t['ours'] * 1e3:7.2f} ms/step, "
                      f"torch {t['torch'] * 1e3:7.2f} ms/step, ratio "
                      f"{t['ours'] / t['torch']:.2f}x (target <= 1.2x)")
                if i == 0:
                    t = interleaved(infer, args.rounds, args.steps * 5)
                    print(f"{name:>6} batch    1: infer ours {t['ours'] * 1e6:7.0f} µs, torch "
                          f"{t['torch'] * 1e6:7.0f} µs, ratio {t['ours'] / t['torch']:.2f}x "
                          "(target < 1x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
