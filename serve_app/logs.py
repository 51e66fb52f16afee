"""The one logger of this package."""
import logging


def get_logger() -> logging.Logger:
    # Serve routes records of its own logger to each replica's log file and to `serve run`'s console.
    return logging.getLogger("ray.serve")
