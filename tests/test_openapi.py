"""GET /openapi.json describes exactly the app's routes, and real answers fit its schemas."""

from __future__ import annotations

import re

import pytest
from drawing import digit_png

IGNORED_METHODS = {"HEAD", "OPTIONS"}  # added by Flask to every GET route


@pytest.fixture
def app(make_app):
    return make_app(MAX_BATCH_FILES=7)


@pytest.fixture
def doc(app):
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def flask_routes(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) for every rule: <converter:name> becomes {name}."""
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes |= {(path, m) for m in rule.methods - IGNORED_METHODS}
    return routes


def documented_routes(doc: dict) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}


def test_document_lists_exactly_the_routes(app, doc):
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert documented_routes(doc) == flask_routes(app)


def all_refs(node):
    """Every "$ref" value anywhere in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_refs(value)


def error_schemas(path: str, status: str) -> set[str]:
    """The envelope, or on /v2 the protocol's {"error": "..."} (its readiness: "ready": false)."""
    if not path.startswith("/v2"):
        return {"Error"}
    return {"V2Error", "V2Ready", "V2ModelReady"} if status == "503" else {"V2Error"}


def test_every_operation_answers_and_every_ref_resolves(doc):
    schemas = doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["summary"], (path, method)
            assert "200" in op["responses"], (path, method)
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.rsplit("/", 1)[1] in error_schemas(path, status), (path, status)
    refs = set(all_refs(doc))
    assert refs and refs <= {f"#/components/schemas/{name}" for name in schemas}


def test_document_carries_the_configured_limits(doc):
    batch = doc["paths"]["/predict/batch"]["post"]
    schema = batch["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["images"]["maxItems"] == 7
    assert "image/png" in doc["paths"]["/predict"]["post"]["requestBody"]["content"]


def required_fields_present(schema: dict, value: dict) -> None:
    missing = set(schema["required"]) - set(value)
    assert not missing, f"answer lacks documented fields {missing}"
    assert set(value) <= set(schema["properties"]), "answer has undocumented fields"


def test_real_answers_fit_the_schemas(app, doc):
    schemas = doc["components"]["schemas"]
    client = app.test_client()
    prediction = client.post("/predict?debug=1&explain=1", data=digit_png(),
                             content_type="image/png").get_json()
    required_fields_present(schemas["Prediction"], prediction)
    shape = schemas["Prediction"]["properties"]["attributions"]
    assert len(prediction["attributions"]) == shape["minItems"] == shape["maxItems"]
    assert {len(row) for row in prediction["attributions"]} == {shape["items"]["minItems"]}
    number = client.post("/predict/number?debug=1", data=digit_png(),
                         content_type="image/png").get_json()
    required_fields_present(schemas["NumberPrediction"], number)
    for digit in number["digits"]:
        required_fields_present(schemas["NumberPrediction"]["properties"]["digits"]["items"],
                                digit)
    required_fields_present(schemas["ModelInfo"], client.get("/model").get_json())
    required_fields_present(schemas["Status"], client.get("/readyz").get_json())
    error = client.post("/predict", data=b"x", content_type="text/plain").get_json()
    required_fields_present(schemas["Error"], error)
    required_fields_present(schemas["Error"]["properties"]["error"], error["error"])
    code_doc = schemas["Error"]["properties"]["error"]["properties"]["code"]["description"]
    assert error["error"]["code"] in code_doc


def test_real_v2_answers_fit_the_schemas(app, doc):
    schemas = doc["components"]["schemas"]
    client = app.test_client()
    model_id = client.get("/model").get_json()["id"]
    for path, schema in [("/v2", "V2ServerMetadata"), ("/v2/health/live", "V2Live"),
                         ("/v2/health/ready", "V2Ready"),
                         ("/v2/models/digitgrad", "V2ModelMetadata"),
                         (f"/v2/models/digitgrad-image/versions/{model_id}", "V2ModelMetadata"),
                         ("/v2/models/digitgrad/ready", "V2ModelReady"),
                         ("/v2/models/mnist", "V2Error")]:
        required_fields_present(schemas[schema], client.get(path).get_json())
    query = {"id": "1", "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 28, 28],
                                    "data": [0.0] * 784}], "outputs": [{"name": "digit"}]}
    required_fields_present(schemas["V2InferenceRequest"], query)
    answer = client.post("/v2/models/digitgrad/infer", json=query).get_json()
    required_fields_present(schemas["V2InferenceResponse"], answer)
    output = schemas["V2InferenceResponse"]["properties"]["outputs"]["items"]
    required_fields_present(output, answer["outputs"][0])
