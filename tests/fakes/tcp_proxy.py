"""A TCP fault proxy with toxiproxy's toxics (RELIABILITY §7), put between Sluice and Redis, Postgres or an upstream.

`async with TcpFaultProxy(host, port) as proxy:` listens on 127.0.0.1:`proxy.port` and pipes each connection to
`host:port`; `proxy.set(toxic)` and `proxy.clear()` change the fault at once, live connections included, and need
no `await`, so a test can flip them between requests. toxiproxy itself ships only as binaries and containers.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import TypeAlias

import msgspec

_CHUNK = 65_536
_LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() sends RST instead of FIN


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Every chunk waits `seconds` before it is passed on, in both directions: a round trip gains twice that."""

    seconds: float


class Down(msgspec.Struct, frozen=True):
    """The service is gone: new connections are refused (nothing listens) and live ones are closed."""


class Timeout(msgspec.Struct, frozen=True):
    """A black hole: connections are accepted and read, but nothing passes until the toxic changes
    (then the held data goes on, as after a healed partition)."""


class ResetPeer(msgspec.Struct, frozen=True):
    """Live connections, and each new one as soon as it is accepted, are reset (RST, `SO_LINGER` 0)."""


class Slicer(msgspec.Struct, frozen=True, kw_only=True):
    """Data passes in slices of `size` bytes, `delay_s` apart: readers must reassemble partial frames."""

    size: int
    delay_s: float = 0.0


class LimitData(msgspec.Struct, frozen=True, kw_only=True):
    """A connection is closed once `bytes` bytes have passed in either direction since the toxic was set;
    exactly that many are delivered, the rest of the chunk is dropped."""

    bytes: int


Toxic: TypeAlias = Latency | Down | Timeout | ResetPeer | Slicer | LimitData


class _CutError(Exception):
    """`LimitData` reached: the connection ends after what was let through."""


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        """The accepted client socket (the client transport uses this very object)."""
        self.passed = [0, 0]
        """Bytes passed to the upstream and to the client since the connection opened or the toxic last changed."""
        self.abort = False
        """End abruptly (drop buffered data) rather than flush and send FIN."""
        self.writers: list[asyncio.StreamWriter] = []

    def reset(self) -> None:
        """Make the coming close send RST."""
        if self.sock.fileno() != -1:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self.abort = True

    def close(self) -> None:
        for writer in self.writers:
            if self.abort:
                writer.transport.abort()
            else:
                writer.close()


class TcpFaultProxy:
    """A TCP proxy on 127.0.0.1 (ephemeral port) to `upstream_host:upstream_port`, transparent until a toxic is set.

    Its tasks are named `TcpFaultProxy :<port> …`, and none outlives the `async with`.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        """The listening port, known once entered; it stays the same across `Down` and `clear()`."""
        self.connections = 0
        """Connections accepted so far (refused ones are not)."""
        self._toxic: Toxic | None = None
        self._changed = asyncio.Event()
        """Set (and replaced) on every toxic change; what `Timeout`-held pumps wait on."""
        self._live: dict[_Connection, asyncio.Task[None]] = {}
        self._reserved: socket.socket | None = None
        self._listener: socket.socket | None = None

    @property
    def toxic(self) -> Toxic | None:
        return self._toxic

    @property
    def _task_name(self) -> str:
        return f"TcpFaultProxy :{self.port}"

    async def __aenter__(self) -> TcpFaultProxy:
        # A bound, never-listening socket holds the port while `Down` has closed the listener: nothing else can
        # take it, connections to it are refused, and `clear()` listens on it again (both use SO_REUSEPORT).
        self._reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._reserved.bind(("127.0.0.1", 0))
        self.port = self._reserved.getsockname()[1]
        self._listen()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._unlisten()
        tasks = list(self._live.values())
        for conn, task in self._live.items():
            conn.abort = True
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each one's `_finish` has run before this returns
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    def set(self, toxic: Toxic) -> None:
        """Apply `toxic` from now on: live connections meet it at their next chunk; `Down` and `ResetPeer` end them."""
        self._switch(toxic)

    def clear(self) -> None:
        """Back to a transparent pipe (listening again after `Down`)."""
        self._switch(None)

    def _switch(self, toxic: Toxic | None) -> None:
        self._toxic = toxic
        self._changed.set()
        self._changed = asyncio.Event()
        for conn in self._live:
            conn.passed = [0, 0]
        if isinstance(toxic, Down):
            self._unlisten()
        elif self._listener is None and self._reserved is not None:  # entered, and not listening since `Down`
            self._listen()
        if isinstance(toxic, Down | ResetPeer):
            for conn, task in self._live.items():
                if isinstance(toxic, ResetPeer):
                    conn.reset()
                conn.abort = True
                conn.close()
                task.cancel()

    def _listen(self) -> None:
        # A plain socket and `add_reader` rather than `asyncio.start_server`: listening starts and stops synchronously,
        # so `set(Down())` refuses the very next connect and `clear()` accepts it.
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        self._listener.setblocking(False)
        asyncio.get_running_loop().add_reader(self._listener, self._accept)

    def _unlisten(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener)
            self._listener.close()
            self._listener = None

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        self.connections += 1
        sock.setblocking(False)
        if isinstance(self._toxic, ResetPeer):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            sock.close()
            return
        conn = _Connection(sock)
        task = asyncio.get_running_loop().create_task(self._serve(conn), name=f"{self._task_name} connection")
        # A done callback, not a `finally`: it also runs for a task cancelled before it ever started.
        task.add_done_callback(lambda _: self._finish(conn))
        self._live[conn] = task

    def _finish(self, conn: _Connection) -> None:
        self._live.pop(conn, None)
        conn.close()
        if not conn.writers:  # no transport ever took the socket (or its creation was undone)
            conn.sock.close()

    async def _serve(self, conn: _Connection) -> None:
        try:
            client_reader, client_writer = await asyncio.open_connection(sock=conn.sock)
            conn.writers.append(client_writer)
            upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            conn.writers.append(upstream_writer)
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump(conn, 0, client_reader, upstream_writer), name=f"{self._task_name} pump")
                pumps.create_task(self._pump(conn, 1, upstream_reader, client_writer), name=f"{self._task_name} pump")
        except* _CutError:
            pass
        except* OSError:
            conn.abort = True  # a peer reset or the upstream refused: pass the failure on abruptly

    async def _pump(
        self, conn: _Connection, direction: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy `reader` to `writer` chunk by chunk, applying the toxic current at each chunk; EOF is passed on."""
        while data := await reader.read(_CHUNK):
            while isinstance(self._toxic, Timeout):
                await self._changed.wait()
            toxic = self._toxic
            if isinstance(toxic, Latency):
                await asyncio.sleep(toxic.seconds)
            elif isinstance(toxic, Slicer):
                size = max(toxic.size, 1)
                for start in range(0, len(data), size):
                    if start:
                        await asyncio.sleep(toxic.delay_s)
                    writer.write(data[start : start + size])
                    await writer.drain()
                continue
            elif isinstance(toxic, LimitData):
                room = max(toxic.bytes - conn.passed[direction], 0)
                if len(data) >= room:
                    writer.write(data[:room])
                    conn.close()  # before any other callback runs: the peer gets exactly `room` bytes, then FIN
                    raise _CutError
                conn.passed[direction] += len(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
