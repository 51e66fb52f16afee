"""`python -m serve_app.download`: fetch and verify weights.

The command users type; the code is serve_app.weights.download.
"""
import sys

from .weights.download import main

if __name__ == "__main__":
    sys.exit(main())
