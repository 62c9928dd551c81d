//! The helper modules of a test of apps over real sockets that also runs a
//! file of clients/js/test under node and, with feature `redis`, two nodes
//! over a real redis-server: the raw client ([`common`], common/mod.rs),
//! the app client (`app_client`, common/app.rs), node (`node`,
//! common/node.rs), `redis_server` (common/redis.rs) and `two_nodes`
//! (common/two_nodes.rs). A test file includes them all at once, under the
//! names the helpers expect at its root (`crate::app_client`, …):
//!
//! ```ignore
//! #[path = "common/app_includes.rs"]
//! mod app_includes;
//! use app_includes::*;
//! ```

#[path = "mod.rs"]
pub mod common;

#[path = "app.rs"]
pub mod app_client;

#[path = "node.rs"]
pub mod node;

#[cfg(feature = "redis")]
#[path = "redis.rs"]
pub mod redis_server;

#[cfg(feature = "redis")]
#[path = "two_nodes.rs"]
pub mod two_nodes;
