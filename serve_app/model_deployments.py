"""Ray Serve deployments holding the models, one deployment per model version.

Torch-free: the app builder imports this module, and so does Serve's controller when it builds
the app. Each deployment imports the model stack (`model_replica`) in its own replica only.
"""
import os

from ray import serve

from .config import ModelSettings
from .protocol import SynthesisOptions
from .versions import V0_19, V1_0, ModelVersion


class ModelDeployment:
    """A model version's replica as Serve calls it: every call goes to its `ModelReplica`."""
    version: ModelVersion

    def __init__(self, settings: ModelSettings):
        from .model.replica import ModelReplica  # the model stack, in the replica's process only
        self._replica = ModelReplica(self.version, settings)

    async def forward(self, text: str, options: SynthesisOptions, due: float | None = None):
        """Audio of one piece of text, already validated by the ingress; `due` (epoch seconds)
        is when its client needs it. Returns the replica's own stream, which Serve reads."""
        return self._replica.forward(text, options, due)

    def stats(self) -> dict:
        """Chunks made, calls cancelled, batches run by size, torch threads (what tests and operators watch)."""
        return self._replica.stats()

    def voices(self) -> list[str]:
        return self._replica.voices()

    def vocab(self) -> list[str]:
        """The phoneme symbols the model has tokens for (the ingress checks phoneme input with them)."""
        return self._replica.vocab()

    async def phonemize(self, pieces: list[str], options: SynthesisOptions) -> list[tuple[str, list[int]]]:
        """What the model is given for each piece, segment by segment: phonemes and token ids."""
        return await self._replica.phonemize(pieces, options)

    def pid(self) -> int:
        """The replica's process id (the fault tests kill it)."""
        return os.getpid()

    def check_health(self) -> None:
        self._replica.check_health()


# A model that cannot load (missing or bad weights) is a failed deployment after a few tries, not a
# retry loop. Set here because Serve's config-file schema has no max_constructor_retry_count.
CONSTRUCTOR_RETRIES = 3


@serve.deployment(name=V1_0.deployment, max_constructor_retry_count=CONSTRUCTOR_RETRIES)
class KokoroV1Model(ModelDeployment):
    version = V1_0


@serve.deployment(name=V0_19.deployment, max_constructor_retry_count=CONSTRUCTOR_RETRIES)
class KokoroV019Model(ModelDeployment):
    version = V0_19


MODEL_DEPLOYMENTS = {V1_0.name: KokoroV1Model, V0_19.name: KokoroV019Model}
