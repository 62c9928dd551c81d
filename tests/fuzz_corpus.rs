//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same checks the fuzz targets run, so every seed and every crash found by
//! the fuzzer stays a regression test under a plain `cargo test`.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Runs `check` on every file in `fuzz/corpus/<target>/`, reporting all failures at once.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable corpus directory").path())
        .filter(|path| path.is_file() && !path.file_name().is_some_and(|name| name.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{} of {} {target} inputs failed:\n{}", failed.len(), files.len(), failed.join("\n"));
}

#[test]
fn server_decoder_corpus() {
    replay("server_decoder", harness::check_server_decoder);
}

#[test]
fn client_decoder_corpus() {
    replay("client_decoder", harness::check_client_decoder);
}

#[test]
fn handshake_request_corpus() {
    replay("handshake_request", harness::check_handshake_request);
}

#[test]
fn inflate_corpus() {
    replay("inflate", harness::check_inflate);
}

#[test]
fn handshake_response_corpus() {
    replay("handshake_response", harness::check_handshake_response);
}

#[test]
#[cfg(feature = "app")]
fn envelope_corpus() {
    replay("envelope", harness::check_envelope);
}

#[test]
#[cfg(feature = "app")]
fn binary_corpus() {
    replay("binary", harness::check_binary);
}
