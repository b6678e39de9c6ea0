"""Prebuilt WebSocket frames, written straight to uvicorn's transport.

A server's frames are unmasked, so the bytes of one text frame serve every client that
has not negotiated an extension: the hub builds each event's frame once
(:func:`text_frame`) and :class:`FrameWriter` writes it to a client's transport, skipping
Starlette's and uvicorn's per-client send path (a UTF-8 encode and a frame serialisation
per client). Only where that path would do nothing else: this module is the one place
that reads uvicorn's and ``websockets``' connection state, and any client it cannot
vouch for keeps the ASGI send.
"""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

#: The one wrapper between a Starlette ``WebSocket`` and the server's ``send``: Starlette's
#: exception handling (``starlette._exception_handler``), which passes every message on
#: and only notes ``http.response.start``.
_STARLETTE_SENDER = (
    "starlette._exception_handler",
    "wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender",
)
#: How many known wrappers may stand between the two (the app's exception middleware adds
#: one; each mounted Starlette sub-application would add another).
_MAX_WRAPPERS = 4


def text_frame(text: str) -> bytes:
    """The bytes of an unmasked, unfragmented, uncompressed text frame carrying ``text``."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


class FrameWriter:
    """Writes prebuilt frames to one client's uvicorn ``websockets-sansio`` transport."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    @classmethod
    def of(cls, websocket: WebSocket) -> FrameWriter | None:
        """The writer of ``websocket``, or ``None`` unless its ASGI ``send`` is, through
        known wrappers only, uvicorn's ``WebSocketsSansIOProtocol.send`` itself."""
        send: Any = websocket._send
        for _ in range(_MAX_WRAPPERS + 1):
            if getattr(send, "__func__", None) is WebSocketsSansIOProtocol.send:
                protocol = send.__self__
                return cls(protocol) if isinstance(protocol, WebSocketsSansIOProtocol) else None
            send = _unwrap_starlette_sender(send)
            if send is None:
                return None
        return None

    def write(self, frame: bytes) -> bool:
        """Write ``frame`` now if uvicorn's own send would do exactly that, at once.

        ``False`` (nothing written) when the handshake is not complete, the client is gone,
        a close or an HTTP response was sent, the transport is paused (uvicorn's send would
        wait: the caller's slow path keeps its semantics), the ``websockets`` connection is
        not open or is mid-message, an extension was negotiated (permessage-deflate
        compresses per connection), or bytes are pending in it.
        """
        protocol = self._protocol
        conn = protocol.conn
        if (
            not protocol.handshake_complete
            or protocol.disconnected
            or protocol.close_sent
            or protocol.initial_response is not None
            or not protocol.writable.is_set()
            or conn.state is not State.OPEN
            or conn.extensions
            or conn.expect_continuation_frame
            or conn.writes
            or protocol.transport.is_closing()
        ):
            return False
        protocol.transport.write(frame)
        return True


def _unwrap_starlette_sender(send: Any) -> Any:
    """The ``send`` Starlette's exception-handling ``sender`` wraps; ``None`` for anything
    else."""
    code = getattr(send, "__code__", None)
    closure = getattr(send, "__closure__", None)
    if (
        code is None
        or closure is None
        or (getattr(send, "__module__", None), getattr(send, "__qualname__", None))
        != _STARLETTE_SENDER
        or code.co_freevars != ("response_started", "send")
    ):
        return None
    return closure[1].cell_contents
