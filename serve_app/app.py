"""The application builder that `serve_config.yaml` names: `serve_app.app:build_app`."""
from ray.serve import Application

from .config import resolve_args
from .ingress.speech_ingress import SpeechIngress
from .logs import get_logger
from .model_deployments import MODEL_DEPLOYMENTS

logger = get_logger()


def build_app(args: dict) -> Application:
    resolved = resolve_args(args)
    logger.info("building Kokoro app: versions=%s weights=%s model_root=%s",
                resolved.versions, resolved.weights, resolved.model_root)
    models = {version: MODEL_DEPLOYMENTS[version].bind(resolved.model_settings(version))
              for version in resolved.versions}
    return SpeechIngress.bind(models, resolved.ingress_config())
