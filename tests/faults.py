"""Faults the real parts cannot be asked to make on cue, made by a proxy on the wire."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

# A simple-protocol Query message carrying asyncpg's commit: 'Q', a length of 12 (itself included), the text.
_COMMIT = b"Q\x00\x00\x00\x0cCOMMIT;\x00"


class CommitAnswerLost:
    """A TCP proxy in front of PostgreSQL. Once armed, the next COMMIT reaches the server, the server commits
    and answers, and the proxy cuts the connection instead of passing the answer on: the transaction happened,
    and the client cannot know it did (as when PostgreSQL restarts at that instant)."""

    def __init__(self, database_url: str):
        parts = urlsplit(database_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._url = parts
        self._server: asyncio.Server | None = None
        self._armed = False
        self.cut = asyncio.Event()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        netloc = self._url.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{port}"
        return urlunsplit(self._url._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    def arm(self) -> None:
        self.cut.clear()
        self._armed = True

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self._upstream)
        committing = asyncio.Event()

        async def to_server() -> None:
            while chunk := await client_reader.read(65536):
                if self._armed and _COMMIT in chunk:
                    self._armed = False
                    committing.set()
                server_writer.write(chunk)
                await server_writer.drain()

        async def to_client() -> None:
            while chunk := await server_reader.read(65536):
                if committing.is_set():
                    self.cut.set()  # the answer to COMMIT: dropped, and the connection with it
                    return
                client_writer.write(chunk)
                await client_writer.drain()

        pumps = [asyncio.create_task(to_server()), asyncio.create_task(to_client())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_writer, server_writer):
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CommitAnswerLost]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self._server.close()
