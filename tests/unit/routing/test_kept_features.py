"""Features kept with usage records train exactly what the prompts' text trains."""

from __future__ import annotations

from gateway.routing.dataset import LabelledPrompt
from gateway.routing.features import DEFAULT_BUCKETS, keep_features, kept_features
from gateway.routing.train import Example, TrainingOptions, train, train_examples


def test_training_from_kept_features_gives_the_weights_training_from_text_gives(
    records: list[LabelledPrompt],
) -> None:
    sample = records[:600]
    options = TrainingOptions(buckets=DEFAULT_BUCKETS, validation_share=0)
    kept = [kept_features(keep_features(record.prompt)) for record in sample]
    examples = [
        Example(key=str(i), visible=features.visible, words=features.as_words(), label=record.small_correct)
        for i, (features, record) in enumerate(zip(kept, sample, strict=True))
    ]
    from_text, from_features = train(sample, options), train_examples(examples, options)
    assert from_features.content_hash == from_text.content_hash
    assert from_features.word_weights == from_text.word_weights


def test_kept_features_hold_no_text_and_stay_small() -> None:
    prompt = "Please write a Python function that parses ISO dates, then explain each step."
    blob = keep_features(prompt)
    assert b"Python" not in blob and b"dates" not in blob
    assert len(blob) < 400
    assert kept_features(blob).buckets == DEFAULT_BUCKETS
