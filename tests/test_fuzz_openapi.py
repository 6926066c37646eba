"""Schema-driven fuzzing of the running server with schemathesis: every operation of the
service's own OpenAPI document, with generated valid (positive) and invalid (negative)
parameters and bodies.

Checks: never a 5xx, invalid input is refused with a 4xx, and every answer conforms to the
document (documented status codes, content types, headers and JSON bodies). Bounded: a fixed
number of derandomised examples per operation and mode, against the tiny model.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import Server, running_server, write_tiny_model

EXAMPLES = 40  # per operation and generation mode
OPERATIONS = [
    ("POST", "/segment"),
    ("GET", "/models"),
    ("GET", "/models/{name}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz")
    write_tiny_model(root / "models")
    # A small body limit keeps generated uploads cheap and exercises the 413 path too.
    env = {"SEGSERVE_MODEL_REPOSITORY": str(root / "models"), "SEGSERVE_MAX_BODY_BYTES": "65536"}
    with running_server(env, root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")


def test_every_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    documented = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert documented == set(OPERATIONS)


# Negative data needs something that can be invalid: only /segment has constrained inputs.
CASES = [(method, path, GenerationMode.POSITIVE) for method, path in OPERATIONS] + [
    ("POST", "/segment", GenerationMode.NEGATIVE)
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_server_error_and_answers_match_the_schema(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=30)

    fuzz()


def test_the_server_survived_the_fuzzing(server: Server) -> None:
    with server.client() as client:
        assert client.get("/readyz").status_code == 200
    assert server.process.poll() is None
    assert "Traceback" not in server.log()  # no unhandled error on the way
