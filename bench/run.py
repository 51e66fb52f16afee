"""Benchmark an OpenAI-compatible speech endpoint against Kokoro called in-process.

    python -m bench.run                         # start the service (dummy weights), run everything
    python -m bench.run --url http://host:8000 --model kokoro --voice af_heart --no-in-process

Scenarios: `short` (one client, one sentence), `paragraph` (one client, ~600 characters), `cN`
(N clients at once, each sending the paragraph) and `sN` (N clients at once, each sending a
~150-character sentence: the concurrency sweep, kept short so 64 clients fit in minutes).
Results are printed and recorded in --out (bench.report.record).
"""
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
import argparse
import asyncio
import math
import os
import shlex
import sys
import tempfile
import time

from . import client, in_process, report
from .service import ServeProcess, config_for_versions, with_model_settings
from .stats import Measurement, batching_targets, evaluate

SHORT = "The quick brown fox jumps over the lazy dog."
PARAGRAPH = (  # 601 characters, five sentences
    "The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of salt and wind. "
    "Every evening the keeper climbed the spiral stairs to light the lamp, counting each of the one hundred "
    "and twelve steps out loud. Ships passing in the night relied on its steady beam to steer clear of the "
    "rocks below, and few of their captains ever knew the name of the man who kept it burning. When the "
    "keeper finally retired, the town held a small ceremony on the harbour wall, where children sang, "
    "fishermen told stories, and the mayor thanked him for forty years of quiet, faithful service.")
SENTENCE = (  # 148 characters, two clauses: one first piece and one more
    "Every evening the keeper climbed the spiral stairs to light the lamp, "
    "counting each of the one hundred and twelve steps out loud as he went.")
TEXTS = {"short": SHORT, "sentence": SENTENCE, "paragraph": PARAGRAPH}
CONCURRENT_TEXTS = {"c": "paragraph", "s": "sentence"}
DEFAULT_URL = "http://127.0.0.1:8000"


def scenario_clients(name: str) -> tuple[str, int]:
    """`short`/`sentence`/`paragraph` -> (text, 1 client); `cN` -> (paragraph, N); `sN` -> (sentence, N)."""
    if name in TEXTS:
        return name, 1
    if name[:1] in CONCURRENT_TEXTS and name[1:].isdigit() and int(name[1:]) > 0:
        return CONCURRENT_TEXTS[name[:1]], int(name[1:])
    raise argparse.ArgumentTypeError(f"unknown scenario '{name}': use short, sentence, paragraph, cN or sN "
                                     "(N clients)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help=f"base URL of the service (default {DEFAULT_URL})")
    parser.add_argument("--model", default="kokoro", help="the request's `model` (default kokoro)")
    parser.add_argument("--voice", default="af_heart", help="the request's and the in-process voice")
    parser.add_argument("--api-key", default=os.environ.get("KOKORO_API_KEY"),
                        help="sent as `Authorization: Bearer` (default: env KOKORO_API_KEY, which a started "
                             "service also reads); never written to the report")
    parser.add_argument("--scenarios", default="short,paragraph,c4,c8,c16",
                        type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
                        help="comma-separated: short, sentence, paragraph, cN, sN (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="requests per scenario at least; each of N clients sends ceil(repeats/N) (default 3)")
    parser.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the in-process KPipeline baseline first (default on)")
    parser.add_argument("--device", default=None, help="in-process device (default cuda if available, else cpu)")
    parser.add_argument("--start-service", action=argparse.BooleanOptionalAction, default=None,
                        help="start `serve run` with dummy weights for the run and stop it after "
                             "(default: on unless --url is given)")
    parser.add_argument("--serve-config", default="serve_config.yaml",
                        help="config for --start-service; its port must match --url")
    parser.add_argument("--serve-versions", default="v1.0", type=lambda s: [v.strip() for v in s.split(",")],
                        help="model versions the started service loads (default v1.0, the one measured)")
    parser.add_argument("--max-batch-size", type=int, help="the started service's batch size (1: no batching; "
                        "default: as the config says)")
    parser.add_argument("--replicas", type=int, help="the started service's model replicas (default: as configured)")
    parser.add_argument("--replica-cpus", type=float, help="CPUs Ray assigns each model replica (default: as "
                        "configured)")
    parser.add_argument("--cpu-threads", type=lambda v: v if v == "node" else int(v),
                        help="torch threads per model replica, a count or `node` (default: as configured)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request (default 600)")
    parser.add_argument("--poll-interval", type=float, default=0.5,
                        help="seconds between polls of /health and /v1/models during scenarios")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help=report.OUT_HELP)
    parser.add_argument("--label", help="heading of this run's section (default: the device)")
    args = parser.parse_args(argv)
    try:
        for name in args.scenarios:
            scenario_clients(name)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.start_service is None:
        args.start_service = args.url is None
    args.url = (args.url or DEFAULT_URL).rstrip("/")
    return args


def shown_command(argv: list[str], module: str = "bench.run") -> str:
    """The command line for the report, with the API key's value hidden."""
    shown, hide_next = [], False
    for arg in argv:
        shown.append("***" if hide_next else "--api-key=***" if arg.startswith("--api-key=") else arg)
        hide_next = arg == "--api-key"
    return shlex.join(["python", "-m", module] + shown)


def run_in_process(args, cores: int) -> list[Measurement]:
    """One process on all cores, one process on one core, and one single-threaded process per core."""
    texts = {name: TEXTS[name] for name in ("short", "paragraph")}
    if any(scenario_clients(name)[0] == "sentence" for name in args.scenarios):
        texts["sentence"] = SENTENCE
    plans = [(1, cores, texts), (1, 1, texts)]
    if cores > 1:
        plans.append((cores, 1, {"paragraph": PARAGRAPH}))
    results = []
    for procs, threads, texts in plans:
        print(f"in-process: {procs} process(es) x {threads} thread(s) on {args.device} ...", flush=True)
        results += in_process.measure(texts, procs, threads, args.repeats, args.voice, device=args.device)
    return results


async def warm_up(args, body: dict, headers: dict | None, deadline_s: float = 600) -> None:
    """One short request that succeeds: model replicas are up and their pipelines built."""
    deadline = time.monotonic() + deadline_s
    while True:
        samples, _ = await client.run_clients(args.url, {**body, "input": SHORT}, 1, 1, args.timeout, headers)
        if samples[0].error is None:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up request to {args.url} keeps failing: {samples[0].error}")
        print(f"warm-up request failed ({samples[0].error}); retrying", flush=True)
        await asyncio.sleep(2)


async def run_service(args, rss=client.replica_rss) -> tuple[dict[str, Measurement], int | None]:
    """Every scenario in turn; `rss` gives the replicas' resident bytes by pid."""
    body = {"model": args.model, "voice": args.voice, "response_format": "pcm", "stream": True}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    await warm_up(args, body, headers)
    rss_idle = max(rss().values(), default=None)
    results = {}
    for name in args.scenarios:
        text, clients = scenario_clients(name)
        print(f"service: {name} ({clients} client(s), {text}) ...", flush=True)
        async with client.Monitor(args.url, interval=args.poll_interval, rss=rss, headers=headers) as monitor:
            samples, wall = await client.run_clients(args.url, {**body, "input": TEXTS[text]}, clients,
                                                     math.ceil(args.repeats / clients), args.timeout, headers)
        results[name] = Measurement(text, clients, samples, wall, polls=monitor.polls, rss_peak=monitor.rss_peak)
    return results, rss_idle


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = shown_command(sys.argv[1:] if argv is None else argv)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = report.machine()
    load_at_start = report.load_average()  # other work on the machine skews every number
    cores = report.usable_cores()
    args.device = args.device or ("cuda" if info["GPU"] != "none" else "cpu")
    endpoint = f"{args.url} (model {args.model}, voice {args.voice})"
    serve = None
    if args.start_service:  # set up (and fail) before the long in-process part
        log = Path(tempfile.gettempdir()) / f"bench-serve-{os.getpid()}.log"
        config = with_model_settings(config_for_versions(args.serve_config, args.serve_versions),
                                     args.max_batch_size, args.replicas, args.replica_cpus, args.cpu_threads)
        serve = ServeProcess(config, args.url, log)
        endpoint += (f", started by the benchmark: {args.serve_config}, "
                     f"versions {', '.join(args.serve_versions)}, dummy weights")

    # In-process first, before the service exists, so neither competes with the other for cores.
    baseline = run_in_process(args, cores) if args.in_process else []
    if serve is None:
        service, rss_idle = asyncio.run(run_service(args))
    else:
        print(f"starting the service (log: {serve.log_path}) ...", flush=True)
        with serve:
            # Only our replicas: other Serve instances on this machine may run KokoroV1Model too.
            service, rss_idle = asyncio.run(run_service(args, partial(client.replica_rss, within=serve.pid)))

    info["Load average"] = f"{load_at_start} at the start, {report.load_average()} at the end (1/5/15 min)"
    peaks = [m.rss_peak for m in service.values() if m.rss_peak is not None] + ([rss_idle] if rss_idle else [])
    targets = evaluate(service, baseline, cores, max(peaks, default=None)) + batching_targets(service, baseline, cores)
    label = args.label or (f"GPU: {info['GPU']}" if info["GPU"] != "none" else f"CPU: {cores} cores")
    section = report.render(label, date, command, info, endpoint, service, baseline, rss_idle, targets)
    report.publish(args.out, section, "run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
