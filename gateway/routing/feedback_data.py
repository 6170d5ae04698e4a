"""Training examples from served traffic: usage records of confidence-routed requests joined with feedback.

A `cascade` or `scored` request keeps its prompt's scorer features with its usage record (never the text). When
the tenant rated an answer the small model gave (`cascade:small`, `scored:small`), the rating labels whether the
small model did: `good` → right, `bad` → wrong. Answers the large model gave say nothing about the small one and
are not used. The sample leans towards prompts the router already sent to the small model; mix in a labelled
JSONL file (`--data`) to cover the rest.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

import asyncpg

from gateway.routing.features import kept_features
from gateway.routing.train import Example

SMALL_ANSWERS: Final = ("cascade:small", "scored:small")

_QUERY = """
SELECT u.request_id::text, u.routing_features, f.rating
FROM usage_records u
JOIN feedback f ON f.tenant_id = u.tenant_id AND f.request_id = u.request_id
WHERE u.routing_features IS NOT NULL AND u.route = ANY($1::text[]) AND u.created_at >= $2
"""


class FeedbackExamples:
    def __init__(self, examples: list[Example], skipped: int) -> None:
        self.examples = examples
        self.skipped = skipped
        """Rated records whose features were kept with other hash buckets than the training run's."""


async def feedback_examples(database_url: str, since: dt.datetime, buckets: int) -> FeedbackExamples:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(_QUERY, list(SMALL_ANSWERS), since)
    finally:
        await conn.close()
    examples, skipped = [], 0
    for request_id, blob, rating in rows:
        features = kept_features(blob)
        if features.buckets != buckets:
            skipped += 1
            continue
        examples.append(
            Example(key=request_id, visible=features.visible, words=features.as_words(), label=rating == "good")
        )
    return FeedbackExamples(examples, skipped)
