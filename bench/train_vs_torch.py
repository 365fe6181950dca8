"""Per-epoch training time of our trainer vs PyTorch (CPU), same network, same batches, one
thread each.

    python -m bench.train_vs_torch [--data-dir DIR] [--repeats 5] [--batch-size 64]
                                   [--arch cnn|mlp] [--hidden-dim 128 192 256]

Epochs of ours and of torch alternate in one process (ours first on even rounds, torch first on
odd ones), so that machine noise hits both alike; the medians and their ratio are printed.
Ours is ``trainer.loop.train_epoch``, exactly what ``python -m trainer`` runs; torch gets the
same permutation and the same float32 arrays. torch is an optional benchmark dependency
(``pip install torch==2.13.0``): without it the benchmark says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from models import preprocessing_config
from trainer.config import TrainConfig
from trainer.data import DataError, load_mnist
from trainer.factory import build_model, build_optimizer, build_schedule
from trainer.loop import Session, StopFlag, prepare, train_epoch
from trainer.report import Progress


def torch_epoch(torch, net, optimizer, loss_fn, x, y, batch_size: int, order: np.ndarray) -> None:
    """One epoch of the textbook PyTorch loop over the same shuffled batches.

    Each batch's rows are gathered when needed, as ours are (a shuffled copy of the whole set
    per epoch costs both sides page faults that vary with the machine's memory pressure).
    """
    ys = torch.from_numpy(y[order])
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        xb, yb = torch.from_numpy(x[rows]), ys[start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb)
        loss.backward()
        optimizer.step()


def build_torch(torch, config: TrainConfig):
    """The same architecture as ``build_model(config)``, taking the same flat (N, 784) rows."""
    nn = torch.nn
    if config.arch == "mlp":
        layers, width, hidden = [], 784, [config.hidden_dim] * config.layers
    else:
        layers, size, channels = [nn.Unflatten(1, (1, 28, 28))], 28, 1
        for c, k, p in zip(config.channels, config.kernel_sizes, config.paddings):
            layers += [nn.Conv2d(channels, c, k, padding=p), nn.ReLU(), nn.MaxPool2d(2)]
            size, channels = (size + 2 * p - k + 1) // 2, c
        layers.append(nn.Flatten())
        width, hidden = channels * size * size, list(config.hidden_dims)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, 10))
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    return net, optimizer, torch.nn.CrossEntropyLoss()


def bench(torch, data, config: TrainConfig, repeats: int) -> tuple[float, float]:
    """Median seconds per epoch: (ours, torch)."""
    model = build_model(config)
    session = Session(model, build_optimizer(model, config), config)
    schedule = build_schedule(config, -(-len(data.train_y) // config.batch_size))
    state, quiet, stop = session.state, Progress(quiet=True), StopFlag()
    torch.manual_seed(config.seed)
    net, torch_optimizer, loss_fn = build_torch(torch, config)
    ours, theirs = [], []

    def run_ours():
        start = time.perf_counter()
        train_epoch(session, data, schedule, quiet, stop)
        ours.append(time.perf_counter() - start)
        state.epoch, state.batch, state.partial = state.epoch + 1, 0, {}

    def run_torch(epoch: int):
        order = np.random.default_rng([config.seed, epoch]).permutation(len(data.train_y))
        start = time.perf_counter()
        torch_epoch(torch, net, torch_optimizer, loss_fn, data.train_x, data.train_y,
                    config.batch_size, order)
        theirs.append(time.perf_counter() - start)

    run_ours()  # warm-up epoch for both (allocator, caches), not timed in the medians
    run_torch(0)
    ours.clear()
    theirs.clear()
    for r in range(repeats):
        if r % 2 == 0:
            run_ours()
            run_torch(r + 1)
        else:
            run_torch(r + 1)
            run_ours()
    return statistics.median(ours), statistics.median(theirs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_vs_torch",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MNIST IDX files (default: $MNIST_DIR or the cache)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per framework")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=None, help="images per epoch")
    parser.add_argument("--arch", choices=("cnn", "mlp"), default="cnn",
                        help="the default CNN, or an MLP of each --hidden-dim")
    parser.add_argument("--hidden-dim", type=int, nargs="+", metavar="N",
                        help="mlp: time an MLP of each of these hidden_dim values (two hidden "
                             "layers each), e.g. to find where the ratio crosses a target; "
                             "default: the default MLP and 2x100")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("skipped: torch is not installed (pip install torch==2.13.0 for this benchmark)")
        return 0
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("skipped: threadpoolctl is not installed (pip install 'digitgrad[bench]')")
        return 0
    try:
        mnist = load_mnist(args.data_dir)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    train = mnist.train
    if args.train_size:
        train = type(train)(train.images[: args.train_size], train.labels[: args.train_size])
    pre = preprocessing_config(float(train.images.mean()), float(train.images.std()))
    data = prepare(train, mnist.val, pre, augment=None)
    torch.set_num_threads(1)
    default = TrainConfig(batch_size=args.batch_size, arch="mlp")
    widths = args.hidden_dim or [default.hidden_dim, 100]
    # without augmentation: it runs on another thread, and torch would get none to compare with
    if args.arch == "mlp":
        configs = [TrainConfig(batch_size=args.batch_size, arch="mlp", hidden_dim=w,
                               augment=False) for w in widths]
    else:
        configs = [TrainConfig(batch_size=args.batch_size, augment=False)]
    print(f"{len(train):,} images per epoch, batch {args.batch_size}, momentum SGD, one thread "
          f"each, median of {args.repeats} epochs; torch {torch.__version__}, numpy "
          f"{np.__version__}")
    with threadpool_limits(1):
        for config in configs:
            ours, theirs = bench(torch, data, config, args.repeats)
            if config.arch == "cnn":
                label = "CNN " + ",".join(map(str, config.channels)) + " (default)"
            else:
                shape = "-".join(["784"] + [str(config.hidden_dim)] * config.layers + ["10"])
                label = shape + (" (default MLP)" if config.hidden_dim == default.hidden_dim
                                 else "")
            print(f"{label:<28} ours {ours:6.3f} s/epoch   torch {theirs:6.3f} s/epoch   "
                  f"ratio ours/torch {ours / theirs:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
