"""What the heap allocator and the trim policy cost a CPU replica, in-process, with no server.

    python -m bench.allocator                     # 2 rounds of the four variants below
    python -m bench.allocator --rounds 3 --seconds 30 --out docs/benchmarks.md

The replica's own engine and model thread (bench.gpu_batching's phoneme engine, full-size dummy
v1.0, batching off) serve two callers speaking a sentence back to back, so the thread is never
idle, as under load. Each variant runs in a fresh process, because glibc reads its MALLOC_*
settings once at start-up:
- allocator: glibc's defaults, or the MALLOC_* env of serve_config.yaml's runtime_env;
- trim: `malloc_trim` after every step (version 0.1), or when the thread is idle and at most every
  `trim_interval_s` under load.
The variants take turns for --rounds rounds, so a shared machine's drift hits them alike; medians
of audio seconds per second and peaks of resident memory are reported.
"""
from pathlib import Path
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

import yaml

from . import report
from .gpu_batching import add_piece_argument, build_engine, import_kokoro_network, measure

SERVE_CONFIG = Path(__file__).resolve().parent.parent / "serve_config.yaml"


def tuned_env() -> dict[str, str]:
    """The MALLOC_* variables the shipped serve_config.yaml gives every replica."""
    env = yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]["runtime_env"]["env_vars"]
    return {key: str(value) for key, value in env.items() if key.startswith("MALLOC_")}


def variants(trim_interval_s: float) -> dict[str, tuple[dict[str, str], float]]:
    """name -> (extra environment, trim interval): glibc's defaults or serve_config's, each trim policy."""
    return {
        "glibc defaults, trim every step": ({}, 0.0),
        f"glibc defaults, trim when idle or every {trim_interval_s:g} s": ({}, trim_interval_s),
        "serve_config MALLOC_*, trim every step": (tuned_env(), 0.0),
        f"serve_config MALLOC_*, trim when idle or every {trim_interval_s:g} s": (tuned_env(), trim_interval_s),
    }


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(trim_interval_s: float, seconds: float, config: dict | None, piece: str) -> dict:
    """One variant, in this process: audio s/s of two callers, peak and idle resident memory."""
    import_kokoro_network()
    import torch

    from serve_app.model.model_thread import release_freed_memory

    torch.set_num_threads(os.cpu_count() or 1)
    engine = build_engine(config, "cpu", 1, trim_interval_s)
    row = measure(engine, 2, seconds, piece)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    release_freed_memory()  # what an idle replica returns
    return {"audio_per_s": row["audio_per_s"], "peak_mb": usage.ru_maxrss / 1024, "idle_mb": rss_mb(),
            "page_faults": usage.ru_minflt + usage.ru_majflt, "sys_s": usage.ru_stime,
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}


def run_variant(env: dict[str, str], trim_interval_s: float, seconds: float, config: Path | None,
                piece: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    command = [sys.executable, "-m", "bench.allocator", "--worker", str(trim_interval_s), "--seconds", str(seconds),
               "--piece", piece]
    done = subprocess.run(command + (["--config", str(config)] if config else []), env={**clean, **env},
                          capture_output=True, text=True, check=True, cwd=SERVE_CONFIG.parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_variants(rounds: int, seconds: float, trim_interval_s: float, config: Path | None,
                     piece: str) -> dict[str, list[dict]]:
    """Every variant's rows, the variants taking turns round after round."""
    results: dict[str, list[dict]] = {name: [] for name in variants(trim_interval_s)}
    for _ in range(rounds):
        for name, (env, interval) in variants(trim_interval_s).items():
            results[name].append(run_variant(env, interval, seconds, config, piece))
            print(name, json.dumps(results[name][-1]), flush=True)
    return results


def render(results: dict[str, list[dict]], command: str, date: str) -> str:
    lines = [f"## Heap allocator and trim policy, in-process, CPU ({date})", "", f"Command: `{command}`", "",
             "| Variant | Audio s/s (median) | Peak RSS (MB) | Idle RSS (MB) | Page faults | System CPU (s) |",
             "|---|---|---|---|---|---|"]
    for name, rows in results.items():
        lines.append(f"| {name} | {statistics.median(r['audio_per_s'] for r in rows):.2f} | "
                     f"{max(r['peak_mb'] for r in rows):.0f} | {max(r['idle_mb'] for r in rows):.0f} | "
                     f"{statistics.median(r['page_faults'] for r in rows):.0f} | "
                     f"{statistics.median(r['sys_s'] for r in rows):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.allocator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="turns each variant takes (default 2)")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per turn (default 20)")
    parser.add_argument("--trim-interval", type=float, default=60, help="the policy's trim_interval_s (default 60)")
    parser.add_argument("--config", type=Path, help="a v1.0 config.json (default: the packaged full-size one)")
    add_piece_argument(parser)
    parser.add_argument("--out", type=Path, help="record the section in this markdown page (default: print only); "
                        "the run it replaces moves to <stem>-history.md beside it")
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)  # a variant's own process
    args = parser.parse_args(argv)
    if args.worker is not None:
        config = json.loads(args.config.read_text()) if args.config else None
        print(json.dumps(worker(args.worker, args.seconds, config, args.piece)))
        return 0
    from datetime import datetime, timezone

    results = measure_variants(args.rounds, args.seconds, args.trim_interval, args.config, args.piece)
    command = " ".join(["python -m bench.allocator", *(argv if argv is not None else sys.argv[1:])])
    section = render(results, command, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    if args.out:
        report.publish(args.out, section, "allocator")
    else:
        print("\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
