//! Fuzz target: arbitrary bytes as an `.xlsx` file through `read_workbook` (zip checks, calamine, styles).
//! Never a panic or abort; every failure must be a `WorkbookError`. Accepted workbooks are written back.
//!
//! `workbook::xlsx` runs calamine under `catch_unwind` and turns a reader panic into `Corrupt` (calamine 0.38
//! panics on some malformed CFB files). libfuzzer-sys's panic hook would abort on such a *caught* panic, so
//! the hook is replaced by a silent one: a panic that is not caught still unwinds out of this closure, and
//! libfuzzer-sys aborts on it (a finding), as it should.

#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use vttl_seclytics::workbook::xlsx::{Limits, read_workbook_with_limits, write_workbook};

static QUIET_HOOK: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    QUIET_HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Ok(mut file) = tempfile::Builder::new().suffix(".xlsx").tempfile() else { return };
    if file.write_all(data).and_then(|_| file.flush()).is_err() {
        return;
    }
    // Small limits keep each execution fast and bounded (the real limits are tested in tests/hostile.rs).
    let limits = Limits {
        max_sheet_cells: 100_000,
        max_part_bytes: 8 << 20,
        max_total_xml_bytes: 16 << 20,
        max_text_bytes: 16 << 20,
        ..Limits::default()
    };
    if let Ok(book) = read_workbook_with_limits(file.path(), &limits) {
        let _ = write_workbook(&book, std::io::Cursor::new(Vec::new()), file.path());
    }
});
