//! The sinkhole check for the `Sinkhole` column (SPEC §6, reference §5.1): known sinkhole addresses from a data
//! file (`config/sinkholes.txt`, `[watchlists] sinkholes`), plus VTTL's reverse-DNS rule.
//!
//! VTTL hard-codes its list in VBScript; we keep it in a data file analysts can extend without a rebuild.
//!
//! * **Format.** One entry per line: `<target> | <label>`, where the target is an IPv4/IPv6 address, a CIDR
//!   block (host bits are ignored: `199.2.137.5/24` means `199.2.137.0/24`) or an inclusive range
//!   `first-last` of one address family. Whitespace around both parts is trimmed; the label is everything after
//!   the first `|`. Lines whose first non-blank character is `#` are comments; blank lines are ignored. A line
//!   that cannot be read is a [`ListWarning`] with its line number and is skipped — never fatal. The file is
//!   decoded like the watch lists (BOM / UTF-8 / Windows-1252).
//! * **Precedence.** The most specific entry wins: the one covering the fewest addresses (an exact IP beats any
//!   range). Between entries of equal size the later line wins, as VTTL's "later assignment overwrites" did for
//!   its duplicate IPs. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are checked as IPv4.
//! * **Reverse DNS.** A PTR name containing `sinkhole` or `snkhole` (case-insensitive) gives `X`. When the IP
//!   itself is listed, its label wins over `X` — the label says more than the flag. This deliberately differs
//!   from VTTL, where `snkhole` overwrote any label and `sinkhole` never fired on the first row (quirk 24).
//! * A missing data file is an empty list plus a warning (the column then depends on reverse DNS alone).

use std::io;
use std::net::IpAddr;
use std::path::Path;

use super::watchlists::{ListWarning, numbered_entries, read_list_file};

/// What the reverse-DNS rule writes.
pub const REVERSE_DNS_SINKHOLE_LABEL: &str = "X";

/// One sinkhole range: inclusive bounds in one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SinkholeEntry {
    v6: bool,
    first: u128,
    last: u128,
    label: String,
}

impl SinkholeEntry {
    fn contains(&self, v6: bool, address: u128) -> bool {
        self.v6 == v6 && self.first <= address && address <= self.last
    }

    /// Number of addresses covered, minus one (so a full /0 IPv6 range does not overflow).
    fn span(&self) -> u128 {
        self.last - self.first
    }
}

/// The address as (is IPv6, numeric value); IPv4-mapped IPv6 counts as IPv4.
fn numeric(ip: IpAddr) -> (bool, u128) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

/// Parses a target: address, CIDR block or `first-last` range.
fn parse_target(target: &str) -> Result<(bool, u128, u128), String> {
    if let Some((first, last)) = target.split_once('-') {
        let first: IpAddr =
            first.trim().parse().map_err(|_| format!("{:?} is not an IP address", first.trim()))?;
        let last: IpAddr =
            last.trim().parse().map_err(|_| format!("{:?} is not an IP address", last.trim()))?;
        let (first_v6, first) = numeric(first);
        let (last_v6, last) = numeric(last);
        if first_v6 != last_v6 {
            return Err("range mixes IPv4 and IPv6".into());
        }
        if first > last {
            return Err("range ends before it starts".into());
        }
        return Ok((first_v6, first, last));
    }
    if target.contains('/') {
        let net: ipnet::IpNet = target.parse().map_err(|_| format!("{target:?} is not a CIDR block"))?;
        let (v6, first) = numeric(net.network());
        let (_, last) = numeric(net.broadcast());
        // An IPv4-mapped IPv6 block that spills outside ::ffff:0:0/96 would be odd; keep the family of the start.
        return Ok((v6, first, last.max(first)));
    }
    let ip: IpAddr =
        target.parse().map_err(|_| format!("{target:?} is not an IP address, CIDR block or range"))?;
    let (v6, value) = numeric(ip);
    Ok((v6, value, value))
}

/// The loaded sinkhole list.
#[derive(Debug, Clone, Default)]
pub struct Sinkholes {
    entries: Vec<SinkholeEntry>,
}

impl Sinkholes {
    /// No entries: only the reverse-DNS rule applies.
    pub fn empty() -> Sinkholes {
        Sinkholes::default()
    }

    /// Loads the data file. A missing file gives an empty list and a warning; other read errors are returned.
    pub fn load(path: &Path) -> Result<(Sinkholes, Vec<ListWarning>), io::Error> {
        match read_list_file(path)? {
            Some(text) => Ok(Sinkholes::parse(path, &text)),
            None => Ok((
                Sinkholes::empty(),
                vec![ListWarning {
                    file: path.to_path_buf(),
                    line: 0,
                    message: "sinkhole list not found; only the reverse-DNS rule is used".into(),
                }],
            )),
        }
    }

    /// Parses the text of a sinkhole file (`file` only names it in warnings).
    pub fn parse(file: &Path, text: &str) -> (Sinkholes, Vec<ListWarning>) {
        let mut entries = Vec::new();
        let mut warnings = Vec::new();
        for (line, entry) in numbered_entries(text) {
            if entry.starts_with('#') {
                continue;
            }
            let warn = |message: String| ListWarning { file: file.to_path_buf(), line, message };
            let Some((target, label)) = entry.split_once('|') else {
                warnings.push(warn("expected `<IP, CIDR or range> | <label>`; line skipped".into()));
                continue;
            };
            let label = label.trim();
            if label.is_empty() {
                warnings.push(warn("the label after `|` is empty; line skipped".into()));
                continue;
            }
            match parse_target(target.trim()) {
                Ok((v6, first, last)) => {
                    entries.push(SinkholeEntry { v6, first, last, label: label.to_string() })
                }
                Err(reason) => warnings.push(warn(format!("{reason}; line skipped"))),
            }
        }
        (Sinkholes { entries }, warnings)
    }

    /// Number of entries loaded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The label of the most specific entry containing `ip` (later line wins a tie).
    pub fn ip_label(&self, ip: IpAddr) -> Option<&str> {
        let (v6, address) = numeric(ip);
        let mut best: Option<&SinkholeEntry> = None;
        for entry in self.entries.iter().filter(|e| e.contains(v6, address)) {
            if best.is_none_or(|b| entry.span() <= b.span()) {
                best = Some(entry);
            }
        }
        best.map(|e| e.label.as_str())
    }

    /// The Sinkhole cell for `ip`: its listed label, else `X` when the reverse-DNS name says sinkhole, else
    /// `None`.
    pub fn label_for(&self, ip: IpAddr, reverse_name: Option<&str>) -> Option<String> {
        if let Some(label) = self.ip_label(ip) {
            return Some(label.to_string());
        }
        reverse_name
            .filter(|name| reverse_name_is_sinkhole(name))
            .map(|_| REVERSE_DNS_SINKHOLE_LABEL.to_string())
    }
}

/// VTTL's reverse-DNS rule: the name contains `sinkhole` or `snkhole`, in any case.
pub fn reverse_name_is_sinkhole(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.contains("sinkhole") || lower.contains("snkhole")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_to_inclusive_ranges() {
        assert_eq!(parse_target("10.0.0.1"), Ok((false, 0x0a00_0001, 0x0a00_0001)));
        assert_eq!(parse_target("10.0.0.77/24"), Ok((false, 0x0a00_0000, 0x0a00_00ff)));
        assert_eq!(parse_target("10.0.0.5 - 10.0.0.9"), Ok((false, 0x0a00_0005, 0x0a00_0009)));
        assert!(parse_target("10.0.0.9-10.0.0.5").is_err());
        assert!(parse_target("10.0.0.1-::1").is_err());
        assert!(parse_target("10.0.0.0/33").is_err());
        assert!(parse_target("sinkhole.example").is_err());
        let (v6, first, last) = parse_target("2001:db8::/126").unwrap_or_default();
        assert!(v6);
        assert_eq!(last - first, 3);
    }

    #[test]
    fn mapped_ipv6_is_checked_as_ipv4() {
        let (list, warnings) = Sinkholes::parse(Path::new("s.txt"), "192.0.2.7 | test label\n");
        assert!(warnings.is_empty());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert_eq!(list.ip_label(mapped), Some("test label"));
    }

    #[test]
    fn reverse_rule_is_case_insensitive() {
        assert!(reverse_name_is_sinkhole("SINKHOLE.example.net"));
        assert!(reverse_name_is_sinkhole("host.SnkHole.example"));
        assert!(!reverse_name_is_sinkhole("sink-hole.example"));
    }
}
