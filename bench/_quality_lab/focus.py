"""Second GPU round: variations around the chosen DEFAULT (128 px, lr 1e-3), all at its CPU budget.

Re-uses grid.py's worker and table; only the recipe list differs, and there is no phase 2.

    python bench/_quality_lab/focus.py --data .lab_data/dfdc-faces --weights .lab_data/weights --out $OUT
"""

from __future__ import annotations

import dataclasses
import sys

import grid
import quality as q

D = q.DEFAULT


def focus() -> tuple[list, list]:
    def v(name: str, seed: int = 0, **kw):
        return ("focus", dataclasses.replace(D, name=name, **kw), seed)

    core = [
        v("default"),
        v("default-s1", seed=1),
        v("head-zeros", head_init="zeros"),
        v("head-glorot", head_init="glorot"),
        v("lr2e-3", lr=2e-3),
        v("ls.1", label_smoothing=0.1),
        v("drop.2", drop_rate=0.2),
        v("zeros-s1", seed=1, head_init="zeros"),
    ]
    return core, []


grid.phase1 = focus
grid.phase2 = lambda done: []

if __name__ == "__main__":
    sys.exit(grid.main())
