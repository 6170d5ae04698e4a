"""Labelled prompts: the JSONL the offline router tools read, and the simulator's generator of them.

A simulated record is labelled the way a grader would label real traffic: each tier's deployment answers the
prompt through `Simulator.complete` (the wire bytes the gateway sees), and the answer is graded against the
prompt's reference answer; the small tier's confidence is computed from the logprobs of that same answer.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from gateway.providers.base import UpstreamCall
from gateway.providers.simulator import Simulator, reference_answer
from gateway.routing.confidence import confidence
from gateway.routing.difficulty import Tier
from gateway.routing.errors import DatasetError
from gateway.routing.prompts import generate
from gateway.schema.openai import ChatRequest, Message
from gateway.settings import SimulatorDeployment, SimulatorOptions

REFERENCE_TOKENS: Final = 16
"""Length of the reference answer stored with each simulated prompt (the simulator's default answer length)."""


class LabelledPrompt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One line of a labelled JSONL file. Only `prompt` and `small_correct` are needed to train the scorer."""

    prompt: str
    small_correct: bool
    """Whether the small model's answer was right (graded, or from feedback)."""
    large_correct: bool | None = None
    """Whether the large model's answer was right; calibration needs it."""
    small_confidence: float | None = None
    """`confidence.confidence` of the small model's answer; calibrating a cascade needs it."""
    reference: str | None = None
    """The right answer (simulated data): a simulator answer is right iff `grade(answer, reference)`."""
    id: str | None = None


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message


class _Body(msgspec.Struct):
    choices: list[_Choice]


_body_decoder: Final = msgspec.json.Decoder(_Body)
_line_decoder: Final = msgspec.json.Decoder(LabelledPrompt)
_encoder: Final = msgspec.json.Encoder()


def grade(answer: str, reference: str) -> bool:
    """Right iff the answer's words agree with the reference's over their common length (answers may be cut)."""
    said, meant = answer.split(), reference.split()
    common = min(len(said), len(meant))
    return common > 0 and said[:common] == meant[:common]


def chat_request(prompt: str, *, logprobs: bool = True) -> ChatRequest:
    """The request a client sends for `prompt`: one user message (what the labels are defined for)."""
    return ChatRequest(model="simulator", messages=[Message(role="user", content=prompt)], logprobs=logprobs)


def simulator(tier: Tier, completion_tokens: int = REFERENCE_TOKENS) -> Simulator:
    options = SimulatorOptions(tier=tier, completion_tokens=completion_tokens)
    return Simulator(SimulatorDeployment(name=f"sim-{tier}", model=tier, simulator=options))


async def label(prompts: Iterable[str], completion_tokens: int = REFERENCE_TOKENS) -> list[LabelledPrompt]:
    """Ask both simulated tiers every prompt, grade their answers and take the small one's confidence."""
    small, large = simulator("small", completion_tokens), simulator("large", completion_tokens)
    records: list[LabelledPrompt] = []
    for index, prompt in enumerate(prompts):
        request = chat_request(prompt)
        call = UpstreamCall(request=request, payload={}, request_id=f"dataset-{index}")
        reference = reference_answer(request, REFERENCE_TOKENS)
        small_body = await small.complete(call)
        large_body = await large.complete(call)
        records.append(
            LabelledPrompt(
                id=f"sim-{index}",
                prompt=prompt,
                reference=reference,
                small_correct=grade(_answer(small_body), reference),
                large_correct=grade(_answer(large_body), reference),
                small_confidence=confidence(small_body),
            )
        )
    return records


def simulated(count: int, seed: int = 0) -> list[LabelledPrompt]:
    """`count` generated prompts (`prompts.generate`), labelled by the simulator; deterministic in (count, seed)."""
    return asyncio.run(label(generate(count, seed)))


def held_out(record: LabelledPrompt, share: float, salt: str = "split") -> bool:
    """A deterministic split by prompt hash, so repeated prompts never straddle train and test."""
    return held_out_key(record.prompt, share, salt)


def held_out_key(key: str, share: float, salt: str = "split") -> bool:
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=salt.encode()[:16]).digest()
    return int.from_bytes(digest, "little") / 2**64 < share


def split(
    records: Sequence[LabelledPrompt], share: float, salt: str = "split"
) -> tuple[list[LabelledPrompt], list[LabelledPrompt]]:
    """(kept, held out): about `share` of the prompts held out; another `salt` gives an independent split."""
    kept = [record for record in records if not held_out(record, share, salt)]
    out = [record for record in records if held_out(record, share, salt)]
    return kept, out


def write_jsonl(path: Path, records: Iterable[LabelledPrompt]) -> int:
    count = 0
    with path.open("wb") as handle:
        for record in records:
            handle.write(_encoder.encode(record) + b"\n")
            count += 1
    return count


def read_jsonl(path: Path) -> list[LabelledPrompt]:
    """Every non-empty line as a `LabelledPrompt`; a bad line fails naming the file, the line and the reason."""
    records: list[LabelledPrompt] = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(_line_decoder.decode(line))
            except msgspec.DecodeError as exc:
                raise DatasetError(f"{path}:{number}: {exc}") from None
    return records


def _answer(body: bytes) -> str:
    return _body_decoder.decode(body).choices[0].message.content or ""
