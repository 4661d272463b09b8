"""Payloads planted in a study's store where ``--resume`` would deserialise them: each one, when loaded the
way Tune loads that file, creates ``marker`` (so a test sees whether it ran)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

STUDY = "quickstart"
STAMP = "2026-01-01_00-00-00"
# name -> path under --storage: every kind of file Tune unpickles on restore, for the study and its re-evaluation
PLACES = {
    "tuner": f"{STUDY}/tuner.pkl",
    "experiment_state": f"{STUDY}/experiment_state-{STAMP}.json",
    "searcher_state": f"{STUDY}/searcher-state-{STAMP}.pkl",
    "search_gen_state": f"{STUDY}/search_gen_state-{STAMP}.json",
    "trial_params": f"{STUDY}/t000_0a1b2c3d/params.pkl",
    "trial_error": f"{STUDY}/t000_0a1b2c3d/error.pkl",
    "reeval_tuner": f"{STUDY}-reeval/tuner.pkl",
    "reeval_experiment_state": f"{STUDY}-reeval/experiment_state-{STAMP}.json",
    "reeval_basic_variant_state": f"{STUDY}-reeval/basic-variant-state-{STAMP}.json",
    "reeval_trial_params": f"{STUDY}-reeval/t000_0a1b2_00000/params.pkl",
}


class Payload:
    """Unpickling this touches ``marker``: the smallest stand-in for code a tampered store would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return Path.touch, (self.marker,)


def payload_bytes(name: str, marker: Path) -> bytes:
    """The planted file's content: a pickle, or (experiment_state) Tune's JSON with a cloudpickle fallback."""
    blob = pickle.dumps(Payload(marker))
    if "experiment_state" in name:
        return json.dumps({"runner_data": {"_type": "CLOUDPICKLE_FALLBACK", "value": blob.hex()},
                           "trial_data": []}).encode()
    return blob


def plant(storage: Path, marker: Path) -> dict[str, Path]:
    """Every place in ``PLACES`` holds a payload; directories and files as a study run leaves them (0755/0644)."""
    out = {}
    for name, rel in PLACES.items():
        p = storage / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(payload_bytes(name, marker))
        p.chmod(0o644)
        out[name] = p
    for d in [storage, *{p.parent for p in out.values()}, *{p.parent.parent for p in out.values()}]:
        if d == storage or storage in d.parents:
            d.chmod(0o755)
    return out
