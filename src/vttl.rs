//! What a VTTL spreadsheet means: the header names we read and write, the two table modes, and how an
//! indicator in the `Scanned Item` / `Hash` column is classified into an API endpoint.
//!
//! Columns are always found by header name (trimmed, case-insensitive), never by position: VTTL's column set
//! changes with its settings (reference `vttl-spec.md` §1.7/§1.8).

use std::net::IpAddr;

/// Header of the indicator column in IP/domain mode.
pub const SCANNED_ITEM: &str = "Scanned Item";
/// Header of the indicator column in hash mode.
pub const HASH: &str = "Hash";

pub const SECLYTICS_REPUTATION: &str = "Seclytics Reputation and Reason";
/// The IP/domain spelling of the file-metadata column.
pub const SECLYTICS_FILE_METADATA_IP: &str = "Seclytics Associated File Metadata";
/// The hash-mode spelling of the file-metadata column (VTTL quirk 10.1). Both spellings are one column.
pub const SECLYTICS_FILE_METADATA_HASH: &str = "Seclytics File Associated Metadata";
pub const SECLYTICS_FILE_COUNT: &str = "Seclytics File Count";
pub const WHOIS: &str = "WHOIS";
pub const VALIDATION: &str = "Validation";
pub const DATE_FIRST_SEEN: &str = "Date First Seen";
pub const IP_ADDRESS: &str = "IP Address";
pub const REVERSE_DNS: &str = "Reverse DNS";
pub const SINKHOLE: &str = "Sinkhole";
pub const KEYWORD_WATCH_LIST: &str = "Keyword Watch List";
pub const URL_WATCH_LIST: &str = "URL Watch List";
pub const IP_DOMAIN_WATCH_LIST: &str = "IP Domain Watch List";
pub const DETECTION_NAME_WATCH_LIST: &str = "Detection Name Watch List";

/// The two kinds of VTTL table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Header has `Scanned Item`: IP addresses and domains.
    IpDomain,
    /// Header has `Hash`: file hashes.
    Hash,
}

impl Mode {
    /// Header of the indicator column of this mode.
    pub fn indicator_header(self) -> &'static str {
        match self {
            Mode::IpDomain => SCANNED_ITEM,
            Mode::Hash => HASH,
        }
    }

    /// The spelling of the file-metadata column VTTL uses in this mode.
    pub fn file_metadata_header(self) -> &'static str {
        match self {
            Mode::IpDomain => SECLYTICS_FILE_METADATA_IP,
            Mode::Hash => SECLYTICS_FILE_METADATA_HASH,
        }
    }
}

/// Normalise a header cell for comparison: trimmed and lower-cased, with the two spellings of the SecLytics
/// file-metadata column folded into one.
pub fn header_key(text: &str) -> String {
    let key = text.trim().to_lowercase();
    if key == SECLYTICS_FILE_METADATA_HASH.to_lowercase() {
        SECLYTICS_FILE_METADATA_IP.to_lowercase()
    } else {
        key
    }
}

/// The columns of one table, found by name in its header row.
#[derive(Debug, Clone)]
pub struct ColumnMap {
    mode: Mode,
    indicator: usize,
    /// `header_key` → first column index with that name.
    by_key: std::collections::HashMap<String, usize>,
    header_len: usize,
}

impl ColumnMap {
    /// Reads a header row. `None` when no cell is `Scanned Item` or `Hash` (not a VTTL table). When both
    /// appear, the leftmost decides the mode.
    pub fn from_header<S: AsRef<str>>(cells: &[S]) -> Option<ColumnMap> {
        let mut by_key = std::collections::HashMap::new();
        let mut found: Option<(Mode, usize)> = None;
        for (i, cell) in cells.iter().enumerate() {
            let key = header_key(cell.as_ref());
            if key.is_empty() {
                continue;
            }
            if found.is_none() {
                if key == SCANNED_ITEM.to_lowercase() {
                    found = Some((Mode::IpDomain, i));
                } else if key == HASH.to_lowercase() {
                    found = Some((Mode::Hash, i));
                }
            }
            by_key.entry(key).or_insert(i);
        }
        let (mode, indicator) = found?;
        Some(ColumnMap { mode, indicator, by_key, header_len: cells.len() })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Index of the `Scanned Item` / `Hash` column.
    pub fn indicator_column(&self) -> usize {
        self.indicator
    }

    /// Index of the column with this header (case-insensitive; both file-metadata spellings match).
    pub fn find(&self, header: &str) -> Option<usize> {
        self.by_key.get(&header_key(header)).copied()
    }

    /// Number of cells in the header row.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Makes the table `width` columns wide when its rows are wider than its header: columns appended to the
    /// header then start after every cell of the table, never over data an analyst left in a column without
    /// a header (that cell would look like a SecLytics fill, and stop the real one).
    pub fn widen_to(&mut self, width: usize) {
        self.header_len = self.header_len.max(width);
    }

    /// Registers a column appended to the header; returns its index.
    pub fn append(&mut self, header: &str) -> usize {
        let index = self.header_len;
        self.header_len += 1;
        self.by_key.entry(header_key(header)).or_insert(index);
        index
    }
}

/// Which API endpoint an indicator belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndicatorKind {
    /// `/ips/<ip>`
    Ip,
    /// `/hosts/<host>`
    Host,
    /// `/files/<hash>`
    File,
}

impl IndicatorKind {
    /// Path segment of the endpoint (`ips`, `hosts`, `files`).
    pub fn endpoint(self) -> &'static str {
        match self {
            IndicatorKind::Ip => "ips",
            IndicatorKind::Host => "hosts",
            IndicatorKind::File => "files",
        }
    }
}

/// A normalised indicator: what is looked up, and where.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Indicator {
    pub kind: IndicatorKind,
    /// Normalised text: an IP in its canonical form as written (trimmed), a lower-cased host or hash.
    pub value: String,
}

/// The longest text (trimmed, in bytes) that can be an indicator: a 253-character host name and its trailing
/// dot (IPs and hashes are shorter). Longer cells are never classified, whatever they hold.
pub const LONGEST_INDICATOR: usize = 254;

impl Indicator {
    /// Classifies a `Scanned Item`/`Hash` cell (SPEC §3): trimmed; strict IPv4/IPv6 → `/ips/`; 32, 40 or 64
    /// hex digits → `/files/` (lower case); a host name with a dot → `/hosts/` (lower case, without the
    /// trailing dot of a fully qualified name). Anything else is `None` (left alone and counted as skipped).
    pub fn classify(cell: &str) -> Option<Indicator> {
        let text = cell.trim();
        if text.is_empty() || text.len() > LONGEST_INDICATOR {
            return None;
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            // `::ffff:203.0.113.45` is the IPv4 address: one indicator, one lookup.
            return Some(Indicator { kind: IndicatorKind::Ip, value: ip.to_canonical().to_string() });
        }
        if is_hash(text) {
            return Some(Indicator { kind: IndicatorKind::File, value: text.to_ascii_lowercase() });
        }
        if is_host_name(text) {
            // `example.com.` (the fully qualified form) is the same host as `example.com`: one lookup.
            let name = text.strip_suffix('.').unwrap_or(text);
            return Some(Indicator { kind: IndicatorKind::Host, value: name.to_ascii_lowercase() });
        }
        None
    }

    /// The IP address, for `Ip` indicators.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.kind {
            IndicatorKind::Ip => self.value.parse().ok(),
            _ => None,
        }
    }
}

impl std::fmt::Display for Indicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.value)
    }
}

/// An MD5, SHA-1 or SHA-256 in hex: exactly 32, 40 or 64 hex digits.
pub fn is_hash(text: &str) -> bool {
    matches!(text.len(), 32 | 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A syntactically valid DNS host name with at least one dot: labels of 1–63 letters, digits, `-` or `_`
/// (not starting or ending with `-`), at most 253 characters, a last label that is not all digits. A single
/// trailing dot is allowed.
pub fn is_host_name(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > 253 || !name.contains('.') {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    let valid_labels = labels.iter().all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    valid_labels && labels.last().is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_mapped_address_is_the_ipv4_address() {
        assert_eq!(Indicator::classify("::ffff:203.0.113.45"), Indicator::classify("203.0.113.45"));
        assert_eq!(Indicator::classify("2001:db8::1").unwrap().value, "2001:db8::1");
    }

    #[test]
    fn a_host_with_its_trailing_dot_is_the_same_host() {
        assert_eq!(Indicator::classify("Evil.Example.com."), Indicator::classify("evil.example.com"));
        assert_eq!(Indicator::classify(" cdn.example.co.uk. ").unwrap().value, "cdn.example.co.uk");
        assert_eq!(Indicator::classify("example.com.."), None);
    }

    #[test]
    fn no_indicator_is_longer_than_the_longest() {
        let label = "a".repeat(63);
        let host = format!("{label}.{label}.{label}.{}.", "b".repeat(61));
        assert_eq!(host.len(), LONGEST_INDICATOR);
        assert_eq!(Indicator::classify(&host).map(|i| i.kind), Some(IndicatorKind::Host));
        assert_eq!(Indicator::classify(&format!("  {host}  ")).map(|i| i.kind), Some(IndicatorKind::Host));
        assert_eq!(Indicator::classify(&format!("c{host}")), None);
        let longest_ip = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        assert!(Indicator::classify(longest_ip).is_some() && longest_ip.len() < LONGEST_INDICATOR);
    }

    #[test]
    fn modes_and_synonyms() {
        let map = ColumnMap::from_header(&["  scanned ITEM ", "WHOIS", "Seclytics File Associated Metadata"])
            .unwrap();
        assert_eq!(map.mode(), Mode::IpDomain);
        assert_eq!(map.indicator_column(), 0);
        assert_eq!(map.find(SECLYTICS_FILE_METADATA_IP), Some(2));
        assert_eq!(map.find(SECLYTICS_FILE_METADATA_HASH), Some(2));
        assert_eq!(map.find("whois"), Some(1));
        let hash = ColumnMap::from_header(&["VT Scan", "hash"]).unwrap();
        assert_eq!(hash.mode(), Mode::Hash);
        assert_eq!(hash.indicator_column(), 1);
        assert!(ColumnMap::from_header(&["Item", "WHOIS"]).is_none());
        assert!(ColumnMap::from_header::<&str>(&[]).is_none());
    }

    #[test]
    fn classification() {
        let ip = Indicator::classify(" 203.0.113.45 ").unwrap();
        assert_eq!((ip.kind, ip.value.as_str()), (IndicatorKind::Ip, "203.0.113.45"));
        assert_eq!(Indicator::classify("2001:DB8::1").unwrap().kind, IndicatorKind::Ip);
        assert_eq!(Indicator::classify("Example.COM").unwrap().value, "example.com");
        let md5 = Indicator::classify("6F1E2D3C4B5A69788796A5B4C3D2E1F0").unwrap();
        assert_eq!((md5.kind, md5.value.as_str()), (IndicatorKind::File, "6f1e2d3c4b5a69788796a5b4c3d2e1f0"));
        for skipped in ["", "1.2", "localhost", "10.0.0.256", "abc", "a..b", "0x1f", "999.1.1.1", "1.2.3"] {
            assert!(Indicator::classify(skipped).is_none(), "{skipped}");
        }
        // 33 hex digits is neither a hash nor a host
        assert!(Indicator::classify(&"a".repeat(33)).is_none());
    }
}
