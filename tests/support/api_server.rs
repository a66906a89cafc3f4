//! A fake SecLytics API for tests and benchmarks: a real HTTP/1.1 server on `127.0.0.1:<random port>`,
//! hand-written on `std::net::TcpListener` (one thread per connection, keep-alive supported) so every byte and
//! every delay is under the test's control.
//!
//! * **Bodies look like the real API**: [`api_json`] writes keys sorted at every level with `": "` separators
//!   and two-space indentation (Python's `json.dumps(doc, indent=2, sort_keys=True)`).
//! * **Behaviour is scriptable** per path ([`ApiServer::set`]) or for every unknown path
//!   ([`ApiServer::set_default`], initially a Werkzeug-style 404): fixed documents, any status, 429 with or
//!   without `Retry-After`, "fail N times then succeed" ([`Behaviour::fail_then`]), delays, a response that
//!   sends its headers and then stalls, chunked bodies of unknown length, garbage bodies, hang-ups. On top of
//!   that: a global latency ([`ApiServer::set_latency`]), a quota mode ([`ApiServer::set_quota`]: 429 once N
//!   requests were accepted in the sliding window) that mimics a quota-enforcing server, a token check like the
//!   real API ([`ApiServer::require_token`]: 401 without the right bearer header or `access_token` query), and
//!   [`ApiServer::load_offline_dir`] to serve a folder of recorded bodies (the `offline_dir` layout) — handy
//!   for end-to-end tests and benchmarks.
//! * **Every request is recorded** ([`RecordedRequest`]: path, query, headers, arrival and response time,
//!   status sent) and the largest number of requests in flight at once is tracked
//!   ([`ApiServer::max_in_flight`]), so tests can assert counts, authentication and timing.
//! * **Dropping the server shuts it down**: the accept loop and every connection thread stop and are joined
//!   (stalls, delays and writes the client no longer reads are cut short; a thread still running after 30 s
//!   is left behind with a note, so a failing test still ends).
//!
//! ```ignore
//! let server = ApiServer::start();
//! server.set("/ips/192.0.2.1", Behaviour::document(json!({"id": "192.0.2.1", "type": "ip"})));
//! server.set("/ips/192.0.2.2", Behaviour::fail_then(2, Behaviour::status(503, "busy"), Behaviour::not_found()));
//! let base_url = server.base_url(); // "http://127.0.0.1:PORT"
//! // … run the client …
//! assert_eq!(server.count_path("/ips/192.0.2.2"), 3);
//! ```
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How often blocked threads look at the shutdown flag.
const POLL: Duration = Duration::from_millis(20);

/// How long a write may make no progress (the client reads nothing) before the connection is given up.
const WRITE_STALL: Duration = Duration::from_secs(60);

/// How long dropping the server waits for its connection threads before it leaves them behind.
const TEARDOWN: Duration = Duration::from_secs(30);

/// Serialises a document like the real API: keys sorted at every level, `": "`, two-space indentation.
pub fn api_json(value: &Value) -> String {
    serde_json::to_string_pretty(&sorted(value)).unwrap_or_default()
}

/// A copy of `value` whose objects were built in sorted key order (so the output is sorted whether or not
/// serde_json's `preserve_order` feature is enabled somewhere in the dependency graph).
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The API's error envelope: `{"error": {"message": "<text>"}}`.
pub fn error_body(message: &str) -> String {
    api_json(&serde_json::json!({ "error": { "message": message } }))
}

/// What the server does with a request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Any status, extra headers and raw body bytes.
    Respond { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// Sends a 200 status line and headers (with the full `Content-Length`), then waits `stall` before the
    /// body, then closes the connection.
    Stall { stall: Duration, body: Vec<u8> },
    /// The n-th request to the path gets `steps[n]`; the last step repeats forever.
    Sequence(Vec<Behaviour>),
    /// Waits, then behaves like the inner behaviour.
    Delayed(Duration, Box<Behaviour>),
    /// 200 with `Transfer-Encoding: chunked` (no `Content-Length`), the body sent in pieces of `chunk_size`.
    Chunked { body: Vec<u8>, chunk_size: usize },
    /// Closes the connection without answering.
    HangUp,
}

impl Behaviour {
    /// 200 with `document` serialised like the real API.
    pub fn document(document: Value) -> Behaviour {
        Behaviour::Respond {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: api_json(&document).into_bytes(),
        }
    }

    /// `status` with the API's error envelope around `message`.
    pub fn status(status: u16, message: &str) -> Behaviour {
        Behaviour::Respond {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: error_body(message).into_bytes(),
        }
    }

    /// The real API's 404 (Werkzeug's stock text).
    pub fn not_found() -> Behaviour {
        Behaviour::status(
            404,
            "404 Not Found: The requested URL was not found on the server. If you entered the URL manually \
             please check your spelling and try again.",
        )
    }

    /// 429, with `Retry-After: <retry_after>` when given (seconds or an HTTP date, sent verbatim).
    pub fn too_many_requests(retry_after: Option<&str>) -> Behaviour {
        let mut behaviour =
            Behaviour::status(429, "Rate limit exceeded for this access token. Try again later.");
        if let (Behaviour::Respond { headers, .. }, Some(value)) = (&mut behaviour, retry_after) {
            headers.push(("Retry-After".into(), value.into()));
        }
        behaviour
    }

    /// A 200 whose body is `{"error": {"message": …}}` (old API behaviour).
    pub fn error_with_200(message: &str) -> Behaviour {
        Behaviour::Respond { status: 200, headers: Vec::new(), body: error_body(message).into_bytes() }
    }

    /// A 200 whose body is neither JSON nor UTF-8.
    pub fn garbage() -> Behaviour {
        Behaviour::Respond {
            status: 200,
            headers: vec![("Content-Type".into(), "text/html".into())],
            body: b"<html><body>502 Bad Gateway \xff\xfe\x00</body>".to_vec(),
        }
    }

    /// `times` × `failure`, then `then` for every later request.
    pub fn fail_then(times: usize, failure: Behaviour, then: Behaviour) -> Behaviour {
        let mut steps = vec![failure; times];
        steps.push(then);
        Behaviour::Sequence(steps)
    }

    /// Headers, then nothing for `stall`.
    pub fn stall(stall: Duration) -> Behaviour {
        Behaviour::Stall { stall, body: b"{}".to_vec() }
    }

    /// `document` sent chunked, without a `Content-Length`, so a client cannot know its size in advance.
    pub fn chunked_document(document: Value, chunk_size: usize) -> Behaviour {
        Behaviour::Chunked { body: api_json(&document).into_bytes(), chunk_size: chunk_size.max(1) }
    }

    /// This behaviour after `delay`.
    pub fn delayed(self, delay: Duration) -> Behaviour {
        Behaviour::Delayed(delay, Box::new(self))
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path as sent (still percent-encoded), without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// When the request head had been read.
    pub arrived: Instant,
    /// When the response had been written (`None` while in flight or for hang-ups).
    pub responded: Option<Instant>,
    /// Status sent (0 for hang-ups and while in flight).
    pub status: u16,
}

impl RecordedRequest {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A query parameter, percent-decoded (`+` as space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Route {
    behaviour: Behaviour,
    hits: usize,
}

struct Script {
    routes: HashMap<String, Route>,
    default: Behaviour,
    latency: Duration,
    /// (limit, window) and the arrival times of requests accepted within the window.
    quota: Option<(usize, Duration)>,
    accepted: VecDeque<Instant>,
    /// The next this-many requests (any path) get a 429 with this `Retry-After`.
    throttle_next: (usize, Option<String>),
    /// When set, a request without this token (bearer header or `access_token` query) gets a 401.
    required_token: Option<String>,
}

struct Shared {
    script: Mutex<Script>,
    log: Mutex<Vec<RecordedRequest>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    shutdown: AtomicBool,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The fake API server. See the module documentation.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts a server on `127.0.0.1:0`. Every path answers 404 until scripted.
    pub fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            script: Mutex::new(Script {
                routes: HashMap::new(),
                default: Behaviour::not_found(),
                latency: Duration::ZERO,
                quota: None,
                accepted: VecDeque::new(),
                required_token: None,
                throttle_next: (0, None),
            }),
            log: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fake-api-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))
            .expect("spawn accept thread");
        ApiServer { addr, shared, accept: Some(accept) }
    }

    /// `http://127.0.0.1:<port>`, to use as `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Scripts one path (exact match on the path as sent, without the query), resetting its hit count.
    pub fn set(&self, path: &str, behaviour: Behaviour) {
        lock(&self.shared.script).routes.insert(path.to_string(), Route { behaviour, hits: 0 });
    }

    /// Convenience: `set(path, Behaviour::document(document))`.
    pub fn set_document(&self, path: &str, document: Value) {
        self.set(path, Behaviour::document(document));
    }

    /// What every path without its own script gets (initially the API's 404). Unscripted paths keep no hit
    /// count, so a [`Behaviour::Sequence`] here always gives its first step: use [`ApiServer::set`] or
    /// [`ApiServer::throttle_next`] for behaviour that changes from one request to the next.
    pub fn set_default(&self, behaviour: Behaviour) {
        lock(&self.shared.script).default = behaviour;
    }

    /// Extra delay before every response.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.script).latency = latency;
    }

    /// Quota mode: a request arriving when `limit` requests were already accepted in the last `window` gets
    /// a 429 (without `Retry-After`) and is not counted against the quota.
    pub fn set_quota(&self, limit: usize, window: Duration) {
        let mut script = lock(&self.shared.script);
        script.quota = Some((limit, window));
        script.accepted.clear();
    }

    /// Makes the server check authentication like the real API: a request that carries neither
    /// `Authorization: Bearer <token>` nor `?access_token=<token>` gets a 401. `None` turns the check off.
    pub fn require_token(&self, token: Option<&str>) {
        lock(&self.shared.script).required_token = token.map(String::from);
    }

    /// Serves recorded bodies laid out like `offline_dir` (SPEC §2): `<dir>/ips/<ip>.json`,
    /// `<dir>/hosts/<host>.json`, `<dir>/files/<hash>.json`, each as a 200 with the file's bytes unchanged at
    /// `/ips/<ip>` etc. (`_` in an `ips` file name becomes `:`, for IPv6). Returns how many paths were set.
    pub fn load_offline_dir(&self, dir: &std::path::Path) -> std::io::Result<usize> {
        let mut count = 0;
        for endpoint in ["ips", "hosts", "files"] {
            let folder = dir.join(endpoint);
            if !folder.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&folder)? {
                let path = entry?.path();
                let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let name = if endpoint == "ips" { stem.replace('_', ":") } else { stem.to_string() };
                let body = std::fs::read(&path)?;
                let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
                self.set(&format!("/{endpoint}/{name}"), Behaviour::Respond { status: 200, headers, body });
                count += 1;
            }
        }
        Ok(count)
    }

    /// The next `count` requests, whatever their path, get a 429 (with `Retry-After: <retry_after>` when
    /// given) before any script is consulted.
    pub fn throttle_next(&self, count: usize, retry_after: Option<&str>) {
        lock(&self.shared.script).throttle_next = (count, retry_after.map(String::from));
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared.log).len()
    }

    /// Requests for this exact path.
    pub fn count_path(&self, path: &str) -> usize {
        lock(&self.shared.log).iter().filter(|r| r.path == path).count()
    }

    /// Requests answered with this status.
    pub fn count_status(&self, status: u16) -> usize {
        lock(&self.shared.log).iter().filter(|r| r.status == status).count()
    }

    /// The most requests that were in flight (read, not yet answered) at one time.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Forgets recorded requests and the in-flight maximum (scripts and hit counts stay).
    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
        self.shared.max_in_flight.store(0, Ordering::SeqCst);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        // Bounded: a test that fails must still end. Threads that do not finish in time are left behind
        // (they hold nothing but their socket) with a line saying so.
        let connections = std::mem::take(&mut *lock(&self.shared.connections));
        let deadline = Instant::now() + TEARDOWN;
        while connections.iter().any(|c| !c.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let mut left_behind = 0;
        for connection in connections {
            if connection.is_finished() {
                let _ = connection.join();
            } else {
                left_behind += 1;
            }
        }
        if left_behind > 0 {
            eprintln!(
                "fake API: {left_behind} connection thread(s) did not stop within {TEARDOWN:?}; left behind"
            );
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let connection_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("fake-api-conn".into())
            .spawn(move || serve_connection(stream, connection_shared));
        if let Ok(handle) = spawned {
            let mut connections = lock(&shared.connections);
            connections.retain(|h| !h.is_finished());
            connections.push(handle);
        }
    }
}

/// Sleeps `duration`, cut short by shutdown. Returns false when shutting down.
fn nap(shared: &Shared, duration: Duration) -> bool {
    let end = Instant::now() + duration;
    loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(POLL));
    }
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

/// Reads one request head; `None` at end of stream, on errors or at shutdown.
fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>, shared: &Shared) -> Option<Head> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buffer.len() > 64 * 1024 {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if shared.shutdown.load(Ordering::SeqCst) {
                    return None;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    };
    let head_bytes: Vec<u8> = buffer.drain(..end + 4).collect();
    let text = String::from_utf8_lossy(&head_bytes[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Some(Head { method, target, headers })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes all of `bytes`, never blocking inside the operating system: the socket is non-blocking while it is
/// written and the thread naps whenever the client's window is full, giving up at shutdown or after
/// [`WRITE_STALL`] without progress. A *blocking* send that the client resets can wait forever under Wine
/// (seen: the connection gone from the kernel, the thread still parked in the Wine server), which once hung
/// a whole CI run; see docs/reliability.md, "Windows under Wine".
fn send(stream: &mut TcpStream, bytes: &[u8], shared: &Shared) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut rest = bytes;
    let mut last_progress = Instant::now();
    let written = loop {
        if rest.is_empty() {
            break true;
        }
        match stream.write(rest) {
            Ok(0) => break false,
            Ok(n) => {
                rest = &rest[n..];
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if shared.shutdown.load(Ordering::SeqCst) || last_progress.elapsed() > WRITE_STALL {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    written && stream.set_nonblocking(false).is_ok()
}

fn write_head(
    stream: &mut TcpStream,
    shared: &Shared,
    status: u16,
    headers: &[(String, String)],
    length: usize,
) -> bool {
    let mut head = format!("HTTP/1.1 {status} {}\r\nContent-Length: {length}\r\n", reason_phrase(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    send(stream, head.as_bytes(), shared)
}

fn write_chunked_head(stream: &mut TcpStream, shared: &Shared) -> bool {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    send(stream, head.as_bytes(), shared)
}

/// Picks the behaviour for a request: authentication, forced throttling, quota, then the path's script (advancing a sequence).
fn choose(shared: &Shared, request: &RecordedRequest) -> (Behaviour, Duration) {
    let (path, arrived) = (request.path.as_str(), request.arrived);
    let mut script = lock(&shared.script);
    let latency = script.latency;
    if let Some(token) = &script.required_token {
        let bearer = request.header("authorization") == Some(format!("Bearer {token}").as_str());
        let query = request.query_param("access_token").as_deref() == Some(token.as_str());
        if !bearer && !query {
            return (Behaviour::status(401, "Invalid access token."), latency);
        }
    }
    if script.throttle_next.0 > 0 {
        script.throttle_next.0 -= 1;
        return (Behaviour::too_many_requests(script.throttle_next.1.as_deref()), latency);
    }
    if let Some((limit, window)) = script.quota {
        while script.accepted.front().is_some_and(|t| arrived.duration_since(*t) >= window) {
            script.accepted.pop_front();
        }
        if script.accepted.len() >= limit {
            return (Behaviour::too_many_requests(None), latency);
        }
        script.accepted.push_back(arrived);
    }
    let behaviour = match script.routes.get_mut(path) {
        Some(route) => {
            let hit = route.hits;
            route.hits += 1;
            route.behaviour.clone().step(hit)
        }
        None => script.default.clone().step(0),
    };
    (behaviour, latency)
}

impl Behaviour {
    /// The behaviour for the `hit`-th request (resolves sequences).
    fn step(self, hit: usize) -> Behaviour {
        match self {
            Behaviour::Sequence(steps) if !steps.is_empty() => {
                let index = hit.min(steps.len() - 1);
                steps[index].clone().step(0)
            }
            other => other,
        }
    }
}

fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_read_timeout(Some(POLL));
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    while let Some(head) = read_head(&mut stream, &mut buffer, &shared) {
        let arrived = Instant::now();
        let (path, query) = match head.target.split_once('?') {
            Some((path, query)) => (path.to_string(), Some(query.to_string())),
            None => (head.target.clone(), None),
        };
        let close_requested =
            head.headers.iter().any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"));
        let record = RecordedRequest {
            method: head.method.clone(),
            path: path.clone(),
            query,
            headers: head.headers,
            arrived,
            responded: None,
            status: 0,
        };
        let (mut behaviour, latency) = choose(&shared, &record);
        let index = {
            let mut log = lock(&shared.log);
            log.push(record);
            log.len() - 1
        };
        let now_in_flight = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now_in_flight, Ordering::SeqCst);

        let mut alive = nap(&shared, latency);
        while let (true, Behaviour::Delayed(delay, inner)) = (alive, &behaviour) {
            alive = nap(&shared, *delay);
            behaviour = (**inner).clone();
        }
        let mut released = false;
        let (status, keep_open) = if !alive {
            (0, false)
        } else {
            match behaviour {
                Behaviour::Respond { status, headers, body } => {
                    // Released before the answer is written: the client cannot start its next request on this
                    // slot before it has the answer, so the count never exceeds the client's real concurrency
                    // (released after writing, a fast client could be counted twice for an instant).
                    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                    released = true;
                    let ok = write_head(&mut stream, &shared, status, &headers, body.len())
                        && send(&mut stream, &body, &shared);
                    (status, ok && !close_requested)
                }
                Behaviour::Stall { stall, body } => {
                    let headers = [("Content-Type".to_string(), "application/json".to_string())];
                    if write_head(&mut stream, &shared, 200, &headers, body.len()) && nap(&shared, stall) {
                        send(&mut stream, &body, &shared);
                    }
                    (200, false)
                }
                Behaviour::Chunked { body, chunk_size } => {
                    let mut ok = write_chunked_head(&mut stream, &shared);
                    for piece in body.chunks(chunk_size) {
                        ok = ok && send(&mut stream, format!("{:x}\r\n", piece.len()).as_bytes(), &shared);
                        ok = ok && send(&mut stream, piece, &shared) && send(&mut stream, b"\r\n", &shared);
                    }
                    ok = ok && send(&mut stream, b"0\r\n\r\n", &shared);
                    (200, ok && !close_requested)
                }
                Behaviour::HangUp | Behaviour::Sequence(_) | Behaviour::Delayed(..) => (0, false),
            }
        };
        if !released {
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(record) = lock(&shared.log).get_mut(index) {
            record.status = status;
            record.responded = (status != 0).then(Instant::now);
        }
        if !keep_open {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}
