"""Ray job entry point for the selector: ``gatesearch select`` with this script's arguments.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/select.py --run MLFLOW_RUN_ID --device jetson-orin-nano --tracking-uri http://127.0.0.1:5000
"""

from __future__ import annotations

import os
import sys

# `python jobs/x.py` puts jobs/ first on sys.path, where this select.py would shadow the standard
# library's `select`; put the repository root (the uploaded --working-dir copy) there instead
if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from gatesearch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["select", *sys.argv[1:]]))
