//! SIGINT and SIGTERM end a peer server at once. Included by `serve.rs` and
//! by the servers that do not use it, with `#[path]`.

/// Makes SIGINT and SIGTERM end the process at once with exit status 0.
///
/// Installed explicitly rather than relying on the default disposition
/// because a server started as a background job (`server &`) from a
/// non-interactive shell inherits SIGINT as *ignored*. Done with a plain
/// signal handler that calls `_exit(0)` rather than a tokio signal future:
/// connection tasks run `unconstrained`, so under a continuous flood the
/// runtime might not poll a signal future until the load stops. Called first
/// thing, so nothing can signal before it is in place.
pub fn exit_on_sigint_sigterm() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        // SAFETY: the action only calls `_exit`, which is async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, || signal_hook::low_level::exit(0)) }
            .expect("install signal handler");
    }
}
