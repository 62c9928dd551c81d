//! The handler hooks other layers build on: `on_notify`, `on_turn`, `on_pong`.

mod common;

use std::any::Any;
use std::time::{Duration, Instant};

use common::{quick_server, Client, Frame};
use emitws::proto::{Message, OpCode};
use emitws::runtime::{Conn, ConnId, Conns, Handler};

/// Echoes; `on_notify` forwards a `(ConnId, String)` to that connection;
/// `on_turn` sends "tick" to everyone 100 ms after a connection says "arm";
/// pongs are reported back as text.
#[derive(Clone, Default)]
struct Hooks {
    tick_at: Option<Instant>,
}

impl Handler for Hooks {
    type Data = ();

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
        match message {
            Message::Text("arm") => self.tick_at = Some(Instant::now() + Duration::from_millis(100)),
            Message::Text("ping") => {
                let _ = conn.ping(b"hb");
            }
            Message::Text("id") => {
                let _ = conn.send_text(&conn.id().0.to_string());
            }
            _ => {}
        }
    }

    fn on_pong(&mut self, conn: &mut Conn<'_, ()>, payload: &[u8]) {
        let _ = conn.send_text(&format!("pong {}", String::from_utf8_lossy(payload)));
    }

    fn on_notify(&mut self, conns: &mut Conns<'_, ()>, message: Box<dyn Any + Send>) {
        let (id, text) = *message.downcast::<(ConnId, String)>().expect("the test posts this type");
        if let Some(mut conn) = conns.get(id) {
            let _ = conn.send_text(&text);
        }
    }

    fn on_turn(&mut self, conns: &mut Conns<'_, ()>) -> Option<Duration> {
        let at = self.tick_at?;
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.tick_at = None;
            conns.for_each(|conn| {
                let _ = conn.send_text("tick");
            });
            return None;
        }
        Some(left)
    }
}

#[test]
fn notify_reaches_a_connection_through_its_worker() {
    let server = quick_server().start("127.0.0.1:0", Hooks::default()).expect("start");
    let mut client = Client::connect(server.local_addr());
    client.send_text("id");
    let Frame::Text(id) = client.recv() else { panic!("expected the id") };
    let id = ConnId(id.parse().expect("numeric id"));
    assert!(server.handle().notify(id.worker(), Box::new((id, "posted".to_string()))));
    assert_eq!(client.recv(), Frame::text("posted"));
    client.close(1000);
    server.shutdown();
}

#[test]
fn on_turn_wakes_the_loop_when_it_asked_to() {
    let server = quick_server().start("127.0.0.1:0", Hooks::default()).expect("start");
    let mut a = Client::connect(server.local_addr());
    let mut b = Client::connect(server.local_addr());
    let started = Instant::now();
    a.send_text("arm");
    assert_eq!(a.recv(), Frame::text("tick"));
    assert_eq!(b.recv(), Frame::text("tick"));
    assert!(started.elapsed() >= Duration::from_millis(100), "ticked early");
    a.close(1000);
    b.close(1000);
    server.shutdown();
}

#[test]
fn pongs_reach_the_handler() {
    let server = quick_server().start("127.0.0.1:0", Hooks::default()).expect("start");
    let mut client = Client::connect(server.local_addr());
    client.send_text("ping");
    assert_eq!(client.recv(), Frame::Ping(b"hb".to_vec()));
    client.send(OpCode::Pong, true, b"hb");
    assert_eq!(client.recv(), Frame::text("pong hb"));
    client.close(1000);
    server.shutdown();
}
