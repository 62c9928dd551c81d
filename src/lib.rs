//! emitws: a strict, fast WebSocket engine.
#![deny(missing_docs)]

pub mod proto;
pub mod runtime;
