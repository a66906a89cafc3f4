//! The SecLytics client: offline answers, HTTP with one shared rate limiter, retries, and the cache.
