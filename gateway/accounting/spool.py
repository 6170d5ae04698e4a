"""`Spool`: every usage record on local disk from the moment it is made until Postgres has it.

The ledger writes in batches every 0.2 s; a process killed in between (SIGKILL, OOM) would lose what it
held in memory. Each record is appended to this process's current segment with one `write(2)` before the
response's last byte is sent, so it survives the process (the page cache outlives it; a power loss is
not covered: no fsync per record). Segments are rotated at each flush and deleted once everything in
them is in Postgres. A starting process replays the segments no live process holds (each holds an
exclusive `flock` on its own) with `ON CONFLICT DO NOTHING`, so a record already written is not
counted twice. Written by hand: no library does an append-only, replay-on-start spool for asyncpg.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from gateway.accounting.ledger import UsageRecord

_log = logging.getLogger(__name__)
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(UsageRecord)


class _Segment:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self) -> None:
        os.close(self.fd)


class Spool:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prefix = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._count = 0
        self._current = self._open()
        self._sealed: list[_Segment] = []

    def _open(self) -> _Segment:
        self._count += 1
        return _Segment(self.directory / f"usage-{self._prefix}-{self._count:08d}.jsonl")

    def append(self, record: UsageRecord) -> None:
        os.write(self._current.fd, _ENCODER.encode(record) + b"\n")

    def rotate(self) -> None:
        """Seal the current segment (a flush is about to take everything recorded so far)."""
        self._sealed.append(self._current)
        self._current = self._open()

    def written(self) -> None:
        """Everything in the sealed segments is in Postgres: drop them."""
        for segment in self._sealed:
            segment.close()
            segment.path.unlink(missing_ok=True)
        self._sealed.clear()

    def close(self, *, keep: bool) -> None:
        """At shutdown: delete this process's segments if all was written, else leave them for a replay."""
        if not keep:
            self.written()
            self._current.close()
            self._current.path.unlink(missing_ok=True)
            return
        for segment in [*self._sealed, self._current]:
            segment.close()

    def orphans(self) -> Iterator[tuple[Path, list[UsageRecord]]]:
        """Segments of processes that are gone, with their records (a torn last line is skipped)."""
        own = {segment.path for segment in [*self._sealed, self._current]}
        for path in sorted(self.directory.glob("usage-*.jsonl")):
            if path in own:
                continue
            with _locked(path) as locked:
                if not locked:
                    continue  # a live process holds it
                records = []
                for line in path.read_bytes().splitlines():
                    try:
                        records.append(_DECODER.decode(line))
                    except msgspec.DecodeError:
                        _log.warning("skipping a torn line in %s", path.name)
                yield path, records


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
