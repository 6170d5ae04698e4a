"""Errors of the offline router tools and of loading a scorer; no HTTP here."""

from __future__ import annotations


class RoutingError(Exception):
    """Base of the routing package's errors; the message names the file, field or number at fault."""


class DatasetError(RoutingError):
    """A labelled JSONL line is malformed, or lacks a field the command needs."""


class ScorerArtifactError(RoutingError):
    """A scorer artifact cannot be used: unreadable, an unknown format version, or a content-hash mismatch."""


class CalibrationError(RoutingError):
    """A calibration target is out of range or the data cannot reach it."""
