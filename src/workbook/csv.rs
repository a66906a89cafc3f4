//! VTTL CSV files, read and written losslessly (SPEC §3, reference `vttl-spec.md` §1.2/§1.3/§1.10).
//!
//! This module owns everything byte-level about CSV: detecting the text encoding, sniffing the dialect,
//! scanning records with the raw byte span of every field, and writing records back so that every byte we did
//! not deliberately change comes out as it went in. It streams: [`CsvReader`] yields one [`Record`] at a time
//! from a buffered file (or refills one, [`CsvReader::read_into`], so a million records cost no million
//! allocations), and [`CsvWriter`] writes one record at a time, copying the bytes between patched fields in one
//! piece.
//!
//! We scan records ourselves instead of using the `csv` crate because the writer needs the raw bytes of each
//! field (quotes included) and of each line terminator; the `csv` crate only hands out decoded values. The
//! tests use the `csv` crate as an oracle for the decoded values.
//!
//! Decisions (where SPEC is silent):
//!
//! * **Encoding detection.** A BOM decides first (UTF-8 `EF BB BF`, UTF-16LE `FF FE`, UTF-16BE `FE FF`).
//!   Without a BOM one streaming pass over the file decides: a NUL byte anywhere means binary junk (or UTF-16
//!   without a BOM, which VTTL never writes) → [`WorkbookError::Encoding`]; valid UTF-8 that contains at least
//!   one non-ASCII byte → UTF-8 without BOM; anything else → Windows-1252. **Pure ASCII counts as
//!   Windows-1252**: that is what VTTL writes by default and what Excel assumes for a BOM-less CSV, so new
//!   non-ASCII text we add is written in the code page the file's consumers expect.
//! * **UTF-16** is transcoded to UTF-8 on the fly with encoding_rs's *without replacement* decoder, so a lone
//!   surrogate or an odd trailing byte is an [`WorkbookError::Encoding`] error: only well-formed UTF-16
//!   survives the round trip UTF-16 → UTF-8 → UTF-16 byte for byte. Output is re-encoded to the same
//!   endianness with the same BOM.
//! * **UTF-8 with a BOM but invalid sequences** is still read as UTF-8: raw bytes are copied unchanged, only the
//!   decoded values show U+FFFD.
//! * **Empty file** (0 bytes, or only a BOM) → [`WorkbookError::Corrupt`] `"empty file"`.
//! * **Scanner.** RFC 4180 plus tolerance, matching the `csv` crate's values: a field starting with `"` is
//!   quoted, may contain delimiters, `""` and line breaks; text after a closing quote is appended to the value
//!   (`"ab"cd` → `abcd`); a `"` inside an unquoted field is literal. Terminators are CRLF, LF or a lone CR; the
//!   last record may have none. An **empty line** is a record with zero fields (the `csv` crate skips it; we
//!   keep it so it is copied unchanged).
//! * **Unbalanced quote**: the quoted field runs to the end of the file and is one field of the last record
//!   (as in the `csv` crate). It is logged as a warning and flagged by [`Record::has_unclosed_quote`]; the copy
//!   stays lossless (the enricher refuses such a file: its fills would land inside the open field). A record larger than the record limit (64 MiB by default) or with more than
//!   [`MAX_COLS`] fields is [`WorkbookError::TooLarge`], so a hostile file cannot make us allocate without
//!   bound. After any read error the reader stops (it never resumes in the middle of a broken record).
//! * **Dialect sniffing** from the first record: the delimiter is the most frequent of `,` `;` TAB `|` outside
//!   quotes (ties and none → the earlier in that list, so `,` by default); quoting is `Always` when every field
//!   of the first record is quoted; the line ending is the first record's terminator (CRLF when it has none).
//! * **Writing new text**: CR, LF and NUL become a space (VTTL cells never hold line breaks, and a NUL would
//!   make the file look binary); quoted per the dialect, `"` doubled; Windows-1252 output writes `?` for a
//!   character the code page cannot represent, and counts the fields that got one
//!   ([`CsvWriter::fields_with_replacements`]: the enrichment warns with it). The writer does **not** neutralize formulas itself: callers run
//!   API text through [`neutralize_formula`] before handing it over, which also turns every other control
//!   character into a space.
//! * **Patches** replace the field at their column whatever it holds (the caller decides what is empty); a
//!   column beyond the record pads it with empty fields in the dialect's quoting style. When several patches
//!   name one column, the last wins. Columns at or beyond [`MAX_COLS`] are refused.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use encoding_rs::{Decoder, DecoderResult, UTF_16BE, UTF_16LE, WINDOWS_1252};

use super::{Cell, MAX_COLS, Sheet, WorkbookError, check_input_file};

/// Default largest size of one record (its raw bytes, terminator included): 64 MiB.
pub const DEFAULT_RECORD_LIMIT: usize = 64 << 20;

/// Size of the read buffers.
const BUFFER_BYTES: usize = 64 << 10;

/// The text encoding of a CSV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    Utf8 {
        bom: bool,
    },
    /// UTF-16 little-endian, with the `FF FE` BOM.
    Utf16Le,
    /// UTF-16 big-endian, with the `FE FF` BOM.
    Utf16Be,
    Windows1252,
}

impl TextEncoding {
    /// The byte-order mark a file in this encoding starts with (empty when none).
    pub fn bom(self) -> &'static [u8] {
        match self {
            TextEncoding::Utf8 { bom: true } => b"\xEF\xBB\xBF",
            TextEncoding::Utf8 { bom: false } | TextEncoding::Windows1252 => b"",
            TextEncoding::Utf16Le => b"\xFF\xFE",
            TextEncoding::Utf16Be => b"\xFE\xFF",
        }
    }

    /// A short name for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            TextEncoding::Utf8 { bom: true } => "UTF-8 with BOM",
            TextEncoding::Utf8 { bom: false } => "UTF-8",
            TextEncoding::Utf16Le => "UTF-16LE",
            TextEncoding::Utf16Be => "UTF-16BE",
            TextEncoding::Windows1252 => "Windows-1252",
        }
    }

    /// True when record bytes are held internally as Windows-1252 (otherwise as UTF-8).
    fn internal_is_1252(self) -> bool {
        matches!(self, TextEncoding::Windows1252)
    }
}

/// A line terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    CrLf,
    Lf,
    Cr,
}

impl LineEnding {
    /// The terminator's bytes (ASCII).
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            LineEnding::CrLf => b"\r\n",
            LineEnding::Lf => b"\n",
            LineEnding::Cr => b"\r",
        }
    }
}

/// How fields are quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// Every field is wrapped in double quotes (VTTL's style).
    Always,
    /// Only fields that need it are quoted.
    Necessary,
}

/// Everything needed to write text the way the input file was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    pub encoding: TextEncoding,
    pub delimiter: u8,
    pub quoting: Quoting,
    pub line_ending: LineEnding,
}

impl Default for Dialect {
    /// VTTL's default output: Windows-1252, comma, every field quoted, CRLF.
    fn default() -> Self {
        Dialect {
            encoding: TextEncoding::Windows1252,
            delimiter: b',',
            quoting: Quoting::Always,
            line_ending: LineEnding::CrLf,
        }
    }
}

/// One record as it was in the file.
///
/// Its bytes are held in the file's encoding for UTF-8 and Windows-1252 files, and as UTF-8 for UTF-16 files
/// (the writer re-encodes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Content plus terminator.
    raw: Vec<u8>,
    /// Length of the content (the terminator follows).
    content_len: usize,
    /// Raw span of each field in `raw`, quotes included.
    fields: Vec<Range<usize>>,
    terminator: Option<LineEnding>,
    encoding: TextEncoding,
    unclosed_quote: bool,
    index: u64,
}

impl Record {
    /// An empty record to read into with [`CsvReader::read_into`] (its buffers are reused record after
    /// record).
    pub fn empty() -> Record {
        Record {
            raw: Vec::new(),
            content_len: 0,
            fields: Vec::new(),
            terminator: None,
            encoding: TextEncoding::Windows1252,
            unclosed_quote: false,
            index: 0,
        }
    }

    /// Number of fields. An empty line has none.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True for an empty line.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// 0-based position of the record in the file (the header is record 0).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The value of field `i`: unquoted, `""` unescaped, decoded. `""` when `i` is beyond the record (short
    /// rows are legal).
    pub fn field(&self, i: usize) -> Cow<'_, str> {
        let Some(span) = self.fields.get(i) else {
            return Cow::Borrowed("");
        };
        field_text(&self.raw[span.clone()], self.encoding)
    }

    /// The decoded values of all fields.
    pub fn fields(&self) -> impl Iterator<Item = Cow<'_, str>> + '_ {
        (0..self.len()).map(move |i| self.field(i))
    }

    /// True when field `i` is missing or blank after trimming (the fill rule's "empty").
    pub fn is_blank(&self, i: usize) -> bool {
        let Some(span) = self.fields.get(i) else { return true };
        let raw = &self.raw[span.clone()];
        // Most cells that hold something start with a printable ASCII character (neither a space nor a quote):
        // that first character of the value already says "not blank", without unquoting the rest.
        let first = if raw.first() == Some(&b'"') { raw.get(1) } else { raw.first() };
        if first.is_some_and(|&b| b.is_ascii_graphic() && b != b'"') {
            return false;
        }
        let value = unquote(raw);
        if value.is_ascii() {
            // Without decoding: the ASCII characters `str::trim` removes.
            return value.iter().all(|&b| is_ascii_trimmed(b));
        }
        decode_internal(value, self.encoding).trim().is_empty()
    }

    /// The raw bytes of field `i` (quotes included), in the record's internal encoding.
    pub fn raw_field(&self, i: usize) -> Option<&[u8]> {
        self.fields.get(i).map(|span| &self.raw[span.clone()])
    }

    /// The raw bytes of the whole record, terminator included, in the record's internal encoding.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The record's line terminator; `None` for a last line without one.
    pub fn terminator(&self) -> Option<LineEnding> {
        self.terminator
    }

    /// True when the record ends inside a quoted field that was never closed (it ran to the end of the file).
    pub fn has_unclosed_quote(&self) -> bool {
        self.unclosed_quote
    }
}

/// The value bytes of a raw field: the field itself when unquoted, else without the quotes and with `""`
/// unescaped, and any text after the closing quote appended (as the `csv` crate does).
fn unquote(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.first() != Some(&b'"') {
        return Cow::Borrowed(raw);
    }
    let inner = &raw[1..];
    // Fast path: `"text"` with no other quote.
    if let Some(last) = inner.len().checked_sub(1)
        && inner[last] == b'"'
        && !inner[..last].contains(&b'"')
    {
        return Cow::Borrowed(&inner[..last]);
    }
    if !inner.contains(&b'"') {
        // Unclosed quote running to the end of the file.
        return Cow::Borrowed(inner);
    }
    let mut value = Vec::with_capacity(inner.len());
    let mut in_quotes = true;
    let mut i = 0;
    while i < inner.len() {
        let byte = inner[i];
        if in_quotes && byte == b'"' {
            if inner.get(i + 1) == Some(&b'"') {
                value.push(b'"');
                i += 2;
                continue;
            }
            in_quotes = false;
        } else {
            value.push(byte);
        }
        i += 1;
    }
    Cow::Owned(value)
}

/// The ASCII characters that are white space for `str::trim` (TAB, LF, VT, FF, CR, space).
fn is_ascii_trimmed(byte: u8) -> bool {
    matches!(byte, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

/// The value of a raw field (as [`Record::raw_field`] gives it, from a record of a file in `encoding`):
/// unquoted, `""` unescaped, decoded — what [`Record::field`] returns.
pub fn field_text(raw: &[u8], encoding: TextEncoding) -> Cow<'_, str> {
    decode_internal(unquote(raw), encoding)
}

/// Decodes bytes held in a record's internal encoding.
fn decode_internal(bytes: Cow<'_, [u8]>, encoding: TextEncoding) -> Cow<'_, str> {
    if encoding.internal_is_1252() {
        match bytes {
            Cow::Borrowed(b) => WINDOWS_1252.decode_without_bom_handling(b).0,
            Cow::Owned(b) => Cow::Owned(WINDOWS_1252.decode_without_bom_handling(&b).0.into_owned()),
        }
    } else {
        match bytes {
            Cow::Borrowed(b) => String::from_utf8_lossy(b),
            Cow::Owned(b) => Cow::Owned(match String::from_utf8(b) {
                Ok(text) => text,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }),
        }
    }
}

/// Marker payload of the `io::Error` the UTF-16 transcoder returns for malformed input.
#[derive(Debug)]
struct MalformedText(String);

impl std::fmt::Display for MalformedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MalformedText {}

/// A `Read` adapter that turns UTF-16 into UTF-8, failing on malformed UTF-16.
struct Utf16ToUtf8<R> {
    inner: R,
    decoder: Decoder,
    input: Box<[u8]>,
    input_start: usize,
    input_end: usize,
    input_eof: bool,
    output: Box<[u8]>,
    output_start: usize,
    output_end: usize,
    finished: bool,
    /// Bytes of UTF-16 consumed so far (after the BOM), for error messages.
    consumed: u64,
}

impl<R: Read> Utf16ToUtf8<R> {
    fn new(inner: R, decoder: Decoder) -> Self {
        Utf16ToUtf8 {
            inner,
            decoder,
            input: vec![0; BUFFER_BYTES].into_boxed_slice(),
            input_start: 0,
            input_end: 0,
            input_eof: false,
            // A UTF-16 code unit (2 bytes) becomes at most 3 bytes of UTF-8.
            output: vec![0; BUFFER_BYTES * 2 + 16].into_boxed_slice(),
            output_start: 0,
            output_end: 0,
            finished: false,
            consumed: 0,
        }
    }
}

impl<R: Read> Read for Utf16ToUtf8<R> {
    fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.output_start < self.output_end {
                let n = dst.len().min(self.output_end - self.output_start);
                dst[..n].copy_from_slice(&self.output[self.output_start..self.output_start + n]);
                self.output_start += n;
                return Ok(n);
            }
            if self.finished || dst.is_empty() {
                return Ok(0);
            }
            if self.input_start == self.input_end && !self.input_eof {
                let n = self.inner.read(&mut self.input)?;
                self.input_start = 0;
                self.input_end = n;
                self.input_eof = n == 0;
            }
            let (result, read, written) = self.decoder.decode_to_utf8_without_replacement(
                &self.input[self.input_start..self.input_end],
                &mut self.output,
                self.input_eof,
            );
            self.input_start += read;
            self.consumed += read as u64;
            self.output_start = 0;
            self.output_end = written;
            match result {
                DecoderResult::InputEmpty => {
                    if self.input_eof {
                        self.finished = true;
                    }
                }
                DecoderResult::OutputFull => {}
                DecoderResult::Malformed(..) => {
                    let reason = if self.input_eof && self.input_start == self.input_end {
                        "malformed UTF-16 at the end of the file (odd number of bytes or unpaired surrogate)"
                            .to_string()
                    } else {
                        format!(
                            "malformed UTF-16 (unpaired surrogate) near byte {} after the byte-order mark",
                            self.consumed
                        )
                    };
                    return Err(io::Error::new(io::ErrorKind::InvalidData, MalformedText(reason)));
                }
            }
        }
    }
}

type ByteStream = BufReader<Box<dyn Read + Send>>;

/// Opens the file's content (after the BOM) as an ASCII-compatible byte stream: the file's own bytes for
/// UTF-8 and Windows-1252, UTF-8 transcoded on the fly for UTF-16.
fn open_stream(path: &Path, encoding: TextEncoding) -> Result<ByteStream, WorkbookError> {
    let mut file = File::open(path).map_err(|e| WorkbookError::io(path, "open", e))?;
    file.seek(SeekFrom::Start(encoding.bom().len() as u64))
        .map_err(|e| WorkbookError::io(path, "read", e))?;
    let inner: Box<dyn Read + Send> = match encoding {
        TextEncoding::Utf16Le => {
            Box::new(Utf16ToUtf8::new(file, UTF_16LE.new_decoder_without_bom_handling()))
        }
        TextEncoding::Utf16Be => {
            Box::new(Utf16ToUtf8::new(file, UTF_16BE.new_decoder_without_bom_handling()))
        }
        TextEncoding::Utf8 { .. } | TextEncoding::Windows1252 => Box::new(file),
    };
    Ok(BufReader::with_capacity(BUFFER_BYTES, inner))
}

/// Maps a read error to the right [`WorkbookError`]: malformed UTF-16 is an encoding problem.
fn read_error(path: &Path, error: io::Error) -> WorkbookError {
    if let Some(malformed) = error.get_ref().and_then(|inner| inner.downcast_ref::<MalformedText>()) {
        return WorkbookError::Encoding { path: path.to_path_buf(), reason: malformed.0.clone() };
    }
    WorkbookError::io(path, "read", error)
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the file.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Detects the encoding of a non-empty file (see the module comment).
fn detect_encoding(path: &Path, size: u64) -> Result<TextEncoding, WorkbookError> {
    let empty = || WorkbookError::Corrupt { path: path.to_path_buf(), reason: "empty file".into() };
    if size == 0 {
        return Err(empty());
    }
    let mut file = File::open(path).map_err(|e| WorkbookError::io(path, "open", e))?;
    let mut head = [0u8; 3];
    let n = read_up_to(&mut file, &mut head).map_err(|e| WorkbookError::io(path, "read", e))?;
    let head = &head[..n];
    let bom_encoding = if head.starts_with(b"\xEF\xBB\xBF") {
        Some(TextEncoding::Utf8 { bom: true })
    } else if head.starts_with(b"\xFF\xFE") {
        Some(TextEncoding::Utf16Le)
    } else if head.starts_with(b"\xFE\xFF") {
        Some(TextEncoding::Utf16Be)
    } else {
        None
    };
    if let Some(encoding) = bom_encoding {
        if size <= encoding.bom().len() as u64 {
            return Err(empty());
        }
        if matches!(encoding, TextEncoding::Utf16Le | TextEncoding::Utf16Be) {
            return Ok(encoding);
        }
    }
    // Streaming pass: NUL bytes, UTF-8 validity, any non-ASCII byte.
    file.seek(SeekFrom::Start(0)).map_err(|e| WorkbookError::io(path, "read", e))?;
    let mut buf = vec![0u8; BUFFER_BYTES];
    let mut carry = 0usize; // bytes of an incomplete UTF-8 sequence kept at the front of `buf`
    let mut valid_utf8 = true;
    let mut non_ascii = false;
    let mut offset: u64 = 0;
    loop {
        let n = read_up_to(&mut file, &mut buf[carry..]).map_err(|e| WorkbookError::io(path, "read", e))?;
        if n == 0 {
            if carry > 0 {
                valid_utf8 = false;
            }
            break;
        }
        let fresh = &buf[carry..carry + n];
        if let Some(pos) = memchr::memchr(0, fresh) {
            return Err(WorkbookError::Encoding {
                path: path.to_path_buf(),
                reason: format!(
                    "NUL byte at offset {}: binary data, or UTF-16 without a byte-order mark, not a CSV file",
                    offset + pos as u64
                ),
            });
        }
        offset += n as u64;
        let fresh_ascii = fresh.is_ascii();
        non_ascii |= !fresh_ascii;
        let chunk_len = carry + n;
        carry = 0;
        // ASCII after a complete sequence is valid UTF-8: nothing to check.
        if valid_utf8 && !(fresh_ascii && chunk_len == n) {
            match std::str::from_utf8(&buf[..chunk_len]) {
                Ok(_) => {}
                Err(e) if e.error_len().is_none() => {
                    let start = e.valid_up_to();
                    buf.copy_within(start..chunk_len, 0);
                    carry = chunk_len - start;
                }
                Err(_) => valid_utf8 = false,
            }
        }
    }
    Ok(match bom_encoding {
        Some(encoding) => encoding,
        None if valid_utf8 && non_ascii => TextEncoding::Utf8 { bom: false },
        None => TextEncoding::Windows1252,
    })
}

/// Reads the first record without parsing fields and counts the candidate delimiters outside quotes.
fn sniff_delimiter(stream: &mut ByteStream, limit: usize) -> io::Result<u8> {
    const CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];
    let mut counts = [0usize; 4];
    let mut in_quotes = false;
    let mut seen = 0usize;
    'outer: loop {
        let buf = stream.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        for &byte in buf {
            seen += 1;
            if byte == b'"' {
                in_quotes = !in_quotes;
            } else if !in_quotes {
                if byte == b'\r' || byte == b'\n' {
                    break 'outer;
                }
                if let Some(k) = CANDIDATES.iter().position(|&c| c == byte) {
                    counts[k] += 1;
                }
            }
            if seen > limit {
                break 'outer;
            }
        }
        let n = buf.len();
        stream.consume(n);
    }
    let mut best = 0;
    for k in 1..CANDIDATES.len() {
        if counts[k] > counts[best] {
            best = k;
        }
    }
    Ok(CANDIDATES[best])
}

/// Why the scanner stopped.
enum ScanError {
    Io(io::Error),
    RecordTooLarge,
    TooManyFields,
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScanState {
    FieldStart,
    Unquoted,
    Quoted,
    /// A `"` seen inside a quoted field: either the closing quote or the first half of `""`.
    QuoteInQuoted,
    /// A CR ended the record; an LF may follow.
    AfterCr,
}

/// The record scanner over an ASCII-compatible byte stream.
struct Scanner {
    input: ByteStream,
    delimiter: u8,
    limit: usize,
    encoding: TextEncoding,
    next_index: u64,
}

impl Scanner {
    /// Scans the next record into `record`, reusing its buffers. `false` at the end of the file.
    ///
    /// Byte by byte where the state can change; inside a quoted field it jumps to the next `"`, inside an
    /// unquoted field to the next delimiter or line break (memchr), which is where most of the bytes are.
    fn next_into(&mut self, record: &mut Record) -> Result<bool, ScanError> {
        let delimiter = self.delimiter;
        let raw = &mut record.raw;
        let fields = &mut record.fields;
        raw.clear();
        fields.clear();
        let mut state = ScanState::FieldStart;
        let mut field_start = 0usize;
        let mut content_len: Option<usize> = None;
        let mut terminator: Option<LineEnding> = None;
        let mut done = false;

        while !done {
            let buf = self.input.fill_buf()?;
            if buf.is_empty() {
                // End of file.
                let end = raw.len();
                match state {
                    ScanState::FieldStart => {
                        if end == 0 {
                            return Ok(false);
                        }
                        fields.push(end..end);
                    }
                    ScanState::Unquoted | ScanState::Quoted | ScanState::QuoteInQuoted => {
                        fields.push(field_start..end);
                    }
                    ScanState::AfterCr => terminator = Some(LineEnding::Cr),
                }
                break;
            }
            let base = raw.len();
            let len = buf.len();
            let mut used = 0usize;
            while used < len {
                let byte = buf[used];
                let pos = base + used;
                match state {
                    // A line break outside quotes ends the record, whatever field it ends.
                    ScanState::FieldStart | ScanState::Unquoted | ScanState::QuoteInQuoted
                        if byte == b'\r' || byte == b'\n' =>
                    {
                        if state != ScanState::FieldStart {
                            fields.push(field_start..pos);
                        } else if pos > 0 {
                            // `a,<EOL>` ends an empty last field; an empty line has no field at all.
                            fields.push(pos..pos);
                        }
                        content_len = Some(pos);
                        if byte == b'\n' {
                            terminator = Some(LineEnding::Lf);
                            used += 1;
                            done = true;
                            break;
                        }
                        state = ScanState::AfterCr;
                    }
                    ScanState::FieldStart if byte == b'"' => {
                        field_start = pos;
                        state = ScanState::Quoted;
                    }
                    ScanState::QuoteInQuoted if byte == b'"' => state = ScanState::Quoted,
                    ScanState::FieldStart | ScanState::Unquoted | ScanState::QuoteInQuoted => {
                        if state == ScanState::FieldStart {
                            field_start = pos;
                        }
                        if byte == delimiter {
                            fields.push(field_start..pos);
                            state = ScanState::FieldStart;
                        } else {
                            state = ScanState::Unquoted;
                            used = skip_unquoted(buf, used + 1, delimiter);
                            continue;
                        }
                    }
                    ScanState::Quoted => {
                        if byte == b'"' {
                            state = ScanState::QuoteInQuoted;
                        } else {
                            used = skip_quoted(buf, used + 1);
                            continue;
                        }
                    }
                    ScanState::AfterCr => {
                        if byte == b'\n' {
                            terminator = Some(LineEnding::CrLf);
                            used += 1;
                        } else {
                            terminator = Some(LineEnding::Cr);
                        }
                        done = true;
                        break;
                    }
                }
                used += 1;
            }
            raw.extend_from_slice(&buf[..used]);
            self.input.consume(used);
            if raw.len() > self.limit {
                return Err(ScanError::RecordTooLarge);
            }
            if fields.len() > MAX_COLS as usize {
                return Err(ScanError::TooManyFields);
            }
        }
        if fields.len() > MAX_COLS as usize {
            return Err(ScanError::TooManyFields);
        }
        record.content_len = content_len.unwrap_or(raw.len());
        record.unclosed_quote = terminator.is_none() && state == ScanState::Quoted;
        record.terminator = terminator;
        record.encoding = self.encoding;
        record.index = self.next_index;
        self.next_index += 1;
        Ok(true)
    }
}

/// Inside an unquoted field: the position of the next delimiter or line-break byte at or after `from` (the end
/// of `buf` when there is none in it).
fn skip_unquoted(buf: &[u8], from: usize, delimiter: u8) -> usize {
    let stop = |b: &u8| *b == delimiter || *b == b'\r' || *b == b'\n';
    // Most fields are short: a plain loop over the first bytes beats the set-up of a vectorised search.
    let near = &buf[from..buf.len().min(from + SHORT_FIELD)];
    if let Some(at) = near.iter().position(stop) {
        return from + at;
    }
    let from = from + near.len();
    memchr::memchr3(delimiter, b'\r', b'\n', &buf[from..]).map_or(buf.len(), |at| from + at)
}

/// Inside a quoted field: the position of the next `"` at or after `from` (the end of `buf` when there is
/// none in it).
fn skip_quoted(buf: &[u8], from: usize) -> usize {
    let near = &buf[from..buf.len().min(from + SHORT_FIELD)];
    if let Some(at) = near.iter().position(|&b| b == b'"') {
        return from + at;
    }
    let from = from + near.len();
    memchr::memchr(b'"', &buf[from..]).map_or(buf.len(), |at| from + at)
}

/// Bytes searched one by one before the scanner hands a field over to memchr.
const SHORT_FIELD: usize = 16;

/// A streaming reader of one CSV file.
pub struct CsvReader {
    path: PathBuf,
    dialect: Dialect,
    scanner: Scanner,
    /// The first record, read while sniffing the dialect and returned by the first `next_record`.
    peeked: Option<Record>,
    /// An earlier read failed: the position in the file is no longer trustworthy, so reading stops.
    failed: bool,
}

impl CsvReader {
    /// Opens a CSV file: checks its size, detects its encoding and dialect. Records are limited to
    /// [`DEFAULT_RECORD_LIMIT`] bytes.
    pub fn open(path: &Path) -> Result<CsvReader, WorkbookError> {
        CsvReader::open_with_limit(path, DEFAULT_RECORD_LIMIT)
    }

    /// As [`CsvReader::open`], with a different largest record size in bytes.
    pub fn open_with_limit(path: &Path, record_limit: usize) -> Result<CsvReader, WorkbookError> {
        let size = check_input_file(path)?;
        let encoding = detect_encoding(path, size)?;
        let mut sniff_stream = open_stream(path, encoding)?;
        let delimiter = sniff_delimiter(&mut sniff_stream, record_limit).map_err(|e| read_error(path, e))?;
        drop(sniff_stream);
        let scanner = Scanner {
            input: open_stream(path, encoding)?,
            delimiter,
            limit: record_limit,
            encoding,
            next_index: 0,
        };
        let mut reader = CsvReader {
            path: path.to_path_buf(),
            dialect: Dialect { encoding, delimiter, quoting: Quoting::Always, line_ending: LineEnding::CrLf },
            scanner,
            peeked: None,
            failed: false,
        };
        let mut first = Record::empty();
        if !reader.read_next(&mut first)? {
            // Only possible for a UTF-16 file whose content decodes to nothing.
            return Err(WorkbookError::Corrupt { path: path.to_path_buf(), reason: "empty file".into() });
        }
        let all_quoted =
            (0..first.len()).all(|i| first.raw_field(i).is_some_and(|f| f.first() == Some(&b'"')));
        reader.dialect.quoting = if all_quoted { Quoting::Always } else { Quoting::Necessary };
        reader.dialect.line_ending = first.terminator().unwrap_or(LineEnding::CrLf);
        reader.peeked = Some(first);
        Ok(reader)
    }

    /// The detected encoding and dialect.
    pub fn dialect(&self) -> &Dialect {
        &self.dialect
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next record, `None` at the end of the file. After an error every later call fails too (reading
    /// never silently resumes in the middle of a broken record).
    pub fn next_record(&mut self) -> Result<Option<Record>, WorkbookError> {
        let mut record = Record::empty();
        Ok(self.read_into(&mut record)?.then_some(record))
    }

    /// [`CsvReader::next_record`] into `record`, reusing its buffers (no allocation per record once they
    /// have grown): `false` at the end of the file, and `record` is then unspecified.
    pub fn read_into(&mut self, record: &mut Record) -> Result<bool, WorkbookError> {
        if let Some(first) = self.peeked.take() {
            *record = first;
            return Ok(true);
        }
        if self.failed {
            return Err(WorkbookError::Corrupt {
                path: self.path.clone(),
                reason: "reading stopped after an earlier error".into(),
            });
        }
        let result = self.read_next(record);
        self.failed = result.is_err();
        result
    }

    /// Starts reading again from the first record, keeping the detected dialect (for a second pass).
    pub fn rewind(&mut self) -> Result<(), WorkbookError> {
        self.scanner.input = open_stream(&self.path, self.dialect.encoding)?;
        self.scanner.next_index = 0;
        self.peeked = None;
        self.failed = false;
        Ok(())
    }

    fn read_next(&mut self, record: &mut Record) -> Result<bool, WorkbookError> {
        let index = self.scanner.next_index;
        let found = self.scanner.next_into(record).map_err(|e| match e {
            ScanError::Io(e) => read_error(&self.path, e),
            ScanError::RecordTooLarge => WorkbookError::TooLarge {
                path: self.path.clone(),
                reason: format!("record {} is larger than {} bytes", index + 1, self.scanner.limit),
            },
            ScanError::TooManyFields => WorkbookError::TooLarge {
                path: self.path.clone(),
                reason: format!("record {} has more than {} fields", index + 1, MAX_COLS),
            },
        })?;
        if found && record.has_unclosed_quote() {
            tracing::warn!(
                path = %self.path.display(),
                record = record.index() + 1,
                "unbalanced quote: the last field runs to the end of the file"
            );
        }
        Ok(found)
    }
}

/// Yields records; after the first error it ends (the error was the last item).
impl Iterator for CsvReader {
    type Item = Result<Record, WorkbookError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed && self.peeked.is_none() {
            return None;
        }
        self.next_record().transpose()
    }
}

/// Writes records in the dialect of the file they came from.
pub struct CsvWriter<W: Write> {
    out: W,
    dialect: Dialect,
    /// The last record written had no line terminator: one must be written before anything follows it.
    needs_terminator: bool,
    /// Scratch buffer for a record being assembled, in the internal encoding.
    line: Vec<u8>,
    /// Scratch buffer for UTF-16 output.
    encoded: Vec<u8>,
    /// Scratch list of patch indexes in column order.
    order: Vec<usize>,
    /// New fields written with `?` for a character the output encoding (Windows-1252) cannot represent.
    fields_with_replacements: u64,
}

impl<W: Write> CsvWriter<W> {
    /// Starts the output, writing the BOM of the dialect's encoding.
    pub fn new(mut out: W, dialect: &Dialect) -> io::Result<Self> {
        out.write_all(dialect.encoding.bom())?;
        Ok(CsvWriter {
            out,
            dialect: *dialect,
            needs_terminator: false,
            line: Vec::new(),
            encoded: Vec::new(),
            order: Vec::new(),
            fields_with_replacements: 0,
        })
    }

    /// Copies `record` exactly (its bytes, terminator included).
    pub fn copy_record(&mut self, record: &Record) -> io::Result<()> {
        self.write_record::<&str>(record, &[])
    }

    /// Copies `record`. Each patch `(column, text)` replaces that field, or extends a short record, which is
    /// padded with empty fields (quoted as the dialect says) up to the column. No patches → an exact copy of
    /// the input bytes; otherwise the bytes between patched fields are copied as they are, in one piece each.
    pub fn write_record<S: AsRef<str>>(&mut self, record: &Record, patches: &[(usize, S)]) -> io::Result<()> {
        self.terminate_previous()?;
        self.needs_terminator = record.terminator.is_none();
        if patches.is_empty() {
            return self.emit_raw(record.raw());
        }
        let width = patches.iter().map(|(column, _)| column + 1).max().unwrap_or(0).max(record.len());
        check_width(width)?;
        // Patch indexes in column order; of several patches for one column the last one given wins.
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend(0..patches.len());
        order.sort_by_key(|&i| (patches[i].0, std::cmp::Reverse(i)));
        order.dedup_by_key(|i| patches[*i].0);
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        // Bytes of `record` copied so far, and fields written so far once past the end of the record.
        let mut copied_to = 0usize;
        let mut past_end: Option<usize> = None;
        for &i in &order {
            let (column, text) = (patches[i].0, patches[i].1.as_ref());
            if column < record.len() {
                let span = &record.fields[column];
                line.extend_from_slice(&record.raw[copied_to..span.start]);
                self.push_text(&mut line, text);
                copied_to = span.end;
                continue;
            }
            let mut written = match past_end {
                Some(written) => written,
                None => {
                    line.extend_from_slice(&record.raw[copied_to..record.content_len]);
                    copied_to = record.content_len;
                    record.len()
                }
            };
            while written < column {
                if written > 0 {
                    line.push(self.dialect.delimiter);
                }
                self.push_text(&mut line, "");
                written += 1;
            }
            if column > 0 {
                line.push(self.dialect.delimiter);
            }
            self.push_text(&mut line, text);
            past_end = Some(column + 1);
        }
        if past_end.is_none() {
            line.extend_from_slice(&record.raw[copied_to..record.content_len]);
        }
        line.extend_from_slice(&record.raw[record.content_len..]);
        let result = self.emit_raw(&line);
        self.line = line;
        self.order = order;
        result
    }

    /// Appends a new row of `width` fields (more when a cell lies beyond), with `cells` given sparsely as
    /// `(column, text)`; it ends with the dialect's line terminator.
    pub fn write_new_row<S: AsRef<str>>(&mut self, width: usize, cells: &[(usize, S)]) -> io::Result<()> {
        self.terminate_previous()?;
        let width = cells.iter().map(|(column, _)| column + 1).max().unwrap_or(0).max(width);
        check_width(width)?;
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        for column in 0..width {
            if column > 0 {
                line.push(self.dialect.delimiter);
            }
            let text = cells.iter().rev().find(|(c, _)| *c == column).map(|(_, t)| t.as_ref()).unwrap_or("");
            self.push_text(&mut line, text);
        }
        line.extend_from_slice(self.dialect.line_ending.as_bytes());
        let result = self.emit_raw(&line);
        self.line = line;
        result
    }

    /// How many new fields so far held a character the output encoding cannot represent, written as `?`
    /// (only a Windows-1252 output has such characters).
    pub fn fields_with_replacements(&self) -> u64 {
        self.fields_with_replacements
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }

    fn terminate_previous(&mut self) -> io::Result<()> {
        if self.needs_terminator {
            self.needs_terminator = false;
            self.emit_raw(self.dialect.line_ending.as_bytes())?;
        }
        Ok(())
    }

    /// Appends new text as one field, cleaned, quoted and encoded for the dialect.
    fn push_text(&mut self, line: &mut Vec<u8>, text: &str) {
        // Fast path: plain ASCII text that needs no cleaning, escaping or (for `Necessary`) quoting is copied
        // as it is, since ASCII is the same in every internal encoding.
        let plain = text.bytes().all(|b| b.is_ascii() && !matches!(b, b'"' | b'\r' | b'\n' | b'\0'));
        if plain {
            match self.dialect.quoting {
                Quoting::Always => {
                    line.push(b'"');
                    line.extend_from_slice(text.as_bytes());
                    line.push(b'"');
                    return;
                }
                Quoting::Necessary
                    if !text.as_bytes().contains(&self.dialect.delimiter)
                        && !text.starts_with([' ', '\t'])
                        && !text.ends_with([' ', '\t']) =>
                {
                    line.extend_from_slice(text.as_bytes());
                    return;
                }
                Quoting::Necessary => {}
            }
        }
        let cleaned: Cow<'_, str> = if text.contains(['\r', '\n', '\0']) {
            Cow::Owned(text.replace(['\r', '\n', '\0'], " "))
        } else {
            Cow::Borrowed(text)
        };
        let delimiter = char::from(self.dialect.delimiter);
        let quote = match self.dialect.quoting {
            Quoting::Always => true,
            Quoting::Necessary => {
                cleaned.contains(delimiter)
                    || cleaned.contains('"')
                    || cleaned.starts_with([' ', '\t'])
                    || cleaned.ends_with([' ', '\t'])
            }
        };
        if quote {
            line.push(b'"');
        }
        let mut replaced = false;
        for ch in cleaned.chars() {
            if ch == '"' && quote {
                line.extend_from_slice(b"\"\"");
            } else {
                replaced |= !push_char(line, ch, self.dialect.encoding);
            }
        }
        if quote {
            line.push(b'"');
        }
        self.fields_with_replacements += u64::from(replaced);
    }

    /// Writes bytes in the internal encoding, re-encoding them for UTF-16 output.
    fn emit_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.dialect.encoding {
            TextEncoding::Utf8 { .. } | TextEncoding::Windows1252 => self.out.write_all(bytes),
            TextEncoding::Utf16Le | TextEncoding::Utf16Be => {
                let text = std::str::from_utf8(bytes).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("record is not valid UTF-8 text: {e}"))
                })?;
                let little = self.dialect.encoding == TextEncoding::Utf16Le;
                self.encoded.clear();
                for unit in text.encode_utf16() {
                    let bytes = if little { unit.to_le_bytes() } else { unit.to_be_bytes() };
                    self.encoded.extend_from_slice(&bytes);
                }
                self.out.write_all(&self.encoded)
            }
        }
    }
}

fn check_width(width: usize) -> io::Result<()> {
    if width > MAX_COLS as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a row of {width} cells is wider than the limit of {MAX_COLS} columns"),
        ));
    }
    Ok(())
}

/// Appends one character in the internal encoding: Windows-1252 (with `?` for what it cannot represent) or
/// UTF-8. False when the character was replaced by `?`.
fn push_char(line: &mut Vec<u8>, ch: char, encoding: TextEncoding) -> bool {
    if ch.is_ascii() {
        line.push(ch as u8);
        return true;
    }
    let mut utf8 = [0u8; 4];
    let utf8 = ch.encode_utf8(&mut utf8);
    if encoding.internal_is_1252() {
        let (bytes, _, unmappable) = WINDOWS_1252.encode(utf8);
        if unmappable || bytes.len() != 1 {
            line.push(b'?');
            return false;
        }
        line.extend_from_slice(&bytes);
    } else {
        line.extend_from_slice(utf8.as_bytes());
    }
    true
}

/// Makes text safe from being read as a spreadsheet formula: control characters (C0, DEL, C1; TAB, CR and
/// LF included) become spaces (see [`replace_control_chars`]), then text whose first non-blank character is
/// `=`, `+`, `-` or `@`, or that started with TAB or CR, gets a leading `'`. Leading blanks do not hide a formula: `" =1+2"` is neutralised
/// too, because some spreadsheet programs trim a cell before deciding it is a formula.
pub fn neutralize_formula(text: &str) -> Cow<'_, str> {
    let cleaned = replace_control_chars(text);
    if text.starts_with(['\t', '\r']) || cleaned.trim_start().starts_with(['=', '+', '-', '@']) {
        Cow::Owned(format!("'{cleaned}"))
    } else {
        cleaned
    }
}

/// Replaces every control character (C0 including TAB/CR/LF/NUL, DEL, C1) with a space: API text must not
/// carry terminal escapes, bells or record separators into a cell.
pub fn replace_control_chars(text: &str) -> Cow<'_, str> {
    // Printable ASCII (the usual case) has no control character: one quick pass over the bytes.
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Cow::Borrowed(text);
    }
    if text.contains(char::is_control) {
        Cow::Owned(text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect())
    } else {
        Cow::Borrowed(text)
    }
}

/// Reads a whole CSV file into the common model (every non-empty field a [`Cell::Text`], empty fields
/// [`Cell::Empty`]), with its dialect. For small files and tests; large files should stream with
/// [`CsvReader`]. The sheet is named after the file stem.
pub fn read_sheet(path: &Path) -> Result<(Dialect, Sheet), WorkbookError> {
    let mut reader = CsvReader::open(path)?;
    let mut sheet = Sheet {
        name: path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        ..Sheet::default()
    };
    while let Some(record) = reader.next_record()? {
        let row = record
            .fields()
            .map(|value| if value.is_empty() { Cell::Empty } else { Cell::Text(value.into_owned()) })
            .collect();
        sheet.push_row(row);
    }
    Ok((*reader.dialect(), sheet))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patching rule written the slow, obvious way (every column in turn): the reference the writer's
    /// span-copying implementation is checked against.
    fn reference_patch(dialect: &Dialect, record: &Record, patches: &[(usize, String)]) -> Vec<u8> {
        let mut writer = CsvWriter::new(Vec::new(), dialect).expect("writer");
        let width = patches.iter().map(|(c, _)| c + 1).max().unwrap_or(0).max(record.len());
        let mut line = Vec::new();
        for column in 0..width {
            if column > 0 {
                line.push(dialect.delimiter);
            }
            if let Some((_, text)) = patches.iter().rev().find(|(c, _)| *c == column) {
                writer.push_text(&mut line, text);
            } else if let Some(raw) = record.raw_field(column) {
                line.extend_from_slice(raw);
            } else {
                writer.push_text(&mut line, "");
            }
        }
        line.extend_from_slice(&record.raw[record.content_len..]);
        line
    }

    #[test]
    fn patched_records_match_the_per_column_reference() {
        let mut rng = fastrand::Rng::with_seed(7);
        let pieces = [
            "",
            "a",
            " ",
            "\"q\"\"x\"",
            "x,y",
            "\u{e9}t\u{e9}",
            "\"\"",
            "  pad ",
            "\"open\"tail",
            "\u{a0}",
            // Quoted values starting with a quote, a space, a no-break space, a tab; a lone quote.
            "\"\"\"x\"",
            "\"\"\"\"",
            "\" a\"",
            "\"\u{a0}\"",
            "\"\t\"",
            "\"\u{e9}\"",
        ];
        let texts = ["", "new", "with,comma", "quote\"d", " lead", "caf\u{e9}", "\u{4e2d}", "a\r\nb"];
        for case in 0..3000 {
            let delimiter = [b',', b';', b'\t'][case % 3];
            let quoting = if case % 2 == 0 { Quoting::Always } else { Quoting::Necessary };
            let encoding =
                if case % 5 == 0 { TextEncoding::Utf8 { bom: false } } else { TextEncoding::Windows1252 };
            let dialect = Dialect { encoding, delimiter, quoting, line_ending: LineEnding::CrLf };
            let fields = rng.usize(0..6);
            let mut text = String::new();
            for i in 0..fields {
                if i > 0 {
                    text.push(char::from(delimiter));
                }
                text.push_str(pieces[rng.usize(0..pieces.len())]);
            }
            text.push_str(["\r\n", "\n", ""][rng.usize(0..3)]);
            let bytes = if encoding.internal_is_1252() {
                WINDOWS_1252.encode(&text).0.into_owned()
            } else {
                text.into_bytes()
            };
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("r.csv");
            std::fs::write(&path, [b"h\r\n".as_slice(), &bytes].concat()).expect("write");
            let mut scanner = Scanner {
                input: open_stream(&path, encoding).expect("open"),
                delimiter,
                limit: DEFAULT_RECORD_LIMIT,
                encoding,
                next_index: 0,
            };
            let mut record = Record::empty();
            assert!(scanner.next_into(&mut record).is_ok_and(|found| found));
            if !scanner.next_into(&mut record).is_ok_and(|found| found) {
                continue;
            }
            let patches: Vec<(usize, String)> = (0..rng.usize(0..5))
                .map(|_| (rng.usize(0..8), texts[rng.usize(0..texts.len())].to_string()))
                .collect();
            let mut writer = CsvWriter::new(Vec::new(), &dialect).expect("writer");
            writer.write_record(&record, &patches).expect("write");
            let written = writer.finish().expect("finish");
            let expected = [encoding.bom().to_vec(), reference_patch(&dialect, &record, &patches)].concat();
            assert_eq!(
                written,
                expected,
                "case {case}: {:?} with {patches:?}",
                String::from_utf8_lossy(&bytes)
            );
            for column in 0..8 {
                assert_eq!(record.is_blank(column), record.field(column).trim().is_empty(), "case {case}");
            }
        }
    }

    #[test]
    fn ascii_trimmed_is_what_trim_removes() {
        for byte in 0u8..128 {
            let text = char::from(byte).to_string();
            assert_eq!(is_ascii_trimmed(byte), text.trim().is_empty(), "byte {byte:#04x}");
        }
    }

    #[test]
    fn unquote_handles_escapes_and_trailing_text() {
        assert_eq!(unquote(b"abc").as_ref(), b"abc");
        assert_eq!(unquote(b"\"abc\"").as_ref(), b"abc");
        assert_eq!(unquote(b"\"a\"\"b\"").as_ref(), b"a\"b");
        assert_eq!(unquote(b"\"ab\"cd").as_ref(), b"abcd");
        assert_eq!(unquote(b"\"open").as_ref(), b"open");
        assert_eq!(unquote(b"\"").as_ref(), b"");
        assert_eq!(unquote(b"\"\"").as_ref(), b"");
        assert_eq!(unquote(b"a\"b").as_ref(), b"a\"b");
    }

    #[test]
    fn neutralize_replaces_controls_and_sees_through_leading_blanks() {
        assert_eq!(neutralize_formula("=1+2"), "'=1+2");
        assert_eq!(neutralize_formula("\t=1+2"), "' =1+2");
        assert_eq!(neutralize_formula("\u{1}=1+2"), "' =1+2");
        assert_eq!(neutralize_formula("  @SUM(A1)"), "'  @SUM(A1)");
        assert_eq!(neutralize_formula("a\u{0}b\u{7}c\u{1b}[31m\u{7f}\u{85}"), "a b c [31m  ");
        assert_eq!(neutralize_formula("plain ^ text"), "plain ^ text");
        assert!(matches!(neutralize_formula("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn new_text_in_1252_uses_question_marks() {
        let mut line = Vec::new();
        let kept: Vec<bool> =
            "é€😀ü".chars().map(|ch| push_char(&mut line, ch, TextEncoding::Windows1252)).collect();
        assert_eq!(line, b"\xE9\x80?\xFC");
        assert_eq!(kept, [true, true, false, true]);
    }
}
