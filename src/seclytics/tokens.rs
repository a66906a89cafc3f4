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
//!   are stored in canonical form (`2001:DB8::1` → `2001:db8::1`).
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
//!   would rather see the start of a long value than an empty cell).

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
    let token = raw.replace('|', "^");
    // Rule 1
    if let Ok(ip) = token.parse::<IpAddr>() {
        return if item.kind == IndicatorKind::Ip {
            TokenClass::Ignored(IgnoredBecause::IpOfIpItem)
        } else {
            TokenClass::RelatedIp(ip)
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
        return TokenClass::Url { url: token, reference };
    }
    // Rule 5
    if token.chars().any(is_line_break) {
        return TokenClass::Ignored(IgnoredBecause::LineBreak);
    }
    let has_whitespace = token.chars().any(char::is_whitespace);
    // Rule 6
    if (token.contains(':') || token.contains('!')) && !has_whitespace {
        return TokenClass::DetectionName(token);
    }
    // Rule 7
    if has_whitespace {
        return TokenClass::Ignored(IgnoredBecause::Prose);
    }
    // Rule 8
    let length = token.chars().count();
    if (4..=31).contains(&length) && !token.ends_with("_at") && token != "duration" {
        let domain = real_domain_name(&token);
        return TokenClass::Keyword { token, domain };
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

/// A list that keeps only the first appearance of each value, in order.
struct FirstSeen<T> {
    items: Vec<T>,
    seen: HashSet<T>,
}

impl<T> Default for FirstSeen<T> {
    fn default() -> Self {
        FirstSeen { items: Vec::new(), seen: HashSet::new() }
    }
}

impl<T: Clone + Eq + std::hash::Hash> FirstSeen<T> {
    fn push(&mut self, value: T) {
        if self.seen.insert(value.clone()) {
            self.items.push(value);
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
        let embedded_files = doc.file_connections.iter().chain(doc.connections.iter().filter(|c| c.is_file()));
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
            passive_dns_ips.push(ip);
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
    if joined.chars().count() <= limit {
        return joined;
    }
    // The first `limit + len(sep)` characters: a separator found entirely inside them starts at or before
    // character `limit`, so the text before it fits.
    let window_chars = limit + sep.chars().count();
    let window_end = joined.char_indices().nth(window_chars).map_or(joined.len(), |(offset, _)| offset);
    let window = &joined[..window_end];
    let mut cut = match window.rfind(sep).filter(|_| !sep.is_empty()) {
        Some(position) => &window[..position],
        None => "",
    };
    while !sep.is_empty()
        && let Some(shorter) = cut.strip_suffix(sep)
    {
        cut = shorter;
    }
    if cut.is_empty() {
        let hard_end = joined.char_indices().nth(limit).map_or(joined.len(), |(offset, _)| offset);
        return joined[..hard_end].to_string();
    }
    cut.to_string()
}
