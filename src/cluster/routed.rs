//! [`RedisConn`]: what every thread of a link talks to Redis through, one
//! server or a Redis Cluster alike. To a Redis Cluster, each command goes
//! to the master serving its key's slot (through a [`Router`]), so the
//! link's code sends the same commands, pipelines and scripts to both.
//!
//! The key of a command is found from its encoded form, as Redis would:
//! the first key of a script (`EVAL`, `EVALSHA`: every key it declares is
//! of one slot), the hash tag of a `SCAN`'s `MATCH` pattern (the link only
//! scans one node's keys, all of one slot), none for a command about no
//! key (`SCRIPT`, `TIME`, `PING`: any master answers; in a pipeline, every
//! master of the pipeline gets it), else the first argument. A pipeline
//! goes to each master as one pipeline of its commands, in their order; a
//! transaction (`MULTI` … `EXEC`) whole to the master of its first key
//! (its keys must share a slot, as Redis requires).

use redis::{Cmd, Connection, ConnectionLike, ErrorKind, RedisError, RedisResult, Value};

use super::router::Router;

/// A connection to one Redis server, or to a Redis Cluster's masters.
pub(crate) enum RedisConn {
    /// One server: a plain connection (also a Sentinel group's master).
    One(Connection),
    /// A Redis Cluster: a connection per master, by slot.
    Cluster(Router),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            RedisConn::One(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(router) => {
                let args = one_command(&mut &cmd[..])?;
                let key = routing_key(&args).unwrap_or_default().to_vec();
                router.on_key(&key, |conn| conn.req_packed_command(cmd))
            }
        }
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let router = match self {
            RedisConn::One(conn) => return conn.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(router) => router,
        };
        let mut rest = cmd;
        let mut commands = Vec::new();
        while !rest.is_empty() {
            commands.push(one_command(&mut rest)?);
        }
        if commands.first().is_some_and(|args| args[0].eq_ignore_ascii_case(b"MULTI")) {
            let key = commands.iter().find_map(|args| routing_key(args)).unwrap_or_default().to_vec();
            return router.on_key(&key, |conn| conn.req_packed_commands(cmd, offset, count));
        }
        let routed: Vec<(Option<Vec<u8>>, Cmd)> = commands
            .iter()
            .map(|args| {
                let mut command = redis::cmd(&String::from_utf8_lossy(args[0]));
                for arg in &args[1..] {
                    command.arg(*arg);
                }
                (routing_key(args).map(<[u8]>::to_vec), command)
            })
            .collect();
        // As one connection's pipeline answers: the first error fails it.
        router.run_all(&routed)?.into_iter().skip(offset).take(count).collect()
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::One(conn) => conn.get_db(),
            RedisConn::Cluster(_) => 0, // a Redis Cluster has database 0 only
        }
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        match self {
            RedisConn::One(conn) => conn.is_open(),
            RedisConn::Cluster(_) => true, // each master's is opened again when it fails
        }
    }
}

/// The key a command is routed by (see the module's docs); None for a
/// command about no key.
fn routing_key<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
    let name = args[0].to_ascii_uppercase();
    match &name[..] {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let keys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if keys == 0 {
                None
            } else {
                args.get(3).copied()
            }
        }
        b"SCAN" => args.iter().position(|a| a.eq_ignore_ascii_case(b"MATCH")).and_then(|at| args.get(at + 1)).copied(),
        b"PING" | b"ECHO" | b"TIME" | b"SCRIPT" | b"FUNCTION" | b"MULTI" | b"EXEC" | b"DISCARD" | b"INFO" | b"ROLE"
        | b"CLUSTER" | b"CLIENT" | b"HELLO" | b"AUTH" | b"SELECT" | b"DBSIZE" | b"PUBLISH" | b"CONFIG" => None,
        _ => args.get(1).copied(),
    }
}

/// The arguments of the first command encoded in `packed` (a RESP array of
/// bulk strings, as `Cmd` writes them), which is advanced past it.
fn one_command<'a>(packed: &mut &'a [u8]) -> RedisResult<Vec<&'a [u8]>> {
    let count = number_line(packed, b'*')?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let len = number_line(packed, b'$')?;
        if packed.len() < len + 2 {
            return Err(malformed());
        }
        args.push(&packed[..len]);
        *packed = &packed[len + 2..];
    }
    if args.is_empty() {
        return Err(malformed());
    }
    Ok(args)
}

/// Reads `<mark><number>\r\n` off the front of `packed`.
fn number_line(packed: &mut &[u8], mark: u8) -> RedisResult<usize> {
    let end = packed.iter().position(|&b| b == b'\r').ok_or_else(malformed)?;
    if packed.first() != Some(&mark) || packed.get(end + 1) != Some(&b'\n') {
        return Err(malformed());
    }
    let number = std::str::from_utf8(&packed[1..end]).ok().and_then(|n| n.parse().ok()).ok_or_else(malformed)?;
    *packed = &packed[end + 2..];
    Ok(number)
}

fn malformed() -> RedisError {
    RedisError::from((ErrorKind::Client, "a command to route is not an array of bulk strings"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(cmd: &Cmd) -> Vec<Vec<u8>> {
        let packed = cmd.get_packed_command();
        one_command(&mut &packed[..]).unwrap().into_iter().map(<[u8]>::to_vec).collect()
    }

    fn key_of(cmd: &Cmd) -> Option<Vec<u8>> {
        let args = args_of(cmd);
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        routing_key(&args).map(<[u8]>::to_vec)
    }

    #[test]
    fn commands_are_routed_by_their_key() {
        assert_eq!(key_of(redis::cmd("SADD").arg("P:n:{a}:sockets").arg(1)), Some(b"P:n:{a}:sockets".to_vec()));
        let script = redis::cmd("EVAL").arg("return 1").arg(2).arg("k1").arg("k2").arg("v").clone();
        assert_eq!(key_of(&script), Some(b"k1".to_vec()));
        assert_eq!(key_of(redis::cmd("EVALSHA").arg("abc").arg(0).arg("v")), None);
        assert_eq!(key_of(redis::cmd("SCAN").arg(0).arg("MATCH").arg("P:n:{a}:*")), Some(b"P:n:{a}:*".to_vec()));
        assert_eq!(key_of(redis::cmd("SCRIPT").arg("LOAD").arg("return 1")), None);
        assert_eq!(key_of(redis::cmd("spublish").arg("P:g:{#r}").arg("x")), Some(b"P:g:{#r}".to_vec()));
    }

    #[test]
    fn packed_pipelines_split_into_their_commands() {
        let mut pipe = redis::pipe();
        pipe.set("a", "x\r\ny").ignore().get("b").cmd("PING");
        let packed = pipe.get_packed_pipeline();
        let mut rest = &packed[..];
        let mut names = Vec::new();
        while !rest.is_empty() {
            let args = one_command(&mut rest).unwrap();
            names.push(String::from_utf8_lossy(args[0]).into_owned());
            if args[0] == b"SET" {
                assert_eq!(args[2], b"x\r\ny", "a value with CRLF in it");
            }
        }
        assert_eq!(names, ["SET", "GET", "PING"]);
        assert!(one_command(&mut &b"*1\r\n$5\r\nab"[..]).is_err(), "a truncated command");
        assert!(one_command(&mut &b"+OK\r\n"[..]).is_err(), "not an array");
    }
}
