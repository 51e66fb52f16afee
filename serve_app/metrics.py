"""The service's Prometheus metrics, through `ray.serve.metrics` (Serve adds deployment, replica and
application tags; Ray exports them on each node's metrics export port, prefixed `ray_`, beside
Serve's own `ray_serve_*`).

Torch-free: the ingress makes `IngressMetrics`, each model replica `ReplicaMetrics`. Made in the
deployments' constructors, since a metric needs a running Ray worker.
"""
from ray.serve.metrics import Counter, Gauge, Histogram

FIRST_AUDIO_BOUNDARIES_S = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30]
RTF_BOUNDARIES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]


class IngressMetrics:
    """What clients see: requests by outcome, time to first audio, pieces and requests turned away."""

    def __init__(self):
        self.requests = Counter("kokoro_requests", "Speech requests by model version, response format and HTTP "
                                "status (when the response started).",
                                tag_keys=("version", "format", "status"))
        self.first_audio = Histogram("kokoro_time_to_first_audio_seconds", "From a request's arrival at the "
                                     "ingress to its first audio.", FIRST_AUDIO_BOUNDARIES_S, tag_keys=("version",))
        self.rejected = Counter("kokoro_pieces_rejected", "Piece calls the model replicas turned away "
                                "(queue full, too slow to start, replica gone), by reason.",
                                tag_keys=("version", "reason"))
        self.interrupted = Counter("kokoro_streams_interrupted", "200 streams cut short by a failure after "
                                   "their first audio (also counted under status 200).", tag_keys=("version",))

    def request(self, version: str, fmt: str, status: int | str) -> None:
        self.requests.inc(tags={"version": version, "format": fmt, "status": str(status)})

    def reject(self, version: str, reason: str) -> None:
        self.rejected.inc(tags={"version": version, "reason": reason})

    def interrupt(self, version: str) -> None:
        self.interrupted.inc(tags={"version": version})


class ReplicaMetrics:
    """What a model replica does: audio made, real-time factor and size of its batches, items waiting."""

    def __init__(self, version: str):
        self.audio = Counter("kokoro_audio_seconds", "Seconds of audio synthesised.", tag_keys=("version",))
        self.rtf = Histogram("kokoro_real_time_factor", "Model time per second of audio, per batch (below 1 "
                             "is faster than real time).", RTF_BOUNDARIES, tag_keys=("version",))
        self.batch_size = Histogram("kokoro_batch_size", "Items (phoneme segments) per model batch.",
                                    BATCH_SIZE_BOUNDARIES, tag_keys=("version",))
        self.queued = Gauge("kokoro_pieces_queued", "Items waiting on the replica's model thread.",
                            tag_keys=("version",))
        self.compile_failures = Counter("kokoro_compile_failures", "Replica starts whose vocoder failed to "
                                        "compile and runs eagerly (slower); the replica log says why.",
                                        tag_keys=("version",))
        for metric in (self.audio, self.rtf, self.batch_size, self.queued, self.compile_failures):
            metric.set_default_tags({"version": version})  # a dict each: Serve adds its tags to it in place

    def compile_failed(self) -> None:
        self.compile_failures.inc()

    def batch_done(self, size: int, seconds: float, audio_s: float, waiting: int) -> None:
        self.batch_size.observe(size)
        self.queued.set(waiting)
        if audio_s > 0:
            self.audio.inc(audio_s)
            self.rtf.observe(seconds / audio_s)
