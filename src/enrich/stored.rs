//! Digested answers kept in the cache beside the answers they were made from, so that a workbook whose
//! indicators are all cached skips parsing and digesting every body again (JSON, tokens, watch lists: most
//! of a cache hit's cost, see BENCHMARKS.md).
//!
//! A digest is everything [`Digested`] says about a found or not-found answer: the facts that go into the
//! cells and the values for the Seclytic logs. It depends on the answer (the cache ties it to that answer and
//! drops it when the answer is replaced or expires) and on what the program digests it with, which the
//! [`derivation`] number covers: the digest format, this program's version, the Seclytic log switches and the
//! watch lists' content. Anything else that changes what [`super::digest`] computes must bump
//! [`DIGEST_VERSION`] (a test fails when the digests of the sample answers change under the same version). A
//! stored digest that does not decode is a miss (the body is digested again), never an error: the cache file
//! is not trusted more than any other input.
//!
//! Failed lookups and offline answers are never stored (only cached answers have digests).

use sha2::{Digest, Sha256};

use super::Digested;
use super::plan::{ByteInput, Facts, put_text, put_u64};
use super::watchlists::WatchLists;
use crate::config::LogSwitches;
use crate::outbox::SeclyticLog;
use crate::seclytics::client::AnswerSource;

/// Bump when what `digest` computes from an answer changes without this program's version changing.
pub const DIGEST_VERSION: u32 = 4;

/// First byte of every stored digest (the layout below).
const FORMAT: u8 = 1;

/// The derivation number stored with each digest: digests made under another number are not used.
pub fn derivation(lists: &WatchLists, switches: LogSwitches) -> i64 {
    let mut hasher = Sha256::new();
    hasher.update(b"vttl-seclytics digest\0");
    hasher.update(DIGEST_VERSION.to_le_bytes());
    hasher.update([FORMAT]);
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    hasher.update([
        0,
        switches.ips as u8,
        switches.hashes as u8,
        switches.urls as u8,
        switches.reference_urls as u8,
    ]);
    hasher.update((super::CELL_LIMIT as u64).to_le_bytes());
    lists.fingerprint(&mut hasher);
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    i64::from_le_bytes(first)
}

fn log_code(log: SeclyticLog) -> u8 {
    match log {
        SeclyticLog::Ips => 1,
        SeclyticLog::Hashes => 2,
        SeclyticLog::Urls => 3,
        SeclyticLog::References => 4,
    }
}

fn log_from_code(code: u8) -> Option<SeclyticLog> {
    SeclyticLog::ALL.into_iter().find(|log| log_code(*log) == code)
}

/// The stored form of a digested answer from the cache or the API; `None` for what is never stored (failed
/// lookups, offline answers).
pub fn encode(digested: &Digested) -> Option<Vec<u8>> {
    if digested.failure.is_some()
        || !matches!(digested.source, Some(AnswerSource::Cache | AnswerSource::Api | AnswerSource::RunMemory))
    {
        return None;
    }
    let facts = digested.facts.as_ref()?;
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT);
    out.push(digested.not_found as u8);
    // The facts' length goes before them: written once they are.
    let length_at = out.len();
    put_u64(&mut out, 0);
    facts.encode(&mut out);
    let facts_len = (out.len() - length_at - 8) as u64;
    out[length_at..length_at + 8].copy_from_slice(&facts_len.to_le_bytes());
    put_u64(&mut out, digested.logs.len() as u64);
    for (log, values) in &digested.logs {
        out.push(log_code(*log));
        put_u64(&mut out, values.len() as u64);
        for value in values {
            put_text(&mut out, value);
        }
    }
    Some(out)
}

/// Reads what [`encode`] wrote, as an answer from the cache; `None` when `bytes` is not such an encoding.
pub fn decode(bytes: &[u8]) -> Option<Digested> {
    let mut input = ByteInput::new(bytes);
    if input.byte()? != FORMAT {
        return None;
    }
    let not_found = match input.byte()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let facts_len = input.len()?;
    let facts = Facts::decode(input.take(facts_len)?)?;
    let log_count = input.len()?;
    // Every log and value takes at least one byte: counts larger than what is left are corrupt, and never
    // used to reserve memory.
    let mut logs = Vec::with_capacity(log_count.min(SeclyticLog::ALL.len()));
    for _ in 0..log_count {
        let log = log_from_code(input.byte()?)?;
        let value_count = input.len()?;
        let mut values = Vec::with_capacity(value_count.min(input.remaining() / 8));
        for _ in 0..value_count {
            values.push(input.text()?);
        }
        logs.push((log, values));
    }
    input.is_empty().then_some(Digested {
        source: Some(AnswerSource::Cache),
        not_found,
        facts: Some(facts),
        failure: None,
        logs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found() -> Digested {
        Digested {
            source: Some(AnswerSource::Api),
            not_found: false,
            facts: Some(Facts {
                reputation: "scanner^malicious".into(),
                file_metadata: String::new(),
                file_count: Some(3),
                whois: Some("EXAMPLE-AS, ZZ".into()),
                validation: None,
                first_seen: chrono::DateTime::from_timestamp(1_700_000_123, 456_000_000)
                    .map(|t| t.naive_utc()),
                passive_dns_ip: Some("2001:db8::7".parse().unwrap()),
                keyword_watch: "AgentTesla".into(),
                url_watch: "/gate.php".into(),
                ip_domain_watch: String::new(),
                detection_watch: "trojan:win32/agenttesla!ml".into(),
            }),
            failure: None,
            logs: vec![
                (SeclyticLog::Ips, vec!["203.0.113.45".into(), "198.51.100.7".into()]),
                (SeclyticLog::Urls, vec![]),
                (SeclyticLog::References, vec!["https://example.org/ü".into()]),
            ],
        }
    }

    fn same(a: &Digested, b: &Digested) -> bool {
        a.not_found == b.not_found && a.facts == b.facts && a.failure == b.failure && a.logs == b.logs
    }

    #[test]
    fn found_and_not_found_answers_come_back_as_cache_answers() {
        let not_found = Digested {
            source: Some(AnswerSource::Cache),
            not_found: true,
            facts: Some(Facts { ip_domain_watch: "C2 list".into(), ..Facts::default() }),
            failure: None,
            logs: Vec::new(),
        };
        for digested in [found(), not_found] {
            let bytes = encode(&digested).unwrap();
            let back = decode(&bytes).unwrap();
            assert!(same(&back, &digested), "{:?} vs {:?}", back.facts, digested.facts);
            assert_eq!(back.source, Some(AnswerSource::Cache));
        }
    }

    #[test]
    fn failures_and_offline_answers_are_never_stored() {
        assert!(encode(&Digested::failed("timeout".into())).is_none());
        assert!(encode(&Digested { source: Some(AnswerSource::Offline), ..found() }).is_none());
        assert!(encode(&Digested { failure: Some("bad body".into()), ..found() }).is_none());
        // An answer the client fetched earlier in the run is an API answer: its digest is kept.
        assert!(encode(&Digested { source: Some(AnswerSource::RunMemory), ..found() }).is_some());
    }

    #[test]
    fn damaged_digests_are_misses_never_panics() {
        let bytes = encode(&found()).unwrap();
        // Every truncation, and a byte too many.
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_none(), "prefix of {len} bytes decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        // Every single-byte change either fails or decodes to something (no panic, no huge allocation).
        for at in 0..bytes.len() {
            for value in [0x00, 0x01, 0x7f, 0xff] {
                let mut changed = bytes.clone();
                changed[at] = value;
                let _ = decode(&changed);
            }
        }
        // A count near u64::MAX is refused before anything is reserved.
        let mut huge = vec![FORMAT, 0];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge).is_none());
    }

    /// `DIGEST_VERSION` and the fingerprint of what [`super::super::digest`] made of the sample answers under
    /// it (see the test below).
    const SAMPLE_DIGESTS: (u32, &str) = (4, "1d6df91df8d6eeef");

    /// A change-detector for the hazard the derivation number cannot see: a change of what `digest` computes
    /// within one version of the program (a development build, or a release whose version was not raised)
    /// would let digests made by the old code fill cells. Every sample answer of `samples/seclytics`, a
    /// not-found answer and an answer with several passive-DNS entries are digested with fixed watch lists and
    /// encoded; the fingerprint of the encodings must be the one recorded for the current `DIGEST_VERSION`.
    #[test]
    fn digests_of_the_sample_answers_change_only_with_the_digest_version() {
        let dir = tempfile::tempdir().unwrap();
        // The watch lists of `config/` as they were when the fingerprint was recorded (kept here: editing
        // those files changes the derivation number, not what this test guards).
        for (name, text) in [
            (
                "KWordwatchlist.txt",
                "systembc\ntelnet\nvpn\nproxy\nrdp\nrdpbrute\nrdp-brute\nssh\nsshbrute\nssh-brute\nformbook\nphishing\n",
            ),
            ("URLwatchlist.txt", "/wp-content/upd/\n.exe\n/gate.php\n"),
            (
                "IPDwatchlist.txt",
                "203.0.113.45|Example C2 list\nupdate-check.example.com|Example loader domain\n198.51.100.23\n",
            ),
            (
                "DNwatchlist.txt",
                "formbook\nagenttesla\ntrojan:win32/formbook!ml\ntrojan:win32/agenttesla!ml\nbackdoor:win32/systembc\n",
            ),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let lists = WatchLists::load(dir.path(), false).0;
        let switches = LogSwitches { ips: true, hashes: true, urls: true, reference_urls: true };
        let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/seclytics");
        let mut files: Vec<(String, std::path::PathBuf)> = Vec::new();
        for endpoint in ["ips", "hosts", "files"] {
            for entry in std::fs::read_dir(samples.join(endpoint)).unwrap() {
                let path = entry.unwrap().path();
                let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
                let value = if endpoint == "ips" { stem.replace('_', ":") } else { stem };
                files.push((value, path));
            }
        }
        files.sort();
        assert!(files.len() >= 10, "the sample answers are missing: {files:?}");
        let mut hasher = Sha256::new();
        let mut digest_one = |value: &str, answer: crate::seclytics::client::Answer| {
            let indicator = crate::vttl::Indicator::classify(value).expect("a sample indicator");
            let digested = super::super::digest(&lists, switches, &indicator, answer, None);
            let bytes = encode(&digested).expect("a found or not-found answer is stored");
            hasher.update(value.as_bytes());
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        };
        for (value, path) in &files {
            // As committed (a checkout that turns line ends into CRLF must not change the fingerprint).
            let body: std::sync::Arc<str> =
                std::fs::read_to_string(path).unwrap().replace("\r\n", "\n").into();
            digest_one(value, crate::seclytics::client::Answer::Found { body, source: AnswerSource::Api });
        }
        digest_one("192.0.2.200", crate::seclytics::client::Answer::NotFound { source: AnswerSource::Api });
        // Every sample has at most one passive-DNS entry: this answer has several (a CNAME without an IP, an
        // IPv6, a private and a public IPv4), so which of them `digest` takes is guarded too.
        let several: std::sync::Arc<str> = r#"{"id": "multi-answer.example.com", "passive_dns": [
            {"answer_type": "CNAME", "answer_text": "edge.example.net", "hostname": "multi-answer.example.com"},
            {"answer_ip": "2001:db8::7", "answer_type": "AAAA", "hostname": "multi-answer.example.com"},
            {"answer_ip": "10.1.2.3", "answer_type": "A", "hostname": "multi-answer.example.com"},
            {"answer_ip": "198.51.100.99", "answer_type": "A", "hostname": "multi-answer.example.com",
             "first_seen_at": "2024-02-01T10:00:00", "last_seen_at": "2024-03-01T10:00:00"}]}"#
            .into();
        digest_one(
            "multi-answer.example.com",
            crate::seclytics::client::Answer::Found { body: several, source: AnswerSource::Api },
        );
        // An IPv4-mapped passive-DNS answer is its IPv4 address (version 3: version 2 kept the IPv6 form).
        let mapped: std::sync::Arc<str> =
            r#"{"id": "mapped.example.com", "passive_dns": [{"answer_ip": "::ffff:198.51.100.98"}]}"#.into();
        digest_one(
            "mapped.example.com",
            crate::seclytics::client::Answer::Found { body: mapped, source: AnswerSource::Api },
        );
        // A related IP in IPv4-mapped form is its IPv4 address (version 4: version 3 kept the IPv6 form, so it
        // missed the watch-list entry of that IPv4 address and was logged in the other form).
        let mapped_context: std::sync::Arc<str> =
            r#"{"context": {"ips": {"gtmpdns": ["::ffff:203.0.113.45"]}}, "id": "mapped-context.example.com"}"#
                .into();
        digest_one(
            "mapped-context.example.com",
            crate::seclytics::client::Answer::Found { body: mapped_context, source: AnswerSource::Api },
        );
        // A first-seen date with a signed year is no date (version 2: version 1 kept it).
        let signed: std::sync::Arc<str> =
            r#"{"id": "192.0.2.201", "history": {"first_seen_at": "-0001-12-31T00:00:00"}}"#.into();
        digest_one(
            "192.0.2.201",
            crate::seclytics::client::Answer::Found { body: signed, source: AnswerSource::Api },
        );
        let hash = hasher.finalize();
        let fingerprint: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        let (version, recorded) = SAMPLE_DIGESTS;
        assert_eq!(
            version, DIGEST_VERSION,
            "DIGEST_VERSION is now {DIGEST_VERSION}: record ({DIGEST_VERSION}, \"{fingerprint}\") in SAMPLE_DIGESTS"
        );
        assert_eq!(
            fingerprint, recorded,
            "what `digest` makes of the sample answers changed: bump DIGEST_VERSION (digests kept in caches by the \
             old code must not be used) and record the new fingerprint in SAMPLE_DIGESTS (when only the files of samples/seclytics changed, \
             record the new fingerprint, no bump needed)"
        );
    }

    #[test]
    fn the_derivation_follows_the_lists_and_the_switches() {
        let dir = tempfile::tempdir().unwrap();
        let load = |files: &[(&str, &str)]| {
            for name in ["KWordwatchlist.txt", "URLwatchlist.txt", "IPDwatchlist.txt", "DNwatchlist.txt"] {
                let _ = std::fs::remove_file(dir.path().join(name));
            }
            for (name, text) in files {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            WatchLists::load(dir.path(), false).0
        };
        let all = LogSwitches { ips: true, hashes: true, urls: true, reference_urls: true };
        let base = derivation(&load(&[("KWordwatchlist.txt", "tesla\nzeus\n")]), all);
        // Same lists, other file order where order does not matter: same number.
        let ipd = derivation(&load(&[("IPDwatchlist.txt", "192.0.2.1|a\nexample.com|b\n")]), all);
        assert_eq!(ipd, derivation(&load(&[("IPDwatchlist.txt", "example.com|b\n192.0.2.1|a\n")]), all));
        assert_eq!(base, derivation(&load(&[("KWordwatchlist.txt", "tesla\nzeus\n")]), all));
        // Any change of content or switches: another number.
        let others = [
            derivation(&load(&[("KWordwatchlist.txt", "tesla\n")]), all),
            derivation(
                &load(&[("KWordwatchlist.txt", "tesla\nzeus\n"), ("URLwatchlist.txt", ".exe\n")]),
                all,
            ),
            derivation(&load(&[("KWordwatchlist.txt", "tesla\nzeus\n"), ("DNwatchlist.txt", "x\n")]), all),
            derivation(&load(&[("KWordwatchlist.txt", "tesla\nzeus\n")]), LogSwitches { urls: false, ..all }),
            ipd,
            derivation(&load(&[("IPDwatchlist.txt", "192.0.2.1|a\nexample.com|c\n")]), all),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(base, *other, "variant {i}");
        }
        assert_ne!(others[4], others[5]);
    }
}
