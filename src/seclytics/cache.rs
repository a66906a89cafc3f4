//! The persistent SQLite response cache.
