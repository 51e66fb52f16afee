"""The benchmark harness (bench/): its maths, targets, report, and HTTP client against a fake server."""
from argparse import Namespace
from pathlib import Path
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
import pytest
import uvicorn
import yaml

from bench import client, in_process, report, run
from bench.stats import Measurement, Poll, Sample, batching_targets, evaluate, percentile, poll_summary

from conftest import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
FEW_WORDS = "hˈɛloʊ wˈɜɹld."  # the in-process benches' piece in tests: seconds of compute, not tens

# --- maths -----------------------------------------------------------------------------------


def test_percentile_interpolates_linearly_and_is_none_for_no_values():
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) is None


def test_measurement_summary_counts_only_successful_requests():
    ok = [Sample(ttfb=float(t), total=t + 1.0, audio_s=2.0) for t in range(1, 11)]
    failed = [Sample(None, 0.5, 0.0, "HTTP 503"), Sample(0.2, 3.0, 0.5, "ReadError")]
    m = Measurement("paragraph", 4, ok + failed, wall=40.0)
    assert m.errors == {"HTTP 503": 1, "ReadError": 1}
    assert (m.ttfb_p50, m.ttfb_p95, m.total_p50) == pytest.approx((5.5, 9.55, 6.5))
    assert m.audio_per_s == pytest.approx(20.0 / 40.0)
    assert m.rtf_p50 == pytest.approx(6.5 / 2.0)
    empty = Measurement("short", 1, failed, wall=1.0)
    assert (empty.ttfb_p50, empty.audio_per_s, empty.rtf_p50) == (None, None, None)


def test_poll_summary_reports_slowest_and_non_200():
    slowest, bad = poll_summary([Poll(0.1, 200), Poll(0.7, 200), Poll(0.2, 404), Poll(5.0, "ReadTimeout")])
    assert slowest == 5.0 and bad == {404: 1, "ReadTimeout": 1}
    assert poll_summary([]) == (None, {})


# --- targets ---------------------------------------------------------------------------------


def measurement(text, clients, ttfb, total, audio, wall, n=1, threads=None, errors=0, polls=None):
    samples = [Sample(ttfb, total, audio) for _ in range(n)] + [Sample(None, 1.0, 0.0, "HTTP 503")] * errors
    return Measurement(text, clients, samples, wall, threads=threads, polls=polls or {})


GOOD_POLLS = {"/health": [Poll(0.01, 200), Poll(0.3, 200)], "/v1/models": [Poll(0.02, 200)]}
CORES = 2


def baseline():
    return [measurement("paragraph", 1, 8.0, 20.0, 40.0, wall=20.0, threads=2),         # 2.0 audio s/s
            measurement("paragraph", 1, 16.0, 40.0, 40.0, wall=1.0, threads=1),         # 40: not all cores
            measurement("paragraph", 2, 18.0, 36.0, 40.0, wall=36.0, n=2, threads=1)]   # 2.22: the best


def service(**changes):
    scenarios = {
        "paragraph": measurement("paragraph", 1, 4.0, 21.0, 40.0, wall=21.0),            # 1.905 audio s/s
        "c4": measurement("paragraph", 4, 10.0, 80.0, 40.0, wall=80.0, n=4, polls=GOOD_POLLS),
        "c8": measurement("paragraph", 8, 20.0, 150.0, 40.0, wall=150.0, n=8),          # 2.133 audio s/s
    }
    return {**scenarios, **changes}


def verdicts(targets):
    return [t.passed for t in targets]


def test_targets_pass_with_ratios_inside_the_limits():
    targets = evaluate(service(), baseline(), CORES, rss_peak=int(1.2e9))
    assert verdicts(targets) == [True] * 7, "\n".join(t.line() for t in targets)
    assert "= 0.200 (needs <= 0.25)" in targets[0].detail      # 4.0 / 20.0
    assert "= 0.952 (needs >= 0.9)" in targets[1].detail       # 1.905 / 2.0
    assert "= 0.960 (needs >= 0.95)" in targets[2].detail      # 2.133 / 2.222 (2 x 1 beats 1 x 2)
    assert "served 8/8" in targets[2].detail
    assert "= 2.500 (needs <= 3)" in targets[3].detail         # 10 / 4
    assert targets[6].line().startswith("PASS") and "1200 MB" in targets[6].detail


def test_targets_miss_beyond_the_limits():
    slow_models = {"/health": [Poll(0.6, 200)], "/v1/models": [Poll(0.01, 404), Poll(0.01, 404)]}
    targets = evaluate(service(
        paragraph=measurement("paragraph", 1, 6.0, 25.0, 40.0, wall=25.0),            # 0.3 and 0.8
        c4=measurement("paragraph", 4, 18.5, 80.0, 40.0, wall=80.0, n=4, polls=slow_models),
        c8=measurement("paragraph", 8, 20.0, 150.0, 40.0, wall=150.0, n=8, errors=1),  # ratio fine, one failed
    ), baseline(), CORES, rss_peak=int(1.6e9))
    assert verdicts(targets) == [False] * 7, "\n".join(t.line() for t in targets)
    assert "served 8/9" in targets[2].detail
    assert "404 x2 (404: endpoint not implemented)" in targets[5].detail
    assert targets[0].line().startswith("MISS")


def test_targets_not_measured_without_scenario_baseline_or_replica():
    targets = evaluate({"short": measurement("short", 1, 0.5, 1.0, 3.0, wall=1.0)}, [], CORES, rss_peak=None)
    assert verdicts(targets) == [None] * 7
    assert all(t.line().startswith("n/a") for t in targets)


def test_batching_targets_compare_lone_and_concurrent_runs_with_in_process():
    in_process = baseline() + [measurement("short", 1, 1.0, 1.0, 3.0, wall=1.0, threads=2),
                               measurement("sentence", 1, 3.0, 3.0, 9.0, wall=3.0, threads=2)]   # 3.0 audio s/s
    targets = batching_targets(service(
        short=measurement("short", 1, 0.8, 1.0, 3.0, wall=1.0),
        s16=measurement("sentence", 16, 2.0, 20.0, 9.0, wall=30.0, n=16),                  # 4.8 audio s/s
        s32=measurement("sentence", 32, 2.0, 20.0, 9.0, wall=60.0, n=32, errors=1),
    ), in_process, CORES)
    lines = "\n".join(t.line() for t in targets)
    assert [t.passed for t in targets] == [True, False, False, True, False], lines
    assert "0.800 / 1.000" in targets[0].detail and "1.905 / 2.000" in targets[1].detail
    assert targets[2].name.startswith("c8") and "2.133 / 2.222" in targets[2].detail  # the paragraph's best
    assert targets[3].name.startswith("s16") and "4.800 / 3.000 = 1.600" in targets[3].detail
    assert "served 32/33" in targets[4].detail


# --- report ----------------------------------------------------------------------------------


def test_report_records_a_section_with_command_tables_and_targets(tmp_path):
    out = tmp_path / "docs" / "benchmarks.md"
    scenarios = service()
    scenarios["c4"].rss_peak = int(812e6)
    targets = evaluate(scenarios, baseline(), CORES, rss_peak=int(812e6))
    info = {"CPU": "Test CPU, 2 usable cores", "GPU": "none"}
    section = report.render("CPU run", "2030-01-01 00:00 UTC", "python -m bench.run --repeats 3", info,
                            "http://127.0.0.1:8000", scenarios, baseline(), int(700e6), targets)
    report.record(section, "run", out)
    text = out.read_text()
    assert text.startswith("# Benchmarks") and "[the history](benchmarks-history.md)" in text
    assert "## Current results\n\n<!-- bench: run -->\n## CPU run (2030-01-01 00:00 UTC)" in text
    assert "Command: `python -m bench.run --repeats 3`" in text
    assert "- CPU: Test CPU, 2 usable cores" in text
    # c4: 4 requests, no errors, first audio 10 s, whole 80 s, 160 s audio / 80 s, RTF 2, polls, RSS
    assert "| c4 | 4 | 4 | 0 | 10.000 | 10.000 | 80.000 | 2.00 | 2.000 | 0.300 | 0.020 | 812 |" in text
    assert "| paragraph | 2 x 1 | 2 | 0 | 18.000 | 18.000 | 36.000 | 2.22 | 0.900 |" in text
    assert "Replica RSS after warm-up: 700 MB" in text
    assert "PASS  paragraph first audio <= 25% of in-process whole-paragraph time" in text
    assert not (tmp_path / "docs" / "benchmarks-history.md").exists()  # nothing replaced yet


def test_record_keeps_the_newest_run_of_each_kind_and_moves_the_older_to_the_top_of_the_history(tmp_path):
    page, history = tmp_path / "bench.md", tmp_path / "bench-history.md"
    report.record("## Soak 1\n\nfirst soak\n", "soak", page)
    report.record("## Run 1\n\nfirst run\n", "run", page)
    report.record("## Soak 2\n\nsecond soak\n", "soak", page, history)
    page.write_text(page.read_text() + "\nA reading added by hand.\n")  # belongs to the run above it
    report.record("## Run 2\n\nsecond run\n", "run", page)
    report.record("## Soak 3\n\nthird soak\n", "soak", page)

    # The newest of each kind only, each in its kind's first place, under its marker.
    assert page.read_text() == report.PAGE_HEADER.format(history="bench-history.md") + (
        "\n<!-- bench: soak -->\n## Soak 3\n\nthird soak\n\n"
        "<!-- bench: run -->\n## Run 2\n\nsecond run\n")
    # Replaced runs, newest first, the hand-written reading kept with its run.
    assert history.read_text() == report.HISTORY_HEADER.format(page="bench.md") + (
        "\n<!-- bench: soak -->\n## Soak 2\n\nsecond soak\n\n"
        "<!-- bench: run -->\n## Run 1\n\nfirst run\n\nA reading added by hand.\n\n"
        "<!-- bench: soak -->\n## Soak 1\n\nfirst soak\n")


def test_the_benchmark_page_holds_one_current_run_of_each_kind_within_20_kb():
    page, history = REPO_ROOT / "docs" / "benchmarks.md", REPO_ROOT / "docs" / "benchmarks-history.md"
    assert page.stat().st_size < 20_000  # one page, read at a glance
    kinds = report.MARKER.findall(page.read_text())
    assert sorted(kinds) == ["allocator", "pieces", "run", "soak", "vocoder"]
    assert set(report.MARKER.findall(history.read_text())) <= set(kinds)


def test_machine_info_names_cpu_memory_and_torch():
    info = report.machine()
    assert f"{report.usable_cores()} usable cores" in info["CPU"]
    assert "torch" in info["Software"] and info["Memory"].endswith("GiB")


# --- command line ----------------------------------------------------------------------------


def test_arguments_scenarios_and_service_default():
    args = run.parse_args([])
    assert args.start_service and args.url == run.DEFAULT_URL
    assert args.scenarios == ["short", "paragraph", "c4", "c8", "c16"]
    args = run.parse_args(["--url", "http://other:9000/", "--scenarios", "short,c12"])
    assert not args.start_service and args.url == "http://other:9000"
    assert [run.scenario_clients(s) for s in args.scenarios] == [("short", 1), ("paragraph", 12)]
    assert run.parse_args(["--url", "http://x", "--start-service"]).start_service
    for bad in (["--scenarios", "short,long"], ["--scenarios", "c0"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_started_service_config_keeps_only_the_measured_version():
    from bench.service import config_for_versions

    original = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    config = config_for_versions(str(REPO_ROOT / "serve_config.yaml"), ["v1.0"])
    app, original_app = config["applications"][0], original["applications"][0]
    assert app["args"]["versions"] == ["v1.0"]
    assert {k: v for k, v in app["args"].items() if k != "versions"} == \
        {k: v for k, v in original_app["args"].items() if k != "versions"}
    assert [d for d in original_app["deployments"] if d["name"] != "KokoroV019Model"] == app["deployments"]
    assert config["http_options"] == original["http_options"]
    with pytest.raises(ValueError, match="v9"):
        config_for_versions(str(REPO_ROOT / "serve_config.yaml"), ["v1.0", "v9"])


def test_model_settings_override_batching_replicas_cpus_and_threads_of_the_models_only():
    from bench.service import config_for_versions, with_model_settings
    from serve_app.config import resolve_args
    from serve_app.config_check import validate_serve_config

    config = with_model_settings(config_for_versions(str(REPO_ROOT / "serve_config.yaml"), ["v1.0"]),
                                 max_batch_size=4, replicas=1, cpus=2, cpu_threads=1)
    validate_serve_config(config)
    app = config["applications"][0]
    assert resolve_args(app["args"]).batching.max_batch_size == 4
    assert resolve_args(app["args"]).cpu_threads == 1
    models = {d["name"]: d for d in app["deployments"]}
    assert models["KokoroV1Model"]["num_replicas"] == 1 and "autoscaling_config" not in models["KokoroV1Model"]
    assert models["KokoroV1Model"]["ray_actor_options"]["num_cpus"] == 2
    assert models["SpeechIngress"]["ray_actor_options"]["num_cpus"] == 0  # the ingress is left alone
    unchanged = config_for_versions(str(REPO_ROOT / "serve_config.yaml"), ["v1.0"])
    assert with_model_settings(unchanged) == config_for_versions(str(REPO_ROOT / "serve_config.yaml"), ["v1.0"])


def test_report_command_hides_the_api_key():
    command = run.shown_command(["--url", "http://h:1", "--api-key", "sk-secret", "--api-key=sk-other",
                                 "--repeats", "2"])
    assert "sk-" not in command
    assert command == "python -m bench.run --url http://h:1 --api-key '***' '--api-key=***' --repeats 2"


def test_paragraph_is_about_600_characters():
    assert 580 <= len(run.PARAGRAPH) <= 620


def test_run_compile_settings_are_modes_the_app_takes_each_once_for_a_started_service():
    args = run.parse_args(["--compile", "off, default"])
    assert args.compile == ["off", "default"] and args.warm_restart
    assert run.parse_args([]).compile is None  # the config's one setting
    assert not run.parse_args(["--compile", "default", "--no-warm-restart"]).warm_restart
    for bad in (["--compile", "off,off"], ["--compile", "fastest"], ["--compile", ","],
                ["--url", "http://x", "--compile", "off"]):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_run_without_compile_measures_the_setting_the_service_would_run(monkeypatch):
    from bench.service import config_for_versions
    from serve_app.config import AppArgs

    config = config_for_versions(str(REPO_ROOT / "bench/serve_config_cpu.yaml"), ["v1.0"])
    monkeypatch.delenv("KOKORO_COMPILE", raising=False)
    assert run.configured_compile(config) == config["applications"][0]["args"].get("compile", AppArgs().compile)
    config["applications"][0]["args"]["compile"] = "reduce-overhead"
    assert run.configured_compile(config) == "reduce-overhead"
    monkeypatch.setenv("KOKORO_COMPILE", "max-autotune-no-cudagraphs")  # the app takes the environment's first
    assert run.configured_compile(config) == "max-autotune-no-cudagraphs"


def test_service_config_carries_the_compile_setting_and_its_inductor_cache():
    from bench.service import config_for_versions, model_replicas, with_model_settings
    from serve_app.config import resolve_args

    config = with_model_settings(config_for_versions(str(REPO_ROOT / "bench/serve_config_cpu.yaml"), ["v1.0"]),
                                 replicas=3, compile="default", compile_cache_dir="/tmp/inductor-cache")
    args = resolve_args(config["applications"][0]["args"])
    assert (args.compile, args.compile_cache_dir) == ("default", "/tmp/inductor-cache")
    assert model_replicas(config) == 3
    assert model_replicas(config_for_versions(str(REPO_ROOT / "serve_config.yaml"), ["v1.0"])) >= 1  # autoscaled


def test_service_log_tells_each_replicas_vocoder_compiled_or_eager():
    from bench.service import replica_vocoders

    prefix = "(ServeReplica:kokoro:KokoroV1Model pid=4242) INFO 2030-01-01 00:00:00,000 kokoro_KokoroV1Model abc -- "
    log = "\n".join([
        prefix + "KOKORO v1.0 IS RUNNING WITH DUMMY RANDOM WEIGHTS: it produces noise, not speech.",
        prefix + "v1.0 replica ready on cpu with 1 torch threads, 54 voices, batches of up to 1, "
                 "vocoder compiled (max-autotune-no-cudagraphs) in 41.3 s",
        prefix + "v1.0 replica ready on cuda with 2 torch threads, 54 voices, batches of up to 32, vocoder eager",
        "INFO 2030-01-01 00:00:01 Application 'kokoro' is ready at http://127.0.0.1:8000/."])
    assert replica_vocoders(log) == [41.3, None]
    assert replica_vocoders("") == []


def setting_run(mode, factor, starts, rss_peak=int(1.2e9)):
    from bench.stats import SettingRun

    scenarios = {"short": measurement("short", 1, 0.9 * factor, 1.0 * factor, 3.0, wall=1.0 * factor),
                 "paragraph": measurement("paragraph", 1, 4.0, 21.0 * factor, 40.0, wall=21.0 * factor)}
    for m in scenarios.values():
        m.rss_peak = rss_peak
    return SettingRun(mode, starts, scenarios)


def lone_baseline():
    return baseline() + [measurement("short", 1, 1.0, 1.0, 3.0, wall=1.0, threads=2)]


def test_run_compile_targets_hold_compiled_settings_to_eager_and_in_process():
    from bench.stats import Start, compile_targets

    eager = setting_run("off", 1.0, [Start("none", 10.0, 12.0, int(1.10e9), [None, None])])
    compiled = setting_run("default", 0.5, [Start("fresh", 60.0, 62.0, int(1.05e9), [40.0, 41.0]),
                                            Start("warm", 20.0, 22.0, int(1.08e9), [4.0, 4.2])])
    lines = "\n".join(t.line() for t in compile_targets(compiled, eager, lone_baseline(), CORES))
    assert [t.passed for t in compile_targets(compiled, eager, lone_baseline(), CORES)] == [True] * 5, lines
    assert "0.450 / 1.000 = 0.450 (needs <= 0.8)" in lines       # short's first audio: 0.9 x 0.5 s
    assert "3.810 / 2.000 = 1.905 (needs >= 1.5)" in lines       # 40 s of audio in 10.5 s
    assert "fresh cache: 2/2 compiled (40.0 s, 41.0 s); warm cache: 2/2 compiled (4.0 s, 4.2 s)" in lines
    assert "1080 MB / 1100 MB = 0.982" in lines                  # the higher of its two starts
    assert "22.0 s - 12.0 s = +10.0 s (needs <= 30 s)" in lines

    # Eager: the lone request's targets only (it misses them); a replica left eager, more memory, late.
    assert [t.passed for t in compile_targets(eager, None, lone_baseline(), CORES)] == [False, False]
    late = setting_run("default", 0.5, [Start("fresh", 60.0, 62.0, int(1.2e9), [40.0, None]),
                                        Start("warm", 40.0, 42.5, int(1.0e9), [4.0, 4.2])])
    assert [t.passed for t in compile_targets(late, eager, lone_baseline(), CORES)][2:] == [False] * 3
    alone = setting_run("default", 0.5, [Start("fresh", 60.0, 62.0, None, [])])  # no eager, no log line, no restart
    assert [t.passed for t in compile_targets(alone, None, [], CORES)] == [None] * 5


def test_run_section_compares_each_compile_setting_with_eager(tmp_path):
    from bench.stats import Start

    eager = setting_run("off", 1.0, [Start("none", 10.0, 12.0, int(1.10e9), [None, None])], rss_peak=int(1.4e9))
    compiled = setting_run("default", 0.5, [Start("fresh", 60.0, 62.0, int(1.05e9), [40.0, 41.0]),
                                            Start("warm", 20.0, 22.0, int(1.08e9), [4.0, 4.2])])
    runs = [eager, compiled]
    section = run.render_settings("CPU, compiled and eager", "2030-01-01 00:00 UTC",
                                  "python -m bench.run --compile off,default", {"CPU": "Test CPU"},
                                  "http://127.0.0.1:8000", runs, lone_baseline(),
                                  run.setting_targets(runs, lone_baseline(), CORES))
    assert "Command: `python -m bench.run --compile off,default`" in section
    assert "| off | none | 10.0 | 12.0 | eager (2 replicas) | 1100 | 1400 |" in section
    assert "| default | fresh | 60.0 | 62.0 | 2/2 compiled (40.0 s, 41.0 s) | 1050 | 1200 |" in section
    assert "| default | warm | 20.0 | 22.0 | 2/2 compiled (4.0 s, 4.2 s) | 1080 | - |" in section
    assert "| default | short | 1 | 1 | 0 | 0.450 |" in section and "| off | paragraph | 1 | 1 | 0 | 4.000 |" in section
    # compiled / eager: first audio, audio s/s, peak memory per scenario; time to ready per start
    assert "| short | 0.50x | 2.00x | 0.86x |" in section and "| paragraph | 1.00x | 2.00x | 0.86x |" in section
    assert "- default: time to ready 5.17x on a fresh inductor cache, 1.83x on a warm inductor cache" in section
    targets = section.split("### Targets")[1]
    assert targets.index("compile off:") < targets.index("compile default:")
    assert "PASS  every replica runs the vocoder compiled (default)" in targets.split("compile default:")[1]
    assert "every replica runs the vocoder compiled" not in targets.split("compile default:")[0]
    report.record(section, "run", tmp_path / "benchmarks.md")  # a page's run section, like any other
    assert report.MARKER.findall((tmp_path / "benchmarks.md").read_text()) == ["run"]


# --- HTTP client against a fake speech server ------------------------------------------------

DELAY_S = 0.4                                     # before the first byte
PARTS = [b"\x01\x00" * 8000, b"\x02\x00" * 16000]  # 1 s of 24 kHz 16-bit pcm in all
GAP_S = 0.05


def fake_app(bodies: list):
    async def speech(request: Request):
        body = await request.json()
        bodies.append({**body, "authorization": request.headers.get("authorization")})
        if body.get("voice") == "missing":
            return JSONResponse({"error": {"message": "no such voice"}}, status_code=400)

        async def audio():
            await asyncio.sleep(DELAY_S)
            for part in PARTS:
                yield part
                await asyncio.sleep(GAP_S)
        return StreamingResponse(audio(), media_type="audio/pcm")

    async def health(_):
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/audio/speech", speech, methods=["POST"]), Route("/health", health)])


@pytest.fixture(scope="module")
def fake_server():
    bodies = []
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake_app(bodies), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "fake server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", bodies
    server.should_exit = True
    thread.join(timeout=5)


def test_client_measures_first_byte_and_exact_audio_seconds(fake_server):
    url, _ = fake_server
    samples, wall = asyncio.run(client.run_clients(url, {"input": "hi", "voice": "v"}, clients=1,
                                                   requests_per_client=2, timeout_s=10))
    assert len(samples) == 2
    for s in samples:
        assert s.error is None
        assert s.audio_s == 1.0                                   # 48000 bytes / 2 / 24000
        assert DELAY_S <= s.ttfb < s.total
        assert s.total >= DELAY_S + GAP_S
    assert wall >= sum(s.total for s in samples)                  # one client: back to back


def test_concurrent_clients_run_at_once_and_errors_are_counted(fake_server):
    url, _ = fake_server
    samples, wall = asyncio.run(client.run_clients(url, {"input": "hi", "voice": "v"}, clients=4,
                                                   requests_per_client=1, timeout_s=10))
    assert [s.error for s in samples] == [None] * 4
    assert wall < 3 * DELAY_S + 2 * GAP_S                         # one after another: over 4 x (DELAY_S + 2 GAP_S)
    failed, _ = asyncio.run(client.run_clients(url, {"input": "hi", "voice": "missing"}, 2, 1, 10))
    assert [(s.error, s.audio_s, s.ttfb) for s in failed] == [("HTTP 400", 0.0, None)] * 2
    refused, _ = asyncio.run(client.run_clients(f"http://127.0.0.1:{free_port()}", {}, 1, 1, 10))
    assert refused[0].error == "ConnectError"


def test_monitor_polls_endpoints_and_keeps_peak_rss(fake_server):
    url, _ = fake_server
    sizes = iter([{1: 100, 2: 300}, {1: 200}])

    async def scenario():
        async with client.Monitor(url, interval=0.1, rss=lambda: next(sizes, {})) as monitor:
            await asyncio.sleep(1.2)
        return monitor

    monitor = asyncio.run(scenario())
    assert len(monitor.polls["/health"]) >= 5
    assert {p.status for p in monitor.polls["/health"]} == {200}
    assert {p.status for p in monitor.polls["/v1/models"]} == {404}  # the fake has no /v1/models
    assert monitor.rss_peak == 300


def test_run_service_sends_pcm_streams_and_sizes_scenarios(fake_server):
    url, bodies = fake_server
    bodies.clear()
    args = Namespace(url=url, model="kokoro", voice="af_heart", scenarios=["short", "c2"], repeats=3,
                     timeout=10, poll_interval=0.2, api_key="sk-test")
    results, _ = asyncio.run(run.run_service(args))
    assert list(results) == ["short", "c2"]
    assert len(results["short"].samples) == 3                     # at least --repeats requests
    assert len(results["c2"].samples) == 4 and results["c2"].clients == 2  # ceil(3 / 2) per client
    assert len(bodies) == 1 + 3 + 4                               # warm-up first
    assert all(b["response_format"] == "pcm" and b["stream"] is True and b["model"] == "kokoro"
               and b["voice"] == "af_heart" and b["authorization"] == "Bearer sk-test" for b in bodies)
    assert [b["input"] for b in bodies[1:]] == [run.SHORT] * 3 + [run.PARAGRAPH] * 4
    assert results["c2"].polls["/health"]


# --- bench.run starting the service itself, with a tiny model ----------------------------------


@pytest.mark.slow
def test_run_starts_a_service_for_each_compile_setting_and_times_it_to_ready(tmp_path):
    """`bench.run --compile off,default` as `make bench` runs it, on `serve run` of a tiny model: each
    setting's service timed to ready and its scenarios run; the compiled one started again on the
    inductor cache its first start filled, where it compiles in less time."""
    from serve_app.versions import V1_0

    from tiny_release import tiny_config

    model_config = tmp_path / "tiny.json"
    model_config.write_text(json.dumps(tiny_config(V1_0)))
    port = free_port()
    config = yaml.safe_load((REPO_ROOT / "bench/serve_config_cpu.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    config["applications"][0]["args"]["configs"] = {"v1.0": str(model_config)}
    serve_config, out = tmp_path / "serve_config.yaml", tmp_path / "benchmarks.md"
    serve_config.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "KOKORO_"))}
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--url", f"http://127.0.0.1:{port}", "--start-service",
         "--serve-config", str(serve_config), "--no-in-process", "--scenarios", "short,s2", "--repeats", "1",
         "--replicas", "1", "--replica-cpus", "1", "--cpu-threads", "1", "--compile", "off,default",
         "--label", "tiny", "--out", str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = out.read_text()
    assert "--compile off,default" in text.split("Command: ")[1].splitlines()[0]
    starts = re.findall(r"^\| (\S+) \| (none|fresh|warm) \| ([\d.]+) \| ([\d.]+) \| ([^|]+) \|", text, re.MULTILINE)
    assert [(mode, cache) for mode, cache, *_ in starts] == [("off", "none"), ("default", "fresh"),
                                                             ("default", "warm")], text
    assert all(0 < float(health) <= float(ready) for _, _, health, ready, _ in starts)
    vocoders = {cache: vocoder.strip() for _, cache, _, _, vocoder in starts}
    assert vocoders["none"] == "eager (1 replica)"
    compile_s = {cache: float(re.fullmatch(r"1/1 compiled \(([\d.]+) s\)", vocoders[cache])[1])
                 for cache in ("fresh", "warm")}
    assert compile_s["warm"] < compile_s["fresh"], vocoders  # the second start found the first one's kernels
    for mode in ("off", "default"):
        assert re.search(rf"^\| {mode} \| short \| 1 \| 1 \| 0 \|", text, re.MULTILINE), text
        assert re.search(rf"^\| {mode} \| s2 \| 2 \| 2 \| 0 \|", text, re.MULTILINE), text
    assert "PASS  every replica runs the vocoder compiled (default)" in text
    assert "time to ready on a warm inductor cache within 30 s of eager's" in text


# --- replica memory and the in-process baseline ----------------------------------------------


@pytest.mark.slow
def test_replica_rss_finds_processes_by_title():
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "ray::ServeReplica:kokoro:KokoroV1Model"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "ray::ServeReplica:kokoro:KokoroV019Model"])
    try:
        # Right after exec the child holds a few pages; its size is real once Python has loaded.
        deadline = time.monotonic() + 10
        while (sizes := client.replica_rss()).get(fake.pid, 0) < 1e6:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert other.pid not in sizes
        assert fake.pid in client.replica_rss(within=os.getpid())  # a child of this process
        assert client.replica_rss(within=other.pid) == {}           # which has no children
    finally:
        fake.kill()
        other.kill()
        fake.wait()
        other.wait()


@pytest.mark.slow
def test_in_process_measure_with_a_tiny_model():
    from serve_app.versions import V1_0

    from tiny_release import tiny_config

    texts = {"short": "Hello there.", "paragraph": "One sentence. And another one, a little longer."}
    short, paragraph = in_process.measure(texts, procs=1, threads=1, repeats=2, voice="af_heart",
                                          config=tiny_config(V1_0), timeout_s=120)
    assert (short.text, paragraph.text, short.clients, short.threads) == ("short", "paragraph", 1, 1)
    for m in (short, paragraph):
        assert len(m.ok) == 2 and not m.errors
        assert all(0 < s.ttfb <= s.total and s.audio_s > 0 for s in m.samples)
        # the parent times each text between barriers: back to back requests, up to scheduling delays
        assert m.wall == pytest.approx(sum(s.total for s in m.samples), rel=0.1)
    assert paragraph.samples[0].audio_s > short.samples[0].audio_s


@pytest.mark.slow
def test_in_process_failure_in_a_worker_is_reported_not_waited_on():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="in-process benchmark failed"):  # torch rejects 0 threads
        in_process.measure({"short": "Hi."}, procs=1, threads=0, repeats=1, voice="af_heart", timeout_s=300)
    assert time.monotonic() - start < 120


@pytest.mark.slow
def test_piece_sizes_measures_every_size_each_round_and_reports_medians():
    import torch

    from bench import piece_sizes
    from serve_app.text.pieces import split_text
    from serve_app.versions import V1_0

    from tiny_release import tiny_config

    text = "One sentence here. Another, slightly longer sentence follows it. And a third one."
    threads = torch.get_num_threads()
    try:
        results = piece_sizes.measure([20, 200], rounds=2, text=text, config=tiny_config(V1_0))
    finally:
        torch.set_num_threads(threads)
    assert [r["pieces"] for r in results[20]] == [len(split_text(text, 20, 20))] * 2 != [1, 1]
    assert [r["pieces"] for r in results[200]] == [1, 1]
    for records in results.values():
        assert all(r["audio_s"] > 0 and r["wall"] > 0 and r["rss_rise"] >= 0 for r in records)
    section = piece_sizes.render("today", "python -m bench.piece_sizes", {"CPU": "test"}, 1, len(text), results)
    assert "| 200 | 1 |" in section and f"| 20 | {results[20][0]['pieces']} |" in section


@pytest.mark.parametrize(("operator", "kind"), [
    ("aten::mkldnn_convolution", "convolution"), ("aten::native_batch_norm", "norm"),
    ("aten::linalg_vector_norm", "norm"), ("aten::sin_", "elementwise"), ("aten::mul", "elementwise"),
    ("aten::cumsum", "other"), ("aten::addmm", "other")])
def test_vocoder_profile_sorts_operators_by_kind(operator, kind):
    from bench import vocoder_profile

    assert vocoder_profile.kind(operator) == kind


@pytest.mark.slow
def test_vocoder_profile_times_both_syntheses_and_counts_every_convolution(tmp_path):
    import torch

    from bench import vocoder_profile
    from serve_app.versions import V1_0

    from tiny_release import tiny_config

    threads = torch.get_num_threads()
    model, item = vocoder_profile.build(tiny_config(V1_0), threads, FEW_WORDS)
    with torch.inference_mode():
        walls, audio_s = vocoder_profile.wall_times(model, item, repeats=2)
        seconds = vocoder_profile.operator_seconds(model, item)
        convolutions = vocoder_profile.convolution_speeds(model, item)
        kokoro_audio, _ = model.forward_with_tokens(item.input_ids[None], item.ref_s, item.speed)
    assert {name: len(times) for name, times in walls.items()} == {
        "synthesize_batch": 2, "kokoro forward_with_tokens": 2}
    assert audio_s == pytest.approx(kokoro_audio.numel() / 24000)  # the same piece, the same durations
    assert seconds["convolution"] > 0 and all(value >= 0 for value in seconds.values())
    # Every convolution of the decoder runs once per piece, each counted with its multiply-adds.
    modules = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    assert sum(calls for calls, _, _ in convolutions.values()) == len(modules)
    assert all(spent > 0 and flops > 0 for _, spent, flops in convolutions.values())
    section = vocoder_profile.render("today", "python -m bench.vocoder_profile", {"CPU": "test"}, threads,
                                     audio_s, walls, seconds, convolutions, ceiling=100.0)
    assert "| synthesize_batch | 2 |" in section and "| convolution |" in section
    assert section.count("| Conv") == min(len(convolutions), vocoder_profile.SHOWN_CONVOLUTIONS)


@pytest.mark.slow
def test_gpu_batching_bench_measures_eager_and_compiled_on_the_cpu_without_kokoros_front_end(tmp_path):
    """The GPU benchmark with a tiny model on the CPU, eager and compiled (`default`), in a process where
    misaki cannot be imported (as on a GPU machine that carries only kokoro's wheel). Its one compile
    uses inductor's default cache, which the compiled-synthesis tests fill with the same graphs: a
    minute where it is filled, several on a cold cache of a busy 2-core machine."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from bench import gpu_batching
    from serve_app.versions import V1_0

    from tiny_release import tiny_config

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(V1_0)))
    results, out = tmp_path / "gpu.json", tmp_path / "bench.md"
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()
    code = ("import sys; sys.modules['misaki'] = None\n"  # None in sys.modules: `import misaki` fails
            "from bench import gpu_batching\n"
            f"sys.exit(gpu_batching.main(['--config', {str(config)!r}, '--clients', '1,3', '--batch-sizes', '1,3',"
            f" '--seconds', '0.5', '--piece', {FEW_WORDS!r}, '--compile-modes', 'off,default',"
            f" '--cache-dir', {cache!r}, '--json', {str(results)!r}, '--out', {str(out)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(results.read_text())
    off, default = data["modes"]
    assert (off["mode"], off["compile_s"], default["mode"]) == ("off", None, "default")
    assert default["compiled"] and default["compile_s"] > 0, default["failure"]
    rows = data["rows"]
    cells = {mode: [(r["clients"], r["max_batch_size"]) for r in rows if r["mode"] == mode]
             for mode in ("off", "default")}
    # Eager measures the grid; compiled modes its diagonal (clients == max batch size).
    assert cells == {"off": [(1, 1), (3, 1), (1, 3), (3, 3)], "default": [(1, 1), (3, 3)]}
    assert all(r["audio_per_s"] > 0 and r["pieces"] >= r["clients"] and r["first_p95"] >= r["first_p50"] > 0
               and r["failed_batches"] == 0 for r in rows)
    assert all(r["mean_batch"] == 1 for r in rows if r["max_batch_size"] == 1)
    # three callers at once, batches of up to three: they formed
    assert all(r["mean_batch"] > 1 for r in rows if (r["clients"], r["max_batch_size"]) == (3, 3))
    for r in rows:
        if r["mode"] == "default":
            assert r["x_eager_audio"] == pytest.approx(r["audio_per_s"] / next(
                e["audio_per_s"] for e in rows if e["mode"] == "off" and e["clients"] == r["clients"]
                and e["max_batch_size"] == r["max_batch_size"]))
            # Every batch called the vocoder once, compiled (its shape counted) or eagerly.
            assert r["vocoder_calls"] == r["batches"] and 0 <= r["eager_calls"] <= r["vocoder_calls"]
            assert (r["eager_calls"] < r["vocoder_calls"]) == (r["shapes"] > 0)
    page = out.read_text()
    assert page.count("<!-- bench: gpu -->") == 1 and "python -m bench.gpu_batching" in page
    assert "| off | 3 | 3 |" in page and "| default | 3 | 3 |" in page and "| default | " in page.split("### Cells")[0]
    # A run's JSON (a GPU machine's) recorded into a page: it replaces the section, the older one moves to the history.
    assert gpu_batching.main(["--render", str(results), "--out", str(out)]) == 0
    assert out.read_text().count("<!-- bench: gpu -->") == 1
    assert "| default | 3 | 3 |" in report.history_path(out).read_text()


@pytest.mark.slow
def test_allocator_bench_gives_each_variant_its_own_process_and_malloc_settings(tmp_path):
    """glibc reads MALLOC_* once at start-up: each variant must run in a process started with its own."""
    from bench import allocator
    from serve_app.versions import V1_0

    from tiny_release import tiny_config

    shipped = allocator.tuned_env()
    assert {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} <= set(shipped)
    bench_config = yaml.safe_load((REPO_ROOT / "bench/serve_config_cpu.yaml").read_text())
    bench_env = bench_config["applications"][0]["runtime_env"]["env_vars"]
    assert {k: str(v) for k, v in bench_env.items() if k.startswith("MALLOC_")} == shipped  # the bench runs them

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(V1_0)))
    results = allocator.measure_variants(rounds=1, seconds=0.3, trim_interval_s=60, config=config, piece=FEW_WORDS)
    assert len(results) == 4
    for name, (env, _) in allocator.variants(60).items():
        (row,) = results[name]
        assert row["malloc_env"] == env  # the process ran with this variant's settings, and only those
        assert row["audio_per_s"] > 0 and row["peak_mb"] >= row["idle_mb"] > 0 and row["page_faults"] > 0
    section = allocator.render(results, "python -m bench.allocator", "today")
    assert section.count("| glibc defaults") == 2 and section.count("| serve_config MALLOC_*") == 2
