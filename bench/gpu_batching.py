"""Batching on one accelerator: the replica's engine, model thread and batcher, in-process.

    python -m bench.gpu_batching                          # full-size dummy v1.0, the grid below
    python -m bench.gpu_batching --clients 32 --batch-sizes 1,8,32 --seconds 10

For each (clients, max batch size) pair, that many callers speak pieces through one
`KokoroEngine` (the replica's own engine and `ModelThread`) for --seconds, each caller one piece
after another, all pieces due now. Reported: audio seconds per second, batches and their mean
size and time, first audio p50/p95 (a piece's submission to its audio), and peak GPU memory.

Runs without Ray, without kokoro's text front end (misaki, spaCy) and without a network: the
pieces are phoneme strings, like the G2P's output for a 150-character sentence, so this
measures the model and the batcher alone. Needs torch, transformers, kokoro (its network code
only), loguru and pydantic: see docs/benchmarks.md for the wheels to carry.
"""
from datetime import datetime, timezone
from pathlib import Path
import argparse
import asyncio
import importlib
import importlib.util
import json
import statistics
import sys
import time
import types

# The G2P's phonemes for a 150-character sentence (v1.0 symbols): about 10 s of speech.
PIECE = ("ˈɛvɹi ˈivnɪŋ ðə kˈipəɹ klˈIzd ðə spˈIɹəl stˈɛɹz tə lˈIt ðə lˈæmp, kˈWntɪŋ ˈiʧ ʌv ðə wˈʌn "
         "hˈʌndɹəd ænd twˈɛlv stˈɛps ˈWt lˈWd æz hi wˈɛnt.")
CLIENTS = (1, 8, 32, 64)
BATCH_SIZES = (1, 8, 32, 64)


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


def build_engine(config: dict | None, device: str, max_batch_size: int, trim_interval_s: float = 0):
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

    model = replica_model(config, device)
    policy = BatchPolicy(max_batch_size=max_batch_size, trim_interval_s=trim_interval_s)
    torch.manual_seed(0)
    return PhonemeEngine(model, VoiceLibrary(V1_0, None), policy)


def replica_model(config: dict | None, device: str = "cpu"):
    """Dummy v1.0 (full size unless `config`) as a replica holds it: weight norm folded, on `device`."""
    from serve_app.model.dummy_weights import make_dummy_model
    from serve_app.model.loading import fold_weight_norm
    from serve_app.versions import V1_0

    return fold_weight_norm(make_dummy_model(V1_0, config or V1_0.packaged_config())).to(device)


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


def measure(engine, clients: int, seconds: float, piece: str) -> dict:
    import torch

    from serve_app.protocol import SynthesisOptions, VoiceBlend

    options = SynthesisOptions(VoiceBlend.single("af_heart"), "a", 1.0, seed=None)
    timings: list[tuple[int, float]] = []
    run_batch = engine.model_thread._run_batch

    def timed(items):
        started = time.perf_counter()
        results = run_batch(items)  # ends with the audio copied to the CPU: the device has finished
        timings.append((len(items), time.perf_counter() - started))
        return results

    engine.model_thread._run_batch = timed
    asyncio.run(speak_for(engine, options, clients, min(seconds, 2.0), piece))  # warm-up: kernels, allocator
    timings.clear()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    firsts, audio, wall = asyncio.run(speak_for(engine, options, clients, seconds, piece))
    engine.model_thread._run_batch = run_batch
    return {
        "clients": clients, "max_batch_size": engine.model_thread.policy.max_batch_size,
        "audio_per_s": audio / wall, "pieces": len(firsts), "batches": len(timings),
        "mean_batch": statistics.mean(n for n, _ in timings),
        "batch_ms": 1000 * statistics.median(t for _, t in timings),
        "first_p50": percentile(firsts, 0.5), "first_p95": percentile(firsts, 0.95),
        "gpu_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


def render(rows: list[dict], device: str, command: str) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Batching in-process on {device} ({date})", "", f"Command: `{command}`", "",
             "| Clients | Max batch | Audio s/s | Pieces | Batches | Mean batch | Batch p50 (ms) | "
             "First audio p50 (s) | First audio p95 (s) | Peak GPU memory (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        memory = f"{r['gpu_mem_mb']:.0f}" if r["gpu_mem_mb"] is not None else "n/a"
        lines.append(f"| {r['clients']} | {r['max_batch_size']} | {r['audio_per_s']:.1f} | {r['pieces']} | "
                     f"{r['batches']} | {r['mean_batch']:.1f} | {r['batch_ms']:.0f} | {r['first_p50']:.3f} | "
                     f"{r['first_p95']:.3f} | {memory} |")
    return "\n".join(lines) + "\n"


def add_piece_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--piece", default=PIECE, help="the phonemes each synthesis speaks (default: one "
                        "sentence, ~8 s of audio; the tests pass a few words)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_batching", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    numbers = lambda s: [int(n) for n in s.split(",") if n.strip()]  # noqa: E731
    parser.add_argument("--clients", type=numbers, default=list(CLIENTS), help="default %(default)s")
    parser.add_argument("--batch-sizes", type=numbers, default=list(BATCH_SIZES), help="default %(default)s")
    parser.add_argument("--seconds", type=float, default=12, help="measured seconds per pair (default 12)")
    parser.add_argument("--config", type=Path, help="a v1.0 config.json (default: the packaged full-size one)")
    parser.add_argument("--device", help="default cuda if available, else cpu")
    add_piece_argument(parser)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--out", type=Path, help="append the markdown section to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import_kokoro_network()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = json.loads(args.config.read_text()) if args.config else None
    rows = []
    for size in args.batch_sizes:
        engine = build_engine(config, device, size)
        for clients in args.clients:
            rows.append(measure(engine, clients, args.seconds, args.piece))
            print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    section = render(rows, name, " ".join(["python -m bench.gpu_batching", *(argv or sys.argv[1:])]))
    print("\n" + section)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.out:
        with args.out.open("a") as out:
            out.write("\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
