//! The link's background thread for work a worker must not wait for:
//! claims and reads that answer later, through a callback. It owns its own
//! connection (the writer's pipeline and the blocking queries' connection
//! are not held up by it), opens it when a job comes, and opens it again
//! after an error.

use std::sync::mpsc::Receiver;
use std::sync::Weak;

use redis::RedisError;

use super::routed::RedisConn;

use super::link::{gone, LinkState, ThreadCtx};
use super::outage::Outage;

/// A piece of background work: it gets the connection, or the error that
/// kept the thread from opening one, and answers through whatever it holds.
/// An error it returns closes the connection (the next job opens another).
pub(crate) type Job = Box<dyn FnOnce(Result<&mut RedisConn, &RedisError>) -> Result<(), RedisError> + Send>;

/// The thread's loop: runs the jobs in the order they come, until the link
/// stops or is dropped. A job queued when Redis is down is run with the
/// error at once, so that its caller is answered and not left waiting.
pub(super) fn run(link: Weak<LinkState>, queue: Receiver<Job>, (connector, options, node): ThreadCtx) {
    let mut conn: Option<RedisConn> = None;
    let mut generation = 0;
    let mut outage = Outage::new("reader", &node);
    while let Ok(job) = queue.recv() {
        if gone(&link) {
            return;
        }
        if generation != connector.generation() {
            conn = None; // The master moved (Sentinel): this one is not it any more.
        }
        if conn.is_none() {
            match connector.open(options.query_timeout) {
                Ok((c, opened_under)) => {
                    outage.recovered();
                    conn = Some(c);
                    generation = opened_under;
                }
                Err(e) => {
                    outage.failed(&e);
                    let _ = job(Err(&e));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = job(Ok(c)) {
            outage.failed(&e);
            conn = None;
        }
    }
}
