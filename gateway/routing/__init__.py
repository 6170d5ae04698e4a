"""Confidence routing: the cascade's confidence, the pre-call scorer, and the offline tools that train and tune them.

Serving uses `confidence.confidence` / `confidence.StreamConfidence` (cascade) and `scorer.Scorer` (scored);
`train`, `calibrate`, `evaluation` and `dataset` are offline (`sluice router …`, `bench/routing.py`);
`difficulty` is the simulator's hidden-difficulty model. Nothing is re-exported here: the simulator imports
`difficulty`, and `dataset` imports the simulator, so this package's import must stay free of its modules.
See docs/routing.md.
"""

from __future__ import annotations
