"""The model versions this service knows: where their files come from and where they live.

Local layout under a model root (what `python -m serve_app.download` writes):
    models/v1_0/kokoro-v1_0.pth      voices/v1_0/<voice>.pt
    models/v0_19/kokoro-v0_19.pth    voices/v0_19/<voice>.pt
"""
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
import json


@dataclass(frozen=True)
class ModelVersion:
    name: str                 # what requests say: "v1.0"
    slug: str                 # on disk: "v1_0"
    weights_file: str         # file name under models/<slug>/
    config_file: str          # packaged config under serve_app/configs/
    voice_pack_rows: int      # first dimension of a voice pack
    checkpoint_key: str | None  # the .pth nests its modules under this key (v0.19: 'net')
    norm_affine_saved: bool   # False: the release has no instance-norm affine weights (identity)
    hub_repo: str             # Hugging Face release of the weights
    hub_revision: str
    hub_prefix: str           # folder of the release inside the hub repo
    voices: tuple[str, ...]   # the voices of the published release

    def weights_path(self, model_root: Path) -> Path:
        return Path(model_root) / "models" / self.slug / self.weights_file

    def voices_dir(self, model_root: Path) -> Path:
        return Path(model_root) / "voices" / self.slug

    def packaged_config(self) -> dict:
        text = resources.files("serve_app").joinpath("configs", self.config_file).read_text("utf-8")
        return json.loads(text)


V1_0 = ModelVersion(
    name="v1.0", slug="v1_0", weights_file="kokoro-v1_0.pth", config_file="v1_0.json",
    voice_pack_rows=510, checkpoint_key=None, norm_affine_saved=True, hub_repo="hexgrad/Kokoro-82M", hub_revision="main", hub_prefix="",
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
)

# v0.19 was moved out of the main repo when v1.0 shipped; its files live in hexgrad/kLegacy.
V0_19 = ModelVersion(
    name="v0.19", slug="v0_19", weights_file="kokoro-v0_19.pth", config_file="v0_19.json",
    voice_pack_rows=511, checkpoint_key="net", norm_affine_saved=False, hub_repo="hexgrad/kLegacy", hub_revision="main", hub_prefix="v0.19",
    voices=(
        "af", "af_bella", "af_nicole", "af_sarah", "af_sky", "am_adam", "am_michael",
        "bf_emma", "bf_isabella", "bm_george", "bm_lewis",
    ),
)

VERSIONS = {v.name: v for v in (V1_0, V0_19)}
DEFAULT_VERSION = V1_0.name
