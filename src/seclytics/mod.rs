//! Everything about the SecLytics API: the typed documents ([`model`]), what a document says for the
//! spreadsheet ([`tokens`]), the HTTP/offline client with its shared rate limit and retries ([`client`]) and
//! the persistent SQLite response cache ([`cache`]).

pub mod cache;
pub mod client;
pub mod model;
pub mod tokens;
