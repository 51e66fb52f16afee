"""Drive an OpenAI-compatible speech endpoint: concurrent streaming clients, plus a monitor that
polls the service's light endpoints and the replicas' memory while they run."""
from typing import Callable
import asyncio
import time

import httpx

from .stats import SAMPLE_RATE, Poll, Sample

POLL_PATHS = ("/health", "/v1/models")


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> Sample:
    """POST one speech request and read the pcm stream to its end."""
    start = time.perf_counter()
    ttfb, received, error = None, 0, None
    try:
        async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                error = f"HTTP {response.status_code}"
            else:
                async for chunk in response.aiter_bytes():
                    if chunk and ttfb is None:
                        ttfb = time.perf_counter() - start
                    received += len(chunk)
                if not received:
                    error = "no audio"
    except httpx.HTTPError as e:  # connect/read errors, timeouts, a stream cut short
        error = type(e).__name__
    return Sample(ttfb, time.perf_counter() - start, received / 2 / SAMPLE_RATE, error)


async def run_clients(url: str, body: dict, clients: int, requests_per_client: int,
                      timeout_s: float, headers: dict | None = None) -> tuple[list[Sample], float]:
    """`clients` clients start at once, each sending `requests_per_client` requests back to back.

    Returns every request's sample and the wall time from the first send to the last finish.
    """
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10), limits=limits,
                                 headers=headers) as client:
        async def client_loop() -> list[Sample]:
            return [await one_request(client, url, body) for _ in range(requests_per_client)]

        start = time.perf_counter()
        per_client = await asyncio.gather(*(client_loop() for _ in range(clients)))
        wall = time.perf_counter() - start
    return [sample for samples in per_client for sample in samples], wall


class Monitor:
    """While open: GET each of `paths` every `interval` s (one loop per path, so a slow endpoint
    does not delay the others), and sample `rss()` (bytes per process) every second."""

    def __init__(self, url: str, paths=POLL_PATHS, interval: float = 0.5,
                 rss: Callable[[], dict[int, int]] | None = None, headers: dict | None = None):
        self.url, self.paths, self.interval, self.rss, self.headers = url, paths, interval, rss, headers
        self.polls: dict[str, list[Poll]] = {path: [] for path in paths}
        self.rss_peak: int | None = None
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> "Monitor":
        self._client = httpx.AsyncClient(timeout=10, headers=self.headers)
        self._tasks = [asyncio.create_task(self._poll(path)) for path in self.paths]
        if self.rss is not None:
            self._tasks.append(asyncio.create_task(self._sample_rss()))
        return self

    async def __aexit__(self, *exc) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    async def _poll(self, path: str) -> None:
        while True:
            start = time.perf_counter()
            try:
                status = (await self._client.get(f"{self.url}{path}")).status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            latency = time.perf_counter() - start
            self.polls[path].append(Poll(latency, status))
            await asyncio.sleep(max(0.0, self.interval - latency))

    async def _sample_rss(self) -> None:
        while True:
            sizes = await asyncio.to_thread(self.rss)
            if sizes:
                self.rss_peak = max(self.rss_peak or 0, *sizes.values())
            await asyncio.sleep(1.0)


def replica_rss(deployment: str = "KokoroV1Model", within: int | None = None) -> dict[int, int]:
    """Resident bytes of each local Ray Serve replica process of `deployment`, by pid: among the
    descendants of process `within`, or else every process of the machine.

    Ray titles a replica process `ray::ServeReplica:<app>:<deployment>`; empty when the
    service runs elsewhere.
    """
    try:
        import psutil
    except ImportError:  # ray ships psutil in ray/thirdparty_files, which importing ray puts on sys.path
        # isort: off
        import ray  # noqa: F401
        import psutil
        # isort: on
    sizes = {}
    for process in psutil.Process(within).children(recursive=True) if within else psutil.process_iter():
        try:
            title = " ".join(process.cmdline())
            if "ServeReplica" in title and deployment in title:
                sizes[process.pid] = process.memory_info().rss
        except psutil.Error:  # gone meanwhile, or not ours to read
            pass
    return sizes
