"""The baseline: the same model called in-process through KPipeline, no server.

Each measurement runs in fresh processes (multiprocessing 'spawn'), each building its own
full-size dummy model, so `procs` x `threads` can be compared on the same footing and the
benchmark process itself stays free of torch threads while it drives the service.
"""
import logging
import multiprocessing
import os
import queue
import threading
import time
import traceback
import warnings

from .stats import SAMPLE_RATE, Measurement, Sample

WARMUP_TEXT = "Warming up."


def dummy_pipeline(voice: str, threads: int, config: dict | None = None, device: str = "cpu",
                   fold_weight_norm: bool = False):
    """Full-size dummy v1.0 on `threads` torch threads: the KPipeline a request for `voice` uses,
    and the voice's pack. `fold_weight_norm` prepares the model as a replica does."""
    import torch

    from serve_app.model import loading as model_loading
    from serve_app.model.dummy_weights import make_dummy_model
    from serve_app.model.kokoro_v1 import KokoroV1Wrapper
    from serve_app.model.voices import VoiceLibrary
    from serve_app.protocol import VoiceBlend
    from serve_app.versions import V1_0

    torch.set_num_threads(threads)
    model = make_dummy_model(V1_0, config or V1_0.packaged_config()).eval()
    if fold_weight_norm:
        model_loading.fold_weight_norm(model)
    # The service's own wrapper builds the pipeline (espeak English when spaCy's model is missing).
    wrapper = KokoroV1Wrapper(model.to(device), VoiceLibrary(V1_0, None))
    return wrapper.pipeline(V1_0.lang_code(None, voice)), wrapper.voices.pack(VoiceBlend.single(voice))


def synthesize(pipeline, pack, text: str) -> Sample:
    """Synthesise all of `text`; first audio = the pipeline's first chunk."""
    start = time.perf_counter()
    ttfb, samples = None, 0
    for result in pipeline(text, voice=pack):
        if result.audio is not None:  # KModel returns audio on the CPU, so timings include the device's work
            ttfb = ttfb if ttfb is not None else time.perf_counter() - start
            samples += len(result.audio)
    return Sample(ttfb, time.perf_counter() - start, samples / SAMPLE_RATE)


def _worker(texts: list[str], repeats: int, voice: str, threads: int, device: str, config: dict | None,
            barrier, results) -> None:
    """Build the model, warm up, then for each text: wait for all workers, synthesise it `repeats`
    times, wait again (the parent times each text between the barriers)."""
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        warnings.simplefilter("ignore")                          # torch's and kokoro's, once per process
        logging.getLogger("serve_app").setLevel(logging.ERROR)   # the dummy-weights warning, ditto
        pipeline, pack = dummy_pipeline(voice, threads, config, device)
        synthesize(pipeline, pack, WARMUP_TEXT)
        samples = []
        for text in texts:
            barrier.wait()
            samples.append([synthesize(pipeline, pack, text) for _ in range(repeats)])
        barrier.wait()
        results.put(samples)
    except BaseException:
        barrier.abort()  # the parent and the other workers stop waiting
        results.put(traceback.format_exc())
        raise


def _abort_if_one_dies(workers, barrier, done: threading.Event) -> None:
    """A worker killed outright (out of memory) cannot abort the barrier itself."""
    while not done.wait(1.0):
        if any(worker.exitcode not in (None, 0) for worker in workers):
            barrier.abort()
            return


def measure(texts: dict[str, str], procs: int, threads: int, repeats: int, voice: str,
            device: str = "cpu", config: dict | None = None, timeout_s: float = 3600) -> list[Measurement]:
    """`procs` processes with `threads` torch threads each synthesise every text `repeats` times,
    all processes on the same text at once; one Measurement per text."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(procs + 1, timeout=timeout_s), context.Queue()
    workers = [context.Process(target=_worker, daemon=True,
                               args=(list(texts.values()), repeats, voice, threads, device, config, barrier, results))
               for _ in range(procs)]
    for worker in workers:
        worker.start()
    done = threading.Event()
    threading.Thread(target=_abort_if_one_dies, args=(workers, barrier, done), daemon=True).start()
    walls = []
    try:
        barrier.wait()  # every worker built and warmed up
        for _ in texts:
            start = time.perf_counter()
            barrier.wait()
            walls.append(time.perf_counter() - start)
        outputs = [results.get(timeout=60) for _ in workers]
    except threading.BrokenBarrierError:
        try:
            failure = results.get(timeout=10)
        except queue.Empty:
            failure = f"a worker died or took over {timeout_s} s"
        raise RuntimeError(f"in-process benchmark failed:\n{failure}") from None
    finally:
        done.set()
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    return [Measurement(name, procs, [s for out in outputs for s in out[i]], walls[i], threads=threads)
            for i, name in enumerate(texts)]
