"""Runs one search on the ray backend as its own driver process (Ray reads its authentication
settings when it is imported: a test process that joined another cluster before cannot switch),
and prints what the test checks as JSON on stdout.

    python tests/ray_driver.py JOB.json   # {"spec": {...}, "space": {...}, "settings": {...},
                                          #  "out": DIR, "address": ADDR, "trials_at_once": N}
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(path: str) -> None:
    from tiny_models import easy_classification

    from autoft.autotrain.backends import Parallel
    from autoft.autotrain.plan import TrialSpec
    from autoft.autotrain.progress import Progress, Recorder
    from autoft.autotrain.search import SearchSettings
    from autoft.autotrain.search_ray import run_search_ray

    from autoft.errors import AutoftError

    job = json.loads(Path(path).read_text())
    rec = Recorder()
    try:
        res = run_search_ray(TrialSpec(**job["spec"]), easy_classification(*job["data"]), job["space"],
                             SearchSettings(**job["settings"]), job["out"], Progress([rec]),
                             parallel=Parallel("ray", address=job["address"], trials_at_once=job["trials_at_once"]))
    except AutoftError as err:
        print(json.dumps({"error": str(err), "warnings": [e["text"] for e in rec.of("warning")]}))
        return
    print(json.dumps({"best_trial": res.best_trial, "best_config": res.best_config, "best_metric": res.best_metric,
                      "best_checkpoint": res.best_checkpoint, "warnings": [e["text"] for e in rec.of("warning")]}))


if __name__ == "__main__":
    main(sys.argv[1])
