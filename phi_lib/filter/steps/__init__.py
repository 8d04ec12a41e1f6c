"""Stage 02's steps, one module each, in order: prefilter, annotate, train, score, keep,
evaluate (web only).

Each module has `fingerprint(stage, kind)` (what its output would be made of now; it asks
`stage.current(...)` for the upstream step's recorded output) and `run(stage, kind)`
(skipped while its recorded fingerprint matches; else it reads the upstream files, writes
its own and records its stats with `stage.record`). Steps share nothing in memory.
"""
from phi_lib.filter.steps import annotate, evaluate, keep, prefilter, score, train

STEPS = {"prefilter": prefilter, "annotate": annotate, "train": train, "score": score,
         "keep": keep, "evaluate": evaluate}

__all__ = ["STEPS"]
