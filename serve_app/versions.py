"""The model versions this service knows: every fact about a version, in one place.

Torch-free: the ingress reads these facts too. Local layout under a model root (what
`python -m serve_app.download` writes):
    models/v1_0/kokoro-v1_0.pth      voices/v1_0/<voice>.pt
    models/v0_19/kokoro-v0_19.pth    voices/v0_19/<voice>.pt
"""
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple
import json

# OpenAI's voice names, in the order OpenAI lists them; each version maps every one.
OPENAI_VOICE_NAMES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                      "shimmer", "verse", "marin", "cedar")


class Language(NamedTuple):
    tag: str   # what OpenAI-style clients say: "en-us"; accepted as a lang_code too
    name: str  # what error messages and listings say


@dataclass(frozen=True)
class ModelVersion:
    """One published Kokoro release: its files, its voices and languages, its deployment."""

    name: str                   # what requests say: "v1.0"
    slug: str                   # on disk: "v1_0"
    deployment: str             # the Ray Serve deployment that serves it
    weights_file: str           # file name under models/<slug>/
    config_file: str            # packaged config under serve_app/configs/
    voice_pack_rows: int        # first dimension of a voice pack
    checkpoint_key: str | None  # the .pth nests its modules under this key (v0.19: 'net')
    norm_affine_saved: bool     # False: the release has no instance-norm affine weights (identity)
    hub_repo: str               # Hugging Face release of the weights
    hub_revision: str
    hub_prefix: str             # folder of the release inside the hub repo
    voices: tuple[str, ...]     # the voices of the published release
    default_voice: str          # used when a request names none
    openai_voices: dict         # OpenAI voice name -> the voice closest in character
    languages: dict             # lang_code -> Language; a voice name starts with its code
    speaks: str                 # what it speaks, in words

    def weights_path(self, model_root: Path) -> Path:
        return Path(model_root) / "models" / self.slug / self.weights_file

    def voices_dir(self, model_root: Path) -> Path:
        return Path(model_root) / "voices" / self.slug

    def packaged_config(self) -> dict:
        text = resources.files("serve_app").joinpath("configs", self.config_file).read_text("utf-8")
        return json.loads(text)

    def language_of(self, voice: str) -> Language:
        """The language a voice speaks: its name's first letter is its lang_code."""
        return self.languages.get(voice[:1], next(iter(self.languages.values())))

    def lang_code(self, requested: str | None, voice: str) -> str | None:
        """The lang_code to speak: as requested (a code or its tag) or the voice's; None if not valid."""
        code = (requested or voice[:1]).lower()
        code = {language.tag: c for c, language in self.languages.items()}.get(code, code)
        return code if code in self.languages else None


V1_0 = ModelVersion(
    name="v1.0", slug="v1_0", deployment="KokoroV1Model",
    weights_file="kokoro-v1_0.pth", config_file="v1_0.json",
    voice_pack_rows=510, checkpoint_key=None, norm_affine_saved=True,
    hub_repo="hexgrad/Kokoro-82M", hub_revision="main", hub_prefix="",
    voices=(
        "af_alloy", "af_aoede", "af_bella", "af_heart", "af_jessica", "af_kore", "af_nicole",
        "af_nova", "af_river", "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir",
        "am_liam", "am_michael", "am_onyx", "am_puck", "am_santa", "bf_alice", "bf_emma",
        "bf_isabella", "bf_lily", "bm_daniel", "bm_fable", "bm_george", "bm_lewis", "ef_dora",
        "em_alex", "em_santa", "ff_siwis", "hf_alpha", "hf_beta", "hm_omega", "hm_psi", "if_sara",
        "im_nicola", "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo", "pf_dora",
        "pm_alex", "pm_santa", "zf_xiaobei", "zf_xiaoni", "zf_xiaoxiao", "zf_xiaoyi", "zm_yunjian",
        "zm_yunxi", "zm_yunxia", "zm_yunyang",
    ),
    default_voice="af_heart",
    openai_voices={
        "alloy": "af_alloy", "ash": "am_adam", "ballad": "bm_george", "coral": "af_heart",
        "echo": "am_echo", "fable": "bm_fable", "nova": "af_nova", "onyx": "am_onyx",
        "sage": "af_sarah", "shimmer": "af_bella", "verse": "am_michael",
        # OpenAI's newest and best voices: Kokoro's best-graded American female and male voices.
        "marin": "af_heart", "cedar": "am_fenrir",
    },
    # kokoro's KPipeline codes, the tags it takes for them and its names (kokoro.pipeline).
    languages={
        "a": Language("en-us", "American English"), "b": Language("en-gb", "British English"),
        "e": Language("es", "es"), "f": Language("fr-fr", "fr-fr"), "h": Language("hi", "hi"),
        "i": Language("it", "it"), "p": Language("pt-br", "pt-br"), "j": Language("ja", "Japanese"),
        "z": Language("zh", "Mandarin Chinese"),
    },
    speaks="nine languages",
)

# v0.19 was moved out of the main repo when v1.0 shipped; its files live in hexgrad/kLegacy.
V0_19 = ModelVersion(
    name="v0.19", slug="v0_19", deployment="KokoroV019Model",
    weights_file="kokoro-v0_19.pth", config_file="v0_19.json",
    voice_pack_rows=511, checkpoint_key="net", norm_affine_saved=False,
    hub_repo="hexgrad/kLegacy", hub_revision="main", hub_prefix="v0.19",
    voices=(
        "af", "af_bella", "af_nicole", "af_sarah", "af_sky", "am_adam", "am_michael",
        "bf_emma", "bf_isabella", "bm_george", "bm_lewis",
    ),
    default_voice="af",
    openai_voices={
        "alloy": "af", "ash": "am_adam", "ballad": "bm_george", "coral": "af_nicole",
        "echo": "am_michael", "fable": "bm_lewis", "nova": "af_sky", "onyx": "am_adam",
        "sage": "af_sarah", "shimmer": "af_bella", "verse": "am_michael",
        "marin": "af_bella", "cedar": "am_michael",
    },
    # espeak-ng's en-us for `a` voices, en-gb for `b`.
    languages={"a": Language("en-us", "American English"), "b": Language("en-gb", "British English")},
    speaks="English only",
)

VERSIONS = {v.name: v for v in (V1_0, V0_19)}
DEFAULT_VERSION = V1_0.name
