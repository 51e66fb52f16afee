"""The machine a run measured on, and the markdown section it appends to docs/benchmarks.md."""
from pathlib import Path
import os
import platform
import subprocess

from .stats import Measurement, Target, poll_summary

FILE_HEADER = """# Benchmarks

Written by `python -m bench.run` (`make bench`) and `python -m bench.piece_sizes`
(`make bench-pieces`); each run appends a section. Model: Kokoro v1.0 at full size with dummy
random weights whose durations are realistic (~3 frames per phoneme), so compute per character
matches the real model; the audio is noise. Definitions:

- **First audio**: seconds from sending the request to the first non-empty chunk of the pcm stream
  (in-process: to KPipeline's first chunk).
- **Audio s/s**: audio seconds produced per wall second by all clients (processes) together,
  over the scenario's wall time.
- **RTF p50**: median over requests of (request time to the last byte / its audio seconds).
- **cN**: N clients start at once, each sending the paragraph; every scenario sends at least
  `--repeats` requests (each client sends ceil(repeats / N) back to back).
- **Replica RSS**: peak resident memory of the largest local KokoroV1Model replica process.
"""

COLUMNS = ["Requests", "Errors", "First audio p50 (s)", "First audio p95 (s)", "Whole p50 (s)",
           "Audio s/s", "RTF p50"]


def machine() -> dict[str, str]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal:")), None)
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {
        "CPU": f"{cpu}, {usable_cores()} usable cores ({os.cpu_count()} on the machine)",
        "Memory": f"{mem_kb / 2**20:.1f} GiB" if mem_kb else "unknown",
        "GPU": ", ".join(gpus) or "none",
        "Software": f"Python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}",
        "Commit": _git_commit(),
    }


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cells(m: Measurement) -> list[str]:
    errors = ", ".join(f"{name} x{n}" for name, n in m.errors.items()) or "0"
    return [str(len(m.samples)), errors, _num(m.ttfb_p50), _num(m.ttfb_p95), _num(m.total_p50),
            _num(m.audio_per_s, 2), _num(m.rtf_p50)]


def _poll_cell(m: Measurement, path: str) -> str:
    slowest, bad = poll_summary(m.polls.get(path, []))
    if slowest is None:
        return "-"
    return f"{slowest:.3f}" + ("".join(f"; {status} x{n}" for status, n in bad.items()))


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def render(label: str, date: str, command: str, machine_info: dict[str, str], endpoint: str,
           service: dict[str, Measurement], in_process: list[Measurement], rss_idle: int | None,
           targets: list[Target]) -> str:
    lines = [f"## {label} ({date})", "", f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in machine_info.items()]
    lines += [f"- Endpoint: {endpoint}", ""]
    if service:
        lines += ["### Service", ""]
        lines += table(["Scenario", "Clients"] + COLUMNS + ["/health slowest (s)", "/v1/models slowest (s)",
                                                            "Replica RSS peak (MB)"],
                        [[name, str(m.clients)] + _cells(m) + [_poll_cell(m, "/health"), _poll_cell(m, "/v1/models"),
                                                               _num(m.rss_peak and m.rss_peak / 1e6, 0)]
                         for name, m in service.items()])
        lines += ["", f"Replica RSS after warm-up: {_num(rss_idle and rss_idle / 1e6, 0)} MB", ""]
    if in_process:
        lines += ["### In-process KPipeline, no server", ""]
        lines += table(["Text", "Processes x threads"] + COLUMNS,
                        [[m.text, f"{m.clients} x {m.threads}"] + _cells(m) for m in in_process])
        lines += [""]
    lines += ["### Targets", "", "```"] + [t.line() for t in targets] + ["```", ""]
    return "\n".join(lines)


def append_report(path: Path, section: str) -> None:
    """Append a run's section, creating the file with its header first if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else FILE_HEADER
    path.write_text(existing.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n")


def publish(path: Path, section: str) -> None:
    """Print a run's section and append it to the results file."""
    print("\n" + section)
    append_report(path, section)
    print(f"appended to {path}")
