"""A bounded soak: hundreds of mixed requests, the model replicas' resident memory sampled throughout.

    python -m bench.soak                          # start the service (dummy weights), 300 requests
    python -m bench.soak --requests 600 --clients 8 --url http://host:8000 --no-start-service

Requests mix lengths (a sentence to a paragraph, with made-up words the G2P has never seen),
formats, languages and voices; some clients hang up after the first audio. Each replica's idle
memory (no request in flight, freed memory handed back) is read after the warm-up requests and
again at the end: it must grow less than 5% (caches bounded: no memory that grows with the words,
voices or clients seen). Under load, memory swings with the work and with when trims fall, so the
samples taken throughout are reported but not judged. Results are printed and recorded in --out.
"""
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from urllib.parse import urlparse
import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time

import httpx

from . import client, report
from .run import DEFAULT_URL, PARAGRAPH, SENTENCE, shown_command
from .service import ServeProcess, config_for_versions, with_model_settings

VOICES = ["af_heart", "am_adam", "bf_emma", "ef_dora", "ff_siwis", "if_sara", "pf_dora", "hf_alpha"]
FORMATS = ["pcm", "mp3", "wav", "opus", "flac", "aac"]
GROWTH_LIMIT = 0.05
IDLE_WAIT_S = 5
SYLLABLES = ["ka", "lo", "mi", "zor", "pe", "tun", "vra", "shi", "del", "qua", "nex", "bo"]


def unseen_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def request_body(rng: random.Random, model: str) -> tuple[dict, bool]:
    """One request of the mix, and whether its client hangs up after the first audio."""
    words = PARAGRAPH.split()
    length = rng.choice([8, 15, 30, 60])
    start = rng.randrange(len(words) - length + 1)
    text = " ".join(words[start:start + length] + [unseen_word(rng) for _ in range(rng.randint(1, 5))]) + "."
    body = {"model": model, "input": text if rng.random() > 0.2 else SENTENCE, "voice": rng.choice(VOICES),
            "response_format": rng.choice(FORMATS), "stream": True}
    return body, rng.random() < 0.15


@dataclass
class Soak:
    """What the run saw: per request its outcome; memory samples (seconds, requests done, rss by pid)."""
    outcomes: dict[str, int] = field(default_factory=dict)
    samples: list[tuple[float, int, dict[int, int]]] = field(default_factory=list)
    done: int = 0
    started: float = field(default_factory=time.perf_counter)
    idle: list[dict[int, int]] = field(default_factory=list)  # rss by pid, no request in flight: after
    # the warm-up, after each equal part of the rest, the last at the end

    @property
    def idle_after_warmup(self) -> dict[int, int]:
        return self.idle[0] if self.idle else {}

    @property
    def idle_at_end(self) -> dict[int, int]:
        return self.idle[-1] if self.idle else {}

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.done += 1


async def one(http: httpx.AsyncClient, url: str, body: dict, leave_early: bool) -> str:
    try:
        async with http.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return f"HTTP {response.status_code}"
            async for chunk in response.aiter_bytes():
                if chunk and leave_early:
                    return "left early"
            return "ok"
    except httpx.HTTPError as e:
        return type(e).__name__


async def drive(args, rss, soak: Soak, warmup: int) -> None:
    """`args.clients` clients send `args.requests` requests in all, while memory is sampled every second;
    idle memory is read after the first `warmup` requests and after each of `args.parts` equal parts of
    the rest (so a cache that fills up to its bound shows as a rise that levels off)."""
    rng = random.Random(args.seed)
    # Popped from the end: first one request per voice and format, so every language's front end and
    # every encoder exist before the warm-up ends and memory starts to count.
    plan = [request_body(rng, args.model) for _ in range(args.requests - len(VOICES))] + [
        ({"model": args.model, "input": SENTENCE, "voice": voice, "response_format": fmt, "stream": True}, False)
        for voice, fmt in zip(VOICES, FORMATS + FORMATS)]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None

    async def sample() -> None:
        while True:
            sizes = await asyncio.to_thread(rss)
            soak.samples.append((time.perf_counter() - soak.started, soak.done, sizes))
            await asyncio.sleep(1)

    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout, connect=10), headers=headers) as http:
        async def client_loop(until: int) -> None:
            while len(plan) > until:
                body, leave_early = plan.pop()
                soak.count(await one(http, args.url, body, leave_early))

        async def idle_rss() -> dict[int, int]:
            await asyncio.sleep(IDLE_WAIT_S)  # replicas hand freed memory back when their model thread idles
            return await asyncio.to_thread(rss)

        sampler = asyncio.create_task(sample())
        rest = len(plan) - warmup
        for until in [rest] + [rest * (args.parts - part) // args.parts for part in range(1, args.parts + 1)]:
            await asyncio.gather(*(client_loop(until) for _ in range(args.clients)))
            soak.idle.append(await idle_rss())
        sampler.cancel()


def idle_growth(soak: Soak) -> dict[int, float]:
    """Per replica pid that lived through the run, the rise of its idle memory from after the warm-up
    to the end: what it retains once freed memory is handed back, which a leak or a growing cache raises."""
    before, after = soak.idle_after_warmup, soak.idle_at_end
    return {pid: after[pid] / before[pid] - 1 for pid in before if pid in after}


def growth(soak: Soak, warmup: int) -> dict[int, tuple[int, int, int, int, float]]:
    """Per replica pid, over the samples after the warm-up requests, split into halves: the floor
    (10th percentile: what stays resident between pieces; a leak raises it) and the peak of each
    half, and the larger of the two growths from the first half to the second."""
    after = [sizes for _, done, sizes in soak.samples if done >= warmup]
    result = {}
    for pid in {pid for sizes in after for pid in sizes}:
        series = [sizes[pid] for sizes in after if pid in sizes]
        if len(series) < 20:
            continue  # a replica that did not live through the run (replaced) has no growth to speak of
        first, second = series[:len(series) // 2], series[len(series) // 2:]
        floors = [statistics.quantiles(half, n=10)[0] for half in (first, second)]
        peaks = [max(first), max(second)]
        worst = max(floors[1] / floors[0], peaks[1] / peaks[0]) - 1
        result[pid] = (int(floors[0]), int(floors[1]), peaks[0], peaks[1], worst)
    return result


def render(args, command: str, info: dict, soak: Soak, wall: float, warmup: int) -> str:
    mib = 2**20
    idle = idle_growth(soak)
    rows = [f"| {pid} | " + " | ".join(f"{size / mib:.0f}" for size in sizes) + f" | {g * 100:+.1f}% | "
            + " / ".join(f"{read[pid] / mib:.0f}" if pid in read else "-" for read in soak.idle)
            + f" | {idle[pid] * 100:+.1f}% |"
            for pid, (*sizes, g) in sorted(growth(soak, warmup).items()) if pid in idle]
    worst = max(idle.values(), default=None)
    verdict = "n/a" if worst is None else ("PASS" if worst <= GROWTH_LIMIT else "FAIL")
    outcomes = ", ".join(f"{name}: {n}" for name, n in sorted(soak.outcomes.items()))
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"## Soak, {args.requests} mixed requests, {args.clients} clients ({date})", "",
        f"Command: `{command}`", "",
        *[f"- {key}: {value}" for key, value in info.items()],
        f"- Wall time: {wall:.0f} s; warm-up: the first {warmup} requests; memory sampled every second "
        f"({len(soak.samples)} samples)",
        f"- Outcomes: {outcomes}", "",
        "RSS of each model replica after the warm-up (MiB): under load, first half / second half of the run, the "
        "floor (10th percentile) and the peak, and the larger of their rises; idle (no request in flight, "
        f"{IDLE_WAIT_S} s after the last), after the warm-up and after each of {args.parts} equal parts of the "
        "rest, and its rise from the first reading to the last: the target's measure.", "",
        "| Replica pid | Floor, 1st half | Floor, 2nd half | Peak, 1st half | Peak, 2nd half | Rise under load "
        "| Idle: after warm-up / ... / at end | Idle growth |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        f"Target: idle growth after warm-up within {GROWTH_LIMIT:.0%}: **{verdict}**"
        + ("" if worst is None else f" (worst {worst * 100:+.1f}%)"), ""])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help=f"base URL of the service (default {DEFAULT_URL})")
    parser.add_argument("--model", default="kokoro")
    parser.add_argument("--api-key", default=os.environ.get("KOKORO_API_KEY"))
    parser.add_argument("--requests", type=int, default=300, help="requests in all (default %(default)s)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=0.2, help="share of requests before memory counts")
    parser.add_argument("--parts", type=int, default=3, help="idle readings after the warm-up (default %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="the request mix's random seed")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request")
    parser.add_argument("--start-service", action=argparse.BooleanOptionalAction, default=None,
                        help="start `serve run` with dummy weights (default: on unless --url is given)")
    parser.add_argument("--serve-config", default="bench/serve_config_cpu.yaml")
    parser.add_argument("--replicas", type=int, help="the started service's model replicas")
    parser.add_argument("--start-timeout", type=float, default=600, help="the started service's start_timeout_s "
                        "(default %(default)s: a loaded machine would shed requests, and the soak is about memory)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help=report.OUT_HELP)
    args = parser.parse_args(argv)
    if args.start_service is None:
        args.start_service = args.url is None
    args.url = (args.url or DEFAULT_URL).rstrip("/")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shown_command(sys.argv[1:] if argv is None else argv, module="bench.soak")
    info = report.machine()
    info["Load average at the start"] = report.load_average()
    soak, started = Soak(), time.perf_counter()
    warmup = max(len(VOICES), int(args.requests * args.warmup))
    if args.start_service:
        config = with_model_settings(config_for_versions(args.serve_config, ["v1.0"]), replicas=args.replicas)
        config["http_options"]["port"] = urlparse(args.url).port or 80  # the started service answers at --url
        for app in config["applications"]:  # memory is measured here, not shedding: let every request start
            app["args"]["start_timeout_s"] = args.start_timeout
        with ServeProcess(config, args.url, Path(tempfile.gettempdir()) / f"soak-serve-{os.getpid()}.log") as serve:
            asyncio.run(drive(args, partial(client.replica_rss, within=serve.pid), soak, warmup))
    else:
        asyncio.run(drive(args, client.replica_rss, soak, warmup))
    info["Load average at the end"] = report.load_average()
    report.publish(args.out, render(args, command, info, soak, time.perf_counter() - started, warmup), "soak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
