# ruff: noqa: N999 - a gunicorn config file (named like gunicorn.conf.py), never imported
"""The serving config of ``python -m bench.serve`` (BENCH_BASE_CONFIG, default the repo's
gunicorn.conf.py) with /predict's own work removed: the upload pipeline returns a fixed 28x28
digit and the model fixed probabilities. Everything else is the real service: gunicorn, Flask,
the routes, body reading, limits, the compute slot, metrics, JSON. ``python -m bench.serve
--floor`` measures /predict on it: what a prediction would cost if decoding and the model were
free, so the highest the /predict to /healthz throughput ratio can be on this stack. For
benchmarks only.

The work is replaced through the inference service's seam (``server.inference.Inference``:
``transform`` and ``forward``), in each worker once the app is loaded.
"""

import os
import runpy

import numpy as np

from models.decision import Scores, scores

_base = os.environ.get("BENCH_BASE_CONFIG") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gunicorn.conf.py")
globals().update({k: v for k, v in runpy.run_path(_base).items() if not k.startswith("__")})

_DIGIT = np.zeros((28, 28), dtype=np.float32)
_DIGIT[4:24, 13:15] = 1.0


def _fixed_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    return _DIGIT


def _fixed_probabilities(model, images: np.ndarray) -> Scores:
    return scores(np.zeros((len(images), 10)), None)


def post_worker_init(worker):
    """The worker's app (worker.wsgi) answers /predict with the constants above."""
    from server.state import get_serving

    inference = get_serving(worker.wsgi).inference
    inference.transform = _fixed_image
    inference.forward = _fixed_probabilities
