"""Wire Structs of the public APIs, with their codecs built once at import."""

from __future__ import annotations
