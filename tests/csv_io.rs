//! Integration tests of the lossless CSV reader and writer (`vttl_seclytics::workbook::csv`): real files in a
//! temporary directory, the `csv` crate as an oracle for decoded values, byte-for-byte comparisons of output.

use std::path::{Path, PathBuf};

use vttl_seclytics::vttl::ColumnMap;
use vttl_seclytics::workbook::WorkbookError;
use vttl_seclytics::workbook::csv::{
    CsvReader, CsvWriter, Dialect, LineEnding, Quoting, Record, TextEncoding, neutralize_formula, read_sheet,
};

fn write_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path
}

fn read_all(path: &Path) -> (Dialect, Vec<Record>) {
    let mut reader = CsvReader::open(path).expect("open");
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().expect("record") {
        records.push(record);
    }
    (*reader.dialect(), records)
}

fn values(records: &[Record]) -> Vec<Vec<String>> {
    records.iter().map(|r| r.fields().map(|f| f.into_owned()).collect()).collect()
}

/// Reads the file and writes every record back, each with the patches `patch(record index)` gives, then the
/// extra rows; returns the output bytes.
fn rewrite(
    path: &Path,
    patch: impl Fn(u64) -> Vec<(usize, String)>,
    new_rows: &[(usize, Vec<(usize, String)>)],
) -> Vec<u8> {
    let mut reader = CsvReader::open(path).expect("open");
    let dialect = *reader.dialect();
    let mut writer = CsvWriter::new(Vec::new(), &dialect).expect("writer");
    while let Some(record) = reader.next_record().expect("record") {
        writer.write_record(&record, &patch(record.index())).expect("write record");
    }
    for (width, cells) in new_rows {
        writer.write_new_row(*width, cells).expect("write new row");
    }
    writer.finish().expect("finish")
}

fn copy_unchanged(path: &Path) -> Vec<u8> {
    rewrite(path, |_| Vec::new(), &[])
}

fn utf16(text: &str, little: bool) -> Vec<u8> {
    let mut bytes = if little { vec![0xFF, 0xFE] } else { vec![0xFE, 0xFF] };
    for unit in text.encode_utf16() {
        bytes.extend_from_slice(&if little { unit.to_le_bytes() } else { unit.to_be_bytes() });
    }
    bytes
}

/// Decoded records according to the `csv` crate (flexible, no headers), from UTF-8 bytes.
fn oracle(utf8: &[u8]) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(utf8);
    reader
        .byte_records()
        .map(|r| {
            let r = r.expect("oracle record");
            r.iter().map(|f| String::from_utf8(f.to_vec()).expect("utf8 field")).collect()
        })
        .collect()
}

const VTTL_HEADER: &str =
    "\"Scanned Item\",\"VT Hit Count\",\"Seclytics Reputation and Reason\",\"WHOIS\"\r\n";

#[test]
fn windows_1252_with_every_high_byte_round_trips_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = VTTL_HEADER.as_bytes().to_vec();
    // One field holding every byte 0x80..=0xFF, including the five WHATWG-undefined ones.
    bytes.extend_from_slice(b"\"1.2.3.4\",\"");
    bytes.extend((0x80u8..=0xFF).collect::<Vec<_>>());
    bytes.extend_from_slice(b"\",\"\",\"AS1 \x81\x8D\x8F\x90\x9D caf\xE9\"\r\n");
    bytes.extend_from_slice(b"\"example.com\",\"3\",\"\",\"\"\r\n");
    let path = write_file(&dir, "w1252.csv", &bytes);

    let (dialect, records) = read_all(&path);
    assert_eq!(dialect.encoding, TextEncoding::Windows1252);
    assert_eq!(dialect.quoting, Quoting::Always);
    assert_eq!(dialect.line_ending, LineEnding::CrLf);
    assert_eq!(dialect.delimiter, b',');
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].field(3), "AS1 \u{81}\u{8D}\u{8F}\u{90}\u{9D} café");
    let high = records[1].field(1);
    assert_eq!(high.chars().count(), 128);
    assert!(high.starts_with('€'));
    assert!(high.ends_with('ÿ'));
    assert_eq!(copy_unchanged(&path), bytes);
}

#[test]
fn utf8_with_and_without_bom_round_trip_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let body = "\"Scanned Item\",\"WHOIS\"\r\n\"bücher.de\",\"Ünïcödé ✓ 😀\"\r\n\"x\",\"\"\r\n";
    let plain = write_file(&dir, "plain.csv", body.as_bytes());
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(body.as_bytes());
    let bom = write_file(&dir, "bom.csv", &with_bom);

    let (dialect, records) = read_all(&plain);
    assert_eq!(dialect.encoding, TextEncoding::Utf8 { bom: false });
    assert_eq!(records[1].field(1), "Ünïcödé ✓ 😀");
    assert_eq!(copy_unchanged(&plain), body.as_bytes());

    let (dialect, records) = read_all(&bom);
    assert_eq!(dialect.encoding, TextEncoding::Utf8 { bom: true });
    // The BOM is not part of the first header cell.
    assert_eq!(records[0].field(0), "Scanned Item");
    assert_eq!(copy_unchanged(&bom), with_bom);
}

#[test]
fn pure_ascii_is_read_as_windows_1252() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "ascii.csv", b"\"Scanned Item\",\"WHOIS\"\r\n\"a.com\",\"\"\r\n");
    let (dialect, _) = read_all(&path);
    assert_eq!(dialect.encoding, TextEncoding::Windows1252);
    // New non-ASCII text therefore goes out in Windows-1252.
    let out = rewrite(&path, |i| if i == 1 { vec![(1, "café".to_string())] } else { vec![] }, &[]);
    assert_eq!(out, b"\"Scanned Item\",\"WHOIS\"\r\n\"a.com\",\"caf\xE9\"\r\n");
}

#[test]
fn utf16_le_and_be_with_bom_round_trip_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\"Scanned Item\",\"WHOIS\"\r\n\"例え.jp\",\"Ünïcödé 😀, \"\"quoted\"\"\"\r\n\"b.com\",\"\"";
    for little in [true, false] {
        let bytes = utf16(text, little);
        let path = write_file(&dir, if little { "le.csv" } else { "be.csv" }, &bytes);
        let (dialect, records) = read_all(&path);
        let expected = if little { TextEncoding::Utf16Le } else { TextEncoding::Utf16Be };
        assert_eq!(dialect.encoding, expected);
        assert_eq!(dialect.quoting, Quoting::Always);
        assert_eq!(values(&records), oracle(text.as_bytes()));
        assert_eq!(records[1].field(1), "Ünïcödé 😀, \"quoted\"");
        assert_eq!(records[2].terminator(), None);
        assert_eq!(copy_unchanged(&path), bytes);
    }
}

#[test]
fn line_endings_and_missing_final_terminator_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], LineEnding); 5] = [
        ("crlf.csv", b"\"a\",\"b\"\r\n\"1\",\"2\"\r\n", LineEnding::CrLf),
        ("lf.csv", b"\"a\",\"b\"\n\"1\",\"2\"\n", LineEnding::Lf),
        ("cr.csv", b"\"a\",\"b\"\r\"1\",\"2\"\r", LineEnding::Cr),
        ("noterm.csv", b"\"a\",\"b\"\r\n\"1\",\"2\"", LineEnding::CrLf),
        ("mixed.csv", b"a,b\n1,2\r\n3,4\r5,6\n\n7,8", LineEnding::Lf),
    ];
    for (name, bytes, ending) in cases {
        let path = write_file(&dir, name, bytes);
        let (dialect, records) = read_all(&path);
        assert_eq!(dialect.line_ending, ending, "{name}");
        assert_eq!(copy_unchanged(&path), bytes, "{name}");
        // Values agree with the csv crate (which skips empty lines; we keep them as zero-field records).
        let ours: Vec<Vec<String>> = values(&records).into_iter().filter(|r| !r.is_empty()).collect();
        assert_eq!(ours, oracle(bytes), "{name}");
    }
    let path = write_file(&dir, "blank.csv", b"a,b\n\n7,8");
    let (_, records) = read_all(&path);
    assert_eq!(records.len(), 3);
    assert!(records[1].is_empty());
    assert_eq!(records[1].field(0), "");
}

#[test]
fn quoted_and_unquoted_styles_with_embedded_delimiters_quotes_and_line_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let quoted: &[u8] =
        b"\"Scanned Item\",\"Notes\"\r\n\"a.com\",\"x, y\"\r\n\"b.com\",\"say \"\"hi\"\"\"\r\n\"c.com\",\"two\r\nlines\nand\rmore\"\r\n";
    let unquoted: &[u8] =
        b"Scanned Item,Notes\r\na.com,\"x, y\"\r\nb.com,plain \"inner\" quote\r\nc.com,\"multi\nline\"\r\n";
    for (name, bytes, quoting) in
        [("q.csv", quoted, Quoting::Always), ("u.csv", unquoted, Quoting::Necessary)]
    {
        let path = write_file(&dir, name, bytes);
        let (dialect, records) = read_all(&path);
        assert_eq!(dialect.quoting, quoting, "{name}");
        assert_eq!(records.len(), 4, "{name}");
        assert_eq!(values(&records), oracle(bytes), "{name}");
        assert_eq!(copy_unchanged(&path), bytes, "{name}");
    }
    let (_, records) = read_all(&write_file(&dir, "q2.csv", quoted));
    assert_eq!(records[1].field(1), "x, y");
    assert_eq!(records[2].field(1), "say \"hi\"");
    assert_eq!(records[3].field(1), "two\r\nlines\nand\rmore");
}

#[test]
fn short_rows_read_as_empty_trailing_cells() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "short.csv", b"\"Scanned Item\",\"A\",\"B\",\"C\"\r\n\"1.2.3.4\",\"x\"\r\n");
    let (_, records) = read_all(&path);
    assert_eq!(records[1].len(), 2);
    assert_eq!(records[1].field(1), "x");
    assert_eq!(records[1].field(2), "");
    assert_eq!(records[1].field(3), "");
    assert!(records[1].is_blank(3));
    let (_, sheet) = read_sheet(&path).unwrap();
    assert_eq!(sheet.rows[1].len(), 2);
    assert!(sheet.cell(1, 3).is_blank());
}

#[test]
fn patching_an_empty_field_changes_only_that_field() {
    let dir = tempfile::tempdir().unwrap();
    let before = b"\"Scanned Item\",\"VT\",\"Seclytics Reputation and Reason\",\"WHOIS\"\r\n\"1.2.3.4\",\"caf\xE9\",\"\",\"AS1\"\r\n\"5.6.7.8\",\"\",\"\",\"\"\r\n";
    let path = write_file(&dir, "patch.csv", before);
    let out =
        rewrite(&path, |i| if i == 1 { vec![(2, "malware; \"bad\"".to_string())] } else { vec![] }, &[]);
    let marker = b"\"1.2.3.4\",\"caf\xE9\",";
    let split = before.windows(marker.len()).position(|w| w == marker).unwrap() + marker.len();
    let mut expected = before[..split].to_vec();
    expected.extend_from_slice(b"\"malware; \"\"bad\"\"\"");
    expected.extend_from_slice(&before[split + 2..]);
    assert_eq!(out, expected);
    // And it reads back as the text we wrote.
    let patched = write_file(&dir, "patched.csv", &out);
    let (_, records) = read_all(&patched);
    assert_eq!(records[1].field(2), "malware; \"bad\"");
    assert_eq!(records[1].field(1), "café");
}

#[test]
fn patching_utf16_changes_only_that_field() {
    let dir = tempfile::tempdir().unwrap();
    let before = "\"Scanned Item\",\"WHOIS\"\r\n\"ü.de\",\"\"\r\n\"b.com\",\"x\"\r\n";
    let path = write_file(&dir, "p16.csv", &utf16(before, true));
    let out = rewrite(&path, |i| if i == 1 { vec![(1, "AS1 ✓".to_string())] } else { vec![] }, &[]);
    let after = before.replacen("\"ü.de\",\"\"", "\"ü.de\",\"AS1 ✓\"", 1);
    assert_eq!(out, utf16(&after, true));
}

#[test]
fn padding_a_short_row_pads_only_that_row() {
    let dir = tempfile::tempdir().unwrap();
    let before: &[u8] =
        b"\"Scanned Item\",\"A\",\"B\",\"Validation\"\r\n\"1.2.3.4\"\r\n\"5.6.7.8\",\"x\"\r\n";
    let path = write_file(&dir, "pad.csv", before);
    let out = rewrite(&path, |i| if i == 1 { vec![(3, "Whitelisted".to_string())] } else { vec![] }, &[]);
    let expected: &[u8] =
        b"\"Scanned Item\",\"A\",\"B\",\"Validation\"\r\n\"1.2.3.4\",\"\",\"\",\"Whitelisted\"\r\n\"5.6.7.8\",\"x\"\r\n";
    assert_eq!(out, expected);

    // Necessary quoting pads with bare empty fields and quotes only what needs it.
    let before: &[u8] = b"Scanned Item,A,B,Validation\n1.2.3.4\n";
    let path = write_file(&dir, "pad2.csv", before);
    let out = rewrite(&path, |i| if i == 1 { vec![(3, " a, b ".to_string())] } else { vec![] }, &[]);
    assert_eq!(out, b"Scanned Item,A,B,Validation\n1.2.3.4,,,\" a, b \"\n");
}

#[test]
fn header_cells_are_appended_with_write_record() {
    let dir = tempfile::tempdir().unwrap();
    let before: &[u8] = b"\"Scanned Item\",\"WHOIS\"\r\n\"a.com\",\"\"\r\n";
    let path = write_file(&dir, "hdr.csv", before);
    let out = rewrite(
        &path,
        |i| if i == 0 { vec![(2, "Validation".into()), (3, "Date First Seen".into())] } else { vec![] },
        &[],
    );
    assert_eq!(out, b"\"Scanned Item\",\"WHOIS\",\"Validation\",\"Date First Seen\"\r\n\"a.com\",\"\"\r\n");
}

#[test]
fn appended_rows_follow_with_and_without_a_final_terminator() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [(4usize, vec![(0usize, "9.9.9.9".to_string()), (3, "from pDNS".to_string())])];
    for (name, before) in [
        ("term.csv", b"\"Scanned Item\",\"A\",\"B\",\"C\"\r\n\"a.com\",\"\",\"\",\"\"\r\n".as_slice()),
        ("noterm.csv", b"\"Scanned Item\",\"A\",\"B\",\"C\"\r\n\"a.com\",\"\",\"\",\"\"".as_slice()),
    ] {
        let path = write_file(&dir, name, before);
        let out = rewrite(&path, |_| Vec::new(), &rows);
        let expected: &[u8] = b"\"Scanned Item\",\"A\",\"B\",\"C\"\r\n\"a.com\",\"\",\"\",\"\"\r\n\"9.9.9.9\",\"\",\"\",\"from pDNS\"\r\n";
        assert_eq!(out, expected, "{name}");
    }
    // UTF-16LE, LF, no final terminator, a cell beyond the width.
    let before = "\"Scanned Item\",\"A\"\n\"a.com\",\"\"";
    let path = write_file(&dir, "le.csv", &utf16(before, true));
    let out = rewrite(&path, |_| Vec::new(), &[(2, vec![(0, "ü.de".to_string()), (3, "x".to_string())])]);
    assert_eq!(out, utf16("\"Scanned Item\",\"A\"\n\"a.com\",\"\"\n\"ü.de\",\"\",\"\",\"x\"\n", true));
}

#[test]
fn new_text_is_cleaned_and_unrepresentable_1252_characters_become_question_marks() {
    let dir = tempfile::tempdir().unwrap();
    let before = b"\"Scanned Item\",\"WHOIS\"\r\n\"a.com\",\"\"\r\n";
    let path = write_file(&dir, "q.csv", before);
    let out = rewrite(
        &path,
        |i| if i == 1 { vec![(1, "Köln €5 日本 😀\r\nnext".to_string())] } else { vec![] },
        &[],
    );
    assert_eq!(out, b"\"Scanned Item\",\"WHOIS\"\r\n\"a.com\",\"K\xF6ln \x805 ?? ?  next\"\r\n");
}

#[test]
fn neutralize_formula_prefixes_dangerous_leading_characters() {
    for dangerous in ["=1+1", "+44 20", "-2", "@SUM(A1)", " =1", "=cmd|' /C calc'!A0"] {
        assert_eq!(neutralize_formula(dangerous), format!("'{dangerous}"));
    }
    // Control characters become spaces first; a formula behind them is still neutralised.
    for (dangerous, want) in [("\tx", "' x"), ("\rx", "' x"), ("\n=1", "' =1"), ("\u{1}@A1", "' @A1")] {
        assert_eq!(neutralize_formula(dangerous), want);
    }
    for safe in ["", "1.2.3.4", "a=b", "'=1", "malware"] {
        assert_eq!(neutralize_formula(safe), safe);
        assert!(matches!(neutralize_formula(safe), std::borrow::Cow::Borrowed(_)));
    }
}

#[test]
fn delimiter_is_sniffed_from_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], u8); 5] = [
        ("semi.csv", b"\"Scanned Item\";\"a,b\";\"c\"\r\n\"x\";\"y,z\";\"\"\r\n", b';'),
        ("tab.csv", b"Scanned Item\tA\tB\n1\t2\t3\n", b'\t'),
        ("pipe.csv", b"Scanned Item|A\n1|2\n", b'|'),
        ("comma_in_quotes.csv", b"\"a;b;c\",\"d\"\n", b','),
        ("single.csv", b"Scanned Item\n1.2.3.4\n", b','),
    ];
    for (name, bytes, delimiter) in cases {
        let path = write_file(&dir, name, bytes);
        let (dialect, records) = read_all(&path);
        assert_eq!(dialect.delimiter, delimiter, "{name}");
        assert_eq!(copy_unchanged(&path), bytes, "{name}");
        if name == "semi.csv" {
            assert_eq!(records[1].field(1), "y,z");
            assert_eq!(records[1].len(), 3);
        }
    }
}

#[test]
fn rewind_reads_the_same_records_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "r.csv", b"\"Scanned Item\"\r\n\"a.com\"\r\n\"b.com\"\r\n");
    let mut reader = CsvReader::open(&path).unwrap();
    let first: Vec<Record> = reader.by_ref().collect::<Result<_, _>>().unwrap();
    reader.rewind().unwrap();
    let second: Vec<Record> = reader.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first, second);
}

fn open_error(bytes: &[u8]) -> WorkbookError {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "bad.csv", bytes);
    open_error_at(&path)
}

/// Opens and reads the whole file, expecting an error (and no panic) on the way.
fn open_error_at(path: &Path) -> WorkbookError {
    let mut reader = match CsvReader::open(path) {
        Ok(reader) => reader,
        Err(e) => return e,
    };
    loop {
        match reader.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("expected an error reading {}", path.display()),
            Err(e) => return e,
        }
    }
}

#[test]
fn empty_files_are_corrupt() {
    for bytes in [b"".as_slice(), b"\xEF\xBB\xBF", b"\xFF\xFE", b"\xFE\xFF"] {
        match open_error(bytes) {
            WorkbookError::Corrupt { reason, .. } => assert_eq!(reason, "empty file"),
            other => panic!("{bytes:?}: unexpected {other:?}"),
        }
    }
}

#[test]
fn binary_junk_with_nul_bytes_is_an_encoding_error() {
    let mut junk = b"PK\x03\x04".to_vec();
    junk.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    junk.push(0);
    let error = open_error(&junk);
    assert_eq!(error.kind(), "encoding", "{error}");
    assert!(error.to_string().contains("NUL byte"), "{error}");
}

#[test]
fn malformed_utf16_is_an_encoding_error() {
    // Odd number of bytes after the BOM.
    let mut odd = utf16("\"Scanned Item\"\r\n\"a.com\"\r\n", true);
    odd.push(b'x');
    let error = open_error(&odd);
    assert_eq!(error.kind(), "encoding", "{error}");
    // A lone high surrogate in the middle of a UTF-16BE file.
    let mut lone = utf16("\"Scanned Item\"\r\n\"a", false);
    lone.extend_from_slice(&[0xD8, 0x00]);
    lone.extend_from_slice(&utf16("b\"\r\n", false)[2..]);
    let error = open_error(&lone);
    assert_eq!(error.kind(), "encoding", "{error}");
}

#[test]
fn a_csv_without_a_vttl_header_has_no_column_map() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "other.csv", b"name,age\r\nalice,3\r\n");
    let (_, sheet) = read_sheet(&path).unwrap();
    let header: Vec<String> = sheet.rows[0].iter().map(|c| c.to_text().into_owned()).collect();
    assert!(ColumnMap::from_header(&header).is_none());

    let path = write_file(&dir, "vttl.csv", VTTL_HEADER.as_bytes());
    let (_, sheet) = read_sheet(&path).unwrap();
    let header: Vec<String> = sheet.rows[0].iter().map(|c| c.to_text().into_owned()).collect();
    let map = ColumnMap::from_header(&header).expect("VTTL header");
    assert_eq!(map.indicator_column(), 0);
    assert_eq!(map.find("whois"), Some(3));
}

#[test]
fn an_unbalanced_quote_runs_to_the_end_and_still_copies_losslessly() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: &[u8] = b"\"Scanned Item\",\"A\"\r\n\"a.com\",\"open\r\nb.com,x\r\n";
    let path = write_file(&dir, "open.csv", bytes);
    let (_, records) = read_all(&path);
    assert_eq!(records.len(), 2);
    assert!(records[1].has_unclosed_quote());
    assert!(!records[0].has_unclosed_quote());
    assert_eq!(records[1].field(1), "open\r\nb.com,x\r\n");
    assert_eq!(records[1].terminator(), None);
    assert_eq!(values(&records), oracle(bytes));
    assert_eq!(copy_unchanged(&path), bytes);
    // Appending after it still terminates the record first.
    let out = rewrite(&path, |_| Vec::new(), &[(1, vec![(0, "z".to_string())])]);
    assert_eq!(out, [bytes, b"\r\n\"z\"\r\n".as_slice()].concat());
}

#[test]
fn a_record_beyond_the_limit_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"\"Scanned Item\",\"A\"\r\n\"a.com\",\"".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 3 << 20));
    bytes.extend_from_slice(b"\"\r\n");
    let path = write_file(&dir, "huge.csv", &bytes);
    let mut reader = CsvReader::open_with_limit(&path, 1 << 20).unwrap();
    assert!(reader.next_record().unwrap().is_some());
    let error = reader.next_record().unwrap_err();
    assert_eq!(error.kind(), "too_large", "{error}");
    // Reading does not resume in the middle of the broken record.
    assert!(reader.next_record().is_err());
    assert!(reader.next().is_none());
    // The first record alone can already be too big.
    let path = write_file(&dir, "huge_header.csv", &bytes[20..]);
    let error = CsvReader::open_with_limit(&path, 1 << 20).err().expect("too large");
    assert_eq!(error.kind(), "too_large", "{error}");
}

#[test]
fn a_ten_megabyte_cell_is_read_and_copied_with_the_default_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"\"Scanned Item\",\"A\"\r\n\"a.com\",\"".to_vec();
    bytes.extend((0..10 << 20).map(|i: u32| b'a' + (i % 26) as u8));
    bytes.extend_from_slice(b"\"\r\n");
    let path = write_file(&dir, "ten.csv", &bytes);
    let (_, records) = read_all(&path);
    assert_eq!(records[1].field(1).len(), 10 << 20);
    assert_eq!(copy_unchanged(&path), bytes);
}

#[test]
fn a_seventy_megabyte_field_is_too_large_with_the_default_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"\"Scanned Item\",\"A\"\r\n\"a.com\",\"".to_vec();
    bytes.extend(std::iter::repeat_n(b'z', 70 << 20));
    bytes.extend_from_slice(b"\"\r\n");
    let path = write_file(&dir, "seventy.csv", &bytes);
    drop(bytes);
    let error = open_error_at(&path);
    assert_eq!(error.kind(), "too_large", "{error}");
}

#[test]
fn too_many_fields_in_one_record_is_too_large() {
    let mut bytes = b"\"Scanned Item\"\r\n".to_vec();
    bytes.extend(std::iter::repeat_n(b',', 20_000));
    bytes.extend_from_slice(b"\r\n");
    let error = open_error(&bytes);
    assert_eq!(error.kind(), "too_large", "{error}");
}

#[test]
fn writer_refuses_absurd_columns() {
    let mut writer = CsvWriter::new(Vec::new(), &Dialect::default()).unwrap();
    assert!(writer.write_new_row(1, &[(1_000_000_000, "x".to_string())]).is_err());
    assert!(writer.write_new_row(2, &[(1, "ok".to_string())]).is_ok());
    assert_eq!(writer.finish().unwrap(), b"\"\",\"ok\"\r\n");
}

/// A random field value: VTTL-like text with the characters that stress a CSV scanner.
fn random_value(rng: &mut fastrand::Rng, ascii_1252_only: bool) -> String {
    const PIECES: [&str; 16] = [
        "a",
        "1.2.3.4",
        "example.com",
        ",",
        "\"",
        "\r\n",
        "\n",
        "\r",
        " ",
        ";",
        "^or^",
        "   ",
        "é",
        "€",
        "x",
        "|",
    ];
    const WIDE: [&str; 3] = ["日本", "😀", "ü"];
    let n = rng.usize(0..6);
    let mut value = String::new();
    for _ in 0..n {
        if !ascii_1252_only && rng.u8(0..8) == 0 {
            value.push_str(WIDE[rng.usize(0..WIDE.len())]);
        } else {
            value.push_str(PIECES[rng.usize(0..PIECES.len())]);
        }
    }
    value
}

/// Serialises records; a field that needs quotes is always quoted, others at random (or always).
fn serialise(
    rng: &mut fastrand::Rng,
    rows: &[Vec<String>],
    always: bool,
    ending: &str,
    final_term: bool,
) -> String {
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        for (j, value) in row.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let needs = value.is_empty() && row.len() == 1 || value.contains([',', '"', '\r', '\n']);
            if always || needs || rng.bool() {
                out.push('"');
                out.push_str(&value.replace('"', "\"\""));
                out.push('"');
            } else {
                out.push_str(value);
            }
        }
        if i + 1 < rows.len() || final_term {
            out.push_str(ending);
        }
    }
    out
}

#[test]
fn random_vttl_like_files_match_the_csv_oracle_and_round_trip_in_every_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5EC1_7715);
    for round in 0..300 {
        let only_1252 = round % 3 == 0;
        let width = rng.usize(1..8);
        // Row 0 is a plain header, as in every VTTL file (it decides the sniffed delimiter).
        let header: Vec<String> = (0..width).map(|i| format!("Column {i}")).collect();
        let rows: Vec<Vec<String>> = std::iter::once(header)
            .chain((0..rng.usize(0..12)).map(|_| {
                let len = if rng.u8(0..4) == 0 { rng.usize(1..=width) } else { width };
                (0..len).map(|_| random_value(&mut rng, only_1252)).collect()
            }))
            .collect();
        let ending = ["\r\n", "\n"][rng.usize(0..2)];
        let (always, final_term) = (rng.bool(), rng.bool());
        let text = serialise(&mut rng, &rows, always, ending, final_term);
        let expected = oracle(text.as_bytes());
        assert_eq!(expected, rows, "round {round}: the oracle disagrees with the generator");

        let mut encodings = vec![
            (TextEncoding::Utf16Le, utf16(&text, true)),
            (TextEncoding::Utf16Be, utf16(&text, false)),
            (TextEncoding::Utf8 { bom: true }, [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat()),
        ];
        if only_1252 {
            let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&text);
            assert!(!unmappable);
            encodings.push((TextEncoding::Windows1252, bytes.into_owned()));
        } else if !text.is_ascii() {
            encodings.push((TextEncoding::Utf8 { bom: false }, text.as_bytes().to_vec()));
        }
        for (encoding, bytes) in encodings {
            let path = write_file(&dir, "random.csv", &bytes);
            let (dialect, records) = read_all(&path);
            assert_eq!(dialect.encoding, encoding, "round {round}");
            assert_eq!(values(&records), expected, "round {round} {encoding:?}: {text:?}");
            assert_eq!(copy_unchanged(&path), bytes, "round {round} {encoding:?}");
        }
    }
}

/// A million VTTL rows stream through reader and writer unchanged. Ignored by default (it writes ~150 MB);
/// run with `cargo test --release --test csv_io -- --ignored`.
#[test]
#[ignore]
fn a_million_rows_stream_through_unchanged() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("million.csv");
    let mut expected = sha2::Sha256::new();
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut line = VTTL_HEADER.to_string();
        for i in 0..1_000_000u32 {
            std::io::Write::write_all(&mut file, line.as_bytes()).unwrap();
            expected.update(line.as_bytes());
            line = format!(
                "\"10.{}.{}.{}\",\"{}\",\"Seclytics: malware ^ botnet / c2, reason {i}\",\"\"\r\n",
                i >> 16,
                (i >> 8) & 0xFF,
                i & 0xFF,
                i % 70
            );
        }
        std::io::Write::write_all(&mut file, line.as_bytes()).unwrap();
        expected.update(line.as_bytes());
    }
    struct Hasher(sha2::Sha256, u64);
    impl std::io::Write for Hasher {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            self.1 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let started = std::time::Instant::now();
    let mut reader = CsvReader::open(&path).unwrap();
    let mut writer = CsvWriter::new(Hasher(sha2::Sha256::new(), 0), reader.dialect()).unwrap();
    let mut rows = 0u64;
    while let Some(record) = reader.next_record().unwrap() {
        assert!(!record.field(0).is_empty());
        writer.copy_record(&record).unwrap();
        rows += 1;
    }
    let hasher = writer.finish().unwrap();
    eprintln!("{rows} rows, {} bytes in {:?}", hasher.1, started.elapsed());
    assert_eq!(rows, 1_000_001);
    assert_eq!(hasher.0.finalize(), expected.finalize());
}

/// Reads and copies a file; `Ok(output)` or the error. Must never panic, whatever the bytes.
fn try_copy(path: &Path) -> Result<Vec<u8>, WorkbookError> {
    let mut reader = CsvReader::open(path)?;
    let mut writer = CsvWriter::new(Vec::new(), reader.dialect()).expect("writer");
    while let Some(record) = reader.next_record()? {
        for i in 0..record.len() + 1 {
            let _ = record.field(i);
        }
        writer.copy_record(&record).expect("write");
    }
    Ok(writer.finish().expect("finish"))
}

#[test]
fn arbitrary_bytes_never_panic_and_copy_unchanged_when_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(0xC5F_F022);
    const ALPHABET: &[u8] = b"\",;\t|\r\n a\x80\x81\xE9\xC3\xA9\xEF\xBB\xBF\xFF\xFE\xD8\x00";
    for round in 0..400 {
        let len = rng.usize(0..200);
        let mut bytes: Vec<u8> = match round % 4 {
            0 => Vec::new(),
            1 => vec![0xFF, 0xFE],
            2 => vec![0xFE, 0xFF],
            _ => vec![0xEF, 0xBB, 0xBF],
        };
        bytes.extend(
            (0..len).map(|_| if rng.bool() { ALPHABET[rng.usize(0..ALPHABET.len())] } else { rng.u8(..) }),
        );
        let path = write_file(&dir, "fuzz.csv", &bytes);
        match try_copy(&path) {
            Ok(out) => assert_eq!(out, bytes, "round {round}"),
            Err(error) => {
                let kind = error.kind();
                assert!(kind == "encoding" || kind == "corrupt", "round {round}: {error}");
                let utf16 = round % 4 == 1 || round % 4 == 2;
                if !utf16 {
                    // Outside UTF-16, only NUL bytes and emptiness are refused.
                    assert!(bytes.contains(&0) || bytes.len() <= 3, "round {round}: {error}");
                }
            }
        }
    }
}

#[test]
fn necessary_quoting_quotes_only_text_that_needs_it_and_bom_files_keep_their_bom() {
    let dir = tempfile::tempdir().unwrap();
    let before = "\u{FEFF}Scanned Item,WHOIS,Validation,Notes\r\nbücher.de,,,\r\n";
    let path = write_file(&dir, "n.csv", before.as_bytes());
    let out = rewrite(
        &path,
        |i| {
            if i == 1 {
                vec![
                    (1, "AS 1 \"Ü\"".to_string()),
                    (2, "plain text".to_string()),
                    (3, "trailing ".to_string()),
                ]
            } else {
                vec![]
            }
        },
        &[(2, vec![(0, "x;y".to_string()), (1, "a,b".to_string())])],
    );
    let expected = "\u{FEFF}Scanned Item,WHOIS,Validation,Notes\r\nbücher.de,\"AS 1 \"\"Ü\"\"\",plain text,\"trailing \"\r\nx;y,\"a,b\"\r\n";
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}
