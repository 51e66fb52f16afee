"""A hostile client against a real service with a key: access before the body, typed errors, bounds.

One deploy (v1.0 from the tiny release, an API key, one CORS origin) for the whole module.
"""
from pathlib import Path
from urllib.parse import urlparse
import json
import socket

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
import httpx
import pytest
import yaml

from serve_app.config import API_KEY_ENV, API_KEY_FILE_ENV, resolve_args
from serve_app.ingress.access import AccessPolicy

from conftest import deploy, project_app_config

KEY = "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def url(serve_url, release) -> str:
    deploy(project_app_config(model_root=str(release.root), weights="local", versions=["v1.0"],
                              configs={"v1.0": release.configs["v1.0"]}, api_key=KEY, cors_origins=[ORIGIN]))
    return serve_url


def speech(url: str, headers: dict | None = AUTH, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", headers=headers, timeout=120,
                      json={"input": "Hello there.", "voice": "af_bella", "response_format": "pcm", **body})


def raw_speech(url: str, body: bytes) -> httpx.Response:
    """A body sent byte for byte: JSON escapes such as a lone surrogate that no Python str can encode."""
    return httpx.post(f"{url}/v1/audio/speech", headers={**AUTH, "Content-Type": "application/json"},
                      content=body, timeout=120)


def assert_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and set(error) == {"message", "type", "param", "code"}
    assert param is None or error["param"] == param, error
    assert code is None or error["code"] == code, error
    return error


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/models"), ("GET", "/v1/audio/voices"), ("POST", "/v1/audio/speech"),
    ("POST", "/v1/audio/speech/captioned"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/v1/nothing")])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": KEY}])
def test_every_route_but_the_public_ones_needs_the_key(url, method, path, headers):
    response = httpx.request(method, f"{url}{path}", headers=headers, timeout=30, json={"input": "Hi."})
    assert_error(response, 401, code="invalid_api_key")
    assert response.headers["www-authenticate"] == "Bearer"


def test_public_routes_and_the_case_of_the_scheme_word(url):
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = httpx.get(f"{url}/v1/models", headers={"Authorization": f"{scheme}  {KEY}"}, timeout=30)
        assert response.status_code == 200 and response.json()["object"] == "list"


def test_the_key_is_checked_before_the_body_is_read(url):
    # An invalid body is a 400 only for a client with the key; without it, a 401 first.
    response = httpx.post(f"{url}/v1/audio/speech", content=b"{not json", timeout=30)
    assert_error(response, 401)
    assert_error(raw_speech(url, b"{not json"), 400)
    # A 50 MB body announced, 1 KB sent: the answer comes without the rest.
    parts = urlparse(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        conn.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 50000000\r\n\r\n" + b"{" + b" " * 1024)
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_bodies_over_the_cap_are_refused_announced_or_streamed(url):
    from serve_app.ingress.body_limit import MAX_BODY_BYTES

    # With the key, an announced oversize body is refused from its Content-Length, nothing read.
    parts = urlparse(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        conn.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: " + AUTH["Authorization"].encode() + b"\r\n"
                     b"Content-Length: 50000000\r\n\r\n{")
        answer = b""
        while b"body_too_large" not in answer and (part := conn.recv(4096)):  # headers, then the body
            answer += part
    assert answer.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer, answer[:300]

    def chunks():  # no Content-Length: chunked transfer, stopped once past the cap
        yield b'{"input": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    response = httpx.post(f"{url}/v1/audio/speech", headers={**AUTH, "Content-Type": "application/json"},
                          content=chunks(), timeout=120)
    assert_error(response, 413)
    assert "body over" in response.json()["error"]["message"]


def test_websocket_handshake_without_the_key_is_refused(url):
    ws_url = url.replace("http://", "ws://") + "/v1/audio/speech/live"
    with pytest.raises(InvalidStatus) as refused, connect(ws_url, open_timeout=30):
        pass
    assert refused.value.response.status_code == 403


def test_docs_and_openapi_with_the_key_document_every_error(url):
    assert httpx.get(f"{url}/docs", headers=AUTH, timeout=30).status_code == 200
    spec = httpx.get(f"{url}/openapi.json", headers=AUTH, timeout=30).json()
    responses = spec["paths"]["/v1/audio/speech"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "413", "503"}
    assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "audio/mpeg" in responses["200"]["content"]
    seed = spec["components"]["schemas"]["SpeechRequest"]["properties"]["seed"]["anyOf"][0]
    assert (seed["minimum"], seed["maximum"]) == (0, float(2**63 - 1))  # FastAPI writes bounds as floats


def test_cors_preflight_for_the_configured_origin_only(url):
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(f"{url}/v1/audio/speech", headers={"Origin": ORIGIN, **preflight}, timeout=30)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = httpx.options(f"{url}/v1/audio/speech", headers={"Origin": "https://evil.example", **preflight}, timeout=30)
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    # A refusal still reaches the page: it carries the CORS header, so the browser shows the 401.
    refused = httpx.get(f"{url}/v1/models", headers={"Origin": ORIGIN}, timeout=30)
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN


def test_wrong_method_is_a_typed_405_with_allow(url):
    response = httpx.get(f"{url}/v1/audio/speech", headers=AUTH, timeout=30)
    assert_error(response, 405, code="method_not_allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("field", ["voice", "model", "lang_code", "input"])
def test_lone_surrogates_are_json_400s(url, field):
    body = b'{"input": "Hello.", "response_format": "pcm", "%s": "af_\\ud800"}' % field.encode()
    error = assert_error(raw_speech(url, body), 400, param=field)
    assert len(error["message"]) < 400


def test_text_of_invisible_characters_is_nothing_to_speak(url):
    assert_error(raw_speech(url, b'{"input": "\\u200b\\u0007\\ufeff\\u0000"}'), 400, "input", "empty_input")
    assert_error(speech(url, input="\u200b\u200d\u2060"), 400, "input", "empty_input")
    assert_error(speech(url, input=" ... !? "), 400, "input", "empty_input")
    spoken = speech(url, input="Hel\u200blo\u0007.", voice="af_bella")
    assert spoken.status_code == 200 and len(spoken.content) > 0


def test_numbers_at_the_edges_of_their_ranges(url):
    assert_error(speech(url, seed=2**63), 400, param="seed")
    assert_error(speech(url, seed=-1), 400, param="seed")
    assert_error(raw_speech(url, b'{"input": "Hi.", "speed": NaN}'), 400, param="speed")
    assert_error(raw_speech(url, b'{"input": "Hi.", "speed": 1e999}'), 400, param="speed")
    seeded = [speech(url, seed=2**63 - 1) for _ in range(2)]
    assert seeded[0].status_code == 200 and seeded[0].content == seeded[1].content and seeded[0].content
    assert_error(speech(url, voice="af_bella(1e308)+am_adam"), 400, param="voice")
    assert_error(speech(url, voice="af_bella(1e999)+am_adam"), 400, param="voice")
    assert speech(url, voice="af_bella(999999)+am_adam(999999)+af_heart(999999)").status_code == 200


@pytest.mark.parametrize(("field", "value"), [("voice", "af_bella+" * 2000), ("model", "m" * 5000),
                                              ("lang_code", "x" * 5000), ("input", "word " * 5000)])
def test_long_strings_are_refused_with_short_messages(url, field, value):
    response = speech(url, **{field: value})
    assert response.status_code in (400, 413)
    assert len(response.json()["error"]["message"]) < 300


def test_a_long_number_is_spoken_in_pieces(url):
    short = speech(url, input="Call now.", seed=3)
    response = speech(url, input="Call " + "1234567890" * 5 + " now.", seed=3)
    assert short.status_code == response.status_code == 200
    # Fifty digits read in groups, across several pieces: far more audio than the words around them.
    assert len(response.content) > 5 * len(short.content) > 0


def test_a_body_with_many_bad_fields_gets_one_short_message(url):
    body = json.dumps({"input": 1, "voice": 2, "model": 3, "lang_code": 4, "speed": "x", "seed": "y"}).encode()
    error = assert_error(raw_speech(url, body), 400)
    assert error["message"].count(";") <= 3 and "more" in error["message"]


# Where the key comes from: resolved with the config at start-up, no Ray needed.

@pytest.fixture
def clean_env(monkeypatch):
    for var in (API_KEY_ENV, API_KEY_FILE_ENV):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_key_from_the_environment_or_a_file(clean_env, tmp_path):
    assert resolve_args({}).api_key is None
    clean_env.setenv(API_KEY_ENV, "sk-env")
    assert resolve_args({"api_key": "sk-config"}).api_key.get_secret_value() == "sk-env"
    clean_env.delenv(API_KEY_ENV)
    secret = tmp_path / "api-key"
    secret.write_text("sk-from-file\n")  # a mounted secret, trailing newline and all
    clean_env.setenv(API_KEY_FILE_ENV, str(secret))
    resolved = resolve_args({})
    assert resolved.api_key.get_secret_value() == "sk-from-file"
    assert "sk-from-file" not in repr(resolved) and "sk-from-file" not in str(resolved.ingress_config())
    assert AccessPolicy.from_config(resolved.ingress_config()).api_key == "sk-from-file"


@pytest.mark.parametrize(("env", "words"), [
    ({API_KEY_ENV: ""}, "empty"), ({API_KEY_ENV: "two words"}, "without spaces"),
    ({API_KEY_ENV: "sk-\u00e9"}, "ASCII"), ({API_KEY_ENV: "a", API_KEY_FILE_ENV: "/x"}, "set one"),
    ({API_KEY_FILE_ENV: "/nonexistent/key"}, "cannot read"), ({API_KEY_FILE_ENV: "EMPTY"}, "empty"),
])
def test_a_bad_key_is_a_clear_error_at_start_that_never_quotes_it(clean_env, tmp_path, env, words):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for var, value in env.items():
        clean_env.setenv(var, str(empty) if value == "EMPTY" else value)
    with pytest.raises(ValueError, match=words) as error:
        resolve_args({})
    assert "two words" not in str(error.value) and "sk-\u00e9" not in str(error.value)
    clean_env.delenv(API_KEY_ENV, raising=False)
    clean_env.delenv(API_KEY_FILE_ENV, raising=False)
    with pytest.raises(ValueError, match="empty"):
        resolve_args({"api_key": ""})


def test_the_kubernetes_manifest_takes_the_key_from_a_mounted_secret():
    manifest = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        for container in pod["containers"]:
            env = {e["name"]: e["value"] for e in container["env"]}
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
            assert env[API_KEY_FILE_ENV].startswith(mount["mountPath"] + "/") and mount["readOnly"]
            assert API_KEY_ENV not in env
    assert "api_key" not in yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]["args"]
