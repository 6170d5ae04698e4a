"""`POST /v1/embeddings` wire shapes, and vectors in either encoding the API offers.

Vectors are float32 everywhere the gateway touches them: the `base64` encoding (the openai SDK's default) is
little-endian float32, so the `float` form is rounded to float32 too, and both decode to identical vectors.
"""

from __future__ import annotations

import array
import base64
import sys
from typing import Annotated, Any, Literal

import msgspec

from gateway.schema.openai import ShortText

EmbeddingInput = str | list[Any]
"""A string, a list of strings, a list of token ids, or a list of token-id lists (checked by `inputs`)."""


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    """The fields of `CreateEmbeddingRequest` the gateway acts on; the body is forwarded with the rest."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=65_536)] | None = None
    user: ShortText | None = None


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingItem(msgspec.Struct, kw_only=True):
    index: int
    embedding: list[float] | str
    object: Literal["embedding"] = "embedding"


class EmbeddingList(msgspec.Struct, kw_only=True):
    """`CreateEmbeddingResponse`."""

    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage
    object: Literal["list"] = "list"


list_decoder = msgspec.json.Decoder(EmbeddingList)
request_decoder = msgspec.json.Decoder(EmbeddingRequest)
encoder = msgspec.json.Encoder()


def to_float32(values: list[float] | str) -> array.array[float]:
    """One vector as float32, from JSON floats or a base64 string of little-endian float32."""
    vector = array.array("f")
    if isinstance(values, str):
        vector.frombytes(base64.b64decode(values))
        if sys.byteorder == "big":
            vector.byteswap()
    else:
        vector.extend(values)
    return vector


def encode_vector(vector: array.array[float], encoding: Literal["float", "base64"]) -> list[float] | str:
    if encoding == "float":
        return vector.tolist()
    if sys.byteorder == "big":
        vector = array.array("f", vector)
        vector.byteswap()
    return base64.b64encode(vector.tobytes()).decode()


def reencode(body: EmbeddingList, encoding: Literal["float", "base64"]) -> bytes:
    """The same list with every vector in `encoding` (float32 values either way)."""
    data = [
        EmbeddingItem(index=item.index, embedding=encode_vector(to_float32(item.embedding), encoding))
        for item in body.data
    ]
    return encoder.encode(EmbeddingList(data=data, model=body.model, usage=body.usage))
