"""Wire-format adapters: one module (or package) per (client API, upstream API) pair, pure functions over JSON.

The pipeline speaks chat completions inside; an adapter translates a client's API into it and the answer
(or stream) back, or translates the pipeline's chat call into an upstream's own API. Adding one never
changes the pipeline's shape. A pair too large for one module is a package split by direction (`request`,
`answer`, `stream`) whose `__init__` re-exports its public names.
"""

from __future__ import annotations
