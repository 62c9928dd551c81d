//! Apps with authentication for the event clients' tests (Rust and
//! JavaScript): each answers `/me` with the socket's user, `/kick` by
//! closing the socket with 4000 (a drop: no reconnect) and `/cut` by closing
//! it with 1013 (try again later: the client reconnects).

use std::sync::atomic::{AtomicU64, Ordering};

use emitws::app::{App, Challenge, Refusal};

fn with_me_and_kick() -> App {
    let mut app = App::new();
    app.on("/me", |req| {
        let user = req.user().map(str::to_string);
        req.reply(&user);
    });
    app.on("/kick", |req| req.close(emitws::proto::CloseCode(4000), "kicked"));
    app.on("/cut", |req| req.close(emitws::proto::CloseCode(1013), "try again later"));
    app
}

/// Challenge-response auth: a fresh nonce per socket; the answer is
/// `[nonce reversed, user]` (else 4403; not that shape, 4401).
pub fn challenge_app() -> App {
    let mut app = with_me_and_kick();
    let nonces = AtomicU64::new(1);
    app.challenge(Challenge::new(
        move || format!("nonce-{}", nonces.fetch_add(1, Ordering::Relaxed)),
        |nonce, answer| {
            let (signature, user): (String, String) = answer.data().map_err(|_| Refusal::status(401, "bad answer"))?;
            match signature == nonce.chars().rev().collect::<String>() {
                true => Ok(user),
                false => Err(Refusal::status(403, "wrong signature")),
            }
        },
    ));
    app
}

/// First-message auth: a request `/auth` with the token `"t-erin"` is user
/// `erin`; anything else gets `unauthorized` "unknown token" and 4401.
pub fn first_message_app() -> App {
    let mut app = with_me_and_kick();
    app.identify_by_message("/auth", |req| match req.data::<String>().as_deref() {
        Ok("t-erin") => Ok("erin".into()),
        _ => Err(Refusal::status(401, "unknown token")),
    });
    app
}
