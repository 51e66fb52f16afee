"""Resident memory of the ingress replica, next to a model replica's, after one request.

    python -m bench.ingress_memory [--config serve_config.yaml]

Starts the config with dummy weights (`serve run`, v1.0 only), speaks one sentence, then prints
each replica's resident memory. Run it on two commits to compare them.
"""
from pathlib import Path
import argparse
import tempfile

import httpx

from .client import replica_rss
from .service import ServeProcess, config_for_versions

URL = "http://127.0.0.1:8000"


def measure(config_path: str) -> dict[str, int]:
    config = config_for_versions(config_path, ["v1.0"])
    with tempfile.TemporaryDirectory() as folder, ServeProcess(config, URL, Path(folder) / "serve.log") as service:
        response = httpx.post(f"{URL}/v1/audio/speech", timeout=300,
                              json={"input": "Measuring the ingress.", "response_format": "pcm"})
        response.raise_for_status()
        return {name: max(replica_rss(name, within=service.pid).values(), default=0)
                for name in ("SpeechIngress", "KokoroV1Model")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingress_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="serve_config.yaml")
    args = parser.parse_args(argv)
    for name, rss in measure(args.config).items():
        print(f"{name}: {rss / 2**20:.0f} MiB resident")


if __name__ == "__main__":
    main()
