"""`GET /health`: which model versions can serve now, from Serve's own view of their replicas.

Serve health-checks every model replica (`ModelReplica.check_health`: a broken device, a stuck
model thread) and replaces failing ones; a version is ready while at least one of its replicas
runs. Asking the controller, not the replicas, costs none of their request slots, so /health
stays fast and truthful when the replicas are saturated. Torch-free: the ingress imports it.
"""
import asyncio
import time

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import DeploymentStatusOverview

from ..logs import get_logger

logger = get_logger()

STATUS_TIMEOUT_S = 2
# Requests asking at once share one answer at most this old: a flood of 503s (which ask why) and
# health probes cost the controller one call a second.
STATUS_MAX_AGE_S = 1

_asked: tuple[float, asyncio.Future] | None = None  # when, and the answer (the ingress's one event loop)


def _app_deployments(app_name: str) -> dict[str, DeploymentStatusOverview]:
    return serve.status().applications[app_name].deployments


async def _ask_serve() -> dict[str, DeploymentStatusOverview]:
    try:
        return await asyncio.wait_for(asyncio.to_thread(_app_deployments, serve.get_replica_context().app_name),
                                      STATUS_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 -- a status informs, it never fails a request
        logger.warning("Serve's status unavailable: %r", e)
        return {}


async def deployment_statuses() -> dict[str, DeploymentStatusOverview]:
    """Serve's view of this app's deployments, by name ({} when Serve does not answer in time)."""
    global _asked
    if _asked is None or time.monotonic() - _asked[0] > STATUS_MAX_AGE_S:
        _asked = (time.monotonic(), asyncio.ensure_future(_ask_serve()))
    return await asyncio.shield(_asked[1])  # a caller that gives up does not cancel the others' answer


def running_replicas(overview: DeploymentStatusOverview | None) -> int:
    return overview.replica_states.get("RUNNING", 0) if overview else 0


async def versions_ready(models: dict[str, DeploymentHandle]) -> dict[str, bool]:
    """Per version: whether a replica of its deployment is running (False when Serve does not answer in time)."""
    deployments = await deployment_statuses()
    return {version: running_replicas(deployments.get(handle.deployment_name)) > 0
            for version, handle in sorted(models.items())}
