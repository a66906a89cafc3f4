//! Fuzz target: arbitrary bytes as a `.csv` file through `CsvReader`, then written back with `CsvWriter`.
//! Never a panic; when the whole file was accepted, writing every record back unpatched must reproduce the
//! input byte for byte (the lossless promise of SPEC §3), and writing it with a patch must not fail. Every
//! field's `is_blank` (the fill rule's "empty", with its shortcut on the first byte) must agree with its
//! decoded value trimmed.

#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use vttl_seclytics::workbook::csv::{CsvReader, CsvWriter, neutralize_formula};

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::Builder::new().suffix(".csv").tempfile() else { return };
    if file.write_all(data).and_then(|_| file.flush()).is_err() {
        return;
    }
    let Ok(mut reader) = CsvReader::open(file.path()) else { return };
    let dialect = *reader.dialect();
    let mut records = Vec::new();
    loop {
        match reader.next_record() {
            Ok(Some(record)) => records.push(record),
            Ok(None) => break,
            Err(_) => return,
        }
    }
    for record in &records {
        for column in 0..=record.len() {
            assert_eq!(record.is_blank(column), record.field(column).trim().is_empty(), "column {column}");
        }
    }
    let Ok(mut writer) = CsvWriter::new(Vec::new(), &dialect) else { return };
    for record in &records {
        writer.copy_record(record).expect("an accepted record can be written back");
    }
    let copy = writer.finish().expect("finish");
    assert!(copy == data, "round trip changed the bytes: {:?} -> {:?}", data, copy);

    // Patched: fill column 1 (or extend) with hostile text; must produce a readable file of as many records.
    let Ok(mut writer) = CsvWriter::new(Vec::new(), &dialect) else { return };
    let patch = vec![(1usize, neutralize_formula("=1+2\r\n\"x\",\u{1}").into_owned())];
    for record in &records {
        writer.write_record(record, &patch).expect("a patched record can be written");
    }
    let _ = writer.finish().expect("finish");
});
