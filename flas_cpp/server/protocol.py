"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on a request's head.

uvicorn closes a kept-alive connection that stays idle, but a client that sends its request line
and headers a byte at a time holds its connection (and a place in uvicorn's accounting) for as
long as it likes. Here a request's head must be complete within `read_timeout` seconds of the
connection opening or of its first byte; the body has its own deadline in the application."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


def with_head_timeout(read_timeout: float) -> type[H11Protocol]:
    """An H11Protocol class for uvicorn.Config(http=...) that closes a connection whose request
    head has not arrived within read_timeout seconds."""

    class HeadTimeoutProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the next request on a kept-alive connection begins
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # its head is in: a new request cycle started
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(read_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeadTimeoutProtocol
