"""Synthetic prompts for the simulator's labelled datasets: plain questions, code, math, multi-step wording, context.

The mix is fixed (its shares are below) because the simulator's 60%/90% accuracies are defined over it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Final

CODE_SHARE: Final = 0.3
MATH_SHARE: Final = 0.3
STEP_CUES: Final = (0.55, 0.2, 0.15, 0.1)
"""Probability of 0, 1, 2 or 3 multi-step cue sentences."""
CONTEXT_CONTINUE: Final = 0.5
"""Each context sentence is followed by another with this probability (at most `_MAX_CONTEXT`)."""
_MAX_CONTEXT: Final = 8

_TOPICS: Final = (
    "photosynthesis", "the French Revolution", "black holes", "supply and demand", "the immune system",
    "plate tectonics", "the Roman Empire", "neural networks", "climate change", "the stock market", "jazz music",
    "the water cycle", "vaccines", "quantum computing", "the printing press", "coral reefs", "inflation",
    "the Silk Road", "solar power", "DNA replication", "the Cold War", "volcanoes", "sleep", "honey bees",
    "the internet", "chess openings", "coffee farming", "the Moon landing", "earthquakes", "democracy",
    "antibiotics", "the Renaissance", "ocean tides", "electric cars", "the Great Wall", "origami", "glaciers",
    "the human heart", "bread baking", "opera", "tax policy", "migratory birds", "rainforests", "the Olympics",
    "wind turbines", "ancient Egypt", "memory and learning", "urban planning", "mushrooms", "the Baroque era",
    "public libraries", "desert ecosystems", "cryptocurrency", "the Industrial Revolution", "marathon training",
    "wine making", "impressionist painting", "recycling", "space telescopes", "the Byzantine Empire",
)  # fmt: skip
_ASKS: Final = (
    "What is {topic}?", "Give a short definition of {topic}.", "Why does {topic} matter?",
    "Summarize {topic} in plain words.", "Write a short poem about {topic}.", "What are common myths about {topic}?",
    "Write a friendly email inviting a colleague to a talk on {topic}.", "Tell me one surprising fact about {topic}.",
    "How would you describe {topic} to a child?", "Suggest a title for an essay on {topic}.",
    "Compare {topic} with {other}.", "What is the link between {topic} and {other}?",
)  # fmt: skip
_STYLES: Final = (
    "", " Keep it brief.", " Use two sentences.", " Be precise.", " Answer for a history exam.",
    " Use an example.", " Write for a newsletter.", " Avoid jargon.", " Make it fun.", " Use a formal tone.",
    " Answer as a list of three points.", " Cite one source you trust.",
)  # fmt: skip
_PERSONAS: Final = (
    "", "", "", "I am a nurse. ", "I teach high school. ", "I am new to this. ", "My manager asked me this. ",
    "Quick question. ", "For a podcast episode: ", "I run a small bakery. ", "For my book club: ",
    "I am studying for an exam. ",
)  # fmt: skip
_CODE_TASKS: Final = (
    "reverses a linked list", "parses a CSV line with quoted fields", "counts word frequencies in a file",
    "checks whether a string is a palindrome", "merges two sorted lists", "computes a moving average",
    "validates an email address", "finds duplicate rows in a table", "retries an HTTP call with backoff",
    "flattens a nested dictionary", "groups log lines by hour", "deduplicates a stream of events",
)  # fmt: skip
_LANGUAGES: Final = ("Python", "JavaScript", "Rust", "SQL", "Bash", "Java")
_SNIPPETS: Final = (
    "def total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s",
    "function last(items) { return items[items.length]; }",
    "SELECT name, count(*) FROM orders GROUP BY name;",
    "for i in range(len(a)):\n    if a[i] = b[i]:\n        print(i)",
    "let v = vec![1, 2, 3]; let w = v; println!(\"{:?}\", v);",
)  # fmt: skip
_CODE_FORMS: Final = (
    "Write a {language} function that {task}.",
    "In {language}, how would I write code that {task}?",
    "Fix the bug in this code:\n```\n{snippet}\n```",
    "Explain what this code does:\n```\n{snippet}\n```",
    "Review this {language} snippet and suggest improvements:\n```\n{snippet}\n```",
)
_MATH_FORMS: Final = (
    "Solve for x: {a}x + {b} = {c}.",
    "What is {a} * {b} - {c}?",
    "Compute the derivative of x^{n} + {a}x.",
    "Prove that the sum of two odd numbers is even.",
    "What is the probability of rolling two sixes with {n} dice?",
    "Find the eigenvalues of the matrix [[{a}, 1], [1, {b}]].",
    "What is {a} modulo {n}, and what is {c} / {n}?",
    "Evaluate the integral of {a}x^{n} from 0 to {b}.",
)
_STEP_SENTENCES: Final = (
    "Explain step by step.",
    "First outline your approach, then give the answer.",
    "After that, check the result.",
    "Finally, summarize it in one line.",
    "Next, list what could go wrong.",
)
_CONTEXT: Final = (
    "Some background: {topic} came up in a meeting today.",
    "My colleague and I disagree about {topic}.",
    "I read an article about {topic} last week.",
    "The audience will be curious but busy.",
    "We have about ten minutes for this part.",
    "Earlier drafts were too long and too vague.",
    "The last person who explained it used too many terms.",
    "Please keep in mind that readers skim.",
    "This is part of a larger project on {other}.",
    "Our team keeps notes in a shared document.",
)


def generate(count: int, seed: int = 0) -> Iterator[str]:
    """`count` prompts drawn from the fixed mix; the same (`count`, `seed`) always gives the same prompts."""
    rng = random.Random(seed)  # noqa: S311  # reproducible test data, not secrets
    for _ in range(count):
        yield _prompt(rng)


def _prompt(rng: random.Random) -> str:
    topic, other = rng.sample(_TOPICS, 2)
    parts: list[str] = []
    if rng.random() < CONTEXT_CONTINUE:
        parts.append(rng.choice(_CONTEXT).format(topic=topic, other=other))
        while len(parts) < _MAX_CONTEXT and rng.random() < CONTEXT_CONTINUE:
            parts.append(rng.choice(_CONTEXT).format(topic=topic, other=other))
    code = rng.random() < CODE_SHARE
    math = rng.random() < MATH_SHARE
    if code:
        form = rng.choice(_CODE_FORMS)
        parts.append(
            form.format(language=rng.choice(_LANGUAGES), task=rng.choice(_CODE_TASKS), snippet=rng.choice(_SNIPPETS))
        )
    if math:
        numbers = {"a": rng.randint(2, 99), "b": rng.randint(2, 99), "c": rng.randint(2, 999), "n": rng.randint(2, 9)}
        parts.append(rng.choice(_MATH_FORMS).format(**numbers))
    if not code and not math:
        ask = rng.choice(_ASKS).format(topic=topic, other=other)
        parts.append(rng.choice(_PERSONAS) + ask + rng.choice(_STYLES))
    cues = rng.choices(range(len(STEP_CUES)), weights=STEP_CUES)[0]
    parts.extend(rng.sample(_STEP_SENTENCES, cues))
    return " ".join(parts)
