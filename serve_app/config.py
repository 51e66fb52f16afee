"""The application's typed arguments (`serve_config.yaml`'s `args`) and what each deployment gets.

Torch-free: `serve_app.first_run` and the ingress import it.
"""
from pathlib import Path
from typing import Annotated, Literal
import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .text.pieces import FIRST_PIECE_CHARS, PIECE_CHARS
from .versions import DEFAULT_VERSION, VERSIONS

# Batch sizes when the config sets none, from the benchmarks (docs/benchmarks.md).
CPU_MAX_BATCH_SIZE = 1
GPU_MAX_BATCH_SIZE = 32

# Environment variables that take precedence over the config file's args. Read where Serve builds the app:
# a Ray worker with the cluster's environment plus the app's runtime_env, not `serve run`'s shell
# (`make serve` carries the shell's into runtime_env: serve_app.weights.first_run.effective_config).
ENV_OVERRIDES = {"weights": "KOKORO_WEIGHTS", "model_root": "KOKORO_MODEL_ROOT", "compile": "KOKORO_COMPILE"}
# The API key: the key itself, or a file holding it (a mounted Kubernetes secret). Set but empty is an error.
API_KEY_ENV, API_KEY_FILE_ENV = "KOKORO_API_KEY", "KOKORO_API_KEY_FILE"


class IngressConfig(BaseModel):
    """What the HTTP ingress needs: request limits, text cutting, concurrency, access."""

    model_config = ConfigDict(extra="forbid")

    max_input_chars: int = Field(10_000, gt=0, description="Longest `input` taken; longer is a 413.")
    pieces_in_flight: int = Field(2, ge=1, description=(
        "Model calls of one request running at once, so free replicas synthesise ahead."))
    first_piece_chars: int = Field(FIRST_PIECE_CHARS, gt=0, description=(
        "Most characters in a request's first piece of text: small, so first audio comes fast."))
    piece_chars: int = Field(PIECE_CHARS, gt=0, description="Most characters in each later piece.")
    start_timeout_s: float = Field(30, gt=0, description=(
        "A request whose first audio is not made within this is shed: 503 with Retry-After, not a long wait."))
    piece_timeout_s: float = Field(120, gt=0, description=(
        "Longest wait for any later piece's audio once the stream needs it; then the stream ends with an error."))
    model_call_timeout_s: float = Field(30, gt=0, description=(
        "Longest wait for a model version's answer to a call that makes no audio (its voices and symbols, "
        "asked by its first request; /v1/audio/phonemize). A version with no running replica is then a 503 "
        "with Retry-After saying whether it is starting or failed, not a wait as long as the proxy's."))
    api_key: SecretStr | None = Field(None, description=(
        "When set, every route but /health and the web page needs `Authorization: Bearer <key>`. "
        "Set it with env KOKORO_API_KEY or KOKORO_API_KEY_FILE (a file holding it), not in a committed config."))
    cors_origins: list[str] = Field(default_factory=list, description=(
        "Web origins (`https://app.example.com`, or `*`) whose pages may call the API from a browser."))
    live_idle_s: float = Field(1.0, gt=0, description=(
        "Live speech (/v1/audio/speech/live): text held this long with no new text and no boundary is spoken."))
    live_unacked_audio_s: float = Field(30.0, gt=0, description=(
        "Live speech: most seconds of audio sent and not yet acknowledged (`ack`) by the client; then it waits."))


class BatchPolicy(BaseModel):
    """How a replica's model thread groups waiting items (phoneme sequences) into batches."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int | None = Field(None, ge=1, description=(
        "Most items in one batch; 1 switches batching off. Unset: the device's default "
        "(CPU_MAX_BATCH_SIZE, GPU_MAX_BATCH_SIZE)."))
    max_batch_tokens: int | None = Field(None, ge=1, description=(
        "Most tokens (phonemes) in one batch, when set; a lone longer item still runs."))
    wait_ms: float = Field(0.0, ge=0, le=1000, description=(
        "How long a free model thread may wait for more items while other streams of its replica "
        "are between items. Never taken with a lone stream."))
    trim_interval_s: float = Field(60.0, ge=0, description=(
        "CPU models: freed heap memory goes back to the system when the thread is idle, and at "
        "most this often under load (each trim makes the next step fault its memory in again)."))
    stuck_batch_s: float = Field(300, gt=0, description=(
        "A model thread busy on one batch longer than this fails the replica's health check, so Serve replaces it."))

    def for_device(self, device: str) -> "BatchPolicy":
        """This policy with the device's default batch size filled in."""
        if self.max_batch_size is not None:
            return self
        default = GPU_MAX_BATCH_SIZE if device == "cuda" else CPU_MAX_BATCH_SIZE
        return self.model_copy(update={"max_batch_size": default})


# torch threads of a CPU model replica: a count, "node" (every CPU Ray counts on the replica's node:
# a pod's CPU limit under KubeRay), or None (the CPUs Ray assigned the replica).
CpuThreads = Annotated[int, Field(ge=1)] | Literal["node"] | None
CPU_THREADS_DOC = (
    "torch threads of each CPU model replica. Unset: the CPUs Ray assigned it (num_cpus). `node` or a count "
    "above num_cpus lets a lone request use cores its replica was not assigned; when every replica is busy "
    "they share the cores, at 2-10% of throughput on a 2-core machine (docs/benchmarks.md).")


# torch.compile's mode for the vocoder, or `off` for eager PyTorch (serve_app.model.compiled_vocoder).
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"]
COMPILE_DOC = (
    "How model replicas run the vocoder: `off` (eager PyTorch) or a torch.compile mode. Compiling takes "
    "tens of seconds at replica start (less from a warm compile_cache_dir); on 2 CPU cores it gained only 2-5% "
    "through the service (docs/benchmarks.md). A compile that fails leaves the replica serving eagerly. "
    "Env KOKORO_COMPILE overrides.")
COMPILE_CACHE_DOC = (
    "Where inductor keeps compiled kernels between starts (TORCHINDUCTOR_CACHE_DIR): replicas that share it "
    "start in seconds, not a minute. Unset: inductor's default under /tmp.")


class ModelSettings(BaseModel):
    """What a model replica needs to load its version."""

    version: str = Field(description="The model version served: a key of serve_app.versions.VERSIONS.")
    weights: Literal["local", "dummy"] = Field(description="Files under model_root, or random weights (noise).")
    model_root: str = Field(description="Absolute path of the local layout of weights and voices.")
    config_path: str | None = Field(None, description="A config.json to use instead of the packaged one.")
    batching: BatchPolicy = Field(default_factory=BatchPolicy, description="Batching across requests.")
    lexicon_path: str | None = Field(None, description="A custom lexicon (word -> phonemes) for this version.")
    cpu_threads: CpuThreads = Field(None, description=CPU_THREADS_DOC)
    compile: CompileMode = Field("off", description=COMPILE_DOC)
    compile_cache_dir: str | None = Field(None, description=COMPILE_CACHE_DOC)


class AppArgs(IngressConfig):
    """Every arg of the application: the ingress's, and where the models come from."""

    model_root: str = Field("./kokoro-models", description=(
        "Where downloaded weights live (`python -m serve_app.download`). Env KOKORO_MODEL_ROOT overrides."))
    weights: Literal["local", "dummy"] = Field("local", description=(
        "`local` reads the files under model_root; `dummy` builds random weights. Env KOKORO_WEIGHTS overrides."))
    versions: list[str] = Field(default_factory=lambda: [DEFAULT_VERSION], min_length=1,
                                description="The model versions to deploy, one deployment each.")
    configs: dict[str, str] = Field(default_factory=dict, description=(
        "Per-version config.json to use instead of the packaged one (other architectures, tests)."))
    batching: BatchPolicy = Field(default_factory=BatchPolicy, description=(
        "How every model replica batches pieces across requests."))
    lexicons: dict[str, str] = Field(default_factory=dict, description=(
        "Per-version custom lexicon: a JSON or YAML file mapping words to phonemes of that version."))
    cpu_threads: CpuThreads = Field(None, description=CPU_THREADS_DOC)
    compile: CompileMode = Field("off", description=COMPILE_DOC)
    compile_cache_dir: str | None = Field(None, description=COMPILE_CACHE_DOC)

    def ingress_config(self) -> IngressConfig:
        return IngressConfig(**self.model_dump(include=set(IngressConfig.model_fields)))

    def model_settings(self, version: str) -> ModelSettings:
        return ModelSettings(version=version, weights=self.weights, model_root=self.model_root,
                             config_path=self.configs.get(version), batching=self.batching,
                             lexicon_path=self.lexicons.get(version), cpu_threads=self.cpu_threads,
                             compile=self.compile, compile_cache_dir=self.compile_cache_dir)


def resolve_args(args: dict) -> AppArgs:
    """Args from the config, with the environment's overrides; a misspelled arg is an error."""
    overrides = {key: os.environ[var] for key, var in ENV_OVERRIDES.items() if os.environ.get(var)}
    args = {**args, **overrides, **api_key_from_env()}
    if args.get("api_key") is not None:
        check_api_key(str(args["api_key"]))
    resolved = AppArgs.model_validate(args)
    unknown = [v for v in resolved.versions + list(resolved.configs) + list(resolved.lexicons) if v not in VERSIONS]
    if unknown:
        raise ValueError(f"unknown model versions {unknown}; this build serves {sorted(VERSIONS)}")
    # Replicas run in other processes and directories: pin relative paths to where serve started.
    resolved.model_root = str(Path(resolved.model_root).resolve())
    resolved.configs = {v: str(Path(p).resolve()) for v, p in resolved.configs.items()}
    resolved.lexicons = {v: str(Path(p).resolve()) for v, p in resolved.lexicons.items()}
    if resolved.compile_cache_dir is not None:
        resolved.compile_cache_dir = str(Path(resolved.compile_cache_dir).resolve())
    return resolved


def api_key_from_env() -> dict:
    """{"api_key": key} from KOKORO_API_KEY or the file KOKORO_API_KEY_FILE names; {} when neither is set."""
    given = [var for var in (API_KEY_ENV, API_KEY_FILE_ENV) if var in os.environ]
    if len(given) > 1:
        raise ValueError(f"both {API_KEY_ENV} and {API_KEY_FILE_ENV} are set: set one")
    if given == [API_KEY_ENV]:
        return {"api_key": os.environ[API_KEY_ENV]}
    if given == [API_KEY_FILE_ENV]:
        path = Path(os.environ[API_KEY_FILE_ENV])
        try:
            return {"api_key": path.read_text().strip()}  # files usually end in a newline
        except OSError as e:
            raise ValueError(f"{API_KEY_FILE_ENV}={path}: cannot read the API key file ({e.strerror})") from None
    return {}


def check_api_key(key: str) -> None:
    """An empty key would lock nobody out: refuse it, and any key a header cannot carry. Never quotes the key."""
    if not key:
        raise ValueError(f"the API key is empty (api_key, {API_KEY_ENV} or {API_KEY_FILE_ENV}'s file): "
                         f"set a key, or unset them all to serve without one")
    if not (key.isascii() and key.isprintable()) or " " in key:
        raise ValueError("the API key must be printable ASCII without spaces, to fit an Authorization header")
