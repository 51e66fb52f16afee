"""Chunked synthesis through the service: order, completeness, cancellation, backpressure."""
import asyncio
import threading
import time

from kokoro import KModel, KPipeline
from ray import serve
import httpx
import numpy as np
import torch

from serve_app.ingress.audio_encoding import to_int16
from serve_app.text.pieces import split_text
from serve_app.versions import V1_0

from conftest import deploy, project_app_config

SENTENCE = "Esta es una frase de prueba, con algunas palabras más para que dure un poco."
LONG_TEXT = " ".join([SENTENCE] * 4)  # ~300 characters: a small first piece, then three more


def v1_app(release, pieces_in_flight: int = 2, app_args: dict | None = None, **model_deployment) -> dict:
    app = project_app_config(model_root=str(release.root), weights="local", versions=["v1.0"],
                             configs={"v1.0": release.configs["v1.0"]}, pieces_in_flight=pieces_in_flight,
                             **(app_args or {}))
    model = next(d for d in app["deployments"] if d["name"] == V1_0.deployment)
    model.update(model_deployment)
    if "num_replicas" in model_deployment:
        model.pop("autoscaling_config")
    return app


def model_stats() -> dict:
    """Counters of the (single) KokoroV1Model replica."""
    return serve.get_deployment_handle(V1_0.deployment, app_name="kokoro").stats.remote().result()


def in_process_pieces_pcm(release, text: str, seed: int) -> np.ndarray:
    """The bare kokoro package speaking the ingress's pieces one after another, same seed per chunk."""
    model = KModel(repo_id=V1_0.hub_repo, config=release.configs["v1.0"],
                   model=str(V1_0.weights_path(release.root))).eval()
    pipeline = KPipeline(lang_code="e", repo_id=V1_0.hub_repo, model=model)
    voice = str(V1_0.voices_dir(release.root) / "ef_dora.pt")
    audio = []
    for piece in split_text(text):
        results = pipeline(piece, voice=voice)
        while True:
            torch.manual_seed(seed)
            result = next(results, None)
            if result is None:
                break
            audio.append(result.audio.numpy())
    return to_int16(np.concatenate(audio))


def post(url: str, text: str = LONG_TEXT, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", timeout=300,
                      json={"input": text, "voice": "ef_dora", "response_format": "pcm", **body})


def test_pieces_come_back_complete_and_in_order_from_two_replicas(serve_url, release):
    deploy(v1_app(release, pieces_in_flight=3, num_replicas=2))
    assert len(split_text(LONG_TEXT)) >= 3
    served = np.frombuffer(post(serve_url, seed=11).content, dtype="<i2")
    expected = in_process_pieces_pcm(release, LONG_TEXT, seed=11)
    assert len(served) == len(expected)
    assert np.abs(served.astype(np.int32) - expected).max() <= 1  # thread-count rounding, see test_serving


def concurrent_pcm(url: str, texts: list[str]) -> list[np.ndarray]:
    async def speak_all():
        async with httpx.AsyncClient(timeout=300) as client:
            responses = await asyncio.gather(*[client.post(f"{url}/v1/audio/speech", json={
                "input": text, "voice": "ef_dora", "response_format": "pcm", "seed": 5}) for text in texts])
        assert all(r.status_code == 200 for r in responses)
        return [np.frombuffer(r.content, dtype="<i2").astype(np.int32) for r in responses]
    return asyncio.run(speak_all())


def test_batched_requests_sound_as_they_do_alone(serve_url, release):
    texts = [f"Frase número {i}: {SENTENCE[: 30 + 9 * i]}" for i in range(6)]  # mixed lengths
    runs = {}
    for size in (8, 1):
        deploy(v1_app(release, num_replicas=1, app_args={"batching": {"max_batch_size": size}}))
        before = model_stats()["batches"]
        runs[size] = concurrent_pcm(serve_url, texts)
        after = model_stats()["batches"]
        runs[size, "batches"] = {n: after[n] - before.get(n, 0) for n in after if after[n] > before.get(n, 0)}
    assert max(runs[8, "batches"]) > 1 and set(runs[1, "batches"]) == {1}  # batches formed, then none did
    for batched, alone in zip(runs[8], runs[1], strict=True):
        assert len(batched) == len(alone) > 0
        assert np.abs(batched - alone).max() <= 1  # float rounding of batched kernels, at most one int16 step


def test_cpu_threads_from_the_config_set_the_replicas_torch_threads(serve_url, release):
    # The session's Ray counts 8 CPUs (conftest); a model replica is assigned 1 of them.
    for cpu_threads, expected in [(None, 1), (3, 3), ("node", 8)]:
        deploy(v1_app(release, num_replicas=1, app_args={"cpu_threads": cpu_threads}))
        assert model_stats()["torch_threads"] == expected, cpu_threads


def test_chunk_limits_from_the_config_decide_the_model_calls(serve_url, release):
    deploy(v1_app(release, num_replicas=1, app_args={"first_piece_chars": 40, "piece_chars": 60}))
    pieces = split_text(LONG_TEXT, 40, 60)
    assert len(pieces) > len(split_text(LONG_TEXT))
    before = model_stats()["chunks"]
    assert len(post(serve_url).content) > 0
    assert model_stats()["chunks"] - before == len(pieces)  # one audio chunk per piece


def test_new_request_first_piece_runs_before_queued_later_pieces(serve_url, release):
    """Later pieces of a long request wait on the one replica; a newcomer's first piece goes
    ahead of them (first come, first served would run five of them before it)."""
    deploy(v1_app(release, pieces_in_flight=6, num_replicas=1))
    long_text = " ".join([SENTENCE] * 100)
    streaming, stop = threading.Event(), threading.Event()

    def read_long_stream():  # a client that keeps reading, so the ingress keeps 6 pieces in flight
        with httpx.stream("POST", f"{serve_url}/v1/audio/speech", timeout=300,
                          json={"input": long_text, "voice": "ef_dora", "response_format": "pcm"}) as response:
            for _ in response.iter_raw():
                streaming.set()
                if stop.is_set():
                    return

    reader = threading.Thread(target=read_long_stream)
    reader.start()
    try:
        assert streaming.wait(120)
        time.sleep(1)
        before = model_stats()["chunks"]
        newcomer = post(serve_url, text=SENTENCE)
        made = model_stats()["chunks"] - before
        long_still_running = reader.is_alive()
    finally:
        stop.set()
        reader.join(60)
    assert newcomer.status_code == 200 and len(newcomer.content) > 0
    assert long_still_running
    # The newcomer's own piece, the piece in progress when it came, and at most one more in the gaps.
    assert made <= 3, made


def test_disconnecting_client_stops_downstream_work(serve_url, release):
    deploy(v1_app(release, pieces_in_flight=2, num_replicas=1))
    text = " ".join([SENTENCE] * 60)
    pieces = len(split_text(text))
    before = model_stats()
    with httpx.stream("POST", f"{serve_url}/v1/audio/speech", timeout=300,
                      json={"input": text, "voice": "ef_dora", "response_format": "pcm"}) as response:
        assert response.status_code == 200
        next(response.iter_raw())  # first audio arrived; now hang up
    time.sleep(3)
    after = model_stats()
    time.sleep(3)
    later = model_stats()
    made = after["chunks"] - before["chunks"]
    assert made < pieces / 2, (made, pieces)
    assert later["chunks"] == after["chunks"]  # nothing keeps running for the gone client
    assert after["cancelled"] > before["cancelled"]


def test_saturated_service_answers_503_before_any_byte(serve_url, release):
    deploy(v1_app(release, pieces_in_flight=1, num_replicas=1, max_ongoing_requests=1, max_queued_requests=1))
    expected_length = len(post(serve_url, text=SENTENCE, seed=1).content)

    async def one_client(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/v1/audio/speech", json={
            "input": SENTENCE, "voice": "ef_dora", "response_format": "pcm", "seed": 1})

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=serve_url, timeout=300) as client:
            return await asyncio.gather(*(one_client(client) for _ in range(8)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "2"
            assert response.json()["error"]["type"] == "server_overloaded"
        else:
            assert len(response.content) == expected_length  # whole audio, never a broken 200
