"""The Ray Tune function trainable: one trial = one ``train.fit`` run, tracked as one MLflow child run.

The trial config is the flat dotted config (fixed keys + the Optuna draw). Everything else the
trial needs from the driver (tracking URI, parent run, fault injection) arrives as ``TrialContext``
through ``tune.with_parameters``. Heavy imports (torch, the training loop) happen inside the
function, once per worker process: with ``reuse_actors`` a worker runs many trials.

Per epoch, ``_TuneReporter`` logs the metrics to the trial's MLflow run and calls
``tune.report(metrics, checkpoint=...)`` with a directory holding ``last.pt`` and ``trial.json``
(the MLflow run id). A restarted trial resumes ``train.fit`` from ``tune.get_checkpoint()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatesearch import tracking
from gatesearch.config import from_flat, to_flat
from gatesearch.errors import UserError
from gatesearch.search.baselines import MLFLOW_TAG as BASELINE_TAG
from gatesearch.search.baselines import TRIAL_KEY as BASELINE_KEY
from gatesearch.search.reeval import TAG_OF as REEVAL_OF_TAG
from gatesearch.search.reeval import TAG_SEED as REEVAL_SEED_TAG
from gatesearch.search.reeval import TRIAL_KEY as REEVAL_KEY
from gatesearch.search.reeval import parse_key as reeval_keys
from gatesearch.train import TrainingDiverged, fit

CHECKPOINT_FILE = "last.pt"
SCRATCH_ROOT = "gatesearch-trials"  # under the temporary directory: train.fit's files while a trial runs
TRIAL_FILE = "trial.json"
# A debugging aid for the fault-tolerance tests: "KIND@TRIAL[,KIND@TRIAL...]" with KIND one of
#   raise (the trial raises at the end of its first epoch), nan (the trial's lr is blown up so its loss
#   diverges), exit (the worker process dies after its first checkpoint, once), slow (every epoch of
#   the trial takes SLOW_FAULT_S longer, so a test can act while it runs).
# TRIAL is the trial's index in the study (0, 1, ...). Read by the runner in the driver process.
FAULT_ENV = "GATESEARCH_FAULT"
SLOW_FAULT_S = 2.0


class InjectedFault(RuntimeError):
    """Raised by the ``raise`` fault of ``GATESEARCH_FAULT``."""


@dataclass(frozen=True)
class TrialContext:
    """What the driver hands every trial (picklable, no live objects)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study: str
    epochs: int
    objective_metrics: tuple[str, ...]
    fault: str = ""  # GATESEARCH_FAULT as read by the driver
    fault_dir: str = ""  # where once-only faults leave their marker
    # study.reeval: reeval.key(trial, seed index) -> the flat config that re-evaluation trial trains
    reeval: dict[str, dict[str, Any]] = field(default_factory=dict)


def trial_index_of(trial: Any) -> int:
    """0-based creation order of a Tune trial: its experiment tag starts with a 1-based counter that
    the search generator keeps across ``Tuner.restore``."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return int(head) - 1 if head.isdigit() else -1


def trial_name(trial: Any) -> str:
    """``TuneConfig.trial_name_creator``: ``t003`` for the fourth trial (its index travels in the name)."""
    return f"t{trial_index_of(trial):03d}"


def trial_dirname(trial: Any) -> str:
    return f"{trial_name(trial)}_{trial.trial_id}"


def trial_index(name: str) -> int:
    """``t003`` -> 3 (-1 for a name this module did not create)."""
    return int(name[1:]) if name[:1] == "t" and name[1:].isdigit() else -1


def faults_for(spec: str, index: int) -> set[str]:
    kinds = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, at = item.partition("@")
        if at.strip().isdigit() and int(at) == index:
            kinds.add(kind.strip())
    return kinds


def _short_error(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


class _TuneReporter:
    """``train.Reporter`` that forwards each epoch to MLflow and to Tune (with a checkpoint)."""

    def __init__(self, ctx: TrialContext, run_id: str, faults: set[str], trial_id: str) -> None:
        self.ctx, self.run_id, self.faults, self.trial_id = ctx, run_id, faults, trial_id
        self.carried: dict[str, float] = {}

    def on_start(self, cfg: Any, info: dict[str, Any]) -> None:
        tracking.log_datasets(self.ctx.tracking_uri, self.run_id, info.get("datasets", []))
        _stop_monitor()
        if cfg.tracking.system_metrics:
            _MONITOR["thread"] = tracking.start_system_metrics(self.ctx.tracking_uri, self.run_id)

    def on_step(self, step: int, epoch: int, parts: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], checkpoint_path: Path) -> None:
        from ray import tune  # lazy: imported in the Ray worker that runs the trial

        # epochs without evaluation (train.eval_every > 1) carry the last objective values, so the
        # scheduler and searcher always find their metrics
        self.carried.update({k: metrics[k] for k in self.ctx.objective_metrics if k in metrics})
        report = {**self.carried, **metrics, "epochs_done": epoch + 1, "mlflow_run_id": self.run_id}
        tracking.log_trial_metrics(self.ctx.tracking_uri, self.run_id, metrics, step=epoch)
        if epoch + 1 == self.ctx.epochs:  # before the last report: ASHA's max_t stops the trial inside it
            tracking.log_run_artifact(self.ctx.tracking_uri, self.run_id, str(checkpoint_path), "checkpoints")
        if "raise" in self.faults:
            raise InjectedFault(f"injected fault ({FAULT_ENV}) in trial {self.trial_id} after epoch {epoch}")
        with tempfile.TemporaryDirectory(prefix="gs-ckpt-") as tmp:
            dst = Path(tmp) / CHECKPOINT_FILE
            try:
                os.link(checkpoint_path, dst)  # same file system: no copy
            except OSError:
                shutil.copy2(checkpoint_path, dst)
            (Path(tmp) / TRIAL_FILE).write_text(json.dumps({"mlflow_run_id": self.run_id, "epoch": epoch,
                                                            "trial_id": self.trial_id}))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
        if "slow" in self.faults:
            time.sleep(SLOW_FAULT_S)
        if "exit" in self.faults:
            marker = Path(self.ctx.fault_dir) / f"exit-{self.trial_id}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("worker killed once by the fault injection\n")
                time.sleep(1.0)  # let the driver register the reported checkpoint first
                os._exit(17)  # a dying worker: Tune retries the trial from this checkpoint

    def on_end(self, result: Any) -> None:
        _stop_monitor()

    def on_fail(self, error: BaseException) -> None:
        _stop_monitor()


#: This worker process's system-metrics thread (``tracking.system_metrics``). A trial that ASHA stops never
#: returns from ``tune.report``, so its thread is stopped when the worker starts its next trial.
_MONITOR: dict[str, Any] = {"thread": None}


def _stop_monitor() -> None:
    tracking.stop_system_metrics(_MONITOR["thread"])
    _MONITOR["thread"] = None


def scratch_dir(ctx: TrialContext) -> Path:
    """This node's scratch directory for one study run's trials, ``<tmp>/gatesearch-trials/<study>/<parent run
    id>``, resolved; refused unless it is that very path inside ``<tmp>/gatesearch-trials``, so neither a name
    such as ``..`` nor a symbolic link planted in the shared temporary directory can make it another one."""
    root = (Path(tempfile.gettempdir()) / SCRATCH_ROOT).resolve()
    path = (root / ctx.study / ctx.parent_run_id).resolve()
    if path.parent.parent != root or (path.parent.name, path.name) != (ctx.study, ctx.parent_run_id):
        raise UserError(f"trial scratch directory {root / ctx.study / ctx.parent_run_id} resolves to {path}, "
                        f"not a directory of {root}")
    return path


def remove_scratch(ctx: TrialContext) -> None:
    """Remove what this study run's trials left on this node (its own scratch directory, never a sibling
    of another study or run), then the study's directory if that is left empty. A scratch directory that
    resolves elsewhere is left alone with one line on stderr (the runner calls this on its way out, where
    an exception would hide the study's own and skip the rest of its clean-up)."""
    try:
        path = scratch_dir(ctx)
    except UserError as e:
        print(f"removed nothing: {e}", file=sys.stderr, flush=True)
        return
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):  # rmdir removes only an empty directory
        path.parent.rmdir()


def _resume_path(local_dir: Path) -> Path | None:
    """Copy the trial's last Tune checkpoint next to the trial (Tune may delete its own copy)."""
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        src = Path(d) / CHECKPOINT_FILE
        if not src.is_file():
            return None
        local_dir.mkdir(parents=True, exist_ok=True)
        dst = local_dir / "resume.pt"
        shutil.copy2(src, dst)
        return dst


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: ``config`` is the flat dotted config of this trial."""
    from ray import tune

    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    reeval_key = config.get(REEVAL_KEY)  # a re-evaluation trial: its whole config comes with the context
    if reeval_key:
        config = ctx.reeval[reeval_key]
    # train.fit's own files go to a scratch directory per worker process, wiped when the worker starts
    # its next trial (a trial stopped inside tune.report never reaches a cleanup of its own); not
    # tctx.get_trial_dir(), which with reuse_actors can still name the worker's previous trial
    trial_dir = scratch_dir(ctx) / f"worker-{os.getpid()}"
    shutil.rmtree(trial_dir, ignore_errors=True)
    index = trial_index(tctx.get_trial_name())
    faults = faults_for(ctx.fault, index)
    baseline = config.get(BASELINE_KEY)  # set on a paper-baseline trial (search/baselines.py): the method
    flat = {k: v for k, v in config.items() if "." in k}  # Config keys only (BASELINE_KEY has no dot)
    flat["train.out_dir"] = str(trial_dir / "fit")
    flat["tracking.uri"] = ctx.tracking_uri
    if "nan" in faults:  # a learning rate no loss survives: train.fit must raise TrainingDiverged
        flat["optim.lr"] = 1e30
    cfg = from_flat(flat)
    tags = {**tracking.run_tags(cfg), "gatesearch.study": ctx.study, "gatesearch.trial_index": str(index)}
    if baseline:
        tags[BASELINE_TAG] = str(baseline)
    name = f"{ctx.study}-{index:03d}-{cfg.method.name}" + ("-baseline" if baseline else "")
    run_key = trial_id  # finds this trial's MLflow run again when Tune restarts or resumes it
    if reeval_key:  # keyed by (repeated trial, seed index): a resumed re-evaluation never makes a second run
        of, seed_index = reeval_keys(reeval_key)
        tags |= {REEVAL_OF_TAG: of, REEVAL_SEED_TAG: str(seed_index), "gatesearch.kind": "reeval"}
        name = f"{ctx.study}-reeval-{cfg.method.name}{'-baseline' if baseline else ''}-{of[:8]}-s{seed_index}"
        run_key = f"reeval:{reeval_key}"
    run_id, status, error = tracking.trial_run(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, run_key,
                                               name, to_flat(cfg), tags)
    if error:  # a deterministic failure already recorded: retrying cannot help
        raise InjectedFault(error) if error.startswith("InjectedFault") else RuntimeError(error)
    if status != "RUNNING":
        tracking.reopen_run(ctx.tracking_uri, run_id)
    resume_from = _resume_path(trial_dir / "resume")
    reporter = _TuneReporter(ctx, run_id, faults, trial_id)
    try:
        fit(cfg, reporters=(reporter,), resume_from=resume_from)
    except (TrainingDiverged, UserError, InjectedFault) as e:
        tracking.end_run(ctx.tracking_uri, run_id, "FAILED", error=_short_error(e))
        raise
    finally:  # every checkpoint that matters is in Tune's storage by now
        shutil.rmtree(trial_dir, ignore_errors=True)
    tracking.end_run(ctx.tracking_uri, run_id, "FINISHED")
