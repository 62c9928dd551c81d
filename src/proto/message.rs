//! Data messages: [`Message`], borrowed from the buffer it was decoded in (the
//! zero-copy path every handler gets), and [`OwnedMessage`], for a caller that
//! needs to keep one past the callback.

/// A complete data message, borrowed from the buffer it was decoded in.
///
/// ```
/// use emitws::proto::{Message, OwnedMessage};
///
/// let message = Message::Text("hello");
/// let kept: OwnedMessage = message.to_owned_message();
/// assert_eq!(kept.as_message(), message);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, already validated as UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes,
        }
    }

    /// A copy that owns its payload (one allocation).
    pub fn to_owned_message(&self) -> OwnedMessage {
        match *self {
            Message::Text(text) => OwnedMessage::Text(text.to_owned()),
            Message::Binary(bytes) => OwnedMessage::Binary(bytes.to_vec()),
        }
    }
}

/// A complete data message that owns its payload: what to keep, queue or
/// send to another thread when the borrowed [`Message`] a callback got will
/// not outlive it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OwnedMessage {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

impl OwnedMessage {
    /// The message, borrowed.
    pub fn as_message(&self) -> Message<'_> {
        match self {
            OwnedMessage::Text(text) => Message::Text(text),
            OwnedMessage::Binary(bytes) => Message::Binary(bytes),
        }
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.as_message().as_bytes()
    }
}

impl From<Message<'_>> for OwnedMessage {
    fn from(message: Message<'_>) -> Self {
        message.to_owned_message()
    }
}

impl From<String> for OwnedMessage {
    fn from(text: String) -> Self {
        OwnedMessage::Text(text)
    }
}

impl From<Vec<u8>> for OwnedMessage {
    fn from(bytes: Vec<u8>) -> Self {
        OwnedMessage::Binary(bytes)
    }
}
