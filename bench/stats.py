"""What one benchmark measurement holds, the numbers derived from it, and the targets."""
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 24000  # pcm: 16-bit mono at 24 kHz


@dataclass
class Sample:
    """One request (or one in-process synthesis of a text)."""
    ttfb: float | None  # seconds from sending to the first audio; None if none came
    total: float        # seconds from sending to the end of the response
    audio_s: float      # seconds of audio received
    error: str | None = None


@dataclass
class Poll:
    latency: float
    status: int | str   # HTTP status, or the exception's name


@dataclass
class Measurement:
    """A scenario: `clients` concurrent clients (or processes) sending `text`, closed loop."""
    text: str           # "short" or "paragraph"
    clients: int
    samples: list[Sample]
    wall: float         # seconds from the first request sent to the last one finished
    threads: int | None = None  # in-process only: torch threads per process
    polls: dict[str, list[Poll]] = field(default_factory=dict)  # service only: path -> polls
    rss_peak: int | None = None  # service only: bytes, largest KokoroV1Model replica

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None]

    @property
    def errors(self) -> Counter:
        return Counter(s.error for s in self.samples if s.error is not None)

    @property
    def ttfb_p50(self) -> float | None:
        return percentile([s.ttfb for s in self.ok], 50)

    @property
    def ttfb_p95(self) -> float | None:
        return percentile([s.ttfb for s in self.ok], 95)

    @property
    def total_p50(self) -> float | None:
        return percentile([s.total for s in self.ok], 50)

    @property
    def audio_per_s(self) -> float | None:
        """Audio seconds produced per wall second, all clients together."""
        audio = sum(s.audio_s for s in self.ok)
        return audio / self.wall if audio and self.wall > 0 else None

    @property
    def rtf_p50(self) -> float | None:
        """Median real-time factor of a request: its time to the last byte / its audio seconds."""
        return percentile([s.total / s.audio_s for s in self.ok if s.audio_s > 0], 50)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default); None for no values."""
    return float(np.percentile(values, q)) if values else None


def poll_summary(polls: list[Poll]) -> tuple[float | None, Counter]:
    """Slowest answer, and how many answers were not 200, by status."""
    slowest = max((p.latency for p in polls), default=None)
    return slowest, Counter(p.status for p in polls if p.status != 200)


# --- targets --------------------------------------------------------------------------------

PARAGRAPH_TTFB_SHARE = 0.25   # first audio / in-process time for the whole paragraph
ONE_STREAM_SHARE = 0.90       # service audio s/s / in-process audio s/s, one stream
CONCURRENT_SHARE = 0.95       # 8 clients' audio s/s / best in-process figure on all cores
FAIRNESS_FACTOR = 3.0         # 4 clients' median first audio / one client's
POLL_LIMIT_S = 0.5            # /health and /v1/models during the 4-client run
RSS_LIMIT = 1.5e9             # bytes, one v1.0 replica
# Batching (issue 12): a lone request no slower than in-process; 8+ clients well above it.
LONE_SHORT_TTFB_SHARE = 1.0   # short sentence's first audio / in-process (1 process, all cores)
LONE_STREAM_SHARE = 1.0       # one stream's audio s/s / in-process (1 process, all cores)
BATCHED_SHARE = 1.5           # 8 or more clients' audio s/s / best in-process figure on all cores


@dataclass
class Target:
    name: str
    passed: bool | None  # None: not measured in this run
    detail: str

    def line(self) -> str:
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[self.passed]
        return f"{verdict}  {self.name}: {self.detail}"


def _ratio_target(name: str, value: float | None, reference: float | None, *, at_most: float | None = None,
                  at_least: float | None = None, what: str = "", also: tuple[bool, str] = (True, "")) -> Target:
    if value is None or not reference:
        return Target(name, None, f"not measured ({what or 'missing scenario or baseline'})")
    ratio = value / reference
    passed = (at_most is None or ratio <= at_most) and (at_least is None or ratio >= at_least) and also[0]
    limit = f"<= {at_most:g}" if at_most is not None else f">= {at_least:g}"
    return Target(name, passed, f"{value:.3f} / {reference:.3f} = {ratio:.3f} (needs {limit}){also[1]}")


def _poll_target(path: str, measurement: Measurement | None) -> Target:
    name = f"{path} answers within {POLL_LIMIT_S} s during the 4-client run"
    polls = measurement.polls.get(path, []) if measurement else []
    if not polls:
        return Target(name, None, "not measured (no c4 run or no polls)")
    slowest, bad = poll_summary(polls)
    passed = slowest <= POLL_LIMIT_S and not bad
    detail = f"slowest {slowest:.3f} s over {len(polls)} polls"
    if bad:
        detail += "; not 200: " + ", ".join(f"{status} x{n}" for status, n in bad.items())
        if 404 in bad:
            detail += " (404: endpoint not implemented)"
    return Target(name, passed, detail)


def evaluate(service: dict[str, Measurement], in_process: list[Measurement], cores: int,
             rss_peak: int | None) -> list[Target]:
    """The issue's targets; service is keyed by scenario name (short, paragraph, c4, ...)."""
    paragraph, c4, c8 = service.get("paragraph"), service.get("c4"), service.get("c8")
    base = next((m for m in in_process if m.text == "paragraph" and m.clients == 1 and m.threads == cores), None)
    best = max((m.audio_per_s or 0 for m in in_process
                if m.text == "paragraph" and m.clients * m.threads == cores), default=None)

    c8_also = (True, "")
    if c8 is not None:
        served = len(c8.ok) == len(c8.samples) and bool(c8.samples)
        p95 = f"{c8.ttfb_p95:.3f} s" if c8.ttfb_p95 is not None else "none"
        c8_also = (served and c8.ttfb_p95 is not None,
                   f"; served {len(c8.ok)}/{len(c8.samples)}; first audio p95 {p95}")
    rss_target = (Target("v1.0 replica RSS under 1.5 GB", None, "not measured (no local KokoroV1Model replica)")
                  if rss_peak is None else
                  Target("v1.0 replica RSS under 1.5 GB", rss_peak < RSS_LIMIT,
                         f"peak {rss_peak / 1e6:.0f} MB (limit {RSS_LIMIT / 1e6:.0f} MB)"))
    return [
        _ratio_target("paragraph first audio <= 25% of in-process whole-paragraph time (1 process, all cores)",
                      paragraph and paragraph.ttfb_p50, base and base.total_p50, at_most=PARAGRAPH_TTFB_SHARE),
        _ratio_target("one stream audio s/s >= 90% of in-process (1 process, all cores)",
                      paragraph and paragraph.audio_per_s, base and base.audio_per_s, at_least=ONE_STREAM_SHARE),
        _ratio_target("8 clients audio s/s >= 95% of best in-process on all cores, all served",
                      c8 and c8.audio_per_s, best, at_least=CONCURRENT_SHARE, also=c8_also),
        _ratio_target("4 clients median first audio <= 3x one client's",
                      c4 and c4.ttfb_p50, paragraph and paragraph.ttfb_p50, at_most=FAIRNESS_FACTOR),
        _poll_target("/health", c4),
        _poll_target("/v1/models", c4),
        rss_target,
    ]


def batching_targets(service: dict[str, Measurement], in_process: list[Measurement], cores: int,
                     lone: bool = True) -> list[Target]:
    """A lone request uses the whole machine; 8 or more clients get well past in-process. `lone=False`:
    the 8+ clients' targets only (compile_targets holds the lone request to stricter ones)."""
    def base(text: str) -> Measurement | None:
        return next((m for m in in_process if m.text == text and m.clients == 1 and m.threads == cores), None)

    short, paragraph = service.get("short"), service.get("paragraph")
    targets = [] if not lone else [
        _ratio_target("short sentence first audio <= 1.0x in-process (1 process, all cores)",
                      short and short.ttfb_p50, (b := base("short")) and b.ttfb_p50, at_most=LONE_SHORT_TTFB_SHARE),
        _ratio_target("one stream audio s/s >= 1.0x in-process (1 process, all cores)",
                      paragraph and paragraph.audio_per_s, (b := base("paragraph")) and b.audio_per_s,
                      at_least=LONE_STREAM_SHARE),
    ]
    for name, m in service.items():
        if m.clients >= 8:
            best = max((i.audio_per_s or 0 for i in in_process
                        if i.text in (m.text, "paragraph") and i.clients * i.threads == cores), default=None)
            served = (len(m.ok) == len(m.samples), f"; served {len(m.ok)}/{len(m.samples)}")
            targets.append(_ratio_target(f"{name} audio s/s >= 1.5x best in-process on all cores",
                                         m.audio_per_s, best, at_least=BATCHED_SHARE, also=served))
    return targets


# --- the compiled vocoder (issue 22): each compile setting on a service of its own ----------

COMPILED_SHORT_TTFB_SHARE = 0.8  # a lone short sentence's first audio / in-process (1 process, all cores)
COMPILED_STREAM_SHARE = 1.5      # a lone paragraph's audio s/s / in-process (1 process, all cores)
IDLE_RSS_SHARE = 1.0             # a compiled replica's idle memory / an eager one's
READY_SLACK_S = 30.0             # time to ready on a warm inductor cache, less an eager service's
# and, as for batching: 8 or more clients >= BATCHED_SHARE x in-process; a replica's peak under RSS_LIMIT.


@dataclass
class Start:
    """One start of the service, until a first request was answered."""
    cache: str                   # the inductor cache it started on: "fresh", "warm", or "none" (eager)
    health_s: float | None       # seconds from `serve run` until /health answered 200
    ready_s: float | None        # ... until a first short request's audio had all come
    rss_idle: int | None         # bytes, largest KokoroV1Model replica right after that request
    vocoders: list[float | None] = field(default_factory=list)  # per replica: compile seconds; None: eager


@dataclass
class SettingRun:
    """A compile setting's service: its starts (the first one ran the scenarios) and its scenarios."""
    mode: str
    starts: list[Start]
    service: dict[str, Measurement]

    @property
    def rss_idle(self) -> int | None:
        """The highest idle memory over its starts."""
        return max((s.rss_idle for s in self.starts if s.rss_idle is not None), default=None)

    @property
    def rss_peak(self) -> int | None:
        """The highest memory measured, in the scenarios or idle."""
        sizes = [m.rss_peak for m in self.service.values() if m.rss_peak is not None]
        return max(sizes + [s.rss_idle for s in self.starts if s.rss_idle is not None], default=None)

    @property
    def warm_start(self) -> Start | None:
        return next((s for s in self.starts if s.cache == "warm"), None)


def vocoder_summary(vocoders: list[float | None]) -> str:
    """`2/2 compiled (41.0 s, 40.2 s)`, `eager (2 replicas)`, or `-` when no replica logged its start."""
    if not vocoders:
        return "-"
    seconds = [v for v in vocoders if v is not None]
    if not seconds:
        return f"eager ({len(vocoders)} replica{'s' * (len(vocoders) > 1)})"
    return f"{len(seconds)}/{len(vocoders)} compiled ({', '.join(f'{v:.1f} s' for v in seconds)})"


def compile_targets(run: SettingRun, eager: SettingRun | None, in_process: list[Measurement],
                    cores: int) -> list[Target]:
    """A lone request well ahead of in-process; for a compiled setting also: its replicas compiled,
    no more idle memory than eager replicas, and ready on a warm cache about as soon."""
    def base(text: str) -> Measurement | None:
        return next((m for m in in_process if m.text == text and m.clients == 1 and m.threads == cores), None)

    short, paragraph = run.service.get("short"), run.service.get("paragraph")
    targets = [
        _ratio_target(f"short sentence first audio <= {COMPILED_SHORT_TTFB_SHARE:g}x in-process "
                      "(1 process, all cores)", short and short.ttfb_p50, (b := base("short")) and b.ttfb_p50,
                      at_most=COMPILED_SHORT_TTFB_SHARE),
        _ratio_target(f"one stream audio s/s >= {COMPILED_STREAM_SHARE:g}x in-process (1 process, all cores)",
                      paragraph and paragraph.audio_per_s, (b := base("paragraph")) and b.audio_per_s,
                      at_least=COMPILED_STREAM_SHARE),
    ]
    if run.mode == "off":
        return targets

    name = f"every replica runs the vocoder compiled ({run.mode})"
    if not any(start.vocoders for start in run.starts):
        targets.append(Target(name, None, "not measured (no replica's `replica ready` line in the serve log)"))
    else:
        passed = all(start.vocoders and None not in start.vocoders for start in run.starts)
        targets.append(Target(name, passed, "; ".join(f"{start.cache} cache: {vocoder_summary(start.vocoders)}"
                                                      for start in run.starts)))
    name = "replica idle RSS no higher than eager's (the highest of each setting's starts)"
    if run.rss_idle is None or eager is None or not eager.rss_idle:
        targets.append(Target(name, None, "not measured (no eager setting or no local replica)"))
    else:
        ratio = run.rss_idle / eager.rss_idle
        targets.append(Target(name, ratio <= IDLE_RSS_SHARE, f"{run.rss_idle / 1e6:.0f} MB / {eager.rss_idle / 1e6:.0f}"
                                                             f" MB = {ratio:.3f} (needs <= {IDLE_RSS_SHARE:g})"))
    name = f"time to ready on a warm inductor cache within {READY_SLACK_S:g} s of eager's"
    warm, eager_start = run.warm_start, eager and eager.starts[0]
    if warm is None or warm.ready_s is None or eager_start is None or eager_start.ready_s is None:
        targets.append(Target(name, None, "not measured (no eager setting or no warm restart)"))
    else:
        late = warm.ready_s - eager_start.ready_s
        targets.append(Target(name, late <= READY_SLACK_S, f"{warm.ready_s:.1f} s - {eager_start.ready_s:.1f} s = "
                                                           f"{late:+.1f} s (needs <= {READY_SLACK_S:g} s)"))
    return targets
