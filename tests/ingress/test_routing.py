"""Routing by model version over real HTTP, with both versions deployed and with only one."""
import httpx
import pytest

from conftest import deploy, project_app_config

TEXT = "Routing sends each request to its own model version."


def speech(url: str, headers: dict | None = None, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", json={"input": TEXT, "response_format": "pcm", "seed": 9, **body},
                      headers=headers, timeout=120)


class TestBothVersions:
    def test_each_version_answers_with_its_own_model(self, both_versions):
        v1 = speech(both_versions, model="v1.0", voice="af_bella")
        v0 = speech(both_versions, model="v0.19", voice="af_bella")
        assert v1.status_code == v0.status_code == 200
        assert len(v1.content) > 0 and len(v0.content) > 0 and v1.content != v0.content

    @pytest.mark.parametrize("alias, version", [("kokoro", "v1.0"), ("tts-1", "v1.0"), ("tts-1-hd", "v1.0"),
                                                ("kokoro-v1.0", "v1.0"), ("kokoro-v0.19", "v0.19")])
    def test_aliases_pick_their_version(self, both_versions, alias, version):
        assert speech(both_versions, model=alias, voice="am_adam").content == \
            speech(both_versions, model=version, voice="am_adam").content

    def test_default_model_is_v1(self, both_versions):
        default = speech(both_versions, voice="am_adam")
        assert default.content == speech(both_versions, model="v1.0", voice="am_adam").content

    def test_default_voice_per_version(self, both_versions):
        assert speech(both_versions, model="v0.19").content == speech(both_versions, model="v0.19", voice="af").content

    @pytest.mark.parametrize("model, voice, listed", [("v0.19", "af_heart", "af_bella"), ("v1.0", "af", "af_heart")])
    def test_voice_of_the_other_version_is_a_400_naming_the_voices(self, both_versions, model, voice, listed):
        response = speech(both_versions, model=model, voice=voice)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "voice" and voice in error["message"] and listed in error["message"]

    def test_v0_19_is_english_only(self, both_versions):
        response = speech(both_versions, model="v0.19", voice="af", lang_code="e")
        assert response.status_code == 400 and response.json()["error"]["param"] == "lang_code"


@pytest.fixture(scope="class")
def only_v0_19(serve_url, release) -> str:
    deploy(project_app_config(model_root=str(release.root), weights="local", versions=["v0.19"],
                              configs={"v0.19": release.configs["v0.19"]}, api_key="secret-key"))
    return serve_url


class TestOneVersionWithApiKey:
    key = {"Authorization": "Bearer secret-key"}

    def test_undeployed_version_is_a_400_listing_what_is_served(self, only_v0_19):
        for model in ("v1.0", "kokoro"):
            response = speech(only_v0_19, headers=self.key, model=model, voice="af")
            assert response.status_code == 400
            message = response.json()["error"]["message"]
            assert "kokoro-v0.19" in message and "available: kokoro-v0.19, v0.19" in message

    def test_deployed_version_serves(self, only_v0_19):
        response = speech(only_v0_19, headers=self.key, model="v0.19", voice="bf_emma")
        assert response.status_code == 200 and len(response.content) > 24000

    def test_models_lists_only_the_deployed_version(self, only_v0_19):
        ids = {m["id"] for m in httpx.get(f"{only_v0_19}/v1/models", headers=self.key, timeout=30).json()["data"]}
        assert ids == {"v0.19", "kokoro-v0.19"}

    @pytest.mark.parametrize("headers", [None, {"Authorization": "Bearer wrong"}])
    def test_api_key_is_required(self, only_v0_19, headers):
        response = speech(only_v0_19, headers=headers, model="v0.19", voice="af")
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{only_v0_19}/v1/models", headers=headers, timeout=30).status_code == 401
