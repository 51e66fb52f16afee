"""Fuzzing a real service from its own OpenAPI description (schemathesis): no 5xx, every answer as documented.

The service (v1.0, tiny release, with an API key) publishes `/openapi.json`; schemathesis
generates valid and invalid requests from it (hypothesis drives each operation here: its
pytest plugin does not run on this pytest) and checks each response: no server error, a
documented status code, content type, headers and body schema. CI runs KOKORO_FUZZ_EXAMPLES
cases per operation and mode (a minute in all); `make fuzz` runs many more.
"""
import os

from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
import pytest
import schemathesis

from conftest import deploy, project_app_config

KEY = "sk-fuzz"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = int(os.environ.get("KOKORO_FUZZ_EXAMPLES", "15"))
# Not `positive_data_acceptance`: a schema-valid voice name may still name no voice (a 400, as documented).
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def url(serve_url, release) -> str:
    # A small input limit keeps each generated request's synthesis quick.
    deploy(project_app_config(model_root=str(release.root), weights="local", versions=["v1.0"],
                              configs={"v1.0": release.configs["v1.0"]}, api_key=KEY, max_input_chars=300))
    return serve_url


@pytest.fixture(scope="module")
def api_schema(url):
    return schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors_and_every_response_as_documented(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]  # every route the service documents
    assert {"POST /v1/audio/speech", "GET /v1/models"} <= {operation.label for operation in operations}
    for operation in operations:
        takes_input = len(operation.body) > 0 or any(True for _ in operation.iter_parameters())
        if takes_input or mode is GenerationMode.POSITIVE:  # nothing to send wrong to `GET /health`
            fuzz_operation(operation, mode)


def fuzz_operation(operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=120)

    fuzz()
