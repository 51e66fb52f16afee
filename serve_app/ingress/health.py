"""`GET /health`: which model versions can serve now, from Serve's own view of their replicas.

Serve health-checks every model replica (`ModelReplica.check_health`: a broken device, a stuck
model thread) and replaces failing ones; a version is ready while at least one of its replicas
runs. Asking the controller, not the replicas, costs none of their request slots, so /health
stays fast and truthful when the replicas are saturated. Torch-free: the ingress imports it.
"""
import asyncio

from ray import serve
from ray.serve.handle import DeploymentHandle

from ..logs import get_logger

logger = get_logger()

STATUS_TIMEOUT_S = 2


def _running_replicas(app_name: str) -> dict[str, int]:
    deployments = serve.status().applications[app_name].deployments
    return {name: overview.replica_states.get("RUNNING", 0) for name, overview in deployments.items()}


async def versions_ready(models: dict[str, DeploymentHandle]) -> dict[str, bool]:
    """Per version: whether a replica of its deployment is running (False when Serve does not answer in time)."""
    try:
        running = await asyncio.wait_for(asyncio.to_thread(_running_replicas, serve.get_replica_context().app_name),
                                         STATUS_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 -- a health check reports, it does not fail
        logger.warning("health: Serve's status unavailable: %r", e)
        running = {}
    return {version: running.get(handle.deployment_name, 0) > 0 for version, handle in sorted(models.items())}
