"""Errors of the cache domain, without HTTP: the gateway turns `CacheUnavailableError` into a bypass, never a 5xx."""

from __future__ import annotations


class CacheUnavailableError(Exception):
    """Redis could not answer a cache call; the request goes on as if the cache were not there."""


class IncompleteStreamError(ValueError):
    """A streamed answer cannot be assembled into a completion (error event, missing `finish_reason`, no chunks)."""
