"""GET /openapi.json describes exactly the app's routes, and real answers fit its schemas."""

from __future__ import annotations

import re

import pytest
from drawing import digit_png

from server import create_app

IGNORED_METHODS = {"HEAD", "OPTIONS"}  # added by Flask to every GET route


@pytest.fixture
def app(tiny_model_path):
    return create_app({"MODEL_PATH": str(tiny_model_path), "MAX_BATCH_FILES": 7})


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


def test_every_operation_answers_and_every_ref_resolves(doc):
    schemas = doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["summary"], (path, method)
            assert "200" in op["responses"], (path, method)
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Error", (path, method, status)
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
    prediction = client.post("/predict?debug=1", data=digit_png(), content_type="image/png")
    required_fields_present(schemas["Prediction"], prediction.get_json())
    required_fields_present(schemas["ModelInfo"], client.get("/model").get_json())
    required_fields_present(schemas["Status"], client.get("/readyz").get_json())
    error = client.post("/predict", data=b"x", content_type="text/plain").get_json()
    required_fields_present(schemas["Error"], error)
    required_fields_present(schemas["Error"]["properties"]["error"], error["error"])
    code_doc = schemas["Error"]["properties"]["error"]["properties"]["code"]["description"]
    assert error["error"]["code"] in code_doc
