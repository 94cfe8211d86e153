"""The HTTP protocol ``dfdetect serve`` runs under uvicorn: its h11 protocol, with two changes.

- **A deadline for the request head.** uvicorn waits for a request line and headers as long as the client
  likes, so a client that sends one header byte every few seconds holds a connection forever (slowloris),
  and so do connections that never send anything. Here a head that is not complete ``head_timeout`` seconds
  after the connection opens (or after the previous response) gets a JSON 408 and the connection closes. A
  kept-alive connection that has sent nothing since its last response is closed without a word, as uvicorn's
  own keep-alive timeout does: a client's pool would read a 408 there as the answer to its next request.
  The body has its own deadline in the app (``ServiceConfig.upload_timeout``).
- **JSON for requests h11 cannot parse** (a malformed head, a broken chunked body): uvicorn answers those in
  plain text, where every other error of the service is ``{"detail", "status"}``.
- **A half-closed connection still gets its answer.** A client that sends a whole request and then shuts its
  side for writing (``shutdown(SHUT_WR)``, ``nc -N``) got nothing: uvicorn lets asyncio close the transport
  at the end of the client's stream. Here the answer is written, then the connection closes; a request still
  incomplete at that end cannot finish and is closed at once, as before.

Why a subclass: uvicorn has no option for any of these, and takes a protocol class for ``http``; the rest is
uvicorn's own.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["protocol_for"]


def _raw_json(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail, "status": status}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class _TimedHeadH11(H11Protocol):
    head_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._answered = 0  # responses completed on this connection
        self._client_done = False  # the client shut its side for writing (end of its stream)
        super().connection_made(transport)
        self._sync_head_timer()

    def _sync_head_timer(self) -> None:
        """A deadline runs while the client owes us something we are not processing: the head of its next
        request, or the rest of a body we have answered already. While the app has a request, its own
        deadline (the upload timeout) rules instead."""
        waiting = self.conn.their_state is h11.IDLE or (self.conn.our_state is h11.DONE
                                                        and self.conn.their_state is not h11.DONE)
        if self.transport.is_closing() or not waiting:
            self._cancel_head_timer()
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        idle_keep_alive = self._answered > 0 and not self.conn.trailing_data[0]
        if self.conn.their_state is h11.IDLE and not idle_keep_alive:
            self.transport.write(_raw_json(408, "Request Timeout",
                                           f"the request line and headers did not arrive within "
                                           f"{self.head_timeout:g} s; send them at once"))
        self.transport.close()  # or the rest of a body we answered already: nothing more to say

    def handle_events(self) -> None:
        super().handle_events()
        self._sync_head_timer()

    def on_response_complete(self) -> None:
        self._answered += 1
        super().on_response_complete()
        if self._client_done:  # the client has closed its side: no next request can come
            self.transport.close()
        self._sync_head_timer()  # the next request on a kept-alive connection gets its own deadline

    def eof_received(self) -> bool | None:
        self._client_done = True
        cycle = getattr(self, "cycle", None)
        awaiting_answer = (cycle is not None and not cycle.response_complete
                           and self.conn.their_state in (h11.DONE, h11.MUST_CLOSE))
        return True if awaiting_answer else None  # True: asyncio leaves the transport open for the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._cancel_head_timer()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing sent yet: a response still fits
            self.transport.write(_raw_json(400, "Bad Request", f"not a valid HTTP/1.1 request ({msg.rstrip('.')})"))
        self.transport.close()


def protocol_for(head_timeout: float) -> Any:
    """The protocol class to give uvicorn (``uvicorn.run(app, http=protocol_for(cfg.head_timeout))``)."""
    return type("DfdetectH11", (_TimedHeadH11,), {"head_timeout": float(head_timeout)})
