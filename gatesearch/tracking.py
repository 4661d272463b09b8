"""MLflow tracking: the only module that imports mlflow.

Everything goes through ``MlflowClient`` with explicit run ids (no global active run), so
concurrent trials in one process never write into each other's runs. MLflow 3 needs a
database-backed store for a local file: use ``sqlite:///path/mlflow.db``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import re
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import requests
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.store.db.db_types import DATABASE_ENGINES
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _tracking_store_registry  # the schemes MLflow has stores for
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.utils.file_utils import local_file_uri_to_path
from mlflow.utils.uri import get_uri_scheme
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from gatesearch import runtime
from gatesearch.config import Config, to_flat
from gatesearch.errors import UserError
from gatesearch.preflight import check_output_dir, check_output_file

_BATCH = 100  # log_batch accepts at most 100 params / 1000 metrics per call


def check_tracking_uri(uri: str, timeout_s: float = 5.0, what: str = "tracking.uri") -> None:
    """Fail in seconds, with one line naming ``uri``, when the store cannot be used: an ``http(s)://``
    server that does not answer, refuses the credentials (``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``) or is not MLflow; a ``sqlite:///`` file
    whose directory is not writable or that is not an SQLite database; a scheme MLflow has no store for;
    a database URI whose driver is not installed. MLflow's own client retries a dead server for minutes."""
    if uri.startswith("sqlite:") and (not uri.startswith("sqlite:///") or uri.endswith(":memory:")):
        raise UserError(f"{what} {uri}: an SQLite store needs a file, sqlite:///path/mlflow.db (in memory, the runs "
                        "are lost and every trial process would see its own)")
    if uri.startswith("sqlite:///"):
        _check_sqlite_file(uri, uri[len("sqlite:///"):], what)
        return
    if not uri.startswith(("http://", "https://")):
        _check_store_scheme(uri, what)
        return

    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    try:
        with urllib.request.urlopen(_rest_request(uri), timeout=timeout_s):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403) and not user:
            raise UserError(f"{what} {uri}: the MLflow server wants a login (HTTP {e.code}); set "
                            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
        if e.code == 401:
            raise UserError(f"{what} {uri}: the MLflow server refused the login of user {user!r} (HTTP 401); "
                            "check MLFLOW_TRACKING_PASSWORD") from None
        if e.code == 403:
            raise UserError(f"{what} {uri}: MLflow user {user!r} has no permission to read experiments "
                            "(HTTP 403); ask the server's admin for one") from None
        if b'"error_code"' not in e.read(4096):
            raise UserError(f"{what} {uri}: not an MLflow server (HTTP {e.code} from its REST API)") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"{what} {uri}: no MLflow server answers ({reason})") from None


def _rest_request(uri: str) -> urllib.request.Request:
    """GET experiments/get-by-name with the user's MLflow credentials: read-only, answered by every MLflow 2/3
    server (404 RESOURCE_DOES_NOT_EXIST is an answer too)."""
    req = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default")
    user, password, token = (os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                                          "MLFLOW_TRACKING_TOKEN"))
    if user and password:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    elif token:
        req.add_header("Authorization", f"Bearer {token}")
    return req


_SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file


def _check_sqlite_file(uri: str, path: str, what: str) -> None:
    """A writable place for the database, and an existing non-empty file there is one (SQLite opens
    any file and fails at the first query, after the run has started)."""
    check_output_file(path, what)
    p = Path(path).expanduser()
    if p.is_file() and p.stat().st_size > 0:
        with p.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
        if head != _SQLITE_MAGIC:
            raise UserError(f"{what} {uri}: {p} is not an SQLite database (it starts with {head[:8]!r}); "
                            "name a new file or an MLflow database")


def _check_store_scheme(uri: str, what: str) -> None:
    """MLflow has a tracking store for ``uri``'s scheme, and a database URI's driver imports here
    (``postgresql://`` needs psycopg2, ``mysql://`` mysqlclient, ...): MLflow would fail at the first run."""
    try:
        _tracking_store_registry.get_store_builder(uri)
    except MlflowException:
        scheme = uri.split("://", 1)[0] if "://" in uri else uri.split(":", 1)[0]
        raise UserError(f"{what} {uri}: MLflow has no tracking store for scheme {scheme!r}; use sqlite:///path/mlflow.db, "
                        "http(s)://host:port or a database URI (postgresql://, mysql://, mssql://)") from None
    scheme = get_uri_scheme(uri)
    if scheme in ("", "file") and uri not in ("databricks", "databricks-uc", "uc"):  # MLflow's file store: a directory
        check_output_dir(local_file_uri_to_path(uri) if scheme == "file" else uri, what)
    if scheme not in DATABASE_ENGINES:
        return
    try:
        make_url(uri).get_dialect().import_dbapi()
    except ImportError as e:
        raise UserError(f"{what} {uri}: its database driver {e.name or str(e)!r} is not installed; install it, or "
                        "name an installed driver in the URI (dialect+driver://)") from None
    except (ArgumentError, NoSuchModuleError) as e:
        raise UserError(f"{what} {uri}: not a database URI SQLAlchemy can open ({str(e).splitlines()[0]})") from None


def run_tags(cfg: Config) -> dict[str, str]:
    return {"method": cfg.method.name, "model": cfg.model.name, "dataset": cfg.data.name}


class MLflowReporter:
    """``train.Reporter`` that logs to one MLflow run: flat config as params (once), metrics per
    epoch (``step`` = epoch), the final checkpoint as an artifact, tags method/model/dataset.

    ``run_id``: log into an existing run (created by a search runner); otherwise a run is created
    on ``on_start`` in ``experiment`` (as a child of ``parent_run_id`` when given).
    """

    def __init__(self, uri: str, experiment: str = "gatesearch", run_name: str | None = None,
                 run_id: str | None = None, parent_run_id: str | None = None,
                 artifact_location: str | None = None, tags: dict[str, str] | None = None) -> None:
        self.uri, self._client = uri, None
        self.experiment, self.run_name, self.run_id = experiment, run_name, run_id
        self.parent_run_id, self.artifact_location, self.extra_tags = parent_run_id, artifact_location, tags or {}

    @property
    def client(self) -> MlflowClient:
        """Made at first use: a run that fails before ``on_start`` (bad data, ...) leaves no store behind."""
        if self._client is None:
            self._client = study_client(self.uri)
        return self._client

    def on_start(self, cfg: Config, info: dict[str, Any]) -> None:
        tags = {**run_tags(cfg), **self.extra_tags}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        if self.run_id is None:
            exp_id = study_experiment_id(self.uri, self.experiment, self.artifact_location)
            name = self.run_name or f"{cfg.method.name}-{cfg.model.name}-{cfg.data.name}"
            self.run_id = _with_retries(self.client.create_run, exp_id, tags=tags, run_name=name).info.run_id
        else:
            _with_retries(self.client.log_batch, self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            reopen_run(self.uri, self.run_id)  # a resumed run is RUNNING again
        _write_run_file(Path(cfg.train.out_dir), self.uri, self.run_id)
        if info.get("start_epoch", 0) == 0:  # params are immutable: log them once, not again on resume
            params = [Param(k, str(v)) for k, v in sorted(to_flat(cfg).items())]
            for i in range(0, len(params), _BATCH):
                _with_retries(self.client.log_batch, self.run_id, params=params[i:i + _BATCH])
        else:
            self._send_missing_epochs(info.get("history", []))
        log_datasets(self.uri, self.run_id, info.get("datasets", []))
        self.monitor = start_system_metrics(self.uri, self.run_id) if cfg.tracking.system_metrics else None

    def _send_missing_epochs(self, history: list[dict[str, float]]) -> None:
        """The checkpoint is written before an epoch is reported, so a run stopped by a tracking server that
        went away resumes after an epoch the server never got: send those epochs from the checkpoint's history."""
        every = set(history[0]).intersection(*history[1:]) if history else set()
        if not every:
            return
        key = "train_loss" if "train_loss" in every else sorted(every)[0]  # a metric every epoch reported
        sent = {m.step for m in _with_retries(self.client.get_metric_history, self.run_id, key)}
        for epoch, metrics in enumerate(history):
            if epoch not in sent:
                self.on_epoch_end(epoch, metrics, Path())

    def on_step(self, step: int, epoch: int, parts: dict[str, float]) -> None:
        pass  # per-epoch metrics only: per-step logging would dominate a small run's time

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], checkpoint_path: Path) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            _with_retries(self.client.log_batch, self.run_id, metrics=batch[i:i + 1000])

    def on_end(self, result: Any) -> None:
        stop_system_metrics(getattr(self, "monitor", None))
        if result.checkpoint_path is not None:
            _with_retries(self.client.log_artifact, self.run_id, str(result.checkpoint_path), artifact_path="checkpoints")
        _with_retries(self.client.set_terminated, self.run_id, "FINISHED")

    def on_fail(self, error: BaseException) -> None:
        """A run that ends for any reason is ended: KILLED with its reason for Ctrl+C or a signal (``train
        --resume`` continues it), FAILED with the error otherwise; never left RUNNING. Except when the server
        itself is gone (``TrackingUnavailable``, or these calls find no server): the run then stays RUNNING on
        it, and ``train --resume`` reopens the same run, so nothing here may hide the error being raised."""
        stop_system_metrics(getattr(self, "monitor", None))
        if self.run_id is None or isinstance(error, TrackingUnavailable):
            return
        killed = isinstance(error, KeyboardInterrupt)
        reason = (str(error) or "interrupted (Ctrl+C)") if killed else "errored"
        try:
            self.client.set_tag(self.run_id, "gatesearch.stop_reason", reason)
            if not killed:
                self.client.set_tag(self.run_id, "error", str(error)[:500])
            self.client.set_terminated(self.run_id, "KILLED" if killed else "FAILED")
        except Exception as e:  # the server went away too: the error being raised is the one to report
            if unavailable_reason(e) is None:
                raise


# ---------------------------------------------------------------- search studies (appended by the search area)
# One parent run per study, one child run per Tune trial (tag mlflow.parentRunId). Every call names
# its run id explicitly (no active run), and writes retry: a SQLite store locks under concurrent trials.

STUDY_TAG = "gatesearch.study"
TRIAL_TAG = "gatesearch.trial_id"
ERROR_TAG = "gatesearch.error"
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"  # the artifacts the UI lists as tables
# earlier MLflow 3 UIs open an experiment by its kind (GenAI overview, or training runs); 3.17's ignores the
# tag and follows the URL's workflowType or the browser's last choice (runs_view_url sets it)
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def _with_retries(fn: Any, *args: Any, attempts: int = 10, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, retried on errors (a locked SQLite store, ...); a server that does not answer
    is retried for ``set_patience`` seconds on top of MLflow's own bounded retries (``HTTP_ENV``), then
    ``TrackingUnavailable``."""
    down_since, i = None, 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MlflowException("database is locked"), OperationalError, HTTP 5xx, ...
            reason = unavailable_reason(e)
            if reason is not None:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since >= _PATIENCE["s"]:
                    raise TrackingUnavailable(f"the MLflow server{_server_of(e)} does not answer ({reason})",
                                              reason) from None
                time.sleep(_PATIENCE_POLL_S)
                continue
            if i == attempts - 1 or "does not exist" in str(e) or "INVALID_PARAMETER_VALUE" in str(e):
                raise
            time.sleep(min(2.0, 0.05 * 2**i) * (0.5 + random.random()))
            i += 1


# ---------------------------------------------------------------- a tracking server that stops answering
# MLflow's HTTP client retries a dead server for minutes per call (7 retries with backoff factor 2, a 120 s
# timeout each) and _with_retries multiplied that by 10: a trial hung RUNNING for 9 minutes. Every process that
# imports this module (the study's driver, each Ray worker that runs a trial, `gatesearch train`) gets these
# bounds instead, unless its environment sets them: a call to a dead server then gives up after about 3 s
# (connection refused) or 35 s (a server that accepts and never answers).
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
for _key, _value in HTTP_ENV.items():
    os.environ.setdefault(_key, _value)
#: How long a process goes on retrying a server that does not answer before ``TrackingUnavailable``
#: (``GATESEARCH_TRACKING_PATIENCE_S``, default 120 s). A study's driver sets 0 (``set_patience``): it stops the
#: study when the server has been silent for 30 s (``search/outage.py``), so a trial waiting here is interrupted
#: and resumable rather than failed.
PATIENCE_ENV = "GATESEARCH_TRACKING_PATIENCE_S"
_PATIENCE = {"s": float(os.environ.get(PATIENCE_ENV) or 120.0)}
_PATIENCE_POLL_S = 5.0


class TrackingUnavailable(UserError):
    """The MLflow server did not answer (refused, reset, timed out, or 5xx after MLflow's retries)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def set_patience(seconds: float) -> None:
    """This process's ``PATIENCE_ENV``: seconds of retrying a silent server before ``TrackingUnavailable``."""
    _PATIENCE["s"] = float(seconds)


def unavailable_reason(e: BaseException) -> str | None:
    """Why the server did not answer, when ``e`` (MLflow wraps the ``requests`` error it gave up on) says
    so; None for an answer, even an error answer."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                             requests.exceptions.ChunkedEncodingError)):
            text = str(seen)
            errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
            return errno.group(1).strip() if errno else "timed out" if "timed out" in text else type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return None


def _server_of(e: BaseException) -> str:
    found = re.search(r"API request to (https?://[^/\s]+)", str(e))
    return f" at {found.group(1)}" if found else ""


def server_down_reason(uri: str, timeout_s: float = 5.0) -> str | None:
    """One read-only REST call to an ``http(s)://`` server: None when it answers (any HTTP answer but a
    gateway's 502/503/504), else why not."""
    try:
        with urllib.request.urlopen(_rest_request(uri), timeout=timeout_s):
            return None
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}" if e.code in (502, 503, 504) else None
    except (urllib.error.URLError, OSError) as e:
        return re.sub(r"^\[Errno -?\d+\] ", "", str(getattr(e, "reason", e)))


def study_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` (``sqlite:///abs/path.db`` or ``http://host:5000``)."""
    return MlflowClient(tracking_uri=uri)


def study_experiment_id(uri: str, name: str, artifact_location: str | None = None) -> str:
    """Id of experiment ``name``, created if needed (safe when two processes race to create it).

    A new experiment in a SQLite store keeps its artifacts beside the database file
    (``<db dir>/mlruns/<name>``), not in the creating process's working directory, which for a
    Ray job is a temporary copy that is deleted with the job. An ``http://`` server decides itself.
    """
    client = study_client(uri)
    exp = _with_retries(client.get_experiment_by_name, name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) is None:  # made before gatesearch set its kind
            _with_retries(client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return exp.experiment_id
    if artifact_location is None and uri.startswith("sqlite:///"):
        db_dir = Path(uri[len("sqlite:///"):]).expanduser().resolve().parent
        artifact_location = (db_dir / "mlruns" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)).as_uri()
    try:
        # the kind tag makes earlier MLflow 3 UIs open the experiment on its training runs, not the GenAI overview
        return _with_retries(client.create_experiment, name, artifact_location=artifact_location,
                             tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    except Exception:  # another process created it first
        return _with_retries(client.get_experiment_by_name, name).experiment_id


def _chunks(items: list[Any], n: int = 100) -> list[list[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def _param_value(value: Any) -> str:
    return str(value)[:6000]


def start_study_run(uri: str, experiment_id: str, study: str, space_text: str, space_file: str,
                    params: dict[str, Any], tags: dict[str, str] | None = None) -> str:
    """Create the study's parent run; logs the space file (artifact) and the study settings (params)."""
    client = study_client(uri)
    run = _with_retries(client.create_run, experiment_id, run_name=f"study-{study}",
                        tags={**(tags or {}), STUDY_TAG: study, "gatesearch.kind": "study"})
    rid = run.info.run_id
    for chunk in _chunks([Param(k, _param_value(v)) for k, v in params.items()]):
        _with_retries(client.log_batch, rid, params=chunk)
    _with_retries(client.log_text, rid, space_text, space_file)
    return rid


def trial_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str, run_name: str,
              params: dict[str, Any], tags: dict[str, str]) -> tuple[str, str, str | None]:
    """Find the child run of ``trial_id`` under the parent, or create it and log ``params`` once.

    Returns ``(run_id, status, error)``; a restarted or resumed trial gets its existing run back
    (with the error it ended with, if any), so a resume never duplicates runs or params.
    """
    client = study_client(uri)
    found = _with_retries(client.search_runs, [experiment_id],
                          filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent_run_id}'",
                          max_results=1)
    if found:
        run = found[0]
        return run.info.run_id, run.info.status, run.data.tags.get(ERROR_TAG)
    all_tags = {"gatesearch.kind": "trial", **tags, TRIAL_TAG: trial_id, "mlflow.parentRunId": parent_run_id}
    run = _with_retries(client.create_run, experiment_id, run_name=run_name, tags=all_tags)
    rid = run.info.run_id
    for chunk in _chunks([Param(k, _param_value(v)) for k, v in sorted(params.items())]):
        _with_retries(client.log_batch, rid, params=chunk)
    return rid, run.info.status, None


def log_trial_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    for chunk in _chunks(items, 500):
        _with_retries(study_client(uri).log_batch, run_id, metrics=chunk)


def set_run_tags(uri: str, run_id: str, tags: dict[str, Any]) -> None:
    items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
    _with_retries(study_client(uri).log_batch, run_id, tags=items)


def log_run_artifact(uri: str, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
    _with_retries(study_client(uri).log_artifact, run_id, local_path, artifact_path)


def log_run_dict(uri: str, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
    _with_retries(study_client(uri).log_dict, run_id, data, artifact_file)


def end_run(uri: str, run_id: str, status: str, error: str | None = None) -> None:
    """Finish a run: ``status`` FINISHED | FAILED | KILLED; an error is kept as a tag (one line, trimmed)."""
    if error:
        set_run_tags(uri, run_id, {ERROR_TAG: error})
    _with_retries(study_client(uri).set_terminated, run_id, status)


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a resumed run RUNNING again."""
    _with_retries(study_client(uri).update_run, run_id, "RUNNING")


def study_trial_runs(uri: str, experiment_id: str, parent_run_id: str) -> list[Any]:
    """The child runs of a study (``mlflow.entities.Run``)."""
    return list(_with_retries(study_client(uri).search_runs, [experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=5000))


def find_trial_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    """The run id of a study's trial (by its Tune trial id), or None."""
    found = _with_retries(study_client(uri).search_runs, [experiment_id],
                          filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent_run_id}'",
                          max_results=1)
    return found[0].info.run_id if found else None


# ---------------------------------------------------------------- selection (appended by the selector area)
# The selector logs menus into the run that trained the model: the menu entries as an MLflow
# table per device, the JSON/Parquet/PNG files as artifacts, frontier score and per-pattern metrics.


def find_run_checkpoint(uri: str, run_id: str, dst_dir: str | Path) -> Path:
    """Download the checkpoint ``MLflowReporter.on_end`` logged under ``checkpoints/`` of ``run_id``.

    A run that does not exist or has no checkpoint artifact is a ``UserError``; a ``sqlite:///`` store that
    does not exist yet holds no run, and is not created by looking (MLflow's client would create its tables).
    """
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).expanduser()
        if not db.is_file() or db.stat().st_size == 0:
            raise UserError(f"MLflow run {run_id} not found: {uri} holds no MLflow store ({db} is "
                            f"{'empty' if db.is_file() else 'missing'})")
    client = study_client(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise UserError(f"MLflow run {run_id} not found at {uri}") from None
    files = [f.path for f in client.list_artifacts(run_id, "checkpoints") if f.path.endswith(".pt")]
    if not files:
        raise UserError(f"MLflow run {run_id} has no checkpoint artifact under checkpoints/")
    return Path(client.download_artifacts(run_id, sorted(files)[-1], str(dst_dir)))


def log_selection(uri: str, run_id: str, menus: list[Any], out_dir: str | Path, max_pattern_metrics: int = 4096) -> None:
    """Log ``menus`` (``selection.pareto.Menu``) and the files under ``out_dir`` to ``run_id``.

    Metrics: ``select_top1_<PATTERN>`` per fixed pattern (device-independent, up to
    ``max_pattern_metrics``), ``select_<device>_frontier_score``, ``select_<device>_latency_ms_<PATTERN>``.
    """
    client = study_client(uri)
    now = int(time.time() * 1000)
    metrics: dict[str, float] = {}
    for menu in menus:
        dev = menu.device.replace("-", "_")
        columns = [c for c in menu.entries[0] if c != "unit_rates"] if menu.entries else []
        table = {c: [e[c] for e in menu.entries] for c in columns}
        table["unit_rates"] = [",".join(f"{r:.4f}" for r in e["unit_rates"]) for e in menu.entries]
        _with_retries(client.log_table, run_id, table, f"selection/{menu.device}/menu_table.json")
        metrics[f"select_{dev}_frontier_score"] = menu.frontier_score
        fixed = [e for e in menu.entries if e["strategy"] == "pattern"][:max_pattern_metrics]
        for e in fixed:
            metrics[f"select_top1_{e['pattern']}"] = e["top1"]
            metrics[f"select_{dev}_latency_ms_{e['pattern']}"] = e["latency_ms"]
    items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    for chunk in _chunks(items, 1000):
        _with_retries(client.log_batch, run_id, metrics=chunk)
    _with_retries(client.log_artifacts, run_id, str(out_dir), "selection")


def log_table(uri: str, run_id: str, data: dict[str, list[Any]], artifact_file: str) -> None:
    """``data`` (column -> values) as an MLflow table artifact, which the UI's table view shows. Unlike
    ``MlflowClient.log_table``, which appends to an existing file, a second call replaces the table, so a
    resumed study refreshes its tables instead of doubling their rows."""
    import pandas as pd  # lazy: pandas loads only when a table is logged

    client = study_client(uri)
    with tempfile.TemporaryDirectory(prefix="gs-table-") as tmp:
        path = Path(tmp) / Path(artifact_file).name
        pd.DataFrame(data).to_json(path, orient="split", index=False)
        parent = str(Path(artifact_file).parent)
        _with_retries(client.log_artifact, run_id, str(path), None if parent == "." else parent)
    tags = client.get_run(run_id).data.tags
    logged = json.loads(tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in logged:
        set_run_tags(uri, run_id, {LOGGED_ARTIFACTS_TAG: json.dumps(logged + [entry])})


def log_figure(uri: str, run_id: str, figure: Any, artifact_file: str) -> None:
    """A matplotlib figure as an image artifact (a second call replaces it)."""
    _with_retries(study_client(uri).log_figure, run_id, figure, artifact_file)


class BundleModel(mlflow.pyfunc.PythonModel):
    """A deploy bundle (``bundle.py``) as an MLflow model: ``predict(x, params={"budget_ms": 2.0})`` runs the
    most accurate sub-network whose latency on the bundle's device fits the budget (``runtime.Bundle``;
    ``x [B, C, H, W]`` float32, normalised as in training; returns logits ``[B, num_classes]``)."""

    def load_context(self, context: Any) -> None:
        self.bundle = runtime.Bundle.load(context.artifacts["bundle"])

    # the signature logged with the model gives the input schema; MLflow's check of predict's type hints
    # (which asks for list[...] inputs) is switched off by the attribute its own PythonModel subclasses use
    _skip_type_hint_validation = True

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - hints would be read as a schema
        budget = (params or {}).get("budget_ms")
        if budget is None:
            raise ValueError("predict needs params={'budget_ms': <latency budget in ms>}")
        return self.bundle.run(np.asarray(model_input, dtype=np.float32), float(budget))


def register_bundle(uri: str, run_id: str, bundle_dir: str | Path, name: str, alias: str,
                    menu_path: str | Path | None = None) -> str:
    """Log the bundle at ``bundle_dir`` as a pyfunc model under the run (``bundles/<alias>``, with its menu),
    register it as a new version of model ``name`` and point alias ``alias`` (the device) at it, so that
    ``mlflow.pyfunc.load_model("models:/<name>@<alias>")`` picks sub-networks by latency budget. The version
    links to the run (its metrics) and carries the menu's frontier score as a tag. Returns the version."""
    record = json.loads((Path(bundle_dir) / runtime.BUNDLE_FILE).read_text())
    shape = (-1, *record["input_shape"])
    fastest = min(e["latency_ms"] for e in record["entries"])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(record["num_classes"])))]),
        params=ParamSchema([ParamSpec("budget_ms", "double", max(fastest, 1e-9))]))
    artifacts = {"bundle": str(bundle_dir), **({"menu": str(menu_path)} if menu_path else {})}
    client = study_client(uri)
    with tempfile.TemporaryDirectory(prefix="gs-model-") as tmp:
        path = Path(tmp) / "model"
        mlflow.pyfunc.save_model(str(path), python_model=BundleModel(), artifacts=artifacts, signature=signature,
                                 pip_requirements=["numpy", "onnxruntime", "gatesearch"])
        _with_retries(client.log_artifacts, run_id, str(path), f"bundles/{alias}")
    try:
        _with_retries(client.create_registered_model, name)
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/bundles/{alias}"
    tags = {"device": alias, "gatesearch.entries": str(len(record["entries"])),
            "gatesearch.latency_source": str(record.get("latency_source"))}
    version = _with_retries(client.create_model_version, name, source, run_id=run_id, tags=tags)
    _with_retries(client.set_registered_model_alias, name, alias, version.version)
    return str(version.version)


def log_datasets(uri: str, run_id: str, datasets: list[dict[str, Any]]) -> None:
    """Each split (``data.describe``) as an MLflow dataset input of the run, tagged with its context
    (training / validation / test): the UI's run page lists them with name, digest and source. Logging the
    same split again (a resumed run) adds nothing: MLflow keys an input by the dataset's name and digest."""
    inputs = [DatasetInput(Dataset(name=d["name"], digest=d["digest"], source_type="local", source=d["source"],
                                   schema=json.dumps({"images": ["uint8", *d["input_shape"]], "labels": "int64"}),
                                   profile=json.dumps({"num_rows": d["n"], "num_classes": d["num_classes"]})),
                           tags=[InputTag("mlflow.data.context", d["context"])]) for d in datasets]
    if inputs:
        _with_retries(study_client(uri).log_inputs, run_id, datasets=inputs)


#: How often system metrics are sampled (s); MLflow's own default.
SYSTEM_METRICS_INTERVAL_S = 10.0


def start_system_metrics(uri: str, run_id: str) -> Any:
    """``tracking.system_metrics``: MLflow's monitor thread logs CPU, memory, disk and network use (and GPU
    use where NVML finds one) to the run every ``SYSTEM_METRICS_INTERVAL_S``; returns it for ``stop``."""
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=uri)
    monitor.start()
    return monitor


def stop_system_metrics(monitor: Any) -> None:
    if monitor is not None:
        monitor.finish()


#: ``<train.out_dir>/mlflow_run.json``: the MLflow run a ``gatesearch train`` logs to, so ``--resume`` continues it.
RUN_FILE = "mlflow_run.json"


def _write_run_file(out_dir: Path, uri: str, run_id: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps({"tracking_uri": uri, "run_id": run_id}))
    os.replace(tmp, out_dir / RUN_FILE)


def resumed_run_id(uri: str, out_dir: str | Path) -> str | None:
    """The run an earlier ``gatesearch train`` in ``out_dir`` logged to, when it is in this store: ``--resume``
    logs into it (its params stay, its metrics go on) instead of opening a second run."""
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return None
    if saved.get("tracking_uri") != uri:
        return None
    try:
        study_client(uri).get_run(saved["run_id"])
    except (MlflowException, KeyError):
        return None
    return saved["run_id"]


# ---------------------------------------------------------------- the UI's first screen of a study (search area)
# MLflow 3.17's UI opens an experiment on the GenAI overview unless the URL or the browser says "machine
# learning" (it no longer reads mlflow.experimentKind), and keeps its table columns and charts in the browser.
# What the server can hold: a saved view of the runs page, an experiment tag the UI lists in its "Views" menu.

SAVED_VIEW_TAG = "mlflow.sharedViewState."  # + the view's key; the UI's "Views" menu lists every such tag
NOTE_TAG = "mlflow.note.content"  # a run's description: its page's Description and the runs table's column
UI_URL = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


def save_runs_view(uri: str, experiment_id: str, key: str, name: str, state: dict[str, Any]) -> None:
    """``state`` (the UI's runs-page state: filter, sort, columns, charts) as the saved view ``name`` of the
    experiment, opened from the UI's "Views" menu or ``runs_view_url``; saving ``key`` again replaces it."""
    now = int(time.time() * 1000)
    value = json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})
    _with_retries(study_client(uri).set_experiment_tag, experiment_id, SAVED_VIEW_TAG + key, value)


def runs_view_url(uri: str, experiment_id: str, key: str) -> str:
    """The UI address that opens saved view ``key`` on the runs page, in the UI's machine-learning mode:
    on the server itself for an ``http(s)://`` store, else where ``mlflow ui`` serves by default."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_URL
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}&workflowType=machine_learning"
