"""Wire-format adapters: one module per (client API, upstream API) pair, pure functions over JSON objects.

The pipeline speaks chat completions inside; an adapter translates a client's API into it and the answer
(or stream) back, or translates the pipeline's chat call into an upstream's own API. Adding one never
changes the pipeline's shape.
"""

from __future__ import annotations
