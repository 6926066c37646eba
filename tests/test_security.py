"""API keys, CORS and request ids against a real server (docs/SECURITY.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from service.settings import Settings
from tests.images import encode, quadrants
from tests.support import (
    Server,
    access_line,
    metric_samples,
    running_server,
    write_tiny_model,
)

KEYS = ("alpha-0123456789", "beta-9876543210")
ORIGIN = "https://app.example"
IMAGE = encode(quadrants(48, 32), "PNG")
LEAKS = ("Traceback", "/work", ".py", "alpha-", "beta-")  # no internals, never a key


def test_lists_are_comma_separated_and_keys_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGSERVE_API_KEYS", f" {KEYS[0]} ,{KEYS[1]},, ")
    monkeypatch.setenv("SEGSERVE_CORS_ORIGINS", f"{ORIGIN},http://localhost:3000")
    monkeypatch.setenv("SEGSERVE_AUTH_PUBLIC_PATHS", "")
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == list(KEYS)
    assert settings.cors_origins == (ORIGIN, "http://localhost:3000")
    assert settings.auth_public_paths == ()
    assert KEYS[0] not in repr(settings)
    assert KEYS[0] not in str(settings.model_dump())


def test_security_is_off_by_default() -> None:
    settings = Settings()
    assert settings.api_keys == ()
    assert settings.cors_origins == ()
    assert settings.auth_public_paths == ("/healthz", "/readyz", "/metrics")


def _server(tmp_path_factory: pytest.TempPathFactory, **env: str) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("security")
    write_tiny_model(root / "models")
    settings = {"SEGSERVE_MODEL_REPOSITORY": str(root / "models")} | env
    with running_server(settings, root / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """API keys and one CORS origin; public paths left at their default."""
    yield from _server(
        tmp_path_factory, SEGSERVE_API_KEYS=",".join(KEYS), SEGSERVE_CORS_ORIGINS=ORIGIN
    )


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """API keys, only the probes public (the test harness polls /readyz), CORS left off."""
    yield from _server(
        tmp_path_factory, SEGSERVE_API_KEYS=KEYS[0], SEGSERVE_AUTH_PUBLIC_PATHS="/healthz,/readyz"
    )


def segment(client: httpx.Client, **headers: str) -> httpx.Response:
    return client.post("/segment", content=IMAGE, headers={"Content-Type": "image/png", **headers})


def assert_unauthorized(response: httpx.Response, error: str | None) -> None:
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthorized"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    for leak in LEAKS:
        assert leak not in response.text


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (None, None),
        ("Bearer wrong-key", "invalid_token"),
        (f"Bearer {KEYS[0]}x", "invalid_token"),
        (f"Bearer {KEYS[0][:-1]}", "invalid_token"),
        (f"Basic {KEYS[0]}", None),
        ("Bearer", None),
        (KEYS[0], None),
    ],
    ids=["missing", "wrong", "longer", "prefix", "basic-scheme", "empty-token", "no-scheme"],
)
def test_segment_needs_a_valid_key(
    keyed: Server, authorization: str | None, error: str | None
) -> None:
    with keyed.client() as client:
        headers = {} if authorization is None else {"Authorization": authorization}
        assert_unauthorized(segment(client, **headers), error)


def test_a_refused_request_has_its_access_line_and_is_counted(keyed: Server) -> None:
    with keyed.client() as client:
        refused = {"model": "", "reason": "unauthorized"}
        key = ("segserve_rejections_total", frozenset(refused.items()))
        before = metric_samples(client).get(key, 0.0)
        assert_unauthorized(segment(client, **{"X-Request-ID": "without-key"}), None)
        line = access_line(keyed, "without-key")
        assert (line["path"], line["status"], line["error"]) == ("/segment", 401, "unauthorized")
        assert metric_samples(client)[key] == before + 1


def test_every_configured_key_works_with_any_scheme_case(keyed: Server) -> None:
    with keyed.client() as client:
        answers = {
            segment(client, Authorization=f"{scheme} {key}").content
            for key in KEYS
            for scheme in ("Bearer", "bearer", "BEARER")
        }
        assert len(answers) == 1
        assert segment(client, Authorization=f"Bearer {KEYS[1]}").status_code == 200


def test_probes_and_metrics_are_open_by_default_the_rest_is_not(keyed: Server) -> None:
    with keyed.client() as client:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path
        for path in ("/models", "/models/tiny", "/openapi.json", "/docs", "/nope"):
            assert_unauthorized(client.get(path), None)
        assert client.get("/models", headers={"Authorization": f"Bearer {KEYS[0]}"}).is_success
    assert "refused" in keyed.log()  # refusals are logged (with the request id)


def test_public_paths_are_a_setting(locked: Server) -> None:
    with locked.client() as client:
        assert client.get("/readyz").status_code == 200
        assert_unauthorized(client.get("/metrics"), None)
        bearer = {"Authorization": f"Bearer {KEYS[0]}"}
        assert client.get("/metrics", headers=bearer).status_code == 200


def test_cors_preflight_and_answers_for_an_allowed_origin(keyed: Server) -> None:
    with keyed.client() as client:
        counted = {"model": "", "format": "", "code": "200"}
        key = ("segserve_requests_total", frozenset(counted.items()))
        before = metric_samples(client).get(key, 0.0)
        preflight = client.options(
            "/segment",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200  # no key needed: browsers never send one here
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert metric_samples(client).get(key, 0.0) == before  # a preflight is no request

        answer = segment(client, Origin=ORIGIN, Authorization=f"Bearer {KEYS[0]}")
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert {"x-request-id", "x-model", "server-timing"} <= set(re.split(r",\s*", exposed))
        # A refusal is readable by the page too, so it can ask its user for a key.
        refused = segment(client, Origin=ORIGIN)
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == ORIGIN


def test_cors_refuses_other_origins(keyed: Server) -> None:
    with keyed.client() as client:
        preflight = client.options(
            "/segment",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
        answer = segment(client, Origin="https://evil.example", Authorization=f"Bearer {KEYS[0]}")
        assert "access-control-allow-origin" not in answer.headers


def test_cors_is_off_unless_configured(locked: Server) -> None:
    with locked.client() as client:
        answer = client.get("/healthz", headers={"Origin": ORIGIN})
        assert answer.status_code == 200
        assert not any(h.startswith("access-control-") for h in answer.headers)


@pytest.mark.parametrize("path", ["/healthz", "/segment", "/nope"])
def test_every_answer_has_a_request_id(locked: Server, path: str) -> None:
    with locked.client() as client:
        fresh = client.get(path)  # 200, 401 (before any route runs) and 404 alike
        assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
        assert fresh.headers["x-content-type-options"] == "nosniff"
        echoed = client.get(path, headers={"X-Request-ID": "trace-42.a:b"})
        assert echoed.headers["x-request-id"] == "trace-42.a:b"


@pytest.mark.parametrize("supplied", ["has space", "a" * 129, "semi;colon", 'quote"d', "é"])
def test_unsafe_request_ids_are_replaced(locked: Server, supplied: str) -> None:
    with locked.client() as client:
        answer = client.get("/healthz", headers={"X-Request-ID": supplied.encode("utf-8")})
        assert answer.headers["x-request-id"] != supplied
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])


def test_request_ids_are_in_the_logs(locked: Server) -> None:
    with locked.client() as client:
        client.get("/models", headers={"X-Request-ID": "find-me-in-the-log"})
    assert "find-me-in-the-log" in locked.log()


def test_keys_never_reach_the_logs(keyed: Server) -> None:
    with keyed.client() as client:
        segment(client, Authorization=f"Bearer {KEYS[0]}")
        segment(client, Authorization="Bearer not-a-key-zzz")
    log = keyed.log()
    assert KEYS[0] not in log
    assert "not-a-key-zzz" not in log


def test_a_path_cannot_forge_a_text_log_line(tmp_path_factory: pytest.TempPathFactory) -> None:
    forged = "2026-01-01 00:00:00,000 INFO segserve [-] FORGED"
    for server in _server(tmp_path_factory, SEGSERVE_LOG_FORMAT="text"):
        with server.client() as client:
            assert client.get("/x%0A" + forged.replace(" ", "%20")).status_code == 404
            client.get("/x%0D%0A" + forged.replace(" ", "%20"))
        lines = server.log().splitlines()
        assert not any(line.startswith(forged) for line in lines), lines[-5:]
        assert any("\\n" + forged in line for line in lines)
