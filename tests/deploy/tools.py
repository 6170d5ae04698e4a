"""The Prometheus binaries the deploy tests run (Debian's `prometheus` package, installed by
`.ci/install-system-deps`, which `make test` runs)."""

from __future__ import annotations

import shutil


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"`{name}` is not installed: run `bash .ci/install-system-deps` (or `make test`, which does)"
    return path
