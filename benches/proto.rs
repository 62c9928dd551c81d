//! Benchmarks of the sans-IO protocol core.
//!
//! Run with `cargo bench --bench proto`; add `-- GROUP` to run one group
//! (`header_parse`, `unmask`, `unmask_scalar`, `utf8`, `decode`, `handshake`, `encode`,
//! `deflate`).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use emitws::proto::deflate::{accept_offer, Compressor, Decompressor, DeflateConfig};
use emitws::proto::handshake::server::{parse_extensions, RequestLimits, RequestReader};
use emitws::proto::{
    apply_mask, encode_frame, Decoder, Event, FrameHeader, Limits, OpCode, Role, Utf8Validator, MAX_HEADER_LEN,
};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Payload sizes for the masking benchmarks.
const MASK_SIZES: [(usize, &str); 4] = [(128, "128B"), (1 << 10, "1KiB"), (16 << 10, "16KiB"), (1 << 20, "1MiB")];

/// Deterministic, non-constant payload bytes.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// A masked binary header with the given payload length, encoded.
fn masked_header(payload_len: u64) -> Vec<u8> {
    let header = FrameHeader { fin: true, rsv: 0, opcode: OpCode::Binary, mask: Some(KEY), payload_len };
    let mut out = [0; MAX_HEADER_LEN];
    let len = header.encode(&mut out);
    out[..len].to_vec()
}

fn header_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("header_parse");
    group.throughput(Throughput::Elements(1));
    // The three length forms: 7-bit (2-byte base), 16-bit (4-byte) and 64-bit (10-byte),
    // each followed by the 4-byte masking key.
    for (name, payload_len) in [("2-byte", 20), ("4-byte", 16 << 10), ("10-byte", 1 << 20)] {
        let bytes = masked_header(payload_len);
        let (parsed, _) = FrameHeader::parse(&bytes).unwrap().unwrap();
        assert_eq!(parsed.payload_len, payload_len);
        group.bench_function(BenchmarkId::from_parameter(name), |b| b.iter(|| FrameHeader::parse(black_box(&bytes))));
    }
    group.finish();
}

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for (size, name) in MASK_SIZES {
        let mut buf = payload(size);
        group.throughput(Throughput::Bytes(size as u64));
        // Masking is its own inverse, so the buffer can be reused in place.
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), 0))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("unmask_scalar");
    for (size, name) in MASK_SIZES {
        let mut buf = payload(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| unmask_bytewise(black_box(&mut buf), black_box(KEY)))
        });
    }
    group.finish();
}

/// The naive byte-at-a-time XOR, for `unmask_scalar` to compare `apply_mask` with.
fn unmask_bytewise(buf: &mut [u8], key: [u8; 4]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

/// 16 KiB of ASCII text.
fn ascii_text() -> Vec<u8> {
    let line = "The quick brown fox jumps over the lazy dog; 0123456789 {\"id\": 42}\n";
    line.bytes().cycle().take(16 << 10).collect()
}

/// 16 KiB of text mixing ASCII with 2-, 3- and 4-byte characters.
fn mixed_text() -> Vec<u8> {
    let line = "Hello, κόσμε! Привет, мир. こんにちは世界 — €42 😀🚀 déjà vu; ";
    let mut text = line.repeat((16 << 10) / line.len() + 1);
    let mut end = 16 << 10;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    while text.len() < 16 << 10 {
        text.push(' ');
    }
    text.into_bytes()
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    for (name, text) in [("ascii", ascii_text()), ("mixed", mixed_text())] {
        assert_eq!(text.len(), 16 << 10);
        assert!(std::str::from_utf8(&text).is_ok());
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(BenchmarkId::new("validator_feed", name), |b| {
            b.iter(|| {
                let mut validator = Utf8Validator::default();
                validator.feed(black_box(&text)).unwrap();
                validator.finish().unwrap();
            })
        });
        group.bench_function(BenchmarkId::new("std_from_utf8", name), |b| {
            b.iter(|| std::str::from_utf8(black_box(&text)).is_ok())
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("decode");

    let mut text_frame = Vec::new();
    encode_frame(&mut text_frame, OpCode::Text, true, Some(KEY), b"{\"op\":\"ping\",\"n\":7}\n");
    let mut binary_frame = Vec::new();
    encode_frame(&mut binary_frame, OpCode::Binary, true, Some(KEY), &payload(16 << 10));

    // Decoding unmasks in place, so each iteration gets a fresh copy of the
    // masked frame, made (and dropped) outside the timed part. SmallInput makes
    // copies in batches of thousands: fine for 26 bytes, but 16 KiB copies in
    // such a batch fall out of cache, which more than doubles the time measured.
    // One copy per iteration stays hot, as a just-read socket buffer is; the
    // price is ~25 ns of timer overhead per iteration.
    let cases = [
        ("text_20B", &text_frame, 20, BatchSize::SmallInput),
        ("binary_16KiB", &binary_frame, 16 << 10, BatchSize::PerIteration),
    ];
    for (name, frame, payload_len, batch_size) in cases {
        // Check once, outside timing, that the frame decodes to one whole message.
        let mut input = frame.clone();
        let mut decoder = Decoder::new(Role::Server);
        let decoded = decoder.decode(&mut input, &limits).unwrap().event;
        assert!(matches!(decoded, Some(Event::Message(m)) if m.as_bytes().len() == payload_len));

        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_batched_ref(
                || (Decoder::new(Role::Server), frame.clone()),
                |(decoder, input)| {
                    let decoded = decoder.decode(black_box(input), &limits).unwrap();
                    black_box(decoded.event);
                },
                batch_size,
            )
        });
    }
    group.finish();
}

/// An upgrade request as a current desktop browser sends it.
const BROWSER_REQUEST: &[u8] = b"GET /chat?room=lobby HTTP/1.1\r\n\
Host: example.com:8080\r\n\
Connection: Upgrade\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

fn handshake(c: &mut Criterion) {
    let limits = RequestLimits::default();
    let parse = |head: &[u8]| {
        let mut reader = RequestReader::default();
        let used = reader.push(head, &limits).unwrap();
        assert_eq!(used, Some(head.len()));
        let request = reader.request(&limits).unwrap();
        request.websocket().unwrap().accept_key()
    };
    assert_eq!(parse(BROWSER_REQUEST), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("browser_request", format!("{}B", BROWSER_REQUEST.len())), |b| {
        b.iter(|| parse(black_box(BROWSER_REQUEST)))
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + (16 << 10));
    for (name, opcode, data) in
        [("text_20B", OpCode::Text, payload(20)), ("binary_16KiB", OpCode::Binary, payload(16 << 10))]
    {
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                out.clear();
                encode_frame(&mut out, opcode, true, None, black_box(&data));
                black_box(&out);
            })
        });
    }
    group.finish();
}

/// JSON messages like the event layer sends: 64 different chat events, and
/// 64 different lists of 20 events. Benchmarks cycle through them, so context
/// takeover sees realistic repetition rather than one message over and over.
fn json_messages() -> [(&'static str, Vec<Vec<u8>>); 2] {
    let event = |i: usize| {
        format!(
            r#"{{"event":"chat:message","data":{{"room":"room{}","user":"user{}","text":"message {} says {}","ts":{}}}}}"#,
            i % 7,
            i * 7919 % 1000,
            i,
            ["hello", "how are you?", "fine, thanks", "see you later"][i % 4],
            1_700_000_000 + i * 37
        )
    };
    let events = (0..64).map(|i| event(i).into_bytes()).collect();
    let lists = (0..64)
        .map(|i| format!("[{}]", (0..20).map(|j| event(i * 20 + j)).collect::<Vec<_>>().join(",")).into_bytes())
        .collect();
    [("event_json", events), ("list_json", lists)]
}

fn deflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate");
    let offer = parse_extensions(b"permessage-deflate; client_max_window_bits");
    for (setting, config) in [("default", DeflateConfig::default()), ("low_memory", DeflateConfig::low_memory())] {
        let agreement = accept_offer(&offer, &config).expect("the offer is acceptable");
        for (name, messages) in json_messages() {
            let total: usize = messages.iter().map(Vec::len).sum();
            group.throughput(Throughput::Bytes((total / messages.len()) as u64));
            // The wire form of every message, compressed in order as a connection would.
            let mut compressor = Compressor::new(&agreement, Role::Server, &config);
            let wire: Vec<Vec<u8>> = messages
                .iter()
                .map(|message| {
                    let mut out = Vec::new();
                    compressor.compress(message, &mut out);
                    out
                })
                .collect();
            let compressed: usize = wire.iter().map(Vec::len).sum();
            eprintln!("deflate {setting} {name}: {total} bytes -> {compressed} bytes on the wire");
            group.bench_function(BenchmarkId::new(format!("compress_{setting}"), name), |b| {
                let mut out = Vec::with_capacity(8 << 10);
                let mut next = messages.iter().cycle();
                b.iter(|| {
                    out.clear();
                    compressor.compress(black_box(next.next().expect("cycles")), &mut out);
                    black_box(&out);
                })
            });
            group.throughput(Throughput::Bytes(total as u64));
            group.bench_function(BenchmarkId::new(format!("inflate_{setting}"), name), |b| {
                let mut out = Vec::with_capacity(64 << 10);
                // Each pass over the stream starts from a fresh context, as the sender's did.
                b.iter_batched_ref(
                    || Decompressor::new(&agreement, Role::Client),
                    |decompressor| {
                        for message in &wire {
                            out.clear();
                            decompressor.decompress(black_box(message), &mut out, 1 << 20).expect("valid input");
                        }
                        black_box(&out);
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, header_parse, unmask, utf8, decode, handshake, encode, deflate);
criterion_main!(benches);
