"""`python -m serve_app.first_run CONFIG`: the preflight `make serve` runs before Serve.

The command users type; the code is serve_app.weights.first_run.
"""
import sys

from .weights.first_run import main

if __name__ == "__main__":
    sys.exit(main())
