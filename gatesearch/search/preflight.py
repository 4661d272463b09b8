"""What ``gatesearch search`` checks before it opens the study's MLflow parent run or writes a file: a
writable (and, when resumed, trusted) storage, a tracking store that answers, and a Ray cluster at
``--address``. Each raises a one-line ``UserError`` naming the option."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from gatesearch.errors import UserError
from gatesearch.preflight import check_output_dir, check_trusted_storage
from gatesearch.tracking import check_tracking_uri

CONNECT_TIMEOUT_S = 5.0  # one TCP connect; a dead host:port is refused at once, a black hole waits this long


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port``, ``ray://host:port`` (client port 10001 by default) or
    ``http(s)://host:port``; None for ``auto`` (a cluster found on this node)."""
    if address == "auto":
        return None
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    rest = rest.split("/", 1)[0]
    host, colon, port = rest.rpartition(":")
    default = {"ray": 10001, "http": 80, "https": 443}.get(scheme)
    if not colon:
        host, port = rest, ""
    if not port and default is None:
        raise UserError(f"--address {address}: expected host:port, ray://host:port or auto")
    try:
        return host.strip("[]") or "127.0.0.1", int(port) if port else default
    except ValueError:
        raise UserError(f"--address {address}: port {port!r} is not a number") from None


def check_ray_address(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A cluster answers at ``address`` (one TCP connect), so ``ray.init`` does not retry a dead one for
    minutes; ``auto`` needs a cluster started on this node (``ray start``). None or ``local``: a new local
    Ray is started."""
    if address in (None, "local"):
        return
    hp = _host_port(address)
    if hp is None:
        try:
            from ray._private.services import find_gcs_addresses  # private: skip the check if it moves
        except ImportError:
            return
        if not os.environ.get("RAY_ADDRESS") and not find_gcs_addresses():
            raise UserError(f"--address {address}: no Ray cluster runs on this node (start one with `ray start --head`)")
        return
    try:
        socket.create_connection(hp, timeout=timeout_s).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise UserError(f"--address {address}: no Ray cluster answers at {hp[0]}:{hp[1]} ({reason})") from None


def check_search(address: str | None, tracking_uri: str, storage: Path, study_dir: Path, resume: bool) -> None:
    """Everything ``gatesearch search`` needs before it opens the study's MLflow parent run or writes its
    marker: a writable storage (trusted, when resumed), a tracking store that answers, a live Ray address."""
    check_output_dir(storage, "--storage")
    if resume:
        check_trusted_storage(storage, study_dir)
    check_tracking_uri(tracking_uri, what="--tracking-uri")
    check_ray_address(address)


def ray_connect_error(address: str, error: BaseException) -> str:
    """The one line for a ``ray.init(address=...)`` that failed although the address answered."""
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    hint = "" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else (
        "; if the cluster uses token auth, export RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    return f"--address {address}: cannot join the Ray cluster ({first}){hint}"
