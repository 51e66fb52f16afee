"""Benchmark an OpenAI-compatible speech endpoint against Kokoro called in-process.

    python -m bench.run                         # start the service (dummy weights), run everything
    python -m bench.run --compile off,default   # the same for each vocoder compile setting in turn
    python -m bench.run --url http://host:8000 --model kokoro --voice af_heart --no-in-process

Scenarios: `short` (one client, one sentence), `paragraph` (one client, ~600 characters), `cN`
(N clients at once, each sending the paragraph) and `sN` (N clients at once, each sending a
~150-character sentence: the concurrency sweep, kept short so 64 clients fit in minutes).

A started service runs once per `--compile` setting, one after another after the in-process
baseline: its time to ready, the scenarios and its replicas' memory. A compiled setting starts on
an empty inductor cache (the scenarios run on that start), then again on the cache it filled.
Results are printed and recorded in --out (bench.report.record).
"""
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
import argparse
import asyncio
import copy
import math
import os
import shlex
import shutil
import sys
import tempfile
import time

from . import client, in_process, report
from .service import ServeProcess, check_port_free, config_for_versions, model_replicas, with_model_settings
from .stats import Measurement, SettingRun, Start, Target, batching_targets, compile_targets, evaluate, vocoder_summary

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
    parser.add_argument("--compile", type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
                        help="the started service's vocoder compile settings, comma-separated (off, default, "
                             "reduce-overhead, max-autotune-no-cudagraphs), each measured on a service of its own; "
                             "default: the one setting the config (or env KOKORO_COMPILE) gives")
    parser.add_argument("--warm-restart", action=argparse.BooleanOptionalAction, default=True,
                        help="start each compiled setting's service a second time, on the inductor cache its "
                             "first start filled, and time that start too (default on)")
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
    if args.compile is not None:
        if not args.start_service:
            parser.error("--compile sets up a started service: not with --no-start-service (or --url alone)")
        if not args.compile or len(set(args.compile)) < len(args.compile):
            parser.error(f"--compile: one or more settings, each once (got {args.compile})")
        for mode in args.compile:
            if (problem := compile_setting_problem(mode)) is not None:
                parser.error(f"--compile {mode}: {problem}")
    args.url = (args.url or DEFAULT_URL).rstrip("/")
    return args


def compile_setting_problem(mode: str) -> str | None:
    """Why the app would reject `compile: mode`, or None."""
    from pydantic import ValidationError

    from serve_app.config import AppArgs

    try:
        AppArgs.model_validate({"compile": mode})
    except ValidationError as e:
        return "; ".join(error["msg"] for error in e.errors())
    return None


def configured_compile(config: dict) -> str:
    """The compile setting a service started from `config` runs: env KOKORO_COMPILE's, the app's arg, or the default."""
    from serve_app.config import AppArgs

    app = next(a for a in config["applications"] if a.get("import_path") == "serve_app.app:build_app")
    mode = os.environ.get("KOKORO_COMPILE") or app.get("args", {}).get("compile")
    return AppArgs.model_validate({} if mode is None else {"compile": mode}).compile


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


def request_body(args) -> tuple[dict, dict | None]:
    """Every request's body (less its input) and headers."""
    body = {"model": args.model, "voice": args.voice, "response_format": "pcm", "stream": True}
    return body, {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None


async def run_service(args, rss=client.replica_rss) -> tuple[dict[str, Measurement], int | None]:
    """Every scenario in turn; `rss` gives the replicas' resident bytes by pid."""
    body, headers = request_body(args)
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


async def time_to_ready(args, serve: ServeProcess, cache: str, rss) -> Start:
    """From starting `serve run` until a first short request is answered, and the idle replica's memory then."""
    await warm_up(args, *request_body(args))
    ready_s = time.monotonic() - serve.started
    return Start(cache, serve.up_s, ready_s, max(rss().values(), default=None))


def measure_setting(args, config: dict, mode: str) -> SettingRun:
    """The service with vocoder compile `mode`: started, timed to ready, its scenarios run, stopped; a
    compiled mode on an empty inductor cache of its own, then (--warm-restart) again on the one it filled."""
    cache_dir = None if mode == "off" else tempfile.mkdtemp(prefix=f"bench-inductor-{mode}-")
    config = with_model_settings(copy.deepcopy(config), compile=mode, compile_cache_dir=cache_dir)
    caches = ["none"] if cache_dir is None else ["fresh", "warm"] if args.warm_restart else ["fresh"]
    starts, service = [], {}
    try:
        for n, cache in enumerate(caches, 1):
            log = Path(tempfile.gettempdir()) / f"bench-serve-{os.getpid()}-{mode}-{n}.log"
            # The setting is the config's: an inherited KOKORO_COMPILE would override it.
            serve = ServeProcess(config, args.url, log, env={"KOKORO_COMPILE": None})
            print(f"compile {mode}: starting the service, inductor cache {cache} (log: {log}) ...", flush=True)
            with serve:
                # Only our replicas: other Serve instances on this machine may run KokoroV1Model too.
                rss = partial(client.replica_rss, within=serve.pid)
                start = asyncio.run(time_to_ready(args, serve, cache, rss))
                if n == 1:
                    service, _ = asyncio.run(run_service(args, rss))
                start.vocoders = serve.vocoders(model_replicas(config))
            print(f"compile {mode}, inductor cache {cache}: ready in {start.ready_s:.1f} s, "
                  f"vocoder {vocoder_summary(start.vocoders)}", flush=True)
            starts.append(start)
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)
    return SettingRun(mode, starts, service)


def setting_targets(runs: list[SettingRun], baseline: list[Measurement], cores: int) -> dict[str, list[Target]]:
    """Each setting's targets: the service's (evaluate), 8+ clients', and the compiled vocoder's."""
    eager = next((run for run in runs if run.mode == "off"), None)
    return {run.mode: evaluate(run.service, baseline, cores, run.rss_peak)
            + batching_targets(run.service, baseline, cores, lone=False)
            + compile_targets(run, eager, baseline, cores) for run in runs}


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.0f}"


def _ratio(value: float | None, reference: float | None) -> str:
    return "-" if value is None or not reference else f"{value / reference:.2f}x"


def render_settings(label: str, date: str, command: str, machine_info: dict[str, str], endpoint: str,
                    runs: list[SettingRun], in_process: list[Measurement], targets: dict[str, list[Target]]) -> str:
    """One section for every compile setting: starts, scenarios, compiled / eager, in-process, targets."""
    lines = [f"## {label} ({date})", "", f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in machine_info.items()]
    restarted = any(run.warm_start for run in runs)
    lines += [f"- Endpoint: {endpoint}",
              f"- Vocoder compile: {', '.join(run.mode for run in runs)}, each on a service of its own, one after "
              "another after the in-process baseline." + (" A compiled setting started on an empty inductor cache "
                                                          "(its scenarios ran on that start), then again on the "
                                                          "cache it filled." if restarted else ""), ""]
    lines += ["### Starts", ""]
    lines += report.table(
        ["Compile", "Inductor cache", "/health 200 (s)", "Ready (s)", "Vocoder", "Replica RSS idle (MB)",
         "Replica RSS peak (MB)"],
        [[run.mode, start.cache, report._num(start.health_s, 1), report._num(start.ready_s, 1),
          vocoder_summary(start.vocoders), _mb(start.rss_idle), _mb(run.rss_peak) if n == 0 else "-"]
         for run in runs for n, start in enumerate(run.starts)])
    lines += ["", "Ready: seconds from starting `serve run` (with its Ray) until a first short request's audio had "
              "all come. Idle RSS: the largest replica right after it; peak: the highest over its scenarios.", ""]
    lines += ["### Service", ""]
    lines += report.table(
        ["Compile", "Scenario", "Clients"] + report.COLUMNS + ["/health slowest (s)", "/v1/models slowest (s)",
                                                               "Replica RSS peak (MB)"],
        [[run.mode, name, str(m.clients)] + report._cells(m)
         + [report._poll_cell(m, "/health"), report._poll_cell(m, "/v1/models"), _mb(m.rss_peak)]
         for run in runs for name, m in run.service.items()])
    lines += [""]
    eager = next((run for run in runs if run.mode == "off"), None)
    compiled = [run for run in runs if run is not eager]
    if eager is not None and compiled:
        lines += ["### Compiled / eager", ""]
        lines += table_of_ratios(eager, compiled)
        lines += [""]
    if in_process:
        lines += ["### In-process KPipeline (eager), no server", ""]
        lines += report.table(["Text", "Processes x threads"] + report.COLUMNS,
                              [[m.text, f"{m.clients} x {m.threads}"] + report._cells(m) for m in in_process])
        lines += [""]
    lines += ["### Targets", "", "```"]
    for n, run in enumerate(runs):
        lines += ([""] if n else []) + [f"compile {run.mode}:"] + [t.line() for t in targets[run.mode]]
    lines += ["```", ""]
    return "\n".join(lines)


def table_of_ratios(eager: SettingRun, compiled: list[SettingRun]) -> list[str]:
    """Per scenario, each compiled setting's figures over eager's; then its starts' over eager's start."""
    header = ["Scenario"] + [f"{run.mode}: {what}" for run in compiled
                             for what in ("first audio p50", "audio s/s", "RSS peak")]
    rows = []
    for name, e in eager.service.items():
        row = [name]
        for run in compiled:
            m = run.service.get(name)
            row += [_ratio(m and m.ttfb_p50, e.ttfb_p50), _ratio(m and m.audio_per_s, e.audio_per_s),
                    _ratio(m and m.rss_peak, e.rss_peak)]
        rows.append(row)
    lines = report.table(header, rows) + [""]
    base = eager.starts[0]
    for run in compiled:
        starts = ", ".join(f"{_ratio(start.ready_s, base.ready_s)} on a {start.cache} inductor cache"
                           for start in run.starts)
        lines.append(f"- {run.mode}: time to ready {starts}; idle replica RSS {_ratio(run.rss_idle, eager.rss_idle)}"
                     " (the highest of its starts)")
    return lines


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
    config = None
    if args.start_service:  # set up (and fail) before the long in-process part
        check_port_free(args.url)
        config = with_model_settings(config_for_versions(args.serve_config, args.serve_versions),
                                     args.max_batch_size, args.replicas, args.replica_cpus, args.cpu_threads)
        args.compile = args.compile or [configured_compile(config)]
        endpoint += (f", started by the benchmark: {args.serve_config}, "
                     f"versions {', '.join(args.serve_versions)}, dummy weights")

    # In-process first, before the service exists, so neither competes with the other for cores.
    baseline = run_in_process(args, cores) if args.in_process else []
    label = args.label or (f"GPU: {info['GPU']}" if info["GPU"] != "none" else f"CPU: {cores} cores")
    if config is None:
        service, rss_idle = asyncio.run(run_service(args))
        info["Load average"] = f"{load_at_start} at the start, {report.load_average()} at the end (1/5/15 min)"
        peaks = [m.rss_peak for m in service.values() if m.rss_peak is not None] + ([rss_idle] if rss_idle else [])
        targets = (evaluate(service, baseline, cores, max(peaks, default=None))
                   + batching_targets(service, baseline, cores))
        section = report.render(label, date, command, info, endpoint, service, baseline, rss_idle, targets)
    else:
        runs = [measure_setting(args, config, mode) for mode in args.compile]
        info["Load average"] = f"{load_at_start} at the start, {report.load_average()} at the end (1/5/15 min)"
        section = render_settings(label, date, command, info, endpoint, runs, baseline,
                                  setting_targets(runs, baseline, cores))
    report.publish(args.out, section, "run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
