//! Serde models of the `/ips/`, `/hosts/` and `/files/` documents (reference `seclytics-api.md` §3–§4), and
//! [`parse_document`], the one gate every response body passes before anything reads it.
//!
//! Only the fields the program uses are typed; every other key is ignored. Every block is optional, because
//! missing blocks are normal (an unknown hash comes back as `{hash, hash_type, id, type}`).
//!
//! Decisions (where SPEC and the reference are silent):
//!
//! * **Envelope.** A body that is not JSON (or nests deeper than serde_json's recursion limit of 128, which we
//!   keep so a hostile body cannot overflow the stack) is [`DocumentError::NotJson`]. A JSON value that is not
//!   an object is [`DocumentError::WrongShape`]. An object with a non-null `error` key is
//!   [`DocumentError::ApiError`] carrying `error.message` (or the error text), cut to 300 characters. A leading
//!   UTF-8 byte-order mark is skipped. An empty object `{}` is a valid document with nothing to say.
//! * **Blocks strict, values lenient.** A top-level block we read (`context`, `history`, `asn`, `whois`,
//!   `passive_dns`, `accessed_by_files`, `file_connections`, `connections`) must be `null`/absent or have its
//!   documented container type (object or list); otherwise the body is [`DocumentError::WrongShape`] naming
//!   the block. Such a body is not the documented document, and writing half of it would fill cells with
//!   wrong values for good (e.g. File Count `0`), while a failed lookup leaves them empty for a later run.
//!   Inside a block, a value of the wrong type is skipped: a non-string context value, a non-object
//!   `passive_dns`/`whois`/`global_history`/`connections`/`file_connections` entry, an unparseable date.
//!   `id`, `type`, `asn.description`, `whois[].org` and `answer_ip` that are not strings are absent. Embedded
//!   documents (`connections[]`, `file_connections[]`) are someone else's facts: they get no block check, a
//!   block of the wrong type inside one reads as empty, and the item's own document still counts.
//! * **`asn.number`** may be a string or a non-negative integer; a leading `AS` (any case) is removed and it
//!   must then be all digits, otherwise it is absent.
//! * **`whitelist`**: absent, `null` or `false` mean *not allow-listed* (an analyst reads `null`/`false` as
//!   "no"); a non-blank string is the reason (trimmed); anything else (`true`, a number, an object, a list, an
//!   empty string) means allow-listed without a reason ([`Whitelist::Listed`], written as `Whitelist`).
//! * **`context`** keeps the order received, of kinds, feeds and values (serde_json's `preserve_order`
//!   feature is on for this). A kind whose value is a list instead of a feed object is read as one feed with
//!   an empty name; a feed whose value is a single string is read as a one-element list. Other shapes of a
//!   kind or feed are skipped.
//! * **Timestamps** (`start_at`, `first_seen_at`): the API's `YYYY-MM-DDTHH:MM:SS` (treated as UTC), also with
//!   a space instead of `T`, fractional seconds (dropped), or an RFC 3339 zone (converted to UTC); a bare
//!   `YYYY-MM-DD` is midnight. Anything else (numbers, garbage, `null`) is absent.

use chrono::{NaiveDate, NaiveDateTime, Timelike};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The longest API error message kept in a [`DocumentError::ApiError`], in characters.
const MAX_ERROR_MESSAGE_CHARS: usize = 300;

/// A body that is not a SecLytics document.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DocumentError {
    #[error("response is not JSON: {0}")]
    NotJson(String),
    #[error("response is not a SecLytics document: {0}")]
    WrongShape(String),
    #[error("API error in a 200 response: {0}")]
    ApiError(String),
}

/// One parsed `/ips/`, `/hosts/` or `/files/` document, or a document embedded in one (`file_connections[]`,
/// `connections[]` entries).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Document {
    /// `id`: the queried IP, host or hash.
    #[serde(deserialize_with = "lenient::string")]
    pub id: Option<String>,
    /// `type`: `ip`, `host`, `domain`, `file`, ….
    #[serde(rename = "type", deserialize_with = "lenient::string")]
    pub doc_type: Option<String>,
    /// `context`: kind → feed → values, in the order received. Empty when absent.
    pub context: Context,
    /// `history`.
    #[serde(deserialize_with = "lenient::object")]
    pub history: Option<History>,
    /// `asn`.
    #[serde(deserialize_with = "lenient::object")]
    pub asn: Option<Asn>,
    /// `whois[]` (entries that are not objects are skipped).
    #[serde(deserialize_with = "lenient::objects")]
    pub whois: Vec<WhoisEntry>,
    /// `whitelist`: `None` when not allow-listed.
    #[serde(deserialize_with = "lenient::whitelist")]
    pub whitelist: Option<Whitelist>,
    /// `passive_dns[]` in the order received (entries that are not objects are skipped).
    #[serde(deserialize_with = "lenient::objects")]
    pub passive_dns: Vec<PassiveDnsEntry>,
    /// `accessed_by_files[]`: `None` when absent; each entry `Some(text)` when it is a string, `None` otherwise
    /// (kept so the count is the true list length).
    #[serde(deserialize_with = "lenient::optional_strings")]
    pub accessed_by_files: Option<Vec<Option<String>>>,
    /// `file_connections[]`: embedded file documents (entries that do not parse are skipped).
    #[serde(deserialize_with = "lenient::objects")]
    pub file_connections: Vec<Document>,
    /// `connections[]`: `{id, type, whitelist?, context?}` entries (entries that do not parse are skipped).
    #[serde(deserialize_with = "lenient::objects")]
    pub connections: Vec<Document>,
}

impl Document {
    /// Whether `type` says this is a file document (case-insensitive).
    pub fn is_file(&self) -> bool {
        self.doc_type.as_deref().is_some_and(|t| t.trim().eq_ignore_ascii_case("file"))
    }
}

/// `context`: kinds of fact, each with its feeds, each feed with its string values, all in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub kinds: Vec<ContextKind>,
}

/// One `context.<kind>` object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextKind {
    pub name: String,
    pub feeds: Vec<ContextFeed>,
}

/// One `context.<kind>.<feed>` list (non-string values skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextFeed {
    pub name: String,
    pub values: Vec<String>,
}

impl Context {
    /// Every string of `context.<kind>.<feed>[]`, in the order received.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.kinds
            .iter()
            .flat_map(|kind| kind.feeds.iter())
            .flat_map(|feed| feed.values.iter().map(String::as_str))
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.iter().all(|kind| kind.feeds.iter().all(|feed| feed.values.is_empty()))
    }

    fn from_value(value: Value) -> Context {
        let Value::Object(kinds) = value else {
            return Context::default();
        };
        let kinds = kinds
            .into_iter()
            .filter_map(|(name, feeds)| {
                let feeds = match feeds {
                    Value::Object(feeds) => feeds
                        .into_iter()
                        .filter_map(|(name, values)| Some(ContextFeed { name, values: feed_values(values)? }))
                        .collect(),
                    list @ Value::Array(_) => {
                        vec![ContextFeed { name: String::new(), values: feed_values(list)? }]
                    }
                    _ => return None,
                };
                Some(ContextKind { name, feeds })
            })
            .collect();
        Context { kinds }
    }
}

/// The strings of one feed: a list (non-strings skipped) or a single string; `None` for any other shape.
fn feed_values(value: Value) -> Option<Vec<String>> {
    match value {
        Value::Array(items) => Some(
            items
                .into_iter()
                .filter_map(|item| match item {
                    Value::String(text) => Some(text),
                    _ => None,
                })
                .collect(),
        ),
        Value::String(text) => Some(vec![text]),
        _ => None,
    }
}

impl<'de> Deserialize<'de> for Context {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Context::from_value(Value::deserialize(deserializer)?))
    }
}

/// `history`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct History {
    #[serde(deserialize_with = "lenient::timestamp")]
    pub first_seen_at: Option<NaiveDateTime>,
    #[serde(deserialize_with = "lenient::timestamp")]
    pub last_seen_at: Option<NaiveDateTime>,
    /// `global_history[]` (entries that are not objects are skipped).
    #[serde(deserialize_with = "lenient::objects")]
    pub global_history: Vec<Period>,
}

/// One `{duration, end_at, start_at}` period.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Period {
    #[serde(deserialize_with = "lenient::timestamp")]
    pub start_at: Option<NaiveDateTime>,
    #[serde(deserialize_with = "lenient::timestamp")]
    pub end_at: Option<NaiveDateTime>,
}

/// `asn`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Asn {
    #[serde(deserialize_with = "lenient::string")]
    pub description: Option<String>,
    /// The AS number as digits (from a string, `AS` prefix removed, or an integer).
    #[serde(deserialize_with = "lenient::asn_number")]
    pub number: Option<String>,
}

/// One `whois[]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WhoisEntry {
    #[serde(deserialize_with = "lenient::string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub org: Option<String>,
}

/// One `passive_dns[]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PassiveDnsEntry {
    #[serde(deserialize_with = "lenient::string")]
    pub answer_ip: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub answer_host: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub answer_type: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub hostname: Option<String>,
}

/// An allow-listed indicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whitelist {
    /// `whitelist` was a non-blank string: the reason, trimmed.
    Reason(String),
    /// `whitelist` was present but not a string (or blank): allow-listed without a reason.
    Listed,
}

impl Whitelist {
    /// The `Validation` cell text: the reason, or the literal `Whitelist`.
    pub fn validation_text(&self) -> &str {
        match self {
            Whitelist::Reason(reason) => reason,
            Whitelist::Listed => "Whitelist",
        }
    }
}

/// The top-level blocks we read, with the container type each must have when present and not `null`.
const BLOCK_SHAPES: &[(&str, Container)] = &[
    ("context", Container::Object),
    ("history", Container::Object),
    ("asn", Container::Object),
    ("whois", Container::List),
    ("passive_dns", Container::List),
    ("accessed_by_files", Container::List),
    ("file_connections", Container::List),
    ("connections", Container::List),
];

#[derive(Debug, Clone, Copy)]
enum Container {
    Object,
    List,
}

impl Container {
    fn matches(self, value: &Value) -> bool {
        match self {
            Container::Object => value.is_object(),
            Container::List => value.is_array(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Container::Object => "an object",
            Container::List => "a list",
        }
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Parses a response body. Never panics: anything that is not a document object is a [`DocumentError`].
pub fn parse_document(body: &str) -> Result<Document, DocumentError> {
    let body = body.strip_prefix('\u{feff}').unwrap_or(body);
    let value: Value = serde_json::from_str(body).map_err(|e| DocumentError::NotJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(DocumentError::WrongShape(format!(
            "{} instead of a JSON object",
            json_type_name(&value)
        )));
    };
    if let Some(error) = object.get("error").filter(|error| !error.is_null()) {
        return Err(DocumentError::ApiError(error_message(error)));
    }
    for (key, container) in BLOCK_SHAPES {
        if let Some(block) = object.get(*key).filter(|block| !block.is_null())
            && !container.matches(block)
        {
            return Err(DocumentError::WrongShape(format!(
                "`{key}` is {} instead of {}",
                json_type_name(block),
                container.name()
            )));
        }
    }
    Document::deserialize(Value::Object(object)).map_err(|e| DocumentError::WrongShape(e.to_string()))
}

/// The text of an `error` value: `error.message`, or the string itself, or the compact JSON; cut to
/// [`MAX_ERROR_MESSAGE_CHARS`].
fn error_message(error: &Value) -> String {
    let text = match error {
        Value::String(text) => text.clone(),
        Value::Object(fields) => match fields.get("message") {
            Some(Value::String(message)) => message.clone(),
            _ => error.to_string(),
        },
        other => other.to_string(),
    };
    if text.chars().count() > MAX_ERROR_MESSAGE_CHARS {
        let mut cut: String = text.chars().take(MAX_ERROR_MESSAGE_CHARS).collect();
        cut.push('…');
        cut
    } else {
        text
    }
}

/// Parses an API timestamp (see the module comment for the accepted forms) into a UTC date-time without
/// fractional seconds.
pub fn parse_timestamp(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let parsed = chrono::DateTime::parse_from_rfc3339(text)
        .map(|zoned| zoned.naive_utc())
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok())
        .or_else(|| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok())
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|date| date.and_hms_opt(0, 0, 0))
        })?;
    parsed.with_nanosecond(0)
}

/// Deserialisers that never fail on a value of the wrong type: they read it as absent instead.
mod lenient {
    use super::{Whitelist, parse_timestamp};
    use chrono::NaiveDateTime;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(text) => Some(text),
            _ => None,
        })
    }

    /// An object block; any other value is absent.
    pub fn object<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
        Ok(match Value::deserialize(d)? {
            object @ Value::Object(_) => T::deserialize(object).ok(),
            _ => None,
        })
    }

    /// A list of objects: entries that are not objects, or do not deserialise, are skipped; a value that is
    /// not a list is empty.
    pub fn objects<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Array(items) => items
                .into_iter()
                .filter(Value::is_object)
                .filter_map(|item| T::deserialize(item).ok())
                .collect(),
            _ => Vec::new(),
        })
    }

    /// A list kept at its full length, each entry its text when it is a string; `None` when not a list.
    pub fn optional_strings<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<Option<String>>>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Array(items) => Some(
                items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(text) => Some(text),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        })
    }

    pub fn asn_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Number(number) => number.as_u64().map(|n| n.to_string()),
            Value::String(text) => {
                let text = text.trim();
                let digits = match text.get(..2) {
                    Some(prefix) if prefix.eq_ignore_ascii_case("as") => text[2..].trim_start(),
                    _ => text,
                };
                (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.to_string())
            }
            _ => None,
        })
    }

    pub fn whitelist<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Whitelist>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null | Value::Bool(false) => None,
            Value::String(text) if !text.trim().is_empty() => {
                Some(Whitelist::Reason(text.trim().to_string()))
            }
            _ => Some(Whitelist::Listed),
        })
    }

    pub fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDateTime>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(text) => parse_timestamp(&text),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/seclytics/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn datetime(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn reference_ip_document_parses_with_every_used_field() {
        let doc = parse_document(&fixture("ip_flagged.json")).unwrap();
        assert_eq!(doc.id.as_deref(), Some("203.0.113.45"));
        assert_eq!(doc.doc_type.as_deref(), Some("ip"));
        let kinds: Vec<&str> = doc.context.kinds.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(kinds, ["categories", "identifiers", "reasons", "source_urls"]);
        let feeds: Vec<&str> = doc.context.kinds[0].feeds.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(feeds, ["dshield_daily_sources", "hybrid_analysis"]);
        assert_eq!(doc.context.values().count(), 6);
        let asn = doc.asn.as_ref().unwrap();
        assert_eq!(asn.description.as_deref(), Some("EXAMPLE-HOSTING-AS"));
        assert_eq!(asn.number.as_deref(), Some("64500"));
        assert_eq!(doc.whois.len(), 1);
        assert_eq!(doc.whois[0].org.as_deref(), Some("ORG-EHA1-RIPE"));
        assert_eq!(doc.whitelist, None);
        assert_eq!(doc.accessed_by_files.as_ref().map(Vec::len), Some(2));
        let history = doc.history.as_ref().unwrap();
        assert_eq!(history.first_seen_at, Some(datetime("2024-02-10 00:00:00")));
        assert_eq!(history.last_seen_at, Some(datetime("2024-03-09 00:00:00")));
        assert_eq!(history.global_history.len(), 2);
        assert_eq!(history.global_history[1].start_at, Some(datetime("2024-03-02 00:00:00")));
        assert_eq!(doc.passive_dns.len(), 1);
        assert_eq!(doc.passive_dns[0].answer_ip.as_deref(), Some("203.0.113.45"));
    }

    #[test]
    fn reference_host_file_and_allowlisted_documents_parse() {
        let host = parse_document(&fixture("host.json")).unwrap();
        assert_eq!(host.connections.len(), 2);
        assert!(!host.connections[0].is_file());
        assert!(host.connections[1].is_file());
        assert_eq!(host.passive_dns.len(), 2);
        assert_eq!(host.passive_dns[1].answer_ip, None);
        assert_eq!(host.passive_dns[1].answer_host.as_deref(), Some("edge.example-cdn.net"));

        let file = parse_document(&fixture("file_md5.json")).unwrap();
        assert_eq!(file.doc_type.as_deref(), Some("file"));
        assert!(file.is_file());
        assert_eq!(file.context.kinds.len(), 9);

        let unknown = parse_document(&fixture("file_unknown.json")).unwrap();
        assert!(unknown.context.is_empty());
        assert!(unknown.history.is_none() && unknown.accessed_by_files.is_none());

        let allowlisted = parse_document(&fixture("ip_allowlisted.json")).unwrap();
        assert_eq!(allowlisted.whitelist, Some(Whitelist::Reason("Public recursive DNS resolver".into())));
    }

    #[test]
    fn api_error_objects_are_errors_with_their_message() {
        for (body, message) in [
            (r#"{"error": {"message": "Invalid access token."}}"#, "Invalid access token."),
            (r#"{"error": "quota"}"#, "quota"),
            (r#"{"error": {"code": 7}}"#, r#"{"code":7}"#),
            (r#"{"error": 401, "id": "x"}"#, "401"),
        ] {
            match parse_document(body) {
                Err(DocumentError::ApiError(text)) => assert_eq!(text, message, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let long = format!(r#"{{"error": {{"message": "{}"}}}}"#, "x".repeat(5000));
        match parse_document(&long) {
            Err(DocumentError::ApiError(text)) => {
                assert_eq!(text.chars().count(), MAX_ERROR_MESSAGE_CHARS + 1)
            }
            other => panic!("{other:?}"),
        }
        // `"error": null` is not an error
        let doc = parse_document(r#"{"error": null, "id": "198.51.100.1", "type": "ip"}"#).unwrap();
        assert_eq!(doc.id.as_deref(), Some("198.51.100.1"));
    }

    #[test]
    fn bodies_that_are_not_json_are_not_json_errors() {
        for body in
            ["", "   ", "<html><body>502 Bad Gateway</body></html>", "{", r#"{"id": "x""#, "{'id': 1}", "nul"]
        {
            assert!(matches!(parse_document(body), Err(DocumentError::NotJson(_))), "{body:?}");
        }
    }

    #[test]
    fn json_that_is_not_an_object_is_the_wrong_shape() {
        for body in ["[]", r#"[{"id": "x"}]"#, "42", r#""text""#, "null", "true"] {
            assert!(matches!(parse_document(body), Err(DocumentError::WrongShape(_))), "{body:?}");
        }
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
        let depth = 200_000;
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(matches!(parse_document(&arrays), Err(DocumentError::NotJson(_))));
        for key in ["unknown_key", "context", "whitelist", "connections"] {
            let nested = format!(r#"{{"{key}": {}{}}}"#, "[".repeat(depth), "]".repeat(depth));
            assert!(parse_document(&nested).is_err(), "{key}");
            let objects = format!(r#"{{"{key}": {}1{}}}"#, r#"{"a":"#.repeat(depth), "}".repeat(depth));
            assert!(parse_document(&objects).is_err(), "{key}");
        }
        // Moderate nesting inside an ignored key is fine.
        let shallow = format!(r#"{{"extra": {}{}, "id": "x"}}"#, "[".repeat(50), "]".repeat(50));
        assert_eq!(parse_document(&shallow).unwrap().id.as_deref(), Some("x"));
    }

    #[test]
    fn blocks_of_the_wrong_container_type_are_the_wrong_shape() {
        for (key, value) in [
            ("context", r#""malware""#),
            ("context", r#"["malware"]"#),
            ("history", "[]"),
            ("asn", r#""AS64500""#),
            ("whois", r#"{"org": "X"}"#),
            ("passive_dns", r#"{"answer_ip": "203.0.113.1"}"#),
            ("accessed_by_files", "3"),
            ("file_connections", "{}"),
            ("connections", r#""none""#),
        ] {
            let body = format!(r#"{{"id": "x", "{key}": {value}}}"#);
            match parse_document(&body) {
                Err(DocumentError::WrongShape(text)) => assert!(text.contains(key), "{text}"),
                other => panic!("{body}: {other:?}"),
            }
            // null is the same as absent
            let null = format!(r#"{{"id": "x", "{key}": null}}"#);
            assert!(parse_document(&null).is_ok(), "{null}");
        }
    }

    #[test]
    fn loosely_typed_values_inside_blocks_are_tolerated() {
        let body = r#"{
            "id": 17, "type": ["ip"],
            "context": {
                "reasons": {"feed_a": ["one", 2, null, {"x": 1}, ["nested"], true, "three"], "feed_b": "single",
                            "feed_c": 5, "feed_d": {"k": "v"}},
                "plain_list": ["listed"],
                "broken": "string kind",
                "numbers": 12
            },
            "asn": {"description": 5, "number": 64500},
            "whois": ["org", {"org": 3}, {"org": "REAL-ORG"}],
            "passive_dns": [7, {"answer_ip": 5}, {"answer_ip": "203.0.113.9"}],
            "accessed_by_files": ["a", 1, null],
            "history": {"first_seen_at": 1710000000, "global_history": [null, "x", {"start_at": "garbage"},
                        {"start_at": "2024-01-02T03:04:05"}]},
            "connections": [1, {"type": "file", "context": "broken"}, {"type": "file", "context": {"k": {"f": ["ok1"]}}}]
        }"#;
        let doc = parse_document(body).unwrap();
        assert_eq!(doc.id, None);
        assert_eq!(doc.doc_type, None);
        let values: Vec<&str> = doc.context.values().collect();
        assert_eq!(values, ["one", "three", "single", "listed"]);
        assert_eq!(doc.context.kinds[1].feeds[0].name, "");
        let asn = doc.asn.unwrap();
        assert_eq!((asn.description, asn.number.as_deref()), (None, Some("64500")));
        assert_eq!(doc.whois.len(), 2);
        assert_eq!(doc.passive_dns.len(), 2);
        assert_eq!(doc.accessed_by_files, Some(vec![Some("a".to_string()), None, None]));
        let history = doc.history.unwrap();
        assert_eq!(history.first_seen_at, None);
        let starts: Vec<Option<NaiveDateTime>> = history.global_history.iter().map(|p| p.start_at).collect();
        assert_eq!(starts, [None, Some(datetime("2024-01-02 03:04:05"))]);
        // An embedded document is parsed leniently too: its string context reads as empty.
        assert_eq!(doc.connections.len(), 2);
        assert!(doc.connections[0].context.is_empty());
        assert_eq!(doc.connections[1].context.values().collect::<Vec<_>>(), ["ok1"]);
    }

    #[test]
    fn context_keeps_the_order_received_not_alphabetical() {
        let body = r#"{"context": {"zeta": {"z_feed": ["z1", "z2"], "a_feed": ["a1"]},
                                   "alpha": {"m_feed": ["m1"]}}}"#;
        let doc = parse_document(body).unwrap();
        assert_eq!(doc.context.values().collect::<Vec<_>>(), ["z1", "z2", "a1", "m1"]);
        assert_eq!(doc.context.kinds[0].name, "zeta");
        assert_eq!(doc.context.kinds[0].feeds[1].name, "a_feed");
    }

    #[test]
    fn asn_numbers_and_whitelist_values() {
        let number = |value: &str| {
            let doc = parse_document(&format!(r#"{{"asn": {{"number": {value}}}}}"#)).unwrap();
            doc.asn.and_then(|asn| asn.number)
        };
        assert_eq!(number(r#""64500""#).as_deref(), Some("64500"));
        assert_eq!(number(r#"" AS64501 ""#).as_deref(), Some("64501"));
        assert_eq!(number(r#""as 64502""#).as_deref(), Some("64502"));
        assert_eq!(number("64503").as_deref(), Some("64503"));
        for absent in [r#""""#, r#""unknown""#, "-1", "1.5", "null", "[]", r#""AS""#] {
            assert_eq!(number(absent), None, "{absent}");
        }

        let whitelist =
            |value: &str| parse_document(&format!(r#"{{"whitelist": {value}}}"#)).unwrap().whitelist;
        assert_eq!(whitelist(r#"" Tranco top 10k ""#), Some(Whitelist::Reason("Tranco top 10k".into())));
        for listed in ["true", "1", "{}", r#"{"reason": "x"}"#, "[]", r#""""#, r#""   ""#] {
            assert_eq!(whitelist(listed), Some(Whitelist::Listed), "{listed}");
        }
        for not_listed in ["null", "false"] {
            assert_eq!(whitelist(not_listed), None, "{not_listed}");
        }
        assert_eq!(parse_document("{}").unwrap().whitelist, None);
        assert_eq!(Whitelist::Listed.validation_text(), "Whitelist");
        assert_eq!(Whitelist::Reason("why".into()).validation_text(), "why");
    }

    #[test]
    fn timestamps_in_the_accepted_forms() {
        assert_eq!(parse_timestamp("2019-11-13T02:43:18"), Some(datetime("2019-11-13 02:43:18")));
        assert_eq!(parse_timestamp(" 2019-11-13 02:43:18 "), Some(datetime("2019-11-13 02:43:18")));
        assert_eq!(parse_timestamp("2019-11-13T02:43:18.123456"), Some(datetime("2019-11-13 02:43:18")));
        assert_eq!(parse_timestamp("2019-11-13T02:43:18Z"), Some(datetime("2019-11-13 02:43:18")));
        assert_eq!(parse_timestamp("2019-11-13T02:43:18+02:00"), Some(datetime("2019-11-13 00:43:18")));
        assert_eq!(parse_timestamp("2019-11-13"), Some(datetime("2019-11-13 00:00:00")));
        for bad in ["", "garbage", "2019-13-01T00:00:00", "2019-02-30T00:00:00", "13/11/2019", "1573612998"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn byte_order_mark_and_unknown_keys_are_accepted() {
        let doc =
            parse_document("\u{feff}{\"id\": \"x\", \"dga\": {\"is_dga\": false}, \"new_block\": [1, 2]}")
                .unwrap();
        assert_eq!(doc.id.as_deref(), Some("x"));
        assert!(parse_document("{}").is_ok());
    }
}
