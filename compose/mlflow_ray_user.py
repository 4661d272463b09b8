"""One-shot (compose service ``mlflow-ray-user``): the MLflow user the Ray containers log runs with, made
through the basic-auth app's REST API with the admin's login, which only this container holds.

The user is not an admin (``update-admin`` says so on every run). New users hold no permission
(``default_permission = NO_PERMISSIONS``): it is granted READ on the Default experiment (id 0, which
gatesearch's server check reads), and MLflow gives a user MANAGE on every experiment and registered model it
creates. Idempotent: an existing user gets the password from ``.env`` again. Standard library only: it runs in
the MLflow image.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request


def call(base: str, method: str, path: str, body: dict | None, login: tuple[str, str]) -> tuple[int, str]:
    """(HTTP status, response text) of one request with basic auth; a connection error is status 0."""
    token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def main(env: dict[str, str]) -> int:
    base = env.get("MLFLOW_URL", "http://mlflow:5000").rstrip("/")
    admin = (env["MLFLOW_ADMIN_USER"], env["MLFLOW_ADMIN_PASSWORD"])
    user, password = env["MLFLOW_RAY_USER"], env["MLFLOW_RAY_PASSWORD"]
    if user == admin[0]:
        print(f"MLFLOW_RAY_USER must not be the admin {admin[0]}: the Ray containers get a non-admin user",
              file=sys.stderr)
        return 1
    deadline = time.monotonic() + float(env.get("WAIT_S", "600"))  # the server installs its drivers first
    while call(base, "GET", "/health", None, admin)[0] != 200:
        if time.monotonic() > deadline:
            print(f"no MLflow server answers at {base}", file=sys.stderr)
            return 1
        time.sleep(2)
    steps = [("POST", "/api/2.0/mlflow/users/create", {"username": user, "password": password}),
             ("PATCH", "/api/2.0/mlflow/users/update-admin", {"username": user, "is_admin": False}),
             ("POST", "/api/3.0/mlflow/users/permissions/grant",
              {"username": user, "resource_type": "experiment", "resource_id": "0", "permission": "READ"})]
    for method, path, body in steps:
        status, text = call(base, method, path, body, admin)
        if status != 200 and "RESOURCE_ALREADY_EXISTS" in text and path.endswith("/users/create"):
            status, text = call(base, "PATCH", "/api/2.0/mlflow/users/update-password",
                                {"username": user, "password": password}, admin)
        elif status != 200 and "RESOURCE_ALREADY_EXISTS" in text:
            continue
        if status != 200:
            print(f"{method} {path}: HTTP {status} {text[:300]}", file=sys.stderr)
            return 1
    print(f"MLflow user {user}: not an admin; reads the Default experiment, manages what it creates")
    return 0


if __name__ == "__main__":
    sys.exit(main(dict(os.environ)))
