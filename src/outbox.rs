//! The outbox: atomic output files, Seclytic logs, the report and the error log (SPEC §7).
