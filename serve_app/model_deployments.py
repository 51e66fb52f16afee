"""Ray Serve deployments holding the models, one deployment per model version."""
from pathlib import Path
import asyncio
import json

from ray import serve
import ray
import torch

from .config import BatchPolicy, ModelSettings
from .dummy_weights import make_dummy_model
from .errors import ModelFileError
from .kokoro_v0_19 import KokoroV019Wrapper
from .kokoro_v1 import KokoroV1Wrapper
from .logs import get_logger
from .model_loading import fold_weight_norm, load_model
from .protocol import SynthesisOptions
from .versions import V0_19, V1_0, ModelVersion
from .voices import VoiceLibrary

logger = get_logger()


def load_config(version: ModelVersion, config_path: str | None) -> dict:
    if config_path is None:
        return version.packaged_config()
    try:
        return json.loads(Path(config_path).read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"model config {config_path} for {version.name} cannot be read: {e}") from e


def use_assigned_cpus() -> None:
    # torch defaults to every core of the node; a replica should use the CPUs Ray gave it.
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, round(cpus)))


class ModelReplica:
    """What every model version's replica does: load its model and voices, serve audio."""
    version: ModelVersion

    def __init__(self, settings: ModelSettings):
        use_assigned_cpus()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        config = load_config(self.version, settings.config_path)
        if settings.weights == "dummy":
            model, voices = make_dummy_model(self.version, config), VoiceLibrary(self.version, None)
        else:
            root = Path(settings.model_root)
            model, voices = load_model(self.version, config, root), VoiceLibrary(self.version, root)
        self.engine = self.make_engine(fold_weight_norm(model).to(self.device), voices, settings.batching)
        self._fatal: Exception | None = None
        self._counts = {"chunks": 0, "cancelled": 0}
        logger.info("%s replica ready on %s with %d torch threads, %d voices, batches of up to %d",
                    self.version.name, self.device, torch.get_num_threads(), len(voices.names()),
                    self.engine.model_thread.policy.max_batch_size)

    def make_engine(self, model, voices: VoiceLibrary, batching: BatchPolicy):
        raise NotImplementedError

    async def forward(self, text: str, options: SynthesisOptions, due: float | None = None):
        """Audio of one piece of text, already validated by the ingress; `due` (epoch seconds)
        is when its client needs it."""
        try:
            async for chunk in self.engine.forward(text, options, due):
                self._counts["chunks"] += 1
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            self._counts["cancelled"] += 1
            logger.info("%s synthesis cancelled: the client went away", self.version.name)
            raise
        except RuntimeError as e:
            # A broken CUDA context does not heal (running out of memory does): let Serve replace the replica.
            if "CUDA" in str(e) and not isinstance(e, torch.cuda.OutOfMemoryError):
                self._fatal = e
            raise

    def stats(self) -> dict:
        """Audio chunks made, calls cancelled and batches run by size (what tests and operators watch)."""
        return {**self._counts, "batches": dict(self.engine.model_thread.batch_sizes)}

    def voices(self) -> list[str]:
        return self.engine.voices.names()

    def check_health(self) -> None:
        if self._fatal is not None:
            raise RuntimeError(f"model unusable after: {self._fatal}")
        probe = torch.ones(1, device=self.device) + 1
        if probe.item() != 2:
            raise RuntimeError(f"{self.device} computes wrong results")


# A model that cannot load (missing or bad weights) is a failed deployment after a few tries, not a
# retry loop. Set here because Serve's config-file schema has no max_constructor_retry_count.
CONSTRUCTOR_RETRIES = 3


@serve.deployment(name=V1_0.deployment, max_constructor_retry_count=CONSTRUCTOR_RETRIES)
class KokoroV1Model(ModelReplica):
    version = V1_0

    def make_engine(self, model, voices, batching):
        return KokoroV1Wrapper(model, voices, batching)


@serve.deployment(name=V0_19.deployment, max_constructor_retry_count=CONSTRUCTOR_RETRIES)
class KokoroV019Model(ModelReplica):
    version = V0_19

    def make_engine(self, model, voices, batching):
        return KokoroV019Wrapper(model, voices, batching)


MODEL_DEPLOYMENTS = {V1_0.name: KokoroV1Model, V0_19.name: KokoroV019Model}
