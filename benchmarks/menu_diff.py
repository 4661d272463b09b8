"""Compare two menus of the same checkpoint field by field (e.g. one written by an older tree):

    python benchmarks/menu_diff.py OLD/jetson-orin-nano/menu.json NEW/jetson-orin-nano/menu.json

Prints the candidates, the fields that differ (top-1, top-5, MACs, params, bytes, latency and its source,
activation, the Pareto flag) and the frontier scores; exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FIELDS = ("top1", "top5", "macs", "params", "bytes", "latency_ms", "latency_source", "activation", "pareto")


def diff(old: dict, new: dict) -> list[tuple]:
    o = {(e["pattern"], e["strategy"]): e for e in old["entries"]}
    n = {(e["pattern"], e["strategy"]): e for e in new["entries"]}
    out = [(k, "missing in new" if k in o else "missing in old", None, None) for k in sorted(set(o) ^ set(n))]
    out += [(k, f, o[k].get(f), n[k].get(f)) for k in sorted(set(o) & set(n)) for f in FIELDS if o[k].get(f) != n[k].get(f)]
    if old.get("frontier_score") != new.get("frontier_score"):
        out.append(("menu", "frontier_score", old.get("frontier_score"), new.get("frontier_score")))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    args = p.parse_args()
    old, new = (json.loads(Path(x).read_text()) for x in (args.old, args.new))
    found = diff(old, new)
    print(f"{len(old['entries'])} vs {len(new['entries'])} candidates; frontier score {old['frontier_score']} vs "
          f"{new['frontier_score']}; {len(found)} differing field(s)")
    for row in found[:50]:
        print("  ", *row)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
