"""The request pipeline: DESIGN §1's stages, called in order by `chat.run_chat`."""

from __future__ import annotations
