"""Ray job entry point for a search: ``gatesearch search`` with this script's arguments.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/search.py --space search_spaces/cifar10_resnet20.yaml --tracking-uri http://127.0.0.1:5000

(token auth: the submitting shell has the cluster's token in ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``;
the job's driver inherits it from the cluster, see docs/search.md).

Inside a Ray job the driver joins the job's cluster (``--address auto`` unless one is given), and
results default to ``~/gatesearch/`` on the node running the job (see ``job_argv``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# `python jobs/x.py` puts jobs/ first on sys.path, where this select.py would shadow the standard
# library's `select`; put the repository root (the uploaded --working-dir copy) there instead
if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from gatesearch.cli import main  # noqa: E402


def job_argv(argv: list[str], home: Path | None = None) -> list[str]:
    """``gatesearch search`` arguments for a job: join the job's cluster, and keep results outside
    the job's working directory, which is Ray's temporary copy of ``--working-dir``: unless given,
    ``--storage`` is ``~/gatesearch/ray_results`` and the MLflow store ``~/gatesearch/mlflow.db``
    on the node that runs the job (a ``tracking.uri`` from the space file or ``--set`` is kept)."""
    home = home or Path.home() / "gatesearch"
    out = ["search", *argv] if "--address" in argv else ["search", "--address", "auto", *argv]
    if "--storage" not in argv:
        out += ["--storage", str(home / "ray_results")]
    if "--tracking-uri" not in argv and not _space_sets_tracking(argv):
        out += ["--tracking-uri", f"sqlite:///{home / 'mlflow.db'}"]
    return out


def _space_sets_tracking(argv: list[str]) -> bool:
    """Whether the space file or a ``--set`` names ``tracking.uri`` (then it is kept)."""
    from gatesearch.cli import build_parser
    from gatesearch.errors import UserError
    from gatesearch.search.space import load_space

    if "--space" not in argv[:-1]:
        return False  # `gatesearch search` reports the missing argument
    args, _ = build_parser().parse_known_args(["search", *argv])
    try:
        return "tracking.uri" in load_space(args.space, args.set).fixed
    except UserError:
        return False  # `gatesearch search` reports the bad space in one line


if __name__ == "__main__":
    sys.exit(main(job_argv(sys.argv[1:])))
