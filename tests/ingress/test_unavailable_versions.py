"""A model version with no running replica: every route that needs it answers a prompt 503 in
OpenAI's shape with Retry-After, saying whether the version is starting or failed, never a
long wait or Serve's plain-text 503 (issue 21)."""
import asyncio
import json
import time

from websockets.asyncio.client import connect
import httpx
import pytest

from serve_app.errors import Unavailable
from serve_app.ingress.http_errors import as_service_error

from conftest import project_app_config

APP, MODEL = "unready", "KokoroV1Model"
WAIT_S = 2  # the app's model_call_timeout_s and start_timeout_s
BOUND_S = 20  # an answer within this is prompt (on a busy 2-core machine); Serve's own timeout is 600 s
BODY = {"model": "v1.0", "input": "Hello there.", "voice": "af_heart", "response_format": "pcm"}
ROUTES = [("post", "/v1/audio/speech", BODY), ("post", "/v1/audio/speech/captioned", BODY),
          ("post", "/v1/audio/phonemize", BODY), ("get", "/v1/audio/voices", None)]


def deploy_app(model_root: str, model_cpus: int) -> None:
    """Deploy without waiting for RUNNING: the model replicas never run."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    app = project_app_config(model_root=model_root, weights="local", versions=["v1.0"],
                             model_call_timeout_s=WAIT_S, start_timeout_s=WAIT_S)
    app.update(name=APP, route_prefix=f"/{APP}")
    next(d for d in app["deployments"] if d["name"] == MODEL)["ray_actor_options"]["num_cpus"] = model_cpus
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))


def model_status() -> str:
    from ray import serve

    return serve.status().applications[APP].deployments[MODEL].status


def wait_for(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def empty_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("no-weights"))  # a replica that starts fails: no weights file


@pytest.fixture(scope="module")
def unready(serve_url, empty_root):
    """An app whose v1.0 replica is starting: it asks more CPUs than the session's Ray has, so it waits forever."""
    from ray import serve

    deploy_app(empty_root, model_cpus=64)
    url = f"{serve_url}/{APP}"
    wait_for(lambda: httpx.get(f"{url}/v1/models", timeout=10).status_code == 200, "serving /v1/models")
    yield url
    serve.delete(APP)


@pytest.fixture(scope="module")
def failed(unready, empty_root):
    """The same app once its replicas get a CPU: each fails to load, and Serve gives up (DEPLOY_FAILED)."""
    deploy_app(empty_root, model_cpus=1)
    wait_for(lambda: model_status() == "DEPLOY_FAILED", "DEPLOY_FAILED")
    return unready


def call(url: str, method: str, path: str, body: dict | None) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.request(method, f"{url}{path}", json=body, timeout=BOUND_S)
    return response, time.monotonic() - started


def not_ready_error(response: httpx.Response) -> dict:
    """The error of an OpenAI-shaped 503 with Retry-After, naming the version and no internals."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json", response.text
    assert int(response.headers["retry-after"]) > 0
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "v1.0" in error["message"] and MODEL not in error["message"] and "Error" not in error["message"]
    return error


@pytest.mark.parametrize("method, path, body", ROUTES)
def test_starting_version_is_a_prompt_503(unready, method, path, body):
    response, elapsed = call(unready, method, path, body)
    error = not_ready_error(response)
    assert error["code"] == "model_starting" and "starting" in error["message"]
    assert WAIT_S <= elapsed < BOUND_S
    assert model_status() != "DEPLOY_FAILED"


def live_error(url: str) -> dict:
    async def start() -> dict:
        async with connect(url.replace("http://", "ws://") + "/v1/audio/speech/live") as ws:
            await ws.send(json.dumps({"type": "start", "model": "v1.0", "voice": "af_heart"}))
            return json.loads(await asyncio.wait_for(ws.recv(), BOUND_S))

    return asyncio.run(start())


def test_live_speech_on_a_starting_version_is_refused_promptly(unready):
    message = live_error(unready)
    assert message["type"] == "error" and message["error"]["code"] == "model_starting"


@pytest.mark.parametrize("method, path, body", ROUTES)
def test_failed_version_is_an_openai_503_saying_why(failed, method, path, body):
    response, elapsed = call(failed, method, path, body)
    error = not_ready_error(response)
    assert error["code"] == "model_failed" and "failed to start" in error["message"]
    assert "does not exist" in error["message"]  # the replicas' own reason: the missing weights file
    assert elapsed < BOUND_S


def test_models_are_still_listed(failed):
    assert httpx.get(f"{failed}/v1/models", timeout=BOUND_S).status_code == 200


def test_serve_errors_are_503s_without_internals():
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    for leaked in [DeploymentUnavailableError(DeploymentID(name=MODEL, app_name=APP)), TimeoutError(),
                   BackPressureError(num_queued_requests=32, max_queued_requests=32)]:
        error = as_service_error(leaked)
        assert isinstance(error, Unavailable) and error.status == 503, leaked
        assert MODEL not in error.message and APP not in error.message and "Error" not in error.message
