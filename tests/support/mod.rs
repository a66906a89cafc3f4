//! Shared helpers for the integration tests. [`api_server`] is the fake SecLytics API (a real HTTP server on
//! 127.0.0.1) used by the client tests, the end-to-end tests and the benchmarks; [`watching`] holds what the
//! hot-folder tests share.

pub mod api_server;
pub mod watching;
