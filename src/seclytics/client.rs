//! The SecLytics client (SPEC §8): answers from recorded files (offline mode) or from the HTTP API with one
//! shared rate limiter, one connection pool, retries with backoff, a client-wide 429 pause, and the persistent
//! cache ([`super::cache`]).
//!
//! The public API is synchronous: [`Client`] owns a small tokio runtime and every call to
//! [`Client::lookup_all`] drives its lookups on it, so rayon workers and plain threads can share one `Client`
//! (it is `Send + Sync`). It must not be called from inside an async runtime (tokio's `block_on` panics there).
//!
//! Decisions where the SPEC is silent:
//!
//! * **Offline answers bypass the cache** (they are already local) and never touch HTTP or the limiter. An
//!   indicator that cannot be a plain file name (anything but letters, digits, `.`, `-`, `_` after `:` → `_`)
//!   is a failed lookup, so a crafted value can never read outside `offline_dir`.
//! * **Fatal is sticky**: once the token has been refused (401/403), every later `lookup_all` on this client
//!   returns the same [`FatalError`] at once without sending anything. When it is first seen, every lookup of
//!   the call is abandoned (aborted), so no new request is started.
//! * **Rate**: the limiter lets one request through per `60 s / requests_per_minute` plus a 1 % margin (burst
//!   1), so that over any 60-second window — even with a little network jitter — no more than
//!   `requests_per_minute` requests arrive. Every attempt, retries included, passes it.
//! * **429**: the whole client is paused ("no request before T", honoured by every worker before it even asks
//!   the limiter) for `Retry-After` (seconds — fractions accepted — or an HTTP date in any of RFC 9110's three
//!   forms, capped at [`ClientTuning::retry_after_max`]) or else the exponential backoff. A 429 counts as one
//!   retry; after `max_retries` the lookup fails.
//! * **Backoff**: `backoff_base * 2^attempt`, capped at `backoff_max`, with "equal jitter" (a random 50–100 %
//!   of that). The concurrency slot is released while a lookup waits for its retry.
//! * `concurrency` bounds requests in flight for the **whole client**, not per call.
//! * Redirects are not followed (a 3xx is a failed lookup): a redirect could carry a query token elsewhere.
//! * Other 4xx statuses (400, 405, …) fail the lookup without retrying; a body over `max_body_bytes` and a 200
//!   whose body is not a document (invalid UTF-8, not JSON, `{"error": …}`) fail it too, are not retried and
//!   not cached.
//! * `progress` is called once per **distinct** indicator (a duplicate in the input shares the answer).
//! * Cached bodies are checked with `parse_document` again when read; one that no longer passes is a miss.
//! * Every message that leaves this module (reasons, errors, logs) goes through the token redaction (raw and
//!   URL-encoded forms); reqwest errors are stripped of their URL first. Server-provided text is also cleaned
//!   of control characters and capped at [`MAX_SERVER_MESSAGE_CHARS`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use super::cache::{Cache, CachedAnswer, MadeFrom, token_fingerprint};
use super::model::{Document, parse_document};
use crate::config::{AuthMode, SeclyticsSettings, Secret};
use crate::vttl::Indicator;

/// Longest piece of server-provided text kept in a message.
pub const MAX_SERVER_MESSAGE_CHARS: usize = 300;

/// How much of a 401/403/5xx body is read to find its message.
const ERROR_BODY_LIMIT: usize = 8 * 1024;

/// Knobs that are not in `vttl.ini`: backoff timing and the runtime size. Tests shorten the backoff.
#[derive(Debug, Clone)]
pub struct ClientTuning {
    /// First backoff delay; doubled on every further attempt.
    pub backoff_base: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
    /// Longest pause honoured from a `Retry-After` header.
    pub retry_after_max: Duration,
    /// Worker threads of the internal tokio runtime.
    pub runtime_threads: usize,
}

impl Default for ClientTuning {
    fn default() -> Self {
        ClientTuning {
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(300),
            runtime_threads: 2,
        }
    }
}

/// The client cannot be built (bad settings).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid SecLytics base_url {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(String),
}

/// The token was refused: every further lookup would fail the same way, so the run stops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FatalError {
    /// HTTP 401/403. `message` is the server's (redacted, capped) explanation.
    #[error("SecLytics refused the access token (HTTP {status}): {message}")]
    TokenRefused { status: u16, message: String },
}

impl From<FatalError> for crate::error::CriticalError {
    fn from(error: FatalError) -> Self {
        match error {
            FatalError::TokenRefused { status, message } => {
                crate::error::CriticalError::TokenRefused { status, message }
            }
        }
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnswerSource {
    Api,
    Cache,
    Offline,
    /// Fetched from the API earlier in this client's life (for another workbook of the run, or an earlier file
    /// of a `watch` service) and reused from its memory: no request, and no cache read either — so it is not
    /// counted as a cache hit, which would claim a cache that may be disabled or bypassed by `--refresh`.
    RunMemory,
}

/// The outcome of one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A document; `body` passed `parse_document`.
    Found { body: Arc<str>, source: AnswerSource },
    /// 404 (or no offline file): SecLytics has nothing on it.
    NotFound { source: AnswerSource },
    /// The lookup failed; `reason` never contains the token.
    Failed { reason: String },
}

/// Cumulative counters since the client was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent, retries included.
    pub api_requests: u64,
    /// Answers served from the cache.
    pub cache_hits: u64,
    /// Answers reused from the client's memory of its own earlier requests ([`AnswerSource::RunMemory`]).
    pub reused_answers: u64,
    /// Answers served from `offline_dir` (found or not).
    pub offline_hits: u64,
    /// Not-found answers, from any source.
    pub not_found: u64,
    /// Failed lookups.
    pub failed: u64,
    /// Attempts repeated after a 429, 5xx, timeout or connection error.
    pub retries: u64,
    /// 429 answers seen.
    pub throttled: u64,
}

#[derive(Default)]
struct Counters {
    api_requests: AtomicU64,
    cache_hits: AtomicU64,
    reused_answers: AtomicU64,
    offline_hits: AtomicU64,
    not_found: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> ClientStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            api_requests: get(&self.api_requests),
            cache_hits: get(&self.cache_hits),
            reused_answers: get(&self.reused_answers),
            offline_hits: get(&self.offline_hits),
            not_found: get(&self.not_found),
            failed: get(&self.failed),
            retries: get(&self.retries),
            throttled: get(&self.throttled),
        }
    }

    fn count_answer(&self, answer: &Answer) {
        match answer {
            Answer::Found { source, .. } | Answer::NotFound { source } => {
                match source {
                    AnswerSource::Cache => bump(&self.cache_hits),
                    AnswerSource::RunMemory => bump(&self.reused_answers),
                    AnswerSource::Offline => bump(&self.offline_hits),
                    AnswerSource::Api => {}
                }
                if matches!(answer, Answer::NotFound { .. }) {
                    bump(&self.not_found);
                }
            }
            Answer::Failed { .. } => bump(&self.failed),
        }
    }
}

/// `text` with every occurrence of `token` replaced by `[redacted]`, where each byte of the token may also be
/// written `%XX` (hex in either case; a space also `+`), as any URL encoder may have written it.
fn redact_percent_forms(text: &str, token: &str) -> String {
    fn hex(digit: u8) -> Option<u8> {
        (digit as char).to_digit(16).map(|d| d as u8)
    }
    /// Where a spelling of `token` starting at `at` ends. A `%` of the text may be a `%` of the token or start
    /// its `%XX` form (a token holding `%` is written `%25` in a query): both readings are tried.
    fn match_at(text: &[u8], at: usize, token: &[u8]) -> Option<usize> {
        let Some((&wanted, rest)) = token.split_first() else { return Some(at) };
        let &byte = text.get(at)?;
        let encoded = (byte == b'%')
            .then(|| Some(hex(*text.get(at + 1)?)? << 4 | hex(*text.get(at + 2)?)?))
            .flatten()
            .filter(|&decoded| decoded == wanted)
            .and_then(|_| match_at(text, at + 3, rest));
        encoded.or_else(|| {
            (byte == wanted || (wanted == b' ' && byte == b'+'))
                .then(|| match_at(text, at + 1, rest))
                .flatten()
        })
    }
    let (bytes, wanted) = (text.as_bytes(), token.as_bytes());
    let Some(&first) = wanted.first() else { return text.to_string() };
    let mut out = Vec::with_capacity(bytes.len());
    let (mut at, mut copied) = (0, 0);
    while at < bytes.len() {
        if (bytes[at] == first || bytes[at] == b'%' || (first == b' ' && bytes[at] == b'+'))
            && let Some(end) = match_at(bytes, at, wanted)
        {
            out.extend_from_slice(&bytes[copied..at]);
            out.extend_from_slice(b"[redacted]");
            (at, copied) = (end, end);
        } else {
            at += 1;
        }
    }
    if copied == 0 {
        return text.to_string();
    }
    out.extend_from_slice(&bytes[copied..]);
    // Matches start and end at character boundaries (the token is whole characters; `%XX` is ASCII).
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

/// `text` with JSON's string escapes undone wherever they appear (`\/`, `\"`, `\\`, `\n`…, `\uXXXX` with surrogate
/// pairs); an escape that is not one is left as it is. For text that is not (or no longer) valid JSON.
fn json_unescaped(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\\') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let hex4 = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Option<u32> {
        let digits: String = chars.clone().take(4).collect();
        let value = (digits.len() == 4).then(|| u32::from_str_radix(&digits, 16).ok()).flatten()?;
        chars.nth(3);
        Some(value)
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some(escaped @ ('/' | '"' | '\\')) => {
                chars.next();
                out.push(escaped);
            }
            Some('n' | 'r' | 't' | 'b' | 'f') => {
                chars.next();
                out.push(' ');
            }
            Some('u') => {
                let mut ahead = chars.clone();
                ahead.next();
                match hex4(&mut ahead) {
                    Some(high @ 0xD800..=0xDBFF) => {
                        let mut pair = ahead.clone();
                        let low = (pair.next() == Some('\\') && pair.next() == Some('u'))
                            .then(|| hex4(&mut pair))
                            .flatten();
                        match low.filter(|low| (0xDC00..=0xDFFF).contains(low)) {
                            Some(low) => {
                                let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                                out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                                chars = pair;
                            }
                            None => {
                                out.push('\u{fffd}');
                                chars = ahead;
                            }
                        }
                    }
                    Some(code) => {
                        out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                        chars = ahead;
                    }
                    None => out.push('\\'),
                }
            }
            _ => out.push('\\'),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The token in the forms it can take in text: raw or percent-encoded in any mix (every encoder encodes a
/// different set of characters: `/` is kept by one and written `%2F` by another, and any character may be
/// written `%XX`), and as JSON writes it inside a string (a `"` or `\\` in the token escaped).
#[derive(Clone)]
struct Redactor {
    raw: Secret,
    json: Secret,
}

impl Redactor {
    fn new(token: &Secret) -> Redactor {
        let json = serde_json::to_string(token.expose()).unwrap_or_default();
        let json = json.strip_prefix('"').and_then(|j| j.strip_suffix('"')).unwrap_or_default().to_string();
        let json = if json == token.expose() { Secret::default() } else { Secret::new(json) };
        Redactor { raw: token.clone(), json }
    }

    fn redact(&self, text: &str) -> String {
        self.json.redact(&redact_percent_forms(text, self.raw.expose()))
    }

    /// A response body with every echo of the token replaced by `[redacted]` (JSON-safe text), so an API that
    /// reflects the token (a self-link with `access_token=…`) cannot carry it into a cell, a log or the cache.
    /// A body with any escape (`\uXXXX`, `\/` — PHP writes every `/` so —, `\"`) is first written again in
    /// serde_json's own form, where a string holds the token only raw (or percent-encoded) or with its `"` and
    /// `\\` escaped, so an escaped echo is caught too.
    fn redact_body(&self, body: String) -> String {
        let body = if body.contains('\\') {
            serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|value| serde_json::to_string(&value).ok())
                .unwrap_or(body)
        } else {
            body
        };
        let redacted = self.redact(&body);
        if redacted == body { body } else { redacted }
    }

    /// Server-provided (attacker-controlled) text: redacted, control characters replaced, length capped.
    fn clean_server_text(&self, text: &str) -> String {
        // An error body shown as it came (a shape we do not read, or cut short) still holds its JSON escapes, and
        // an echo of the token written with them (`\/`, `\uXXXX`) would pass the search: they are undone first.
        let text = json_unescaped(text);
        let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        let redacted = self.redact(one_line.trim());
        if redacted.chars().count() > MAX_SERVER_MESSAGE_CHARS {
            let mut capped: String = redacted.chars().take(MAX_SERVER_MESSAGE_CHARS).collect();
            capped.push('…');
            capped
        } else {
            redacted
        }
    }

    /// A reqwest error as text: without its URL, with its causes, redacted.
    fn describe(&self, error: reqwest::Error) -> String {
        let kind = if error.is_timeout() {
            "timed out"
        } else if error.is_connect() {
            "connection failed"
        } else {
            "request failed"
        };
        let error = error.without_url();
        let mut text = format!("{kind}: {error}");
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.redact(&text)
    }
}

/// The server's explanation in an error body: `error.message`, `error` as a string, `message`, or the text.
fn server_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
        let candidates = [value.pointer("/error/message"), value.get("error"), value.get("message")];
        for candidate in candidates.into_iter().flatten() {
            if let Some(message) = candidate.as_str() {
                return message.to_string();
            }
        }
    }
    text.into_owned()
}

/// Everything shared by the lookups running on the runtime.
struct Http {
    base_url: reqwest::Url,
    token: Secret,
    auth: AuthMode,
    redactor: Redactor,
    client: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    /// No request may start before this instant (set by 429s).
    gate: Mutex<Option<Instant>>,
    in_flight: tokio::sync::Semaphore,
    /// Set once the token has been refused.
    fatal: Mutex<Option<FatalError>>,
    timeout: Duration,
    max_retries: u32,
    max_body_bytes: usize,
    tuning: ClientTuning,
    counters: Arc<Counters>,
}

/// What one lookup task reports back.
enum Outcome {
    Answer(Answer),
    /// The token was refused (recorded in `Http::fatal`).
    Fatal,
    /// Not attempted because the token has been refused.
    Stopped,
}

/// What one HTTP attempt produced.
enum Attempt {
    Done(Answer),
    Fatal(FatalError),
    /// 429: the whole client pauses for `delay` (`Retry-After` or backoff).
    Throttled {
        delay: Duration,
    },
    Retryable(String),
}

/// A body read with a size cap.
enum Body {
    Complete(Vec<u8>),
    TooLarge,
}

impl Http {
    fn fatal(&self) -> Option<FatalError> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_fatal(&self, error: &FatalError) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if fatal.is_none() {
            *fatal = Some(error.clone());
        }
    }

    fn gate(&self) -> Option<Instant> {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pauses the whole client for `delay` (never shortens an existing pause).
    fn close_gate_for(&self, delay: Duration) {
        let until = Instant::now() + delay;
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if gate.is_none_or(|current| current < until) {
            *gate = Some(until);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(20));
        let full = self.tuning.backoff_base.saturating_mul(factor).min(self.tuning.backoff_max);
        full.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    fn url_for(&self, indicator: &Indicator) -> reqwest::Url {
        let mut url = self.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(indicator.kind.endpoint()).push(&indicator.value);
        }
        if self.auth == AuthMode::Query && !self.token.is_empty() {
            url.query_pairs_mut().append_pair("access_token", self.token.expose());
        }
        url
    }

    /// Waits until both the 429 pause is over and the rate limiter grants a cell.
    async fn wait_turn(&self) {
        loop {
            if let Some(until) = self.gate()
                && until > Instant::now()
            {
                tokio::time::sleep_until(until).await;
                continue;
            }
            if let Err(not_until) = self.limiter.check() {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                tokio::time::sleep(wait).await;
                continue;
            }
            // A 429 may have closed the gate while we waited for the limiter: then wait again.
            match self.gate() {
                Some(until) if until > Instant::now() => continue,
                _ => return,
            }
        }
    }

    /// Looks one indicator up, with retries.
    async fn fetch(self: Arc<Self>, indicator: Indicator) -> Outcome {
        let url = self.url_for(&indicator);
        let mut attempt: u32 = 0;
        loop {
            if self.fatal().is_some() {
                return Outcome::Stopped;
            }
            let result = {
                let Ok(_permit) = self.in_flight.acquire().await else { return Outcome::Stopped };
                self.wait_turn().await;
                if self.fatal().is_some() {
                    return Outcome::Stopped;
                }
                bump(&self.counters.api_requests);
                tracing::debug!(indicator = %indicator, attempt, "SecLytics request");
                let result =
                    match tokio::time::timeout(self.timeout, self.attempt(url.clone(), attempt)).await {
                        Ok(result) => result,
                        Err(_) => Attempt::Retryable(format!("timed out after {:?}", self.timeout)),
                    };
                // Both before the slot is released, so no waiting lookup slips a request in first.
                match &result {
                    Attempt::Fatal(error) => self.set_fatal(error),
                    Attempt::Throttled { delay } => self.close_gate_for(*delay),
                    _ => {}
                }
                result
            };
            match result {
                Attempt::Done(answer) => return Outcome::Answer(answer),
                Attempt::Fatal(error) => {
                    tracing::warn!("{error}");
                    return Outcome::Fatal;
                }
                Attempt::Throttled { delay } => {
                    bump(&self.counters.throttled);
                    if attempt >= self.max_retries {
                        return Outcome::Answer(Answer::Failed {
                            reason: format!("HTTP 429 (rate limited), gave up after {attempt} retries"),
                        });
                    }
                    tracing::warn!(indicator = %indicator, "SecLytics answered 429: pausing all requests for {delay:?}");
                }
                Attempt::Retryable(reason) => {
                    if attempt >= self.max_retries {
                        return Outcome::Answer(Answer::Failed {
                            reason: format!("{reason} (gave up after {attempt} retries)"),
                        });
                    }
                    let delay = self.backoff(attempt);
                    tracing::debug!(indicator = %indicator, "retrying in {delay:?}: {reason}");
                    tokio::time::sleep(delay).await;
                }
            }
            attempt += 1;
            bump(&self.counters.retries);
        }
    }

    /// One HTTP request and its classification.
    async fn attempt(&self, url: reqwest::Url, attempt: u32) -> Attempt {
        let mut request = self.client.get(url);
        if self.auth == AuthMode::Header && !self.token.is_empty() {
            request = request.bearer_auth(self.token.expose());
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Attempt::Retryable(self.redactor.describe(error)),
        };
        let status = response.status().as_u16();
        match status {
            200 => match self.read_body(&mut response, self.max_body_bytes).await {
                Ok(Body::Complete(bytes)) => Attempt::Done(self.document_answer(bytes)),
                Ok(Body::TooLarge) => Attempt::Done(Answer::Failed {
                    reason: format!("response body larger than {} bytes", self.max_body_bytes),
                }),
                Err(reason) => Attempt::Retryable(reason),
            },
            404 => {
                // Read the (small) body so the connection can go back to the pool.
                let _ = self.error_message(&mut response).await;
                Attempt::Done(Answer::NotFound { source: AnswerSource::Api })
            }
            401 | 403 => {
                let message = self.error_message(&mut response).await;
                let message = if self.token.is_empty() {
                    // The request carried no token at all: "refused the access token" alone would send the
                    // analyst looking for a wrong one.
                    format!("no access token is configured ({})", crate::enrich::NO_TOKEN_HINT)
                } else if message.is_empty() {
                    "no explanation given".to_string()
                } else {
                    message
                };
                Attempt::Fatal(FatalError::TokenRefused { status, message })
            }
            429 => {
                let delay = self.retry_after(&response).unwrap_or_else(|| self.backoff(attempt));
                Attempt::Throttled { delay }
            }
            500..=599 => {
                let message = self.error_message(&mut response).await;
                Attempt::Retryable(
                    format!("HTTP {status}: {message}").trim_end_matches([':', ' ']).to_string(),
                )
            }
            _ => {
                let message = self.error_message(&mut response).await;
                let text = format!("unexpected HTTP {status}: {message}");
                Attempt::Done(Answer::Failed { reason: text.trim_end_matches([':', ' ']).to_string() })
            }
        }
    }

    fn document_answer(&self, bytes: Vec<u8>) -> Answer {
        let body = match String::from_utf8(bytes) {
            Ok(body) => body,
            Err(_) => return Answer::Failed { reason: "response body is not UTF-8".into() },
        };
        let body = self.redactor.redact_body(body);
        match parse_document(&body) {
            Ok(_) => Answer::Found { body: Arc::from(body), source: AnswerSource::Api },
            Err(error) => Answer::Failed { reason: self.redactor.clean_server_text(&error.to_string()) },
        }
    }

    /// Reads the body in chunks, stopping as soon as it grows past `limit`.
    async fn read_body(&self, response: &mut reqwest::Response, limit: usize) -> Result<Body, String> {
        if response.content_length().is_some_and(|length| length > limit as u64) {
            return Ok(Body::TooLarge);
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Ok(Body::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(Body::Complete(body)),
                Err(error) => return Err(self.redactor.describe(error)),
            }
        }
    }

    /// The cleaned explanation from an error response (best effort, empty when there is none).
    async fn error_message(&self, response: &mut reqwest::Response) -> String {
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(ERROR_BODY_LIMIT);
        self.redactor.clean_server_text(&server_message(&body))
    }

    /// `Retry-After` as seconds or an HTTP date, capped.
    fn retry_after(&self, response: &reqwest::Response) -> Option<Duration> {
        let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
        let delay = if let Ok(seconds) = value.parse::<u64>() {
            Duration::from_secs(seconds)
        } else if let Some(seconds) = value.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0) {
            // Not in RFC 9110, but some servers send fractions: honour them rather than guess.
            Duration::from_secs_f64(seconds.min(1e9))
        } else {
            let now = chrono::Utc::now();
            let date = http_date(value, now)?;
            let millis = (date - now).num_milliseconds();
            Duration::from_millis(millis.max(0) as u64)
        };
        Some(delay.min(self.tuning.retry_after_max))
    }
}

/// An HTTP date in any of the three forms RFC 9110 (§5.6.7) says a recipient must accept: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form (`Sunday, 06-Nov-94 08:49:37 GMT`) and C's
/// asctime form (`Sun Nov  6 08:49:37 1994`), all in UTC. The RFC 850 form's two-digit year is read as
/// RFC 9110 says, relative to `now`: never more than 50 years ahead, else the latest such year in the past
/// (chrono alone takes `70`–`99` for 1970–1999 and `00`–`69` for 2000–2069, whatever the date).
fn http_date(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::Datelike;
    if let Ok(date) = chrono::DateTime::parse_from_rfc2822(value) {
        return Some(date.with_timezone(&chrono::Utc));
    }
    // The weekday is skipped: chrono checks it against *its* reading of the year, which may be a century off.
    let without_weekday = value.split_once(", ").map_or(value, |(_, rest)| rest);
    let rfc850 =
        chrono::NaiveDateTime::parse_from_str(without_weekday, "%d-%b-%y %H:%M:%S GMT").map(|date| {
            // The latest year with these last two digits that is at most 50 years ahead.
            let limit = now.year() + 50;
            date.with_year(limit - (limit - date.year()).rem_euclid(100)).unwrap_or(date)
        });
    let asctime = || {
        // `%e` is the day padded with a space: the spaces between the fields are made single first.
        let single_spaced = value.split_whitespace().collect::<Vec<_>>().join(" ");
        chrono::NaiveDateTime::parse_from_str(&single_spaced, "%a %b %e %H:%M:%S %Y")
    };
    rfc850.or_else(|_| asctime()).ok().map(|date| date.and_utc())
}

/// Where answers come from.
enum Backend {
    Offline { dir: PathBuf, max_body_bytes: usize },
    Http(Box<HttpBackend>),
}

/// The HTTP side: the shared state, the runtime that drives it, and the cache.
struct HttpBackend {
    http: Arc<Http>,
    runtime: Option<tokio::runtime::Runtime>,
    cache: Option<Cache>,
    token_fp: String,
    memo: Mutex<RunMemo>,
}

/// Most answers the run memo keeps; when full it starts again empty (it is an optimisation for the common case
/// of a few thousand indicators shared by the workbooks of one run, not a second cache).
const RUN_MEMO_MAX: usize = 20_000;

/// Answers fetched from the API during this client's life, so that an indicator shared by several workbooks of
/// one run is requested once (SPEC §3) even when the cache is disabled or `--refresh` bypasses it. Entries
/// expire after `cache_ttl`, like cached ones.
struct RunMemo {
    answers: HashMap<Indicator, (Answer, std::time::Instant)>,
    ttl: Duration,
}

impl RunMemo {
    fn get(&self, indicator: &Indicator) -> Option<Answer> {
        let (answer, at) = self.answers.get(indicator)?;
        if at.elapsed() >= self.ttl {
            return None;
        }
        Some(match answer {
            Answer::Found { body, .. } => {
                Answer::Found { body: body.clone(), source: AnswerSource::RunMemory }
            }
            Answer::NotFound { .. } => Answer::NotFound { source: AnswerSource::RunMemory },
            Answer::Failed { reason } => Answer::Failed { reason: reason.clone() },
        })
    }

    fn remember(&mut self, indicator: &Indicator, answer: &Answer) {
        if !matches!(
            answer,
            Answer::Found { source: AnswerSource::Api, .. } | Answer::NotFound { source: AnswerSource::Api }
        ) {
            return;
        }
        if self.answers.len() >= RUN_MEMO_MAX {
            self.answers.clear();
        }
        self.answers.insert(indicator.clone(), (answer.clone(), std::time::Instant::now()));
    }
}

/// The SecLytics client, shared by every worker and every workbook: one connection pool, one rate limiter,
/// one 429 pause, one cache.
pub struct Client {
    backend: Backend,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Offline { dir, .. } => f.debug_struct("Client").field("offline_dir", dir).finish(),
            Backend::Http(backend) => f
                .debug_struct("Client")
                .field("base_url", &backend.http.base_url.as_str())
                .field("auth", &backend.http.auth)
                .field("token", &backend.http.token)
                .field("max_retries", &backend.http.max_retries)
                .field("cache", &backend.cache.as_ref().map(Cache::path))
                .finish(),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Backend::Http(backend) = &mut self.backend
            && let Some(runtime) = backend.runtime.take()
        {
            // Safe even when the client is dropped inside an async context.
            runtime.shutdown_background();
        }
    }
}

impl Client {
    /// Builds the client for these settings with the default [`ClientTuning`].
    pub fn new(settings: &SeclyticsSettings) -> Result<Client, ClientError> {
        Client::with_tuning(settings, ClientTuning::default())
    }

    /// Builds the client with explicit backoff timing (tests use short delays).
    pub fn with_tuning(settings: &SeclyticsSettings, tuning: ClientTuning) -> Result<Client, ClientError> {
        let counters = Arc::new(Counters::default());
        if let Some(dir) = &settings.offline_dir {
            let backend = Backend::Offline { dir: dir.clone(), max_body_bytes: settings.max_body_bytes };
            return Ok(Client { backend, counters });
        }
        let redactor = Redactor::new(&settings.access_token);
        let url_error = |reason: &str| ClientError::BaseUrl {
            url: redactor.redact(&settings.base_url),
            reason: reason.to_string(),
        };
        let base_url = reqwest::Url::parse(&settings.base_url).map_err(|e| url_error(&e.to_string()))?;
        if !matches!(base_url.scheme(), "http" | "https") || base_url.cannot_be_a_base() {
            return Err(url_error("expected an http:// or https:// URL"));
        }

        // reqwest is built without a default crypto provider; a second install attempt is harmless. (ring's
        // provider is deprecated only for lacking post-quantum key exchange; it is the one the project ships.)
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout.min(settings.timeout))
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(settings.concurrency.max(1))
            .user_agent(concat!("vttl-seclytics/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Http(redactor.describe(e)))?;

        let period = Duration::from_secs(60).mul_f64(1.01) / settings.requests_per_minute.max(1);
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .ok_or_else(|| ClientError::Http("invalid requests_per_minute".into()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(tuning.runtime_threads.max(1))
            .thread_name("seclytics-http")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Runtime(e.to_string()))?;

        let cache = settings.cache.as_deref().and_then(|path| match Cache::open(path, settings.cache_ttl) {
            Ok(cache) => Some(cache),
            Err(error) => {
                tracing::warn!(
                    "{} (`cache` in the [seclytics] section of the ini); continuing without the response cache",
                    redactor.redact(&error.to_string())
                );
                None
            }
        });
        let http = Http {
            base_url,
            token: settings.access_token.clone(),
            auth: settings.auth,
            redactor,
            client,
            limiter: RateLimiter::direct(quota),
            gate: Mutex::new(None),
            in_flight: tokio::sync::Semaphore::new(settings.concurrency.max(1)),
            fatal: Mutex::new(None),
            timeout: settings.timeout,
            max_retries: settings.max_retries,
            max_body_bytes: settings.max_body_bytes,
            tuning,
            counters: counters.clone(),
        };
        let backend = Backend::Http(Box::new(HttpBackend {
            http: Arc::new(http),
            runtime: Some(runtime),
            cache,
            token_fp: token_fingerprint(&settings.access_token),
            memo: Mutex::new(RunMemo { answers: HashMap::new(), ttl: settings.cache_ttl }),
        }));
        Ok(Client { backend, counters })
    }

    /// Cumulative counters since the client was built.
    pub fn stats(&self) -> ClientStats {
        self.counters.snapshot()
    }

    /// The digests kept in the cache for `indicators` under `derivation` (see [`Cache::get_digests`]); `None`
    /// for each indicator without one, and for all when there is no cache or `refresh` is set. Only reads: a
    /// digest the caller uses counts as a cache answer once it says so ([`Client::count_stored_answers`]).
    pub fn stored_digests(
        &self,
        indicators: &[Indicator],
        derivation: i64,
        refresh: bool,
    ) -> Vec<Option<Vec<u8>>> {
        match &self.backend {
            Backend::Http(backend) if !refresh && backend.cache.is_some() => {
                let HttpBackend { cache, token_fp, .. } = &**backend;
                let keys: Vec<(&str, &str)> =
                    indicators.iter().map(|i| (i.kind.endpoint(), i.value.as_str())).collect();
                cache.as_ref().map_or_else(Vec::new, |cache| cache.get_digests(&keys, token_fp, derivation))
            }
            _ => vec![None; indicators.len()],
        }
    }

    /// Keeps digests — `(indicator, answer, data)`: `data` made under `derivation` from `answer` — beside the
    /// cached answers they were made from. Nothing without a cache; a digest is dropped when its answer is not
    /// the one cached (a failure, not cached, or replaced since by another process).
    pub fn store_digests(&self, derivation: i64, digests: &[(&Indicator, &Answer, &[u8])]) {
        if let Backend::Http(backend) = &self.backend
            && let Some(cache) = &backend.cache
            && !digests.is_empty()
        {
            let entries: Vec<(&str, &str, MadeFrom<'_>, &[u8])> = digests
                .iter()
                .filter_map(|(indicator, answer, data)| {
                    let made_from = match answer {
                        Answer::Found { body, .. } => MadeFrom::Found(body),
                        Answer::NotFound { .. } => MadeFrom::NotFound,
                        Answer::Failed { .. } => return None,
                    };
                    Some((indicator.kind.endpoint(), indicator.value.as_str(), made_from, *data))
                })
                .collect();
            cache.put_digests(&backend.token_fp, derivation, &entries);
        }
    }

    /// Counts answers the caller took from [`Client::stored_digests`]: `found` and `not_found` answers from the
    /// cache, as [`Client::stats`] reports them.
    pub fn count_stored_answers(&self, found: u64, not_found: u64) {
        self.counters.cache_hits.fetch_add(found + not_found, Ordering::Relaxed);
        self.counters.not_found.fetch_add(not_found, Ordering::Relaxed);
    }

    /// Looks up every indicator (distinct ones concurrently, each at most once), at most `concurrency` requests
    /// in flight, never faster than `requests_per_minute`. `refresh` bypasses the cache for reading (answers
    /// are still written to it). `progress` is called once per finished distinct indicator. Returns the answers
    /// in input order, or the fatal error when the token is refused (401/403); then no new request is started.
    ///
    /// Must be called from synchronous code (not inside an async runtime).
    pub fn lookup_all(
        &self,
        indicators: &[Indicator],
        refresh: bool,
        progress: &(dyn Fn(&Indicator, &Answer) + Sync),
    ) -> Result<Vec<Answer>, FatalError> {
        let answers = self.lookup_all_parsed(indicators, refresh, progress)?;
        Ok(answers.into_iter().map(|(answer, _)| answer).collect())
    }

    /// What the client can answer **without a request**: its memory of this run, the cache (unless
    /// `refresh`), or the offline folder; `None` for every other indicator. Never sends anything to the API,
    /// so it may run before the caller knows the file is sound. Answers are counted and reported to
    /// `progress` like those of [`Client::lookup_all_parsed`], which the caller then asks for the `None`s.
    /// `indicators` must be distinct.
    pub fn lookup_known(
        &self,
        indicators: &[Indicator],
        refresh: bool,
        progress: &(dyn Fn(&Indicator, &Answer) + Sync),
    ) -> Vec<Option<(Answer, Option<Document>)>> {
        let indicators: Vec<&Indicator> = indicators.iter().collect();
        self.known_answers(&indicators, refresh, progress)
    }

    /// [`Client::lookup_known`] over borrowed (distinct) indicators: the first step of every lookup.
    fn known_answers(
        &self,
        indicators: &[&Indicator],
        refresh: bool,
        progress: &(dyn Fn(&Indicator, &Answer) + Sync),
    ) -> Vec<Option<(Answer, Option<Document>)>> {
        let mut known: Vec<Option<(Answer, Option<Document>)>> = indicators.iter().map(|_| None).collect();
        match &self.backend {
            Backend::Offline { dir, max_body_bytes } => {
                for (slot, indicator) in known.iter_mut().zip(indicators) {
                    *slot = Some((offline_answer(dir, indicator, *max_body_bytes), None));
                }
            }
            Backend::Http(backend) => {
                let HttpBackend { cache, token_fp, memo, .. } = &**backend;
                let mut unknown = Vec::new();
                {
                    let memo = memo.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    for (index, indicator) in indicators.iter().enumerate() {
                        match memo.get(indicator) {
                            Some(answer) => known[index] = Some((answer, None)),
                            None => unknown.push(index),
                        }
                    }
                }
                if !refresh {
                    let unknown_indicators: Vec<&Indicator> =
                        unknown.iter().map(|&i| indicators[i]).collect();
                    let cached = cached_answers(cache.as_ref(), token_fp, &unknown_indicators);
                    for (&index, answer) in unknown.iter().zip(cached) {
                        known[index] = answer;
                    }
                }
            }
        }
        for (slot, indicator) in known.iter().zip(indicators) {
            if let Some((answer, _)) = slot {
                self.counters.count_answer(answer);
                progress(indicator, answer);
            }
        }
        known
    }

    /// [`Client::lookup_all`], also handing over the parsed [`Document`] of a found answer when the client
    /// already had to parse its body (today: answers from the cache, which are re-checked when read), so the
    /// caller need not parse the same text again. `None` means "parse the body yourself"; the document is
    /// always exactly `parse_document(body)`. For an indicator given more than once, only its first position
    /// gets the document.
    pub fn lookup_all_parsed(
        &self,
        indicators: &[Indicator],
        refresh: bool,
        progress: &(dyn Fn(&Indicator, &Answer) + Sync),
    ) -> Result<Vec<(Answer, Option<Document>)>, FatalError> {
        let mut distinct: Vec<&Indicator> = Vec::new();
        let mut slot_of_distinct: HashMap<&Indicator, usize> = HashMap::new();
        let slots: Vec<usize> = indicators
            .iter()
            .map(|indicator| {
                *slot_of_distinct.entry(indicator).or_insert_with(|| {
                    distinct.push(indicator);
                    distinct.len() - 1
                })
            })
            .collect();
        if let Backend::Http(backend) = &self.backend
            && let Some(fatal) = backend.http.fatal()
        {
            return Err(fatal);
        }
        let mut answers: Vec<Option<Answer>> = vec![None; distinct.len()];
        let mut documents: Vec<Option<Document>> = Vec::with_capacity(distinct.len());
        let mut pending = Vec::new();
        for (slot, known) in self.known_answers(&distinct, refresh, progress).into_iter().enumerate() {
            match known {
                Some((answer, document)) => {
                    answers[slot] = Some(answer);
                    documents.push(document);
                }
                None => {
                    documents.push(None);
                    pending.push(slot);
                }
            }
        }

        if let Backend::Http(backend) = &self.backend {
            let HttpBackend { http, runtime, cache, token_fp, memo } = &**backend;
            // The runtime is only gone while the client is being dropped; then nothing is pending here.
            if let Some(runtime) = runtime.as_ref().filter(|_| !pending.is_empty()) {
                runtime.block_on(async {
                    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
                    let mut tasks = tokio::task::JoinSet::new();
                    for &slot in &pending {
                        let sender = sender.clone();
                        let task = http.clone().fetch(distinct[slot].clone());
                        tasks.spawn(async move {
                            let _ = sender.send((slot, task.await));
                        });
                    }
                    drop(sender);
                    while let Some((slot, outcome)) = receiver.recv().await {
                        match outcome {
                            Outcome::Answer(answer) => {
                                store_answer(cache.as_ref(), token_fp, distinct[slot], &answer);
                                memo.lock()
                                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                                    .remember(distinct[slot], &answer);
                                self.finish(distinct[slot], answer, &mut answers[slot], progress);
                            }
                            Outcome::Fatal | Outcome::Stopped => {
                                tasks.abort_all();
                                break;
                            }
                        }
                    }
                });
            }
            if let Some(fatal) = http.fatal() {
                return Err(fatal);
            }
        }

        Ok(slots
            .iter()
            .map(|&slot| {
                let answer = answers[slot]
                    .clone()
                    .unwrap_or_else(|| Answer::Failed { reason: "lookup did not complete".into() });
                (answer, documents.get_mut(slot).and_then(Option::take))
            })
            .collect())
    }

    fn finish(
        &self,
        indicator: &Indicator,
        answer: Answer,
        slot: &mut Option<Answer>,
        progress: &(dyn Fn(&Indicator, &Answer) + Sync),
    ) {
        self.counters.count_answer(&answer);
        progress(indicator, &answer);
        *slot = Some(answer);
    }
}

/// The usable cached answer of each indicator (`None`: not cached, expired, or a body that no longer passes
/// `parse_document`). The SQLite reads are sequential (one connection); checking the bodies is CPU work
/// independent per body, so it is spread over the cores with rayon.
fn cached_answers(
    cache: Option<&Cache>,
    token_fp: &str,
    indicators: &[&Indicator],
) -> Vec<Option<(Answer, Option<Document>)>> {
    use rayon::prelude::*;
    let Some(cache) = cache else { return Vec::new() };
    let keys: Vec<(&str, &str)> =
        indicators.iter().map(|indicator| (indicator.kind.endpoint(), indicator.value.as_str())).collect();
    let stored: Vec<Option<CachedAnswer>> = cache.get_many(&keys, token_fp);
    stored
        .into_par_iter()
        .map(|stored| match stored? {
            CachedAnswer::Found(body) => parse_document(&body).ok().map(|document| {
                (Answer::Found { body: Arc::from(body), source: AnswerSource::Cache }, Some(document))
            }),
            CachedAnswer::NotFound => Some((Answer::NotFound { source: AnswerSource::Cache }, None)),
        })
        .collect()
}

/// Writes an API answer to the cache: documents and 404s only, never failures.
fn store_answer(cache: Option<&Cache>, token_fp: &str, indicator: &Indicator, answer: &Answer) {
    let Some(cache) = cache else { return };
    let cached = match answer {
        Answer::Found { body, source: AnswerSource::Api } => CachedAnswer::Found(body.to_string()),
        Answer::NotFound { source: AnswerSource::Api } => CachedAnswer::NotFound,
        _ => return,
    };
    cache.put(indicator.kind.endpoint(), &indicator.value, token_fp, &cached);
}

/// The offline file name of an indicator (`:` written as `_`), or `None` when it cannot be a plain file name.
fn offline_file_name(indicator: &Indicator) -> Option<String> {
    let name = indicator.value.replace(':', "_");
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    plain.then(|| format!("{name}.json"))
}

/// The answer recorded under `dir` for this indicator.
fn offline_answer(dir: &Path, indicator: &Indicator, max_body_bytes: usize) -> Answer {
    use std::io::Read;
    let Some(name) = offline_file_name(indicator) else {
        return Answer::Failed { reason: format!("{:?} cannot be an offline file name", indicator.value) };
    };
    let path = dir.join(indicator.kind.endpoint()).join(name);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Answer::NotFound { source: AnswerSource::Offline };
        }
        Err(e) => return Answer::Failed { reason: format!("cannot read {}: {e}", path.display()) },
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(max_body_bytes as u64 + 1).read_to_end(&mut bytes) {
        return Answer::Failed { reason: format!("cannot read {}: {e}", path.display()) };
    }
    if bytes.len() > max_body_bytes {
        return Answer::Failed {
            reason: format!("{} is larger than {max_body_bytes} bytes", path.display()),
        };
    }
    let Ok(body) = String::from_utf8(bytes) else {
        return Answer::Failed { reason: format!("{} is not UTF-8", path.display()) };
    };
    match parse_document(&body) {
        Ok(_) => Answer::Found { body: Arc::from(body), source: AnswerSource::Offline },
        Err(e) => Answer::Failed { reason: format!("{}: {e}", path.display()) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_for_the_real_https_api_and_rejects_bad_urls() {
        let settings = SeclyticsSettings { cache: None, ..SeclyticsSettings::default() };
        let client = Client::new(&settings).expect("default settings build");
        assert!(format!("{client:?}").contains("https://api.seclytics.com"));
        for bad in ["ftp://example.com", "not a url", "mailto:x@example.com"] {
            let settings =
                SeclyticsSettings { base_url: bad.into(), cache: None, ..SeclyticsSettings::default() };
            assert!(matches!(Client::new(&settings), Err(ClientError::BaseUrl { .. })), "{bad}");
        }
    }

    #[test]
    fn client_is_send_and_sync() {
        fn shared_between_threads<T: Send + Sync>() {}
        shared_between_threads::<Client>();
    }

    #[test]
    fn redactor_covers_raw_and_encoded_token() {
        let redactor = Redactor::new(&Secret::new("a b+c/d"));
        let text = redactor.redact("x a b+c/d y a+b%2Bc%2Fd z");
        assert!(!text.contains("a b+c/d") && !text.contains("a+b%2Bc%2Fd"), "{text}");
        assert_eq!(text, "x [redacted] y [redacted] z");
    }

    /// Encoders encode different sets of characters (Python's `quote` keeps `/`, a form encoder does not) and
    /// any character may be written `%XX`: every such spelling of the token is redacted, and nothing else.
    #[test]
    fn every_percent_spelling_of_the_token_is_redacted() {
        let redactor = Redactor::new(&Secret::new("Ab/Cd+Ef9Zx=="));
        for spelling in [
            "Ab/Cd+Ef9Zx==",
            "Ab/Cd%2BEf9Zx%3D%3D",
            "Ab%2FCd%2BEf9Zx%3D%3D",
            "Ab%2fCd%2bEf9Zx%3d%3d",
            "%41%62%2F%43%64%2B%45%66%39%5A%78%3D%3D",
            "A%62/Cd+Ef9Zx%3D=",
        ] {
            let text = format!("https://x.example/?access_token={spelling}&n=1");
            assert_eq!(
                redactor.redact(&text),
                "https://x.example/?access_token=[redacted]&n=1",
                "{spelling}"
            );
        }
        for other in ["Ab/Cd+Ef9Zx=", "Ab/Cd%2BEf9Zy%3D%3D", "%4", "Ab%2", "é Ab/Cd+Ef9Zx== é"] {
            let redacted = redactor.redact(other);
            assert_eq!(redacted == other, !other.contains("Ab/Cd+Ef9Zx=="), "{other} -> {redacted}");
        }
        let redactor = Redactor::new(&Secret::new("TOPSECRET123"));
        assert_eq!(redactor.redact("t=%54OPSECRET123;"), "t=[redacted];");
        // A `%` in the token: written raw, or `%25` as a query encodes it (what the client itself sends).
        let redactor = Redactor::new(&Secret::new("ab%cd"));
        for spelling in ["ab%cd", "ab%25cd", "%61b%25cd"] {
            assert_eq!(
                redactor.redact(&format!("u?access_token={spelling}&x=1")),
                "u?access_token=[redacted]&x=1"
            );
        }
        let mut query = reqwest::Url::parse("http://localhost/").unwrap();
        query.query_pairs_mut().append_pair("access_token", "ab%cd");
        assert!(!redactor.redact(query.as_str()).contains("ab%25cd"), "{query}");
    }

    fn json_strings(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(text) => out.push(text.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
            serde_json::Value::Object(map) => map.values().for_each(|v| json_strings(v, out)),
            _ => {}
        }
    }

    /// Every way JSON can write an echo of the token hides it from a plain search: `\/` for `/` (PHP's default),
    /// `\uXXXX` for any character, `\"` and `\\\\` for the token's own quotes and backslashes. The parsed body
    /// must hold no copy of it.
    #[test]
    fn redacted_bodies_hold_no_echo_of_the_token_however_json_escapes_it() {
        for token in ["tok/Secret+1", "a\"quoted\\token/x", "plain-token-42"] {
            let redactor = Redactor::new(&Secret::new(token));
            let escaped_slashes = serde_json::to_string(token).unwrap().replace('/', "\\/");
            let unicode: String = token.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
            for echo in [escaped_slashes, format!("\"{unicode}\"")] {
                let body = format!(
                    r#"{{"context": {{"source_urls": {{"feed": ["https://x.example/?access_token=" , {echo}]}}}}}}"#
                );
                let redacted = redactor.redact_body(body.clone());
                let value: serde_json::Value =
                    serde_json::from_str(&redacted).unwrap_or_else(|e| panic!("{e}: {redacted}"));
                let mut texts = Vec::new();
                json_strings(&value, &mut texts);
                assert!(texts.iter().all(|t| !t.contains(token)), "{token}: {body} -> {redacted}");
            }
        }
    }

    /// An error body shown as it came (a shape not read, or cut short) may echo the token with JSON escapes:
    /// they are undone before the search, so the echo is redacted.
    #[test]
    fn error_bodies_echoing_the_token_with_json_escapes_are_redacted() {
        let redactor = Redactor::new(&Secret::new("Ab/Cd+Ef9Zx=="));
        let text =
            redactor.clean_server_text(&server_message(br#"{"detail": "invalid token Ab\/Cd+Ef9Zx=="}"#));
        assert!(!text.contains("Cd+Ef9Zx") && text.contains("[redacted]"), "{text}");
        let redactor = Redactor::new(&Secret::new("T\u{f6}k3n-SEKRIT"));
        let body = br#"{"error": {"code": 401, "detail": "bad access_token=T\u00f6k3n-SEKRIT"}} and more"#;
        let text = redactor.clean_server_text(&server_message(body));
        assert!(!text.contains("SEKRIT"), "{text}");
        // Cut short in the middle of an escape, and a surrogate pair: no panic, escapes kept or decoded.
        assert_eq!(json_unescaped(r"a\u00"), r"a\u00");
        assert_eq!(json_unescaped(r"\ud83d\ude00 \/ \q"), "\u{1f600} / \\q");
    }

    #[test]
    fn server_text_is_cleaned_and_capped() {
        let redactor = Redactor::new(&Secret::new("tok-999"));
        let long = format!("bad\r\ntoken tok-999 {}", "x".repeat(2000));
        let text = redactor.clean_server_text(&long);
        assert!(!text.contains("tok-999") && !text.contains('\n'));
        assert!(text.chars().count() <= MAX_SERVER_MESSAGE_CHARS + 1);
        assert_eq!(
            server_message(br#"{"error": {"message": "Invalid access token."}}"#),
            "Invalid access token."
        );
        assert_eq!(server_message(br#"{"error": "nope"}"#), "nope");
        assert_eq!(server_message(b"plain"), "plain");
    }

    #[test]
    fn cached_answers_come_with_their_parsed_document() {
        let dir = tempfile::tempdir().unwrap();
        let cache_path = dir.path().join("cache.sqlite");
        let token = Secret::new("tok-parsed-1");
        let body = r#"{"asn": {"description": "EXAMPLE-AS"}, "id": "192.0.2.1", "type": "ip"}"#;
        {
            let cache = Cache::open(&cache_path, Duration::from_secs(3600)).unwrap();
            let fp = token_fingerprint(&token);
            cache.put("ips", "192.0.2.1", &fp, &CachedAnswer::Found(body.into()));
            cache.put("hosts", "gone.example.com", &fp, &CachedAnswer::NotFound);
            // A stored body that no longer passes `parse_document` is a miss, never handed over.
            cache.put("ips", "192.0.2.2", &fp, &CachedAnswer::Found("{\"error\": \"x\"}".into()));
        }
        // Nothing listens on port 9: an indicator that is not answered from the cache fails to connect.
        let settings = SeclyticsSettings {
            base_url: "http://127.0.0.1:9".into(),
            access_token: token,
            cache: Some(cache_path),
            max_retries: 0,
            connect_timeout: Duration::from_secs(2),
            ..SeclyticsSettings::default()
        };
        let client = Client::new(&settings).unwrap();
        let indicators: Vec<Indicator> = ["192.0.2.1", "gone.example.com", "192.0.2.2", "192.0.2.1"]
            .iter()
            .map(|v| Indicator::classify(v).unwrap())
            .collect();
        let answers = client.lookup_all_parsed(&indicators, false, &|_, _| {}).unwrap();
        let plain = client.lookup_all(&indicators, false, &|_, _| {}).unwrap();
        assert_eq!(answers.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>(), plain);
        match &answers[0] {
            (Answer::Found { body: found, source: AnswerSource::Cache }, Some(document)) => {
                assert_eq!(&**found, body);
                assert_eq!(document.id.as_deref(), Some("192.0.2.1"));
                let expected = parse_document(body).unwrap();
                assert_eq!(format!("{document:?}"), format!("{expected:?}"));
            }
            other => panic!("expected a cached document, got {other:?}"),
        }
        assert!(matches!(answers[1], (Answer::NotFound { source: AnswerSource::Cache }, None)));
        assert!(matches!(answers[2], (Answer::Failed { .. }, None)), "{:?}", answers[2]);
        // The repeated indicator shares the answer; only its first position carries the document.
        assert_eq!(answers[3].0, answers[0].0);
        assert!(answers[3].1.is_none());
    }

    /// RFC 9110 (§5.6.7): a recipient of an HTTP date must accept the obsolete RFC 850 and asctime forms too.
    #[test]
    fn http_dates_are_read_in_all_three_forms() {
        let expected = chrono::DateTime::parse_from_rfc3339("1994-11-06T08:49:37Z").unwrap();
        for form in
            ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"]
        {
            assert_eq!(
                http_date(form, chrono::Utc::now()),
                Some(expected.with_timezone(&chrono::Utc)),
                "{form}"
            );
        }
        assert_eq!(http_date("soon", chrono::Utc::now()), None);
    }

    /// RFC 9110 (§5.6.7): an RFC 850 two-digit year more than 50 years ahead is the latest such year in the past.
    #[test]
    fn rfc_850_two_digit_years_are_read_relative_to_now() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-06T01:00:00Z").unwrap().to_utc();
        let year = |yy: &str| {
            use chrono::Datelike;
            http_date(&format!("Sunday, 06-Dec-{yy} 01:00:00 GMT"), now).map(|date| date.year())
        };
        // chrono alone reads `70` as 1970 and `69` as 2069.
        assert_eq!(year("26"), Some(2026));
        assert_eq!(year("70"), Some(2070));
        assert_eq!(year("76"), Some(2076));
        assert_eq!(year("77"), Some(1977));
        assert_eq!(year("99"), Some(1999));
        assert_eq!(year("00"), Some(2000));
        let late = chrono::DateTime::parse_from_rfc3339("2080-01-01T00:00:00Z").unwrap().to_utc();
        let in_2080 = http_date("Monday, 01-Jan-25 00:00:00 GMT", late).map(|date| date.to_rfc3339());
        assert_eq!(in_2080.as_deref(), Some("2125-01-01T00:00:00+00:00"));
        // 29 February of a year that has one.
        assert!(http_date("Tuesday, 29-Feb-00 00:00:00 GMT", now).is_some());
    }

    #[test]
    fn offline_names() {
        let ip6 = Indicator::classify("2001:db8::1").unwrap();
        assert_eq!(offline_file_name(&ip6).as_deref(), Some("2001_db8__1.json"));
        let evil = Indicator { kind: crate::vttl::IndicatorKind::Host, value: "../../etc/passwd".into() };
        assert_eq!(offline_file_name(&evil), None);
    }
}
