//! From one document, everything the enrichment engine needs (SPEC §4–§5), with no spreadsheet knowledge.
