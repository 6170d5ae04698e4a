"""The package's public surface: every name in `cache.__all__` exists, and nothing public is left out."""

from __future__ import annotations

import cache


def test_every_exported_name_is_importable() -> None:
    assert all(hasattr(cache, name) for name in cache.__all__)
    assert sorted(cache.__all__) == sorted(set(cache.__all__))
