//! VTTL's four watch lists (SPEC §4, reference §7): `KWordwatchlist.txt`, `URLwatchlist.txt`,
//! `IPDwatchlist.txt` and `DNwatchlist.txt`, read from `[watchlists] dir` in VTTL's own file formats, and the
//! matching rules that fill the four watch-list columns.
//!
//! Decisions (where VTTL's behaviour is a quirk or the SPEC is silent):
//!
//! * **Files.** A file starting with a UTF-8 or UTF-16 byte-order mark is decoded accordingly; otherwise it is
//!   UTF-8 when it is valid UTF-8, else Windows-1252 (VTTL writes and reads "ANSI" text). Every line is trimmed
//!   and blank lines are skipped: in VTTL a blank line is an empty entry that "matches everything but adds
//!   nothing", which has no visible effect. There is no comment syntax (VTTL has none; a `#` line is an entry).
//!   A missing file is an empty list, so its column is not added.
//! * **Keywords** are lower-cased and matched as substrings of the lower-cased whole response body, JSON keys and
//!   feed names included (VTTL 3.11). Result: the keywords that occur, in file order, without duplicates.
//! * **URL entries** match case-insensitively in both modes. Substring mode compares lower-cased entry and URL
//!   (VTTL's substring test was case-sensitive on the URL, so `EVIL.EXE` never matched `.exe`; we fix that).
//!   Regex mode (`[VirusTotal] UseRegexForURL=True`) compiles the pattern as written, with the case-insensitive
//!   flag, unanchored — VTTL lower-cased the pattern, which silently turned `\D`, `\S`, `\W`, `\B` into
//!   `\d`, `\s`, `\w`, `\b`; we do not. A pattern that does not compile (or exceeds the compiled-size limit,
//!   [`REGEX_SIZE_LIMIT`]) is reported as a [`ListWarning`] with its file and line number and skipped; the
//!   `regex` crate matches in linear time, so no pattern can stall a run. Every entry that matches any URL of
//!   the document is kept (VTTL kept only the last URL's last match, reference 7.3), de-duplicated, in order of
//!   first match; the caller joins them with three spaces. As in VTTL, a regex entry's `|` is written as `^or^`
//!   so an alternation reads the same way it did in VTTL's cells.
//! * **IP/domain entries** are `ioc|note`; the note is optional and anything after a second `|` is dropped. The
//!   key is trimmed and lower-cased (and a trailing dot removed); an IP key is also stored in its canonical form
//!   so `2001:DB8::0:1` in the file matches `2001:db8::1` (and `::ffff:203.0.113.45` matches `203.0.113.45`).
//!   Candidates are normalised the same way before the exact lookup, so the match does not depend on case. A
//!   match gives `note/ioc`, or `ioc` when there is no note (the ioc as written in the file, lower-cased). When
//!   a key appears twice the first line wins and the second is reported as a warning when its note differs.
//! * **Detection names** are lower-cased; a candidate matches when its lower-cased form equals an entry, and the
//!   result is the lower-cased candidate (VTTL 3.16).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use regex::{Regex, RegexBuilder};

/// File names inside the watch-list folder, as VTTL spells them.
pub const KEYWORD_FILE: &str = "KWordwatchlist.txt";
pub const URL_FILE: &str = "URLwatchlist.txt";
pub const IP_DOMAIN_FILE: &str = "IPDwatchlist.txt";
pub const DETECTION_NAME_FILE: &str = "DNwatchlist.txt";

/// Largest compiled size of one URL regex (bytes of the compiled program).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A problem with one line of a list file (or, with `line` 0, the whole file). Never fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListWarning {
    pub file: PathBuf,
    /// 1-based line number; 0 when the warning concerns the whole file.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ListWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

/// Decodes a list file: see [`crate::workbook::decode_text_file`].
pub use crate::workbook::decode_text_file as decode_list_bytes;

/// Reads and decodes a list file. `Ok(None)` when the file does not exist.
pub fn read_list_file(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(decode_list_bytes(&bytes))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A fingerprint of the bytes of the four list files in `dir` (a file that cannot be read counts as such):
/// what a `watch` service compares before each workbook to notice an edit without parsing and compiling the
/// lists again (a long regex URL list takes a while to compile).
pub fn source_fingerprint(dir: &Path) -> [u8; 32] {
    files_fingerprint(
        [KEYWORD_FILE, URL_FILE, IP_DOMAIN_FILE, DETECTION_NAME_FILE].map(|name| dir.join(name)),
    )
}

/// A fingerprint of the bytes of `files`, in order (a file that cannot be read counts as such).
pub fn files_fingerprint<P: AsRef<Path>>(files: impl IntoIterator<Item = P>) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for file in files {
        match std::fs::read(file) {
            Ok(bytes) => {
                hasher.update([1]);
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
            Err(_) => hasher.update([0]),
        }
    }
    hasher.finalize().into()
}

/// The non-blank trimmed lines of a text with their 1-based line numbers.
pub(crate) fn numbered_entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, line)| (i + 1, line.trim())).filter(|(_, line)| !line.is_empty())
}

/// One URL watch-list entry.
#[derive(Debug, Clone)]
struct UrlEntry {
    /// What goes into the cell.
    display: String,
    matcher: UrlMatcher,
}

#[derive(Debug, Clone)]
enum UrlMatcher {
    /// Lower-cased substring.
    Substring(String),
    Regex(Regex),
}

impl UrlEntry {
    fn matches(&self, url: &str, url_lower: &str) -> bool {
        match &self.matcher {
            UrlMatcher::Substring(needle) => url_lower.contains(needle.as_str()),
            UrlMatcher::Regex(regex) => regex.is_match(url),
        }
    }
}

/// The four watch lists, loaded once per run.
#[derive(Debug, Clone, Default)]
pub struct WatchLists {
    /// Lower-cased, file order, no duplicates.
    keywords: Vec<String>,
    urls: Vec<UrlEntry>,
    /// Normalised key → cell text (`note/ioc` or `ioc`).
    ip_domains: HashMap<String, String>,
    /// Lower-cased.
    detection_names: HashSet<String>,
}

/// Normalises an IP address or domain for the IP/domain list: trimmed, lower-cased, no trailing dot, and an IP
/// address in its canonical text form (an IPv4-mapped IPv6 address as its IPv4 address).
fn normalise_ioc(ioc: &str) -> String {
    let trimmed = ioc.trim();
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return ip.to_canonical().to_string();
    }
    trimmed.trim_end_matches('.').to_lowercase()
}

impl WatchLists {
    /// No entries at all: every column stays absent.
    pub fn empty() -> WatchLists {
        WatchLists::default()
    }

    /// Loads the four files from `dir`. A missing file is an empty list; an unreadable file or a bad line is a
    /// warning. Never fails.
    pub fn load(dir: &Path, url_regex: bool) -> (WatchLists, Vec<ListWarning>) {
        let mut warnings = Vec::new();
        let mut read = |name: &str| -> (PathBuf, String) {
            let path = dir.join(name);
            match read_list_file(&path) {
                Ok(text) => (path, text.unwrap_or_default()),
                Err(e) => {
                    warnings.push(ListWarning {
                        file: path.clone(),
                        line: 0,
                        message: format!("cannot read: {e}"),
                    });
                    (path, String::new())
                }
            }
        };
        let keywords = read(KEYWORD_FILE);
        let urls = read(URL_FILE);
        let ip_domains = read(IP_DOMAIN_FILE);
        let detection_names = read(DETECTION_NAME_FILE);

        let mut lists = WatchLists::empty();
        lists.add_keywords(&keywords.1);
        lists.add_urls(&urls.0, &urls.1, url_regex, &mut warnings);
        lists.add_ip_domains(&ip_domains.0, &ip_domains.1, &mut warnings);
        lists.add_detection_names(&detection_names.1);
        (lists, warnings)
    }

    /// Adds keyword entries from the text of a `KWordwatchlist.txt`.
    pub fn add_keywords(&mut self, text: &str) {
        for (_, entry) in numbered_entries(text) {
            let keyword = entry.to_lowercase();
            if !self.keywords.contains(&keyword) {
                self.keywords.push(keyword);
            }
        }
    }

    /// Adds URL entries from the text of a `URLwatchlist.txt` (`file` only names it in warnings).
    /// An entry listed twice (as in hand-kept lists; in substring mode also when only its case differs, since it
    /// matches the same URLs) is one entry: the first line's.
    pub fn add_urls(&mut self, file: &Path, text: &str, regex_mode: bool, warnings: &mut Vec<ListWarning>) {
        let same_rule = |entry: &str| if regex_mode { entry.to_string() } else { entry.to_lowercase() };
        let mut listed: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (line, entry) in numbered_entries(text) {
            if !listed.insert(same_rule(entry)) {
                continue;
            }
            let matcher = if regex_mode {
                let built = RegexBuilder::new(entry)
                    .case_insensitive(true)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(2 * REGEX_SIZE_LIMIT)
                    .build();
                match built {
                    Ok(regex) => UrlMatcher::Regex(regex),
                    Err(e) => {
                        let reason = e.to_string().lines().last().unwrap_or("invalid").trim().to_string();
                        warnings.push(ListWarning {
                            file: file.to_path_buf(),
                            line,
                            message: format!("URL regex {entry:?} skipped: {reason}"),
                        });
                        continue;
                    }
                }
            } else {
                UrlMatcher::Substring(entry.to_lowercase())
            };
            let display = if regex_mode { entry.replace('|', "^or^") } else { entry.to_string() };
            self.urls.push(UrlEntry { display, matcher });
        }
    }

    /// Adds `ioc|note` entries from the text of an `IPDwatchlist.txt`.
    pub fn add_ip_domains(&mut self, file: &Path, text: &str, warnings: &mut Vec<ListWarning>) {
        for (line, entry) in numbered_entries(text) {
            let mut parts = entry.split('|');
            let ioc_text = parts.next().unwrap_or_default().trim().trim_end_matches('.').to_lowercase();
            let note = parts.next().unwrap_or_default().trim();
            if ioc_text.is_empty() {
                warnings.push(ListWarning {
                    file: file.to_path_buf(),
                    line,
                    message: "entry has no IP address or domain before `|`; skipped".into(),
                });
                continue;
            }
            let cell = if note.is_empty() { ioc_text.clone() } else { format!("{note}/{ioc_text}") };
            let key = normalise_ioc(&ioc_text);
            match self.ip_domains.get(&key) {
                None => {
                    self.ip_domains.insert(key, cell);
                }
                Some(existing) if *existing != cell => warnings.push(ListWarning {
                    file: file.to_path_buf(),
                    line,
                    message: format!(
                        "{ioc_text} is listed again with another note; the earlier line is kept"
                    ),
                }),
                Some(_) => {}
            }
        }
    }

    /// Adds detection-name entries from the text of a `DNwatchlist.txt`.
    pub fn add_detection_names(&mut self, text: &str) {
        for (_, entry) in numbered_entries(text) {
            self.detection_names.insert(entry.to_lowercase());
        }
    }

    pub fn has_keywords(&self) -> bool {
        !self.keywords.is_empty()
    }

    pub fn has_urls(&self) -> bool {
        !self.urls.is_empty()
    }

    pub fn has_ip_domains(&self) -> bool {
        !self.ip_domains.is_empty()
    }

    pub fn has_detection_names(&self) -> bool {
        !self.detection_names.is_empty()
    }

    /// Feeds everything the lists match with into `hasher`, in a fixed order: equal lists give equal
    /// fingerprints whatever order the files listed them in where order does not matter. The enricher keys
    /// the digests it keeps in the cache with it, so editing a list invalidates them.
    pub fn fingerprint(&self, hasher: &mut impl sha2::Digest) {
        fn text(hasher: &mut impl sha2::Digest, tag: u8, text: &str) {
            hasher.update([tag]);
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        for keyword in &self.keywords {
            text(hasher, b'k', keyword);
        }
        for entry in &self.urls {
            text(hasher, b'u', &entry.display);
            match &entry.matcher {
                UrlMatcher::Substring(needle) => text(hasher, b's', needle),
                UrlMatcher::Regex(regex) => text(hasher, b'r', regex.as_str()),
            }
        }
        let mut ip_domains: Vec<(&String, &String)> = self.ip_domains.iter().collect();
        ip_domains.sort_unstable();
        for (key, cell) in ip_domains {
            text(hasher, b'i', key);
            text(hasher, b'c', cell);
        }
        let mut names: Vec<&String> = self.detection_names.iter().collect();
        names.sort_unstable();
        for name in names {
            text(hasher, b'd', name);
        }
    }

    /// Keywords found in the response body (lower-cased first), in file order.
    ///
    /// Measured on a 2.7 KB body with 11 keywords: lower-casing the body (std's ASCII fast path) and one
    /// substring search per keyword take about 0.8 µs; a single ASCII-case-insensitive Aho-Corasick pass
    /// (overlapping matches, so every keyword is seen) took about 3.9 µs, so the plain way stays.
    pub fn keyword_matches(&self, body: &str) -> Vec<String> {
        if self.keywords.is_empty() {
            return Vec::new();
        }
        let body = body.to_lowercase();
        self.keywords.iter().filter(|keyword| body.contains(keyword.as_str())).cloned().collect()
    }

    /// Every URL entry that matches any of `urls`, de-duplicated, in order of first match. The caller joins them
    /// with three spaces.
    pub fn url_matches<'a>(&self, urls: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut matched = vec![false; self.urls.len()];
        let mut result = Vec::new();
        if self.urls.is_empty() {
            return result;
        }
        for url in urls {
            let url_lower = url.to_lowercase();
            for (index, entry) in self.urls.iter().enumerate() {
                if !matched[index] && entry.matches(url, &url_lower) {
                    matched[index] = true;
                    result.push(entry.display.clone());
                }
            }
        }
        result
    }

    /// `note/ioc` (or `ioc`) for every candidate IP or domain on the list, de-duplicated, in candidate order.
    pub fn ip_domain_matches<'a>(&self, iocs: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut result: Vec<String> = Vec::new();
        if self.ip_domains.is_empty() {
            return result;
        }
        for ioc in iocs {
            if let Some(cell) = self.ip_domains.get(&normalise_ioc(ioc))
                && !result.contains(cell)
            {
                result.push(cell.clone());
            }
        }
        result
    }

    /// Lower-cased candidates that are on the detection-name list, de-duplicated, in candidate order.
    pub fn detection_matches<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut result: Vec<String> = Vec::new();
        if self.detection_names.is_empty() {
            return result;
        }
        for name in names {
            let lower = name.trim().to_lowercase();
            if self.detection_names.contains(&lower) && !result.contains(&lower) {
                result.push(lower);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_boms_utf8_and_windows_1252() {
        assert_eq!(decode_list_bytes(b"\xEF\xBB\xBFcaf\xC3\xA9"), "café");
        assert_eq!(decode_list_bytes(b"caf\xC3\xA9"), "café");
        assert_eq!(decode_list_bytes(b"caf\xE9"), "café");
        assert_eq!(decode_list_bytes(b"\xFF\xFEc\0a\0f\0\xE9\0"), "café");
        assert_eq!(decode_list_bytes(b"\xFE\xFF\0c\0a\0f\0\xE9"), "café");
    }

    #[test]
    fn numbered_entries_skip_blank_lines_and_keep_numbers() {
        let entries: Vec<_> = numbered_entries("a\r\n\r\n  b  \n\t\nc").collect();
        assert_eq!(entries, vec![(1, "a"), (3, "b"), (5, "c")]);
    }

    #[test]
    fn ioc_normalisation_handles_ip_forms_case_and_trailing_dot() {
        assert_eq!(normalise_ioc(" 2001:DB8:0::1 "), "2001:db8::1");
        assert_eq!(normalise_ioc("Evil.Example.COM."), "evil.example.com");
        assert_eq!(normalise_ioc("203.0.113.45"), "203.0.113.45");
        assert_eq!(normalise_ioc("::FFFF:203.0.113.45"), "203.0.113.45");
    }

    #[test]
    fn keyword_matches_follow_unicode_lower_casing_for_ascii_and_other_bodies() {
        let mut lists = WatchLists::empty();
        lists.add_keywords("ssh\nRDP-Brute\nkelvin\nStraße\nİstanbul\nσ\nc2\nx\"y\n{\n");
        for (body, expected) in [
            (r#"{"a":"SSH and rdp-BRUTE"}"#, vec!["ssh", "rdp-brute", "{"]),
            ("\u{212a}elvin (Kelvin sign) and STRASSE", vec!["kelvin"]),
            ("Kelvin in ASCII, STRAẞE", vec!["kelvin", "straße"]),
            ("İSTANBUL", vec!["i̇stanbul"]),
            ("ISTANBUL in ASCII only", vec![]),
            ("ΣΑΣ C2", vec!["σ", "c2"]),
            (r#"x"Y"#, vec!["x\"y"]),
            ("", vec![]),
        ] {
            assert_eq!(lists.keyword_matches(body), expected, "{body}");
        }
    }

    #[test]
    fn lower_casing_twice_is_lower_casing_once() {
        // The enricher lower-cases a body before `keyword_matches` lower-cases it again; dropping the first
        // would change nothing if lower-casing is idempotent, which this checks for every character, alone and
        // at the end of a word (where `Σ` becomes `ς`).
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            for text in [c.to_string(), format!("a{c}"), format!("a{c} ")] {
                let once = text.to_lowercase();
                assert_eq!(once.to_lowercase(), once, "{:?}", c);
            }
        }
    }

    #[test]
    fn regex_alternation_is_shown_as_or() {
        let mut lists = WatchLists::empty();
        let mut warnings = Vec::new();
        lists.add_urls(Path::new("URLwatchlist.txt"), "gate\\.php|panel\\.php\n", true, &mut warnings);
        assert!(warnings.is_empty());
        assert_eq!(lists.url_matches(["http://x.test/panel.php"]), vec!["gate\\.php^or^panel\\.php"]);
    }

    /// A URL entry listed twice — or, in substring mode, in another case (it matches the same URLs) — shows
    /// once, as its first line wrote it; regex patterns differing in case are different patterns.
    #[test]
    fn url_entries_listed_twice_show_once() {
        let mut lists = WatchLists::empty();
        let mut warnings = Vec::new();
        lists.add_urls(
            Path::new("URLwatchlist.txt"),
            "/gate.php\n.exe\n/gate.php\n/GATE.PHP\n",
            false,
            &mut warnings,
        );
        assert_eq!(lists.url_matches(["http://evil.example/gate.php?x=1.exe"]), vec!["/gate.php", ".exe"]);
        let mut lists = WatchLists::empty();
        lists.add_urls(
            Path::new("URLwatchlist.txt"),
            "gate\\.php\ngate\\.php\nGATE\\.PHP\n",
            true,
            &mut warnings,
        );
        assert_eq!(lists.url_matches(["http://evil.example/gate.php"]), vec!["gate\\.php", "GATE\\.PHP"]);
        assert!(warnings.is_empty());
    }

    #[test]
    fn oversized_regex_is_a_warning() {
        let mut lists = WatchLists::empty();
        let mut warnings = Vec::new();
        lists.add_urls(Path::new("u.txt"), "ok\n\\w{1000}\\w{1000}\\w{1000}\n", true, &mut warnings);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].line, 2);
        assert!(lists.has_urls());
    }
}
