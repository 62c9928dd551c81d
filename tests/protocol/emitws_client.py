"""A small emitws.v1 client, written from PROTOCOL.md alone.

It speaks the protocol over the `websockets` package: envelopes (§2),
requests and replies (§3), the server's calls to the client (§3), system
events (§4) and the connection states (§1). It does not reconnect (the
RECONNECTING state exists for clients that do).

For the conformance suite it also keeps every frame the server sent, in
order, in `inbox`, so a check can look at the exact text.
"""

import asyncio
import itertools
import json
import time

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

PROTOCOL = "emitws.v1"
MAX_ID = 2**53 - 1

# §1 "The client's states".
IDLE = "IDLE"
CONNECTING = "CONNECTING"
AUTHENTICATING = "AUTHENTICATING"
READY = "READY"
RECONNECTING = "RECONNECTING"
OFFLINE = "OFFLINE"

EVENT, REQUEST, REPLY, ERROR = 0, 1, 2, 3

# §9.1: the application-level ping, a request either side sends.
PING = "@ping"


class Malformed(Exception):
    """An envelope this client cannot read (§2)."""


class RemoteError(Exception):
    """An error reply `[3, id, {code, message}]`, or a local failure such as
    `timeout` or `disconnected` (§3)."""

    def __init__(self, code, message=""):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Closed:
    """What the inbox holds once the connection is closed."""

    def __init__(self, code, reason):
        self.code = code
        self.reason = reason

    def __repr__(self):
        return f"Closed({self.code}, {self.reason!r})"


class Envelope:
    """One parsed envelope: its type and the elements §2 lists for it."""

    def __init__(self, kind, text, id=None, event=None, data=None, body=None):
        self.kind = kind
        self.text = text
        self.id = id
        self.event = event
        self.data = data
        self.body = body

    def __repr__(self):
        return f"Envelope({self.text[:200]})"


def is_id(value):
    """§2 Ids: an integer from 1 to 2^53 - 1. (The JSON reader turns `1.0`
    and `1e3` into floats, so "written plainly" is checked by the type.)"""
    return type(value) is int and 1 <= value <= MAX_ID


def parse(text):
    """Parses one envelope (§2); None for an unknown type (to be ignored);
    raises Malformed for anything unreadable."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise Malformed(f"not JSON: {e}") from None
    if not isinstance(value, list) or not value:
        raise Malformed("not a non-empty array")
    kind = value[0]
    if type(kind) is not int or kind < 0:
        raise Malformed("bad type")
    if kind > ERROR:
        return None
    if kind == EVENT:
        if len(value) < 2 or not isinstance(value[1], str):
            raise Malformed("event without a name")
        return Envelope(EVENT, text, event=value[1], data=value[2] if len(value) > 2 else None)
    if len(value) < 2 or not is_id(value[1]):
        raise Malformed("bad id")
    if kind == REQUEST:
        if len(value) < 3 or not isinstance(value[2], str):
            raise Malformed("request without a name")
        return Envelope(REQUEST, text, id=value[1], event=value[2], data=value[3] if len(value) > 3 else None)
    if kind == REPLY:
        return Envelope(REPLY, text, id=value[1], data=value[2] if len(value) > 2 else None)
    body = value[2] if len(value) > 2 else None
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message", "") if isinstance(body, dict) else None
    if not isinstance(code, str) or not isinstance(message, str):
        # §2: still an answer; the request fails all the same.
        code, message = "malformed", f"an error reply without a valid body: {text[:200]}"
    return Envelope(ERROR, text, id=value[1], body={"code": code, "message": message})


def encode(*elements):
    """An envelope as compact JSON."""
    return json.dumps(list(elements), separators=(",", ":"), ensure_ascii=False)


class Client:
    """An emitws.v1 connection.

    `procedures` maps a name the server may call to a function of the call's
    data (plain or async); what it returns is the answer, what it raises is
    `execution_failed`. With `answer_calls=False` the server's calls are left
    to the caller (they are in `inbox`).

    The server's `@ping` calls are answered by the client itself (§9.1),
    whatever `procedures` and `answer_calls` say, in every state; their ids
    are kept in `pings_answered`. `answer_pings=False` makes an older client,
    one that treats `@ping` as any other call.
    """

    def __init__(
        self, url, procedures=None, subprotocols=(PROTOCOL,), answer_calls=True, answer_pings=True, compression=None
    ):
        self.url = url
        self.procedures = dict(procedures or {})
        self.subprotocols = list(subprotocols) if subprotocols is not None else None
        self.answer_calls = answer_calls
        self.answer_pings = answer_pings
        self.compression = compression
        self.state = IDLE
        self.ws = None
        self.subprotocol = None
        self.ready = None  # the @ready data
        self.inbox = asyncio.Queue()
        self.events = asyncio.Queue()  # (name, data, text) of every event
        self.malformed = []  # texts the client could not read (§2: ignored)
        self.pings_answered = []  # ids of the server's @ping calls answered (§9.1)
        self.close = None  # Closed once the connection is gone
        self._pending = {}
        self._ids = itertools.count(1)
        self._ready = None
        self._reader = None

    async def open(self):
        """Opens the WebSocket; the client is then AUTHENTICATING until
        `@ready` (see `wait_ready`)."""
        self.state = CONNECTING
        self._ready = asyncio.get_running_loop().create_future()
        try:
            self.ws = await ws_connect(
                self.url,
                subprotocols=self.subprotocols,
                compression=self.compression,
                max_size=None,
                ping_interval=None,
                open_timeout=5,
                close_timeout=2,
            )
        except BaseException:
            self.state = OFFLINE
            raise
        self.subprotocol = self.ws.subprotocol
        self.state = AUTHENTICATING
        self._reader = asyncio.create_task(self._read())
        return self

    async def wait_ready(self, timeout=5):
        """Waits for `@ready` (§4) and returns its data; the frames up to it
        leave the inbox."""
        self.ready = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        while not self.inbox.empty():
            item = self.inbox.get_nowait()
            if isinstance(item, str) and item.startswith('[0,"@ready"'):
                break
        return self.ready

    async def connect(self, timeout=5, wait_ready=True):
        await self.open()
        if wait_ready:
            await self.wait_ready(timeout)
        return self

    def next_id(self):
        return next(self._ids)

    async def send_text(self, text):
        await self.ws.send(text)

    async def send_binary(self, data):
        await self.ws.send(data)

    async def emit(self, event, data=None):
        await self.send_text(encode(EVENT, event, data))

    async def request(self, event, data=None, timeout=5):
        """Sends `[1, id, event, data]` and returns the reply's data; an error
        reply raises RemoteError."""
        id = self.next_id()
        future = asyncio.get_running_loop().create_future()
        self._pending[id] = future
        await self.send_text(encode(REQUEST, id, event, data))
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RemoteError("timeout", f"no reply to {event} in {timeout} s") from None
        finally:
            self._pending.pop(id, None)

    async def ping(self, data=None, timeout=5):
        """The application-level ping (§9.1): sends `[1, id, "@ping", data]`;
        returns the round trip in seconds and the data the server answered."""
        started = time.monotonic()
        answered = await self.request(PING, data, timeout)
        return time.monotonic() - started, answered

    async def next(self, timeout=5):
        """The next frame the server sent: its text, bytes, or Closed; raises
        asyncio.TimeoutError."""
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def next_event(self, name=None, timeout=5):
        """The next event (named `name`, when given): (name, data, text)."""
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if name is None or event[0] == name:
                return event

    async def closed(self, timeout=5):
        """Waits for the connection to close; returns Closed."""
        if self._reader is not None:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close

    async def aclose(self):
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 3)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._reader.cancel()
        if self.state != OFFLINE:
            self.state = IDLE

    async def _read(self):
        try:
            async for frame in self.ws:
                self.inbox.put_nowait(frame)
                if isinstance(frame, str):
                    await self._dispatch(frame)
                else:
                    self.malformed.append(frame)  # binary: not emitws.v1 (§10)
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            self.close = Closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
            self.inbox.put_nowait(self.close)
            # §3: waiting requests fail with `disconnected`; replies never
            # survive the connection.
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(RemoteError("disconnected", "the connection closed"))
            if not self._ready.done():
                self._ready.set_exception(RemoteError("disconnected", f"closed before @ready: {self.close}"))
                self._ready.exception()  # retrieved: nobody may be waiting
            # A 4xxx close is the server refusing us: give up (§1 OFFLINE).
            code = self.close.code or 0
            self.state = OFFLINE if 4000 <= code <= 4999 else IDLE

    async def _dispatch(self, text):
        try:
            envelope = parse(text)
        except Malformed:
            # §2: a malformed envelope from the server is ignored, never answered.
            self.malformed.append(text)
            return
        if envelope is None:
            return  # an unknown type: ignored (§2)
        if envelope.kind == EVENT:
            if envelope.event == "@ready" and not self._ready.done():
                self.state = READY
                self._ready.set_result(envelope.data)
            self.events.put_nowait((envelope.event, envelope.data, text))
        elif envelope.kind == REQUEST:
            if envelope.event == PING and self.answer_pings:
                # §9.1: answered here, at once, with the call's own data; it
                # reaches no procedure and no listener.
                self.pings_answered.append(envelope.id)
                await self._send_answer(encode(REPLY, envelope.id, envelope.data))
            elif self.answer_calls:
                asyncio.create_task(self._answer(envelope))
        else:
            future = self._pending.pop(envelope.id, None)
            if future is None or future.done():
                return  # a reply to an id we are not waiting for: ignored (§2)
            if envelope.kind == REPLY:
                future.set_result(envelope.data)
            else:
                future.set_exception(RemoteError(envelope.body["code"], envelope.body["message"]))

    async def _answer(self, call):
        procedure = self.procedures.get(call.event)
        if procedure is None:
            answer = encode(ERROR, call.id, {"code": "not_registered", "message": f"no procedure {call.event}"})
        else:
            try:
                result = procedure(call.data)
                if asyncio.iscoroutine(result):
                    result = await result
                answer = encode(REPLY, call.id, result)
            except Exception as e:  # the procedure failed: execution_failed (§3)
                answer = encode(ERROR, call.id, {"code": "execution_failed", "message": str(e)})
        await self._send_answer(answer)

    async def _send_answer(self, answer):
        """Sends the answer to one of the server's calls, unless the
        connection is gone meanwhile (§3: the server then fails the call)."""
        try:
            await self.send_text(answer)
        except ConnectionClosed:
            pass
