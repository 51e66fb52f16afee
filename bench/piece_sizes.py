"""How the piece size changes the model's speed and memory, in-process, with no server.

    python -m bench.piece_sizes                           # 100, 150, 200 and 400 characters
    python -m bench.piece_sizes --sizes 150,400 --rounds 5

The benchmark text is cut into pieces of at most N characters, as the ingress cuts requests, and
synthesised piece after piece the way a replica runs them: full-size dummy v1.0 with weight norm
folded, freed memory handed back after each piece. The sizes take turns for --rounds rounds, so
a shared machine's drift hits them alike; medians are reported and recorded in --out.
"""
from datetime import datetime, timezone
from pathlib import Path
import argparse
import logging
import os
import statistics
import sys
import threading
import time
import warnings

from . import report
from .in_process import dummy_pipeline
from .run import PARAGRAPH, shown_command
from .stats import SAMPLE_RATE

SAMPLE_EVERY_S = 0.02


class PeakRss:
    """While open, samples this process's resident memory; `.above_start` is the peak rise in bytes."""

    def __enter__(self) -> "PeakRss":
        import psutil  # ray puts its bundled psutil on sys.path

        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def above_start(self) -> int:
        return self.peak - self.start


def synthesize_in_pieces(pipeline, pack, pieces: list[str]) -> float:
    """Seconds of audio made, piece after piece, handing freed memory back after each."""
    from serve_app.model.model_thread import release_freed_memory

    samples = 0
    for piece in pieces:
        samples += sum(len(result.audio) for result in pipeline(piece, voice=pack) if result.audio is not None)
        release_freed_memory()
    return samples / SAMPLE_RATE


def measure(sizes: list[int], rounds: int, text: str, threads: int = 1, config: dict | None = None,
            voice: str = "af_heart") -> dict[int, list[dict]]:
    """Per size, one record per round: pieces, audio seconds, wall seconds, peak memory rise."""
    import ray  # noqa: F401  (puts its bundled psutil, which PeakRss uses, on sys.path)

    from serve_app.text.pieces import split_text

    pipeline, pack = dummy_pipeline(voice, threads, config, fold_weight_norm=True)
    synthesize_in_pieces(pipeline, pack, ["Warming up."])
    results: dict[int, list[dict]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            pieces = split_text(text, size, size)
            with PeakRss() as rss:
                start = time.perf_counter()
                audio_s = synthesize_in_pieces(pipeline, pack, pieces)
                wall = time.perf_counter() - start
            results[size].append({"pieces": len(pieces), "audio_s": audio_s, "wall": wall,
                                  "rss_rise": rss.above_start})
    return results


def render(date: str, command: str, machine: dict[str, str], threads: int, text_chars: int,
           results: dict[int, list[dict]]) -> str:
    lines = [f"## Chunk size, in-process, {threads} thread(s) ({date})", "", f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += [f"- Text: the benchmark paragraph twice ({text_chars} characters), cut as the ingress cuts it", ""]
    rows = []
    for size, records in results.items():
        audio_per_s = statistics.median(r["audio_s"] / r["wall"] for r in records)
        rise = statistics.median(r["rss_rise"] for r in records)
        rows.append([str(size), str(records[0]["pieces"]), f"{records[0]['audio_s']:.1f}",
                     f"{statistics.median(r['wall'] for r in records):.2f}", f"{audio_per_s:.3f}",
                     f"{rise / 1e6:.0f}", str(len(records))])
    lines += report.table(["Chunk chars", "Chunks", "Audio (s)", "Wall p50 (s)", "Audio s/s p50",
                           "Peak RSS rise p50 (MB)", "Rounds"], rows)
    return "\n".join(lines + [""])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.piece_sizes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,150,200,400", type=lambda s: [int(n) for n in s.split(",")],
                        help="piece limits in characters (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each size takes (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as a replica's num_cpus (default 1)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help=report.OUT_HELP)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1 or min(args.sizes) < 1:
        parser.error("--rounds, --threads and every size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore")
    logging.getLogger("ray.serve").setLevel(logging.ERROR)  # the dummy-weights warning
    text = " ".join([PARAGRAPH] * 2)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = measure(args.sizes, args.rounds, text, args.threads)
    section = render(date, shown_command(sys.argv[1:] if argv is None else argv, "bench.piece_sizes"),
                     report.machine(), args.threads, len(text), results)
    report.publish(args.out, section, "pieces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
