"""Cluster use: `ray start --head` + `ray job submit jobs/search.py`, and docker-compose.yml validity."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_ray_pids(temp_dir: str) -> list[int]:
    """Processes of the cluster under ``temp_dir`` only (``ray stop`` would end every Ray on the machine)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if temp_dir.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _stop_cluster(temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _own_ray_pids(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while _own_ray_pids(temp_dir) and time.time() < deadline:
            time.sleep(0.5)


@pytest.fixture
def ray_cluster():
    if sys.platform != "linux":
        pytest.skip("the cluster test finds its own Ray processes through /proc")
    temp_dir = tempfile.mkdtemp(prefix="gsray", dir="/tmp")  # short: Ray's socket paths have a length limit
    # token auth on, with a token of this test's own (in the environment, so ~/.ray/auth_token is left alone):
    # `ray start`, its workers, the job's driver and `ray job submit` all read it from RAY_AUTH_TOKEN
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    port, dash = _free_port(), _free_port()
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--ray-client-server-port={_free_port()}",
           f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={temp_dir}", "--num-cpus=2",
           "--include-dashboard=true", "--disable-usage-stats"]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=120)
        yield f"http://127.0.0.1:{dash}", env, token
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.flaky(reruns=1, reruns_delay=2)  # a real `ray start` cluster: see test_search_runner.RAY_TIMING
def test_ray_job_submit_runs_a_search(ray_cluster, tmp_path):
    address, env, token = ray_cluster
    with pytest.raises(urllib.error.HTTPError) as refused:  # the cluster is not open to a caller without the token
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=30)
    assert refused.value.code in (401, 403)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    job_id = f"gatesearch-test-{os.getpid()}"
    submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
              "--submission-id", job_id, "--no-wait", "--", "python", "jobs/search.py",
              "--space", "search_spaces/quickstart.yaml", "--tracking-uri", uri, "--storage", str(tmp_path / "rr"),
              "--set", "data.train_subset=192", "--set", "train.max_steps_per_epoch=2"]
    subprocess.run(submit, env=env, check=True, capture_output=True, text=True, timeout=120)
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    deadline = time.time() + 300
    while client.get_job_status(job_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, client.get_job_logs(job_id)[-4000:]
        time.sleep(2)
    status, logs = client.get_job_status(job_id), client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "mlflow ui --backend-store-uri" in logs
    best = json.loads((tmp_path / "rr" / "quickstart" / "best.json").read_text())
    from mlflow import MlflowClient

    mlflow_client = MlflowClient(uri)
    run = mlflow_client.get_run(best["mlflow_run_id"])
    parent = mlflow_client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["gatesearch.study"] == "quickstart"
    children = mlflow_client.search_runs([run.info.experiment_id],
                                         filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    from gatesearch.search.space import load_space

    study = load_space(ROOT / "search_spaces" / "quickstart.yaml").study
    kinds = [r.data.tags.get("gatesearch.kind") for r in children]
    assert kinds.count("trial") == study.trials  # baselines included
    # the finalists re-trained on the space's seeds, one child run per (finalist, seed), and a printed verdict
    summary = json.loads((tmp_path / "rr" / "quickstart" / "summary.json").read_text())
    assert kinds.count("reeval") == len(summary["reeval"]["finalists"]) * study.reeval.seeds
    assert "re-evaluation:" in logs and "  verdict: " in logs and "95% t-intervals" in logs


def test_job_entry_points_pass_their_arguments(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gatesearch_job_search", ROOT / "jobs" / "search.py")
    job_search = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job_search)
    home = tmp_path / "gs"
    assert job_search.job_argv(["--space", "x.yaml"], home) == [
        "search", "--address", "auto", "--space", "x.yaml", "--storage", str(home / "ray_results"),
        "--tracking-uri", f"sqlite:///{home / 'mlflow.db'}"]  # results outlive the job's working-dir copy
    given = ["--address", "ray://h:10001", "--storage", "/s", "--tracking-uri", "http://m:5000"]
    assert job_search.job_argv(given, home) == ["search", *given]
    space = tmp_path / "s.yaml"
    plain = ROOT / "search_spaces" / "quickstart.yaml"
    space.write_text(plain.read_text().replace("fixed:\n", "fixed:\n  tracking.uri: http://mlflow:5000\n"))
    assert "--tracking-uri" not in job_search.job_argv(["--space", str(space)], home)  # the space's own URI is kept
    assert "--tracking-uri" not in job_search.job_argv(["--space", str(plain), "--set", "tracking.uri=http://m:5000"],
                                                       home)  # and so is one given with --set
    for script in ("search.py", "select.py"):
        out = subprocess.run([sys.executable, str(ROOT / "jobs" / script), "--help"], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode in (0, 2)  # 2: this checkout has no such subcommand yet


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_file_is_valid(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}  # none of the compose values
    refused = subprocess.run(["docker-compose", "--env-file", str(empty), "-f", "docker-compose.yml", "config"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode != 0 and "in .env" in refused.stderr  # no secrets, no start: ${VAR:?message}
    out = subprocess.run(["docker-compose", "--env-file", ".env.example", "-f", "docker-compose.yml", "config"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    import yaml

    cfg = yaml.safe_load(out.stdout)
    services = cfg["services"]
    assert {"ray-head", "ray-worker-gpu", "mlflow", "postgres", "minio", "minio-create-bucket"} <= set(services)
    for svc in services.values():
        for port in svc.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
            assert published.startswith("127.0.0.1:"), port
    gpu = services["ray-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia"
    assert "postgresql://" in str(services["mlflow"]) and "s3://" in str(services["mlflow"])
    mlflow_env = services["mlflow"]["environment"]
    assert "--app-name basic-auth" in str(services["mlflow"]["command"]) and mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    roots = {mlflow_env["MLFLOW_AUTH_ADMIN_USERNAME"], mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"],
             services["minio"]["environment"]["MINIO_ROOT_USER"], services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]}
    ray_user, minio_user = services["mlflow-ray-user"]["environment"], services["minio-ray-user"]["environment"]
    for name in ("ray-head", "ray-worker-gpu"):  # token auth on, with the token from .env
        ray_env = services[name]["environment"]
        assert ray_env["RAY_AUTH_MODE"] == "token" and ray_env["RAY_AUTH_TOKEN"]
        # #27 item 10: never the MinIO root keys nor the MLflow admin, the logins the init services make instead
        assert not roots & {str(v) for v in ray_env.values()}, name
        assert (ray_env["MLFLOW_TRACKING_USERNAME"], ray_env["MLFLOW_TRACKING_PASSWORD"]) == (
            ray_user["MLFLOW_RAY_USER"], ray_user["MLFLOW_RAY_PASSWORD"])
        assert (ray_env["AWS_ACCESS_KEY_ID"], ray_env["AWS_SECRET_ACCESS_KEY"]) == (
            minio_user["MINIO_RAY_USER"], minio_user["MINIO_RAY_PASSWORD"])
    head_deps = services["ray-head"]["depends_on"]
    assert all(head_deps[n]["condition"] == "service_completed_successfully" for n in ("minio-ray-user", "mlflow-ray-user"))
    # the placeholders of .env.example never guard a running stack: env-check refuses them before anything starts

    def needs(name: str) -> set[str]:
        deps = services[name].get("depends_on") or {}
        direct = set(deps) if not isinstance(deps, list) else set(deps)
        return direct | {d for n in direct for d in needs(n)}

    assert "change-me" in services["env-check"]["environment"]["SECRETS"]  # .env.example's values reach the check
    assert all("env-check" in needs(n) for n in services if n != "env-check")
    entry = services["env-check"]["entrypoint"]
    script = (entry if isinstance(entry, str) else " ".join(entry)).replace("$$", "$")  # compose's $$ is a literal $
    check = subprocess.run(["sh", "-c", script],
                           env={"SECRETS": services["env-check"]["environment"]["SECRETS"], "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 1 and "make secrets" in check.stderr
    fine = subprocess.run(["sh", "-c", script],
                          env={"SECRETS": "a1b2 c3d4", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert fine.returncode == 0, fine.stderr
    for placeholder in ("change-me-minio-ray-secret", "change-me-mlflow-ray-password"):  # the new secrets too
        assert placeholder in services["env-check"]["environment"]["SECRETS"]
        one = subprocess.run(["sh", "-c", script], env={"SECRETS": f"a1b2 {placeholder}", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=30)
        assert one.returncode == 1 and placeholder in one.stderr
    for var in ("MINIO_RAY_PASSWORD", "MLFLOW_RAY_USER"):  # a .env from before these existed: compose refuses
        older = tmp_path / f"no-{var}.env"
        older.write_text("".join(line for line in (ROOT / ".env.example").read_text().splitlines(keepends=True)
                                 if not line.startswith(var + "=")))
        gone = subprocess.run(["docker-compose", "--env-file", str(older), "-f", "docker-compose.yml", "config"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        assert gone.returncode != 0 and f"set {var} in .env" in gone.stderr, gone.stderr


def _fake_mc(tmp_path: Path) -> tuple[Path, Path]:
    """An ``mc`` that logs its arguments and keeps the policy file it is given, and knows no user yet."""
    bin_dir, log = tmp_path / "bin", tmp_path / "mc.log"
    bin_dir.mkdir()
    (bin_dir / "mc").write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in "admin policy create"*) cp "$6" {tmp_path}/policy.json ;; esac
""")
    (bin_dir / "mc").chmod(0o755)
    return bin_dir, log


def test_minio_ray_user_gets_a_policy_scoped_to_the_artifacts_bucket(tmp_path):
    bin_dir, log = _fake_mc(tmp_path)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path), "MINIO_ROOT_USER": "root",
           "MINIO_ROOT_PASSWORD": "rootpw123", "MINIO_RAY_USER": "ray-artifacts", "MINIO_RAY_PASSWORD": "raypw1234",
           "MLFLOW_BUCKET": "runs"}
    out = subprocess.run(["sh", str(ROOT / "compose" / "minio_ray_user.sh")], env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    policy = json.loads((tmp_path / "policy.json").read_text())
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    assert resources == {"arn:aws:s3:::runs", "arn:aws:s3:::runs/*"}  # the bucket and its objects, nothing else
    assert all(st["Effect"] == "Allow" for st in policy["Statement"])
    assert all(a.startswith("s3:") and "*" not in a for a in actions) and "s3:PutObject" in actions
    assert not any(a.startswith(("s3:CreateBucket", "s3:DeleteBucket", "s3:PutBucketPolicy")) for a in actions)
    calls = log.read_text().splitlines()
    assert calls[0] == "alias set local http://minio:9000 root rootpw123"
    assert "admin user add local ray-artifacts raypw1234" in calls
    assert calls[-1] == "admin policy attach local ray-artifacts --user ray-artifacts"
    same = subprocess.run(["sh", str(ROOT / "compose" / "minio_ray_user.sh")], env={**env, "MINIO_RAY_USER": "root"},
                          capture_output=True, text=True, timeout=30)
    assert same.returncode == 1 and "must not be the root user" in same.stderr


class _MlflowAuthStub:
    """Records the requests of ``compose/mlflow_ray_user.py``; answers as MLflow's basic-auth app would."""

    def __init__(self, existing: bool) -> None:
        import http.server
        import threading

        self.requests: list[tuple[str, str, str, dict]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(size) or b"{}")
                stub.requests.append((self.command, self.path, self.headers.get("Authorization", ""), body))
                exists = existing and self.path.endswith(("/users/create", "/permissions/grant"))
                self.send_response(400 if exists else 200)
                self.end_headers()
                self.wfile.write(b'{"error_code": "RESOURCE_ALREADY_EXISTS"}' if exists else b"{}")

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.mark.parametrize("existing", [False, True])
def test_mlflow_ray_user_is_made_by_the_admin_and_is_not_one(existing):
    import base64

    stub = _MlflowAuthStub(existing)
    env = {"PATH": "/usr/bin:/bin", "MLFLOW_URL": stub.url, "MLFLOW_ADMIN_USER": "admin", "MLFLOW_ADMIN_PASSWORD": "adminpw",
           "MLFLOW_RAY_USER": "ray", "MLFLOW_RAY_PASSWORD": "raypw"}
    try:
        out = subprocess.run([sys.executable, str(ROOT / "compose" / "mlflow_ray_user.py")], env=env,
                             capture_output=True, text=True, timeout=60)
        same = subprocess.run([sys.executable, str(ROOT / "compose" / "mlflow_ray_user.py")],
                              env={**env, "MLFLOW_RAY_USER": "admin"}, capture_output=True, text=True, timeout=60)
    finally:
        stub.server.shutdown()
    assert out.returncode == 0, out.stderr
    admin = "Basic " + base64.b64encode(b"admin:adminpw").decode()
    assert all(auth == admin for _, _, auth, _ in stub.requests)  # the admin's login makes the user
    calls = [(m, p, b) for m, p, _, b in stub.requests if p != "/health"]
    expected = [("POST", "/api/2.0/mlflow/users/create", {"username": "ray", "password": "raypw"})]
    if existing:  # a second start: the password from .env again
        expected.append(("PATCH", "/api/2.0/mlflow/users/update-password", {"username": "ray", "password": "raypw"}))
    expected += [("PATCH", "/api/2.0/mlflow/users/update-admin", {"username": "ray", "is_admin": False}),
                 ("POST", "/api/3.0/mlflow/users/permissions/grant",
                  {"username": "ray", "resource_type": "experiment", "resource_id": "0", "permission": "READ"})]
    assert calls == expected
    assert same.returncode == 1 and "must not be the admin" in same.stderr


def test_make_secrets_writes_a_private_env_with_no_placeholder(tmp_path):
    import shutil as sh

    for name in ("Makefile", ".env.example", "requirements.txt", "pyproject.toml"):
        sh.copy(ROOT / name, tmp_path / name)
    out = subprocess.run(["make", "-s", "secrets", "PY=" + sys.executable], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    env = (tmp_path / ".env").read_text()
    assert "=change-me" not in env and (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    tokens = [line.split("=", 1)[1] for line in env.splitlines() if line.startswith(("POSTGRES_PASSWORD=", "RAY_AUTH_TOKEN="))]
    assert len(tokens) == 2 and tokens[0] != tokens[1] and all(len(t) == 64 for t in tokens)
    again = subprocess.run(["make", "-s", "secrets", "PY=" + sys.executable], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode != 0 and "not overwritten" in again.stderr and (tmp_path / ".env").read_text() == env


def test_ray_auth_is_not_disabled_by_default():
    """Token auth is Ray's default; the Makefile, compose file and job entry points never switch it off."""
    for path in ("Makefile", "docker-compose.yml", ".env.example", "jobs/search.py", "jobs/select.py"):
        text = (ROOT / path).read_text()
        assert "RAY_AUTH_MODE=disabled" not in text.replace("`RAY_AUTH_MODE=disabled make", "") and \
            "RAY_AUTH_MODE: disabled" not in text and ":-disabled" not in text, path
