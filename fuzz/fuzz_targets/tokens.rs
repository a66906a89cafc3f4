//! Fuzz target: arbitrary bytes as an API body through `parse_document`, then `extract` for an IP, a host and
//! a hash. Never a panic; the joined reputation cell never exceeds the cell limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vttl_seclytics::seclytics::model::parse_document;
use vttl_seclytics::seclytics::tokens::{extract, join_truncated};
use vttl_seclytics::vttl::Indicator;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else { return };
    let Ok(document) = parse_document(body) else { return };
    for item in ["192.0.2.1", "www.example.com", "6f1e2d3c4b5a69788796a5b4c3d2e1f0"] {
        let Some(indicator) = Indicator::classify(item) else { continue };
        let findings = extract(&indicator, &document);
        for tokens in [&findings.reputation, &findings.file_metadata] {
            let cell = join_truncated(tokens, "^", 8000);
            assert!(cell.chars().count() <= 8000, "cell of {} characters", cell.chars().count());
        }
    }
});
