"""The KubeRay deployment (deploy/): manifest schema, embedded Serve config, pins, freshness.

No cluster needed: the RayService is checked against KubeRay's CRD schema and its
serveConfigV2 against Serve's own pydantic schema plus a strict key check.
"""
from pathlib import Path
import copy
import importlib.util
import json
import re

from packaging.requirements import Requirement
from ray.serve.schema import ServeDeploySchema
import jsonschema
import pytest
import tomllib
import yaml

from serve_app.config import GPU_MAX_BATCH_SIZE, AppArgs, BatchPolicy
from serve_app.config_check import unknown_keys, validate_serve_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEMA = ROOT.parent / "shared" / "kuberay" / "rayservice-v1.7.0.schema.json"
INGRESS = "SpeechIngress"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_rayservice", DEPLOY / "make_rayservice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())


@pytest.fixture(scope="module")
def embedded(manifest) -> dict:
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])


@pytest.fixture(scope="module")
def base_config() -> dict:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == "ray"]
    (spec,) = req.specifier
    assert spec.operator == "=="
    return spec.version


def containers(manifest) -> list[dict]:
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def deployments(cfg) -> dict[str, dict]:
    return {d["name"]: d for app in cfg["applications"] for d in app.get("deployments", [])}


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"the RayService schema is not beside the checkout ({SCHEMA})")
def test_manifest_validates_against_rayservice_schema(manifest):
    schema = json.loads(SCHEMA.read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    jsonschema.validate(manifest, schema)
    # The schema is strict enough to matter: a mistyped field value is rejected.
    broken = copy.deepcopy(manifest)
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_embedded_serve_config_is_valid_and_strict(embedded):
    ServeDeploySchema.model_validate(embedded)
    assert unknown_keys(embedded) == []
    assert embedded == gen.gpu_serve_config()


@pytest.mark.parametrize("where, key, expected", [
    (lambda c: c["http_options"], "hostt", "http_options.hostt"),
    (lambda c: deployments(c)[INGRESS], "num_replica", "applications[0].deployments[0].num_replica"),
    (lambda c: deployments(c)["KokoroV1Model"]["autoscaling_config"], "min_replica",
     "applications[0].deployments[1].autoscaling_config.min_replica"),
    (lambda c: deployments(c)["KokoroV1Model"]["ray_actor_options"], "num_gpu",
     "applications[0].deployments[1].ray_actor_options.num_gpu"),
])
def test_misspelled_keys_are_caught(base_config, where, key, expected):
    cfg = copy.deepcopy(base_config)
    where(cfg)[key] = 1
    ServeDeploySchema.model_validate(cfg)  # Serve itself accepts the typo...
    assert unknown_keys(cfg) == [expected]  # ...the strict check does not
    with pytest.raises(ValueError, match=re.escape(expected)):
        validate_serve_config(cfg)


def test_free_form_fields_are_not_checked(base_config):
    cfg = copy.deepcopy(base_config)
    cfg["applications"][0]["args"]["any_builder_arg"] = 1
    cfg["applications"][0]["runtime_env"] = {"env_vars": {"X": "1"}}
    deployments(cfg)["KokoroV1Model"]["user_config"] = {"anything": {"nested": 1}}
    assert unknown_keys(cfg) == []


def test_ray_version_and_images_follow_the_pyproject_pin(manifest):
    pin = ray_pin()
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == pin
    assert {c["image"] for c in containers(manifest)} == {gen.image()}
    assert gen.image().endswith(f"-ray{pin}")
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M).group(1) == pin
    assert re.search(r"^FROM (\S+)$", dockerfile, re.M).group(1) == "rayproject/ray:${RAY_VERSION}-py311-gpu"


def test_image_bakes_every_served_version(base_config):
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    baked = re.search(r'^ARG KOKORO_VERSIONS="([^"]*)"$', dockerfile, re.M).group(1).split()
    for app in base_config["applications"]:
        assert set(app["args"]["versions"]) <= set(baked)


def test_committed_manifest_equals_fresh_generation(tmp_path):
    committed = (DEPLOY / "rayservice.yaml").read_text()
    assert committed == gen.render(), "stale: run python deploy/make_rayservice.py"
    out = tmp_path / "rayservice.yaml"
    out.write_text(committed)
    assert gen.main(["--check", "--output", str(out)]) == 0
    out.write_text(committed.replace("maxReplicas: 4", "maxReplicas: 5"))
    assert gen.main(["--check", "--output", str(out)]) == 1


def test_every_serve_config_in_repo_passes_strict_check():
    candidates = [*ROOT.glob("*.y*ml"), *(ROOT / "tests").rglob("*.y*ml"), *DEPLOY.rglob("*.y*ml")]
    configs = {}
    for path in candidates:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "applications" in doc:
                configs[path.relative_to(ROOT).as_posix()] = doc
    assert {"serve_config.yaml", "deploy/gpu_overrides.yaml"} <= configs.keys()
    assert {p: unknown_keys(c) for p, c in configs.items() if unknown_keys(c)} == {}
    validate_serve_config(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))


def test_models_only_on_gpu_workers_and_ingress_only_on_head(manifest, embedded, base_config):
    cluster = manifest["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    for container in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})

    deps = deployments(embedded)
    assert deps.keys() == deployments(base_config).keys()
    ingress_options = deps.pop(INGRESS)["ray_actor_options"]
    assert ingress_options.get("num_gpus", 0) == 0
    # Pinned to the head by a custom resource that only the head declares.
    assert ingress_options["resources"]
    for name in ingress_options["resources"]:
        assert name in head["resources"]
        assert all(name not in g.get("resources", {}) for g in cluster["workerGroupSpecs"])
    assert deps, "no model deployments"
    for name, dep in deps.items():
        assert dep["ray_actor_options"]["num_gpus"] > 0, name


def test_gpu_worker_group_fits_the_model_replicas(manifest, embedded):
    (group,) = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpus_per_pod = group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus_per_pod == 1
    models = [d for d in deployments(embedded).values() if d["name"] != INGRESS]
    # Floors and ceilings of Serve's autoscaling must fit what the Ray autoscaler can provide.
    for bound, pods in (("min_replicas", group["minReplicas"]), ("max_replicas", group["maxReplicas"])):
        need = sum(d["autoscaling_config"][bound] * d["ray_actor_options"]["num_gpus"] for d in models)
        assert need <= pods * gpus_per_pod, bound


def test_overrides_replace_nested_options_wholesale():
    base = {"applications": [{"name": "a", "import_path": "m:f", "deployments": [
        {"name": "D", "max_ongoing_requests": 4, "ray_actor_options": {"num_cpus": 1, "memory": 10}}]}]}
    over = {"applications": [{"name": "a", "deployments": [
        {"name": "D", "ray_actor_options": {"num_gpus": 0.5}}]}]}
    merged = gen.merge(base, over)
    assert merged["applications"][0]["deployments"][0] == {
        "name": "D", "max_ongoing_requests": 4, "ray_actor_options": {"num_gpus": 0.5}}
    assert base["applications"][0]["deployments"][0]["ray_actor_options"]["num_cpus"] == 1
    with pytest.raises(ValueError, match="'Dx'"):
        gen.merge(base, {"applications": [{"name": "a", "deployments": [{"name": "Dx"}]}]})


def test_overrides_merge_args_key_by_key():
    base = {"applications": [{"name": "a", "import_path": "m:f", "args": {
        "versions": ["v1.0"], "batching": {"max_batch_size": 1, "stuck_batch_s": 300}}}]}
    over = {"applications": [{"name": "a", "args": {"batching": {"max_batch_size": 32}, "weights": "dummy"}}]}
    assert gen.merge(base, over)["applications"][0]["args"] == {
        "versions": ["v1.0"], "batching": {"max_batch_size": 32, "stuck_batch_s": 300}, "weights": "dummy"}
    assert base["applications"][0]["args"]["batching"]["max_batch_size"] == 1


def test_shipped_configs_state_the_batching_each_device_gets(base_config, embedded):
    """Every batching setting is written out, as the code would fill it in for the config's device:
    off on a CPU (serve_config.yaml, the CPU bench), GPU_MAX_BATCH_SIZE in the GPU manifest."""
    bench = yaml.safe_load((ROOT / "bench" / "serve_config_cpu.yaml").read_text())
    for cfg, device in ((base_config, "cpu"), (bench, "cpu"), (embedded, "cuda")):
        (app,) = cfg["applications"]
        assert app["args"]["batching"].keys() == BatchPolicy.model_fields.keys()
        args = AppArgs.model_validate(app["args"])
        for version in args.versions:
            assert args.model_settings(version).batching == BatchPolicy().for_device(device)
    assert AppArgs.model_validate(base_config["applications"][0]["args"]).batching.max_batch_size == 1
    assert AppArgs.model_validate(embedded["applications"][0]["args"]).batching.max_batch_size == GPU_MAX_BATCH_SIZE
