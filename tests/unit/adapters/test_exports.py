"""The split adapters' public surface: every name in each package's `__all__` exists there, listed once."""

from __future__ import annotations

from types import ModuleType

import pytest

from gateway.adapters import messages_over_chat, responses_over_chat


@pytest.mark.parametrize("package", [messages_over_chat, responses_over_chat], ids=lambda package: package.__name__)
def test_every_exported_name_is_importable_from_the_package(package: ModuleType) -> None:
    assert all(hasattr(package, name) for name in package.__all__)
    assert sorted(package.__all__) == sorted(set(package.__all__))
