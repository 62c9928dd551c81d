#!/usr/bin/env python3
"""Writes the seed corpus into fuzz/corpus/<target>/ (run from anywhere).

Decoder seeds are [chunk seed, config, stream...], handshake seeds are
[config, head...], envelope seeds are one text message each and binary
seeds one binary envelope each; see fuzz/harness.rs for what the leading bytes select.
Files are named by content, so rerunning only adds what is new.
"""
import hashlib
import os
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
MASK = bytes([0xA1, 0xB2, 0xC3, 0xD4])
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def write(target, name, data):
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:12]
    with open(os.path.join(folder, f"seed-{name}-{digest}"), "wb") as f:
        f.write(data)


def frame(opcode, payload=b"", fin=True, masked=True, rsv=0, length=None, form=None):
    """One frame; `length` overrides the header's length, `form` forces 7/16/64-bit."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if masked else 0
    form = form or (7 if n < 126 else 16 if n < 0x10000 else 64)
    if form == 7:
        head += bytes([bit | n])
    elif form == 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if masked:
        head += MASK
        payload = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + payload


def close(code, reason=b"", **kw):
    return frame(CLOSE, code.to_bytes(2, "big") + reason, **kw)


def decoder_streams(m):
    """(name, config, stream) for a peer that masks iff `m`."""
    f = lambda *a, **kw: frame(*a, masked=kw.pop("masked", m), **kw)
    c = lambda *a, **kw: close(*a, masked=kw.pop("masked", m), **kw)
    euro = "€".encode()
    yield "text", 0, f(TEXT, b"hello")
    yield "text-utf8", 0, f(TEXT, "κόσμε €𝄞".encode())
    yield "binary-empty", 0, f(BINARY)
    yield "binary-125", 0, f(BINARY, bytes(range(125)))
    yield "binary-126-len16", 0, f(BINARY, bytes(126))
    yield "binary-300-len16", 0, f(BINARY, bytes(i & 0xFF for i in range(300)))
    yield "binary-65536-len64", 0, f(BINARY, bytes(65536))
    yield "len64-header-only-1tib", 0, f(BINARY, length=1 << 40)
    yield "len64-header-16mib-partial", 0, f(BINARY, b"x" * 40, length=16 << 20)
    yield "len64-top-bit", 0, f(BINARY, length=1 << 63)
    yield "len16-nonminimal", 0, f(BINARY, b"abc", form=16)
    yield "len64-nonminimal", 0, f(BINARY, b"abc", form=64)
    yield "len64-nonminimal-65535", 0, f(BINARY, length=0xFFFF, form=64)
    yield "fragmented-text-ping-between", 0, (
        f(TEXT, b"frag", fin=False) + f(PING, b"in between") + f(CONT, euro[:1], fin=False)
        + f(CONT, euro[1:]) + f(PONG) + f(TEXT, b"next")
    )
    yield "fragmented-binary-all-controls", 0, (
        f(BINARY, b"a", fin=False) + f(PING) + f(CONT, b"b", fin=False) + f(PONG, b"p" * 125)
        + f(CONT, b"c") + c(1000, b"bye")
    )
    yield "fragmented-empty-fragments", 0, f(TEXT, fin=False) + f(CONT, fin=False) + f(CONT)
    yield "many-tiny-fragments", 0, f(BINARY, b"0", fin=False) + b"".join(f(CONT, b"x", fin=False) for _ in range(60)) + f(CONT, b"!")
    yield "close-inside-message", 0, f(TEXT, b"half", fin=False) + c(1001) + f(CONT, b"late")
    yield "ping-125", 0, f(PING, b"p" * 125)
    yield "ping-126", 0, f(PING, b"p" * 126)
    yield "ping-fragmented", 0, f(PING, b"p", fin=False)
    yield "pong-len16", 0, f(PONG, b"p" * 200)
    yield "close-empty", 0, f(CLOSE)
    yield "close-1000-bye", 0, c(1000, b"bye")
    yield "close-4999-reason-123", 0, c(4999, b"r" * 123)
    yield "close-3000", 0, c(3000)
    yield "close-one-byte", 0, f(CLOSE, b"\x03")
    yield "close-1005", 0, c(1005)
    yield "close-1006", 0, c(1006)
    yield "close-1015", 0, c(1015)
    yield "close-999", 0, c(999)
    yield "close-5000", 0, c(5000)
    yield "close-bad-utf8-reason", 0, c(1000, b"\xff")
    yield "close-then-text", 0, c(1000) + f(TEXT, b"late")
    yield "close-then-ping", 0, f(CLOSE) + f(PING)
    yield "text-bad-utf8", 0, f(TEXT, b"ok\xffok")
    yield "text-truncated-utf8", 0, f(TEXT, euro[:2])
    yield "text-surrogate", 0, f(TEXT, b"\xed\xa0\x80")
    yield "text-overlong", 0, f(TEXT, b"\xc0\xaf")
    yield "text-max-codepoint", 0, f(TEXT, b"\xf4\x8f\xbf\xbf") + f(TEXT, b"\xf4\x90\x80\x80")
    yield "text-utf8-split-across-fragments", 0, (
        f(TEXT, b"\xf0\x9d", fin=False) + f(CONT, b"\x84", fin=False) + f(CONT, b"\x9e")
    )
    yield "text-bad-utf8-in-first-fragment", 0, f(TEXT, b"\xce\xba\xff", fin=False) + f(CONT, b"ok")
    yield "text-truncated-at-fin", 0, f(TEXT, b"\xe2\x82", fin=False) + f(CONT)
    yield "rsv1-text", 0, f(TEXT, b"x", rsv=0b100)
    yield "rsv2-binary", 0, f(BINARY, b"x", rsv=0b010)
    yield "rsv3-ping", 0, f(PING, rsv=0b001)
    yield "rsv1-text-allowed", 0x40, f(TEXT, b"x", rsv=0b100) + f(TEXT, b"y", rsv=0b100, fin=False) + f(CONT, b"z", rsv=0b100)
    yield "rsv-all-allowed-ping", 0xC0, f(BINARY, b"x", rsv=0b111) + f(PING, rsv=0b001)
    for op in (3, 7, 0xB, 0xF):
        yield f"reserved-opcode-{op:x}", 0, f(op, b"x")
    yield "continuation-without-message", 0, f(CONT, b"x")
    yield "text-inside-message", 0, f(TEXT, b"a", fin=False) + f(BINARY, b"b")
    yield "wrong-masking", 0, frame(TEXT, b"x", masked=not m)
    yield "wrong-masking-after-good", 0, f(PING) + frame(PONG, masked=not m)
    yield "limit-frame-5-ok-then-over", 0x02, f(BINARY, b"12345") + f(BINARY, b"123456")
    yield "limit-frame-0", 0x01, f(BINARY) + f(TEXT, b"x")
    yield "limit-frame-126-len16", 0x03, f(BINARY, bytes(126)) + f(BINARY, bytes(127))
    yield "limit-message-7-fragments", 0x08, f(BINARY, b"1234", fin=False) + f(CONT, b"5678")
    yield "limit-message-300", 0x0C, f(TEXT, b"a" * 250, fin=False) + f(CONT, b"b" * 50) + f(TEXT, b"c" * 301)
    yield "limit-message-0-controls-ok", 0x04, f(PING, b"ping") + f(BINARY) + f(BINARY, b"x")
    yield "limit-fragments-2", 0x20, f(BINARY, b"a", fin=False) + f(CONT, b"b") + f(BINARY, b"a", fin=False) + f(CONT, b"b", fin=False) + f(CONT, b"c")
    yield "limit-fragments-1", 0x10, f(TEXT, b"one") + f(TEXT, b"t", fin=False) + f(CONT, b"wo")
    yield "limit-all-small", 0x3E, f(TEXT, b"abc", fin=False) + f(PING, b"x" * 100) + f(CONT, b"def")
    yield "empty-stream", 0, b""
    yield "one-header-byte", 0, f(TEXT, b"x")[:1]
    yield "header-only", 0, f(BINARY, b"x" * 10)[: 6 if m else 2]
    sample = (
        f(TEXT, "héllo".encode()) + f(BINARY, b"\x07" * 300) + f(TEXT, b"frag", fin=False)
        + f(PING, b"in between") + f(CONT, euro[:1], fin=False) + f(CONT, euro[1:])
        + f(BINARY, b"\x03" * 1000) + f(PONG) + c(1000, b"bye")
    )
    for seed in (0, 1, 77, 200, 255):
        yield f"sample-stream-seed{seed}", 0, (seed, sample)


def decoder_seeds(target, m):
    for name, config, stream in decoder_streams(m):
        seed = 0
        if isinstance(stream, tuple):
            seed, stream = stream
        write(target, name, bytes([seed, config]) + stream)


GOOD = (
    b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-junk;;=, foo; a=\"1,2\"\r\n\r\n"
)
MINIMAL = (
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def handshake_heads():
    """(name, config, head)."""
    r = lambda old, new, base=MINIMAL: base.replace(old, new, 1)
    yield "valid-rfc-example", 0, GOOD
    yield "valid-minimal", 0, MINIMAL
    yield "valid-then-frame-bytes", 0, MINIMAL + frame(TEXT, b"hi")
    yield "valid-lf-only", 0, GOOD.replace(b"\r\n", b"\n")
    yield "valid-mixed-line-endings", 0, r(b"Host: h\r\n", b"Host: h\n")
    yield "valid-case-insensitive", 0, MINIMAL.upper()
    yield "valid-padded-values", 0, r(b"Key: AAAAAAAAAAAAAAAAAAAAAA==", b"Key: \t AAAAAAAAAAAAAAAAAAAAAA== \t")
    yield "valid-absolute-target", 0, r(b"GET / ", b"GET http://h/a/b?x=1?y ")
    yield "valid-many-protocols", 0, r(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: a,,b , \xff, c\r\nSec-WebSocket-Protocol: d\r\n\r\n")
    yield "valid-extensions-quoted", 0, r(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; client_max_window_bits=\"12\", x; q=\"a\\\"b;c,d\"\r\n\r\n")
    yield "valid-extensions-junk", 0, r(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: ;=\",;=\",, ;a, b=;c, d; e=\"\r\n\r\n")
    yield "plain-http-get", 0, b"GET /index.html HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"
    yield "post", 0, r(b"GET", b"POST")
    yield "http-1.0", 0, r(b"HTTP/1.1", b"HTTP/1.0")
    yield "http-2.0", 0, r(b"HTTP/1.1", b"HTTP/2.0")
    yield "no-host", 0, r(b"Host: h\r\n", b"")
    yield "two-hosts", 0, r(b"Host: h\r\n", b"Host: h\r\nhost: i\r\n")
    yield "upgrade-h2c", 0, r(b"Upgrade: websocket", b"Upgrade: h2c")
    yield "upgrade-list", 0, r(b"Upgrade: websocket", b"Upgrade: h2c, WebSocket")
    yield "no-upgrade", 0, r(b"Upgrade: websocket\r\n", b"")
    yield "connection-upgraded", 0, r(b"Connection: Upgrade", b"Connection: Upgraded")
    yield "connection-keep-alive", 0, r(b"Connection: Upgrade", b"Connection: keep-alive")
    yield "key-short", 0, r(b"AAAAAAAAAAAAAAAAAAAAAA==", b"c2hvcnQ=")
    yield "key-not-base64", 0, r(b"AAAAAAAAAAAAAAAAAAAAAA==", b"!!notbase64!!notbase64!!")
    yield "key-unpadded", 0, r(b"AAAAAAAAAAAAAAAAAAAAAA==", b"AAAAAAAAAAAAAAAAAAAAAA")
    yield "key-trailing-bits", 0, r(b"AAAAAAAAAAAAAAAAAAAAAA==", b"AAAAAAAAAAAAAAAAAAAAAB==")
    yield "key-17-bytes", 0, r(b"AAAAAAAAAAAAAAAAAAAAAA==", b"AAAAAAAAAAAAAAAAAAAAAAA=")
    yield "key-long", 0, r(b"AAAAAAAAAAAAAAAAAAAAAA==", b"A" * 200)
    yield "key-twice", 0, r(b"\r\n\r\n", b"\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n")
    yield "no-key", 0, r(b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n", b"")
    yield "version-8", 0, r(b"Version: 13", b"Version: 8")
    yield "version-twice", 0, r(b"Version: 13\r\n", b"Version: 13\r\nSec-WebSocket-Version: 13\r\n")
    yield "no-version", 0, r(b"Sec-WebSocket-Version: 13\r\n", b"")
    yield "garbage-request-line", 0, b"HELLO\r\n\r\n"
    yield "header-without-colon", 0, r(b"Host: h", b"Host h")
    yield "space-before-colon", 0, r(b"Host: h", b"Host : h")
    yield "obs-fold", 0, r(b"Host: h\r\n", b"Host: h\r\n  folded\r\n")
    yield "control-char-in-value", 0, r(b"Host: h", b"Host: h\x01")
    yield "non-ascii-value", 0, r(b"Host: h", b"Host: h\xc3\xa9\xff")
    yield "non-ascii-path", 0, r(b"GET / ", b"GET /\xc3\xa9\xff ")
    yield "leading-blank-line", 0, b"\r\n" + MINIMAL
    yield "only-terminator", 0, b"\r\n"
    yield "only-lf", 0, b"\n"
    yield "trickled-cr-lf-cr", 0, b"GET / HTTP/1.1\r\nHost: h\r\n\r"
    yield "terminator-cr-lf-lf", 0, b"GET / HTTP/1.1\r\nHost: h\r\n\n"
    yield "terminator-lf-cr-lf", 0, b"GET / HTTP/1.1\nHost: h\n\r\n"
    yield "bare-cr-lines", 0, b"GET / HTTP/1.1\rHost: h\r\r\n\r\n"
    yield "incomplete", 0, MINIMAL[:-2]
    many = b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(59))
    yield "64-headers", 0, r(b"\r\n\r\n", b"\r\n" + many + b"\r\n")
    yield "65-headers", 0, r(b"\r\n\r\n", b"\r\n" + many + b"X-Over: 1\r\n\r\n")
    yield "headers-limit-2", 0x18, b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\n\r\n"
    yield "headers-limit-2-over", 0x18, b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n"
    yield "headers-limit-0", 0x08, b"GET / HTTP/1.1\r\n\r\n"
    yield "oversized", 0, r(b"Host: h", b"Host: " + b"h" * 8200)
    yield "exactly-8kib", 0, r(b"Host: h", b"Host: " + b"h" * (8192 - len(MINIMAL) + 1))
    yield "bytes-limit-64", 0x04, MINIMAL
    yield "bytes-limit-20", 0x03, b"GET / HTTP/1.1\n\n"
    yield "bytes-limit-0", 0x01, b"G"
    yield "options-asterisk", 0, b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"
    for config in (0x2D, 0xFF, 0x80):
        yield f"valid-config-{config:02x}", config, GOOD


def handshake_seeds():
    for name, config, head in handshake_heads():
        write("handshake_request", name, bytes([config]) + head)


ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # of harness.rs's RESPONSE_KEY
SWITCHING = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n\r\n")


def response_heads():
    """(name, config, offered, response): see check_handshake_response in harness.rs."""
    def w(extra, head=SWITCHING):
        return head.replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n\r\n")

    yield "good", 0, 0, SWITCHING
    yield "good-then-frame", 0, 0, SWITCHING + b"\x81\x02hi"
    yield "good-lf-only", 0, 0, SWITCHING.replace(b"\r\n", b"\n")
    yield "protocol-offered", 0, 1, w(b"Sec-WebSocket-Protocol: superchat")
    yield "protocol-unoffered", 0, 1, w(b"Sec-WebSocket-Protocol: other")
    yield "protocol-two", 0, 1, w(b"Sec-WebSocket-Protocol: chat, superchat")
    yield "protocol-not-asked", 0, 0, w(b"Sec-WebSocket-Protocol: chat")
    yield "deflate-plain", 0, 2, w(b"Sec-WebSocket-Extensions: permessage-deflate")
    yield "deflate-params", 0, 2, w(b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
                                     b"client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9")
    yield "deflate-low-memory-ok", 0, 4, w(b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
                                            b"server_max_window_bits=9")
    yield "deflate-low-memory-ignored", 0, 4, w(b"Sec-WebSocket-Extensions: permessage-deflate")
    yield "deflate-window-8", 0, 2, w(b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=8")
    yield "deflate-twice", 0, 2, w(b"Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate")
    yield "deflate-unknown-param", 0, 2, w(b"Sec-WebSocket-Extensions: permessage-deflate; x=1")
    yield "deflate-quoted", 0, 2, w(b'Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits="12"')
    yield "deflate-not-offered", 0, 0, w(b"Sec-WebSocket-Extensions: permessage-deflate")
    yield "extension-junk", 0, 2, w(b"Sec-WebSocket-Extensions: ;;=,\"")
    yield "extension-other", 0, 2, w(b"Sec-WebSocket-Extensions: x-webkit-deflate-frame")
    yield "accept-wrong", 0, 0, SWITCHING.replace(ACCEPT, b"AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    yield "accept-twice", 0, 0, w(b"Sec-WebSocket-Accept: " + ACCEPT)
    yield "no-accept", 0, 0, SWITCHING.replace(b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n", b"")
    yield "no-upgrade", 0, 0, SWITCHING.replace(b"Upgrade: websocket\r\n", b"")
    yield "connection-close", 0, 0, SWITCHING.replace(b"Connection: Upgrade", b"Connection: close")
    yield "status-403-body", 0, 0, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 12\r\n\r\nmembers only"
    yield "status-200", 0, 0, b"HTTP/1.1 200 OK\r\n\r\n"
    yield "status-garbage", 0, 0, b"HTTP/1.1 1x1 Hm\r\n\r\n"
    yield "http-1.0", 0, 0, SWITCHING.replace(b"HTTP/1.1", b"HTTP/1.0")
    yield "not-http", 0, 0, b"SSH-2.0-OpenSSH\r\n\r\n"
    yield "incomplete", 0, 0, SWITCHING[:-2]
    many = b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(61))
    yield "64-headers", 0, 0, w(many.rstrip(b"\r\n"))
    yield "65-headers", 0, 0, w(many + b"X-Over: 1")
    yield "oversized", 0, 0, w(b"X-Big: " + b"b" * 8200)
    yield "bytes-limit-64", 0x04, 0, SWITCHING
    yield "headers-limit-2", 0x18, 0, SWITCHING
    for config in (0x2D, 0xFF, 0x80):
        yield f"valid-config-{config:02x}", config, 7, SWITCHING


def response_seeds():
    for name, config, offered, head in response_heads():
        write("handshake_response", name, bytes([config, offered]) + head)


def deflate_messages(messages, wbits=15, takeover=True):
    """Raw-deflate each message as permessage-deflate sends it: sync flush, tail stripped."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = []
    for m in messages:
        if not takeover:
            comp = zlib.compressobj(6, zlib.DEFLATED, -wbits)
        data = comp.compress(m) + comp.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        out.append(data[:-4])
    return out


def inflate_seeds():
    """[config, (16-bit length, compressed message)...]; see inflate_config in harness.rs."""
    def seed(name, config, payloads):
        write("inflate", name, bytes([config]) + b"".join(len(p).to_bytes(2, "big") + p for p in payloads))

    json = b'{"event":"chat","data":{"room":"lobby","text":"hello there"}}'
    seed("json-takeover", 0x18, deflate_messages([json, json, json]))
    seed("json-no-takeover", 0x38, deflate_messages([json, json], takeover=False))
    seed("window-9", 0x00, deflate_messages([json * 8, json * 8], wbits=9))
    seed("empty-message", 0x18, deflate_messages([b"", b"x"]))
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    seed("final-block", 0x18, [final.compress(json) + final.flush(zlib.Z_FINISH)] * 2)
    seed("bomb-over-100", 0x1A, deflate_messages([b"\0" * 100_000]))
    seed("bomb-over-0", 0x19, deflate_messages([b"a"]))
    seed("at-limit-100", 0x1A, deflate_messages([b"z" * 100, b"z" * 101]))
    seed("bomb-1mib", 0x18, deflate_messages([b"\0" * (2 << 20)]))
    seed("no-limit", 0x1B, deflate_messages([b"\0" * 100_000, json]))
    seed("corrupt", 0x18, [b"\xff\xff\xff", b"\x07"])
    seed("stored-block", 0x18, [b"\x00\x03\x00\xfc\xffabc"])
    seed("data-after-final", 0x18, [b"\x03\x00garbage"])


def envelope_texts():
    """(name, text): one event-layer text message each; see check_envelope in harness.rs."""
    yield "event", '[0,"/chat/say",{"text":"hi"}]'
    yield "event-no-data", '[0,"/ping"]'
    yield "request", '[1,7,"/echo","abc"]'
    yield "request-no-data", '[1,7,"/echo"]'
    yield "reply", '[2,7,{"ok":true}]'
    yield "reply-no-data", '[2,7]'
    yield "error", '[3,7,{"code":"no_handler","message":"no \\"handler\\""}]'
    yield "unknown-type", '[9,"later",{"x":[1,2]}]'
    yield "unknown-type-garbage-after", '[4,-1,1e3,"\\u0000"]'
    for bad in ["0", "1", "9007199254740991", "9007199254740992", "18446744073709551616",
                "-1", "-0", "1.0", "1e3", "1E3", "01", "00", '"7"', "null", "true", "[1]"]:
        yield f"request-id-{bad}", f'[1,{bad},"/x",null]'
        yield f"reply-id-{bad}", f'[2,{bad},null]'
    yield "type-1.0", '[1.0,5,"/x"]'
    yield "type-negative", '[-1,"/x"]'
    yield "type-huge", '[18446744073709551615,"/x"]'
    yield "type-string", '["0","/x"]'
    yield "name-escaped-slash", '[0,"\\/ping"]'
    yield "name-unicode-escape", '[1,5,"\\u002fping"]'
    yield "name-escaped-quote", '[1,5,"/a\\"b"]'
    yield "name-space", '[1,5,"/a b"]'
    yield "name-empty", '[0,""]'
    yield "name-non-ascii", '[1,5,"/\u00e9"]'
    yield "name-control", '[0,"/\u0001"]'
    yield "name-number", '[1,5,42]'
    yield "name-missing", '[1,5]'
    yield "data-escaped-strings", '[1,3,"/e","\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\\ud800"]'
    yield "data-nested", '[0,"/n",{"a":[1,{"b":[[],{}]},"]]}}"],"c":{"d":null}}]'
    yield "data-deep-32", '[0,"/d",' + "[" * 31 + "]" * 31 + "]"
    yield "data-deep-127", '[0,"/d",' + "[" * 126 + "]" * 126 + "]"
    yield "data-deep-128", '[0,"/d",' + "[" * 127 + "]" * 127 + "]"
    yield "data-numbers", '[2,1,[0,-0,1.5e-7,1E+2,1e400,-1e400,123456789012345678901234567890]]'
    yield "data-bad-number", '[2,1,01]'
    yield "data-literals", '[2,1,[true,false,null]]'
    yield "trailing-elements", '[0,"/a",1,"extra",{"more":[]}]'
    yield "trailing-comma", '[1,7,"/e",]'
    yield "trailing-text", '[0,"/x"] trailing'
    yield "trailing-bracket", '[0,"/e",1]]'
    yield "unclosed", '[0,"/e",[1]'
    yield "whitespace", ' \t\r\n[ 1 ,\n7 , "/e" ,\t{ "a" : 1 } ]\n '
    yield "whitespace-compact-edges", '[0,"/e", 1 ]'
    yield "empty-text", ''
    yield "empty-array", '[]'
    yield "object", '{"type":0}'
    yield "bare-number", '1'
    yield "truncated-request", '[1,5,"/x",{"a":'
    yield "truncated-request-spaced", ' [ 1 , 42 ,"/x",{'
    yield "truncated-id-fraction", '[1,5.5,"/x",{'
    yield "truncated-id-exponent", '[1,5e3,"/x",{'
    yield "truncated-id-letter", '[1,5x'
    yield "truncated-nbsp", '\u00a0[1,5,"/x",{'
    yield "truncated-form-feed", '\f[1,5,"/x",{'
    yield "truncated-id-17-digits", '[1,12345678901234567,"/x",{'
    yield "bom", '\ufeff[0,"/x"]'
    yield "invalid-utf8", b'[0,"/\xff"]'


def envelope_seeds():
    for name, text in envelope_texts():
        name = "".join(c if c.isalnum() or c in ".-" else "_" for c in name)
        write("envelope", name, text if isinstance(text, bytes) else text.encode())


def binary_seeds():
    """emitws.v2 binary envelopes (PROTOCOL.md §10), one frame each; see check_binary in binary_check.rs."""
    seeds = {
        "event": b"\x00\x02/x",
        "event-payload": b"\x00\x05/echo\xde\xad\xbe\xef",
        "request-300": b"\x01\xac\x02\x03/up\xde\xad\xbe\xef",
        "request-max-id": b"\x01\xff\xff\xff\xff\xff\xff\xff\x0f\x02/y",
        "request-id-too-big": b"\x01\xff\xff\xff\xff\xff\xff\xff\x10\x02/y",
        "request-id-9-bytes": b"\x01" + b"\x80" * 8 + b"\x01\x02/y",
        "request-id-long-form": b"\x01\x81\x00\x02/y",
        "request-id-zero": b"\x01\x00\x02/y",
        "request-no-name": b"\x01\x07",
        "request-empty-name": b"\x01\x07\x00",
        "request-name-past-end": b"\x01\x07\x09/",
        "request-name-not-utf8": b"\x01\x07\x01\xc3",
        "request-utf8-name": "\x01\x07\x03é/".encode(),
        "reply": b"\x02\x05\x00\xff",
        "reply-truncated-id": b"\x02\x80",
        "error": b'\x03\x05{"code":"x","message":"y"}',
        "event-at": b'\x04\x02/x\x25{"room":"#r","offset":3,"epoch":"ab"}\xde\xad',
        "event-at-no-position": b"\x04\x02/x",
        "event-at-position-past-end": b"\x04\x02/x\x09{",
        "reserved-type": b"\x05\x01\x02",
        "reserved-ff": b"\xff",
        "empty": b"",
    }
    for name, data in seeds.items():
        write("binary", name, data)


if __name__ == "__main__":
    binary_seeds()
    envelope_seeds()
    inflate_seeds()
    decoder_seeds("server_decoder", True)
    decoder_seeds("client_decoder", False)
    handshake_seeds()
    response_seeds()
    for target in sorted(os.listdir(ROOT)):
        files = os.listdir(os.path.join(ROOT, target))
        size = sum(os.path.getsize(os.path.join(ROOT, target, f)) for f in files)
        print(f"{target}: {len(files)} files, {size} bytes")
