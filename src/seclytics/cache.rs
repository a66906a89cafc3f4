//! The persistent SQLite response cache (SPEC §8): successful bodies and 404s, keyed by endpoint, indicator
//! and a fingerprint of the token, kept for `cache_ttl_hours`.
//!
//! Decisions where the SPEC is silent:
//!
//! * The key holds a **fingerprint** of the token — the first 16 hex digits of
//!   SHA-256(`"vttl-seclytics/v1\0"` + token) — never the token itself, so answers fetched with one token are
//!   not served to another and the file never holds the secret.
//! * The file is opened in WAL mode with a 10 s busy timeout, so two processes (two watchers on one machine)
//!   can use it at once; every write is one small statement.
//! * `fetched_at_ms` is Unix time in milliseconds. An entry whose age is at least the TTL is ignored; expired
//!   entries are purged when the cache is opened (best effort). An entry stamped in the future (clock skew) is
//!   treated as fresh.
//! * The cache is an optimisation, never a reason to stop: a file that cannot be opened (corrupt, not a
//!   database, unwritable folder) makes [`Cache::open`] fail and the client runs without a cache; a read or
//!   write error later is logged once as a warning and treated as a miss / skipped write. The file is never
//!   deleted or recreated by us (another process may be using it).
//! * Only status 200 (a body that passed `parse_document`) and 404 are stored; callers never pass errors.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// The read of one cached answer.
const GET_SQL: &str = "SELECT status, body, fetched_at_ms FROM responses
                       WHERE endpoint = ?1 AND indicator = ?2 AND token_fp = ?3";

/// How long SQLite waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the cache file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot use cache file {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("cache file {path} has schema version {found}, expected {SCHEMA_VERSION}")]
    Schema { path: PathBuf, found: i64 },
}

/// What the cache remembers about one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedAnswer {
    /// A 200 with this body.
    Found(String),
    /// A 404.
    NotFound,
}

/// The SQLite response cache. `Send + Sync`; one connection guarded by a mutex (statements are tiny).
pub struct Cache {
    path: PathBuf,
    connection: Mutex<Connection>,
    ttl: Duration,
    /// Set once a read/write error has been logged as a warning (later ones go to debug).
    warned: AtomicBool,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("path", &self.path).field("ttl", &self.ttl).finish()
    }
}

/// The fingerprint of a token stored in cache keys: the first 16 hex digits of
/// SHA-256(`"vttl-seclytics/v1\0"` + token). Never the token.
pub fn token_fingerprint(token: &Secret) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"vttl-seclytics/v1\0");
    hasher.update(token.expose().as_bytes());
    let digest = hasher.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Cache {
    /// Opens (creating if needed) the cache file at `path`. Fails when the file is not a usable SQLite
    /// database; the caller then runs without a cache.
    pub fn open(path: &Path, ttl: Duration) -> Result<Cache, CacheError> {
        let open_error =
            |e: rusqlite::Error| CacheError::Open { path: path.to_path_buf(), reason: e.to_string() };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Best effort: `cache = cache/seclytics.sqlite` should just work; a failure shows up in `open`.
            let _ = std::fs::create_dir_all(parent);
        }
        let connection = Connection::open(path).map_err(open_error)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        // `journal_mode` answers with the mode in force; reading it is what detects a corrupt file early.
        let _mode: String =
            connection.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0)).map_err(open_error)?;
        connection.execute_batch("PRAGMA synchronous=NORMAL;").map_err(open_error)?;
        let version: i64 =
            connection.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(open_error)?;
        if version != 0 && version != SCHEMA_VERSION {
            return Err(CacheError::Schema { path: path.to_path_buf(), found: version });
        }
        connection
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS responses (
                    endpoint      TEXT    NOT NULL,
                    indicator     TEXT    NOT NULL,
                    token_fp      TEXT    NOT NULL,
                    status        INTEGER NOT NULL,
                    body          TEXT    NOT NULL,
                    fetched_at_ms INTEGER NOT NULL,
                    PRIMARY KEY (endpoint, indicator, token_fp)
                 ) WITHOUT ROWID;
                 PRAGMA user_version = 1;",
            )
            .map_err(open_error)?;
        let cache =
            Cache { path: path.to_path_buf(), connection: Mutex::new(connection), ttl, warned: false.into() };
        cache.purge_expired();
        Ok(cache)
    }

    /// The file this cache lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn warn(&self, what: &str, error: &rusqlite::Error) {
        if self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(cache = %self.path.display(), "cache {what} failed: {error}");
        } else {
            tracing::warn!(cache = %self.path.display(), "cache {what} failed, continuing without it: {error}");
        }
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave the connection in a bad state: use it anyway.
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Deletes entries whose age is at least the TTL. Best effort.
    fn purge_expired(&self) {
        let cutoff = now_ms().saturating_sub(self.ttl_ms());
        let result =
            self.connection().execute("DELETE FROM responses WHERE fetched_at_ms <= ?1", params![cutoff]);
        if let Err(e) = result {
            self.warn("purge", &e);
        }
    }

    /// The fresh answer stored for this key, if any. Errors count as a miss.
    pub fn get(&self, endpoint: &str, indicator: &str, token_fp: &str) -> Option<CachedAnswer> {
        // A cached prepared statement: a workbook with many indicators makes one `get` per indicator, and
        // compiling the SQL each time cost about a quarter of a cache read (measured, see BENCHMARKS.md).
        let connection = self.connection();
        let row = connection.prepare_cached(GET_SQL).and_then(|mut statement| {
            statement
                .query_row(params![endpoint, indicator, token_fp], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
        });
        drop(connection);
        self.answer_from(row, now_ms().saturating_sub(self.ttl_ms()))
    }

    /// [`Cache::get`] for many keys `(endpoint, indicator)`: one transaction (one lock of the database file
    /// instead of one per key) and one prepared statement, holding this process's connection throughout so no
    /// other thread's statement runs inside the transaction.
    pub fn get_many(&self, keys: &[(&str, &str)], token_fp: &str) -> Vec<Option<CachedAnswer>> {
        let connection = self.connection();
        let in_transaction = connection.execute_batch("BEGIN").is_ok();
        let answers = match connection.prepare_cached(GET_SQL) {
            Ok(mut statement) => {
                let fresh_after = now_ms().saturating_sub(self.ttl_ms());
                keys.iter()
                    .map(|(endpoint, indicator)| {
                        let row = statement
                            .query_row(params![endpoint, indicator, token_fp], |row| {
                                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                            })
                            .optional();
                        self.answer_from(row, fresh_after)
                    })
                    .collect()
            }
            Err(e) => {
                self.warn("read", &e);
                vec![None; keys.len()]
            }
        };
        if in_transaction && let Err(e) = connection.execute_batch("COMMIT") {
            self.warn("read", &e);
        }
        answers
    }

    /// The cached answer in a row read by [`GET_SQL`], unless expired (fetched at or before `fresh_after`).
    fn answer_from(
        &self,
        row: Result<Option<(i64, String, i64)>, rusqlite::Error>,
        fresh_after: i64,
    ) -> Option<CachedAnswer> {
        let (status, body, fetched_at_ms) = match row {
            Ok(Some(row)) => row,
            Ok(None) => return None,
            Err(e) => {
                self.warn("read", &e);
                return None;
            }
        };
        if fetched_at_ms <= fresh_after {
            return None;
        }
        match status {
            200 => Some(CachedAnswer::Found(body)),
            404 => Some(CachedAnswer::NotFound),
            _ => None,
        }
    }

    /// Stores an answer (replacing an older one for the same key). Errors are logged and ignored.
    pub fn put(&self, endpoint: &str, indicator: &str, token_fp: &str, answer: &CachedAnswer) {
        let (status, body) = match answer {
            CachedAnswer::Found(body) => (200, body.as_str()),
            CachedAnswer::NotFound => (404, ""),
        };
        let connection = self.connection();
        let result = connection
            .prepare_cached(
                "INSERT OR REPLACE INTO responses (endpoint, indicator, token_fp, status, body, fetched_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut statement| statement.execute(params![endpoint, indicator, token_fp, status, body, now_ms()]));
        drop(connection);
        if let Err(e) = result {
            self.warn("write", &e);
        }
    }
}

impl Cache {
    /// Stores many answers — `(endpoint, indicator, answer)` under one token fingerprint — in one
    /// transaction: one commit instead of one per answer (priming a cache with a million answers takes
    /// seconds instead of minutes). Errors are logged and ignored, like [`Cache::put`]; on an error nothing of
    /// this batch is stored.
    pub fn put_many(&self, token_fp: &str, entries: &[(&str, &str, CachedAnswer)]) {
        let mut connection = self.connection();
        let fetched_at_ms = now_ms();
        let result = connection.transaction().and_then(|transaction| {
            {
                let mut statement = transaction.prepare_cached(
                    "INSERT OR REPLACE INTO responses (endpoint, indicator, token_fp, status, body, fetched_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for (endpoint, indicator, answer) in entries {
                    let (status, body) = match answer {
                        CachedAnswer::Found(body) => (200, body.as_str()),
                        CachedAnswer::NotFound => (404, ""),
                    };
                    statement.execute(params![endpoint, indicator, token_fp, status, body, fetched_at_ms])?;
                }
            }
            transaction.commit()
        });
        drop(connection);
        if let Err(e) = result {
            self.warn("write", &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_many_answers_like_get_and_leaves_the_cache_writable() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c.sqlite"), Duration::from_secs(3600)).unwrap();
        cache.put("ips", "192.0.2.1", "fp", &CachedAnswer::Found("{\"id\": 1}".into()));
        cache.put("hosts", "example.com", "fp", &CachedAnswer::NotFound);
        let keys =
            [("ips", "192.0.2.1"), ("hosts", "example.com"), ("ips", "192.0.2.9"), ("hosts", "192.0.2.1")];
        let many = cache.get_many(&keys, "fp");
        let one_by_one: Vec<_> = keys.iter().map(|(e, i)| cache.get(e, i, "fp")).collect();
        assert_eq!(many, one_by_one);
        assert_eq!(many[0], Some(CachedAnswer::Found("{\"id\": 1}".into())));
        assert_eq!(many[2], None);
        // The read transaction is over: a write afterwards is stored and seen by a second connection.
        cache.put("files", "abc", "fp", &CachedAnswer::NotFound);
        let other = Cache::open(&dir.path().join("c.sqlite"), Duration::from_secs(3600)).unwrap();
        assert_eq!(other.get("files", "abc", "fp"), Some(CachedAnswer::NotFound));
        assert!(cache.get_many(&[], "fp").is_empty());
    }

    #[test]
    fn missing_parent_folders_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/cache.sqlite");
        let cache = Cache::open(&path, Duration::from_secs(60)).unwrap();
        cache.put("files", "abc", "fp", &CachedAnswer::NotFound);
        assert!(path.exists());
    }

    #[test]
    fn fingerprint_is_stable_short_and_not_the_token() {
        let token = Secret::new("tok-abcdef-123456");
        let fp = token_fingerprint(&token);
        assert_eq!(fp.len(), 16);
        assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fp, token_fingerprint(&Secret::new("tok-abcdef-123456")));
        assert_ne!(fp, token_fingerprint(&Secret::new("tok-abcdef-123457")));
        assert!(!fp.contains("tok"));
    }

    #[test]
    fn stores_found_and_not_found_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c.sqlite"), Duration::from_secs(3600)).unwrap();
        cache.put("ips", "192.0.2.1", "aaaa", &CachedAnswer::Found("{\"id\": 1}".into()));
        cache.put("hosts", "example.com", "aaaa", &CachedAnswer::NotFound);
        assert_eq!(cache.get("ips", "192.0.2.1", "aaaa"), Some(CachedAnswer::Found("{\"id\": 1}".into())));
        assert_eq!(cache.get("hosts", "example.com", "aaaa"), Some(CachedAnswer::NotFound));
        assert_eq!(cache.get("ips", "192.0.2.1", "bbbb"), None);
        assert_eq!(cache.get("hosts", "192.0.2.1", "aaaa"), None);
    }

    #[test]
    fn put_many_stores_every_entry_like_put() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c.sqlite"), Duration::from_secs(3600)).unwrap();
        cache.put("ips", "192.0.2.1", "aaaa", &CachedAnswer::Found("old".into()));
        cache.put_many(
            "aaaa",
            &[
                ("ips", "192.0.2.1", CachedAnswer::Found("{\"id\": 1}".into())),
                ("hosts", "example.com", CachedAnswer::NotFound),
            ],
        );
        assert_eq!(cache.get("ips", "192.0.2.1", "aaaa"), Some(CachedAnswer::Found("{\"id\": 1}".into())));
        assert_eq!(cache.get("hosts", "example.com", "aaaa"), Some(CachedAnswer::NotFound));
        assert_eq!(cache.get("hosts", "example.com", "bbbb"), None);
    }

    #[test]
    fn expired_entries_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c.sqlite"), Duration::from_millis(150)).unwrap();
        cache.put("ips", "192.0.2.1", "aaaa", &CachedAnswer::NotFound);
        assert!(cache.get("ips", "192.0.2.1", "aaaa").is_some());
        std::thread::sleep(Duration::from_millis(200));
        assert!(cache.get("ips", "192.0.2.1", "aaaa").is_none());
    }

    #[test]
    fn corrupt_file_is_refused_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = Cache::open(&path, Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().contains("c.sqlite"), "{err}");
        // The file is left as it was.
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x42u8; 8192]);
    }
}
