//! Serde models of the `/ips/`, `/hosts/` and `/files/` documents (reference `seclytics-api.md` §3–§4), and
//! [`parse_document`], the one gate every response body passes before anything reads it.
//!
//! Only the fields the program uses are typed; every other key is ignored. Every block is optional, because
//! missing blocks are normal (an unknown hash comes back as `{hash, hash_type, id, type}`).
//!
//! Decisions (where SPEC and the reference are silent):
//!
//! * **One reading, two ways.** A plain body is streamed straight into the typed model (no `serde_json::Value`
//!   tree first, which was most of the cost of a parse); anything unusual — invalid JSON, an envelope or
//!   block problem, a key given twice — is read again the reference way (whole `Value`, then the checks and
//!   the lenient model below), which alone decides errors and duplicate keys (the last value wins). Both give
//!   the same result wherever the fast one answers (tests compare them, also on randomly mutated bodies).
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
//!   `YYYY-MM-DD` is midnight. Anything else (numbers, garbage, `null`) is absent, and so is a year outside
//!   [`TIMESTAMP_YEARS`]: chrono reads a signed or five-digit year (`-0001-…`, `+20000-…`), which would write a
//!   CSV cell starting with `-` or `+` (a formula to Excel), and a spreadsheet cannot show a date before 1900.

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
    match direct::parse(body) {
        Some(document) => Ok(document),
        None => parse_document_via_value(body),
    }
}

/// The reference reading of a body (BOM already removed): the whole body as a `serde_json::Value` first, then
/// the envelope and block checks, then the lenient typed model. [`direct::parse`] must agree with it.
fn parse_document_via_value(body: &str) -> Result<Document, DocumentError> {
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
    plain_timestamp(text).or_else(|| parse_timestamp_forms(text)).filter(within_timestamp_years)
}

/// The years a timestamp from the API may have; any other is treated as absent (see the module comment).
pub const TIMESTAMP_YEARS: std::ops::RangeInclusive<i32> = 1900..=9999;

fn within_timestamp_years(when: &NaiveDateTime) -> bool {
    use chrono::Datelike;
    TIMESTAMP_YEARS.contains(&when.year())
}

/// The API's own `YYYY-MM-DDTHH:MM:SS` (or with a space), read without chrono's format parser (which
/// interprets its format strings on every call). `None` for anything else, including an impossible date or a
/// second `60`: [`parse_timestamp_forms`] decides those. Where this gives a value, it is that function's.
fn plain_timestamp(text: &str) -> Option<NaiveDateTime> {
    let bytes = text.as_bytes();
    if bytes.len() != 19
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| {
        bytes[range]
            .iter()
            .try_fold(0u32, |n, &digit| digit.is_ascii_digit().then(|| n * 10 + u32::from(digit - b'0')))
    };
    let year = i32::try_from(number(0..4)?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?)?;
    let second = number(17..19)?;
    if second > 59 {
        return None;
    }
    date.and_hms_opt(number(11..13)?, number(14..16)?, second)
}

/// Every accepted form (see the module comment), through chrono; `text` is trimmed and not empty.
fn parse_timestamp_forms(text: &str) -> Option<NaiveDateTime> {
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

/// The fast reading of a body: streamed by serde_json straight into the typed model, with no
/// `serde_json::Value` tree in between (building and then re-reading that tree was most of the cost of a
/// parse). It gives up — `None`, and [`parse_document`] falls back to [`parse_document_via_value`], the
/// reference — on anything that is not a plain, valid document: a syntax error or too deep a nesting, a
/// top-level value that is not an object, a non-null `error`, a top-level block of the wrong container type,
/// or a key given twice in an object it reads (the reference keeps the last value at the first key's place).
/// When it does not give up, its result is the reference's: every value, read or skipped, goes through the
/// same serde_json parser entry point (`deserialize_any`, the one `Value` uses, so numbers are range-checked
/// and strings validated exactly as there, and the recursion limit counts the same levels), and each field is
/// read with the same lenient rules as [`lenient`] and [`Context::from_value`].
mod direct {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::Deserializer;
    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

    use super::{
        Asn, Context, ContextFeed, ContextKind, Document, History, PassiveDnsEntry, Period, Whitelist,
        WhoisEntry, parse_timestamp,
    };

    /// Most names one `context` object (kinds) or kind (feeds) may have before the duplicate check, which is a
    /// linear scan, hands the body to the reference reading instead.
    const MAX_SCANNED_NAMES: usize = 32;

    /// Parses `body` (BOM already removed); `None` when the reference reading must decide.
    pub(super) fn parse(body: &str) -> Option<Document> {
        let mut deserializer = serde_json::Deserializer::from_str(body);
        let document = Seed(DocumentShape { top: true }).deserialize(&mut deserializer).ok()?;
        deserializer.end().ok()?;
        Some(document)
    }

    /// The error that makes [`parse`] give up.
    fn give_up<E: de::Error>() -> E {
        E::custom("not a plain document; read through serde_json::Value")
    }

    /// A JSON scalar as the parser reported it.
    enum Scalar<'a> {
        Null,
        Bool(bool),
        U64(u64),
        I64(i64),
        F64,
        Str(&'a str),
    }

    /// What to make of one JSON value, whatever its type. Containers a shape does not read are skipped
    /// (still parsed and validated) and then count as [`Shape::other`].
    trait Shape<'de>: Sized {
        type Out;

        /// Any value this shape does not read.
        fn other<E: de::Error>(self) -> Result<Self::Out, E>;

        fn scalar<E: de::Error>(self, _value: Scalar<'_>) -> Result<Self::Out, E> {
            self.other()
        }

        fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
            while seq.next_element_seed(Seed(Skip))?.is_some() {}
            self.other()
        }

        fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
            skip_entries(&mut map)?;
            self.other()
        }
    }

    fn skip_entries<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
        while map.next_key_seed(Seed(Skip))?.is_some() {
            map.next_value_seed(Seed(Skip))?;
        }
        Ok(())
    }

    /// Reads one value with a [`Shape`], always through `deserialize_any`.
    struct Seed<S>(S);

    impl<'de, S: Shape<'de>> DeserializeSeed<'de> for Seed<S> {
        type Value = S::Out;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Out, D::Error> {
            deserializer.deserialize_any(ShapeVisitor(self.0, PhantomData))
        }
    }

    struct ShapeVisitor<'de, S>(S, PhantomData<&'de ()>);

    impl<'de, S: Shape<'de>> Visitor<'de> for ShapeVisitor<'de, S> {
        type Value = S::Out;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_bool<E: de::Error>(self, value: bool) -> Result<S::Out, E> {
            self.0.scalar(Scalar::Bool(value))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<S::Out, E> {
            self.0.scalar(Scalar::I64(value))
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<S::Out, E> {
            self.0.scalar(Scalar::U64(value))
        }

        fn visit_f64<E: de::Error>(self, _value: f64) -> Result<S::Out, E> {
            self.0.scalar(Scalar::F64)
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<S::Out, E> {
            self.0.scalar(Scalar::Str(value))
        }

        fn visit_unit<E: de::Error>(self) -> Result<S::Out, E> {
            self.0.scalar(Scalar::Null)
        }

        fn visit_none<E: de::Error>(self) -> Result<S::Out, E> {
            self.0.scalar(Scalar::Null)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<S::Out, A::Error> {
            self.0.seq(seq)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<S::Out, A::Error> {
            self.0.map(map)
        }
    }

    /// Any value, validated and dropped.
    struct Skip;

    impl<'de> Shape<'de> for Skip {
        type Out = ();

        fn other<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
    }

    /// A string, owned; anything else is absent.
    struct Text;

    impl<'de> Shape<'de> for Text {
        type Out = Option<String>;

        fn other<E: de::Error>(self) -> Result<Option<String>, E> {
            Ok(None)
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<Option<String>, E> {
            Ok(match value {
                Scalar::Str(text) => Some(text.to_string()),
                _ => None,
            })
        }
    }

    /// Whether the value is `null` (the `error` key).
    struct IsNull;

    impl<'de> Shape<'de> for IsNull {
        type Out = bool;

        fn other<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<bool, E> {
            Ok(matches!(value, Scalar::Null))
        }
    }

    /// [`super::lenient::timestamp`].
    struct Timestamp;

    impl<'de> Shape<'de> for Timestamp {
        type Out = Option<chrono::NaiveDateTime>;

        fn other<E: de::Error>(self) -> Result<Self::Out, E> {
            Ok(None)
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<Self::Out, E> {
            Ok(match value {
                Scalar::Str(text) => parse_timestamp(text),
                _ => None,
            })
        }
    }

    /// [`super::lenient::asn_number`].
    struct AsnNumber;

    impl<'de> Shape<'de> for AsnNumber {
        type Out = Option<String>;

        fn other<E: de::Error>(self) -> Result<Option<String>, E> {
            Ok(None)
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<Option<String>, E> {
            Ok(match value {
                Scalar::U64(number) => Some(number.to_string()),
                // `Value::as_u64` of an integer that is not negative (serde_json reports those as u64 anyway).
                Scalar::I64(number) => u64::try_from(number).ok().map(|n| n.to_string()),
                Scalar::Str(text) => super::asn_digits(text).map(str::to_string),
                Scalar::Null | Scalar::Bool(_) | Scalar::F64 => None,
            })
        }
    }

    /// [`super::lenient::whitelist`].
    struct WhitelistShape;

    impl<'de> Shape<'de> for WhitelistShape {
        type Out = Option<Whitelist>;

        fn other<E: de::Error>(self) -> Result<Self::Out, E> {
            Ok(Some(Whitelist::Listed))
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<Self::Out, E> {
            Ok(match value {
                Scalar::Null | Scalar::Bool(false) => None,
                Scalar::Str(text) if !text.trim().is_empty() => {
                    Some(Whitelist::Reason(text.trim().to_string()))
                }
                _ => Some(Whitelist::Listed),
            })
        }
    }

    /// Something read from a JSON object.
    trait FromMap: Sized {
        fn from_map<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
    }

    /// The key of an object entry: its index in `names`, `None` for any other key.
    struct FieldName(&'static [&'static str]);

    impl<'de> Shape<'de> for FieldName {
        type Out = Option<usize>;

        fn other<E: de::Error>(self) -> Result<Option<usize>, E> {
            Ok(None)
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<Option<usize>, E> {
            Ok(match value {
                Scalar::Str(key) => self.0.iter().position(|name| *name == key),
                _ => None,
            })
        }
    }

    /// Calls `field(index, map)` for every entry whose key is one of `names` (which must read the value) and
    /// skips the others. A name given twice gives up.
    fn read_fields<'de, A: MapAccess<'de>>(
        map: &mut A,
        names: &'static [&'static str],
        mut field: impl FnMut(usize, &mut A) -> Result<(), A::Error>,
    ) -> Result<(), A::Error> {
        let mut seen = 0u32;
        while let Some(key) = map.next_key_seed(Seed(FieldName(names)))? {
            match key {
                Some(index) => {
                    if seen & (1 << index) != 0 {
                        return Err(give_up());
                    }
                    seen |= 1 << index;
                    field(index, map)?;
                }
                None => map.next_value_seed(Seed(Skip))?,
            }
        }
        Ok(())
    }

    /// A JSON object read as `T`. A top-level block (`strict`) that is neither an object nor `null` gives up;
    /// elsewhere any other value is absent ([`super::lenient::object`]).
    struct Object<T> {
        strict: bool,
        read: PhantomData<T>,
    }

    fn object<T>(strict: bool) -> Seed<Object<T>> {
        Seed(Object { strict, read: PhantomData })
    }

    impl<'de, T: FromMap> Shape<'de> for Object<T> {
        type Out = Option<T>;

        fn other<E: de::Error>(self) -> Result<Option<T>, E> {
            if self.strict { Err(give_up()) } else { Ok(None) }
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<Option<T>, E> {
            match value {
                Scalar::Null => Ok(None),
                _ => self.other(),
            }
        }

        fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<T>, A::Error> {
            if self.strict {
                return Err(give_up());
            }
            while seq.next_element_seed(Seed(Skip))?.is_some() {}
            Ok(None)
        }

        fn map<A: MapAccess<'de>>(self, map: A) -> Result<Option<T>, A::Error> {
            T::from_map(map).map(Some)
        }
    }

    /// A list of objects read as `T`, other entries skipped; a top-level block (`strict`) that is neither a
    /// list nor `null` gives up, elsewhere it is empty ([`super::lenient::objects`]).
    struct Objects<T> {
        strict: bool,
        read: PhantomData<T>,
    }

    fn objects<T>(strict: bool) -> Seed<Objects<T>> {
        Seed(Objects { strict, read: PhantomData })
    }

    impl<'de, T: FromMap> Shape<'de> for Objects<T> {
        type Out = Vec<T>;

        fn other<E: de::Error>(self) -> Result<Vec<T>, E> {
            if self.strict { Err(give_up()) } else { Ok(Vec::new()) }
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<Vec<T>, E> {
            match value {
                Scalar::Null => Ok(Vec::new()),
                _ => self.other(),
            }
        }

        fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element_seed(object::<T>(false))? {
                items.extend(item);
            }
            Ok(items)
        }

        fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<T>, A::Error> {
            if self.strict {
                return Err(give_up());
            }
            skip_entries(&mut map)?;
            Ok(Vec::new())
        }
    }

    /// [`super::lenient::optional_strings`]; a top-level block (`strict`) that is neither a list nor `null`
    /// gives up.
    struct OptionalStrings {
        strict: bool,
    }

    impl<'de> Shape<'de> for OptionalStrings {
        type Out = Option<Vec<Option<String>>>;

        fn other<E: de::Error>(self) -> Result<Self::Out, E> {
            if self.strict { Err(give_up()) } else { Ok(None) }
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<Self::Out, E> {
            match value {
                Scalar::Null => Ok(None),
                _ => self.other(),
            }
        }

        fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element_seed(Seed(Text))? {
                items.push(item);
            }
            Ok(Some(items))
        }

        fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
            if self.strict {
                return Err(give_up());
            }
            skip_entries(&mut map)?;
            Ok(None)
        }
    }

    /// [`Context::from_value`]; a top-level block (`strict`) that is neither an object nor `null` gives up.
    struct ContextShape {
        strict: bool,
    }

    impl<'de> Shape<'de> for ContextShape {
        type Out = Context;

        fn other<E: de::Error>(self) -> Result<Context, E> {
            if self.strict { Err(give_up()) } else { Ok(Context::default()) }
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<Context, E> {
            match value {
                Scalar::Null => Ok(Context::default()),
                _ => self.other(),
            }
        }

        fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Context, A::Error> {
            if self.strict {
                return Err(give_up());
            }
            while seq.next_element_seed(Seed(Skip))?.is_some() {}
            Ok(Context::default())
        }

        fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Context, A::Error> {
            let mut kinds: Vec<ContextKind> = Vec::new();
            let mut skipped: Vec<String> = Vec::new();
            while let Some(name) = map.next_key_seed(Seed(Name))? {
                check_new_name(&name, kinds.iter().map(|kind| kind.name.as_str()), &skipped)?;
                match map.next_value_seed(Seed(Feeds))? {
                    Some(feeds) => kinds.push(ContextKind { name, feeds }),
                    None => skipped.push(name),
                }
            }
            Ok(Context { kinds })
        }
    }

    /// Gives up when `name` was already seen (kept or skipped), or when there are too many names to scan.
    fn check_new_name<'a, E: de::Error>(
        name: &str,
        kept: impl ExactSizeIterator<Item = &'a str>,
        skipped: &'a [String],
    ) -> Result<(), E> {
        if kept.len() + skipped.len() >= MAX_SCANNED_NAMES {
            return Err(give_up());
        }
        let mut seen = kept.chain(skipped.iter().map(String::as_str));
        if seen.any(|seen| seen == name) { Err(give_up()) } else { Ok(()) }
    }

    /// An object key, owned.
    struct Name;

    impl<'de> Shape<'de> for Name {
        type Out = String;

        fn other<E: de::Error>(self) -> Result<String, E> {
            Err(give_up())
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<String, E> {
            match value {
                Scalar::Str(text) => Ok(text.to_string()),
                _ => self.other(),
            }
        }
    }

    /// The feeds of one `context.<kind>`: an object of feeds, or a list read as one feed with an empty name;
    /// `None` (kind skipped) for anything else.
    struct Feeds;

    impl<'de> Shape<'de> for Feeds {
        type Out = Option<Vec<ContextFeed>>;

        fn other<E: de::Error>(self) -> Result<Self::Out, E> {
            Ok(None)
        }

        fn seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Out, A::Error> {
            let values = FeedValues.seq(seq)?.unwrap_or_default();
            Ok(Some(vec![ContextFeed { name: String::new(), values }]))
        }

        fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
            let mut feeds: Vec<ContextFeed> = Vec::new();
            let mut skipped: Vec<String> = Vec::new();
            while let Some(name) = map.next_key_seed(Seed(Name))? {
                check_new_name(&name, feeds.iter().map(|feed| feed.name.as_str()), &skipped)?;
                match map.next_value_seed(Seed(FeedValues))? {
                    Some(values) => feeds.push(ContextFeed { name, values }),
                    None => skipped.push(name),
                }
            }
            Ok(Some(feeds))
        }
    }

    /// [`super::feed_values`]: a list (non-strings skipped) or a single string; `None` for anything else.
    struct FeedValues;

    impl<'de> Shape<'de> for FeedValues {
        type Out = Option<Vec<String>>;

        fn other<E: de::Error>(self) -> Result<Self::Out, E> {
            Ok(None)
        }

        fn scalar<E: de::Error>(self, value: Scalar<'_>) -> Result<Self::Out, E> {
            Ok(match value {
                Scalar::Str(text) => Some(vec![text.to_string()]),
                _ => None,
            })
        }

        fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
            let mut values = Vec::new();
            while let Some(value) = seq.next_element_seed(Seed(Text))? {
                values.extend(value);
            }
            Ok(Some(values))
        }
    }

    /// The whole body, or (`top: false`) a document embedded in one.
    struct DocumentShape {
        top: bool,
    }

    impl<'de> Shape<'de> for DocumentShape {
        type Out = Document;

        fn other<E: de::Error>(self) -> Result<Document, E> {
            // Only reached for the body itself: embedded documents are read through `Object`/`Objects`.
            Err(give_up())
        }

        fn map<A: MapAccess<'de>>(self, map: A) -> Result<Document, A::Error> {
            read_document(map, self.top)
        }
    }

    const DOCUMENT_FIELDS: &[&str] = &[
        "id",
        "type",
        "context",
        "history",
        "asn",
        "whois",
        "whitelist",
        "passive_dns",
        "accessed_by_files",
        "file_connections",
        "connections",
        "error",
    ];

    fn read_document<'de, A: MapAccess<'de>>(mut map: A, top: bool) -> Result<Document, A::Error> {
        let mut doc = Document::default();
        read_fields(&mut map, DOCUMENT_FIELDS, |index, map| {
            match index {
                0 => doc.id = map.next_value_seed(Seed(Text))?,
                1 => doc.doc_type = map.next_value_seed(Seed(Text))?,
                2 => doc.context = map.next_value_seed(Seed(ContextShape { strict: top }))?,
                3 => doc.history = map.next_value_seed(object(top))?,
                4 => doc.asn = map.next_value_seed(object(top))?,
                5 => doc.whois = map.next_value_seed(objects(top))?,
                6 => doc.whitelist = map.next_value_seed(Seed(WhitelistShape))?,
                7 => doc.passive_dns = map.next_value_seed(objects(top))?,
                8 => doc.accessed_by_files = map.next_value_seed(Seed(OptionalStrings { strict: top }))?,
                9 => doc.file_connections = map.next_value_seed(objects(top))?,
                10 => doc.connections = map.next_value_seed(objects(top))?,
                // `error`: only the body's own is read; a non-null one is the reference's to report.
                _ if top => {
                    if !map.next_value_seed(Seed(IsNull))? {
                        return Err(give_up());
                    }
                }
                _ => map.next_value_seed(Seed(Skip))?,
            }
            Ok(())
        })?;
        Ok(doc)
    }

    impl FromMap for Document {
        fn from_map<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
            read_document(map, false)
        }
    }

    impl FromMap for History {
        fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
            let mut history = History::default();
            read_fields(&mut map, &["first_seen_at", "last_seen_at", "global_history"], |index, map| {
                match index {
                    0 => history.first_seen_at = map.next_value_seed(Seed(Timestamp))?,
                    1 => history.last_seen_at = map.next_value_seed(Seed(Timestamp))?,
                    _ => history.global_history = map.next_value_seed(objects(false))?,
                }
                Ok(())
            })?;
            Ok(history)
        }
    }

    impl FromMap for Period {
        fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
            let mut period = Period::default();
            read_fields(&mut map, &["start_at", "end_at"], |index, map| {
                let at = map.next_value_seed(Seed(Timestamp))?;
                match index {
                    0 => period.start_at = at,
                    _ => period.end_at = at,
                }
                Ok(())
            })?;
            Ok(period)
        }
    }

    impl FromMap for Asn {
        fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
            let mut asn = Asn::default();
            read_fields(&mut map, &["description", "number"], |index, map| {
                match index {
                    0 => asn.description = map.next_value_seed(Seed(Text))?,
                    _ => asn.number = map.next_value_seed(Seed(AsnNumber))?,
                }
                Ok(())
            })?;
            Ok(asn)
        }
    }

    impl FromMap for WhoisEntry {
        fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
            let mut entry = WhoisEntry::default();
            read_fields(&mut map, &["name", "org"], |index, map| {
                let text = map.next_value_seed(Seed(Text))?;
                match index {
                    0 => entry.name = text,
                    _ => entry.org = text,
                }
                Ok(())
            })?;
            Ok(entry)
        }
    }

    impl FromMap for PassiveDnsEntry {
        fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
            let mut entry = PassiveDnsEntry::default();
            read_fields(&mut map, &["answer_ip", "answer_host", "answer_type", "hostname"], |index, map| {
                let text = map.next_value_seed(Seed(Text))?;
                match index {
                    0 => entry.answer_ip = text,
                    1 => entry.answer_host = text,
                    2 => entry.answer_type = text,
                    _ => entry.hostname = text,
                }
                Ok(())
            })?;
            Ok(entry)
        }
    }
}

/// The digits of an `asn.number` string: trimmed, a leading `AS` (any case) removed; `None` unless all digits.
fn asn_digits(text: &str) -> Option<&str> {
    let text = text.trim();
    let digits = match text.get(..2) {
        Some(prefix) if prefix.eq_ignore_ascii_case("as") => text[2..].trim_start(),
        _ => text,
    };
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
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
            Value::String(text) => super::asn_digits(&text).map(str::to_string),
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
        // Years a spreadsheet cannot show, or that chrono writes with a sign (a formula to Excel in a CSV).
        for out_of_range in [
            "-0001-12-31T00:00:00",
            "+20000-01-01T00:00:00",
            "0000-01-01T00:00:00",
            "1899-12-31T23:59:59",
            "10000-01-01",
            "-2019-11-13",
        ] {
            assert_eq!(parse_timestamp(out_of_range), None, "{out_of_range}");
        }
        assert_eq!(parse_timestamp("1900-01-01T00:00:00"), Some(datetime("1900-01-01 00:00:00")));
        assert_eq!(parse_timestamp("9999-12-31T23:59:59"), Some(datetime("9999-12-31 23:59:59")));
    }

    /// The direct reading either gives up or returns exactly what the reference reading returns.
    fn assert_direct_agrees(body: &str) -> bool {
        let reference = parse_document_via_value(body);
        match direct::parse(body) {
            Some(direct) => {
                let reference =
                    reference.unwrap_or_else(|e| panic!("direct accepted, reference {e}: {body}"));
                assert_eq!(format!("{direct:?}"), format!("{reference:?}"), "{body}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn direct_reading_takes_plain_documents_and_agrees_with_the_reference() {
        for name in
            ["ip_flagged.json", "host.json", "file_md5.json", "file_unknown.json", "ip_allowlisted.json"]
        {
            assert!(assert_direct_agrees(&fixture(name)), "{name} was not read directly");
        }
        let loose = r#"{"id": 17, "type": ["ip"], "whitelist": {"a": [1, {"b": null}]},
            "context": {"reasons": {"a": ["one", 2, null, {"x": 1}, ["n"], true, "three"], "b": "single", "c": 5},
                        "plain": ["listed"], "broken": "kind", "numbers": 12, "empty": {}},
            "asn": {"description": 5, "number": 64500}, "whois": ["org", {"org": 3}, {"org": "REAL"}],
            "passive_dns": [7, {"answer_ip": 5}, {"answer_ip": "203.0.113.9", "hostname": "h"}],
            "accessed_by_files": ["a", 1, null, []], "error": null, "extra": [1.5e300, -0, -7, {"k": "\u00e9"}],
            "history": {"first_seen_at": "2024-01-01", "last_seen_at": 5, "global_history": [null, "x",
                        {"start_at": "garbage", "end_at": "2024-01-02T03:04:05Z"}, {"start_at": "2024-01-02T03:04:05"}]},
            "connections": [1, {"type": "file", "context": "broken", "error": 1, "history": []},
                            {"type": "file", "context": {"k": {"f": ["ok1"]}}, "connections": [{"id": "deep"}]}],
            "file_connections": [{"id": "f", "file_connections": {"not": "a list"}, "whois": 3}]}"#;
        assert!(assert_direct_agrees(loose));
        for number in [
            "64500",
            "\" AS1 \"",
            "\"x\"",
            "-1",
            "1.0",
            "18446744073709551615",
            "18446744073709551616",
            "true",
        ] {
            assert!(assert_direct_agrees(&format!(r#"{{"asn": {{"number": {number}}}}}"#)), "{number}");
        }
    }

    #[test]
    fn direct_reading_gives_up_where_the_reference_must_decide() {
        for body in [
            "",
            "[]",
            "null",
            r#"{"id": "x""#,
            r#"{"id": "x"} trailing"#,
            r#"{"error": {"message": "no"}}"#,
            r#"{"error": null, "error": 0}"#,
            r#"{"context": "x"}"#,
            r#"{"history": []}"#,
            r#"{"whois": {}}"#,
            r#"{"accessed_by_files": 3}"#,
            r#"{"connections": "none"}"#,
            r#"{"id": "a", "id": "b"}"#,
            r#"{"context": {"k": ["a"], "other": 1, "k": ["b"]}}"#,
            r#"{"context": {"k": {"f": ["a"], "f": ["b"]}}}"#,
            r#"{"context": {"k": 1, "j": [], "k": ["b"]}}"#,
            r#"{"history": {"first_seen_at": "2024-01-01", "first_seen_at": null}}"#,
            r#"{"connections": [{"id": "a", "id": "b"}]}"#,
            r#"{"extra": 1e400}"#,
            r#"{"id": "\ud800"}"#,
            r#"{"extra": "\q"}"#,
        ] {
            assert!(!assert_direct_agrees(body), "direct reading accepted {body}");
        }
        let many_kinds: Vec<String> = (0..40).map(|i| format!(r#""k{i}": ["v{i}"]"#)).collect();
        let body = format!(r#"{{"context": {{{}}}}}"#, many_kinds.join(","));
        assert!(!assert_direct_agrees(&body));
        assert_eq!(parse_document(&body).unwrap().context.kinds.len(), 40);
        let deep = format!(r#"{{"extra": {}{}}}"#, "[".repeat(127), "]".repeat(127));
        assert!(!assert_direct_agrees(&deep));
        let shallow = format!(r#"{{"extra": {}{}}}"#, "[".repeat(126), "]".repeat(126));
        assert!(assert_direct_agrees(&shallow));
    }

    /// Random edits of the reference documents: wherever the direct reading answers, it agrees.
    #[test]
    fn direct_reading_agrees_on_mutated_documents() {
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "null",
            "true",
            "1",
            "-2",
            "3.5",
            "1e999",
            "\"x\"",
            "\"id\"",
            "\"context\"",
            "\"error\"",
            "\"whitelist\"",
            "\"number\"",
            "\\u00e9",
            " ",
        ];
        let bodies: Vec<String> = ["ip_flagged.json", "host.json", "file_md5.json", "ip_allowlisted.json"]
            .into_iter()
            .map(fixture)
            .collect();
        let mut rng = fastrand::Rng::with_seed(0x5ec1);
        let mut answered = 0;
        for round in 0..4000 {
            let mut body = bodies[round % bodies.len()].clone();
            for _ in 0..rng.usize(1..4) {
                let at =
                    (0..=body.len()).filter(|i| body.is_char_boundary(*i)).nth(rng.usize(0..=body.len()));
                let Some(at) = at else { continue };
                if rng.bool() {
                    body.insert_str(at, pieces[rng.usize(0..pieces.len())]);
                } else {
                    let end = (at + rng.usize(1..12)).min(body.len());
                    if body.is_char_boundary(end) {
                        body.replace_range(at..end, "");
                    }
                }
            }
            answered += usize::from(assert_direct_agrees(&body));
        }
        assert!(answered > 100, "only {answered} mutated bodies were read directly");
    }

    #[test]
    fn plain_timestamps_read_as_chrono_reads_them() {
        let mut checked = 0;
        for date in
            ["2024-02-10", "2024-02-29", "2023-02-29", "2024-04-31", "2024-13-01", "2024-00-10", "0000-01-01"]
        {
            for separator in ["T", " ", "t", "_"] {
                for time in
                    ["08:30:00", "00:00:00", "23:59:59", "24:00:00", "12:60:00", "12:00:60", "1a:00:00"]
                {
                    let text = format!("{date}{separator}{time}");
                    if let Some(plain) = plain_timestamp(&text) {
                        assert_eq!(Some(plain), parse_timestamp_forms(&text), "{text}");
                        checked += 1;
                    }
                    let forms = parse_timestamp_forms(&text).filter(within_timestamp_years);
                    assert_eq!(parse_timestamp(&text), forms, "{text}");
                }
            }
        }
        // 3 possible dates × 2 separators × 3 possible times
        assert_eq!(checked, 18);
        for other in ["2024-02-10T08:30:00Z", "2024-02-10T08:30:00.5", "+202-02-10T08:30:00", "2024-02-10"] {
            assert_eq!(plain_timestamp(other), None, "{other}");
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
