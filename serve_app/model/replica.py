"""A model replica's work: load one version's model and voices, speak pieces, report its health.

The model stack (torch, kokoro) lives here; `model_deployments` imports this module only inside a
replica, so the app builder and Serve's controller never load it."""
from pathlib import Path
import asyncio
import json

import ray
import torch

from ..config import CpuThreads, ModelSettings
from ..errors import ModelFileError, ServiceError
from ..logs import get_logger
from ..metrics import ReplicaMetrics
from ..protocol import SAMPLE_RATE, SynthesisOptions
from ..text.pronunciation import Lexicon
from ..versions import V0_19, V1_0, ModelVersion
from .compiled_vocoder import CompiledVocoder
from .dummy_weights import make_dummy_model
from .kokoro_v0_19 import KokoroV019Wrapper
from .kokoro_v1 import KokoroV1Wrapper
from .loading import fold_weight_norm, load_model
from .voices import VoiceLibrary

logger = get_logger()


def load_config(version: ModelVersion, config_path: str | None) -> dict:
    if config_path is None:
        return version.packaged_config()
    try:
        return json.loads(Path(config_path).read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"model config {config_path} for {version.name} cannot be read: {e}") from e


def set_cpu_threads(threads: CpuThreads) -> None:
    """torch's threads for this replica (ModelSettings.cpu_threads). torch's own default, every core
    of the machine, ignores both Ray's assignment and a pod's CPU limit."""
    context = ray.get_runtime_context()
    if threads is None:
        threads = round(context.get_assigned_resources().get("CPU", 1))
    elif threads == "node":
        node = next(n for n in ray.nodes() if n["NodeID"] == context.get_node_id())
        threads = round(node["Resources"].get("CPU", 1))
    torch.set_num_threads(max(1, threads))


# The engine each version's replica runs: kokoro's KModel wrapped with that version's front end.
ENGINES = {V1_0.name: KokoroV1Wrapper, V0_19.name: KokoroV019Wrapper}


class ModelReplica:
    """What every model version's replica does: load its model and voices, serve audio."""

    def __init__(self, version: ModelVersion, settings: ModelSettings):
        self.version = version
        set_cpu_threads(settings.cpu_threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        config = load_config(self.version, settings.config_path)
        if settings.weights == "dummy":
            model, voices = make_dummy_model(self.version, config), VoiceLibrary(self.version, None)
        else:
            root = Path(settings.model_root)
            model, voices = load_model(self.version, config, root), VoiceLibrary(self.version, root)
        model = fold_weight_norm(model).to(self.device)
        vocoder = None if settings.compile == "off" else CompiledVocoder(model.decoder, settings.compile,
                                                                          settings.compile_cache_dir)
        self.engine = ENGINES[version.name](model, voices, settings.batching, vocoder)
        if settings.lexicon_path is not None:  # a bad file fails the replica's start: a config error
            self.engine.lexicon = Lexicon.read(settings.lexicon_path, model.vocab, self.version.name)
        self._fatal: Exception | None = None
        self._counts = {"chunks": 0, "cancelled": 0}
        self._stuck_batch_s = settings.batching.stuck_batch_s
        self._metrics = ReplicaMetrics(self.version.name)
        self._vocoder = vocoder
        if vocoder is not None:  # before the replica reports ready: no request waits on a compile
            vocoder.warm_up(self.engine.speak_warm_up_shapes)
            if vocoder.failure is not None:
                self._metrics.compile_failed()
        compile_state = self.compile_state()
        self.engine.model_thread.on_batch = self._batch_done
        logger.info("%s replica ready on %s with %d torch threads, %d voices, batches of up to %d, vocoder %s",
                    self.version.name, self.device, torch.get_num_threads(), len(voices.names()),
                    self.engine.model_thread.policy.max_batch_size,
                    f"compiled ({settings.compile}) in {compile_state['seconds']:.1f} s"
                    if compile_state["compiled"] else "eager")

    async def forward(self, text: str, options: SynthesisOptions, due: float | None = None):
        """The engine's chunks of one piece, counted; a cancellation or a failure is logged."""
        try:
            async for chunk in self.engine.forward(text, options, due):
                self._counts["chunks"] += 1
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            self._counts["cancelled"] += 1
            logger.info("request %s: %s synthesis cancelled: the client went away",
                        options.request_id, self.version.name)
            raise
        except ServiceError:  # the client's mistake (a language not installed): it says so to them
            raise
        except Exception as e:
            logger.error("request %s: %s synthesis failed", options.request_id, self.version.name, exc_info=e)
            # A broken CUDA context does not heal (running out of memory does): let Serve replace the replica.
            if "CUDA" in str(e) and not isinstance(e, torch.cuda.OutOfMemoryError):
                self._fatal = e
            raise

    def _batch_done(self, size: int, seconds: float, results: list, waiting: int) -> None:
        audio_s = sum(len(result.audio) for result in results) / SAMPLE_RATE
        self._metrics.batch_done(size, seconds, audio_s, waiting)

    def compile_state(self) -> dict:
        if self._vocoder is None:
            return {"mode": "off", "compiled": False, "seconds": 0.0, "recompiles": 0}
        return self._vocoder.state()

    def stats(self) -> dict:
        return {**self._counts, "batches": dict(self.engine.model_thread.batch_sizes),
                "torch_threads": torch.get_num_threads(), "compile": self.compile_state()}

    def voices(self) -> list[str]:
        return self.engine.voices.names()

    def vocab(self) -> list[str]:
        return sorted(self.engine.model.vocab)

    async def phonemize(self, pieces: list[str], options: SynthesisOptions) -> list[tuple[str, list[int]]]:
        return [segment for piece in pieces for segment in await self.engine.phonemize(piece, options)]

    def check_health(self) -> None:
        if self._fatal is not None:
            raise RuntimeError(f"model unusable after: {self._fatal}")
        if (busy := self.engine.model_thread.busy_for()) > self._stuck_batch_s:
            raise RuntimeError(f"model thread stuck: one batch has run for {busy:.0f} s "
                               f"(stuck_batch_s {self._stuck_batch_s:g})")
        probe = torch.ones(1, device=self.device) + 1
        if probe.item() != 2:
            raise RuntimeError(f"{self.device} computes wrong results")
