//! Writes `samples/vttl-two-sheets.xlsx`, the shipped XLSX sample: a user-saved VTTL sheet ("Threat
//! Intelligence", IP/domain mode, frozen header row, set column widths, a number, a date and a formula cell),
//! a hash table on a second sheet, and a third sheet that is not a VTTL table and must come out unchanged.
//!
//! Run: `cargo run --example make_sample_xlsx` (only needed when the sample is to be changed).

use rust_xlsxwriter::{ExcelDateTime, Format, Formula, Workbook, XlsxError};

fn main() -> Result<(), XlsxError> {
    let mut book = Workbook::new();
    let date = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");

    let ti = book.add_worksheet().set_name("Threat Intelligence")?;
    let header = [
        "Scanned Item",
        "Country Name",
        "Country Code",
        "Creation Date",
        "Reverse DNS",
        "WHOIS",
        "IP Address",
        "Category",
        "Validation",
        "Keyword Watch List",
        "Sinkhole",
        "Cache",
        "IP Domain Watch List",
        "Detection Name Watch List",
        "URL Watch List",
        "Open Ports",
        "Seclytics Reputation and Reason",
        "Seclytics Associated File Metadata",
        "Seclytics File Count",
    ];
    for (c, h) in header.iter().enumerate() {
        ti.write_string(0, c as u16, *h)?;
    }
    ti.set_freeze_panes(1, 0)?;
    ti.set_column_width(0, 28)?;
    ti.set_column_width(16, 40)?;
    ti.write_string(1, 0, "203.0.113.45")?;
    ti.write_string(1, 1, "Netherlands")?;
    ti.write_number(1, 15, 443)?;
    ti.write_string(2, 0, "cdn-update.example.co.uk")?;
    ti.write_datetime_with_format(2, 3, ExcelDateTime::parse_from_str("2023-11-02 10:30:00")?, &date)?;
    ti.write_string(2, 7, "Already categorised")?;
    ti.write_string(3, 0, "login-portal.example.net")?;
    ti.write_string(4, 0, "198.51.100.53")?;
    ti.write_string(4, 5, "Example DNS (analyst note)")?;
    ti.write_boolean(4, 11, true)?;

    let hashes = book.add_worksheet().set_name("Hashes")?;
    for (c, h) in
        ["Hash", "Scan Date", "Common Name", "Date First Seen", "Seclytics File Associated Metadata"]
            .iter()
            .enumerate()
    {
        hashes.write_string(0, c as u16, *h)?;
    }
    hashes.set_freeze_panes(1, 0)?;
    hashes.write_string(1, 0, "6f1e2d3c4b5a69788796a5b4c3d2e1f0")?;
    hashes.write_string(2, 0, "77770000022222211333333444445555")?;
    hashes.write_string(3, 0, "5d0c8e2a4f6b1d3e7a9c0b2d4f6e8a1c3b5d7f9e0a2c4b6d8e1f3a5c7b9d0e2f")?;
    hashes.write_string(3, 2, "inv_0312.exe")?;

    let notes = book.add_worksheet().set_name("Notes")?;
    notes.write_string(0, 0, "Case notes (not a VTTL table: copied unchanged)")?;
    notes.write_string(1, 0, "Rows reviewed")?;
    notes.write_number(1, 1, 4)?;
    notes.write_string(2, 0, "Total")?;
    notes.write_formula(2, 1, Formula::new("=B2*2").set_result("8"))?;
    notes.write_string(3, 0, "Reviewed on")?;
    notes.write_datetime_with_format(3, 1, ExcelDateTime::parse_from_str("2026-12-01 09:00:00")?, &date)?;

    book.save("samples/vttl-two-sheets.xlsx")
}
