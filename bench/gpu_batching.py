"""Batching and compile modes on one accelerator: the replica's engine, model thread and vocoder, in-process.

    python -m bench.gpu_batching                          # full-size dummy v1.0, every compile mode, < 8 min
    python -m bench.gpu_batching --compile-modes off --clients 32 --batch-sizes 1,8,32 --seconds 10
    python -m bench.gpu_batching --render gpu.json --out docs/benchmarks.md   # record an earlier run's JSON

For each compile mode (`off`: kokoro's modules eagerly; `default`, `reduce-overhead` (CUDA graphs),
`max-autotune-no-cudagraphs`: the vocoder through `torch.compile`, as `compile` in the replica's
settings), the engine is built as a replica builds it: a `CompiledVocoder` warmed through
`KokoroEngine.speak_warm_up_shapes` (its seconds and any failure are reported), each mode on a
fresh inductor cache as a replica's first start (or on --cache-dir's). Then for each (clients,
max batch size) cell, that many callers speak pieces through the engine's `ModelThread` for
--seconds, one piece after another, all due now. Reported per cell: audio seconds per second,
batches, their mean size and time, first audio p50/p95 (a piece's submission to its audio), peak
GPU memory, and a compiled mode's ratios to eager at the same cell, how many of its vocoder calls
ran eagerly (shapes no warm-up compiled: the replica then runs eagerly rather than compile in a
request) and how many distinct input shapes its compiled code ran. Under `reduce-overhead` CUDA
graphs record a graph per new shape: the mode's peak GPU memory and recordings (from inductor's
log) show what that costs.

Runs without Ray, without kokoro's text front end (misaki, spaCy) and without a network: the
pieces are phoneme strings, like the G2P's output for a 150-character sentence, so this
measures the model and the batcher alone. Needs torch, transformers and numpy, plus kokoro (its
network code only), loguru and pydantic: bench/device_check.sh installs these from carried wheels.
"""
from datetime import datetime, timezone
from pathlib import Path
import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import types

# The G2P's phonemes for a 150-character sentence (v1.0 symbols): about 10 s of speech.
PIECE = ("ˈɛvɹi ˈivnɪŋ ðə kˈipəɹ klˈIzd ðə spˈIɹəl stˈɛɹz tə lˈIt ðə lˈæmp, kˈWntɪŋ ˈiʧ ʌv ðə wˈʌn "
         "hˈʌndɹəd ænd twˈɛlv stˈɛps ˈWt lˈWd æz hi wˈɛnt.")
# The replica's `compile` settings (serve_app.config), in the order they run: eager first, the baseline.
MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")

# The default run fits in 8 minutes on one GPU. A cell costs its in-cell warm-up (2 s), its
# measured seconds (5) and the last pieces' drain (up to ~3 s for batches of 64 ten-second pieces):
# ~10 s. Eager measures the whole 3 x 3 grid, 9 cells, ~90 s; each compiled mode the diagonal
# (clients == max batch: one caller's latency, 8, and 64's throughput), 3 cells, ~30 s, ~90 s for
# three. CUDA start and the full-size dummy model: ~20 s. That leaves ~220 s of the 420 s budget for
# three cold compiles of two graphs each (one item; a padded batch). Compile time is what the run
# measures, so the budget also enforces itself: a cell, or a mode's compile, that would end past
# --budget-s is skipped and reported as skipped; the JSON is rewritten after each cell, and a
# SIGTERM (device_check.sh's timeout) still records what was measured.
CLIENTS = (1, 8, 64)
BATCH_SIZES = (1, 8, 64)
SECONDS = 5.0
BUDGET_S = 420.0
FIRST_COMPILE_GUESS_S = 60.0  # before any compile has been timed in this run


class OutOfTime(BaseException):
    """SIGTERM: stop measuring and record what was measured (a BaseException: compile code catches Exception)."""


def import_kokoro_network() -> None:
    """kokoro's KModel, even where its text front end (misaki, spaCy) is not installed.

    `import kokoro` runs kokoro/__init__.py, which imports its pipeline and so misaki. Without
    misaki, the package is registered by its path, so that kokoro.model and its modules import
    on their own and `from kokoro import KModel` works.
    """
    try:
        import kokoro  # noqa: F401
        return
    except ImportError:
        pass
    spec = importlib.util.find_spec("kokoro")
    if spec is None:
        raise SystemExit("kokoro is not installed: pip install --no-deps kokoro==0.9.4 (and loguru)")
    package = types.ModuleType("kokoro")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["kokoro"] = package
    package.KModel = importlib.import_module("kokoro.model").KModel


def build_engine(config: dict | None, device: str, max_batch_size: int, trim_interval_s: float = 0,
                 model=None, vocoder=None):
    """The replica's engine over the dummy v1.0 model (`model`, or a new one), phonemes in."""
    import torch

    from serve_app.config import BatchPolicy
    from serve_app.model.engine import KokoroEngine, Segment
    from serve_app.model.voices import VoiceLibrary
    from serve_app.versions import V1_0

    class PhonemeEngine(KokoroEngine):
        """v1.0's engine with phonemes for input: the front end is not what this measures."""

        async def segments(self, text, options):
            return [Segment(text)]

        def style_row(self, phonemes, token_count):
            return len(phonemes) - 1

    model = replica_model(config, device) if model is None else model
    policy = BatchPolicy(max_batch_size=max_batch_size, trim_interval_s=trim_interval_s)
    torch.manual_seed(0)
    return PhonemeEngine(model, VoiceLibrary(V1_0, None), policy, vocoder)


def replica_model(config: dict | None, device: str = "cpu"):
    """Dummy v1.0 (full size unless `config`) as a replica holds it: weight norm folded, on `device`."""
    from serve_app.model.dummy_weights import make_dummy_model
    from serve_app.model.loading import fold_weight_norm
    from serve_app.versions import V1_0

    return fold_weight_norm(make_dummy_model(V1_0, config or V1_0.packaged_config())).to(device)


class ObservedVocoder:
    """A mode's `CompiledVocoder` as the replica calls it, counting what its compiled code did.

    After warm-up the replica runs the compiled code under the `eager_on_recompile` stance: a call
    whose shapes no warm-up compiled runs eagerly. Which calls those are depends on their shapes
    alone, so the first call of each new shape is tried under `fail_on_recompile` (its failure
    raises before anything runs; that call then runs eagerly, as the replica would), and later
    calls of a known shape go through `CompiledVocoder.__call__`, the replica's own path.
    """

    def __init__(self, vocoder):
        self.vocoder = vocoder
        self.warm = False
        self.compiles: dict[tuple, bool] = {}  # input shapes -> whether the compiled code runs them
        self.reset()

    def reset(self) -> None:
        self.calls = self.eager_calls = 0
        self.shapes: set[tuple] = set()

    def __call__(self, *inputs):
        import torch

        vocoder = self.vocoder
        if not self.warm:  # warm-up: compiling
            return vocoder(*inputs)
        self.calls += 1
        if vocoder.failure is not None:
            self.eager_calls += 1
            return vocoder(*inputs)
        key = _shapes(inputs)
        if key not in self.compiles:
            try:
                with torch.compiler.set_stance("fail_on_recompile"):
                    result = vocoder.compiled(*inputs)
                self.compiles[key] = True
            except RuntimeError as e:
                if "fail_on_recompile" not in str(e):
                    raise
                self.compiles[key] = False
                result = vocoder.eager(*inputs)
        else:
            result = vocoder(*inputs)
        if self.compiles[key]:
            self.shapes.add(key)
        else:
            self.eager_calls += 1
        return result


def _shapes(value) -> tuple:
    """The shapes (and dict keys) of the vocoder's inputs: what its compiled code's guards check."""
    if isinstance(value, dict):
        return tuple((key, _shapes(item)) for key, item in sorted(value.items()))
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(item) for item in value)
    return tuple(value.shape) if hasattr(value, "shape") else (value,)


class CudaGraphRecordings(logging.Handler):
    """Counts the CUDA graphs inductor records, from its `cudagraphs` log (one line per new shape)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Recording cudagraph tree"):
            self.count += 1

    @classmethod
    @contextlib.contextmanager
    def counting(cls):
        """The handler, attached while inside; None where this torch has no such log."""
        import torch._logging

        try:
            torch._logging.set_logs(cudagraphs=True)  # also prints each recording: a note in the run's log
            logger = torch._logging.getArtifactLogger("torch._inductor.cudagraph_trees", "cudagraphs")
        except Exception:  # noqa: BLE001 - torch's logging internals differ between versions
            yield None
            return
        handler = cls()
        logger.addHandler(handler)
        try:
            yield handler
        finally:
            logger.removeHandler(handler)
            torch._logging.set_logs()


async def speak_for(engine, options, clients: int, seconds: float, piece: str) -> tuple[list[float], float, float]:
    """`clients` callers speaking `piece` back to back for `seconds`: first-audio times, audio s, wall s."""
    firsts, audio = [], 0.0
    stop = time.perf_counter() + seconds

    async def caller():
        nonlocal audio
        while time.perf_counter() < stop:
            started = time.perf_counter()
            async for chunk in engine.forward(piece, options):
                firsts.append(time.perf_counter() - started)
                audio += chunk.seconds

    started = time.perf_counter()
    await asyncio.gather(*[caller() for _ in range(clients)])
    return firsts, audio, time.perf_counter() - started


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(engine, clients: int, seconds: float, piece: str, vocoder: ObservedVocoder | None = None) -> dict:
    import torch

    from serve_app.protocol import SynthesisOptions, VoiceBlend

    options = SynthesisOptions(VoiceBlend.single("af_heart"), "a", 1.0, seed=None)
    timings: list[tuple[int, float]] = []
    failed = 0
    run_batch = engine.model_thread._run_batch

    def timed(items):
        nonlocal failed
        started = time.perf_counter()
        try:
            results = run_batch(items)  # ends with the audio copied to the CPU: the device has finished
        except Exception:
            failed += 1  # the model thread then runs each item alone: counted, not hidden
            raise
        timings.append((len(items), time.perf_counter() - started))
        return results

    engine.model_thread._run_batch = timed
    try:
        asyncio.run(speak_for(engine, options, clients, min(seconds, 2.0), piece))  # warm-up: kernels, allocator
        timings.clear()
        failed = 0
        if vocoder is not None:
            vocoder.reset()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        firsts, audio, wall = asyncio.run(speak_for(engine, options, clients, seconds, piece))
    finally:
        engine.model_thread._run_batch = run_batch
    row = {
        "clients": clients, "max_batch_size": engine.model_thread.policy.max_batch_size,
        "audio_per_s": audio / wall, "pieces": len(firsts), "batches": len(timings),
        "mean_batch": statistics.mean(n for n, _ in timings),
        "batch_ms": 1000 * statistics.median(t for _, t in timings),
        "first_p50": percentile(firsts, 0.5), "first_p95": percentile(firsts, 0.95),
        "gpu_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "failed_batches": failed,
    }
    if vocoder is not None:
        row.update(vocoder_calls=vocoder.calls, eager_calls=vocoder.eager_calls, shapes=len(vocoder.shapes))
    return row


class Run:
    """One run's results, written to --json after every cell so that a run cut short keeps them."""

    def __init__(self, args: argparse.Namespace, command: str, device: str, device_name: str):
        from . import report

        self.args, self.device = args, device
        self.started = time.monotonic()
        self.deadline = self.started + args.budget_s
        self.cell_s = min(args.seconds, 2.0) + args.seconds + 2.0  # a guess until a cell is timed
        self.compile_guess_s = FIRST_COMPILE_GUESS_S
        self.data = {"command": command, "device": device_name,
                     "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "machine": report.machine(), "budget_s": args.budget_s, "modes": [], "rows": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.data["wall_s"] = round(time.monotonic() - self.started, 1)
        if self.args.json:
            self.args.json.write_text(json.dumps(self.data, indent=1))

    def cells(self, mode: str) -> list[tuple[int, int]]:
        grid = [(clients, size) for size in self.args.batch_sizes for clients in self.args.clients]
        if mode == "off" or self.args.compiled_cells == "all":
            return grid
        return [(clients, size) for clients, size in grid if clients == size] or grid

    def add_row(self, row: dict) -> None:
        eager = next((r for r in self.data["rows"] if r["mode"] == "off" and "audio_per_s" in r
                      and (r["clients"], r["max_batch_size"]) == (row["clients"], row["max_batch_size"])), None)
        if row["mode"] != "off" and "audio_per_s" in row and eager is not None:
            row["x_eager_audio"] = row["audio_per_s"] / eager["audio_per_s"]
            row["x_eager_first_p50"] = row["first_p50"] / eager["first_p50"]
        self.data["rows"].append(row)
        self.save()
        print(json.dumps(row), flush=True)

    def skip_rest(self, mode: str, cells: list[tuple[int, int]], reason: str) -> None:
        for clients, size in cells:
            self.add_row({"mode": mode, "clients": clients, "max_batch_size": size, "skipped": reason})

    def measure_mode(self, mode: str, config: dict | None, model) -> None:
        """Build the engines of one compile mode, warm (compile) its vocoder, and measure its cells."""
        import torch

        from serve_app.model.compiled_vocoder import INDUCTOR_CACHE_ENV, CompiledVocoder

        cuda = torch.cuda.is_available() and self.device == "cuda"
        cells = self.cells(mode)
        summary = {"mode": mode, "compile_s": None, "compiled": mode != "off", "failure": None}
        self.data["modes"].append(summary)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            summary["start_gpu_mb"] = torch.cuda.memory_allocated() / 2**20
        if mode != "off" and self.left() < self.compile_guess_s + self.cell_s:
            summary.update(compiled=False, skipped=f"budget: {self.left():.0f} s left, a compile takes "
                                                   f"~{self.compile_guess_s:.0f} s")
            self.skip_rest(mode, cells, "budget")
            self.save()
            return
        # Cold, as a replica's first start; or --cache-dir's, as a start on a volume an earlier one filled.
        cache = self.args.cache_dir or tempfile.mkdtemp(prefix=f"inductor-{mode}-")
        cache_env = os.environ.get(INDUCTOR_CACHE_ENV)  # the warm-up points inductor at `cache`: until the mode ends
        vocoder = None if mode == "off" else ObservedVocoder(CompiledVocoder(model.decoder, mode, cache))
        sizes = sorted({size for _, size in cells})
        engines = {size: build_engine(config, self.device, size, model=model, vocoder=vocoder) for size in sizes}
        try:
            with contextlib.ExitStack() as stack:
                recordings = stack.enter_context(CudaGraphRecordings.counting()) if cuda and uses_cuda_graphs(mode) \
                    else None
                if vocoder is not None:
                    self.compile(vocoder, engines[sizes[-1]], summary)
                for index, (clients, size) in enumerate(cells):
                    if self.left() < self.cell_s:
                        self.skip_rest(mode, cells[index:], "budget")
                        break
                    started = time.monotonic()
                    try:
                        row = measure(engines[size], clients, self.args.seconds, self.args.piece, vocoder)
                    except Exception as e:  # noqa: BLE001 - a mode that fails in service: reported, the run goes on
                        row = {"clients": clients, "max_batch_size": size, "skipped": _error(e)}
                    self.add_row({"mode": mode, **row})
                    self.cell_s = max(self.cell_s, time.monotonic() - started)
                if recordings is not None:
                    summary["cudagraph_recordings"] = recordings.count
        finally:
            if cuda:
                torch.cuda.synchronize()
                summary["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
            for engine in engines.values():  # the idle model threads let go of the mode's vocoder
                engine.model_thread._run_batch = _closed
            del engines, vocoder
            torch._dynamo.reset()  # the next mode compiles afresh, within dynamo's recompile limit
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            if not self.args.cache_dir:
                shutil.rmtree(cache, ignore_errors=True)
            if cache_env is None:
                os.environ.pop(INDUCTOR_CACHE_ENV, None)
            else:
                os.environ[INDUCTOR_CACHE_ENV] = cache_env
            self.save()

    def compile(self, vocoder: ObservedVocoder, engine, summary: dict) -> None:
        """Warm the vocoder as the replica does, through the engine of the largest batch size measured."""
        from torch._dynamo.utils import counters

        skips = counters["inductor"]["cudagraph_skips"]
        seconds = vocoder.vocoder.warm_up(engine.speak_warm_up_shapes)
        vocoder.warm = True
        failure = vocoder.vocoder.failure
        summary.update(compile_s=seconds, compiled=failure is None,
                       failure=None if failure is None else f"{type(failure).__name__}: {failure}"[:500],
                       cudagraph_skips=counters["inductor"]["cudagraph_skips"] - skips)
        self.compile_guess_s = max(self.compile_guess_s, 1.5 * seconds)
        self.save()
        print(json.dumps(summary), flush=True)


def uses_cuda_graphs(mode: str) -> bool:
    import torch._inductor

    try:
        return bool(torch._inductor.list_mode_options(mode).get("triton.cudagraphs"))
    except Exception:  # noqa: BLE001 - an older torch
        return mode in ("reduce-overhead", "max-autotune")


def _error(e: BaseException) -> str:
    return f"error: {type(e).__name__}: {e}"[:300]


def _closed(items):
    raise RuntimeError("this engine's mode is done")


def _num(value, digits: int, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def render(data: dict) -> str:
    lines = [f"## Batching and compile modes in-process on {data['device']} ({data['date']})", "",
             f"Command: `{data['command']}`", ""]
    lines += [f"- {key}: {value}" for key, value in data["machine"].items()]
    lines += [f"- Wall time: {_num(data.get('wall_s'), 0, ' s')} (budget {data['budget_s']:.0f} s)", "",
              "### Compile", "",
              "| Mode | Compile (s) | Result | Peak GPU memory (MB) | GPU memory at start (MB) | "
              "CUDA graphs recorded | cudagraph skips |", "|---|---|---|---|---|---|---|"]
    for m in data["modes"]:
        result = (m.get("skipped") or (f"FAILED, eager: {m['failure']}" if m["failure"] else
                                       "compiled" if m["compiled"] else "eager")).replace("|", "/").replace("\n", " ")
        lines.append(f"| {m['mode']} | {_num(m['compile_s'], 1)} | {result} | {_num(m.get('peak_gpu_mb'), 0)} | "
                     f"{_num(m.get('start_gpu_mb'), 0)} | {m.get('cudagraph_recordings', '-')} | "
                     f"{m.get('cudagraph_skips', '-')} |")
    lines += ["", "### Cells", "",
              "Ratios are to eager (`off`) at the same cell. Eager calls: vocoder calls of a compiled mode that ran "
              "eagerly (shapes no warm-up compiled). Shapes: distinct input shapes its compiled code ran.", "",
              "| Mode | Clients | Max batch | Audio s/s | x eager | First audio p50 (s) | x eager | "
              "First audio p95 (s) | Pieces | Batches | Mean batch | Batch p50 (ms) | Eager calls | Shapes | "
              "Failed batches | Peak GPU memory (MB) |", "|---" * 16 + "|"]
    for r in data["rows"]:
        if "skipped" in r:
            reason = r["skipped"].replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['mode']} | {r['clients']} | {r['max_batch_size']} | skipped ({reason}) |" + " |" * 12)
            continue
        eager_calls = f"{r['eager_calls']} of {r['vocoder_calls']}" if "eager_calls" in r else "-"
        lines.append(f"| {r['mode']} | {r['clients']} | {r['max_batch_size']} | {r['audio_per_s']:.1f} | "
                     f"{_num(r.get('x_eager_audio'), 2, 'x')} | {r['first_p50']:.3f} | "
                     f"{_num(r.get('x_eager_first_p50'), 2, 'x')} | {r['first_p95']:.3f} | {r['pieces']} | "
                     f"{r['batches']} | {r['mean_batch']:.1f} | {r['batch_ms']:.0f} | {eager_calls} | "
                     f"{r.get('shapes', '-')} | {r['failed_batches']} | {_num(r['gpu_mem_mb'], 0)} |")
    return "\n".join(lines) + "\n"


def add_piece_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--piece", default=PIECE, help="the phonemes each synthesis speaks (default: one "
                        "sentence, ~8 s of audio; the tests pass a few words)")


def compile_modes(text: str) -> list[str]:
    modes = [mode.strip() for mode in text.split(",") if mode.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown compile modes {unknown}: choose from {', '.join(MODES)}")
    return sorted(set(modes), key=MODES.index)  # eager first: the compiled modes' ratios need its cells


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_batching", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    numbers = lambda s: [int(n) for n in s.split(",") if n.strip()]  # noqa: E731
    parser.add_argument("--clients", type=numbers, default=list(CLIENTS), help="default %(default)s")
    parser.add_argument("--batch-sizes", type=numbers, default=list(BATCH_SIZES), help="default %(default)s")
    parser.add_argument("--seconds", type=float, default=SECONDS,
                        help="measured seconds per cell (default %(default)s)")
    parser.add_argument("--compile-modes", type=compile_modes, default=list(MODES),
                        help=f"comma list of the vocoder's compile modes, eager first (default {','.join(MODES)})")
    parser.add_argument("--compiled-cells", choices=("diagonal", "all"), default="diagonal",
                        help="the cells compiled modes measure: those with clients == max batch (default), or all "
                        "(eager always measures all)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S,
                        help="seconds from the start past which no cell or compile may end: what would is "
                        "skipped (default %(default)s)")
    parser.add_argument("--cache-dir", help="inductor's cache for every mode, kept: compile times of a start on a "
                        "filled cache volume (default: a fresh cache per mode, removed after it: a first start's)")
    parser.add_argument("--config", type=Path, help="a v1.0 config.json (default: the packaged full-size one)")
    parser.add_argument("--device", help="default cuda if available, else cpu")
    add_piece_argument(parser)
    parser.add_argument("--json", type=Path, help="also write the results here (after every cell)")
    parser.add_argument("--out", type=Path, help="markdown page whose current `gpu` result the run updates (through "
                        "bench.report: the run it replaces moves to <stem>-history.md beside it)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="measure nothing: render the --json of an earlier run (a GPU machine's) into --out")
    return parser.parse_args(argv)


def publish(data: dict, out: Path | None) -> None:
    from . import report

    section = render(data)
    if out is None:
        print("\n" + section)
    else:
        report.publish(out, section, "gpu")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        publish(json.loads(args.render.read_text()), args.out)
        return 0
    import_kokoro_network()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = json.loads(args.config.read_text()) if args.config else None
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    run = Run(args, " ".join(["python -m bench.gpu_batching", *(sys.argv[1:] if argv is None else argv)]),
              device, name)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _out_of_time)
    modes = list(args.compile_modes)
    try:
        model = replica_model(config, device)  # one model: each mode compiles its own vocoder over its decoder
        for mode in modes:
            try:
                run.measure_mode(mode, config, model)
            except Exception as e:  # noqa: BLE001 - the other modes still run
                if not run.data["modes"] or run.data["modes"][-1]["mode"] != mode:
                    run.data["modes"].append({"mode": mode, "compile_s": None, "compiled": False, "failure": None})
                run.data["modes"][-1].setdefault("skipped", _error(e))
                print(f"mode {mode}: {_error(e)}", file=sys.stderr, flush=True)
    except OutOfTime:
        for mode in modes:
            if mode not in {m["mode"] for m in run.data["modes"]}:
                run.data["modes"].append({"mode": mode, "compile_s": None, "compiled": False, "failure": None,
                                          "skipped": "terminated"})
            done = {(r["clients"], r["max_batch_size"]) for r in run.data["rows"] if r["mode"] == mode}
            run.skip_rest(mode, [cell for cell in run.cells(mode) if cell not in done], "terminated")
        run.data["terminated"] = True
        print("terminated: recording what was measured", file=sys.stderr, flush=True)
    run.save()
    publish(run.data, args.out)
    return 0


def _out_of_time(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
    raise OutOfTime()


if __name__ == "__main__":
    sys.exit(main())
