"""Where one piece's synthesis spends its time: torch's operators by kind, and each convolution's speed.

    python -m bench.vocoder_profile                       # full-size dummy v1.0, 2 threads
    python -m bench.vocoder_profile --threads 1 --repeats 5

One ~10 s piece (bench.gpu_batching's phonemes) through `synthesize_batch`, as a replica runs it
on the CPU, weight norm folded. Reported: the median wall time of --repeats runs, beside kokoro's
own `forward_with_tokens` (KPipeline's model call) taking turns with it; the share of operator time
by kind (convolutions, norms, elementwise arithmetic, the rest) from torch.profiler; the slowest
convolution shapes' time and GFLOP/s; and a 2048 x 2048 matrix product's GFLOP/s on the same
threads, the machine's practical ceiling for dense arithmetic, with the audio s/s the piece's
convolutions alone would allow at it. A faster vocoder is judged here before the service benchmark.
"""
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
import argparse
import json
import logging
import statistics
import sys
import time
import warnings

from torch.profiler import ProfilerActivity, profile
import torch

from serve_app.model.batched_synthesis import SynthesisItem, synthesize_batch
from serve_app.model.dummy_weights import dummy_voice_pack
from serve_app.versions import V1_0

from . import report
from .gpu_batching import add_piece_argument, replica_model
from .run import shown_command
from .stats import SAMPLE_RATE

ELEMENTWISE = {"add", "add_", "mul", "mul_", "div", "div_", "sin", "sin_", "pow", "pow_", "exp", "tanh",
               "leaky_relu", "leaky_relu_", "sigmoid", "rsqrt", "sub", "sqrt", "remainder", "copy_"}
KINDS = ("convolution", "norm", "elementwise", "other")
SHOWN_CONVOLUTIONS = 12


def build(config: dict | None, threads: int, piece: str):
    """The replica's model (full-size dummy v1.0 unless `config`) and one seeded item of `piece`."""
    torch.set_num_threads(threads)
    model = replica_model(config)
    ids = [model.vocab[p] for p in piece if p in model.vocab]
    pack = dummy_voice_pack("af_heart", V1_0)
    return model, SynthesisItem(torch.tensor([0, *ids, 0]), pack[len(ids) - 1], 1.0, seed=0)


def kind(operator: str) -> str:
    name = operator.removeprefix("aten::")
    if "convolution" in name:
        return "convolution"
    if "norm" in name:
        return "norm"
    return "elementwise" if name in ELEMENTWISE else "other"


def wall_times(model, item, repeats: int) -> tuple[dict[str, list[float]], float]:
    """Seconds of each timed run of this project's synthesis and of kokoro's own forward (KPipeline's
    model call), taking turns so a shared machine's drift hits both; and the piece's audio seconds."""
    runs = {"synthesize_batch": lambda: synthesize_batch(model, [item]),
            "kokoro forward_with_tokens": lambda: model.forward_with_tokens(item.input_ids[None], item.ref_s,
                                                                            item.speed)}
    audio = synthesize_batch(model, [item])[0].audio  # warm-up: primitives and buffers
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times, len(audio) / SAMPLE_RATE


def operator_seconds(model, item) -> dict[str, float]:
    """Self CPU seconds of one run's operators, summed by kind."""
    with profile(activities=[ProfilerActivity.CPU]) as run:
        synthesize_batch(model, [item])
    seconds = dict.fromkeys(KINDS, 0.0)
    for event in run.key_averages():
        if event.key.startswith("aten::"):
            seconds[kind(event.key)] += event.self_cpu_time_total / 1e6
    return seconds


def convolution_speeds(model, item) -> dict[tuple, list[float]]:
    """Per convolution shape (module, in channels x samples, kernel, dilation, stride): [calls, seconds, flops]."""
    speeds = defaultdict(lambda: [0, 0.0, 0.0])
    starts = {}

    def before(module, inputs):
        starts[module] = time.perf_counter()

    def after(module, inputs, output):
        x = inputs[0]
        # Multiply-adds: each output sample of a convolution, or each input sample of a transposed one.
        samples = x.shape[-1] if isinstance(module, torch.nn.ConvTranspose1d) else output.shape[-1]
        key = (type(module).__name__, f"{x.shape[1]} x {x.shape[-1]}", module.kernel_size[0],
               module.dilation[0], module.stride[0])
        entry = speeds[key]
        entry[0] += 1
        entry[1] += time.perf_counter() - starts.pop(module)
        entry[2] += 2 * samples * module.weight.numel() * x.shape[0]  # the weight holds a group's channels only

    hooks = []
    for module in model.decoder.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        synthesize_batch(model, [item])
    finally:
        for hook in hooks:
            hook.remove()
    return dict(speeds)


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def render(date: str, command: str, machine: dict[str, str], threads: int, audio_s: float,
           walls: dict[str, list[float]], seconds: dict[str, float], convolutions: dict[tuple, list[float]],
           ceiling: float) -> str:
    lines = [f"## Vocoder profile, one piece in-process, {threads} thread(s) ({date})", "",
             f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    conv_flops = sum(flops for _, _, flops in convolutions.values())
    lines += [f"- One piece: {audio_s:.1f} s of audio; {ceiling:.0f} GFLOP/s from a 2048 x 2048 matrix product "
              f"on the same threads. Its convolutions alone ({conv_flops / 1e9:.0f} GFLOP) at that rate would "
              f"make at most {audio_s * ceiling * 1e9 / conv_flops:.2f} audio s/s", "", "### Wall time", ""]
    lines += report.table(["Synthesis", "Runs", "Wall p50 (s)", "Audio s/s"],
                          [[name, str(len(times)), f"{statistics.median(times):.2f}",
                            f"{audio_s / statistics.median(times):.2f}"] for name, times in walls.items()])
    lines += ["", "### Operator time (synthesize_batch)", ""]
    total = sum(seconds.values())
    lines += report.table(["Kind", "Seconds", "Share"],
                          [[k, f"{seconds[k]:.2f}", f"{100 * seconds[k] / total:.0f}%"] for k in KINDS])
    lines += ["", f"### Convolutions, the {SHOWN_CONVOLUTIONS} slowest shapes", ""]
    slowest = sorted(convolutions.items(), key=lambda entry: -entry[1][1])[:SHOWN_CONVOLUTIONS]
    rows = [[name, shape, str(kernel), str(dilation), str(stride), str(calls), f"{spent:.3f}",
             f"{flops / spent / 1e9:.0f}"]
            for (name, shape, kernel, dilation, stride), (calls, spent, flops) in slowest]
    lines += report.table(["Module", "Channels x samples in", "Kernel", "Dilation", "Stride", "Calls",
                           "Seconds", "GFLOP/s"], rows)
    return "\n".join(lines + [""])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.vocoder_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2: this machine's cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (default 3)")
    parser.add_argument("--config", type=Path, help="a v1.0 config.json (default: the packaged full-size one)")
    add_piece_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help=report.OUT_HELP)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore")
    logging.getLogger("ray.serve").setLevel(logging.ERROR)  # the dummy-weights warning
    model, item = build(json.loads(args.config.read_text()) if args.config else None, args.threads, args.piece)
    with torch.inference_mode():
        walls, audio_s = wall_times(model, item, args.repeats)
        seconds = operator_seconds(model, item)
        convolutions = convolution_speeds(model, item)
        ceiling = matmul_gflops()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = render(date, shown_command(sys.argv[1:] if argv is None else argv, "bench.vocoder_profile"),
                     report.machine(), args.threads, audio_s, walls, seconds, convolutions, ceiling)
    report.publish(args.out, section, "vocoder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
