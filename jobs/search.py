"""Ray job entry point for a search: ``gatesearch search`` with this script's arguments.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/search.py --space search_spaces/cifar10_resnet20.yaml --tracking-uri http://127.0.0.1:5000

Inside a Ray job the driver joins the job's cluster (``--address auto`` unless one is given).
"""

from __future__ import annotations

import os
import sys

# `python jobs/x.py` puts jobs/ first on sys.path, where this select.py would shadow the standard
# library's `select`; put the repository root (the uploaded --working-dir copy) there instead
if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from gatesearch.cli import main  # noqa: E402


def job_argv(argv: list[str]) -> list[str]:
    return ["search", *argv] if "--address" in argv else ["search", "--address", "auto", *argv]


if __name__ == "__main__":
    sys.exit(main(job_argv(sys.argv[1:])))
