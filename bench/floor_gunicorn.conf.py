"""The serving config of bench/serve.py (BENCH_BASE_CONFIG, default the repo's gunicorn.conf.py)
with /predict's own work removed: the upload pipeline returns a fixed 28x28 digit and the model
fixed probabilities. Everything else is the real service: gunicorn, Flask, the routes, body
reading, limits, metrics, JSON. ``bench/serve.py --floor`` measures /predict on it: what a
prediction would cost if decoding and the model were free, so the highest the /predict to
/healthz throughput ratio can be on this stack. For benchmarks only.
"""

import os
import runpy

import numpy as np

import server.imaging
import server.model

_base = os.environ.get("BENCH_BASE_CONFIG") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gunicorn.conf.py")
globals().update({k: v for k, v in runpy.run_path(_base).items() if not k.startswith("__")})

_DIGIT = np.zeros((28, 28), dtype=np.float32)
_DIGIT[4:24, 13:15] = 1.0


def _fixed_image(data: bytes, *, max_pixels: int = 0) -> np.ndarray:
    return _DIGIT


def _fixed_probabilities(self, images: np.ndarray) -> np.ndarray:
    return np.full((len(images), 10), 0.1)


server.imaging.to_mnist = _fixed_image
server.model.LoadedModel.predict = _fixed_probabilities
