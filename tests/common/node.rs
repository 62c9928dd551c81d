//! Runs a file of clients/js/test under `node --test` against servers a Rust
//! test started. Without node the test fails, naming it, unless the
//! JavaScript tests were left out on purpose (`EMITWS_SKIP=js`).

use std::process::Command;

include!("left_out.rs");

/// Runs `clients/js/test/<file>` with `env` set; every test in it must run
/// and pass (none skipped). Returns false when the JavaScript tests were
/// left out and nothing ran.
pub fn run_node_tests(file: &str, env: &[(&str, String)]) -> bool {
    if Command::new("node").arg("--version").output().is_err() {
        assert!(
            left_out("js"),
            "node is not installed (Node.js 20 or later; scripts/install-deps.sh names it): \
             install it, or leave the JavaScript tests out with EMITWS_SKIP=js"
        );
        eprintln!("\n*** EMITWS_SKIP=js: not running {file} ***\n");
        return false;
    }
    let output = Command::new("node")
        .args(["--experimental-websocket", "--no-warnings", "--test", "--test-timeout=30000"])
        .arg(format!("{}/clients/js/test/{file}", env!("CARGO_MANIFEST_DIR")))
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("run node");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "node --test failed:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("# fail 0") && report.contains("# skipped 0") && !report.contains("# pass 0"), "{report}");
    true
}
