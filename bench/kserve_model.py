"""KServe's own Python model server around our model, for bench.peers to compare against.

Runs under an interpreter that has the ``kserve`` package (a bench-only dependency, never a
runtime one: bench.peers's --kserve-python), with the repository on its path:

    PYTHONPATH=. python -m bench.kserve_model --model model.npz --http_port 8080 --workers 2

The ``digitgrad`` model takes ``pixels`` FP32 [N, 28, 28] in [0, 1] and answers
``probabilities`` FP32 [N, 10] and ``digit`` INT64 [N], like our V2 ``digitgrad`` model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import kserve
import numpy as np
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid

from server.model import LoadedModel


def listen_on_loopback() -> None:
    """KServe binds uvicorn to 0.0.0.0 unconditionally; a benchmark stays on 127.0.0.1."""
    init = uvicorn.Config.__init__

    def loopback_init(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "host": "127.0.0.1"})

    uvicorn.Config.__init__ = loopback_init


class DigitgradModel(kserve.Model):
    """Our LoadedModel behind kserve.Model: the same predict as our server's."""

    def __init__(self, name: str, path: Path):
        super().__init__(name)
        self.path = path
        self.model: LoadedModel | None = None
        self.load()

    def load(self) -> bool:
        """Load the model file once; KServe serves only ready models."""
        self.model = LoadedModel(self.path)
        self.ready = self.model.self_test()
        return self.ready

    def predict(self, payload: InferRequest, headers: dict | None = None,
                response_headers: dict | None = None) -> InferResponse:
        """Probabilities and digits of the batch of pixels."""
        pixels = payload.inputs[0].as_numpy().reshape(-1, 28, 28)
        probabilities = self.model.predict(pixels).astype(np.float32)
        digits = probabilities.argmax(axis=1).astype(np.int64)
        outputs = [InferOutput("probabilities", list(probabilities.shape), "FP32", probabilities),
                   InferOutput("digit", list(digits.shape), "INT64", digits)]
        # KServe's response needs an id; its own model servers make one up when none came.
        return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name,
                             infer_outputs=outputs, model_version=self.model.model_id)


if __name__ == "__main__":
    # KServe parses its own flags (--http_port, --workers, ...) from sys.argv at import.
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser], add_help=False)
    parser.add_argument("--model", type=Path, required=True)
    args, _ = parser.parse_known_args()
    listen_on_loopback()
    kserve.ModelServer(workers=args.workers, enable_grpc=False).start(
        [DigitgradModel("digitgrad", args.model)])
