"""Observability: the app's Prometheus metrics on Ray's real export port, request ids, /health."""
from pathlib import Path
import asyncio
import json
import re
import time

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
import httpx
import pytest
import ray

from serve_app.ingress.request_ids import MAX_CHARS
from serve_app.versions import V1_0

from conftest import METRICS_PORT, deploy, project_app_config

SENTENCE = "Esta es una frase de prueba, con algunas palabras más."
EXPORT_DEADLINE_S = 90  # Ray's metrics agent exports every few seconds; a loaded machine takes longer


@pytest.fixture(scope="module")
def service(serve_url, release) -> str:
    deploy(project_app_config(model_root=str(release.root), weights="local", versions=["v1.0"],
                              configs={"v1.0": release.configs["v1.0"]}))
    return serve_url


def speak(url: str, headers: dict | None = None, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", timeout=120, headers=headers,
                      json={"input": SENTENCE, "voice": "ef_dora", "response_format": "pcm", **body})


def scrape() -> dict[tuple[str, frozenset], float]:
    """Every sample of the kokoro_* metrics on the session Ray's export port: (name, labels) -> value."""
    try:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT[0]}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) if "kokoro_" in family.name
            for sample in family.samples}


def total(samples: dict, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, tags), value in samples.items() if sample == name and wanted <= tags)


WANTED = {  # (exported name, labels) -> at least this much, after the requests below
    ("ray_kokoro_requests_total", (("version", "v1.0"), ("format", "pcm"), ("status", "200"))): 2,
    ("ray_kokoro_requests_total", (("version", "v1.0"), ("format", "wav"), ("status", "200"))): 1,
    ("ray_kokoro_requests_total", (("version", "v1.0"), ("status", "400"))): 1,
    ("ray_kokoro_requests_total", (("version", "v1.0"), ("format", "pcm"), ("status", "101"))): 1,  # live
    ("ray_kokoro_time_to_first_audio_seconds_count", (("version", "v1.0"),)): 4,
    ("ray_kokoro_audio_seconds_total", (("version", "v1.0"),)): 0.5,
    ("ray_kokoro_real_time_factor_count", (("version", "v1.0"),)): 3,
    ("ray_kokoro_batch_size_count", (("version", "v1.0"),)): 3,
}


async def speak_live(url: str) -> None:
    """One live connection that speaks one utterance: its first audio is timed too."""
    async with connect(url.replace("http://", "ws://") + "/v1/audio/speech/live", open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "start", "voice": "ef_dora", "response_format": "pcm"}))
        await ws.send(json.dumps({"type": "text", "text": SENTENCE}))
        await ws.send(json.dumps({"type": "flush"}))
        while json.loads(await asyncio.wait_for(ws.recv(), 120))["type"] != "utterance.done":
            pass


def test_metrics_move_on_rays_export_port(service):
    before = scrape()
    assert speak(service).status_code == 200
    assert speak(service).status_code == 200
    assert speak(service, response_format="wav").status_code == 200
    assert speak(service, voice="nobody").status_code == 400  # counted with its version, format and status
    asyncio.run(speak_live(service))
    deadline = time.monotonic() + EXPORT_DEADLINE_S
    while True:
        now = scrape()
        short = {(name, labels): (total(now, name, **dict(labels)) - total(before, name, **dict(labels)), least)
                 for (name, labels), least in WANTED.items()
                 if total(now, name, **dict(labels)) - total(before, name, **dict(labels)) < least}
        if not short:
            break
        assert time.monotonic() < deadline, f"metrics that did not move enough (got, wanted): {short}"
        time.sleep(2)
    assert any(name == "ray_kokoro_pieces_queued" for name, _ in now)
    # Serve's own metrics share the port: the app's sit beside them.
    assert "ray_serve_" in httpx.get(f"http://127.0.0.1:{METRICS_PORT[0]}/metrics", timeout=10).text


def serve_logs(deployment: str) -> str:
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return "".join(path.read_text(errors="replace") for path in logs.glob(f"replica_kokoro_{deployment}_*.log"))


def test_a_client_request_id_comes_back_and_reaches_the_ingress_and_replica_logs(service):
    request_id = f"metrics-test-{time.time_ns()}"
    response = speak(service, headers={"X-Request-Id": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    deadline = time.monotonic() + 30
    while not (request_id in serve_logs("SpeechIngress") and request_id in serve_logs(V1_0.deployment)):
        assert time.monotonic() < deadline, "request id missing from the ingress's or the replica's log"
        time.sleep(1)


@pytest.mark.parametrize("given", [None, "x" * (MAX_CHARS + 1), "spaces and ; semicolons"])
def test_every_response_carries_a_bounded_request_id(service, given):
    headers = {} if given is None else {"X-Request-Id": given}
    for response in (speak(service, headers=headers), speak(service, headers=headers, voice="nobody"),
                     httpx.get(f"{service}/no/such/route", headers=headers, timeout=30)):
        request_id = response.headers["x-request-id"]
        assert request_id != given and re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", request_id), request_id


def test_health_says_which_versions_are_ready(service):
    response = httpx.get(f"{service}/health", timeout=30)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "versions": ["v1.0"], "ready": {"v1.0": True}}
