//! vttl-seclytics: fills the empty SecLytics, WHOIS, Validation, Date First Seen and watch-list cells of VTTL
//! spreadsheets from the SecLytics threat-intelligence API, without ever changing a cell that already holds a
//! value.
//!
//! The modules follow the data, in the order a workbook travels through the program:
//!
//! * [`config`] — `vttl.ini` and the command line resolved into one validated [`config::Config`];
//! * [`workbook`] — lossless reading and writing of VTTL CSV and XLSX files;
//! * [`vttl`] — what VTTL's sheets mean: header names, modes, indicators;
//! * [`seclytics`] — the API client (rate limit, retries, cache, offline answers) and what a document says;
//! * [`enrich`] — the fill rules, passive-DNS rows, sinkholes and watch lists;
//! * [`outbox`] — atomic output, the Seclytic log files, the report and the error log;
//! * [`watch`] — the hot folder: pick-up, claims, recovery, `processed`/`failed`, shutdown;
//! * [`os`] — what file operations need on Windows beyond the standard library (long paths, attributes).
//!
//! The binary (`src/main.rs`) only parses arguments and maps errors to exit codes; everything else lives here
//! so tests can drive it directly.

pub mod cli;
pub mod config;
pub mod enrich;
pub mod error;
pub mod os;
pub mod outbox;
pub mod seclytics;
pub mod vttl;
pub mod watch;
pub mod workbook;
