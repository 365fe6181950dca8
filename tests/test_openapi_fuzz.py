"""Property-based fuzzing of every route from the OpenAPI description (schemathesis), and of
the V2 infer routes with malformed JSON: whatever arrives, the answer is one the description
documents (status, content type, schema), never a 5xx."""

from __future__ import annotations

import json

import pytest
import schemathesis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from server import create_app, v2
from server.app import load_settings
from server.bodies import FRAMING_BYTES
from server.openapi import openapi_document

# Sent as raw bytes like the image types schemathesis knows (PNG, JPEG, GIF, WebP)
schemathesis.serializer.alias(["image/bmp", "image/tiff"], "application/octet-stream")
#: The description as the app serves it (limits from the defaults, as in the app below).
SCHEMA = schemathesis.openapi.from_dict(openapi_document(load_settings({"MODEL_PATH": "-"})))
#: Examples per operation: ~20 operations, ~1 s each at this count on a loaded 2-core machine.
FUZZ = settings(max_examples=25, derandomize=True, deadline=None,
                suppress_health_check=list(HealthCheck))


class BufferedClient(FlaskClient):
    """The test client, closing each response once read (schemathesis' WSGI transport leaves
    a static file's open, which pytest reports as an unraisable ResourceWarning), and writing
    JSON bodies with the json module (the app's orjson cannot write integers past 64 bits,
    which a client may send)."""

    def open(self, *args, **kwargs):
        kwargs["buffered"] = True
        if "json" in kwargs:
            kwargs["data"] = json.dumps(kwargs.pop("json"))
            kwargs.setdefault("content_type", "application/json")
        return super().open(*args, **kwargs)


@pytest.fixture(scope="module")
def app(shared_tiny_model_path):
    """One app for the module (a request changes nothing but its metrics): the tiny model,
    default limits, responses closed once read."""
    app = create_app({"MODEL_PATH": str(shared_tiny_model_path), "TESTING": True})
    app.test_client_class = BufferedClient
    assert app.test_client().get("/openapi.json").get_json() == SCHEMA.raw_schema
    return app


@SCHEMA.parametrize()
@FUZZ
def test_every_route_answers_as_described(app, case):
    # Excluded: "valid data is accepted" (a valid upload may be blank: 422 no_digit_found) and
    # "invalid data is refused with 400/422" (too many files is a documented 413).
    case.call_and_validate(app=app, session=app.test_client(),
                           excluded_checks=[positive_data_acceptance, negative_data_rejection])


# --- V2 infer with malformed JSON: types, encodings, sizes, depth ----------------------------

INFER = ["/v2/models/digitgrad/infer", "/v2/models/digitgrad-image/infer"]
TENSORS = {"pixels": ("FP32", [1, 28, 28], [0.0] * 784), "image": ("BYTES", [1], ["x"])}

json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=False) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


def v2_request(input_name: str, **replaced) -> dict:
    """A valid request for the input, with some of its fields replaced."""
    datatype, shape, data = TENSORS[input_name]
    tensor = {"name": input_name, "datatype": datatype, "shape": shape, "data": data}
    tensor.update({k: v for k, v in replaced.items() if k in tensor or k == "parameters"})
    query = {"inputs": [tensor], "outputs": [{"name": "digit"}]}
    query.update({k: v for k, v in replaced.items() if k in ("id", "inputs", "outputs")})
    return query


def assert_v2_refusal(response) -> None:
    """200, or a 4xx in the protocol's envelope; never a 5xx, never a traceback."""
    assert response.status_code < 500, response.get_data()[:300]
    assert response.mimetype in ("application/json", "application/octet-stream")
    if response.status_code >= 400:
        assert isinstance(response.get_json()["error"], str)


@FUZZ
@given(route=st.sampled_from(INFER), field=st.sampled_from(
    ["name", "datatype", "shape", "data", "parameters", "id", "inputs"]), value=json_values)
def test_v2_fields_of_any_json_type_are_refused_cleanly(app, route, field, value):
    input_name = "pixels" if route == INFER[0] else "image"
    body = json.dumps(v2_request(input_name, **{field: value})).encode()
    assert_v2_refusal(app.test_client().post(route, data=body, content_type="application/json"))


@FUZZ
@given(route=st.sampled_from(INFER), body=st.one_of(
    st.binary(max_size=200),                                   # any bytes, invalid UTF-8 included
    st.text(max_size=200).map(lambda t: t.encode("utf-16")),    # another encoding, with a BOM
    json_values.map(lambda v: json.dumps(v).encode()),         # JSON that is not a request
    st.integers(0, 120).map(lambda n: json.dumps(v2_request("pixels")).encode()[:n]),
))
def test_v2_bodies_that_are_not_requests_are_refused_cleanly(app, route, body):
    assert_v2_refusal(app.test_client().post(route, data=body, content_type="application/json"))


def test_v2_json_at_and_past_the_size_limit(app):
    client = app.test_client()
    limit = app.config["MAX_TENSOR_IMAGES"] * v2.IMAGE_JSON_BYTES + FRAMING_BYTES
    padded = json.dumps(v2_request("pixels")).encode()
    padded = padded[:-1] + b" " * (limit - len(padded)) + b"}"  # exactly the limit: parsed
    assert client.post(INFER[0], data=padded).status_code == 200
    response = client.post(INFER[0], data=padded + b" ")
    assert response.status_code == 413 and f"limit of {limit} bytes" in (
        response.get_json()["error"])


@pytest.mark.parametrize("route", INFER)
def test_v2_deep_nesting_is_a_400(app, route):
    nested = "[" * 100_000 + "]" * 100_000
    body = json.dumps(v2_request("pixels" if route == INFER[0] else "image"))
    body = body.replace('"data": ', f'"data": {nested}, "unused": ', 1).encode()
    response = app.test_client().post(route, data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data()[:300]


@pytest.mark.parametrize("name", [["digit"], {"name": "digit"}])
def test_v2_output_name_of_another_type_is_a_400(app, name):
    body = {**v2_request("pixels"), "outputs": [{"name": name}]}
    response = app.test_client().post(INFER[0], data=json.dumps(body))
    assert response.status_code == 400, response.get_data()[:300]


def test_v2_bytes_element_with_a_lone_surrogate_is_a_400(app):
    body = json.dumps(v2_request("image", data=["\ud800"])).encode()
    response = app.test_client().post(INFER[1], data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data()[:300]
