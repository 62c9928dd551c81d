"""emitws.v1 conformance checks, written from PROTOCOL.md alone.

Each check names the PROTOCOL.md section it verifies. The servers are
examples/protocol_server.rs under several settings (tests/protocol/run.sh
starts them); a check needs the server behaviours that example documents
(`/echo`, `/hold`, `/call`, …), never anything of the server's code.

    python suite.py --server main=127.0.0.1:4000 --server close=… [-k WORD]
"""

import argparse
import asyncio
import inspect
import json
import re
import sys
import time
import traceback
import uuid

import rawws
from emitws_client import MAX_ID, PROTOCOL, Client, Closed, RemoteError, encode, parse

SERVERS = {}
CHECKS = []
CHECK_TIMEOUT = 10  # seconds for one check, whatever it does
SUITE_TIMEOUT = 100  # seconds for all of them
QUIET = 3  # seconds a check waits for something that must come


class Fail(Exception):
    pass


def require(condition, message):
    if not condition:
        raise Fail(message)


def check(section, name, server="main"):
    """Registers a check of PROTOCOL.md `section` against `server`."""

    def register(fn):
        CHECKS.append((section, name, server, fn))
        return fn

    return register


def url(server, path="/"):
    return f"ws://{SERVERS[server]}{path}"


# Set when the main server sends no @ready (§4): the checks that are not about
# @ready then go on without waiting for it, so that one missing feature does
# not hide every other result (the @ready checks still fail).
NO_READY = False


async def connected(server="main", path="/", **options):
    """A client past @ready."""
    return await Client(url(server, path), **options).connect(wait_ready=not NO_READY)


async def raw_client(server="main", path="/", **options):
    """A client past @ready that leaves the server's calls to the check."""
    return await connected(server, path, answer_calls=False, **options)


async def probe_ready():
    global NO_READY
    client = await Client(url("main")).open()
    try:
        await client.wait_ready(QUIET)
    except asyncio.TimeoutError:
        NO_READY = True
    finally:
        await client.aclose()


async def receive(client, wanted, timeout=QUIET):
    """The next frame, or a failure saying what did not come."""
    try:
        return await client.next(timeout)
    except asyncio.TimeoutError:
        raise Fail(f"nothing within {timeout} s; wanted {wanted}") from None


async def ready(client, timeout=QUIET):
    """Waits for @ready; its data."""
    try:
        return await client.wait_ready(timeout)
    except asyncio.TimeoutError:
        raise Fail(f"no @ready within {timeout} s") from None


async def exchange(client, text, want, id=None):
    """Sends `text`; the reply to request `id` (without an id: the next
    frame) must read exactly `want`."""
    await client.send_text(text)
    if id is None:
        got = await receive(client, want)
    else:
        got = (await answer(client, id))[0].text
    require(got == want, f"sent {text[:80]}, wanted {want[:80]}, got {str(got)[:200]}")


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def frames_until(client, stop, timeout=QUIET):
    """Reads frames until `stop(text)` holds; returns (that text, the ones
    before it)."""
    before = []
    while True:
        try:
            frame = await client.next(timeout)
        except asyncio.TimeoutError:
            raise Fail(f"waited {timeout} s; got only {before!r}") from None
        if isinstance(frame, Closed):
            raise Fail(f"connection closed ({frame.code} {frame.reason!r}) after {before!r}")
        if isinstance(frame, str) and stop(frame):
            return frame, before
        before.append(frame)


def is_answer_to(id):
    def stop(text):
        try:
            envelope = parse(text)
        except Exception:
            return False
        return envelope is not None and envelope.kind in (2, 3) and envelope.id == id

    return stop


async def answer(client, id):
    """The reply or error reply to request `id`, and the frames before it."""
    text, before = await frames_until(client, is_answer_to(id))
    return parse(text), before


async def answers_to(client, ids):
    """The answers to requests `ids`, in whatever order they come: {id: envelope}."""
    got = {}
    while len(got) < len(ids):
        frame = await receive(client, f"answers to {sorted(ids - got.keys())}")
        require(isinstance(frame, str), f"got {frame!r}")
        envelope = parse(frame)
        if envelope is not None and envelope.kind in (2, 3) and envelope.id in ids:
            require(envelope.id not in got, f"two answers to {envelope.id}")
            got[envelope.id] = envelope
    return got


SYNC_IDS = iter(range(7_000_000, 8_000_000))


async def sync(client):
    """Sends `/echo` and returns every frame that came before its reply: what
    the server sent in answer to the frames sent before it."""
    id = next(SYNC_IDS)
    await client.send_text(encode(1, id, "/echo", "sync"))
    reply, before = await answer(client, id)
    require(reply.kind == 2 and reply.data == "sync", f"the sync request got {reply.text}")
    return before


async def nothing_back(client):
    before = await sync(client)
    require(not before, f"expected no answer, got {before!r}")


async def error_reply(client, text, id, code):
    """Sends `text`, expects `[3,id,{"code":code,…}]` and nothing else."""
    await client.send_text(text)
    reply, before = await answer(client, id)
    require(reply.kind == 3, f"{text[:80]} -> {reply.text[:200]}, wanted error {code}")
    require(reply.body["code"] == code, f"{text[:80]} -> {reply.text[:200]}, wanted {code}")
    require(not before, f"{text[:80]}: also got {before!r}")
    assert_compact(reply.text)
    return reply


async def error_event(client, text, code, binary=False):
    """Sends `text` (or bytes), expects `[0,"@error",{"code":code,…}]` and then
    nothing else before a sync."""
    if binary:
        await client.send_binary(text)
    else:
        await client.send_text(text)
    frame = await receive(client, 'a frame')
    require(isinstance(frame, str), f"{str(text)[:80]} -> {frame!r}, wanted @error {code}")
    envelope = parse(frame)
    require(
        envelope is not None and envelope.kind == 0 and envelope.event == "@error",
        f"{str(text)[:80]} -> {frame[:200]}, wanted @error {code}",
    )
    require(isinstance(envelope.data, dict), f"@error data is no object: {frame[:200]}")
    require(envelope.data.get("code") == code, f"{str(text)[:80]} -> {frame[:200]}, wanted {code}")
    require(isinstance(envelope.data.get("message"), str), f"@error without a message: {frame[:200]}")
    assert_compact(frame)
    await nothing_back(client)


def assert_compact(text):
    """§2: the server writes no whitespace in what it builds (only strings may
    hold some)."""
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in " \t\r\n":
            raise Fail(f"whitespace at {i} in a server envelope: {text[:200]}")


async def closed_within(client, timeout):
    try:
        return await client.closed(timeout)
    except asyncio.TimeoutError:
        raise Fail(f"the connection did not close within {timeout} s") from None


async def expect_close(client, code, timeout=QUIET):
    closed = await closed_within(client, timeout)
    require(closed is not None, "the connection did not close")
    require(closed.code == code, f"closed with {closed.code} {closed.reason!r}, wanted {code}")


async def close_after(server, send, code):
    """Policy::Close: a fresh socket sends something; the server closes with `code`."""
    client = await connected(server)
    try:
        await send(client)
        await expect_close(client, code)
    finally:
        await client.aclose()


def nested(depth, leaf="1"):
    """Data `depth` levels deep: arrays, except every third level an object."""
    text = leaf
    for level in range(depth):
        text = f'{{"k":{text}}}' if level % 3 == 2 else f"[{text}]"
    return text


# ---------------------------------------------------------------- §1 connection


@check("§1", "a client offering emitws.v1 is served emitws.v1")
async def _():
    client = await connected()
    require(client.subprotocol == "emitws.v1", f"selected {client.subprotocol!r}")
    await client.aclose()


@check("§1", "a client offering emitws.v2 and emitws.v1, in either order, is served emitws.v2")
async def _():
    for offer in (("emitws.v2", "emitws.v1"), ("emitws.v1", "emitws.v2")):
        client = await connected(subprotocols=offer)
        require(client.subprotocol == "emitws.v2", f"offered {offer}, selected {client.subprotocol!r}")
        await client.aclose()


@check("§1", "a client offering no subprotocol is served v1 and the 101 names none")
async def _():
    client = await connected(subprotocols=None)
    require(client.subprotocol is None, f"the 101 named {client.subprotocol!r}, which was not offered")
    require(await client.request("/echo", [1]) == [1], "echo failed")
    await client.aclose()


@check("§1", "a client offering only emitws.v2 is served emitws.v2")
async def _():
    client = await connected(subprotocols=("emitws.v2",))
    require(client.subprotocol == "emitws.v2", f"selected {client.subprotocol!r}")
    require(await client.request("/echo", [1]) == [1], "JSON echo failed on emitws.v2")
    await client.aclose()


@check("§1", "a client offering neither emitws.v1 nor emitws.v2 is refused with HTTP 400 naming emitws.v1")
async def _():
    host, port = SERVERS["main"].rsplit(":", 1)
    sock = await rawws.connect(host, int(port), protocols="chat, emitws.v3")
    sock.close()
    require(sock.status == 400, f"status {sock.status}, wanted 400")
    require(b"emitws.v1" in sock.body, f"the body does not name emitws.v1: {sock.body[:200]!r}")


@check("§1 §4", "@ready is the first frame, with the socket id /whoami gives and user null")
async def _():
    client = await Client(url("main"), answer_calls=False).open()
    first = await receive(client, "@ready")
    require(isinstance(first, str) and first.startswith('[0,"@ready",'), f"first frame {first!r}")
    assert_compact(first)
    ready = parse(first).data
    require(isinstance(ready, dict), f"@ready data {ready!r}")
    require(ready.get("user", "missing") is None, f"user {ready.get('user', 'missing')!r}, wanted null")
    me = await client.request("/whoami")
    require(ready.get("socket") == me["socket"], f"@ready socket {ready.get('socket')!r}, server says {me['socket']!r}")
    await client.aclose()


@check("§4 §12", "@ready's socket id reads NODE-CONN in lowercase hex, node 0 outside a cluster")
async def _():
    client = await Client(url("main")).open()
    socket = (await ready(client)).get("socket")
    require(isinstance(socket, str), f"socket {socket!r}")
    require(re.fullmatch(r"(0|[1-9a-f][0-9a-f]*)-(0|[1-9a-f][0-9a-f]*)", socket), f"socket {socket!r}")
    require(socket.startswith("0-"), f"node of {socket!r} is not 0")
    other = await Client(url("main")).open()
    require((await ready(other)).get("socket") != socket, "two sockets share an id")
    await client.aclose()
    await other.aclose()


@check("§1", "the client's states: AUTHENTICATING until @ready, READY after it, OFFLINE after a 4xxx close")
async def _():
    client = Client(url("main"))
    require(client.state == "IDLE", client.state)
    await client.open()
    require(client.state in ("AUTHENTICATING", "READY"), client.state)
    await ready(client)
    require(client.state == "READY", client.state)
    await client.send_text(encode(1, 1, "/drop-me"))
    await expect_close(client, 4000)
    require(client.state == "OFFLINE", client.state)


# ---------------------------------------------------------------- §2 envelopes


@check("§2", "an event comes back with its data; the server writes no whitespace")
async def _(client):
    await exchange(client, '[0,"/echo",{"a":1}]', '[0,"/echo",{"a":1}]')


@check("§2", "omitted data means null, in events and requests")
async def _(client):
    await exchange(client, '[0,"/echo"]', '[0,"/echo",null]')
    await exchange(client, '[1,5,"/echo"]', "[2,5,null]", 5)


@check("§2", "whitespace between the envelope's elements is allowed")
async def _(client):
    await exchange(client, ' [ 1 ,\n5 ,\t"/echo" , 7 ] ', "[2,5,7]", 5)


@check("§2", "elements after the listed ones are ignored (event, request, reply)")
async def _(client):
    await exchange(client, '[0,"/echo",1,"later",{}]', '[0,"/echo",1]')
    await exchange(client, '[1,5,"/echo",2,"later"]', "[2,5,2]", 5)
    await client.send_text('[2,99,null,"later"]')
    await client.send_text('[3,99,{"code":"x","message":"y"},"later"]')
    await nothing_back(client)


@check("§2", "envelopes of unknown types are ignored, without an answer")
async def _(client):
    for text in ["[4]", '[4,"/echo",1]', '[5,1,"/echo",1]', "[99,1,2,3]", f"[{MAX_ID}]"]:
        await client.send_text(text)
    await nothing_back(client)


MALFORMED = [
    "{}",
    "5",
    '"x"',
    "null",
    "true",
    "[]",
    '["0","/echo"]',
    '[-1,"/echo"]',
    '[1.5,"/echo"]',
    '[true,"/echo"]',
    '[null,"/echo"]',
    "[0]",
    "[0,5]",
    "[0,null]",
    '[0,["/echo"]]',
    "[2]",
    '[2,"1"]',
    '[3,"1",{"code":"x"}]',
]


@check("§2 §4 §7", "valid JSON that is no envelope gets @error bad_request and the connection stays")
async def _(client):
    for text in MALFORMED:
        await error_event(client, text, "bad_request")


NOT_JSON = ["not json", '[0,"/echo",', '[0,"/echo"]x', "[0,'/echo']", '[0,"/echo",01]', '[1,01,"/echo"]']


@check("§2 §4 §7", "text that is not JSON and has no readable request id gets @error bad_request")
async def _(client):
    for text in NOT_JSON:
        await error_event(client, text, "bad_request")


@check("§4 §7", "a request whose JSON breaks after a readable id gets [3,id,bad_request]")
async def _(client):
    for text in ['[1,5,"/echo",{]', '[1,5,"/echo"', '[ 1 , 5 , "/echo" , 1 ] x']:
        await error_reply(client, text, 5, "bad_request")


@check("§2 §4", "a request with a readable id but no usable name gets [3,id,bad_request]")
async def _(client):
    for text in ["[1,5]", "[1,5,7]", "[1,5,null,1]", '[1,5,["/echo"]]']:
        await error_reply(client, text, 5, "bad_request")


@check("§2", "[2,id] without data, and replies (of any body) to ids the server is not waiting for, are ignored")
async def _(client):
    for text in ["[2,99]", "[2,99,1]", '[3,99,{"code":"x"}]', '[3,99,{"code":"x","message":"y"}]', "[3,99]", '[3,99,"x"]', '[3,99,{"code":5}]']:
        await client.send_text(text)
    await nothing_back(client)


RELAYED = [
    '{ "a" : [ 1 , 2.50 ] }',
    "1e400",
    "-0",
    "0.10",
    "123456789012345678901234567890",
    '"\\ud800"',
    '"\\u00e9\\n\\/"',
    '"é"',
    "[ ]",
]


@check("§2", "data is relayed exactly as the client wrote it, in replies and events")
async def _(client):
    for i, data in enumerate(RELAYED, 1):
        await exchange(client, f'[1,{i},"/echo",{data}]', f"[2,{i},{data}]", i)
        await exchange(client, f'[0,"/echo",{data}]', f'[0,"/echo",{data}]')


# ---------------------------------------------------------------- §2 ids


@check("§2", "ids 1 and 2^53-1 are valid and come back written plainly")
async def _(client):
    for id in (1, MAX_ID):
        await exchange(client, f'[1,{id},"/echo","x"]', f'[2,{id},"x"]', id)


BAD_IDS = ["0", "-1", str(MAX_ID + 1), str(2**64), "1.0", "1e3", "1E3", "1.5", "-0", '"1"', "null", "true", "[1]", "{}"]


@check("§2 §4", "a request with a bad id gets @error bad_request (there is no id to answer)")
async def _(client):
    for id in BAD_IDS:
        await error_event(client, f'[1,{id},"/echo",1]', "bad_request")


@check("§2 §4", "a reply or error reply with a bad id gets @error bad_request")
async def _(client):
    for text in ["[2,0,1]", f"[2,{MAX_ID + 1}]", '[2,1.0,1]', '[3,-1,{"code":"x"}]', '[3,"1",{"code":"x"}]']:
        await error_event(client, text, "bad_request")


@check("§2", "an id may be used again once its request is answered")
async def _(client):
    for data in (1, 2):
        await exchange(client, f'[1,7,"/echo",{data}]', f"[2,7,{data}]", 7)


@check("§2", "a duplicate of an id still waiting gets bad_request; the first request still gets its reply")
async def _(client):
    await client.send_text('[1,7,"/hold","first"]')
    reply = await error_reply(client, '[1,7,"/echo","second"]', 7, "bad_request")
    require("duplicate" in reply.body["message"], f"message {reply.body['message']!r}")
    await client.send_text('[1,8,"/release"]')
    got = await answers_to(client, {7, 8})  # replies to different requests come in any order
    require(got[7].text == '[2,7,"first"]', f"the held request got {got[7].text}")
    require(got[8].data == 1, f"/release answered {got[8].text}")


@check("§2", "each side has its own id space: a request may use the id of a pending server call")
async def _(client):
    await client.send_text(encode(1, 500000, "/call", {"name": "p", "data": 1, "timeout_ms": 5000}))
    call = parse(await receive(client, "a call to p"))
    require(call.kind == 1 and call.event == "p", f"wanted a call to p, got {call.text}")
    await client.send_text(encode(1, call.id, "/echo", "mine"))
    mine, _ = await answer(client, call.id)
    require(mine.text == f'[2,{call.id},"mine"]', f"got {mine.text}")
    await client.send_text(encode(2, call.id, 42))
    result, _ = await answer(client, 500000)
    require(result.data == {"ok": 42}, f"/call answered {result.text}")


# ---------------------------------------------------------------- §2 event names


@check("§2 §7", "a name of 128 bytes is accepted (no_handler), 129 bytes is bad_request")
async def _(client):
    await error_reply(client, encode(1, 5, "/" + "a" * 127), 5, "no_handler")
    await error_reply(client, encode(1, 6, "/" + "a" * 128), 6, "bad_request")
    await error_event(client, encode(0, "/" + "a" * 128), "bad_request")


@check("§2", "'/' alone is a valid name (no_handler)")
async def _(client):
    await error_reply(client, '[1,5,"/"]', 5, "no_handler")


BAD_NAMES = [
    '""',
    '"ping"',
    '"#room"',
    '"*tag"',
    '"/a b"',
    '"/a\x7f"',
    '"/é"',
    '"/a\\"b"',
    '"/a\\\\b"',
    '"\\/echo"',
    '"\\u002fecho"',
    '"/ech\\u006f"',
]


@check("§2", "bad names (no '/', not visible ASCII, '\"' or '\\\\', JSON escapes) get bad_request")
async def _(client):
    for i, name in enumerate(BAD_NAMES, 10):
        await error_reply(client, f"[1,{i},{name},1]", i, "bad_request")
    for name in ['"ping"', '"\\/echo"', '""']:
        await error_event(client, f"[0,{name},1]", "bad_request")


@check("§2 §4", "system events from a client get bad_request (request: error reply, event: @error)")
async def _(client):
    for i, name in enumerate(["@error", "@ready", "@connection", "@challenge", "@x"], 10):
        await error_reply(client, encode(1, i, name, 1), i, "bad_request")
        await error_event(client, encode(0, name, 1), "bad_request")


@check("§2", "server-to-client event names need no '/': message, user-joined")
async def _(client):
    for event in ("message", "user-joined"):
        await client.send_text(encode(1, 5, "/emit", {"event": event, "data": {"text": "hi"}}))
        text, _ = await frames_until(client, lambda t: not is_answer_to(5)(t))
        require(text == encode(0, event, {"text": "hi"}), f"got {text}")
        await answer(client, 5)
        name, data, _ = await client.next_event(event, QUIET)  # the client library takes it as it is
        require(name == event and data == {"text": "hi"}, f"the client saw {name} {data}")


@check("§2", "a broadcast to a room arrives with its name and the data as written")
async def _():
    room = unique("r")
    ann, bob = await connected(), await raw_client()
    await ann.request("/join", {"room": room})
    await bob.request("/join", {"room": room})
    data = '{ "text" : "hi" , "n" : 1e400 }'
    await ann.send_text(f'[1,1000,"/say",{{"room":"{room}","event":"message","data":{data}}}]')
    text, _ = await frames_until(bob, lambda t: t.startswith("[0,"))
    require(text == f'[0,"message",{data}]', f"bob got {text}")
    await ann.aclose()
    await bob.aclose()


# ---------------------------------------------------------------- §3 requests and replies


@check("§3 §5", "a request nobody handles gets no_handler; an event nobody handles gets nothing")
async def _(client):
    await error_reply(client, '[1,5,"/nope"]', 5, "no_handler")
    await client.send_text('[0,"/nope",1]')
    await nothing_back(client)


@check("§3", "a handler that returns without replying answers [2,id,null]")
async def _(client):
    await exchange(client, '[1,5,"/silent",1]', "[2,5,null]", 5)


@check("§3", "a deferred reply arrives later, under its id")
async def _(client):
    await client.send_text('[1,5,"/hold",{"x":1}]')
    await nothing_back(client)
    await client.send_text('[1,6,"/release"]')
    held, _ = await answer(client, 5)
    require(held.text == '[2,5,{"x":1}]', f"got {held.text}")


@check("§3 §5", "a handler that panics answers internal and the connection stays open")
async def _(client):
    await error_reply(client, '[1,5,"/panic"]', 5, "internal")
    await client.send_text('[0,"/panic"]')
    await sync(client)  # whatever the event got, the connection works


@check("§3 §5", "a deferred reply dropped unanswered answers internal")
async def _(client):
    await error_reply(client, '[1,5,"/drop-reply"]', 5, "internal")


@check("§3 §7", "64 deferred replies may wait; the 65th request gets rate_limited")
async def _(client):
    for id in range(1, 65):
        await client.send_text(encode(1, id, "/hold", id))
    await error_reply(client, encode(1, 65, "/hold", 65), 65, "rate_limited")
    await client.send_text(encode(1, 100, "/release"))
    got = await answers_to(client, set(range(1, 65)) | {100})
    for id in range(1, 65):
        require(got[id].text == f"[2,{id},{id}]", f"held request {id} got {got[id].text}")


async def call(client, request_id, name, timeout_ms=5000, data=1):
    await client.send_text(encode(1, request_id, "/call", {"name": name, "data": data, "timeout_ms": timeout_ms}))
    text, _ = await frames_until(client, lambda t: t.startswith("[1,"))
    require(re.match(r"\[1,[1-9][0-9]*,", text), f"the call's id is not written plainly: {text}")
    envelope = parse(text)
    require(envelope.event == name and envelope.data == data, f"wanted a call to {name}, got {text}")
    assert_compact(text)
    return envelope.id


@check("§3", "the server calls the client; [2,id,result] and [2,id] (null) are answers")
async def _(client):
    sid = await call(client, 1, "sum")
    await client.send_text(encode(2, sid, 42))
    reply, _ = await answer(client, 1)
    require(reply.data == {"ok": 42}, f"/call answered {reply.text}")
    sid = await call(client, 2, "nothing")
    await client.send_text(f"[2,{sid}]")
    reply, _ = await answer(client, 2)
    require(reply.data == {"ok": None}, f"/call answered {reply.text}")


@check("§3 §5", "not_registered and execution_failed reach the server's call")
async def _():
    def fails(data):
        raise ValueError("no luck")

    client = await connected(procedures={"fails": fails})
    result = await client.request("/call", {"name": "missing", "data": 1, "timeout_ms": 5000})
    require(result.get("error", {}).get("code") == "not_registered", f"/call answered {result}")
    result = await client.request("/call", {"name": "fails", "data": 1, "timeout_ms": 5000})
    require(result.get("error", {}).get("code") == "execution_failed", f"/call answered {result}")
    await client.aclose()


@check("§2 §3", "an error answer without a message is valid")
async def _(client):
    sid = await call(client, 1, "p")
    await client.send_text(encode(3, sid, {"code": "custom"}))
    reply, _ = await answer(client, 1)
    require(reply.data.get("error", {}).get("code") == "custom", f"/call answered {reply.text}")


@check("§7", "rooms and tags per socket: the 65th join fails (here the application answers forbidden)")
async def _(client):
    prefix = unique("g")
    for i in range(64):
        await client.send_text(encode(1, i + 1, "/join", {"room": f"{prefix}-{i}"}))
    for id, reply in (await answers_to(client, set(range(1, 65)))).items():
        require(reply.kind == 2, f"join {id} of 64 got {reply.text}")
    await error_reply(client, encode(1, 65, "/join", {"room": f"{prefix}-64"}), 65, "forbidden")


@check("§2 §7", "server calls waiting per socket: 64 with distinct ids reach the client, the 65th fails on the server")
async def _(client):
    await client.send_text(encode(1, 1, "/calls", {"n": 65, "timeout_ms": 500}))
    reply, before = await answer(client, 1)  # the calls stay unanswered
    require(reply.kind == 2, f"/calls answered {reply.text}")
    calls = [parse(text) for text in before if text.startswith("[1,")]
    require(len(calls) == 64, f"{len(calls)} calls reached the client, wanted 64")
    require(len({call.id for call in calls}) == 64, "the server used an id twice among its waiting calls (§2)")
    errors = sorted(reply.data["errors"])
    require(errors == ["timeout"] * 64 + ["too_many_calls"], f"/calls answered {reply.text[:300]}")


@check("§3", "an unanswered call times out on the server; a late answer is ignored")
async def _(client):
    sid = await call(client, 1, "slow", timeout_ms=300)
    reply, _ = await answer(client, 1)
    require(reply.data.get("error", {}).get("code") == "timeout", f"/call answered {reply.text}")
    await client.send_text(encode(2, sid, "late"))
    await nothing_back(client)


@check("§3 §6", "a dropped socket closes 4000 and the client fails its waiting requests with disconnected")
async def _():
    client = await connected()
    waiting = asyncio.create_task(client.request("/hold", 1, timeout=QUIET))
    await asyncio.sleep(0)
    await client.send_text(encode(1, 9000, "/drop-me"))
    await expect_close(client, 4000)
    try:
        await waiting
        raise Fail("the held request got a reply")
    except RemoteError as e:
        require(e.code == "disconnected", f"the held request failed with {e.code}")


# ---------------------------------------------------------------- §6 close codes


@check("§1 §6", "a socket refused after the upgrade is closed with the application's code (4403)")
async def _():
    client = Client(url("main", "/?close=4403"))
    await client.open()
    await expect_close(client, 4403)


@check("§6 §7", "a message over the engine's 16 MiB closes 1009")
async def _():
    client = await connected()
    await client.send_text("[0," + '"/echo","' + "a" * (16 << 20) + '"]')
    await expect_close(client, 1009)


for text in ["not json", '[0,"/echo",', '[0,"/echo"]x']:

    @check("§6 §7", f"Policy::Close: {text!r} (JSON that does not parse) closes 1007", "close")
    async def _(text=text):
        await close_after("close", lambda c: c.send_text(text), 1007)


CLOSE_1008 = [
    ("{}", "no envelope"),
    ("5", "no envelope"),
    ("[]", "no envelope"),
    ('["0","/echo"]', "a type that is a string"),
    ('[-1,"/echo"]', "a negative type"),
    ('[1,0,"/echo"]', "a bad id"),
    ('[0,"nope"]', "a bad name"),
    ('[0,"\\/echo"]', "an escaped name"),
    ('[0,"@ready"]', "a system event"),
    (encode(0, "/echo", "a" * (64 << 10)), "too_large"),
    (f'[0,"/echo",{nested(32)}]', "too deep"),
]

for text, why in CLOSE_1008:

    @check("§6 §7", f"Policy::Close: {why} ({text[:24]}) closes 1008", "close")
    async def _(text=text):
        await close_after("close", lambda c: c.send_text(text), 1008)


@check("§2 §6", "Policy::Close: a duplicate of a request id still waiting closes 1008", "close")
async def _():
    async def duplicate(client):
        await client.send_text('[1,7,"/hold",1]')
        await client.send_text('[1,7,"/echo",2]')

    await close_after("close", duplicate, 1008)


@check("§6 §10", "Policy::Close: a binary frame closes 1008", "close")
async def _():
    await close_after("close", lambda c: c.send_binary(b"\x01\x02"), 1008)


@check("§6 §7", "Policy::Close: over the rate closes 1008", "close")
async def _():
    async def flood(client):
        for i in range(20):
            await client.send_text(encode(0, "/echo", i))

    await close_after("close", flood, 1008)


@check("§6", "Policy::Close: unknown types, no_handler, replies to unknown ids do not close", "close")
async def _(client):
    await client.send_text("[9]")
    await client.send_text("[2,99]")
    await error_reply(client, '[1,5,"/nope"]', 5, "no_handler")
    await nothing_back(client)


# ---------------------------------------------------------------- §7 limits


def sized(prefix, size, suffix='"]'):
    """`prefix` + a string of 'a's + `suffix`, `size` bytes in all."""
    return prefix + "a" * (size - len(prefix) - len(suffix)) + suffix


@check("§7", "an envelope of exactly 64 KiB is accepted; one byte more is too_large (a reply)")
async def _(client):
    text = sized('[1,5,"/echo","', 64 << 10)
    await client.send_text(text)
    reply, _ = await answer(client, 5)
    require(reply.kind == 2 and len(reply.data) == len(text) - 16, f"got {reply.text[:80]}")
    await error_reply(client, sized('[1,6,"/echo","', (64 << 10) + 1), 6, "too_large")
    await error_reply(client, sized('[ 1 , 7 , "/echo","', (64 << 10) + 1), 7, "too_large")


@check("§7", "too_large without a readable id (an event, a bad id) is @error too_large")
async def _(client):
    await error_event(client, sized('[0,"/echo","', (64 << 10) + 1), "too_large")
    await error_event(client, sized('[1,0,"/echo","', (64 << 10) + 1), "too_large")


@check("§7", "depth counts the envelope: data 31 deep is accepted, 32 deep is bad_request")
async def _(client):
    for leaf in ("1", "[]", "{}"):
        data = nested(31 if leaf == "1" else 30, leaf)
        await exchange(client, f'[1,5,"/echo",{data}]', f"[2,5,{data}]", 5)
    await error_reply(client, f'[1,6,"/echo",{nested(32)}]', 6, "bad_request")
    await error_reply(client, f'[1,7,"/echo",{nested(31, "[]")}]', 7, "bad_request")
    await error_event(client, f'[0,"/echo",{nested(32)}]', "bad_request")


async def flood_then_request(client, frames):
    """Sends `frames` (text or bytes; each counts against the rate), then a
    request; returns its answer."""
    for frame in frames:
        if isinstance(frame, bytes):
            await client.send_binary(frame)
        else:
            await client.send_text(frame)
    await client.send_text('[1,900,"/echo","after"]')
    reply, _ = await answer(client, 900)
    return reply


@check("§7", "over the rate every request gets its own rate_limited reply", "rate")
async def _(client):
    for id in range(1, 9):
        await client.send_text(encode(1, id, "/echo", id))
    answers = await answers_to(client, set(range(1, 9)))
    require(all(answers[id].kind == 2 for id in range(1, 6)), "the first 5 (the burst) were not all answered")
    limited = [e for e in answers.values() if e.kind == 3]
    require(limited, "none of 8 requests over a burst of 5 was rate_limited")
    for envelope in limited:
        require(envelope.body["code"] == "rate_limited", f"got {envelope.text}")
        assert_compact(envelope.text)


@check("§7", "a flood of events gets one @error rate_limited, not one per event", "rate")
async def _(client):
    for i in range(20):
        await client.send_text(encode(0, "/echo", i))
    await client.send_text('[1,900,"/echo","after"]')
    _, before = await answer(client, 900)
    echoes = sum(1 for t in before if t.startswith('[0,"/echo"'))
    errors = [t for t in before if t.startswith('[0,"@error"')]
    require(echoes >= 5, f"only {echoes} of the burst's 5 events were handled")
    require(errors, "no @error rate_limited")
    require(all('"rate_limited"' in t for t in errors), f"errors {errors}")
    require(len(errors) <= 1 + (echoes - 5), f"{len(errors)} @error for one flood ({echoes} events accepted)")


COUNTED = [
    ("§7", "envelopes of unknown types", ["[9]"] * 10),
    ("§7", "replies to ids the server is not waiting for", ["[2,777]"] * 10),
    ("§7", "malformed envelopes", ["{}"] * 10),
    ("§7 §10", "binary frames", [b"\x00"] * 10),
]

for section, what, frames in COUNTED:

    @check(section, f"{what} count against the rate", "rate")
    async def _(frames=frames):
        client = await raw_client("rate")
        reply = await flood_then_request(client, frames)
        require(reply.kind == 3 and reply.body["code"] == "rate_limited", f"got {reply.text}")
        await client.aclose()


@check("§3 §7", "answers to the server's calls take no token and are never dropped", "rate")
async def _():
    client = await connected("rate", procedures={"count": lambda n: n})
    result = await client.request("/calls", {"n": 12, "timeout_ms": 5000})
    require(result == {"answered": 12, "errors": []}, f"/calls answered {result}")
    for i in range(3):  # the burst of 5 less /calls and these: still within it
        require(await client.request("/echo", i) == i, "a request within the burst was refused")
    await client.aclose()


@check("§7", "the bucket refills: after a pause requests are served again", "rate")
async def _(client):
    reply = await flood_then_request(client, ["[9]"] * 10)
    require(reply.kind == 3, f"the flood was not limited: {reply.text}")
    await asyncio.sleep(2.5)  # 1 token a second
    await exchange(client, '[1,901,"/echo","later"]', '[2,901,"later"]', 901)


# ---------------------------------------------------------------- §8 authentication


@check("§8", "first message: other envelopes get unauthorized; success replies {user}, then @ready", "message")
async def _():
    user = unique("m")
    client = await Client(url("message"), answer_calls=False).open()
    await error_reply(client, '[1,1,"/echo",1]', 1, "unauthorized")
    await client.send_text('[0,"/echo",1]')
    frame = await receive(client, "@error unauthorized")
    require(isinstance(frame, str) and frame.startswith('[0,"@error"') and "unauthorized" in frame, f"got {frame!r}")
    await client.send_text(encode(1, 2, "/auth", {"token": f"user:{user}"}))
    reply, before = await answer(client, 2)
    require(reply.kind == 2 and reply.data == {"user": user}, f"auth answered {reply.text}")
    require(not any("@ready" in str(f) for f in before), "@ready came before the auth reply")
    frame = await receive(client, "@ready after the auth reply")
    require(isinstance(frame, str) and frame.startswith('[0,"@ready",'), f"after the auth reply: {frame!r}")
    require(parse(frame).data.get("user") == user, f"@ready {frame}")
    await exchange(client, '[1,3,"/echo",1]', "[2,3,1]", 3)
    await client.aclose()


@check("§6 §8", "first message: a refused token gets unauthorized and a 4401 close", "message")
async def _():
    client = await Client(url("message"), answer_calls=False).open()
    await client.send_text(encode(1, 1, "/auth", {"token": "bad"}))
    reply, _ = await answer(client, 1)
    require(reply.kind == 3 and reply.body["code"] == "unauthorized", f"got {reply.text}")
    await expect_close(client, 4401)


@check("§6 §7 §8", "first message: no auth in time closes 4408, with no @ready before", "message")
async def _():
    client = await Client(url("message"), answer_calls=False).open()
    closed = await closed_within(client, QUIET + 2)
    require(closed.code == 4408, f"closed {closed}")
    require(client.ready is None and client.events.empty(), "an event arrived before authentication")


@check("§6 §8", "max devices, reject new: a second device of a user closes 4429", "message")
async def _():
    user = unique("d")
    first = Client(url("message"))
    await first.open()
    await first.request("/auth", {"token": f"user:{user}"})
    second = Client(url("message"))
    await second.open()
    try:
        await second.request("/auth", {"token": f"user:{user}"})
    except RemoteError:
        pass
    await expect_close(second, 4429)
    await first.aclose()


def challenge_answer(data):
    return f"{data['challenge']}:ann"


@check("§1 §8", "challenge: @challenge is the first frame; envelopes before the answer get unauthorized", "challenge")
async def _():
    client = await Client(url("challenge"), answer_calls=False).open()
    first = await receive(client, "@challenge")
    require(isinstance(first, str), f"first frame {first!r}")
    call = parse(first)
    require(call and call.kind == 1 and call.event == "@challenge", f"first frame {first}")
    require(isinstance(call.data, dict) and isinstance(call.data.get("challenge"), str), f"challenge {first}")
    await error_reply(client, '[1,1,"/echo",1]', 1, "unauthorized")
    await client.send_text(encode(2, call.id, challenge_answer(call.data)))
    frame = await receive(client, "@ready after the answer")
    require(isinstance(frame, str) and frame.startswith('[0,"@ready",'), f"after the answer: {frame!r}")
    require(parse(frame).data.get("user") == "ann", f"@ready {frame}")
    await exchange(client, '[1,2,"/echo",1]', "[2,2,1]", 2)
    await client.aclose()


@check("§8", "challenge: the client library answers it and reaches READY", "challenge")
async def _():
    client = await Client(url("challenge"), procedures={"@challenge": challenge_answer}).open()
    data = await ready(client)
    require(client.state == "READY" and data.get("user") == "ann", f"{client.state} {data}")
    await client.aclose()


@check("§6 §8", "challenge: a wrong answer closes 4401", "challenge")
async def _():
    client = Client(url("challenge"), procedures={"@challenge": lambda data: "wrong"})
    await client.open()
    await expect_close(client, 4401)


@check("§6 §8", "challenge: not_registered closes 4401", "challenge")
async def _():
    client = Client(url("challenge"))  # no @challenge procedure
    await client.open()
    await expect_close(client, 4401)


@check("§6 §8", "challenge: no answer in time closes 4408", "challenge")
async def _():
    client = Client(url("challenge"), answer_calls=False)
    await client.open()
    await expect_close(client, 4408, timeout=QUIET + 2)


@check("§8", "at upgrade: no token is refused with an HTTP status (401)", "upgrade")
async def _():
    host, port = SERVERS["upgrade"].rsplit(":", 1)
    sock = await rawws.connect(host, int(port))
    sock.close()
    require(sock.status == 401, f"status {sock.status}")


@check("§4 §8", "at upgrade: @ready names the user", "upgrade")
async def _():
    user = unique("u")
    client = await Client(url("upgrade", f"/?token=user:{user}")).open()
    data = await ready(client)
    require(data.get("user") == user, f"@ready {data}")
    await client.aclose()


@check("§6 §8", "max devices, drop oldest: the oldest device closes 4409", "upgrade")
async def _():
    user = unique("o")
    first = await connected("upgrade", path=f"/?token=user:{user}")
    second = await connected("upgrade", path=f"/?token=user:{user}")
    await expect_close(first, 4409)
    require(await second.request("/echo", 1) == 1, "the new device does not work")
    await second.aclose()


# ---------------------------------------------------------------- §9 heartbeat


async def heartbeat_socket():
    host, port = SERVERS["heartbeat"].rsplit(":", 1)
    sock = await rawws.connect(host, int(port))
    require(sock.status == 101, f"status {sock.status}")
    return sock


async def stays_open(sock, seconds, on_ping=None):
    """Reads frames for `seconds`; the server must not close meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            opcode, payload = await asyncio.wait_for(sock.read_frame(), deadline - time.monotonic())
        except asyncio.TimeoutError:
            return
        require(opcode != rawws.CLOSE, f"closed: {payload!r}")
        if opcode == rawws.PING and on_ping:
            on_ping(payload)


async def close_unanswered(sock):
    """Reads frames, answering no ping, until the server's close frame: (its
    code, the text frames before it)."""
    texts = []
    while True:
        try:
            opcode, payload = await asyncio.wait_for(sock.read_frame(), QUIET + 2)
        except asyncio.IncompleteReadError:
            raise Fail("TCP closed without a close frame") from None
        if opcode == rawws.TEXT:
            texts.append(payload.decode())
        if opcode == rawws.CLOSE:
            return (int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None), texts


@check("§9", "heartbeat: pings carry 8 bytes; a client that answers stays connected", "heartbeat")
async def _():
    sock = await heartbeat_socket()
    pings = []

    def pong(payload):
        pings.append(payload)
        sock.send_frame(rawws.PONG, payload)

    try:
        await stays_open(sock, 1.5, pong)  # 7 intervals of 200 ms
    finally:
        sock.close()
    require(len(pings) >= 2, f"{len(pings)} pings in 1.5 s at a 200 ms interval")
    require(all(len(p) == 8 for p in pings), f"ping payloads {pings!r}")


@check("§6 §9", "heartbeat: two unanswered pings close with a 4408 close frame", "heartbeat")
async def _():
    sock = await heartbeat_socket()
    try:
        code, _ = await close_unanswered(sock)
        require(code == 4408, f"close code {code}")
    finally:
        sock.close()


@check("§9", "heartbeat: messages count as signs of life (no pongs, an event every 50 ms)", "heartbeat")
async def _():
    sock = await heartbeat_socket()

    async def talk():
        while True:
            sock.send_frame(rawws.TEXT, b'[0,"/nope"]')
            await asyncio.sleep(0.05)

    talker = asyncio.create_task(talk())
    try:
        await stays_open(sock, 1.5)
    finally:
        talker.cancel()
        sock.close()


# ---------------------------------------------------------------- §9.1 application-level ping


async def ping_me(client, timeout_ms=3000):
    """Has the server ping `client` (`/ping-me`, SocketRef::ping_then): its
    answer, {"rtt_us": N} or {"error": {code, message}}."""
    return await client.request("/ping-me", {"timeout_ms": timeout_ms}, timeout=timeout_ms / 1000 + QUIET)


def server_pings(client):
    """The server's `@ping` calls among the frames the client kept."""
    calls = []
    while not client.inbox.empty():
        frame = client.inbox.get_nowait()
        envelope = parse(frame) if isinstance(frame, str) else None
        if envelope is not None and envelope.kind == 1 and envelope.event == "@ping":
            calls.append(envelope)
    return calls


@check("§9.1", "the server pings the client: the library answers [2,id,data] itself, whatever its procedures")
async def _():
    def application(data):
        raise AssertionError("@ping reached the application")

    for options in ({"answer_calls": False}, {"procedures": {"@ping": application}}):
        client = await connected(**options)
        try:
            result = await ping_me(client)
            require(isinstance(result.get("rtt_us"), int) and result["rtt_us"] >= 0, f"{options}: /ping-me {result}")
            calls = server_pings(client)
            require(len(calls) == 1, f"{options}: the server's @ping calls: {calls!r}")
            require(client.pings_answered == [calls[0].id], f"{options}: answered {client.pings_answered}")
            events = [client.events.get_nowait()[0] for _ in range(client.events.qsize())]
            require("@ping" not in events, f"{options}: @ping reached the listeners: {events}")
        finally:
            await client.aclose()


@check("§9.1 §3", "a client that does not know @ping answers not_registered: the server's ping fails")
async def _():
    client = await connected(answer_pings=False)
    try:
        result = await ping_me(client)
        require(result.get("error", {}).get("code") == "not_registered", f"/ping-me {result}")
    finally:
        await client.aclose()


@check("§9.1 §3", "a client that does not answer @ping: the ping times out on the server; a late answer is ignored")
async def _(client):
    client.answer_pings = False  # and answer_calls=False: the call is the check's
    await client.send_text(encode(1, 1, "/ping-me", {"timeout_ms": 300}))
    text, _ = await frames_until(client, lambda t: t.startswith('[1,') and '"@ping"' in t)
    call = parse(text)
    reply, _ = await answer(client, 1)
    require(reply.kind == 2 and reply.data.get("error", {}).get("code") == "timeout", f"/ping-me {reply.text}")
    await client.send_text(encode(2, call.id, call.data))
    await nothing_back(client)


@check("§9.1 §2", "the client pings the server: [2,id,data] with the data as written, [2,id,null] without")
async def _(client):
    data = '{"t":1733500000000, "x":[1e400,0.10,"\\ud800"]}'
    await exchange(client, f'[1,7,"@ping",{data}]', f"[2,7,{data}]", 7)
    await exchange(client, '[1,8,"@ping"]', "[2,8,null]", 8)
    await error_event(client, '[0,"@ping"]', "bad_request")
    rtt, answered = await client.ping({"n": 1})
    require(answered == {"n": 1} and rtt >= 0, f"ping answered {answered!r}")


@check("§9.1 §8", "first-message auth: @ping before the auth request is answered; the auth request follows", "message")
async def _():
    user = unique("p")
    client = await Client(url("message"), answer_calls=False).open()
    await exchange(client, '[1,1,"@ping",1]', "[2,1,1]", 1)
    result = await client.request("/auth", {"token": f"user:{user}"})
    require(result == {"user": user}, f"auth answered {result}")
    await ready(client)
    await client.aclose()


@check("§9.1 §8", "challenge: @ping before the answer is answered", "challenge")
async def _():
    client = await Client(url("challenge"), answer_calls=False).open()
    await frames_until(client, lambda t: '"@challenge"' in t)
    await exchange(client, '[1,1,"@ping",1]', "[2,1,1]", 1)
    await client.aclose()


@check("§9.1 §7", "@ping counts against the rate; over it, rate_limited", "rate")
async def _(client):
    for i in range(10):
        await client.send_text("[9]")
    await client.send_text('[1,5,"@ping"]')
    reply, _ = await answer(client, 5)
    require(reply.kind == 3 and reply.body["code"] == "rate_limited", f"got {reply.text}")


# ---------------------------------------------------------------- §10 binary, §11 compression


@check("§10", "a binary frame gets @error bad_request and is otherwise ignored")
async def _(client):
    await error_event(client, b"\x00\x01binary", "bad_request", binary=True)


async def v2_client():
    client = await connected(subprotocols=("emitws.v2", "emitws.v1"))
    require(client.subprotocol == "emitws.v2", f"selected {client.subprotocol!r}")
    return client


async def binary_frame(client, sent):
    frame = await receive(client, "a binary envelope")
    require(isinstance(frame, bytes), f"sent {sent[:40]!r}, got {str(frame)[:200]}, wanted a binary frame")
    return frame


@check("§10", "emitws.v2: a binary request to /echo gets a binary reply with the bytes (id 300: LEB128 AC 02)")
async def _():
    client = await v2_client()
    payload = bytes(range(256)) * 4
    frame = b"\x01\xac\x02\x05/echo" + payload
    await client.send_binary(frame)
    got = await binary_frame(client, frame)
    require(got == b"\x02\xac\x02" + payload, f"reply {got[:16].hex()}…, wanted 02ac02 then the payload")
    await client.aclose()


@check("§10", "emitws.v2: a binary event to /echo comes back as a binary event; JSON is unchanged")
async def _():
    client = await v2_client()
    frame = b"\x00\x05/echo\xde\xad\xbe\xef"
    await client.send_binary(frame)
    got = await binary_frame(client, frame)
    require(got == frame, f"got {got.hex()}, wanted {frame.hex()}")
    require(await client.request("/echo", {"a": 1}) == {"a": 1}, "JSON echo failed on emitws.v2")
    await client.aclose()


@check("§10 §4", "emitws.v2: a bad header gets @error, or an error reply once a request id can be read")
async def _():
    client = await v2_client()
    for junk in (b"", b"\x01", b"\x01\x80", b"\x01\x81\x00\x01/", b"\x02\x00"):
        await error_event(client, junk, "bad_request", binary=True)
    for junk, id in ((b"\x01\x07", 7), (b"\x01\x08\x00", 8), (b"\x01\x09\x09/", 9), (b"\x01\x0a\x04nope", 10)):
        await client.send_binary(junk)
        frame = await receive(client, "an error reply")
        envelope = parse(frame) if isinstance(frame, str) else None
        require(
            envelope is not None and envelope.kind == 3 and envelope.id == id and envelope.body["code"] == "bad_request",
            f"{junk.hex()} -> {str(frame)[:200]}, wanted [3,{id},{{bad_request}}]",
        )
    await client.send_binary(b"\x05\x01\x02")  # a later type: ignored
    require(await client.request("/echo", 1) == 1, "the socket did not go on")
    await client.aclose()


BLOB = bytes([0xDE, 0xAD, 0xBE, 0xEF])
BLOB_V2 = b"\x00\x04blob" + BLOB  # §10: type 0, name length 4, "blob", the bytes
BLOB_V1 = '[0,"blob",{"base64":"3q2+7w=="}]'  # §10: the same to an emitws.v1 socket


async def emit_blob(sender, socket):
    """Has the server send the binary event `blob` (the bytes DE AD BE EF) to
    `socket`; returns the frames `sender` got before the reply."""
    id = sender.next_id()
    await sender.send_text(encode(1, id, "/emit-binary-to", {"socket": socket, "event": "blob", "bytes": list(BLOB)}))
    reply, before = await answer(sender, id)
    require(reply.kind == 2 and reply.data is True, f"/emit-binary-to: {reply.text}")
    return before


@check("§10", "a binary event sent to one socket is a binary envelope on emitws.v2, {base64} JSON on emitws.v1")
async def _():
    v2 = await v2_client()
    before = await emit_blob(v2, v2.ready["socket"])
    got = before[0] if before else await receive(v2, "the binary event")
    require(got == BLOB_V2, f"got {got!r}, wanted {BLOB_V2.hex()}")
    v1 = await raw_client()
    await emit_blob(v2, v1.ready["socket"])
    got = await receive(v1, "the event as JSON")
    require(got == BLOB_V1, f"got {got!r}, wanted {BLOB_V1}")
    await v1.aclose()
    await v2.aclose()


@check("§10 §13", "a binary event kept for an away socket comes in the protocol its resuming connection speaks")
async def _():
    bob = await raw_client()
    for away, back, wanted in (((PROTOCOL,), ("emitws.v2",), BLOB_V2), (("emitws.v2",), (PROTOCOL,), BLOB_V1)):
        ann = await raw_client(subprotocols=away)
        socket, token = ann.ready["socket"], token_of(ann.ready)
        await go_away(ann)
        await emit_blob(bob, socket)
        ann, reply, before, ready_data = await resume(token, {}, subprotocols=back)
        require(ann.subprotocol == back[0], f"resumed on {ann.subprotocol!r}, offered {back}")
        require(before == [wanted], f"away on {away[0]}, back on {back[0]}: before the reply {before!r}")
        require_resumed(reply, ready_data, socket)
        await ann.aclose()
    await bob.aclose()


@check("§11", "envelopes are the same under permessage-deflate")
async def _():
    client = await connected(compression="deflate")
    require(await client.request("/echo", {"a": [1, 2]}) == {"a": [1, 2]}, "echo failed")
    await client.aclose()


# ---------------------------------------------------------------- §13 resume and recovery


def history_room():
    """A fresh room with history: the server gives `#h:…` rooms history, and
    `/join` and `/say` put the `#` in front of the name they are given."""
    return unique("h:")


async def deliveries(client, count, event="said"):
    """The next `count` events named `event`, parsed as JSON arrays (other
    frames, such as replies, are skipped)."""
    got = []
    while len(got) < count:
        text, _ = await frames_until(client, lambda t: t.startswith(f'[0,"{event}"'))
        got.append(json.loads(text))
    return got


def require_delivery(delivery, room, data, offset, epoch=None):
    """§13: `[0, event, data, {room, offset, epoch}]`; returns the epoch."""
    require(len(delivery) == 4, f"no fourth element: {delivery}")
    require(delivery[2] == data, f"wanted data {data!r}: {delivery}")
    position = delivery[3]
    require(isinstance(position, dict), f"the fourth element is no object: {delivery}")
    require(position.get("room") == f"#{room}", f"wanted room #{room}: {delivery}")
    require(type(position.get("offset")) is int and position["offset"] == offset, f"wanted offset {offset}: {delivery}")
    require(isinstance(position.get("epoch"), str) and position["epoch"], f"no epoch string: {delivery}")
    require(epoch is None or position["epoch"] == epoch, f"wanted epoch {epoch}: {delivery}")
    return position["epoch"]


async def say(client, room, data):
    await client.request("/say", {"room": room, "event": "said", "data": data})


def token_of(ready_data):
    token = ready_data.get("resume") if isinstance(ready_data, dict) else None
    require(isinstance(token, str) and token, f"@ready has no resume token: {ready_data}")
    return token


async def session_client(server="main"):
    """A client past @ready, its socket id and its resume token."""
    client = await raw_client(server)
    return client, client.ready["socket"], token_of(client.ready)


async def lose(client):
    """Drops the TCP connection without a close frame (§13: a loss)."""
    client.ws.transport.abort()
    closed = await client.closed(QUIET)
    require(closed.code is None, f"the aborted connection got a close frame: {closed}")


async def resume(token, rooms, server="main", user=None, subprotocols=(PROTOCOL,)):
    """Reconnects with `emitws_resume=1` and `@resume` as the first envelope
    (`rooms` None: left out; with first-message auth, right after `/auth` as
    `user`, not waiting for its reply), offering `subprotocols`; returns
    (client, the reply, the frames before it but after the auth reply, the
    @ready data after it)."""
    client = await Client(url(server, "/?emitws_resume=1"), answer_calls=False, subprotocols=subprotocols).open()
    if user is not None:
        await client.send_text(encode(1, client.next_id(), "/auth", {"token": f"user:{user}"}))
    id = client.next_id()
    body = {"token": token} if rooms is None else {"token": token, "rooms": rooms}
    await client.send_text(encode(1, id, "@resume", body))
    reply, before = await answer(client, id)
    if user is not None:
        auth = parse(before[0]) if before else None
        require(auth is not None and auth.kind == 2 and auth.id == 1, f"the auth reply is not first: {before!r}")
        before = before[1:]
    frame = await receive(client, "@ready after the reply to @resume")
    require(isinstance(frame, str) and frame.startswith('[0,"@ready"'), f"after the @resume reply: {frame!r}")
    client.ready = parse(frame).data
    return client, reply, before, client.ready


async def go_away(client, code=1001):
    """Closes with `code` (1001 going away by default), which keeps the
    session (§13), and waits for the server's close: the server has then seen
    the socket go."""
    await client.ws.close(code)
    closed = await client.closed(QUIET)
    require(closed.code is not None, f"the server answered a {code} close with {closed}")


async def pair_in_history_room():
    """Two clients in a fresh room with history, after bob's first broadcast
    ("m1", offset 1) reached ann: (room, ann, bob, ann's socket id, ann's
    resume token, the room's epoch)."""
    room = history_room()
    (ann, socket, token), bob = await session_client(), await raw_client()
    await ann.request("/join", {"room": room})
    await bob.request("/join", {"room": room})
    await say(bob, room, "m1")
    epoch = require_delivery((await deliveries(ann, 1))[0], room, "m1", 1)
    return room, ann, bob, socket, token, epoch


def parse_event_at(frame):
    """§10: a type-4 binary envelope — type, name length N, name, position
    length P, the position's JSON, payload — as (name, position, payload)."""
    require(isinstance(frame, bytes) and len(frame) > 2 and frame[0] == 4, f"wanted a type-4 envelope, got {frame!r}")
    n = frame[1]
    name = frame[2 : 2 + n].decode()
    p = frame[2 + n]
    position = json.loads(frame[3 + n : 3 + n + p])
    return name, position, frame[3 + n + p :]


@check("§10 §13", "a binary broadcast to a room with history: type 4 on v2, base64 with the position on v1, replayed")
async def _():
    room = history_room()
    ann = await raw_client(subprotocols=("emitws.v2",))
    socket, token = ann.ready["socket"], token_of(ann.ready)
    bob, carl = await raw_client(), await raw_client()
    for client in (ann, bob):
        await client.request("/join", {"room": room})
    await say(carl, room, "m1")
    epoch = require_delivery((await deliveries(ann, 1))[0], room, "m1", 1)
    require_delivery((await deliveries(bob, 1))[0], room, "m1", 1, epoch)
    await carl.request("/say-binary", {"room": room, "event": "said", "bytes": list(BLOB)})
    name, position, payload = parse_event_at(await receive(ann, "the binary broadcast"))
    require((name, payload) == ("said", BLOB), f"got {name!r} {payload!r}")
    require(position == {"room": f"#{room}", "offset": 2, "epoch": epoch}, f"position {position}")
    require_delivery((await deliveries(bob, 1))[0], room, {"base64": "3q2+7w=="}, 2, epoch)
    await go_away(ann)
    await carl.request("/say-binary", {"room": room, "event": "said", "bytes": [7]})
    await say(carl, room, "m4")
    ann, reply, before, ready_data = await resume(token, {f"#{room}": {"epoch": epoch, "offset": 2}}, subprotocols=("emitws.v2",))
    require_resumed(reply, ready_data, socket)
    require(len(before) == 2, f"wanted offsets 3 and 4 before the reply, got {before!r}")
    name, position, payload = parse_event_at(before[0])
    require((name, position["offset"], payload) == ("said", 3, b"\x07"), f"replayed {before[0]!r}")
    require_delivery(json.loads(before[1]), room, "m4", 4, epoch)
    for client in (ann, bob, carl):
        await client.aclose()


def require_resumed(reply, ready_data, socket):
    require(reply.kind == 2, f"@resume got {reply.text}")
    require(reply.data.get("resumed") is True and reply.data.get("socket") == socket, f"reply {reply.text}")
    require(ready_data.get("socket") == socket and ready_data.get("resumed") is True, f"@ready {ready_data}")


async def not_resumed(token, old_socket, server="main"):
    """§13: a token that cannot resume gets `resumed: false` and a new socket."""
    client, reply, before, ready_data = await resume(token, {}, server)
    require(reply.kind == 2, f"@resume got {reply.text}")
    require(reply.data.get("resumed") is False, f"wanted resumed: false, got {reply.text}")
    require(reply.data.get("socket") != old_socket, f"the socket is the old one: {reply.text}")
    require(not before, f"frames before the reply: {before!r}")
    require(ready_data.get("socket") == reply.data.get("socket"), f"@ready {ready_data} after {reply.text}")
    require(not ready_data.get("resumed"), f"@ready says resumed: {ready_data}")
    return client


@check("§13 §4", "@ready carries a resume token of at most 64 bytes, different per connection")
async def _():
    ann, bob = await raw_client(), await raw_client()
    tokens = [token_of(ann.ready), token_of(bob.ready)]
    for token in tokens:
        require(len(token.encode()) <= 64, f"a token of {len(token.encode())} bytes")
    require(tokens[0] != tokens[1], "two connections got the same token")
    require(not ann.ready.get("resumed"), f"a first connection says resumed: {ann.ready}")
    await ann.aclose()
    await bob.aclose()


@check("§13", "broadcasts to a room with history carry {room, offset, epoch}, offsets 1, 2, 3")
async def _():
    room = history_room()
    ann, bob = await raw_client(), await raw_client()
    await ann.request("/join", {"room": room})
    await bob.request("/join", {"room": room})
    for n in (1, 2, 3):
        await say(bob, room, {"n": n})
    epoch = None
    for n, delivery in enumerate(await deliveries(ann, 3), 1):
        epoch = require_delivery(delivery, room, {"n": n}, n, epoch)
    await ann.aclose()
    await bob.aclose()


@check("§13", "a lost connection resumes: missed broadcasts, then the reply, then @ready, same socket")
async def _():
    room, ann, bob, socket, token, epoch = await pair_in_history_room()
    await lose(ann)
    await say(bob, room, "m2")
    await say(bob, room, "m3")
    ann, reply, before, ready_data = await resume(token, {f"#{room}": {"epoch": epoch, "offset": 1}})
    missed = [json.loads(text) for text in before]
    require(len(missed) == 2, f"wanted m2 and m3 before the reply, got {before!r}")
    require_delivery(missed[0], room, "m2", 2, epoch)
    require_delivery(missed[1], room, "m3", 3, epoch)
    require_resumed(reply, ready_data, socket)
    recovered = reply.data.get("rooms", {}).get(f"#{room}")
    require(recovered == {"recovered": True, "epoch": epoch, "offset": 3}, f"reply {reply.text}")
    require(token_of(ready_data) != token, "@ready after a resume brought the spent token again")
    await say(bob, room, "m4")  # still in the room
    require_delivery((await deliveries(ann, 1))[0], room, "m4", 4, epoch)
    require((await ann.request("/whoami"))["socket"] == socket, "/whoami names another socket")
    # §13: a claim succeeds at most once.
    again = await not_resumed(token, socket)
    await again.aclose()
    await ann.aclose()
    await bob.aclose()


@check("§13", "an unknown token does not resume; a second @resume gets bad_request")
async def _():
    client = await not_resumed("unknown-" + uuid.uuid4().hex, None)
    await error_reply(client, encode(1, 90, "@resume", {"token": token_of(client.ready)}), 90, "bad_request")
    await client.aclose()


@check("§13", "a client's 1000 close ends the session: its token does not resume")
async def _():
    ann, socket, token = await session_client()
    await ann.aclose()
    closed = await ann.closed(QUIET)
    require(closed.code == 1000, f"the close was not a 1000 exchange: {closed}")
    client = await not_resumed(token, socket)
    await client.aclose()


@check("§13", "a 1001 close keeps the session: direct messages sent meanwhile come before the reply, in order")
async def _():
    ann, socket, token = await session_client()
    bob = await raw_client()
    await go_away(ann)
    for n in (1, 2):
        await bob.request("/emit-to", {"socket": socket, "event": "direct", "data": n})
    ann, reply, before, ready_data = await resume(token, {})
    require(before == ['[0,"direct",1]', '[0,"direct",2]'], f"before the reply: {before!r}")
    require_resumed(reply, ready_data, socket)
    require(reply.data.get("direct") == {"recovered": True}, f"reply {reply.text}")
    await ann.aclose()
    await bob.aclose()


@check("§13", "a client's 4001 close (a jump to another server) keeps the session")
async def _():
    ann, socket, token = await session_client()
    await go_away(ann, 4001)
    ann, reply, _, ready_data = await resume(token, None)  # §13: `rooms` may be missing
    require_resumed(reply, ready_data, socket)
    await ann.aclose()


@check("§13", "a room the client does not list is replayed from the offset it had when the socket joined")
async def _():
    room = history_room()
    ann, socket, token = await session_client()
    bob = await raw_client()
    await bob.request("/join", {"room": room})
    await say(bob, room, "before ann")
    await ann.request("/join", {"room": room})
    await go_away(ann)
    await say(bob, room, "m2")
    await say(bob, room, "m3")
    ann, reply, before, ready_data = await resume(token, {})
    missed = [json.loads(text) for text in before]
    require(len(missed) == 2, f"wanted m2 and m3 before the reply, got {before!r}")
    epoch = require_delivery(missed[0], room, "m2", 2)
    require_delivery(missed[1], room, "m3", 3, epoch)
    require_resumed(reply, ready_data, socket)
    recovered = reply.data.get("rooms", {}).get(f"#{room}")
    require(recovered == {"recovered": True, "epoch": epoch, "offset": 3}, f"reply {reply.text}")
    await ann.aclose()
    await bob.aclose()


@check("§13", "rooms that cannot be recovered say recovered: false; the room stays joined")
async def _():
    room, ann, bob, socket, token, epoch = await pair_in_history_room()
    other, plain = history_room(), unique("r")
    await go_away(ann)
    await say(bob, room, "m2")
    wrong = "not-" + epoch
    listed = {f"#{room}": {"epoch": wrong, "offset": 1}, f"#{other}": {"epoch": wrong, "offset": 1}}
    listed[f"#{plain}"] = {"epoch": wrong, "offset": 1}
    ann, reply, _, ready_data = await resume(token, listed)
    require_resumed(reply, ready_data, socket)
    rooms = reply.data.get("rooms", {})
    # The epoch differs: not recovered, but the stream's epoch and latest offset come along.
    require(rooms.get(f"#{room}") == {"recovered": False, "epoch": epoch, "offset": 2}, f"reply {reply.text}")
    # A room the socket was not in, and a room without history.
    for name in (other, plain):
        require((rooms.get(f"#{name}") or {}).get("recovered") is False, f"#{name} in reply {reply.text}")
    await say(bob, room, "m3")
    require_delivery((await deliveries(ann, 1))[0], room, "m3", 3, epoch)
    await ann.aclose()
    await bob.aclose()


@check("§13", "a broadcast that left the socket out stays left out of the replay; plain rooms stay joined")
async def _():
    room, ann, bob, socket, token, epoch = await pair_in_history_room()
    plain = unique("r")
    await ann.request("/join", {"room": plain})
    await bob.request("/join", {"room": plain})
    await say(ann, room, "m2 from ann")  # offset 2, not delivered to ann
    await lose(ann)
    await say(bob, room, "m3")
    ann, reply, before, ready_data = await resume(token, {f"#{room}": {"epoch": epoch, "offset": 1}})
    missed = [json.loads(text) for text in before]
    require(len(missed) == 1, f"wanted only m3 before the reply, got {before!r}")
    require_delivery(missed[0], room, "m3", 3, epoch)
    require_resumed(reply, ready_data, socket)
    await bob.request("/say", {"room": plain, "event": "plain", "data": 1})
    text, _ = await frames_until(ann, lambda t: t.startswith('[0,"plain"'))
    require(text == '[0,"plain",1]', f"got {text}")
    await ann.aclose()
    await bob.aclose()


@check("§13", "two connections presenting the same token at once: one resumes, the other does not")
async def _():
    ann, socket, token = await session_client()
    await go_away(ann)
    results = await asyncio.gather(resume(token, {}), resume(token, {}))
    outcomes = sorted(reply.data.get("resumed") is True for _, reply, _, _ in results)
    require(outcomes == [False, True], f"replies {[reply.text for _, reply, _, _ in results]}")
    for client, reply, _, ready_data in results:
        if reply.data.get("resumed"):
            require_resumed(reply, ready_data, socket)
        else:
            require(reply.data.get("socket") != socket, f"the loser has the socket: {reply.text}")
        await client.aclose()


@check("§13", "a resume while the token's connection is open closes that one with 4409")
async def _():
    old, socket, token = await session_client()
    new, reply, _, ready_data = await resume(token, {})
    require_resumed(reply, ready_data, socket)
    closed = await old.closed(QUIET)
    require(closed.code == 4409, f"the old connection closed {closed}")
    require((await new.request("/whoami"))["socket"] == socket, "/whoami names another socket")
    await new.aclose()


@check("§13 §8", "first-message auth: @resume right after /auth resumes the same user, not another", "message")
async def _():
    user = unique("u")
    ann = await Client(url("message"), answer_calls=False).open()
    await ann.request("/auth", {"token": f"user:{user}"})
    ready_data = await ready(ann)
    socket, token = ready_data["socket"], token_of(ready_data)
    await go_away(ann)
    eve, reply, _, eve_ready = await resume(token, {}, "message", user=unique("eve"))
    require(reply.kind == 2 and reply.data.get("resumed") is False, f"another user resumed: {reply.text}")
    require(eve_ready.get("socket") != socket and not eve_ready.get("resumed"), f"@ready {eve_ready}")
    await eve.aclose()
    ann, reply, _, ready_data = await resume(token, {}, "message", user=user)
    require_resumed(reply, ready_data, socket)
    require(ready_data.get("user") == user, f"@ready {ready_data}")
    await ann.aclose()


@check("§13", "more direct messages than the server keeps: the oldest are missing, direct.recovered false", "buffer")
async def _():
    ann, socket, token = await session_client("buffer")
    bob = await raw_client("buffer")
    await go_away(ann)
    for n in (1, 2, 3):  # the server keeps 2
        await bob.request("/emit-to", {"socket": socket, "event": "direct", "data": n})
    ann, reply, before, ready_data = await resume(token, {}, "buffer")
    require(before == ['[0,"direct",2]', '[0,"direct",3]'], f"before the reply: {before!r}")
    require_resumed(reply, ready_data, socket)
    require(reply.data.get("direct") == {"recovered": False}, f"reply {reply.text}")
    await ann.aclose()
    await bob.aclose()


@check("§13 §9", "a socket closed 4408 for unanswered heartbeats keeps its session", "heartbeat")
async def _():
    sock = await heartbeat_socket()
    try:
        code, texts = await close_unanswered(sock)
    finally:
        sock.close()
    require(code == 4408, f"close code {code}")
    require(texts and texts[0].startswith('[0,"@ready"'), f"no @ready first: {texts!r}")
    ready_data = parse(texts[0]).data
    client, reply, _, resumed_ready = await resume(token_of(ready_data), {}, "heartbeat")
    require_resumed(reply, resumed_ready, ready_data["socket"])
    await client.aclose()


@check("§13", "a session ends with its window: a resume after it does not resume", "short")
async def _():
    ann, socket, token = await session_client("short")
    await go_away(ann)
    await asyncio.sleep(1)  # the window is 300 ms
    client = await not_resumed(token, socket, "short")
    await client.aclose()


@check("§13", "without sessions: @ready has no resume token and @resume answers resumed: false", "nosession")
async def _():
    ann = await raw_client("nosession")
    require(isinstance(ann.ready, dict) and "resume" not in ann.ready, f"@ready {ann.ready}")
    await go_away(ann)
    client = await not_resumed("unknown-" + uuid.uuid4().hex, ann.ready["socket"], "nosession")
    require("resume" not in client.ready, f"@ready {client.ready}")
    await client.aclose()


@check("§13 §6", "a drop by the server (4000) and a close for bad input (1007) end the session")
async def _():
    for server, text, code in (("main", encode(1, 1, "/drop-me"), 4000), ("close", "[1,", 1007)):
        ann, socket, token = await session_client(server)
        await ann.send_text(text)
        await expect_close(ann, code)
        client = await not_resumed(token, socket, server)
        await client.aclose()


@check("§13 §3", "a request in flight when the connection was lost is not answered after the resume")
async def _():
    ann, socket, token = await session_client()
    await ann.send_text(encode(1, 5, "/hold", "held"))
    await sync(ann)  # the server has the held request
    await lose(ann)
    ann, reply, _, ready_data = await resume(token, {})
    require_resumed(reply, ready_data, socket)
    await ann.send_text(encode(1, 6, "/release"))
    _, before = await answer(ann, 6)
    before += await sync(ann)
    require(not any(is_answer_to(5)(text) for text in before if isinstance(text, str)), f"answered: {before!r}")
    await ann.aclose()


@check("§13 §4", "@resume after @ready on a plain connection gets bad_request")
async def _(client):
    token = token_of(client.ready)
    await error_reply(client, encode(1, 5, "@resume", {"token": token, "rooms": {}}), 5, "bad_request")
    require((await client.request("/whoami"))["socket"] == client.ready["socket"], "the socket changed")


# ---------------------------------------------------------------- runner


async def run_one(fn, server):
    """Runs a check; one whose first parameter is `client` gets a raw client
    of its server, closed afterwards."""

    async def run():
        if next(iter(inspect.signature(fn).parameters), None) != "client":
            return await fn()
        client = await raw_client(server)
        try:
            await fn(client)
        finally:
            await client.aclose()

    await asyncio.wait_for(run(), CHECK_TIMEOUT)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", action="append", default=[], help="NAME=HOST:PORT")
    parser.add_argument("-k", dest="only", help="run the checks whose section or name contains this")
    args = parser.parse_args()
    for item in args.server:
        name, _, addr = item.partition("=")
        SERVERS[name] = addr
    failed = []
    ran = 0
    if "main" in SERVERS:
        asyncio.run(probe_ready())
        if NO_READY:
            print("NOTE the main server sent no @ready (§4): checks not about it go on without waiting for it")
    deadline = time.monotonic() + SUITE_TIMEOUT
    for section, name, server, fn in CHECKS:
        label = f"[{section}] {name}"
        if args.only and args.only not in label:
            continue
        ran += 1
        if time.monotonic() > deadline:
            failed.append(label)
            print(f"FAIL {label}: not run, the suite is past its {SUITE_TIMEOUT} s", flush=True)
            continue
        if server not in SERVERS:
            failed.append(label)
            print(f"FAIL {label}: no server {server!r} given (--server {server}=HOST:PORT)", flush=True)
            continue
        try:
            asyncio.run(run_one(fn, server))
            print(f"ok   {label}", flush=True)
        except Fail as e:
            failed.append(label)
            print(f"FAIL {label}: {e}", flush=True)
        except asyncio.TimeoutError:
            failed.append(label)
            print(f"FAIL {label}: no result within {CHECK_TIMEOUT} s", flush=True)
        except Exception as e:  # a check that cannot run is a failure too
            failed.append(label)
            print(f"FAIL {label}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=3, file=sys.stdout)
    print(f"\n{ran - len(failed)} of {ran} checks passed", flush=True)
    if ran == 0:
        print("no check ran", flush=True)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
