"""The Ray Tune function trainable: one trial = one ``train.fit`` run, tracked as one MLflow child run.

The trial config is the flat dotted config (fixed keys + the Optuna draw). Everything else the
trial needs from the driver (tracking URI, parent run, fault injection) arrives as ``TrialContext``
through ``tune.with_parameters``. Heavy imports (torch, the training loop) happen inside the
function, once per worker process: with ``reuse_actors`` a worker runs many trials.

Per epoch, ``_TuneReporter`` logs the metrics to the trial's MLflow run and calls
``tune.report(metrics, checkpoint=...)`` with a directory holding ``last.pt`` and ``trial.json``
(the MLflow run id). A restarted trial resumes ``train.fit`` from ``tune.get_checkpoint()``.

With ``study.resources.workers`` > 1 the trial function is only a driver: it opens the MLflow run and
runs a Ray Train ``TorchTrainer`` (Ray Train V2) with that many workers, each calling ``train.fit``
after Ray Train has set up the process group (nccl on GPUs, gloo on CPUs). Every worker calls
``ray.train.report`` each epoch (V2: a barrier across workers); rank 0 attaches the checkpoint and logs
to MLflow. ``TuneReportCallback`` forwards rank 0's metrics to Tune, so ASHA and Optuna see the trial as
any other; the checkpoint stays in Ray Train's run directory ``<storage>/<study>/train/<trial id>``
(its path in the ``checkpoint_path`` metric), and a retried or resumed trial starts a trainer of the
same name there, which hands the workers that checkpoint (``ray.train.get_checkpoint()``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
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
#   the trial takes SLOW_FAULT_S longer, so a test can act while it runs), stall (rank 0 stops making progress
#   after its first checkpoint until its process is killed, once: a test interrupts the study there).
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
    workers: int = 1  # > 1: the trial runs a Ray Train TorchTrainer with this many DDP workers
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    storage: str = ""  # <storage>/<study>: where multi-worker trials keep their Ray Train runs


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
    """``train.Reporter`` that forwards each epoch to MLflow and to Tune (with a checkpoint).

    ``rank`` / ``report``: in a multi-worker trial every worker has one; only rank 0 logs to MLflow and
    attaches the checkpoint, every rank calls ``report(metrics, checkpoint directory or None)`` (there
    ``ray.train.report``, a barrier); without one, ``tune.report``."""

    def __init__(self, ctx: TrialContext, run_id: str, faults: set[str], trial_id: str, rank: int = 0,
                 report: Any = None, exit_rank: int = 0, registered: Any = None) -> None:
        self.ctx, self.run_id, self.faults, self.trial_id = ctx, run_id, faults, trial_id
        self.rank, self.report, self.exit_rank = rank, report, exit_rank
        self.registered = registered  # () -> bool: the reported checkpoint is on record (the exit fault waits)
        self.carried: dict[str, float] = {}

    def on_start(self, cfg: Any, info: dict[str, Any]) -> None:
        _stop_monitor()
        if self.rank != 0:
            return
        tracking.log_datasets(self.ctx.tracking_uri, self.run_id, info.get("datasets", []))
        if cfg.tracking.system_metrics:
            _MONITOR["thread"] = tracking.start_system_metrics(self.ctx.tracking_uri, self.run_id)

    def on_step(self, step: int, epoch: int, parts: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], checkpoint_path: Path) -> None:
        # epochs without evaluation (train.eval_every > 1) carry the last objective values, so the
        # scheduler and searcher always find their metrics
        self.carried.update({k: metrics[k] for k in self.ctx.objective_metrics if k in metrics})
        report = {**self.carried, **metrics, "epochs_done": epoch + 1, "mlflow_run_id": self.run_id}
        if self.rank == 0:
            tracking.log_trial_metrics(self.ctx.tracking_uri, self.run_id, metrics, step=epoch)
            if epoch + 1 == self.ctx.epochs:  # before the last report: ASHA's max_t stops the trial inside it
                tracking.log_run_artifact(self.ctx.tracking_uri, self.run_id, str(checkpoint_path), "checkpoints")
        if "raise" in self.faults:
            raise InjectedFault(f"injected fault ({FAULT_ENV}) in trial {self.trial_id} after epoch {epoch}")
        send = self.report or _tune_report
        if self.rank != 0:  # train.fit writes the checkpoint on rank 0 only
            send(report, None)
        else:
            with tempfile.TemporaryDirectory(prefix="gs-ckpt-") as tmp:
                dst = Path(tmp) / CHECKPOINT_FILE
                try:
                    os.link(checkpoint_path, dst)  # same file system: no copy
                except OSError:
                    shutil.copy2(checkpoint_path, dst)
                (Path(tmp) / TRIAL_FILE).write_text(json.dumps({"mlflow_run_id": self.run_id, "epoch": epoch,
                                                                "trial_id": self.trial_id}))
                send(report, tmp)
        if "slow" in self.faults:
            time.sleep(SLOW_FAULT_S)
        if "exit" in self.faults and self.rank == self.exit_rank:
            marker = Path(self.ctx.fault_dir) / f"exit-{self.trial_id}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("worker killed once by the fault injection\n")
                _wait_until(self.registered)  # the reported checkpoint is on record before the worker dies
                os._exit(17)  # a dying worker: Tune retries the trial from this checkpoint
        if "stall" in self.faults and self.rank == 0:  # the other ranks wait for it in the next collective
            marker = Path(self.ctx.fault_dir) / f"stall-{self.trial_id}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("trial stalled once by the fault injection\n")
                threading.Event().wait()  # never set: only killing this process ends the trial

    def on_end(self, result: Any) -> None:
        _stop_monitor()

    def on_fail(self, error: BaseException) -> None:
        _stop_monitor()


def _wait_until(done: Any, timeout_s: float = 30.0) -> None:
    """Wait until ``done()`` holds (at most ``timeout_s``); without ``done``, one second (Tune registers a
    reported checkpoint in the driver right after the report)."""
    if done is None:
        time.sleep(1.0)
        return
    deadline = time.time() + timeout_s
    while not done() and time.time() < deadline:
        time.sleep(0.2)


def _tune_report(metrics: dict[str, Any], checkpoint_dir: str) -> None:
    from ray import tune  # lazy: imported in the Ray worker that runs the trial

    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))


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


def _resume_path(local_dir: Path, ckpt: Any) -> Path | None:
    """Copy the trial's last checkpoint ``ckpt`` (Tune's, or Ray Train's in a worker; ``None`` on a first
    start) next to the trial (Ray may delete its own copy)."""
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


def _open_run(config: dict[str, Any], ctx: TrialContext, trial_id: str, index: int,
              faults: set[str]) -> tuple[dict[str, Any], str]:
    """The trial's flat config (``train.out_dir`` still to set per process) and its MLflow run id: found
    again when Tune restarts or resumes the trial, reopened when it was closed; a deterministic failure
    already recorded raises at once (retrying cannot help)."""
    reeval_key = config.get(REEVAL_KEY)  # a re-evaluation trial: its whole config comes with the context
    if reeval_key:
        config = ctx.reeval[reeval_key]
    baseline = config.get(BASELINE_KEY)  # set on a paper-baseline trial (search/baselines.py): the method
    flat = {k: v for k, v in config.items() if "." in k}  # Config keys only (BASELINE_KEY has no dot)
    flat["tracking.uri"] = ctx.tracking_uri
    if "nan" in faults:  # a learning rate no loss survives: train.fit must raise TrainingDiverged
        flat["optim.lr"] = 1e30
    cfg = from_flat(flat)
    tags = {**tracking.run_tags(cfg), "gatesearch.study": ctx.study, "gatesearch.trial_index": str(index)}
    if baseline:
        tags[BASELINE_TAG] = str(baseline)
    if ctx.workers > 1:
        tags["gatesearch.workers"] = str(ctx.workers)
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
    return flat, run_id


def _fit_here(flat: dict[str, Any], ctx: TrialContext, run_id: str, reporter: _TuneReporter,
              resume: Any) -> None:
    """``train.fit`` in this process, its files in this node's scratch directory (one per process, wiped
    when the process starts its next trial: a trial stopped inside a report never reaches a cleanup of its
    own); ``resume``: the checkpoint to go on from (Tune's in a trial, Ray Train's in a worker; each asks
    its own API: Tune's ``get_checkpoint`` inside a Ray Train worker only warns and returns ``None``)."""
    trial_dir = scratch_dir(ctx) / f"worker-{os.getpid()}"
    shutil.rmtree(trial_dir, ignore_errors=True)
    cfg = from_flat({**flat, "train.out_dir": str(trial_dir / "fit")})
    try:
        fit(cfg, reporters=(reporter,), resume_from=_resume_path(trial_dir / "resume", resume))
    except (TrainingDiverged, UserError, InjectedFault) as e:
        if reporter.rank == 0:
            tracking.end_run(ctx.tracking_uri, run_id, "FAILED", error=_short_error(e))
        raise
    finally:  # every checkpoint that matters is in Tune's (or Ray Train's) storage by now
        shutil.rmtree(trial_dir, ignore_errors=True)


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: ``config`` is the flat dotted config of this trial."""
    from ray import tune

    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    index = trial_index(tctx.get_trial_name())
    faults = faults_for(ctx.fault, index)
    flat, run_id = _open_run(config, ctx, trial_id, index, faults)
    if ctx.workers > 1:
        _fit_on_workers(flat, ctx, run_id, trial_id, faults)
    else:
        _fit_here(flat, ctx, run_id, _TuneReporter(ctx, run_id, faults, trial_id), resume=tune.get_checkpoint())
    tracking.end_run(ctx.tracking_uri, run_id, "FINISHED")


def train_run_dir(ctx: TrialContext) -> Path:
    """Where a multi-worker trial's Ray Train runs live: ``<storage>/<study>/train``, one run per trial id."""
    return Path(ctx.storage) / "train"


def _fit_on_workers(flat: dict[str, Any], ctx: TrialContext, run_id: str, trial_id: str, faults: set[str]) -> None:
    """Run the trial as a Ray Train V2 ``TorchTrainer`` of ``ctx.workers`` workers and wait for it. Worker
    failures are not retried inside the trainer: the trial fails, Tune retries it (``study.max_failures``) and
    the new trainer, same name and storage, restores the last checkpoint its workers reported."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = ctx.gpus_per_worker > 0
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"flat": flat, "ctx": ctx, "run_id": run_id, "trial_id": trial_id, "faults": sorted(faults)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=ctx.workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": ctx.cpus_per_worker, **({"GPU": ctx.gpus_per_worker} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=trial_id, storage_path=str(train_run_dir(ctx)),
            failure_config=ray.train.FailureConfig(max_failures=0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()]),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise RuntimeError(_worker_error(e)) from None


def _worker_error(e: BaseException) -> str:
    """The first worker's own error from a ``TrainingFailedError`` (its last line), else the error itself."""
    failures = getattr(e, "worker_failures", None) or {}
    first = next(iter(failures.values()), None) if isinstance(failures, dict) else None
    return _short_error(first if isinstance(first, BaseException) else e)


def _train_registered(snapshot: Path) -> bool:
    """Ray Train's controller has recorded a checkpoint of this run (its snapshot in the run directory names
    one), so a trainer started again under the same name restores it."""
    try:
        return json.loads(snapshot.read_text()).get("latest_checkpoint_result") is not None
    except (OSError, ValueError):
        return False


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: ``train.fit`` under the process group Ray Train set up, reporting every epoch."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    ctx: TrialContext = config["ctx"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if ctx.gpus_per_worker > 0:  # "cuda" in the config is then this worker's own GPU (train.fit's DDP uses it)
        torch.cuda.set_device(get_device())
    snapshot = train_run_dir(ctx) / config["trial_id"] / "checkpoint_manager_snapshot.json"
    reporter = _TuneReporter(ctx, config["run_id"], set(config["faults"]), config["trial_id"], rank=rank,
                             report=lambda m, d: ray.train.report(
                                 m, checkpoint=ray.train.Checkpoint.from_directory(d) if d else None),
                             exit_rank=world - 1, registered=lambda: _train_registered(snapshot))
    _fit_here(config["flat"], ctx, config["run_id"], reporter, resume=ray.train.get_checkpoint())
