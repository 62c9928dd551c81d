/// Whether the user left this part of the suite out on purpose
/// (`EMITWS_SKIP`, see scripts/test-all.sh). A part that is not left out
/// fails when it cannot run.
pub fn left_out(part: &str) -> bool {
    std::env::var("EMITWS_SKIP").is_ok_and(|parts| parts.split([' ', ',']).any(|p| p == part))
}
