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
//!   entries are purged when the cache is opened (best effort; an index by age makes that a short read, not a
//!   scan of the whole file). An entry stamped in the future (clock skew) is
//!   treated as fresh.
//! * The cache is an optimisation, never a reason to stop: a file that cannot be opened (corrupt, not a
//!   database, unwritable folder) makes [`Cache::open`] fail and the client runs without a cache; a read or
//!   write error later is logged once as a warning and treated as a miss / skipped write. The file is never
//!   deleted or recreated by us (another process may be using it).
//! * Only status 200 (a body that passed `parse_document`) and 404 are stored; callers never pass errors.
//! * Beside each answer the cache may keep a **digest**: an opaque blob the caller derived from that answer
//!   (the enricher stores the cell values and log lines it computed, so a later run skips parsing and
//!   digesting the body again), tagged with a `derivation` number the caller chooses (what the blob depends
//!   on besides the answer: program version, watch lists, switches) and stamped with the answer's
//!   `fetched_at_ms`. A digest is only stored while its answer is in the cache, is deleted whenever that
//!   answer is replaced, expires with it, and is only handed out for the same `derivation`. Schema version 2
//!   added the `digests` table; version 3 keeps it as a rowid table and adds indexes by age (see
//!   `SCHEMA_SQL`). Older files are upgraded in place when opened — answers are kept, a version 2 file's
//!   digests are dropped (they are made again on the next run) — and a program that only knows an older
//!   version then refuses the file and runs without a cache, so it cannot replace answers behind the digests'
//!   back. A digest is stored only beside the very answer it was made from (same status and body, checked
//!   in the storing statement): when another process replaces an answer between our reading it and storing
//!   its digest, the digest is dropped and made again from the new answer on the next run.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// Schema version stored in `PRAGMA user_version` (1: answers only; 2: answers and digests; 3: the same with
/// indexes by age and digests in a rowid table, see [`SCHEMA_SQL`]).
const SCHEMA_VERSION: i64 = 3;

/// Everything a version 3 file holds; idempotent (`IF NOT EXISTS`), so it also completes older files (the
/// version number itself is written by [`Cache::create_or_upgrade`]).
///
/// `responses` is keyed by its primary key (a `WITHOUT ROWID` table). `digests` is an ordinary rowid table with
/// the key as a unique index: its rows (a few hundred bytes) are too large for a `WITHOUT ROWID` b-tree, whose
/// interior pages hold whole rows — with 1 000 000 digests that tree was seven levels deep and nearly every
/// read fetched a page. Both tables have an index on `fetched_at_ms`, so purging expired entries when the cache
/// is opened reads only what expired instead of the whole file (≈ 0.7 s for a 3 GB cache).
const SCHEMA_SQL: &str = "
    CREATE TABLE IF NOT EXISTS responses (
        endpoint      TEXT    NOT NULL,
        indicator     TEXT    NOT NULL,
        token_fp      TEXT    NOT NULL,
        status        INTEGER NOT NULL,
        body          TEXT    NOT NULL,
        fetched_at_ms INTEGER NOT NULL,
        PRIMARY KEY (endpoint, indicator, token_fp)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS responses_by_age ON responses (fetched_at_ms);
    CREATE TABLE IF NOT EXISTS digests (
        endpoint      TEXT    NOT NULL,
        indicator     TEXT    NOT NULL,
        token_fp      TEXT    NOT NULL,
        derivation    INTEGER NOT NULL,
        fetched_at_ms INTEGER NOT NULL,
        data          BLOB    NOT NULL,
        UNIQUE (endpoint, indicator, token_fp)
    );
    CREATE INDEX IF NOT EXISTS digests_by_age ON digests (fetched_at_ms);";

/// Why [`Cache::create_or_upgrade`] failed.
enum SchemaError {
    Sqlite(rusqlite::Error),
    Newer(i64),
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> Self {
        SchemaError::Sqlite(e)
    }
}

/// The read of one cached answer.
const GET_SQL: &str = "SELECT status, body, fetched_at_ms FROM responses
                       WHERE endpoint = ?1 AND indicator = ?2 AND token_fp = ?3";

/// The read of one digest: made under `derivation` ?4 from an answer fetched after ?5.
const GET_DIGEST_SQL: &str = "SELECT data FROM digests
                              WHERE endpoint = ?1 AND indicator = ?2 AND token_fp = ?3
                                AND derivation = ?4 AND fetched_at_ms > ?5";

/// Purging what expired at or before ?1 (each through its table's index by age).
const PURGE_SQL: [&str; 2] =
    ["DELETE FROM responses WHERE fetched_at_ms <= ?1", "DELETE FROM digests WHERE fetched_at_ms <= ?1"];

/// Storing an answer: its digest (made from the answer it replaces) goes first, in the same transaction.
const DELETE_DIGEST_SQL: &str =
    "DELETE FROM digests WHERE endpoint = ?1 AND indicator = ?2 AND token_fp = ?3";
const PUT_SQL: &str =
    "INSERT OR REPLACE INTO responses (endpoint, indicator, token_fp, status, body, fetched_at_ms)
                       VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Storing a digest: only while the answer it was made from — status ?6, body ?7 — is the one cached,
/// stamped with that answer's `fetched_at_ms`. Checked in the same statement, so an answer replaced by another
/// process after we read it never gets our digest of the old one.
const PUT_DIGEST_SQL: &str = "INSERT OR REPLACE INTO digests
                                  (endpoint, indicator, token_fp, derivation, fetched_at_ms, data)
                              SELECT ?1, ?2, ?3, ?4, fetched_at_ms, ?5 FROM responses
                              WHERE endpoint = ?1 AND indicator = ?2 AND token_fp = ?3
                                AND status = ?6 AND body = ?7";

/// How long SQLite waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the cache file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot use cache file {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("cache file {path} has schema version {found}, expected 1 to {SCHEMA_VERSION}")]
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

/// The answer a digest was made from, as [`Cache::put_digests`] checks it against the cached one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadeFrom<'a> {
    /// A 200 with this body.
    Found(&'a str),
    /// A 404.
    NotFound,
}

impl<'a> MadeFrom<'a> {
    /// The `status` and `body` columns of this answer's row in `responses`.
    fn row(self) -> (i64, &'a str) {
        match self {
            MadeFrom::Found(body) => (200, body),
            MadeFrom::NotFound => (404, ""),
        }
    }
}

impl<'a> From<&'a CachedAnswer> for MadeFrom<'a> {
    fn from(answer: &'a CachedAnswer) -> Self {
        match answer {
            CachedAnswer::Found(body) => MadeFrom::Found(body),
            CachedAnswer::NotFound => MadeFrom::NotFound,
        }
    }
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

/// The row [`GET_SQL`] reads for one key: status, body, `fetched_at_ms`.
fn answer_row(
    statement: &mut rusqlite::Statement<'_>,
    endpoint: &str,
    indicator: &str,
    token_fp: &str,
) -> rusqlite::Result<Option<(i64, String, i64)>> {
    statement
        .query_row(params![endpoint, indicator, token_fp], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()
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
        // Before anything is written (the switch to WAL rewrites the file's header): a file of a newer version,
        // or an SQLite database that is not a cache, is left exactly as it is. Reading is also what detects a
        // corrupt file early. One statement, so one snapshot: another process may be creating the tables now.
        let (version, tables): (i64, i64) = connection
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM sqlite_master)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(open_error)?;
        if !(0..=SCHEMA_VERSION).contains(&version) {
            return Err(CacheError::Schema { path: path.to_path_buf(), found: version });
        }
        // Every cache file has its version set in the transaction that creates its tables.
        if version == 0 && tables > 0 {
            return Err(CacheError::Open {
                path: path.to_path_buf(),
                reason: "an SQLite database that is not a vttl-seclytics cache (left unchanged)".into(),
            });
        }
        Self::use_wal(&connection).map_err(open_error)?;
        connection.execute_batch("PRAGMA synchronous=NORMAL;").map_err(open_error)?;
        Self::create_or_upgrade(&connection).map_err(|e| match e {
            SchemaError::Sqlite(e) => open_error(e),
            SchemaError::Newer(found) => CacheError::Schema { path: path.to_path_buf(), found },
        })?;
        let cache =
            Cache { path: path.to_path_buf(), connection: Mutex::new(connection), ttl, warned: false.into() };
        cache.purge_expired();
        Ok(cache)
    }

    /// Puts the file in WAL mode (several processes may read and write it). Switching needs the file to
    /// itself, and SQLite does not wait for that as it waits for locks otherwise: two processes opening a new
    /// file at once had one of them fail, and run without a cache. So a busy answer is tried again, for as
    /// long as any lock is waited for.
    fn use_wal(connection: &Connection) -> rusqlite::Result<()> {
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            let mode: rusqlite::Result<String> =
                connection.query_row("PRAGMA journal_mode", [], |row| row.get(0)).and_then(|mode: String| {
                    if mode.eq_ignore_ascii_case("wal") {
                        Ok(mode)
                    } else {
                        connection.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
                    }
                });
            match mode {
                Ok(_) => return Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Brings the file to [`SCHEMA_VERSION`] inside one write transaction, so two processes opening the same
    /// old file upgrade it once: creates what a new file lacks, adds the digests to a version 1 file, and on a
    /// version 2 file replaces the digests table (its rows are derived data, made again on the next run) and
    /// adds the age indexes. A file of a newer version is left alone.
    fn create_or_upgrade(connection: &Connection) -> Result<(), SchemaError> {
        connection.execute_batch("BEGIN IMMEDIATE")?;
        let upgraded = (|| {
            let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            if !(0..=SCHEMA_VERSION).contains(&version) {
                return Err(SchemaError::Newer(version));
            }
            if version < SCHEMA_VERSION {
                if version == 2 {
                    connection.execute_batch("DROP TABLE IF EXISTS digests")?;
                }
                connection.execute_batch(SCHEMA_SQL)?;
                connection.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
            }
            Ok(())
        })();
        match upgraded {
            Ok(()) => connection.execute_batch("COMMIT").map_err(SchemaError::Sqlite),
            Err(e) => {
                let _ = connection.execute_batch("ROLLBACK");
                Err(e)
            }
        }
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
        let connection = self.connection();
        let result = PURGE_SQL.iter().try_for_each(|sql| connection.execute(sql, params![cutoff]).map(drop));
        drop(connection);
        if let Err(e) = result {
            self.warn("purge", &e);
        }
    }

    /// The fresh answer stored for this key, if any. Errors count as a miss.
    pub fn get(&self, endpoint: &str, indicator: &str, token_fp: &str) -> Option<CachedAnswer> {
        // A cached prepared statement: a workbook with many indicators makes one `get` per indicator, and
        // compiling the SQL each time cost about a quarter of a cache read (measured, see BENCHMARKS.md).
        let connection = self.connection();
        let row = connection
            .prepare_cached(GET_SQL)
            .and_then(|mut statement| answer_row(&mut statement, endpoint, indicator, token_fp));
        drop(connection);
        self.answer_from(row, now_ms().saturating_sub(self.ttl_ms()))
    }

    /// [`Cache::get`] for many keys `(endpoint, indicator)`: one transaction (one lock of the database file
    /// instead of one per key) and one prepared statement, holding this process's connection throughout so no
    /// other thread's statement runs inside the transaction.
    pub fn get_many(&self, keys: &[(&str, &str)], token_fp: &str) -> Vec<Option<CachedAnswer>> {
        let fresh_after = now_ms().saturating_sub(self.ttl_ms());
        self.read_many(keys, GET_SQL, |statement, (endpoint, indicator)| {
            self.answer_from(answer_row(statement, endpoint, indicator, token_fp), fresh_after)
        })
    }

    /// The digests stored for many keys `(endpoint, indicator)` under `derivation`, while their answers are
    /// fresh; `None` for every other key. Read like [`Cache::get_many`]; errors count as misses.
    pub fn get_digests(
        &self,
        keys: &[(&str, &str)],
        token_fp: &str,
        derivation: i64,
    ) -> Vec<Option<Vec<u8>>> {
        let fresh_after = now_ms().saturating_sub(self.ttl_ms());
        self.read_many(keys, GET_DIGEST_SQL, |statement, (endpoint, indicator)| {
            let row = statement
                .query_row(params![endpoint, indicator, token_fp, derivation, fresh_after], |row| {
                    row.get::<_, Vec<u8>>(0)
                })
                .optional();
            row.unwrap_or_else(|e| {
                self.warn("read", &e);
                None
            })
        })
    }

    /// Runs `read` for every key with the prepared statement of `sql`, inside one read transaction.
    fn read_many<T: Clone>(
        &self,
        keys: &[(&str, &str)],
        sql: &str,
        mut read: impl FnMut(&mut rusqlite::CachedStatement<'_>, &(&str, &str)) -> Option<T>,
    ) -> Vec<Option<T>> {
        let connection = self.connection();
        let in_transaction = connection.execute_batch("BEGIN").is_ok();
        let found = match connection.prepare_cached(sql) {
            Ok(mut statement) => keys.iter().map(|key| read(&mut statement, key)).collect(),
            Err(e) => {
                self.warn("read", &e);
                vec![None; keys.len()]
            }
        };
        if in_transaction && let Err(e) = connection.execute_batch("COMMIT") {
            self.warn("read", &e);
        }
        found
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

    /// Stores an answer (replacing an older one for the same key, and the digest made from it). Errors are
    /// logged and ignored.
    pub fn put(&self, endpoint: &str, indicator: &str, token_fp: &str, answer: &CachedAnswer) {
        self.put_many(token_fp, &[(endpoint, indicator, answer.clone())]);
    }

    /// Stores many answers — `(endpoint, indicator, answer)` under one token fingerprint — in one
    /// transaction: one commit instead of one per answer (priming a cache with a million answers takes
    /// seconds instead of minutes). Errors are logged and ignored, like [`Cache::put`]; on an error nothing of
    /// this batch is stored.
    pub fn put_many(&self, token_fp: &str, entries: &[(&str, &str, CachedAnswer)]) {
        let fetched_at_ms = now_ms();
        self.write_many(|transaction| {
            let mut forget_digest = transaction.prepare_cached(DELETE_DIGEST_SQL)?;
            let mut store = transaction.prepare_cached(PUT_SQL)?;
            for (endpoint, indicator, answer) in entries {
                let (status, body) = MadeFrom::from(answer).row();
                forget_digest.execute(params![endpoint, indicator, token_fp])?;
                store.execute(params![endpoint, indicator, token_fp, status, body, fetched_at_ms])?;
            }
            Ok(())
        });
    }

    /// Stores digests — `(endpoint, indicator, answer, data)`: `data` made under `derivation` from `answer` —
    /// where that very answer is cached now, in one transaction. A digest whose answer is not cached, or was
    /// replaced since (a different body or status), is dropped. Errors are logged and ignored.
    pub fn put_digests(
        &self,
        token_fp: &str,
        derivation: i64,
        entries: &[(&str, &str, MadeFrom<'_>, &[u8])],
    ) {
        self.write_many(|transaction| {
            let mut store = transaction.prepare_cached(PUT_DIGEST_SQL)?;
            for (endpoint, indicator, made_from, data) in entries {
                let (status, body) = made_from.row();
                store.execute(params![endpoint, indicator, token_fp, derivation, data, status, body])?;
            }
            Ok(())
        });
    }

    /// Runs `write` in one transaction; commits when it succeeds. Errors are logged and ignored.
    fn write_many(&self, write: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>) {
        let mut connection = self.connection();
        let result = connection.transaction().and_then(|transaction| {
            write(&transaction)?;
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

    #[test]
    fn digests_live_and_die_with_their_answer() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c.sqlite"), Duration::from_secs(3600)).unwrap();
        cache.put("ips", "192.0.2.1", "fp", &CachedAnswer::Found("{\"id\": 1}".into()));
        cache.put("hosts", "gone.example", "fp", &CachedAnswer::NotFound);
        let keys = [("ips", "192.0.2.1"), ("hosts", "gone.example"), ("files", "abc")];
        // `files/abc` has no cached answer: its digest is dropped.
        cache.put_digests(
            "fp",
            7,
            &[
                ("ips", "192.0.2.1", ONE, b"one"),
                ("hosts", "gone.example", MadeFrom::NotFound, b"two"),
                ("files", "abc", MadeFrom::NotFound, b"three"),
            ],
        );
        assert_eq!(
            cache.get_digests(&keys, "fp", 7),
            vec![Some(b"one".to_vec()), Some(b"two".to_vec()), None]
        );
        // Another derivation, another token: nothing.
        assert_eq!(cache.get_digests(&keys, "fp", 8), vec![None, None, None]);
        assert_eq!(cache.get_digests(&keys, "other", 7), vec![None, None, None]);
        // A new answer for a key drops that key's digest (it was made from the old answer), and only that one.
        cache.put("ips", "192.0.2.1", "fp", &CachedAnswer::Found("{\"id\": 2}".into()));
        assert_eq!(cache.get_digests(&keys, "fp", 7), vec![None, Some(b"two".to_vec()), None]);
        cache.put_many("fp", &[("hosts", "gone.example", CachedAnswer::NotFound)]);
        assert_eq!(cache.get_digests(&keys, "fp", 7), vec![None, None, None]);
        // Stored again, replaced in place; seen by a second connection.
        let two = MadeFrom::Found("{\"id\": 2}");
        cache.put_digests("fp", 7, &[("ips", "192.0.2.1", two, b"new"), ("ips", "192.0.2.1", two, b"newer")]);
        let other = Cache::open(&dir.path().join("c.sqlite"), Duration::from_secs(3600)).unwrap();
        assert_eq!(other.get_digests(&keys[..1], "fp", 7), vec![Some(b"newer".to_vec())]);
    }

    /// The body of the first answer the digest tests cache.
    const ONE: MadeFrom<'static> = MadeFrom::Found("{\"id\": 1}");

    /// A digest made from an answer that another process replaced before the digest was stored is dropped,
    /// whatever the order of the two writes; a digest of the answer cached now is kept.
    #[test]
    fn a_digest_of_a_replaced_answer_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let ours = Cache::open(&path, Duration::from_secs(3600)).unwrap();
        let theirs = Cache::open(&path, Duration::from_secs(3600)).unwrap();
        let key = [("ips", "192.0.2.1")];
        ours.put("ips", "192.0.2.1", "fp", &CachedAnswer::Found("{\"id\": 1}".into()));
        assert_eq!(ours.get("ips", "192.0.2.1", "fp"), Some(CachedAnswer::Found("{\"id\": 1}".into())));
        // While we digest the body we read, the other process stores a newer answer.
        theirs.put("ips", "192.0.2.1", "fp", &CachedAnswer::Found("{\"id\": 2}".into()));
        ours.put_digests("fp", 1, &[("ips", "192.0.2.1", ONE, b"of id 1")]);
        assert_eq!(theirs.get_digests(&key, "fp", 1), vec![None]);
        // A found answer replaced by a 404, and the other way round: the status is checked too.
        theirs.put("ips", "192.0.2.1", "fp", &CachedAnswer::NotFound);
        ours.put_digests("fp", 1, &[("ips", "192.0.2.1", MadeFrom::Found(""), b"of a 200")]);
        assert_eq!(ours.get_digests(&key, "fp", 1), vec![None]);
        ours.put_digests("fp", 1, &[("ips", "192.0.2.1", MadeFrom::NotFound, b"of the 404")]);
        assert_eq!(ours.get_digests(&key, "fp", 1), vec![Some(b"of the 404".to_vec())]);
        theirs.put("ips", "192.0.2.1", "fp", &CachedAnswer::Found("{\"id\": 3}".into()));
        ours.put_digests("fp", 1, &[("ips", "192.0.2.1", MadeFrom::NotFound, b"of the 404")]);
        assert_eq!(ours.get_digests(&key, "fp", 1), vec![None]);
        // A digest of the body cached now is stored.
        ours.put_digests("fp", 1, &[("ips", "192.0.2.1", MadeFrom::Found("{\"id\": 3}"), b"of id 3")]);
        assert_eq!(theirs.get_digests(&key, "fp", 1), vec![Some(b"of id 3".to_vec())]);
    }

    #[test]
    fn digests_expire_with_their_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let cache = Cache::open(&path, Duration::from_millis(300)).unwrap();
        cache.put("ips", "192.0.2.1", "fp", &CachedAnswer::NotFound);
        cache.put_digests("fp", 1, &[("ips", "192.0.2.1", MadeFrom::NotFound, b"d")]);
        assert!(cache.get_digests(&[("ips", "192.0.2.1")], "fp", 1)[0].is_some());
        std::thread::sleep(Duration::from_millis(350));
        assert!(cache.get_digests(&[("ips", "192.0.2.1")], "fp", 1)[0].is_none());
        // Reopening purges both tables.
        drop(cache);
        let _reopened = Cache::open(&path, Duration::from_millis(300)).unwrap();
        let connection = Connection::open(&path).unwrap();
        for table in ["responses", "digests"] {
            let rows: i64 =
                connection.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0)).unwrap();
            assert_eq!(rows, 0, "{table}");
        }
    }

    #[test]
    fn a_version_1_file_is_upgraded_and_keeps_its_answers_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        older_file(&path, 1);
        let cache = Cache::open(&path, Duration::from_secs(3600)).unwrap();
        assert_eq!(cache.get("ips", "192.0.2.1", "fp"), Some(CachedAnswer::Found("{}".into())));
        cache.put_digests("fp", 3, &[("ips", "192.0.2.1", MadeFrom::Found("{}"), b"d")]);
        assert_eq!(cache.get_digests(&[("ips", "192.0.2.1")], "fp", 3), vec![Some(b"d".to_vec())]);
        drop(cache);
        assert_eq!(file_version(&path), SCHEMA_VERSION);
        Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 4").unwrap();
        let err = Cache::open(&path, Duration::from_secs(3600)).unwrap_err();
        assert!(matches!(err, CacheError::Schema { found: 4, .. }), "{err}");
        // Refused means untouched.
        assert_eq!(file_version(&path), 4);
    }

    /// Processes (here threads, each with its own connection) opening one new cache file at the same moment
    /// all get the cache: switching a new file to WAL needs it to itself and SQLite does not wait for that, so
    /// one in every few dozen opens failed and that run (or that whole service) went on without a cache.
    #[test]
    fn opening_a_new_file_from_many_places_at_once_always_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..60 {
            let path = dir.path().join(format!("new-{round}.sqlite"));
            let start = std::sync::Barrier::new(8);
            let failures: Vec<String> = std::thread::scope(|threads| {
                let opened: Vec<_> = (0..8)
                    .map(|_| {
                        threads.spawn(|| {
                            start.wait();
                            Cache::open(&path, Duration::from_secs(3600)).err().map(|e| e.to_string())
                        })
                    })
                    .collect();
                opened.into_iter().filter_map(|t| t.join().unwrap()).collect()
            });
            assert!(failures.is_empty(), "round {round}: {failures:?}");
        }
    }

    /// A file the cache refuses — of a newer version, or an SQLite database of something else — is left
    /// exactly as it was: not switched to WAL (which rewrites the header), no tables added.
    #[test]
    fn a_refused_file_is_left_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let newer = dir.path().join("newer.sqlite");
        {
            let connection = Connection::open(&newer).unwrap();
            connection.execute_batch("CREATE TABLE responses (x); PRAGMA user_version = 9;").unwrap();
        }
        let foreign = dir.path().join("notes.sqlite");
        Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE notes (text TEXT);").unwrap();
        for path in [&newer, &foreign] {
            let before = std::fs::read(path).unwrap();
            let error = Cache::open(path, Duration::from_secs(3600)).unwrap_err();
            assert_eq!(std::fs::read(path).unwrap(), before, "{} changed ({error})", path.display());
            assert!(!path.with_extension("sqlite-wal").exists());
        }
        let error = Cache::open(&foreign, Duration::from_secs(3600)).unwrap_err().to_string();
        assert!(error.contains("not a vttl-seclytics cache"), "{error}");
    }

    /// Writes at `path` what version 1 or 2 of the schema created, holding one answer (`ips/192.0.2.1`, token
    /// fingerprint `fp`) and, for version 2, its digest (derivation 5, data `01 02`).
    fn older_file(path: &Path, version: i64) {
        let connection = Connection::open(path).unwrap();
        let responses = "CREATE TABLE responses (endpoint TEXT NOT NULL, indicator TEXT NOT NULL,
            token_fp TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL,
            fetched_at_ms INTEGER NOT NULL, PRIMARY KEY (endpoint, indicator, token_fp)) WITHOUT ROWID;";
        let digests = "CREATE TABLE digests (endpoint TEXT NOT NULL, indicator TEXT NOT NULL,
            token_fp TEXT NOT NULL, derivation INTEGER NOT NULL, fetched_at_ms INTEGER NOT NULL,
            data BLOB NOT NULL, PRIMARY KEY (endpoint, indicator, token_fp)) WITHOUT ROWID;";
        connection.execute_batch(responses).unwrap();
        let now = now_ms();
        connection
            .execute("INSERT INTO responses VALUES ('ips', '192.0.2.1', 'fp', 200, '{}', ?1)", params![now])
            .unwrap();
        if version == 2 {
            connection.execute_batch(digests).unwrap();
            connection
                .execute(
                    "INSERT INTO digests VALUES ('ips', '192.0.2.1', 'fp', 5, ?1, x'0102')",
                    params![now],
                )
                .unwrap();
        }
        connection.execute_batch(&format!("PRAGMA user_version = {version}")).unwrap();
    }

    fn file_version(path: &Path) -> i64 {
        let connection = Connection::open(path).unwrap();
        connection.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap()
    }

    #[test]
    fn a_version_2_file_keeps_its_answers_and_gets_the_new_digest_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        older_file(&path, 2);
        let cache = Cache::open(&path, Duration::from_secs(3600)).unwrap();
        assert_eq!(cache.get("ips", "192.0.2.1", "fp"), Some(CachedAnswer::Found("{}".into())));
        // The old digests are gone (they are derived data); new ones are stored and read as before.
        assert_eq!(cache.get_digests(&[("ips", "192.0.2.1")], "fp", 5), vec![None]);
        cache.put_digests("fp", 5, &[("ips", "192.0.2.1", MadeFrom::Found("{}"), b"new")]);
        assert_eq!(cache.get_digests(&[("ips", "192.0.2.1")], "fp", 5), vec![Some(b"new".to_vec())]);
        drop(cache);
        // Opening again changes nothing.
        let cache = Cache::open(&path, Duration::from_secs(3600)).unwrap();
        assert_eq!(cache.get_digests(&[("ips", "192.0.2.1")], "fp", 5), vec![Some(b"new".to_vec())]);
        assert_eq!(file_version(&path), SCHEMA_VERSION);
    }

    /// SQLite's plan for `sql`, one line per step.
    fn query_plan(connection: &Connection, sql: &str) -> String {
        let mut statement = connection.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // Parameters stay unbound (NULL): the plan does not depend on their values.
        let mut rows = statement.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get::<_, String>(3).unwrap());
        }
        steps.join("\n")
    }

    #[test]
    fn purging_and_digest_reads_use_indexes_not_scans() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c.sqlite"), Duration::from_secs(3600)).unwrap();
        let connection = cache.connection();
        for (sql, index) in [
            (PURGE_SQL[0], "responses_by_age"),
            (PURGE_SQL[1], "digests_by_age"),
            (GET_DIGEST_SQL, "sqlite_autoindex_digests_1"),
            (DELETE_DIGEST_SQL, "sqlite_autoindex_digests_1"),
            (GET_SQL, "PRIMARY KEY"),
        ] {
            let plan = query_plan(&connection, sql);
            assert!(plan.contains(index) && !plan.contains("SCAN"), "{sql}:\n{plan}");
        }
        // Digests live in a rowid table (small interior pages), answers in a `WITHOUT ROWID` one.
        let without_rowid = |table: &str| -> bool {
            connection
                .query_row("SELECT wr FROM pragma_table_list WHERE name = ?1", [table], |row| row.get(0))
                .unwrap()
        };
        assert!(!without_rowid("digests"));
        assert!(without_rowid("responses"));
    }
}
