//! Fuzz target: arbitrary bytes as an `.xlsx` file through `read_workbook` (zip checks, calamine, styles).
//! Never a panic or abort; every failure must be a `WorkbookError`. Accepted workbooks are written back.

#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use vttl_seclytics::workbook::xlsx::{Limits, read_workbook_with_limits, write_workbook};

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::Builder::new().suffix(".xlsx").tempfile() else { return };
    if file.write_all(data).and_then(|_| file.flush()).is_err() {
        return;
    }
    // Small limits keep each execution fast and bounded (the real limits are tested in tests/hostile.rs).
    let limits = Limits { max_sheet_cells: 100_000, max_part_bytes: 8 << 20, max_total_xml_bytes: 16 << 20 };
    if let Ok(book) = read_workbook_with_limits(file.path(), &limits) {
        let _ = write_workbook(&book, std::io::Cursor::new(Vec::new()), file.path());
    }
});
