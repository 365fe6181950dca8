"""Seldon's MLServer around our model, for bench/peers.py to compare against.

Imported by MLServer (a bench-only dependency, never a runtime one) in the interpreter given
as bench/peers.py's --mlserver-python, with the repository on PYTHONPATH; the model-settings
file bench/peers.py writes names ``bench.mlserver_model.DigitgradModel`` and the model file.

The ``digitgrad`` model takes ``pixels`` FP32 [N, 28, 28] in [0, 1] and answers
``probabilities`` FP32 [N, 10] and ``digit`` INT64 [N], like our V2 ``digitgrad`` model.
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from server.model import LoadedModel


class DigitgradModel(MLModel):
    """Our LoadedModel behind MLServer's MLModel: the same predict as our server's."""

    async def load(self) -> bool:
        """Load the model file once per worker; MLServer serves only ready models."""
        self.model = LoadedModel(self.settings.parameters.uri)
        self.ready = self.model.self_test()
        return self.ready

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Probabilities and digits of the batch of pixels."""
        pixels = NumpyCodec.decode_input(payload.inputs[0]).reshape(-1, 28, 28)
        probabilities = self.model.predict(pixels).astype(np.float32)
        digits = probabilities.argmax(axis=1).astype(np.int64)
        return InferenceResponse(
            id=payload.id, model_name=self.name, model_version=self.model.model_id,
            outputs=[NumpyCodec.encode_output("probabilities", probabilities),
                     NumpyCodec.encode_output("digit", digits)])
