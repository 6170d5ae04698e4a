"""What was already answered: the tenant-scoped decision cache (answers and routing decisions) and single flight."""

from __future__ import annotations

from cache.coalesce import Coalesced, Coalescer, Lease, Role
from cache.decisions import RoutingDecisions
from cache.errors import CacheUnavailableError, IncompleteStreamError
from cache.keys import IGNORED_FIELDS, RequestKey, prompt_fingerprint, request_key
from cache.policy import CachePolicy, Lookup, LookupResult, Mode, Reason, is_deterministic, lookup_mode
from cache.replay import assemble, replay_sse
from cache.store import CachedAnswer, DecisionCache

__all__ = [
    "IGNORED_FIELDS",
    "CachePolicy",
    "CacheUnavailableError",
    "CachedAnswer",
    "Coalesced",
    "Coalescer",
    "DecisionCache",
    "IncompleteStreamError",
    "Lease",
    "Lookup",
    "LookupResult",
    "Mode",
    "Reason",
    "RequestKey",
    "Role",
    "RoutingDecisions",
    "assemble",
    "is_deterministic",
    "lookup_mode",
    "prompt_fingerprint",
    "replay_sse",
    "request_key",
]
