"""The machine a run measured on, and the markdown section it records in docs/benchmarks.md."""
from pathlib import Path
import os
import platform
import re
import subprocess

from .stats import Measurement, Target, poll_summary

# The page's text before its current results; record() writes it to a new page.
PAGE_HEADER = """# Benchmarks

The latest run of each benchmark: its command, the machine it ran on, its figures and its targets.
A new run replaces its benchmark's section here, and the run it replaces moves to the top of
[the history]({history}) (every earlier run, newest first). The line `<!-- bench: KIND -->` above
each section's heading tells the tools which benchmark wrote it: keep it when editing by hand.

The benchmarks, by kind:

- `run`, the service against in-process KPipeline: `make bench` (`python -m bench.run`).
  Targets: under "Targets", PASS, MISS, or n/a where a scenario was not run.
- `pieces`, model speed and memory by piece size: `make bench-pieces` (`python -m bench.piece_sizes`;
  `bench.chunk_sizes` before 0.2.0). No target: it informs `chunk_chars`.
- `allocator`, heap settings and trim policy: `make bench-allocator` (`python -m bench.allocator`).
  No target: it informs the MALLOC_* settings and `trim_interval_s`.
- `vocoder`, where one piece's time goes: `make bench-vocoder` (`python -m bench.vocoder_profile`).
  No target: it gives the machine's ceiling on audio s/s.
- `soak`, memory over hundreds of mixed requests: `make bench-soak` (`python -m bench.soak`).
  Target: idle growth after warm-up within 5%.

Each section is as its run wrote it, with any reading added by hand; a run that a reading calls
"above" or "the last run" is in the history. Model: Kokoro v1.0 at full size with dummy
random weights whose durations are realistic (~3 frames per phoneme), so compute per character
matches the real model; the audio is noise. Definitions:

- **First audio**: seconds from sending the request to the first non-empty chunk of the pcm stream
  (in-process: to KPipeline's first chunk).
- **Audio s/s**: audio seconds produced per wall second by all clients (processes) together,
  over the scenario's wall time.
- **RTF p50**: median over requests of (request time to the last byte / its audio seconds).
- **cN**: N clients start at once, each sending the paragraph; every scenario sends at least
  `--repeats` requests (each client sends ceil(repeats / N) back to back). **sN**: the same with
  a 148-character sentence (the concurrency sweep).
- **Replica RSS**: peak resident memory of the largest local KokoroV1Model replica process.

## Current results
"""

HISTORY_HEADER = """# Benchmark history

Every run that a later run of the same benchmark replaced in [the current results]({page}), newest
first: record() in bench/report.py moves each replaced section to the top. Sections are as their
runs wrote them, readings included, so "above" in them means an earlier run (further down here)
and "below" a later one.
"""

# The line above each section's heading that names its benchmark.
MARKER = re.compile(r"^<!-- bench: ([\w-]+) -->$", re.MULTILINE)
# The tools' --out help: the page is theirs to update, not to append to.
OUT_HELP = ("markdown page whose current results the run updates (default %(default)s); the run it replaces "
            "moves to <stem>-history.md beside it")

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


def history_path(page: Path) -> Path:
    return page.with_name(f"{page.stem}-history.md")


def _split(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first marker, and each (kind, section) from its marker to the next."""
    found = list(MARKER.finditer(text))
    head = text[:found[0].start()] if found else text
    ends = [m.start() for m in found[1:]] + [len(text)]
    return head, [(m.group(1), text[m.start():end].strip("\n")) for m, end in zip(found, ends)]


def _join(head: str, sections: list[str]) -> str:
    return "\n\n".join([head.rstrip("\n"), *sections]) + "\n"


def _read_or(path: Path, header: str) -> tuple[str, list[tuple[str, str]]]:
    return _split(path.read_text()) if path.exists() else (header, [])


def record(section: str, kind: str, page: Path, history: Path | None = None) -> None:
    """Make a run's section the page's current result of its kind, in place of the previous one
    (a new kind goes last), and move the replaced section to the top of the history file."""
    history = history or history_path(page)
    page.parent.mkdir(parents=True, exist_ok=True)
    head, sections = _read_or(page, PAGE_HEADER.format(history=os.path.relpath(history, page.parent)))
    new = (kind, f"<!-- bench: {kind} -->\n{section.strip()}")
    kinds = [k for k, _ in sections]
    if kind in kinds:
        index = kinds.index(kind)
        history_head, earlier = _read_or(history, HISTORY_HEADER.format(page=os.path.relpath(page, history.parent)))
        # History first: a failure between the two writes leaves the old run in both files, not in neither.
        history.write_text(_join(history_head, [sections[index][1]] + [text for _, text in earlier]))
        sections[index] = new
    else:
        sections.append(new)
    page.write_text(_join(head, [text for _, text in sections]))


def publish(path: Path, section: str, kind: str) -> None:
    """Print a run's section and record it as the current result of its kind in the results page."""
    print("\n" + section)
    record(section, kind, path)
    print(f"recorded in {path}; the run it replaced, if any, is now at the top of {history_path(path)}")
