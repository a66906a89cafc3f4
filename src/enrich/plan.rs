//! Which cell of a table gets which value (SPEC §4): the plan of one VTTL table and the fill rule.
//!
//! The one rule lives here: a cell that is not empty after trimming is never changed. A [`TablePlan`] knows the
//! table's mode, where each column we fill sits (found by header name), and which columns must be appended to
//! the header because the table lacks them. [`TablePlan::fills`] turns what we know about one indicator
//! ([`Facts`]) and one row into the list of cells to write — only cells that are empty in that row.
//!
//! Decisions where SPEC is silent:
//! * Appended header cells come in this order: the SecLytics columns of the mode (VTTL's order), `Validation`
//!   (IP/domain tables), then `Keyword Watch List`, `URL Watch List`, `IP Domain Watch List`,
//!   `Detection Name Watch List` for each list that is not empty.
//! * A table without an `IP Address` column still discovers passive-DNS IPs (the column counts as empty), so
//!   the appended rows appear; nothing is written into a column that does not exist.
//! * `Reverse DNS` and `Sinkhole` of a domain row are filled only for the IP we put into its `IP Address` cell;
//!   a pre-filled `IP Address` belongs to someone else and is left to them.
//! * The sinkhole reverse-DNS rule also uses a `Reverse DNS` name that was already in the row.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::enrich::watchlists::WatchLists;
use crate::vttl::{self, ColumnMap, IndicatorKind, Mode};

/// A value to write into one empty cell, typed so each format can store it properly.
#[derive(Debug, Clone, PartialEq)]
pub enum FillValue<'a> {
    /// Text from the API (attacker-controlled): neutralised against formula injection by the writer.
    /// Borrowed from the [`Facts`] when it comes from there (a million rows need no million copies).
    Text(Cow<'a, str>),
    /// A count (written as a number in XLSX, digits in CSV).
    Count(u64),
    /// A date/time (a real date cell in XLSX, `YYYY-MM-DD HH:MM:SS` in CSV).
    DateTime(chrono::NaiveDateTime),
}

/// One cell to fill: column index, the header it is counted under in the report, and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Fill<'a> {
    pub column: usize,
    pub header: &'static str,
    pub value: FillValue<'a>,
}

/// Read access to the cells of one row, whatever the format.
pub trait RowCells {
    /// The cell's text ("" beyond the end of a short row).
    fn text(&self, column: usize) -> std::borrow::Cow<'_, str>;
    /// True when the cell is empty for the fill rule (blank after trimming; a formula is never blank).
    fn is_blank(&self, column: usize) -> bool {
        self.text(column).trim().is_empty()
    }
}

/// Everything one successful (or not-found) lookup contributes to a row, ready to write. Empty strings and
/// `None` mean "nothing to write".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub reputation: String,
    pub file_metadata: String,
    pub file_count: Option<u64>,
    pub whois: Option<String>,
    pub validation: Option<String>,
    pub first_seen: Option<chrono::NaiveDateTime>,
    /// First passive-DNS answer IP (domains).
    pub passive_dns_ip: Option<IpAddr>,
    pub keyword_watch: String,
    pub url_watch: String,
    pub ip_domain_watch: String,
    pub detection_watch: String,
}

impl Facts {
    /// Appends a compact binary form of the facts to `out` (for the CSV path, which moves facts it must keep
    /// for later rows to a temporary file when too many are waiting). [`Facts::decode`] reads it back.
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn optional_text(out: &mut Vec<u8>, value: &Option<String>) {
            match value {
                Some(value) => {
                    out.push(1);
                    put_text(out, value);
                }
                None => out.push(0),
            }
        }
        for value in [&self.reputation, &self.file_metadata] {
            put_text(out, value);
        }
        match self.file_count {
            Some(count) => {
                out.push(1);
                out.extend_from_slice(&count.to_le_bytes());
            }
            None => out.push(0),
        }
        optional_text(out, &self.whois);
        optional_text(out, &self.validation);
        match self.first_seen {
            Some(when) => {
                let when = when.and_utc();
                out.push(1);
                out.extend_from_slice(&when.timestamp().to_le_bytes());
                out.extend_from_slice(&when.timestamp_subsec_nanos().to_le_bytes());
            }
            None => out.push(0),
        }
        match self.passive_dns_ip {
            Some(IpAddr::V4(v4)) => {
                out.push(4);
                out.extend_from_slice(&v4.octets());
            }
            Some(IpAddr::V6(v6)) => {
                out.push(6);
                out.extend_from_slice(&v6.octets());
            }
            None => out.push(0),
        }
        for value in [&self.keyword_watch, &self.url_watch, &self.ip_domain_watch, &self.detection_watch] {
            put_text(out, value);
        }
    }

    /// Reads what [`Facts::encode`] wrote; `None` when `bytes` is not such an encoding.
    pub fn decode(bytes: &[u8]) -> Option<Facts> {
        let mut input = ByteInput::new(bytes);
        let reputation = input.text()?;
        let file_metadata = input.text()?;
        let file_count = match input.byte()? {
            0 => None,
            1 => Some(input.u64()?),
            _ => return None,
        };
        let whois = input.optional_text()?;
        let validation = input.optional_text()?;
        let first_seen = match input.byte()? {
            0 => None,
            1 => {
                let seconds = input.u64()? as i64;
                let nanos = u32::from_le_bytes(input.take(4)?.try_into().ok()?);
                Some(chrono::DateTime::from_timestamp(seconds, nanos)?.naive_utc())
            }
            _ => return None,
        };
        let passive_dns_ip = match input.byte()? {
            0 => None,
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(input.take(4)?).ok()?)),
            6 => Some(IpAddr::from(<[u8; 16]>::try_from(input.take(16)?).ok()?)),
            _ => return None,
        };
        let facts = Facts {
            reputation,
            file_metadata,
            file_count,
            whois,
            validation,
            first_seen,
            passive_dns_ip,
            keyword_watch: input.text()?,
            url_watch: input.text()?,
            ip_domain_watch: input.text()?,
            detection_watch: input.text()?,
        };
        input.is_empty().then_some(facts)
    }
}

/// Appends `value` as 8 little-endian bytes (the numbers of the compact binary forms, see [`ByteInput`]).
pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends `text` as its length ([`put_u64`]) and its UTF-8 bytes.
pub(crate) fn put_text(out: &mut Vec<u8>, text: &str) {
    put_u64(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// Reads the compact binary forms written in this module and in `stored` (little-endian numbers,
/// length-prefixed UTF-8 text). Every read fails (`None`) rather than panic or over-allocate on damaged input.
pub(crate) struct ByteInput<'b>(&'b [u8]);

impl<'b> ByteInput<'b> {
    pub(crate) fn new(bytes: &'b [u8]) -> ByteInput<'b> {
        ByteInput(bytes)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    pub(crate) fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A length or count: never more than the bytes left.
    pub(crate) fn len(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok().filter(|&n| n <= self.0.len())
    }

    pub(crate) fn text(&mut self) -> Option<String> {
        let len = self.len()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    pub(crate) fn optional_text(&mut self) -> Option<Option<String>> {
        match self.byte()? {
            0 => Some(None),
            1 => Some(Some(self.text()?)),
            _ => None,
        }
    }
}

/// What the run knows about IP addresses beyond the API: reverse names and sinkhole labels.
pub trait IpKnowledge {
    /// The PTR name of `ip`, when reverse DNS is on and the lookup answered.
    fn reverse_name(&self, ip: IpAddr) -> Option<String>;
    /// The sinkhole label of `ip`, given its reverse name (if any).
    fn sinkhole(&self, ip: IpAddr, reverse_name: Option<&str>) -> Option<String>;
}

/// Where each column we may fill sits in one table.
#[derive(Debug, Clone, Default)]
struct Columns {
    reputation: Option<usize>,
    file_metadata: Option<usize>,
    file_count: Option<usize>,
    whois: Option<usize>,
    validation: Option<usize>,
    date_first_seen: Option<usize>,
    ip_address: Option<usize>,
    reverse_dns: Option<usize>,
    sinkhole: Option<usize>,
    keyword_watch: Option<usize>,
    url_watch: Option<usize>,
    ip_domain_watch: Option<usize>,
    detection_watch: Option<usize>,
}

/// The plan of one VTTL table.
#[derive(Debug, Clone)]
pub struct TablePlan {
    columns: ColumnMap,
    at: Columns,
    /// Header cells to append: (column index, header text).
    appended: Vec<(usize, &'static str)>,
}

impl TablePlan {
    /// Plans a table from its header. `lists` decides which watch-list columns are needed.
    pub fn new(mut columns: ColumnMap, lists: &WatchLists) -> TablePlan {
        let mode = columns.mode();
        let mut wanted: Vec<&'static str> = match mode {
            Mode::IpDomain => vec![
                vttl::SECLYTICS_REPUTATION,
                vttl::SECLYTICS_FILE_METADATA_IP,
                vttl::SECLYTICS_FILE_COUNT,
                vttl::VALIDATION,
            ],
            Mode::Hash => vec![vttl::SECLYTICS_FILE_METADATA_HASH],
        };
        for (needed, header) in [
            (lists.has_keywords(), vttl::KEYWORD_WATCH_LIST),
            (lists.has_urls(), vttl::URL_WATCH_LIST),
            (lists.has_ip_domains(), vttl::IP_DOMAIN_WATCH_LIST),
            (lists.has_detection_names(), vttl::DETECTION_NAME_WATCH_LIST),
        ] {
            if needed {
                wanted.push(header);
            }
        }
        let mut appended = Vec::new();
        for header in wanted {
            if columns.find(header).is_none() {
                appended.push((columns.append(header), header));
            }
        }
        let find = |h: &str| columns.find(h);
        let ip_domain = mode == Mode::IpDomain;
        let at = Columns {
            reputation: find(vttl::SECLYTICS_REPUTATION).filter(|_| ip_domain),
            file_metadata: find(vttl::SECLYTICS_FILE_METADATA_IP),
            file_count: find(vttl::SECLYTICS_FILE_COUNT).filter(|_| ip_domain),
            whois: find(vttl::WHOIS).filter(|_| ip_domain),
            validation: find(vttl::VALIDATION).filter(|_| ip_domain),
            date_first_seen: find(vttl::DATE_FIRST_SEEN),
            ip_address: find(vttl::IP_ADDRESS).filter(|_| ip_domain),
            reverse_dns: find(vttl::REVERSE_DNS).filter(|_| ip_domain),
            sinkhole: find(vttl::SINKHOLE).filter(|_| ip_domain),
            keyword_watch: find(vttl::KEYWORD_WATCH_LIST),
            url_watch: find(vttl::URL_WATCH_LIST),
            ip_domain_watch: find(vttl::IP_DOMAIN_WATCH_LIST),
            detection_watch: find(vttl::DETECTION_NAME_WATCH_LIST),
        };
        TablePlan { columns, at, appended }
    }

    pub fn mode(&self) -> Mode {
        self.columns.mode()
    }

    pub fn indicator_column(&self) -> usize {
        self.columns.indicator_column()
    }

    /// Width of the header after appending.
    pub fn width(&self) -> usize {
        self.columns.header_len()
    }

    /// Header cells to append, as (column, text).
    pub fn appended_headers(&self) -> &[(usize, &'static str)] {
        &self.appended
    }

    /// True when this row's `IP Address` is empty (or the table has no such column): a domain row that can
    /// take a passive-DNS IP.
    pub fn wants_passive_dns(&self, row: &impl RowCells) -> bool {
        self.at.ip_address.is_none_or(|c| row.is_blank(c))
    }

    /// True when an IP row has an empty `Reverse DNS` or `Sinkhole` cell (so a reverse lookup may be useful).
    pub fn wants_ip_notes(&self, row: &impl RowCells) -> bool {
        [self.at.reverse_dns, self.at.sinkhole].into_iter().flatten().any(|c| row.is_blank(c))
    }

    /// True when the table has a `Reverse DNS` or `Sinkhole` column at all.
    pub fn has_ip_note_columns(&self) -> bool {
        self.at.reverse_dns.is_some() || self.at.sinkhole.is_some()
    }

    /// What [`TablePlan::fills`] reads from a row, as one number: bit *i* is set when the *i*-th column it may
    /// fill is blank (the columns in a fixed order). `None` when the row's fills depend on more than that (a
    /// `Reverse DNS` cell with text in it, which the sinkhole rule reads). Two rows of one indicator with the
    /// same key get the same fills, as long as the run's reverse names do not change in between — so a
    /// caller may keep the fills of an indicator's first row for its later rows.
    pub fn row_fill_key(&self, row: &impl RowCells) -> Option<u32> {
        let at = &self.at;
        if at.reverse_dns.is_some_and(|c| !row.is_blank(c)) {
            return None;
        }
        let columns = [
            at.reputation,
            at.file_metadata,
            at.file_count,
            at.whois,
            at.validation,
            at.date_first_seen,
            at.ip_address,
            at.reverse_dns,
            at.sinkhole,
            at.keyword_watch,
            at.url_watch,
            at.ip_domain_watch,
            at.detection_watch,
        ];
        let key = columns
            .iter()
            .enumerate()
            .filter(|(_, column)| column.is_some_and(|c| row.is_blank(c)))
            .fold(0u32, |key, (bit, _)| key | 1 << bit);
        Some(key)
    }

    /// The cells to fill in one data row. `facts` is `None` when the lookup failed: then nothing at all is
    /// written, so a later run can fill the row. `ip_notes` are the reverse-DNS/sinkhole notes of the IP this
    /// row concerns (the item for IP rows, the passive-DNS IP for domain rows), when known.
    pub fn fills<'a>(
        &self,
        row: &impl RowCells,
        kind: IndicatorKind,
        facts: Option<&'a Facts>,
        ips: &dyn IpKnowledge,
        item_ip: Option<IpAddr>,
    ) -> Vec<Fill<'a>> {
        let Some(facts) = facts else { return Vec::new() };
        let mut fills = Vec::new();
        let mut put = |column: Option<usize>, header: &'static str, value: Option<FillValue<'a>>| {
            if let (Some(column), Some(value)) = (column, value)
                && row.is_blank(column)
            {
                fills.push(Fill { column, header, value });
            }
        };
        let text = |s: &'a str| (!s.trim().is_empty()).then_some(FillValue::Text(Cow::Borrowed(s)));
        let opt_text = |s: &'a Option<String>| s.as_deref().and_then(text);
        let owned_text = |s: String| (!s.trim().is_empty()).then_some(FillValue::Text(Cow::Owned(s)));

        let is_ip = kind == IndicatorKind::Ip;
        let is_host = kind == IndicatorKind::Host;
        if is_ip || is_host {
            put(self.at.reputation, vttl::SECLYTICS_REPUTATION, text(&facts.reputation));
            put(self.at.file_count, vttl::SECLYTICS_FILE_COUNT, facts.file_count.map(FillValue::Count));
            put(self.at.validation, vttl::VALIDATION, opt_text(&facts.validation));
        }
        let metadata_header = self.mode().file_metadata_header();
        put(self.at.file_metadata, metadata_header, text(&facts.file_metadata));
        if is_ip {
            put(self.at.whois, vttl::WHOIS, opt_text(&facts.whois));
        }
        put(self.at.date_first_seen, vttl::DATE_FIRST_SEEN, facts.first_seen.map(FillValue::DateTime));

        // The IP whose reverse name and sinkhole label this row gets.
        let noted_ip = if is_ip {
            item_ip
        } else if is_host && self.wants_passive_dns(row) {
            let ip = facts.passive_dns_ip;
            put(
                self.at.ip_address,
                vttl::IP_ADDRESS,
                ip.map(|ip| FillValue::Text(Cow::Owned(ip.to_string()))),
            );
            ip
        } else {
            None
        };
        if let Some(ip) = noted_ip
            && self.mode() == Mode::IpDomain
        {
            let existing_name =
                self.at.reverse_dns.map(|c| row.text(c).trim().to_string()).filter(|s| !s.is_empty());
            let reverse_name = ips.reverse_name(ip);
            // The reverse-DNS rule reads both names: the PTR name of now (an IP sinkholed since VTTL wrote its
            // name shows it) and a name already in the row.
            let label = ips
                .sinkhole(ip, existing_name.as_deref())
                .or_else(|| ips.sinkhole(ip, reverse_name.as_deref()));
            put(self.at.reverse_dns, vttl::REVERSE_DNS, reverse_name.and_then(owned_text));
            put(self.at.sinkhole, vttl::SINKHOLE, label.map(|label| FillValue::Text(Cow::Owned(label))));
        }

        put(self.at.keyword_watch, vttl::KEYWORD_WATCH_LIST, text(&facts.keyword_watch));
        put(self.at.url_watch, vttl::URL_WATCH_LIST, text(&facts.url_watch));
        put(self.at.ip_domain_watch, vttl::IP_DOMAIN_WATCH_LIST, text(&facts.ip_domain_watch));
        put(self.at.detection_watch, vttl::DETECTION_NAME_WATCH_LIST, text(&facts.detection_watch));
        fills
    }
}

/// A row that is not there yet: all cells empty except those we set.
pub struct EmptyRow;

impl RowCells for EmptyRow {
    fn text(&self, _column: usize) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed("")
    }
}

/// True for an address that can be reached on the Internet: not private, loopback, link-local, unspecified,
/// multicast, broadcast, `0.0.0.0/8`, carrier-grade NAT, reserved (`240.0.0.0/4`), benchmarking
/// (`198.18.0.0/15`) or IETF protocol assignments (`192.0.0.0/24`). Documentation ranges (203.0.113.0/24, 2001:db8::/32…)
/// count as routable so the shipped samples, which must not use real addresses, show appended rows.
pub fn is_globally_routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
                // 100.64.0.0/10 carrier-grade NAT
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
                // 240.0.0.0/4 reserved ("class E"), 198.18.0.0/15 benchmarking, 192.0.0.0/24 protocol assignments
                || v4.octets()[0] >= 240
                || (v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18)
                || v4.octets()[..3] == [192, 0, 0])
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_globally_routable(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link-local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_survive_encoding() {
        let when = |text: &str| text.parse::<chrono::NaiveDateTime>().unwrap();
        let full = Facts {
            reputation: "malware^botnet".into(),
            file_metadata: "caf\u{e9} \u{4e2d}".into(),
            file_count: Some(u64::MAX),
            whois: Some("Example Org".into()),
            validation: Some(String::new()),
            first_seen: Some(when("2016-12-31T23:59:59.123456789")),
            passive_dns_ip: Some("2001:db8::1".parse().unwrap()),
            keyword_watch: "k".into(),
            url_watch: "http://x/   http://y/".into(),
            ip_domain_watch: "203.0.113.5".into(),
            detection_watch: "Trojan:Win32/X".into(),
        };
        let v4 = Facts { passive_dns_ip: Some("203.0.113.9".parse().unwrap()), ..Facts::default() };
        let early = Facts { first_seen: Some(when("1900-01-01T00:00:00")), ..Facts::default() };
        for facts in [full, v4, early, Facts::default()] {
            let mut bytes = Vec::new();
            facts.encode(&mut bytes);
            assert_eq!(Facts::decode(&bytes), Some(facts.clone()));
            // Truncated or extended input is refused, never misread.
            assert_eq!(Facts::decode(&bytes[..bytes.len() - 1]), None);
            bytes.push(0);
            assert_eq!(Facts::decode(&bytes), None);
        }
    }

    /// A row of plain texts.
    struct TextRow(Vec<String>);

    impl RowCells for TextRow {
        fn text(&self, column: usize) -> std::borrow::Cow<'_, str> {
            std::borrow::Cow::Borrowed(self.0.get(column).map_or("", String::as_str))
        }
    }

    /// Reverse names for every IP, and a sinkhole label that shows which name it was given.
    struct NamedIps;

    impl IpKnowledge for NamedIps {
        fn reverse_name(&self, ip: IpAddr) -> Option<String> {
            Some(format!("host-{ip}.example"))
        }
        fn sinkhole(&self, ip: IpAddr, reverse_name: Option<&str>) -> Option<String> {
            Some(format!("{ip} named {reverse_name:?}"))
        }
    }

    /// Rows of one indicator with the same [`TablePlan::row_fill_key`] get the same fills, whatever else they
    /// hold; rows whose `Reverse DNS` holds text have no key (their sinkhole label reads it). Random rows over
    /// a header with every fillable column and some others, each cell blank, spaces, or text.
    #[test]
    fn rows_with_one_fill_key_get_the_same_fills() {
        let header: Vec<String> = [
            vttl::SCANNED_ITEM,
            "Note",
            vttl::SECLYTICS_REPUTATION,
            vttl::SECLYTICS_FILE_METADATA_IP,
            vttl::SECLYTICS_FILE_COUNT,
            vttl::WHOIS,
            vttl::VALIDATION,
            vttl::DATE_FIRST_SEEN,
            vttl::IP_ADDRESS,
            vttl::REVERSE_DNS,
            vttl::SINKHOLE,
            vttl::KEYWORD_WATCH_LIST,
            vttl::URL_WATCH_LIST,
            vttl::IP_DOMAIN_WATCH_LIST,
            vttl::DETECTION_NAME_WATCH_LIST,
            "Other",
        ]
        .map(String::from)
        .to_vec();
        let plan = TablePlan::new(ColumnMap::from_header(&header).unwrap(), &WatchLists::empty());
        assert!(plan.appended_headers().is_empty(), "every column is there");
        let reverse_dns = header.iter().position(|h| h == vttl::REVERSE_DNS).unwrap();
        let facts = Facts {
            reputation: "malware".into(),
            file_metadata: "meta".into(),
            file_count: Some(3),
            whois: Some("Org".into()),
            validation: Some("valid".into()),
            first_seen: Some("2020-01-02T03:04:05".parse().unwrap()),
            passive_dns_ip: Some("203.0.113.9".parse().unwrap()),
            keyword_watch: "kw".into(),
            url_watch: "http://x/".into(),
            ip_domain_watch: "ioc".into(),
            detection_watch: "Trojan:X".into(),
        };
        let mut rng = fastrand::Rng::with_seed(11);
        for (kind, item, ip) in [
            (IndicatorKind::Ip, "198.51.100.7", Some("198.51.100.7".parse().unwrap())),
            (IndicatorKind::Host, "example.com", None),
        ] {
            let mut by_key: std::collections::HashMap<u32, String> = std::collections::HashMap::new();
            for _ in 0..3000 {
                let mut cells: Vec<String> = (0..header.len())
                    .map(|_| ["", " ", "\t", "text", " x "][rng.usize(0..5)].to_string())
                    .collect();
                cells[0] = item.into();
                if rng.bool() {
                    cells[reverse_dns] = String::new();
                }
                let row = TextRow(cells);
                let fills = format!("{:?}", plan.fills(&row, kind, Some(&facts), &NamedIps, ip));
                match plan.row_fill_key(&row) {
                    None => assert!(!row.is_blank(reverse_dns)),
                    Some(key) => {
                        assert!(row.is_blank(reverse_dns));
                        let first = by_key.entry(key).or_insert_with(|| fills.clone());
                        assert_eq!(*first, fills, "{kind:?} row {:?}", row.0);
                    }
                }
            }
            assert!(by_key.len() > 100, "{} keys", by_key.len());
        }
    }

    #[test]
    fn routable() {
        for ip in
            ["10.1.2.3", "192.168.0.1", "172.16.5.4", "127.0.0.1", "169.254.1.1", "0.0.0.0", "224.0.0.1"]
        {
            assert!(!is_globally_routable(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["255.255.255.255", "100.64.0.1", "::1", "fe80::1", "fd00::1", "ff02::1", "::ffff:10.0.0.1"]
        {
            assert!(!is_globally_routable(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["240.0.0.1", "250.1.2.3", "198.18.0.1", "198.19.255.254", "192.0.0.8", "::ffff:240.0.0.1"]
        {
            assert!(!is_globally_routable(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "203.0.113.45",
            "8.8.8.8",
            "2001:db8::1",
            "2606:4700::1111",
            "198.17.0.1",
            "198.20.0.1",
            "192.0.1.1",
        ] {
            assert!(is_globally_routable(ip.parse().unwrap()), "{ip}");
        }
    }
}
