//! From one document, everything the enrichment engine needs (SPEC §4–§5), with no spreadsheet knowledge:
//! [`extract`] walks the parsed [`Document`] and returns one [`Findings`]; [`join_truncated`] makes a cell
//! text out of a token list.
//!
//! Every string of `context.<kind>.<feed>[]` is classified by [`classify_token`] with the SPEC §5 rules, in
//! order, first match wins, after `|` → `^`. Decisions where SPEC is silent:
//!
//! * **Whose context.** Keyword tokens of the item's own context go to `reputation` for IPs and hosts and to
//!   `file_metadata` for hashes (a hash row has no Reputation column, so `reputation` stays empty). For IPs and
//!   hosts, the contexts of embedded file documents — every `file_connections[]` entry, then every
//!   `connections[]` entry whose `type` is `file` — are walked after the item's own, through the same rules;
//!   their keyword tokens go to `file_metadata`. For a hash, only its own context is walked.
//! * **Rule 1** uses strict `std::net::IpAddr` parsing (`1.2`, `12:30`, `010.1.1.1` are not IPs); related IPs
//!   are stored in canonical form (`2001:DB8::1` → `2001:db8::1`; an IPv4-mapped `::ffff:203.0.113.45` is the
//!   IPv4 address `203.0.113.45`, as indicators and passive-DNS answers are).
//! * **Rule 2** hashes are exactly 32/40/64 hex digits, lower-cased. The item's own hash is left out. After
//!   the context hashes, the hashes listed in `accessed_by_files` (trimmed, valid hashes only) are appended to
//!   `hashes` too, so they reach the Hashes log (the wiki says those logs exist because hashes are too long for
//!   cells; VTTL missed them only because of its text slicing).
//! * **Rule 4 reference sites**: the URL's host (between `://` and the first `/`, `?`, `#`; port and a
//!   trailing dot removed; lower-cased) matches an entry of [`REFERENCE_HOSTS`] when it equals the entry or is
//!   a subdomain of it; a leading `www.` of an entry is ignored, so `phishtank.com` and `www.phishtank.com`
//!   both match the `www.phishtank.com` entry. VTTL's substring test (which a `?u=otx.alienvault.com` query
//!   would fool) is not reproduced.
//! * **Rule 5** line breaks are LF, CR, NEL, U+2028 and U+2029. **Rules 6/7** "whitespace" is any Unicode
//!   white space. `duration` and the `_at` suffix are matched exactly (case-sensitive), as SPEC writes them.
//! * **Rule 8 real domain**: [`crate::vttl::is_host_name`] and, lower-cased, a suffix that is known to the
//!   Public Suffix List (ICANN or private section) with at least one label in front of it (`co.uk` alone is
//!   not a domain). Related domains are stored lower-cased without a trailing dot; the item itself is not a
//!   related domain (it is still a keyword token). Detection names that happen to end in a real TLD
//!   (`Backdoor.Bot`) are domains by this rule: a known limitation of the heuristic, cheaper than a false
//!   miss on a real domain.
//! * **De-duplication**: every list keeps the first appearance only; keyword tokens and detection names are
//!   compared case-sensitively (as VTTL does), domains, hashes and IPs in their normalised form.
//! * **Other fields**: WHOIS is `asn.description` (trimmed, non-empty), else `AS<asn.number>`, else the first
//!   `whois[].org` that is non-empty and not `VR-ARIN` (trimmed, case-insensitive). `first_seen` is the
//!   earliest valid `global_history[].start_at` wherever it sits in the list, else `history.first_seen_at`.
//!   `passive_dns_ips` are the valid `answer_ip`s (trimmed, strict parsing) in order, duplicates removed, the
//!   item itself included.
//! * **Truncation** ([`join_truncated`]): cut at the last separator that keeps the text within the limit, with
//!   no trailing separator; a first token alone longer than the limit is cut hard at the limit (an analyst
//!   would rather see the start of a long value than an empty cell). Text within the limit is the plain join,
//!   untouched (a token may itself end in `^` where the API wrote a `|`).

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use chrono::NaiveDateTime;

use super::model::Document;
use crate::vttl::{Indicator, IndicatorKind, is_hash, is_host_name};

/// The longest cell text, in characters (VTTL's `cellTruncateLength`).
pub const CELL_LIMIT: usize = 8000;

/// The separator of token lists in cells.
pub const TOKEN_SEPARATOR: &str = "^";

/// Reference sites (reference `vttl-spec.md` §3.5): URLs on these hosts go to `references_Seclytic`.
pub const REFERENCE_HOSTS: &[&str] = &[
    "otx.alienvault.com",
    "www.phishtank.com",
    "urlquery.net",
    "threatcrowd.org",
    "vxvault.net",
    "community.bluelive.com",
    "malc0de.com",
    "hybrid-analysis.com",
    "sandbox.pikker.ee",
    "www.sophos.com",
];

/// What one document says, for one indicator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Keyword tokens (rule 8) of the item's own context (IPs and hosts only).
    pub reputation: Vec<String>,
    /// Keyword tokens of the file context: a hash's own context, or the embedded file documents of an IP/host.
    pub file_metadata: Vec<String>,
    /// Length of `accessed_by_files` (0 when absent).
    pub file_count: usize,
    /// The WHOIS owner: `asn.description`, `AS<asn.number>`, or the first usable `whois[].org`.
    pub whois_owner: Option<String>,
    /// The Validation value: the whitelist reason, or `Whitelist`.
    pub whitelist: Option<String>,
    /// Earliest `global_history[].start_at`, else `history.first_seen_at` (UTC).
    pub first_seen: Option<NaiveDateTime>,
    /// `passive_dns[].answer_ip` in order, valid IPs only, no duplicates.
    pub passive_dns_ips: Vec<IpAddr>,
    /// Rule 1 tokens, canonical form (empty when the item is an IP).
    pub related_ips: Vec<String>,
    /// Rule 8 tokens that are real domain names, lower case.
    pub related_domains: Vec<String>,
    /// Rule 2 tokens, then `accessed_by_files` hashes; lower case, never the item itself.
    pub hashes: Vec<String>,
    /// Rule 4 URLs that are not on a reference site.
    pub urls: Vec<String>,
    /// Rule 4 URLs on a reference site.
    pub reference_urls: Vec<String>,
    /// Rule 6 tokens and rule 8 tokens that are not real domains.
    pub detection_candidates: Vec<String>,
}

/// How the §5 rules classify one context string (after `|` → `^`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenClass {
    /// Rule 1, item not an IP: a related IP.
    RelatedIp(IpAddr),
    /// Rule 1 with an IP item, rule 2 for the item's own hash, rules 3, 5, 7 and 9: nothing.
    Ignored(IgnoredBecause),
    /// Rule 2: a hash, lower case.
    Hash(String),
    /// Rule 4: a URL; `reference` when its host is a reference site.
    Url { url: String, reference: bool },
    /// Rule 6: a detection-name candidate (watch list only).
    DetectionName(String),
    /// Rule 8: a keyword token; `domain` holds the lower-cased name when it is a real domain.
    Keyword { token: String, domain: Option<String> },
}

/// Why a token was ignored (the rule that decided).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoredBecause {
    /// Rule 1: an IP while the item itself is an IP.
    IpOfIpItem,
    /// Rule 2: the item's own hash.
    ItemHash,
    /// Rule 3: contains `@`.
    Email,
    /// Rule 5: contains a line break.
    LineBreak,
    /// Rule 7: contains whitespace.
    Prose,
    /// Rule 9: wrong length, `_at` suffix or `duration`.
    NotAKeyword,
}

/// Classifies one context string for `item` (SPEC §5).
pub fn classify_token(raw: &str, item: &Indicator) -> TokenClass {
    // Owned only when it changes or is kept: most tokens are ignored or lower-cased copies anyway.
    let token: Cow<'_, str> =
        if raw.contains('|') { Cow::Owned(raw.replace('|', "^")) } else { Cow::Borrowed(raw) };
    // Rule 1
    if let Ok(ip) = token.parse::<IpAddr>() {
        return if item.kind == IndicatorKind::Ip {
            TokenClass::Ignored(IgnoredBecause::IpOfIpItem)
        } else {
            // `::ffff:203.0.113.45` is the IPv4 address, as for indicators and passive-DNS answers.
            TokenClass::RelatedIp(ip.to_canonical())
        };
    }
    // Rule 2
    if is_hash(&token) {
        let hash = token.to_ascii_lowercase();
        return if item.kind == IndicatorKind::File && item.value.eq_ignore_ascii_case(&hash) {
            TokenClass::Ignored(IgnoredBecause::ItemHash)
        } else {
            TokenClass::Hash(hash)
        };
    }
    // Rule 3
    if token.contains('@') {
        return TokenClass::Ignored(IgnoredBecause::Email);
    }
    // Rule 4
    if let Some(host) = url_host(&token) {
        let reference = is_reference_host(&host);
        return TokenClass::Url { url: token.into_owned(), reference };
    }
    // Rule 5
    if token.chars().any(is_line_break) {
        return TokenClass::Ignored(IgnoredBecause::LineBreak);
    }
    let has_whitespace = token.chars().any(char::is_whitespace);
    // Rule 6
    if (token.contains(':') || token.contains('!')) && !has_whitespace {
        return TokenClass::DetectionName(token.into_owned());
    }
    // Rule 7
    if has_whitespace {
        return TokenClass::Ignored(IgnoredBecause::Prose);
    }
    // Rule 8
    let length = token.chars().count();
    if (4..=31).contains(&length) && !token.ends_with("_at") && token != "duration" {
        let domain = real_domain_name(&token);
        return TokenClass::Keyword { token: token.into_owned(), domain };
    }
    // Rule 9
    TokenClass::Ignored(IgnoredBecause::NotAKeyword)
}

fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// The lower-cased host of a token starting with `http://` or `https://` (any case); `None` when the token is
/// not such a URL. The host may be empty (`http:///x`).
fn url_host(token: &str) -> Option<String> {
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        let prefix = token.get(..scheme.len())?;
        prefix.eq_ignore_ascii_case(scheme).then(|| &token[scheme.len()..])
    })?;
    let authority = rest.split(['/', '?', '#', '\\']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// Whether a lower-cased host is a reference site: equal to an entry of [`REFERENCE_HOSTS`] (leading `www.`
/// of the entry ignored) or a subdomain of it.
pub fn is_reference_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    REFERENCE_HOSTS.iter().any(|entry| {
        let site = entry.strip_prefix("www.").unwrap_or(entry);
        host == site || host.strip_suffix(site).is_some_and(|front| front.ends_with('.'))
    })
}

/// The lower-cased name (no trailing dot) when `token` is a real domain name: a valid host name whose suffix
/// is on the Public Suffix List, with at least one label before the suffix.
pub fn real_domain_name(token: &str) -> Option<String> {
    if !is_host_name(token) {
        return None;
    }
    let name = token.trim_end_matches('.').to_ascii_lowercase();
    let suffix = psl::suffix(name.as_bytes())?;
    if !suffix.is_known() {
        return None;
    }
    psl::domain(name.as_bytes())?;
    Some(name)
}

/// Up to this many items, [`FirstSeen`] finds duplicates by scanning its list (no copy of each value into a
/// set); beyond, through a hash set of the items.
const FIRST_SEEN_SCAN: usize = 16;

/// A list that keeps only the first appearance of each value, in order.
struct FirstSeen<T> {
    items: Vec<T>,
    /// Every item, once the list is longer than [`FIRST_SEEN_SCAN`].
    index: Option<HashSet<T>>,
}

impl<T> Default for FirstSeen<T> {
    fn default() -> Self {
        FirstSeen { items: Vec::new(), index: None }
    }
}

impl<T: Clone + Eq + std::hash::Hash> FirstSeen<T> {
    fn push(&mut self, value: T) {
        match &mut self.index {
            Some(index) => {
                if index.insert(value.clone()) {
                    self.items.push(value);
                }
            }
            None => {
                if !self.items.contains(&value) {
                    self.items.push(value);
                    if self.items.len() > FIRST_SEEN_SCAN {
                        self.index = Some(self.items.iter().cloned().collect());
                    }
                }
            }
        }
    }

    fn into_vec(self) -> Vec<T> {
        self.items
    }
}

/// Where the keyword tokens of a context go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeywordTarget {
    Reputation,
    FileMetadata,
}

#[derive(Default)]
struct Collector {
    reputation: FirstSeen<String>,
    file_metadata: FirstSeen<String>,
    related_ips: FirstSeen<String>,
    related_domains: FirstSeen<String>,
    hashes: FirstSeen<String>,
    urls: FirstSeen<String>,
    reference_urls: FirstSeen<String>,
    detection_candidates: FirstSeen<String>,
}

impl Collector {
    fn walk(&mut self, item: &Indicator, item_domain: Option<&str>, doc: &Document, target: KeywordTarget) {
        for value in doc.context.values() {
            match classify_token(value, item) {
                TokenClass::RelatedIp(ip) => self.related_ips.push(ip.to_string()),
                TokenClass::Ignored(_) => {}
                TokenClass::Hash(hash) => self.hashes.push(hash),
                TokenClass::Url { url, reference: true } => self.reference_urls.push(url),
                TokenClass::Url { url, reference: false } => self.urls.push(url),
                TokenClass::DetectionName(name) => self.detection_candidates.push(name),
                TokenClass::Keyword { token, domain } => {
                    match domain {
                        Some(domain) if Some(domain.as_str()) == item_domain => {}
                        Some(domain) => self.related_domains.push(domain),
                        None => self.detection_candidates.push(token.clone()),
                    }
                    match target {
                        KeywordTarget::Reputation => self.reputation.push(token),
                        KeywordTarget::FileMetadata => self.file_metadata.push(token),
                    }
                }
            }
        }
    }
}

/// Everything `doc` says about `item` (see the module comment for the rules).
pub fn extract(item: &Indicator, doc: &Document) -> Findings {
    let item_domain = match item.kind {
        IndicatorKind::Host => Some(item.value.trim_end_matches('.').to_ascii_lowercase()),
        _ => None,
    };
    let mut collector = Collector::default();
    if item.kind == IndicatorKind::File {
        collector.walk(item, None, doc, KeywordTarget::FileMetadata);
    } else {
        collector.walk(item, item_domain.as_deref(), doc, KeywordTarget::Reputation);
        let embedded_files =
            doc.file_connections.iter().chain(doc.connections.iter().filter(|c| c.is_file()));
        for file in embedded_files {
            collector.walk(item, item_domain.as_deref(), file, KeywordTarget::FileMetadata);
        }
    }
    for hash in doc.accessed_by_files.iter().flatten().flatten() {
        let hash = hash.trim();
        if is_hash(hash) {
            let hash = hash.to_ascii_lowercase();
            if !(item.kind == IndicatorKind::File && item.value.eq_ignore_ascii_case(&hash)) {
                collector.hashes.push(hash);
            }
        }
    }

    let mut passive_dns_ips = FirstSeen::default();
    for entry in &doc.passive_dns {
        if let Some(ip) = entry.answer_ip.as_deref().and_then(|ip| ip.trim().parse::<IpAddr>().ok()) {
            // `::ffff:203.0.113.45` is the IPv4 address: one form, so the sheet's own IPv4 rows are recognised
            // and the address is not appended (and looked up) a second time.
            passive_dns_ips.push(ip.to_canonical());
        }
    }

    Findings {
        reputation: collector.reputation.into_vec(),
        file_metadata: collector.file_metadata.into_vec(),
        file_count: doc.accessed_by_files.as_ref().map_or(0, Vec::len),
        whois_owner: whois_owner(doc),
        whitelist: doc.whitelist.as_ref().map(|w| w.validation_text().to_string()),
        first_seen: first_seen(doc),
        passive_dns_ips: passive_dns_ips.into_vec(),
        related_ips: collector.related_ips.into_vec(),
        related_domains: collector.related_domains.into_vec(),
        hashes: collector.hashes.into_vec(),
        urls: collector.urls.into_vec(),
        reference_urls: collector.reference_urls.into_vec(),
        detection_candidates: collector.detection_candidates.into_vec(),
    }
}

/// `asn.description`; else `AS<asn.number>`; else the first `whois[].org` not empty and not `VR-ARIN`.
fn whois_owner(doc: &Document) -> Option<String> {
    let asn = doc.asn.as_ref();
    let description = asn.and_then(|asn| asn.description.as_deref()).map(str::trim).filter(|d| !d.is_empty());
    if let Some(description) = description {
        return Some(description.to_string());
    }
    if let Some(number) = asn.and_then(|asn| asn.number.as_deref()) {
        return Some(format!("AS{number}"));
    }
    doc.whois
        .iter()
        .filter_map(|entry| entry.org.as_deref())
        .map(str::trim)
        .find(|org| !org.is_empty() && !org.eq_ignore_ascii_case("VR-ARIN"))
        .map(str::to_string)
}

/// The earliest valid `global_history[].start_at`, else `history.first_seen_at`.
fn first_seen(doc: &Document) -> Option<NaiveDateTime> {
    let history = doc.history.as_ref()?;
    history.global_history.iter().filter_map(|period| period.start_at).min().or(history.first_seen_at)
}

/// Joins `tokens` with `sep`. When the result is longer than `limit` characters it is cut at the last `sep`
/// that keeps it within `limit`, with no trailing `sep`; when the first token alone is longer than `limit`,
/// the text is cut hard after `limit` characters.
pub fn join_truncated(tokens: &[String], sep: &str, limit: usize) -> String {
    let joined = tokens.join(sep);
    match cut_at_separators(&joined, &[sep], limit) {
        cut if cut.len() == joined.len() => joined,
        cut => cut.to_string(),
    }
}

/// `text` cut as [`join_truncated`] cuts: whole when it has at most `limit` characters, else up to the last of
/// any of `seps` (the `^` of token lists, the three spaces of the URL watch list) that keeps it within them,
/// with no separator at its end, or at `limit` characters when none does.
pub fn cut_at_separators<'a>(text: &'a str, seps: &[&str], limit: usize) -> &'a str {
    if text.len() <= limit || text.chars().count() <= limit {
        return text;
    }
    let offset = |chars: usize| text.char_indices().nth(chars).map_or(text.len(), |(at, _)| at);
    // A separator found entirely within the first `limit + its length` characters starts at or before character
    // `limit`, so the text before it fits.
    let last = seps
        .iter()
        .filter(|sep| !sep.is_empty())
        .filter_map(|sep| text[..offset(limit + sep.chars().count())].rfind(sep))
        .max();
    match strip_trailing(&text[..last.unwrap_or(0)], seps) {
        "" => strip_trailing(&text[..offset(limit)], seps),
        cut => cut,
    }
}

/// `text` without any of `seps` at its end.
fn strip_trailing<'a>(mut text: &'a str, seps: &[&str]) -> &'a str {
    while let Some(shorter) = seps.iter().filter(|sep| !sep.is_empty()).find_map(|sep| text.strip_suffix(sep))
    {
        text = shorter;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_cut_at_the_last_separator_of_any_kind_that_fits() {
        let seps = ["^", "   "];
        assert_eq!(cut_at_separators("a^bb^ccc", &seps, 5), "a^bb");
        assert_eq!(cut_at_separators("a^bb^ccc", &seps, 8), "a^bb^ccc");
        assert_eq!(cut_at_separators("aa   bb   cc", &seps, 9), "aa   bb");
        assert_eq!(cut_at_separators("x^y   z", &seps, 6), "x^y");
        assert_eq!(cut_at_separators("abcdefgh", &seps, 3), "abc");
        assert_eq!(
            cut_at_separators("^^^abc", &seps, 2),
            "",
            "only separators: nothing, as join_truncated gives"
        );
        assert_eq!(cut_at_separators("éé^üü", &seps, 4), "éé");
        assert_eq!(cut_at_separators("ab^^cd", &seps, 4), "ab");
    }
    use crate::seclytics::model::parse_document;

    fn fixture(name: &str) -> Document {
        let path = format!("{}/tests/fixtures/seclytics/{name}", env!("CARGO_MANIFEST_DIR"));
        let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        parse_document(&body).unwrap()
    }

    fn item(text: &str) -> Indicator {
        Indicator::classify(text).unwrap_or_else(|| panic!("not an indicator: {text}"))
    }

    /// A document whose context holds `values`, all in one feed.
    fn doc_with(values: &[&str]) -> Document {
        let body = serde_json::json!({ "context": { "reasons": { "feed": values } } }).to_string();
        parse_document(&body).unwrap()
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    fn datetime(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    const HOST: &str = "cdn-update.example.co.uk";
    const IP: &str = "203.0.113.45";
    const MD5: &str = "6f1e2d3c4b5a69788796a5b4c3d2e1f0";

    #[test]
    fn reference_ip_document() {
        let findings = extract(&item(IP), &fixture("ip_flagged.json"));
        assert_eq!(findings.reputation, strings(&["scanner", "malicious", "agenttesla", "AgentTesla.XK"]));
        assert!(findings.file_metadata.is_empty());
        assert_eq!(findings.file_count, 2);
        assert_eq!(findings.whois_owner.as_deref(), Some("EXAMPLE-HOSTING-AS"));
        assert_eq!(findings.whitelist, None);
        assert_eq!(findings.first_seen, Some(datetime("2024-02-10 00:00:00")));
        assert_eq!(findings.passive_dns_ips, vec![IP.parse::<IpAddr>().unwrap()]);
        assert!(findings.related_ips.is_empty());
        assert!(findings.related_domains.is_empty(), "{:?}", findings.related_domains);
        assert_eq!(
            findings.hashes,
            strings(&[
                "9f2c4e1a7b3d5f608e1c2b4a6d8f0e3c5a7b9d1f3e5c7a9b0d2f4e6a8c0b1d3e",
                "0b7e3d9a1c5f2e8d4b6a0c3e7f9d1b5a2c4e6f8a0d3b5c7e9f1a2b4c6d8e0f1a",
            ])
        );
        assert!(findings.urls.is_empty());
        assert_eq!(
            findings.reference_urls,
            strings(&[
                "https://www.hybrid-analysis.com/sample/9f2c4e1a7b3d5f608e1c2b4a6d8f0e3c5a7b9d1f3e5c7a9b0d2f4e6a8c0b1d3e"
            ])
        );
        assert_eq!(
            findings.detection_candidates,
            strings(&["scanner", "malicious", "agenttesla", "AgentTesla.XK"])
        );
    }

    #[test]
    fn reference_allowlisted_ip_document() {
        let findings = extract(&item("198.51.100.53"), &fixture("ip_allowlisted.json"));
        assert_eq!(findings.whitelist.as_deref(), Some("Public recursive DNS resolver"));
        assert_eq!(findings.whois_owner.as_deref(), Some("EXAMPLE-DNS-AS"));
        assert!(findings.reputation.is_empty());
        assert_eq!(findings.file_count, 0);
        assert_eq!(findings.first_seen, None);
        assert!(findings.passive_dns_ips.is_empty());
    }

    #[test]
    fn reference_host_document() {
        let findings = extract(&item(HOST), &fixture("host.json"));
        assert_eq!(
            findings.reputation,
            strings(&["malicious", "malware", "formbook", "/wp-content/upd/inv_0312.exe"])
        );
        assert!(findings.file_metadata.is_empty(), "the file connection carries no context");
        assert_eq!(findings.file_count, 1);
        assert_eq!(
            findings.hashes,
            strings(&[
                "3a5c7e9b1d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c",
                "5d0c8e2a4f6b1d3e7a9c0b2d4f6e8a1c3b5d7f9e0a2c4b6d8e1f3a5c7b9d0e2f",
            ])
        );
        assert_eq!(
            findings.urls,
            strings(&[
                "https://tria.ge/240308-abcd1234",
                "http://cdn-update.example.co.uk/wp-content/upd/inv_0312.exe"
            ])
        );
        assert!(findings.reference_urls.is_empty());
        assert_eq!(findings.first_seen, Some(datetime("2024-03-06 00:00:00")));
        assert_eq!(findings.passive_dns_ips, vec![IP.parse::<IpAddr>().unwrap()]);
        assert_eq!(findings.whitelist, None);
        assert_eq!(findings.whois_owner, None);
        assert!(findings.related_ips.is_empty());
        assert!(findings.related_domains.is_empty());
    }

    #[test]
    fn reference_file_document() {
        let findings = extract(&item(MD5), &fixture("file_md5.json"));
        assert!(findings.reputation.is_empty(), "a hash has no Reputation column");
        assert_eq!(findings.file_metadata, strings(&["malware", "malicious", HOST, "application/x-dosexec"]));
        assert_eq!(findings.related_ips, strings(&[IP]));
        assert_eq!(findings.related_domains, strings(&[HOST]));
        assert_eq!(
            findings.hashes,
            strings(&[
                "3a5c7e9b1d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c",
                "5d0c8e2a4f6b1d3e7a9c0b2d4f6e8a1c3b5d7f9e0a2c4b6d8e1f3a5c7b9d0e2f",
            ]),
            "the item's own md5 is not a related hash"
        );
        assert_eq!(
            findings.detection_candidates,
            strings(&[
                "malware",
                "malicious",
                "application/x-dosexec",
                "6144:aB3cD4eF5gH6iJ7kL8mN9oP0qR1sT2uV3wX4yZ5:aB3cD4eF5gH6iJ7"
            ])
        );
        assert_eq!(findings.first_seen, Some(datetime("2024-03-06 00:00:00")));
        assert_eq!(findings.file_count, 0);
    }

    #[test]
    fn reference_unknown_hash_says_nothing() {
        let unknown = "77770000022222211333333444445555";
        let findings = extract(&item(unknown), &fixture("file_unknown.json"));
        assert_eq!(findings, Findings::default());
    }

    /// The host body of reference `vttl-spec.md` §3.17, where VTTL's slicing leaks `doc_ids` into the cell.
    #[test]
    fn worked_example_host_without_vttl_leaks() {
        let body = r#"{
            "accessed_by_files": ["11111111111111111111111111111111", "22222222222222222222222222222222"],
            "context": {
                "categories": {"triage_sandbox": ["malicious", "Command and Control"], "urlhaus": ["malware"]},
                "identifiers": {"urlhaus": ["formbook"]},
                "reasons": {"triage_sandbox": ["Formbook.A", "Trojan:Win32/Formbook!ml"]},
                "source_urls": {"triage_sandbox": ["https://tria.ge/240308-abcd1234"]},
                "urls": {"urlhaus": ["http://cdn-update.example.co.uk/upd/inv.exe"]}
            },
            "doc_ids": ["b61f0e2c9a7d4e53"],
            "domain": "example.co.uk",
            "history": {"global_history": [{"duration": 86400, "end_at": "2024-03-09T00:00:00",
                                            "start_at": "2024-03-08T00:00:00"}]},
            "hostname": "cdn-update.example.co.uk",
            "id": "cdn-update.example.co.uk",
            "passive_dns": [{"answer_ip": "203.0.113.45"}],
            "type": "host",
            "whitelist": "Example allow-list reason"
        }"#;
        let findings = extract(&item(HOST), &parse_document(body).unwrap());
        assert_eq!(findings.reputation, strings(&["malicious", "malware", "formbook", "Formbook.A"]));
        assert_eq!(
            join_truncated(&findings.reputation, TOKEN_SEPARATOR, CELL_LIMIT),
            "malicious^malware^formbook^Formbook.A"
        );
        assert!(findings.related_domains.is_empty(), "Formbook.A is not a domain");
        assert_eq!(
            findings.detection_candidates,
            strings(&["malicious", "malware", "formbook", "Formbook.A", "Trojan:Win32/Formbook!ml"])
        );
        assert_eq!(
            findings.urls,
            strings(&["https://tria.ge/240308-abcd1234", "http://cdn-update.example.co.uk/upd/inv.exe"])
        );
        assert_eq!(
            findings.hashes,
            strings(&["11111111111111111111111111111111", "22222222222222222222222222222222"])
        );
        assert_eq!(findings.file_count, 2);
        assert_eq!(findings.whitelist.as_deref(), Some("Example allow-list reason"));
        assert_eq!(findings.first_seen, Some(datetime("2024-03-08 00:00:00")));
        assert_eq!(findings.passive_dns_ips, vec![IP.parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn rule_1_ip_addresses_strictly_parsed() {
        let values = ["198.51.100.7", "2001:DB8::1", "1.2", "010.1.1.1", "10.0.0.256", "198.51.100.7"];
        let host = extract(&item(HOST), &doc_with(&values));
        assert_eq!(host.related_ips, strings(&["198.51.100.7", "2001:db8::1"]));
        // `1.2` is three characters: rule 9. The others are not IPs: keyword tokens, not domains.
        assert_eq!(host.reputation, strings(&["010.1.1.1", "10.0.0.256"]));
        assert_eq!(host.detection_candidates, strings(&["010.1.1.1", "10.0.0.256"]));

        let ip = extract(&item(IP), &doc_with(&values));
        assert!(ip.related_ips.is_empty());
        assert_eq!(ip.reputation, strings(&["010.1.1.1", "10.0.0.256"]), "IPs never become keyword tokens");
        assert_eq!(
            classify_token("198.51.100.7", &item(IP)),
            TokenClass::Ignored(IgnoredBecause::IpOfIpItem)
        );
        assert_eq!(classify_token("1.2", &item(HOST)), TokenClass::Ignored(IgnoredBecause::NotAKeyword));
        // An IPv4-mapped address is its IPv4 address.
        let mapped = extract(&item(HOST), &doc_with(&["::ffff:198.51.100.7", "::FFFF:C633:6408"]));
        assert_eq!(mapped.related_ips, strings(&["198.51.100.7", "198.51.100.8"]));
        let file = extract(&item(MD5), &doc_with(&["198.51.100.7"]));
        assert_eq!(file.related_ips, strings(&["198.51.100.7"]));
    }

    #[test]
    fn rule_2_hashes_of_exact_lengths_lower_cased_without_the_item() {
        let md5 = "ABCDEF0123456789ABCDEF0123456789";
        let sha1 = "a".repeat(40);
        let sha256 = "0123456789abcdef".repeat(4);
        let hex33 = "b".repeat(33);
        let hex31 = "c".repeat(31);
        let not_hex32 = format!("{}g", "d".repeat(31));
        let own = MD5.to_ascii_uppercase();
        let values = [md5, sha1.as_str(), &sha256, &hex33, &hex31, &not_hex32, &own, md5];
        let findings = extract(&item(MD5), &doc_with(&values));
        assert_eq!(findings.hashes, vec![md5.to_ascii_lowercase(), sha1.clone(), sha256.clone()]);
        // 31 hex digits is a keyword token; 32 characters that are not all hex and 33 hex digits are too long.
        assert_eq!(findings.file_metadata, vec![hex31.clone()]);
        assert_eq!(classify_token(&hex33, &item(HOST)), TokenClass::Ignored(IgnoredBecause::NotAKeyword));
        assert_eq!(classify_token(&own, &item(MD5)), TokenClass::Ignored(IgnoredBecause::ItemHash));
        // For another item the same hash is a related hash.
        assert_eq!(classify_token(&own, &item(HOST)), TokenClass::Hash(MD5.to_string()));
    }

    #[test]
    fn rule_3_email_addresses_ignored() {
        for value in ["abuse@example.com", "mailto:x@example.com", "http://user@evil.example.com/", "a@b"] {
            assert_eq!(
                classify_token(value, &item(HOST)),
                TokenClass::Ignored(IgnoredBecause::Email),
                "{value}"
            );
        }
        let findings = extract(&item(HOST), &doc_with(&["abuse@example.com", "spam"]));
        assert_eq!(findings.reputation, strings(&["spam"]));
        assert!(findings.related_domains.is_empty() && findings.urls.is_empty());
    }

    #[test]
    fn rule_4_urls_in_any_case_and_reference_sites_by_host() {
        let values = [
            "HTTP://Evil.Example.com/Payload.exe",
            "hTTpS://otx.alienvault.com/pulse/1",
            "https://www.phishtank.com/phish_detail.php?phish_id=1",
            "http://phishtank.com/x",
            "https://sub.hybrid-analysis.com:443/sample/1",
            "http://urlquery.net./report",
            "https://evil.example.com/?u=otx.alienvault.com",
            "https://otx.alienvault.com.evil.example.net/",
            "http://bluelive.com/",
            "http://community.bluelive.com/x",
            "https://example.com/a b c",
            "HTTP://Evil.Example.com/Payload.exe",
        ];
        let findings = extract(&item(HOST), &doc_with(&values));
        assert_eq!(
            findings.urls,
            strings(&[
                "HTTP://Evil.Example.com/Payload.exe",
                "https://evil.example.com/?u=otx.alienvault.com",
                "https://otx.alienvault.com.evil.example.net/",
                "http://bluelive.com/",
                "https://example.com/a b c",
            ])
        );
        assert_eq!(
            findings.reference_urls,
            strings(&[
                "hTTpS://otx.alienvault.com/pulse/1",
                "https://www.phishtank.com/phish_detail.php?phish_id=1",
                "http://phishtank.com/x",
                "https://sub.hybrid-analysis.com:443/sample/1",
                "http://urlquery.net./report",
                "http://community.bluelive.com/x",
            ])
        );
        assert!(findings.reputation.is_empty() && findings.detection_candidates.is_empty());
        // Not http(s): `ftp://x` has a colon and no whitespace, so it is a detection-name candidate.
        assert_eq!(
            classify_token("ftp://x.example", &item(HOST)),
            TokenClass::DetectionName("ftp://x.example".into())
        );
        assert_eq!(classify_token("http:/x", &item(HOST)), TokenClass::DetectionName("http:/x".into()));
        assert!(is_reference_host("MALC0DE.COM"));
        assert!(!is_reference_host("notmalc0de.com"));
        assert!(!is_reference_host("sophos.com.example"));
        assert!(is_reference_host("sophos.com"));
    }

    #[test]
    fn rule_5_line_breaks_ignored_before_detection_names() {
        for value in ["Trojan\nWin32", "a:b\r\nc", "line\u{2028}sep"] {
            assert_eq!(
                classify_token(value, &item(HOST)),
                TokenClass::Ignored(IgnoredBecause::LineBreak),
                "{value:?}"
            );
        }
    }

    #[test]
    fn rule_6_colon_or_bang_without_whitespace_are_detection_names() {
        let values = ["Trojan:Win32/Formbook!ml", "12:30", "Alert!", "ab:cd", "Mal: ware", "12:30"];
        let findings = extract(&item(HOST), &doc_with(&values));
        assert_eq!(
            findings.detection_candidates,
            strings(&["Trojan:Win32/Formbook!ml", "12:30", "Alert!", "ab:cd"])
        );
        assert!(findings.reputation.is_empty(), "detection names never reach the cells");
        assert!(findings.related_ips.is_empty(), "12:30 and ab:cd are not IPv6 addresses");
    }

    #[test]
    fn rule_7_prose_ignored() {
        let values = [
            "Command and Control",
            "In late 2019, the group used spear-phishing",
            "tab\there",
            "nb\u{a0}sp",
            "x y",
        ];
        for value in values {
            assert_eq!(
                classify_token(value, &item(HOST)),
                TokenClass::Ignored(IgnoredBecause::Prose),
                "{value:?}"
            );
        }
        assert_eq!(extract(&item(HOST), &doc_with(&values)), Findings::default());
    }

    #[test]
    fn rule_8_and_9_keyword_lengths_and_filtered_names() {
        let len31 = "k".repeat(31);
        let len32 = "k".repeat(32);
        let wide31 = "é".repeat(31);
        let wide32 = "é".repeat(32);
        let values = [
            "abc",
            "abcd",
            &len31,
            &len32,
            &wide31,
            &wide32,
            "first_seen_at",
            "end_at",
            "duration",
            "Duration",
            "_at",
            "ab_atx",
        ];
        let findings = extract(&item(HOST), &doc_with(&values));
        assert_eq!(
            findings.reputation,
            vec!["abcd".to_string(), len31, wide31, "Duration".into(), "ab_atx".into()]
        );
        assert_eq!(findings.reputation, findings.detection_candidates);
    }

    #[test]
    fn rule_8_real_domains_by_public_suffix() {
        let values = [
            "evil-cdn.example.co.uk",
            "Formbook.A",
            "AgentTesla.XK",
            "Trojan.Generic",
            "EXAMPLE.COM",
            "co.uk",
            "example.net.",
            "inv_0312.exe",
            "bad.example.org",
        ];
        let findings = extract(&item(HOST), &doc_with(&values));
        assert_eq!(
            findings.related_domains,
            strings(&["evil-cdn.example.co.uk", "example.com", "example.net", "bad.example.org"])
        );
        assert_eq!(
            findings.detection_candidates,
            strings(&["Formbook.A", "AgentTesla.XK", "Trojan.Generic", "co.uk", "inv_0312.exe"])
        );
        // Every rule-8 token is a keyword token, domain or not, with its original spelling.
        assert_eq!(findings.reputation, strings(&values));
        assert_eq!(real_domain_name("Evil-CDN.Example.CO.UK").as_deref(), Some("evil-cdn.example.co.uk"));
        assert_eq!(real_domain_name("Formbook.A"), None);
        assert_eq!(real_domain_name("Win32.Agent"), None);
        assert_eq!(real_domain_name("1.2.3"), None);
        // The documented limitation: a detection name ending in a real TLD reads as a domain.
        assert_eq!(real_domain_name("Backdoor.Bot").as_deref(), Some("backdoor.bot"));
    }

    #[test]
    fn the_host_itself_is_a_keyword_but_not_a_related_domain() {
        let findings = extract(&item(HOST), &doc_with(&["CDN-UPDATE.example.co.uk", "other.example.co.uk"]));
        assert_eq!(findings.reputation, strings(&["CDN-UPDATE.example.co.uk", "other.example.co.uk"]));
        assert_eq!(findings.related_domains, strings(&["other.example.co.uk"]));
    }

    #[test]
    fn pipes_become_carets_before_the_rules() {
        let values = ["malware|spam", "198.51.100.1|198.51.100.2", "http://evil.example.com/a|b", "a|b"];
        let findings = extract(&item(HOST), &doc_with(&values));
        assert_eq!(findings.reputation, strings(&["malware^spam", "198.51.100.1^198.51.100.2"]));
        assert_eq!(findings.urls, strings(&["http://evil.example.com/a^b"]));
        assert!(findings.related_ips.is_empty());
        assert!(findings.reputation.iter().chain(&findings.urls).all(|token| !token.contains('|')));
    }

    #[test]
    fn first_seen_keeps_first_appearances_below_and_beyond_the_scan_limit() {
        for count in [3, FIRST_SEEN_SCAN, FIRST_SEEN_SCAN + 1, 5 * FIRST_SEEN_SCAN] {
            let mut list = FirstSeen::default();
            let mut expected: Vec<String> = Vec::new();
            for i in 0..3 * count {
                // Every value comes back a few times, in a different order each round.
                let value = format!("v{}", (i * 7) % count);
                if !expected.contains(&value) {
                    expected.push(value.clone());
                }
                list.push(value);
            }
            assert_eq!(list.into_vec(), expected, "{count}");
        }
    }

    #[test]
    fn duplicates_across_kinds_and_feeds_keep_the_first_appearance() {
        let body = r#"{"context": {
            "categories": {"feed_a": ["malware", "spam"], "feed_b": ["spam", "Malware", "malware"]},
            "identifiers": {"feed_c": ["emotet", "spam", "emotet"]},
            "ips": {"feed_d": ["198.51.100.1", "198.51.100.1"]},
            "sha1": {"feed_e": ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]},
            "hostnames": {"feed_f": ["Bad.Example.com", "bad.example.com"]},
            "urls": {"feed_g": ["http://x.example.com/", "http://x.example.com/"]}
        }, "accessed_by_files": ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}"#;
        let findings = extract(&item(HOST), &parse_document(body).unwrap());
        assert_eq!(
            findings.reputation,
            strings(&["malware", "spam", "Malware", "emotet", "Bad.Example.com", "bad.example.com"])
        );
        assert_eq!(findings.related_ips, strings(&["198.51.100.1"]));
        assert_eq!(findings.hashes, vec!["a".repeat(40)]);
        assert_eq!(findings.related_domains, strings(&["bad.example.com"]));
        assert_eq!(findings.urls, strings(&["http://x.example.com/"]));
        assert_eq!(findings.detection_candidates, strings(&["malware", "spam", "Malware", "emotet"]));
    }

    #[test]
    fn embedded_file_documents_feed_the_file_metadata() {
        let body = r#"{
            "context": {"categories": {"feed": ["malicious"]}},
            "file_connections": [
                {"type": "file", "id": "f1", "context": {"names": {"feed": ["invoice.exe", "malicious"]},
                                                      "md5": {"feed": ["11111111111111111111111111111111"]},
                                                      "ips": {"feed": ["198.51.100.20"]}}},
                "not a document",
                {"context": {"file_types": {"feed": ["pe32exe"]}}}
            ],
            "connections": [
                {"id": "198.51.100.9", "type": "ip", "context": {"categories": {"feed": ["ipctx"]}}},
                {"id": "f2", "type": "FILE", "context": {"names": {"feed": ["dropper.dll"]}}}
            ]
        }"#;
        let doc = parse_document(body).unwrap();
        let host = extract(&item(HOST), &doc);
        assert_eq!(host.reputation, strings(&["malicious"]));
        assert_eq!(host.file_metadata, strings(&["invoice.exe", "malicious", "pe32exe", "dropper.dll"]));
        assert_eq!(host.hashes, strings(&["11111111111111111111111111111111"]));
        assert_eq!(host.related_ips, strings(&["198.51.100.20"]));
        assert!(
            !host.reputation.contains(&"ipctx".to_string()) && !host.file_metadata.contains(&"ipctx".into())
        );

        let ip = extract(&item(IP), &doc);
        assert_eq!(ip.file_metadata, host.file_metadata);
        assert!(ip.related_ips.is_empty());

        // A hash item reads only its own context.
        let file = extract(&item(MD5), &doc);
        assert_eq!(file.file_metadata, strings(&["malicious"]));
        assert!(file.reputation.is_empty() && file.hashes.is_empty());
    }

    #[test]
    fn accessed_by_files_counts_every_entry_and_logs_valid_hashes_after_context_hashes() {
        let body = format!(
            r#"{{"context": {{"sha1": {{"f": ["{h40}"]}}}},
                "accessed_by_files": [" {h64_upper} ", "not-a-hash", 7, null, "{h40}", "{own}"]}}"#,
            h40 = "b".repeat(40),
            h64_upper = "C".repeat(64),
            own = MD5,
        );
        let doc = parse_document(&body).unwrap();
        let host = extract(&item(HOST), &doc);
        assert_eq!(host.file_count, 6);
        assert_eq!(host.hashes, vec!["b".repeat(40), "c".repeat(64), MD5.to_string()]);
        let file = extract(&item(MD5), &doc);
        assert_eq!(file.hashes, vec!["b".repeat(40), "c".repeat(64)]);
        assert_eq!(
            extract(&item(HOST), &parse_document(r#"{"accessed_by_files": []}"#).unwrap()).file_count,
            0
        );
    }

    #[test]
    fn whois_owner_fallback_order() {
        let owner = |body: &str| extract(&item(IP), &parse_document(body).unwrap()).whois_owner;
        let whois = r#""whois": [{"org": ""}, {"org": "VR-ARIN"}, {"org": " vr-arin "}, {"name": "x"}, {"org": " ORG-1 "}, {"org": "ORG-2"}]"#;
        assert_eq!(
            owner(&format!(r#"{{"asn": {{"description": " DESC ", "number": "1"}}, {whois}}}"#)).as_deref(),
            Some("DESC")
        );
        assert_eq!(
            owner(&format!(r#"{{"asn": {{"description": "  ", "number": "64500"}}, {whois}}}"#)).as_deref(),
            Some("AS64500")
        );
        assert_eq!(owner(&format!(r#"{{"asn": {{"number": 64501}}, {whois}}}"#)).as_deref(), Some("AS64501"));
        assert_eq!(
            owner(&format!(r#"{{"asn": {{"number": "AS64502"}}, {whois}}}"#)).as_deref(),
            Some("AS64502")
        );
        assert_eq!(owner(&format!(r#"{{"asn": {{}}, {whois}}}"#)).as_deref(), Some("ORG-1"));
        assert_eq!(owner(&format!("{{{whois}}}")).as_deref(), Some("ORG-1"));
        assert_eq!(owner(r#"{"whois": [{"org": "VR-ARIN"}, {"org": ""}]}"#), None);
        assert_eq!(owner("{}"), None);
    }

    #[test]
    fn whitelist_string_non_string_and_absent() {
        let validation = |value: &str| {
            let body = format!(r#"{{"id": "x", "whitelist": {value}}}"#);
            extract(&item(HOST), &parse_document(&body).unwrap()).whitelist
        };
        assert_eq!(validation(r#""Tranco top 10k""#).as_deref(), Some("Tranco top 10k"));
        assert_eq!(validation("true").as_deref(), Some("Whitelist"));
        assert_eq!(validation(r#"{"reason": "x"}"#).as_deref(), Some("Whitelist"));
        assert_eq!(validation("null"), None);
        assert_eq!(validation("false"), None);
        assert_eq!(extract(&item(HOST), &parse_document("{}").unwrap()).whitelist, None);
    }

    #[test]
    fn first_seen_is_the_earliest_valid_global_history_start_else_first_seen_at() {
        let first_seen = |body: &str| extract(&item(MD5), &parse_document(body).unwrap()).first_seen;
        let earliest_not_first = r#"{"history": {"first_seen_at": "2020-01-01T00:00:00", "global_history": [
            {"start_at": "2024-03-06T00:00:00"}, {"start_at": null}, {"start_at": "garbage"},
            {"start_at": "2023-11-30T22:15:09"}, {"start_at": "2024-01-01T00:00:00"}]}}"#;
        assert_eq!(first_seen(earliest_not_first), Some(datetime("2023-11-30 22:15:09")));
        let all_invalid = r#"{"history": {"first_seen_at": "2020-01-01T08:09:10", "global_history": [
            {"start_at": null}, {"start_at": "2024-02-30T00:00:00"}, {"end_at": "2024-01-01T00:00:00"}]}}"#;
        assert_eq!(first_seen(all_invalid), Some(datetime("2020-01-01 08:09:10")));
        assert_eq!(
            first_seen(r#"{"history": {"first_seen_at": "2020-01-01T08:09:10"}}"#),
            Some(datetime("2020-01-01 08:09:10"))
        );
        assert_eq!(first_seen(r#"{"history": {"first_seen_at": "never", "global_history": []}}"#), None);
        assert_eq!(first_seen("{}"), None);
    }

    #[test]
    fn passive_dns_answers_in_order_valid_and_unique() {
        let body = r#"{"passive_dns": [
            {"answer_ip": "198.51.100.2"}, {"answer_host": "edge.example.net"}, {"answer_ip": "1.2"},
            {"answer_ip": " 2001:DB8::5 "}, {"answer_ip": "198.51.100.1"}, {"answer_ip": "198.51.100.2"},
            {"answer_ip": "::ffff:198.51.100.1"}, {"answer_ip": "::ffff:198.51.100.3"}]}"#;
        let findings = extract(&item(HOST), &parse_document(body).unwrap());
        let expected: Vec<IpAddr> =
            // An IPv4-mapped IPv6 answer is its IPv4 address (the same one again is no new answer).
            ["198.51.100.2", "2001:db8::5", "198.51.100.1", "198.51.100.3"].iter().map(|ip| ip.parse().unwrap()).collect();
        assert_eq!(findings.passive_dns_ips, expected);
    }

    #[test]
    fn truncation_on_a_separator_without_a_trailing_separator() {
        // 1000 tokens of 9 characters: 9999 characters joined.
        let tokens: Vec<String> = (0..1000).map(|i| format!("tok{i:06}")).collect();
        let cell = join_truncated(&tokens, TOKEN_SEPARATOR, CELL_LIMIT);
        assert!(cell.chars().count() <= CELL_LIMIT);
        assert!(!cell.ends_with('^'));
        // 800 whole tokens take 7999 characters; the 801st would need 10 more.
        assert_eq!(cell.split('^').count(), 800);
        assert_eq!(cell, tokens[..800].join("^"));

        // Not truncated at or under the limit.
        let short = strings(&["a", "bb", "ccc"]);
        assert_eq!(join_truncated(&short, "^", 8), "a^bb^ccc");
        assert_eq!(join_truncated(&short, "^", 7), "a^bb");
        assert_eq!(join_truncated(&short, "^", 4), "a^bb");
        assert_eq!(join_truncated(&short, "^", 3), "a");
        assert_eq!(join_truncated(&[], "^", 10), "");
        // A token ending exactly at the limit is kept.
        assert_eq!(join_truncated(&strings(&["abcd", "ef"]), "^", 4), "abcd");
        // Multi-character separators and characters, not bytes.
        let wide = strings(&["ééé", "üüü", "ööö"]);
        assert_eq!(join_truncated(&wide, "   ", 9), "ééé   üüü");
        assert_eq!(join_truncated(&wide, "   ", 8), "ééé");
        // Tokens holding `^` (from `|`) may be cut at their inner `^`; empty pieces leave no trailing `^`.
        assert_eq!(join_truncated(&strings(&["a^b", "", "cdef"]), "^", 5), "a^b");
    }

    #[test]
    fn truncation_of_a_single_token_longer_than_the_limit_cuts_it_hard() {
        let long = vec!["x".repeat(CELL_LIMIT + 50), "y".into()];
        let cell = join_truncated(&long, TOKEN_SEPARATOR, CELL_LIMIT);
        assert_eq!(cell, "x".repeat(CELL_LIMIT));
        let wide = vec!["é".repeat(20)];
        assert_eq!(join_truncated(&wide, "^", 5), "ééééé");
        assert_eq!(join_truncated(&wide, "^", 0), "");
        // Nothing but separators: an empty cut.
        assert_eq!(join_truncated(&["^".repeat(30)], "^", 20), "");
    }
}

#[cfg(test)]
mod random_input_tests {
    //! Random documents and tokens: nothing panics, and every list keeps its invariants.

    use super::*;
    use crate::seclytics::model::parse_document;
    use serde_json::{Map, Value, json};

    const PIECES: &[&str] = &[
        "a",
        "Z",
        "0",
        "9",
        "f",
        "é",
        "|",
        "^",
        "@",
        ":",
        "!",
        " ",
        "\t",
        "\n",
        "\r",
        "\u{2028}",
        ".",
        "/",
        "_at",
        "duration",
        "http://",
        "HTTPS://",
        "otx.alienvault.com",
        "example.co.uk",
        "198.51.100.7",
        "2001:db8::1",
        "6f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "[",
        "]",
        "co",
        "com",
        "-",
        "%",
        "\u{feff}",
        "xn--p1ai",
    ];
    const KEYS: &[&str] = &[
        "context",
        "history",
        "global_history",
        "start_at",
        "first_seen_at",
        "asn",
        "description",
        "number",
        "whois",
        "org",
        "whitelist",
        "passive_dns",
        "answer_ip",
        "accessed_by_files",
        "file_connections",
        "connections",
        "type",
        "id",
        "file",
        "error",
        "reasons",
        "feed",
    ];

    fn random_text(rng: &mut fastrand::Rng) -> String {
        (0..rng.usize(0..8)).map(|_| PIECES[rng.usize(..PIECES.len())]).collect()
    }

    fn random_value(rng: &mut fastrand::Rng, depth: usize) -> Value {
        match rng.usize(0..if depth == 0 { 5 } else { 8 }) {
            0 => Value::Null,
            1 => json!(rng.bool()),
            2 => json!(rng.i64(-5..100_000)),
            3 | 4 => Value::String(random_text(rng)),
            5 => Value::Array((0..rng.usize(0..5)).map(|_| random_value(rng, depth - 1)).collect()),
            _ => {
                let mut map = Map::new();
                for _ in 0..rng.usize(0..6) {
                    let key =
                        if rng.bool() { KEYS[rng.usize(..KEYS.len())].to_string() } else { random_text(rng) };
                    map.insert(key, random_value(rng, depth - 1));
                }
                Value::Object(map)
            }
        }
    }

    /// A document-shaped object: the known blocks, mostly with their documented shapes, holding random values.
    fn random_document(rng: &mut fastrand::Rng, depth: usize) -> Value {
        let mut doc = Map::new();
        let mut context = Map::new();
        for _ in 0..rng.usize(0..4) {
            let mut feeds = Map::new();
            for _ in 0..rng.usize(0..3) {
                let values: Vec<Value> = (0..rng.usize(0..6))
                    .map(|_| {
                        if rng.usize(0..6) == 0 {
                            random_value(rng, 1)
                        } else {
                            Value::String(random_text(rng))
                        }
                    })
                    .collect();
                feeds.insert(random_text(rng), Value::Array(values));
            }
            context.insert(random_text(rng), Value::Object(feeds));
        }
        doc.insert("context".into(), Value::Object(context));
        let period = |rng: &mut fastrand::Rng| {
            let start = ["2024-03-06T00:00:00", "bad", ""][rng.usize(0..3)];
            json!({ "start_at": start })
        };
        let blocks = [
            (
                "history",
                json!({"first_seen_at": random_text(rng), "global_history": [period(rng), period(rng)]}),
            ),
            ("asn", json!({"description": random_value(rng, 0), "number": random_value(rng, 0)})),
            ("whois", json!([{"org": random_text(rng)}, {"org": "VR-ARIN"}, random_value(rng, 1)])),
            ("whitelist", random_value(rng, 1)),
            ("passive_dns", json!([{"answer_ip": random_text(rng)}, {"answer_ip": "198.51.100.7"}])),
            (
                "accessed_by_files",
                json!([random_text(rng), "6F1E2D3C4B5A69788796A5B4C3D2E1F0", random_value(rng, 0)]),
            ),
        ];
        for (key, block) in blocks {
            match rng.usize(0..10) {
                0..=5 => doc.insert(key.into(), block),
                6 => doc.insert(key.into(), random_value(rng, 2)),
                _ => None,
            };
        }
        if depth > 0 {
            for key in ["file_connections", "connections"] {
                let entries: Vec<Value> = (0..rng.usize(0..3))
                    .map(|_| {
                        let mut entry = random_document(rng, depth - 1);
                        if let Value::Object(fields) = &mut entry {
                            let doc_type = ["file", "ip", "FILE"][rng.usize(0..3)];
                            fields.insert("type".into(), json!(doc_type));
                        }
                        entry
                    })
                    .collect();
                doc.insert(key.into(), Value::Array(entries));
            }
        }
        Value::Object(doc)
    }

    fn assert_unique<T: std::fmt::Debug + Eq + std::hash::Hash>(list: &[T]) {
        let set: HashSet<&T> = list.iter().collect();
        assert_eq!(set.len(), list.len(), "duplicates in {list:?}");
    }

    #[test]
    fn random_documents_never_panic_and_keep_list_invariants() {
        let mut rng = fastrand::Rng::with_seed(0x05ec_17c5);
        let items = [
            Indicator::classify("203.0.113.45").unwrap(),
            Indicator::classify("cdn-update.example.co.uk").unwrap(),
            Indicator::classify("6f1e2d3c4b5a69788796a5b4c3d2e1f0").unwrap(),
        ];
        let mut parsed = 0;
        for round in 0..3000 {
            let value = if round % 5 == 0 { random_value(&mut rng, 6) } else { random_document(&mut rng, 2) };
            let mut body = value.to_string();
            if round % 7 == 0 && !body.is_empty() {
                let mut cut = rng.usize(0..body.len());
                while !body.is_char_boundary(cut) {
                    cut -= 1;
                }
                body.truncate(cut);
            }
            let Ok(doc) = parse_document(&body) else { continue };
            parsed += 1;
            for item in &items {
                let findings = extract(item, &doc);
                for list in [
                    &findings.reputation,
                    &findings.file_metadata,
                    &findings.related_ips,
                    &findings.related_domains,
                    &findings.hashes,
                    &findings.urls,
                    &findings.reference_urls,
                    &findings.detection_candidates,
                ] {
                    assert_unique(list);
                    assert!(list.iter().all(|token| !token.contains('|')), "{list:?}");
                }
                assert_unique(&findings.passive_dns_ips);
                for token in findings.reputation.iter().chain(&findings.file_metadata) {
                    assert!((4..=31).contains(&token.chars().count()), "{token:?}");
                    assert!(!token.chars().any(char::is_whitespace), "{token:?}");
                }
                assert!(
                    findings
                        .hashes
                        .iter()
                        .all(|h| is_hash(h) && *h == h.to_ascii_lowercase() && *h != item.value)
                );
                assert!(findings.related_ips.iter().all(|ip| ip.parse::<IpAddr>().is_ok()));
                if item.kind == IndicatorKind::Ip {
                    assert!(findings.related_ips.is_empty());
                }
                let cell = join_truncated(&findings.detection_candidates, TOKEN_SEPARATOR, 20);
                assert!(cell.chars().count() <= 20, "{cell:?}");
                if cell != findings.detection_candidates.join(TOKEN_SEPARATOR) {
                    assert!(!cell.ends_with('^'), "{cell:?}");
                }
            }
        }
        assert!(
            parsed > 1500,
            "only {parsed} random bodies parsed: the generator is too hostile to test much"
        );
    }

    #[test]
    fn random_tokens_never_panic() {
        let mut rng = fastrand::Rng::with_seed(42);
        let host = Indicator::classify("example.com").unwrap();
        for _ in 0..20_000 {
            let token = random_text(&mut rng);
            let class = classify_token(&token, &host);
            if let TokenClass::Keyword { token: keyword, domain } = class {
                assert!((4..=31).contains(&keyword.chars().count()));
                if let Some(domain) = domain {
                    assert!(is_host_name(&domain) && domain == domain.to_ascii_lowercase());
                }
            }
            let tokens: Vec<String> = (0..rng.usize(0..6)).map(|_| random_text(&mut rng)).collect();
            let limit = rng.usize(0..30);
            let sep = ["^", "   ", "é"][rng.usize(0..3)];
            let cell = join_truncated(&tokens, sep, limit);
            assert!(cell.chars().count() <= limit, "{tokens:?} {limit} -> {cell:?}");
            let joined = tokens.join(sep);
            if cell != joined {
                assert!(!cell.ends_with(sep), "{tokens:?} {limit} -> {cell:?}");
                assert!(joined.starts_with(&cell), "{tokens:?} {limit} -> {cell:?}");
            }
        }
    }
}
