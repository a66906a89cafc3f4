//! The enrichment of one workbook, from input file to outbox (SPEC §4–§7).
//!
//! For every workbook the steps are the same, whatever its format:
//!
//! 1. **Scan**: find each VTTL table (a sheet whose row 1 has `Scanned Item` or `Hash`), plan its columns
//!    ([`plan::TablePlan`]), and collect its distinct indicators, the domain rows that may take a passive-DNS IP,
//!    and the IP rows that want a reverse name.
//! 2. **Look up** every distinct indicator once through the shared [`Client`] (cache → offline/HTTP), turn each
//!    answer into [`plan::Facts`] (tokens, WHOIS, watch-list hits…), and collect the Seclytic log lines.
//! 3. **Discover**: the first passive-DNS answer of each domain row with an empty `IP Address` becomes a new row
//!    at the end of its sheet (routable, not already in the sheet, once), and is itself looked up via `/ips/`.
//! 4. **Reverse DNS** for the IPs whose `Reverse DNS`/`Sinkhole` cells are empty, in one bounded batch.
//! 5. **Write**: fill only empty cells, append the header cells and the rows, and rename the result into the
//!    outbox; then the logs and the report.
//!
//! CSV is streamed (`csv_stream.rs`): step 1 and step 5 each read the file once, record by record (step 1 with
//! the parsing on a thread of its own), and steps 2–4 run on a lookup thread between them, chunk by chunk, so
//! neither the file nor the API's answers are ever held whole in memory. XLSX is read once into the typed model
//! (calamine has no other way) and then looked up, filled and written at once (`xlsx_pipeline.rs`): a second
//! thread fetches and digests the next chunk while this one merges the previous and fills the rows it
//! completes, and a third writes those rows.

mod csv_stream;
pub mod plan;
pub mod rdns;
pub mod sinkholes;
mod stored;
pub mod watchlists;
mod xlsx_pipeline;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Config;
use crate::error::CriticalError;
use crate::outbox::{self, LogLines, SeclyticLog};
use crate::seclytics::client::{Answer, AnswerSource, Client};
use crate::seclytics::{model, tokens};
use crate::vttl::{Indicator, IndicatorKind};
use crate::workbook::{self, Cell, Format, WorkbookError, csv as csvio, xlsx};
use plan::{Facts, Fill, FillValue, IpKnowledge, RowCells, TablePlan};

/// Longest text we put into one cell (VTTL's `cellTruncateLength`).
pub use crate::seclytics::tokens::CELL_LIMIT;

/// Why one workbook could not be enriched.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// The run must stop (token refused, outbox not writable).
    #[error(transparent)]
    Critical(#[from] CriticalError),
    /// Only this file failed; `step` says where.
    #[error("{step}: {error}")]
    File { step: &'static str, error: WorkbookError },
}

/// What happened to one workbook: written next to the output as `<output>.report.json`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FileReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub unique_string: String,
    /// Data rows of the VTTL tables (header rows and appended rows not counted).
    pub rows: usize,
    pub tables: usize,
    /// Distinct indicators looked up, by kind (`ip`, `host`, `file`), appended IPs included.
    pub indicators: BTreeMap<String, usize>,
    /// Non-empty indicator cells that are neither an IP, a hash nor a host name.
    pub skipped_indicators: usize,
    pub api_requests: u64,
    pub cache_hits: usize,
    /// Answers fetched earlier by this process (for another workbook of the run, or an earlier file of a
    /// `watch` service) and reused without a request; not cache hits, as there may be no cache.
    pub reused_answers: usize,
    pub offline_answers: usize,
    pub not_found: usize,
    pub failed_lookups: usize,
    /// Cells filled, per column header (appended header cells not counted).
    pub cells_filled: BTreeMap<String, usize>,
    pub rows_appended: usize,
    pub log_files: Vec<String>,
    pub duration_ms: u64,
}

/// The long-lived state shared by every workbook of a run: configuration, the one API client (pool, rate
/// limiter, cache), the watch lists, the sinkhole data and the reverse resolver.
pub struct Enricher {
    config: Config,
    client: Client,
    lists: watchlists::WatchLists,
    sinkholes: sinkholes::Sinkholes,
    resolver: Option<rdns::ReverseResolver>,
    refresh: bool,
    /// What the digests this enricher keeps in the cache are made with ([`stored::derivation`]).
    derivation: i64,
    /// The bytes the watch lists were read from ([`watchlists::source_fingerprint`]).
    list_sources: [u8; 32],
    /// The bytes the sinkhole file was read from ([`watchlists::files_fingerprint`]).
    sinkhole_source: [u8; 32],
}

/// The lines a list file's warnings are reported with: `<file>:<line>: <message>`, or `<file>: <message>` for a
/// warning about the whole file (line 0, which no file has) — as [`watchlists::ListWarning`] displays itself.
fn warning_lines(warnings: &[watchlists::ListWarning]) -> impl Iterator<Item = String> + '_ {
    warnings.iter().map(ToString::to_string)
}

/// The sinkhole file, or an empty list when it cannot be read; with the warnings to report.
fn load_sinkholes(path: &Path) -> (sinkholes::Sinkholes, Vec<String>) {
    match sinkholes::Sinkholes::load(path) {
        Ok((sinkholes, warnings)) => (sinkholes, warning_lines(&warnings).collect()),
        Err(e) => (
            sinkholes::Sinkholes::empty(),
            vec![format!("cannot read sinkhole file {}: {e}", path.display())],
        ),
    }
}

/// Where an access token goes, said wherever a missing one is reported.
pub const NO_TOKEN_HINT: &str = "set `access_token` in the [seclytics] section of vttl.ini, or the SECLYTICS_ACCESS_TOKEN environment variable";

impl Enricher {
    /// Builds the shared state. Problems with watch lists or the sinkhole file are returned as warnings (they
    /// never stop a run); a client that cannot be built is critical.
    pub fn new(config: Config, refresh: bool) -> Result<(Enricher, Vec<String>), CriticalError> {
        let mut warnings = Vec::new();
        let client = Client::new(&config.seclytics)
            .map_err(|e| CriticalError::Other(format!("cannot start the SecLytics client: {e}")))?;
        // Taken before the lists are read: an edit in between makes the next comparison read them again.
        let list_sources = watchlists::source_fingerprint(&config.watchlists_dir);
        let (lists, list_warnings) =
            watchlists::WatchLists::load(&config.watchlists_dir, config.url_watchlist_regex);
        warnings.extend(warning_lines(&list_warnings));
        let sinkhole_source = watchlists::files_fingerprint([&config.sinkholes_file]);
        let (sinkholes, sinkhole_warnings) = load_sinkholes(&config.sinkholes_file);
        warnings.extend(sinkhole_warnings);
        let resolver = if config.reverse_dns {
            match rdns::ReverseResolver::new(config.seclytics.dns_server, config.seclytics.dns_timeout) {
                Ok((resolver, warning)) => {
                    warnings.extend(warning);
                    resolver.is_enabled().then_some(resolver)
                }
                Err(e) => {
                    warnings.push(format!("reverse DNS disabled: {e}"));
                    None
                }
            }
        } else {
            None
        };
        // What would otherwise only show in the results: answers that are not the API's, lookups that will all
        // be refused, watch-list columns that stay empty.
        match &config.seclytics.offline_dir {
            Some(dir) => warnings.push(format!(
                "offline mode: answers come only from the recorded bodies in {} (`offline_dir`); an indicator \
                 without one counts as not found, and its File Count is filled with 0",
                dir.display()
            )),
            None if config.seclytics.access_token.is_empty() => warnings.push(format!(
                "no access token is configured ({NO_TOKEN_HINT}): SecLytics will refuse every lookup"
            )),
            None => {}
        }
        if !config.watchlists_dir.is_dir() {
            warnings.push(format!(
                "the watch-list folder {} does not exist (`[watchlists] dir`): no watch-list column is filled",
                config.watchlists_dir.display()
            ));
        }
        let derivation = stored::derivation(&lists, config.logs);
        Ok((
            Enricher {
                config,
                client,
                lists,
                sinkholes,
                resolver,
                refresh,
                derivation,
                list_sources,
                sinkhole_source,
            },
            warnings,
        ))
    }

    /// Reads the watch lists again when their files changed, as a `watch` service does before each workbook,
    /// so that a list edited while it runs is used from the next workbook on — and the digests kept with the
    /// old lists are no longer used (their derivation number changes with the lists). Returns the lists'
    /// warnings when they changed, `None` when they are as before.
    pub fn reload_watch_lists(&mut self) -> Option<Vec<String>> {
        let sources = watchlists::source_fingerprint(&self.config.watchlists_dir);
        if sources == self.list_sources {
            return None;
        }
        self.list_sources = sources;
        let (lists, warnings) =
            watchlists::WatchLists::load(&self.config.watchlists_dir, self.config.url_watchlist_regex);
        let derivation = stored::derivation(&lists, self.config.logs);
        if derivation == self.derivation {
            return None;
        }
        self.lists = lists;
        self.derivation = derivation;
        Some(warning_lines(&warnings).collect())
    }

    /// Reads the sinkhole file again when its bytes changed, as a `watch` service does before each workbook,
    /// so that an entry added while it runs is used from the next workbook on (sinkhole labels are made when
    /// cells are filled, never kept in the cache). Returns its warnings when it changed, `None` when not.
    pub fn reload_sinkholes(&mut self) -> Option<Vec<String>> {
        let source = watchlists::files_fingerprint([&self.config.sinkholes_file]);
        if source == self.sinkhole_source {
            return None;
        }
        self.sinkhole_source = source;
        let (sinkholes, warnings) = load_sinkholes(&self.config.sinkholes_file);
        self.sinkholes = sinkholes;
        Some(warnings)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The digested answers of `indicators` (distinct) that need no request: digests kept in the cache, then
    /// [`Client::lookup_known`] (run memory, cache, offline folder); `None` for the others. Safe to run while a
    /// file is still being checked.
    fn known_digested(
        &self,
        indicators: &[Indicator],
        bar: &indicatif::ProgressBar,
    ) -> Vec<Option<Digested>> {
        let mut known = self.stored_digested(indicators, bar);
        let (missing, slots) = unanswered(indicators, &known);
        if !missing.is_empty() {
            let answers = self.client.lookup_known(&missing, self.refresh, &|_, _| bar.inc(1));
            let digested = self.digest_all(&missing, answers);
            for (slot, digested) in slots.into_iter().zip(digested) {
                known[slot] = digested;
            }
        }
        known
    }

    /// Completes [`Enricher::known_digested`]: looks up (through the API when needed) the indicators it had no
    /// answer for, and returns every digested answer in order.
    fn complete_digested(
        &self,
        indicators: &[Indicator],
        known: Vec<Option<Digested>>,
        bar: &indicatif::ProgressBar,
    ) -> Result<Vec<Digested>, crate::seclytics::client::FatalError> {
        let (missing, _) = unanswered(indicators, &known);
        let mut fetched = if missing.is_empty() {
            Vec::new().into_iter()
        } else {
            self.look_up_and_digest(&missing, bar)?.into_iter()
        };
        // `look_up_and_digest` answers every indicator it is given, so `fetched` never runs dry; should it,
        // the lookup counts as failed (cells stay empty, the error is logged), as the client does.
        let complete = known
            .into_iter()
            .map(|known| {
                known
                    .or_else(|| fetched.next())
                    .unwrap_or_else(|| Digested::failed("lookup did not complete".into()))
            })
            .collect();
        Ok(complete)
    }

    /// Looks `indicators` up (distinct, a chunk at a time) and digests each answer: the part of a lookup that
    /// does not touch a [`Job`], so it can run on another thread than the one writing the workbook. Digests
    /// kept in the cache are used as they are; the other answers are digested and their digests kept.
    fn fetch_digested(
        &self,
        indicators: &[Indicator],
        bar: &indicatif::ProgressBar,
    ) -> Result<Vec<Digested>, crate::seclytics::client::FatalError> {
        let known = self.stored_digested(indicators, bar);
        self.complete_digested(indicators, known, bar)
    }

    /// The digests kept in the cache for `indicators` (see `stored`), decoded; `None` where there is none (or
    /// it does not decode). Those used are counted as cache answers.
    fn stored_digested(
        &self,
        indicators: &[Indicator],
        bar: &indicatif::ProgressBar,
    ) -> Vec<Option<Digested>> {
        use rayon::prelude::*;
        let blobs = self.client.stored_digests(indicators, self.derivation, self.refresh);
        let digested: Vec<Option<Digested>> =
            blobs.into_par_iter().map(|blob| blob.and_then(|blob| stored::decode(&blob))).collect();
        let (mut found, mut not_found) = (0, 0);
        for digested in digested.iter().flatten() {
            if digested.not_found {
                not_found += 1;
            } else {
                found += 1;
            }
        }
        self.client.count_stored_answers(found, not_found);
        bar.inc(found + not_found);
        digested
    }

    /// Looks `indicators` up through the client (run memory, cache, API) and digests the answers.
    fn look_up_and_digest(
        &self,
        indicators: &[Indicator],
        bar: &indicatif::ProgressBar,
    ) -> Result<Vec<Digested>, crate::seclytics::client::FatalError> {
        let answers = self.client.lookup_all_parsed(indicators, self.refresh, &|_, _| bar.inc(1))?;
        Ok(self
            .digest_all(indicators, answers.into_iter().map(Some).collect())
            .into_iter()
            .flatten()
            .collect())
    }

    /// Digests the answers of `indicators` (`None`: no answer, stays `None`) on every core, and keeps the
    /// digests of cached and API answers in the cache for the next run.
    fn digest_all(
        &self,
        indicators: &[Indicator],
        answers: Vec<Option<(Answer, Option<model::Document>)>>,
    ) -> Vec<Option<Digested>> {
        use rayon::prelude::*;
        let (lists, switches) = (&self.lists, self.config.logs);
        // Each digest is kept with the answer it was made from: the cache stores it only beside that answer.
        type Blob = Option<(Answer, Vec<u8>)>;
        let (digested, blobs): (Vec<Option<Digested>>, Vec<Blob>) = indicators
            .par_iter()
            .zip(answers.into_par_iter())
            .map(|(indicator, answer)| {
                let Some((answer, parsed)) = answer else { return (None, None) };
                let made_from = answer.clone();
                let digested = digest(lists, switches, indicator, answer, parsed);
                let blob = stored::encode(&digested).map(|blob| (made_from, blob));
                (Some(digested), blob)
            })
            .unzip();
        let blobs: Vec<(&Indicator, &Answer, &[u8])> = indicators
            .iter()
            .zip(&blobs)
            .filter_map(|(indicator, blob)| {
                blob.as_ref().map(|(answer, blob)| (indicator, answer, &blob[..]))
            })
            .collect();
        self.client.store_digests(self.derivation, &blobs);
        digested
    }

    /// Enriches `input` into `outbox`. The input is never modified.
    pub fn enrich_file(&self, input: &Path, outbox: &Path) -> Result<FileReport, EnrichError> {
        self.enrich_file_with(input, outbox, &NoHooks)
    }

    /// [`Enricher::enrich_file`], telling `hooks` just before and after the workbook is renamed into the
    /// outbox (the hot folder journals this step so a crash in between is recovered without a duplicate).
    pub fn enrich_file_with(
        &self,
        input: &Path,
        outbox: &Path,
        hooks: &dyn PublishHooks,
    ) -> Result<FileReport, EnrichError> {
        let started = Instant::now();
        let unique = outbox::unique_epoch_seconds();
        outbox::ensure_writable_by(outbox, hooks.temp_owner())
            .map_err(|source| CriticalError::Outbox { path: outbox.to_path_buf(), source })?;
        if input.is_dir() {
            return Err(file_error("read", workbook::folder_given(input)));
        }
        let format = Format::from_path(input)
            .ok_or_else(|| file_error("read", WorkbookError::Unsupported { path: input.to_path_buf() }))?;
        let output_name = Format::output_file_name(input)
            .and_then(|n| n.into_string().ok())
            .ok_or_else(|| file_error("read", WorkbookError::Unsupported { path: input.to_path_buf() }))?;
        workbook::check_input_file(input).map_err(|e| file_error("read", e))?;
        // A name the report cannot be written beside (most file systems allow 255 bytes, Windows 255 UTF-16 units)
        // is refused before any lookup, not found out when the workbook is already published.
        if crate::os::name_length(&output_name) + outbox::REPORT_SUFFIX.len() > outbox::MAX_NAME_LENGTH {
            return Err(file_error(
                "read",
                WorkbookError::Corrupt {
                    path: input.to_path_buf(),
                    reason: format!(
                        "the file name is too long to have its report beside it (at most {} {})",
                        outbox::MAX_NAME_LENGTH - outbox::REPORT_SUFFIX.len(),
                        outbox::NAME_LENGTH_UNIT
                    ),
                },
            ));
        }

        let mut job = Job::new(self, hooks.reported_input().unwrap_or(input), outbox, hooks.temp_owner());
        let output = match format {
            // CSV: two streaming passes over the file.
            Format::Csv => csv_stream::enrich_csv(self, input, &output_name, &mut job),
            Format::Xlsx | Format::Xls => xlsx_pipeline::enrich_xlsx(self, input, &output_name, &mut job),
        }
        .map_err(no_room_is_critical)?;
        let output = publish(output, outbox, &output_name, hooks)?;
        job.finish(output, unique, started)
    }
}

/// Told around the one step that makes an output visible: the rename of the complete workbook from its
/// temporary name in the outbox to its final name.
pub trait PublishHooks {
    /// The complete output sits at `temp` (in the outbox) and is about to be renamed to `final_name` (or
    /// `_1`, `_2`… when taken). An error cancels the publication (the temporary file is removed).
    fn before_publish(&self, temp: &Path, final_name: &str) -> std::io::Result<()>;
    /// The output is now visible at `published`.
    fn after_publish(&self, published: &Path);
    /// The input path to name in the report and logs, when the file being read is a working copy (the hot
    /// folder reads a claimed file inside its work folder, but the analyst dropped it in the inbox).
    fn reported_input(&self) -> Option<&Path> {
        None
    }
    /// The id of the hot-folder instance running this workbook: its temporary files in the outbox carry it,
    /// so the instance that recovers a killed one can delete them ([`crate::outbox::owned_temp_file`]).
    fn temp_owner(&self) -> Option<&str> {
        None
    }
}

/// No hooks.
pub struct NoHooks;

/// The hooks of the `enrich` command: nothing around the publication; its temporary files carry the run's
/// owner ([`crate::watch::claims::one_shot_owner`]), so that a later run can delete them should it be killed.
pub struct OneShotHooks {
    pub owner: Option<String>,
}

impl PublishHooks for OneShotHooks {
    fn before_publish(&self, _temp: &Path, _final_name: &str) -> std::io::Result<()> {
        Ok(())
    }

    fn after_publish(&self, _published: &Path) {}

    fn temp_owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }
}

impl PublishHooks for NoHooks {
    fn before_publish(&self, _temp: &Path, _final_name: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn after_publish(&self, _published: &Path) {}
}

/// Flushes the complete output and renames it into the outbox, never over an existing file.
fn publish(
    temp: tempfile::NamedTempFile,
    outbox: &Path,
    name: &str,
    hooks: &dyn PublishHooks,
) -> Result<PathBuf, EnrichError> {
    let outbox_error =
        |source| EnrichError::from(CriticalError::Outbox { path: outbox.to_path_buf(), source });
    // Not the file's fault (the hot folder's journal, in the inbox's work folder, cannot be written — a full or
    // unreachable volume — or the run is shutting down): critical, so the input is handed back, not failed.
    hooks.before_publish(temp.path(), name).map_err(|e| {
        EnrichError::from(CriticalError::Other(format!(
            "cannot record the publication of {name} in the work folder (the output was not published): {e}"
        )))
    })?;
    // Every name taken (10 000 of them, `book.csv`, `book_1.csv`, …) is this file's problem — others still
    // have names — not the outbox's: failing the run for it would stop every other file too.
    let published = outbox::persist_output(temp, outbox, name).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            file_error(
                "publish",
                WorkbookError::io(&outbox.join(name), "find a free name in the outbox for", e),
            )
        } else {
            outbox_error(e)
        }
    })?;
    hooks.after_publish(&published);
    Ok(published)
}

/// A write that failed because its volume is full, over quota or read-only is no fault of the workbook: a
/// critical error (the input is handed back, not failed; `--once` stops with status 2), like an outbox that
/// cannot be written at all.
pub(super) fn no_room_is_critical(error: EnrichError) -> EnrichError {
    use std::io::ErrorKind;
    match error {
        EnrichError::File { step: "write", error: WorkbookError::Io { path, action, source } }
            if matches!(
                source.kind(),
                ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            let error = WorkbookError::Io { path, action, source };
            CriticalError::Other(format!("{error} (not a fault of the file: it is kept to be tried again)"))
                .into()
        }
        other => other,
    }
}

/// The error for a table whose columns to append would go past the last column a sheet may have (`place`
/// says where its data ends), or `None` when they fit.
fn no_room_for_columns(input: &Path, plan: &plan::TablePlan, place: &str) -> Option<EnrichError> {
    (plan.width() > workbook::MAX_COLS as usize).then(|| {
        file_error(
            "read",
            WorkbookError::TooLarge {
                path: input.to_path_buf(),
                reason: format!(
                    "{place}: no room after it for the {} columns to add (the limit is {} columns)",
                    plan.appended_headers().len(),
                    workbook::MAX_COLS
                ),
            },
        )
    })
}

/// `n` and `noun`, plural unless `n` is 1: "1 row", "2 rows", "0 API requests".
fn counted(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

fn file_error(step: &'static str, error: WorkbookError) -> EnrichError {
    EnrichError::File { step, error }
}

/// Size and modification time, to notice an input that changes between the two CSV passes.
fn file_stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// API text for a CSV cell: with the formula guard where it needs one (SPEC §4), and still within the cell
/// limit when the guard's `'` would take a text cut to exactly the limit one character past it — the text
/// is then cut one character shorter, at a separator (`^`, or the three spaces of the URL watch list) like
/// every cut.
fn csv_safe_text(text: &str) -> Cow<'_, str> {
    let safe = csvio::neutralize_formula(text);
    if safe.len() > CELL_LIMIT && safe.chars().count() > CELL_LIMIT {
        let shorter = tokens::cut_at_separators(text, &["^", "   "], CELL_LIMIT - 1);
        return Cow::Owned(csvio::neutralize_formula(shorter).into_owned());
    }
    safe
}

fn xlsx_cell(value: FillValue) -> Cell {
    match value {
        // Text cells are never formulas in XLSX; control characters are replaced as in CSV.
        FillValue::Text(text) => Cell::Text(csvio::replace_control_chars(&text).into_owned()),
        FillValue::Count(n) => Cell::Float(n as f64),
        FillValue::DateTime(when) => xlsx::datetime_cell(when),
    }
}

fn csv_text(value: FillValue<'_>) -> Cow<'_, str> {
    match value {
        FillValue::Text(Cow::Borrowed(text)) => csv_safe_text(text),
        FillValue::Text(Cow::Owned(text)) => Cow::Owned(csv_safe_text(&text).into_owned()),
        FillValue::Count(n) => Cow::Owned(decimal(n)),
        FillValue::DateTime(when) => {
            // `parse_timestamp` keeps years to 1900–9999, so this never changes anything: a second guard.
            let text = csv_date_time(when);
            let neutralized = match csvio::neutralize_formula(&text) {
                Cow::Owned(safe) => Some(safe),
                Cow::Borrowed(_) => None,
            };
            Cow::Owned(neutralized.unwrap_or(text))
        }
    }
}

/// `n` in decimal digits (what `to_string` gives, without the formatting machinery: one call per filled
/// count cell of a million-row CSV).
fn decimal(mut n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[start..].iter().map(|&d| char::from(d)).collect()
}

/// `when` as `%Y-%m-%d %H:%M:%S`. Written by hand for the years 0–9999 (chrono's `format` parses the pattern
/// again for every call, a measurable cost when a million rows get a date); other years go through chrono so
/// the text is exactly what `format` gives.
fn csv_date_time(when: chrono::NaiveDateTime) -> String {
    use chrono::{Datelike, Timelike};
    // A leap second (nanosecond ≥ 1e9) is printed as second 60 by chrono: leave that to chrono too.
    if (0..=9999).contains(&when.year()) && when.nanosecond() < 1_000_000_000 {
        let year = when.year() as u32;
        let mut text = String::with_capacity(19);
        let mut push = |value: u32, width: u32, separator: Option<char>| {
            for place in (0..width).rev() {
                text.push(char::from(b'0' + (value / 10u32.pow(place) % 10) as u8));
            }
            if let Some(separator) = separator {
                text.push(separator);
            }
        };
        push(year, 4, Some('-'));
        push(when.month(), 2, Some('-'));
        push(when.day(), 2, Some(' '));
        push(when.hour(), 2, Some(':'));
        push(when.minute(), 2, Some(':'));
        push(when.second(), 2, None);
        text
    } else {
        when.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

/// The CSV text of each fill, as `(column, text)` patches for [`csvio::CsvWriter`].
fn csv_patches(fills: Vec<Fill<'_>>) -> Vec<(usize, Cow<'_, str>)> {
    fills.into_iter().map(|f| (f.column, csv_text(f.value))).collect()
}

/// A CSV record seen through [`RowCells`].
struct CsvRow<'a>(&'a csvio::Record);

impl RowCells for CsvRow<'_> {
    fn text(&self, column: usize) -> std::borrow::Cow<'_, str> {
        self.0.field(column)
    }

    fn is_blank(&self, column: usize) -> bool {
        self.0.is_blank(column)
    }
}

/// A row of the typed model seen through [`RowCells`].
struct ModelRow<'a>(&'a [Cell]);

impl RowCells for ModelRow<'_> {
    fn text(&self, column: usize) -> std::borrow::Cow<'_, str> {
        self.0.get(column).map(Cell::to_text).unwrap_or(std::borrow::Cow::Borrowed(""))
    }

    fn is_blank(&self, column: usize) -> bool {
        self.0.get(column).is_none_or(Cell::is_blank)
    }
}

/// Hash maps and sets keyed by indicators, hashed with foldhash: several times faster than SipHash on these short
/// keys, and randomly seeded per process, so a hostile sheet cannot aim at collisions (as in the CSV scan).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// A row without a usable indicator (in [`TableScan::row_indicators`] and the CSV scan's row ids).
const NO_INDICATOR: u32 = u32::MAX;

/// What the scan of one table found.
struct TableScan {
    plan: TablePlan,
    rows: usize,
    skipped: usize,
    /// Distinct indicators of the table, in order of first appearance.
    indicators: Vec<Indicator>,
    /// The position of each indicator in `indicators`.
    present: FastMap<Indicator, u32>,
    /// For each data row (in order), the position of its indicator in `indicators`, or [`NO_INDICATOR`]: the
    /// fill takes the row's indicator from here instead of classifying its cell a second time.
    row_indicators: Vec<u32>,
    /// Host indicators of domain rows whose `IP Address` is empty, in row order.
    passive_dns_rows: Vec<Indicator>,
    /// IP items whose `Reverse DNS` or `Sinkhole` cell is empty.
    noted_ips: Vec<IpAddr>,
    /// IPs to append (filled after the lookups).
    appended: Vec<Indicator>,
    /// For each of `indicators`, its place (0-based) in the run's list of lookups (set by
    /// [`Job::look_up_tables`]): its facts are in once more than that many lookups are merged.
    lookup_order: Vec<u32>,
}

impl TableScan {
    fn new(plan: TablePlan) -> TableScan {
        TableScan {
            plan,
            rows: 0,
            skipped: 0,
            indicators: Vec::new(),
            present: FastMap::default(),
            row_indicators: Vec::new(),
            passive_dns_rows: Vec::new(),
            noted_ips: Vec::new(),
            appended: Vec::new(),
            lookup_order: Vec::new(),
        }
    }

    fn observe(&mut self, row: &ModelRow<'_>) {
        self.rows += 1;
        let column = self.plan.indicator_column();
        let cell = row.text(column);
        if cell.trim().is_empty() {
            self.row_indicators.push(NO_INDICATOR);
            return;
        }
        // A number is never an indicator: no IP or host name reads as one, and a hash of digits only that Excel
        // turned into a number (`1.23457E+31`) kept 15 to 17 of its digits — the text of that number is a
        // made-up hash, not the analyst's. Such a cell is skipped, like any other that holds no indicator.
        let number = row.0.get(column).is_some_and(Cell::is_number);
        let Some(indicator) = Indicator::classify(&cell).filter(|_| !number) else {
            self.skipped += 1;
            self.row_indicators.push(NO_INDICATOR);
            return;
        };
        match indicator.kind {
            IndicatorKind::Host
                if self.plan.mode() == crate::vttl::Mode::IpDomain && self.plan.wants_passive_dns(row) =>
            {
                self.passive_dns_rows.push(indicator.clone());
            }
            IndicatorKind::Ip if self.plan.wants_ip_notes(row) => {
                if let Some(ip) = indicator.ip() {
                    self.noted_ips.push(ip);
                }
            }
            _ => {}
        }
        let next = u32::try_from(self.indicators.len()).unwrap_or(NO_INDICATOR);
        let position = match self.present.entry(indicator) {
            std::collections::hash_map::Entry::Occupied(known) => *known.get(),
            std::collections::hash_map::Entry::Vacant(new) => {
                self.indicators.push(new.key().clone());
                *new.insert(next)
            }
        };
        self.row_indicators.push(position);
    }
}

/// What the run knows about IPs: reverse names from the batch lookup, and the sinkhole data.
struct RunIps<'a> {
    names: HashMap<IpAddr, Option<String>>,
    sinkholes: &'a sinkholes::Sinkholes,
}

impl IpKnowledge for RunIps<'_> {
    fn reverse_name(&self, ip: IpAddr) -> Option<String> {
        if self.names.is_empty() {
            return None;
        }
        self.names.get(&ip).cloned().flatten()
    }

    fn sinkhole(&self, ip: IpAddr, reverse_name: Option<&str>) -> Option<String> {
        self.sinkholes.label_for(ip, reverse_name)
    }
}

/// One workbook in progress: lookups, facts, logs and counters.
struct Job<'a> {
    enricher: &'a Enricher,
    input: PathBuf,
    /// The outbox: long logs keep their lines in temporary files there (published by a link, not a copy).
    outbox: PathBuf,
    /// The hot-folder instance this job runs in ([`PublishHooks::temp_owner`]): named in the temporary files
    /// it makes in the outbox.
    temp_owner: Option<String>,
    /// `None` = the lookup failed (cells stay empty).
    facts: FastMap<Indicator, Option<Facts>>,
    ips: RunIps<'a>,
    logs: HashMap<SeclyticLog, LogLines>,
    report: FileReport,
    requests_before: u64,
    errors: Vec<String>,
    /// Cells filled per column header, folded into `report.cells_filled` by [`Job::finish`].
    fills_by_header: FillCounts,
}

impl<'a> Job<'a> {
    /// A new temporary file in the outbox for the workbook that will be called `name`, named for the run's
    /// hot-folder instance (if any).
    fn output_temp_file(&self, name: &str) -> Result<tempfile::NamedTempFile, EnrichError> {
        outbox::owned_temp_file(&self.outbox, name, self.temp_owner.as_deref())
            .map_err(|source| CriticalError::Outbox { path: self.outbox.clone(), source }.into())
    }

    fn new(enricher: &'a Enricher, input: &Path, outbox: &Path, temp_owner: Option<&str>) -> Job<'a> {
        Job {
            enricher,
            input: input.to_path_buf(),
            outbox: outbox.to_path_buf(),
            temp_owner: temp_owner.map(String::from),
            facts: FastMap::default(),
            ips: RunIps { names: HashMap::new(), sinkholes: &enricher.sinkholes },
            logs: HashMap::new(),
            report: FileReport { input: input.to_path_buf(), ..Default::default() },
            requests_before: enricher.client.stats().api_requests,
            errors: Vec::new(),
            fills_by_header: FillCounts::default(),
        }
    }

    /// Steps 2–4 for all tables of the workbook. After each chunk of the tables' own indicators is merged,
    /// `merged(job, tables, n)` is told that the first `n` of them (in [`TableScan::lookup_order`]) have
    /// their facts.
    fn look_up_tables(
        &mut self,
        tables: &mut [TableScan],
        mut merged: impl FnMut(&mut Self, &[TableScan], usize),
    ) -> Result<(), EnrichError> {
        let mut wanted: Vec<Indicator> = Vec::new();
        let mut seen: FastMap<Indicator, u32> = FastMap::default();
        for table in tables.iter_mut() {
            self.report.rows += table.rows;
            self.report.skipped_indicators += table.skipped;
            table.lookup_order = Vec::with_capacity(table.indicators.len());
            for indicator in &table.indicators {
                let next = u32::try_from(wanted.len()).unwrap_or(NO_INDICATOR);
                let order = *seen.entry(indicator.clone()).or_insert_with(|| {
                    wanted.push(indicator.clone());
                    next
                });
                table.lookup_order.push(order);
            }
        }
        self.report.tables = tables.len();
        let scanned: &[TableScan] = tables;
        self.look_up_with(&wanted, |job, known| merged(job, scanned, known))?;

        // Passive DNS: new rows, in the order of the domain rows that found them.
        let mut discovered = Vec::new();
        for table in tables.iter_mut() {
            let mut appended_here = FastSet::default();
            for host in &table.passive_dns_rows {
                let Some(Some(facts)) = self.facts.get(host) else { continue };
                let Some(ip) = facts.passive_dns_ip else { continue };
                if !plan::is_globally_routable(ip) {
                    continue;
                }
                let Some(indicator) = Indicator::classify(&ip.to_string()) else { continue };
                if table.present.contains_key(&indicator) || !appended_here.insert(indicator.clone()) {
                    continue;
                }
                table.appended.push(indicator.clone());
                if let std::collections::hash_map::Entry::Vacant(new) = seen.entry(indicator.clone()) {
                    new.insert(NO_INDICATOR);
                    discovered.push(indicator);
                }
            }
            self.report.rows_appended += table.appended.len();
        }
        self.look_up(&discovered)?;

        // Reverse DNS for the IPs whose rows will show it.
        if self.enricher.resolver.is_some() {
            let mut ips: Vec<IpAddr> = Vec::new();
            for table in tables.iter().filter(|t| t.plan.has_ip_note_columns()) {
                let passive = table.passive_dns_rows.iter().filter_map(|host| {
                    self.facts.get(host).and_then(Option::as_ref).and_then(|f| f.passive_dns_ip)
                });
                let appended = table.appended.iter().filter_map(Indicator::ip);
                ips.extend(table.noted_ips.iter().copied().chain(passive).chain(appended));
            }
            self.resolve_reverse_names(&ips);
        }
        Ok(())
    }

    /// Looks up `indicators` (distinct) and records their facts (in `self.facts`) and log lines.
    ///
    /// Pipelined: a second thread looks the chunks up and digests them (cache reads, JSON, tokens, watch
    /// lists) while this one merges the previous chunk (counters, log lines, facts), in order.
    fn look_up(&mut self, indicators: &[Indicator]) -> Result<(), EnrichError> {
        self.look_up_with(indicators, |_, _| ())
    }

    /// [`Job::look_up`], calling `merged(job, n)` each time the facts of the first `n` indicators are in.
    fn look_up_with(
        &mut self,
        indicators: &[Indicator],
        mut merged: impl FnMut(&mut Self, usize),
    ) -> Result<(), EnrichError> {
        if indicators.is_empty() {
            return Ok(());
        }
        let bar = progress_bar(&self.input, indicators.len() as u64);
        self.facts.reserve(indicators.len());
        let enricher = self.enricher;
        let result = std::thread::scope(|threads| {
            let (looked_up, digested) = std::sync::mpsc::sync_channel(2);
            let bar = &bar;
            threads.spawn(move || {
                for chunk in indicators.chunks(LOOKUP_CHUNK) {
                    let result = enricher.fetch_digested(chunk, bar);
                    let fatal = result.is_err();
                    if looked_up.send(result).is_err() || fatal {
                        break;
                    }
                }
            });
            let mut done = 0;
            for chunk in indicators.chunks(LOOKUP_CHUNK) {
                let Ok(result) = digested.recv() else { break };
                let facts = self.merge_all(chunk, result.map_err(CriticalError::from)?);
                for (indicator, facts) in chunk.iter().zip(facts) {
                    self.facts.insert(indicator.clone(), facts);
                }
                done += chunk.len();
                merged(self, done);
            }
            Ok(())
        });
        bar.finish_and_clear();
        result
    }

    /// Looks up `indicators` (distinct, at most a few thousand: their answers are held at once), records
    /// counters and log lines, and returns the facts of each in order (`None`: the lookup failed).
    ///
    /// Turning answers into facts (JSON parse, tokens, watch lists — independent per indicator) is spread over
    /// the cores with rayon; results are merged in input order, so counters, log lines and error messages come
    /// out exactly as if the indicators had been handled one by one.
    fn look_up_facts(
        &mut self,
        indicators: &[Indicator],
        bar: &indicatif::ProgressBar,
    ) -> Result<Vec<Option<Facts>>, EnrichError> {
        let digested = self.enricher.fetch_digested(indicators, bar).map_err(CriticalError::from)?;
        Ok(self.merge_all(indicators, digested))
    }

    /// Merges the digested answers of `indicators` (in that order); returns their facts.
    fn merge_all(&mut self, indicators: &[Indicator], digested: Vec<Digested>) -> Vec<Option<Facts>> {
        indicators.iter().zip(digested).map(|(indicator, digested)| self.merge(indicator, digested)).collect()
    }

    /// Reverse names for `ips` that are not known yet, in one bounded batch (nothing when reverse DNS is off).
    fn resolve_reverse_names(&mut self, ips: &[IpAddr]) {
        let Some(resolver) = &self.enricher.resolver else { return };
        let mut unique = HashSet::new();
        let wanted: Vec<IpAddr> =
            ips.iter().copied().filter(|ip| !self.ips.names.contains_key(ip) && unique.insert(*ip)).collect();
        if !wanted.is_empty() {
            self.ips.names.extend(resolver.lookup_many(&wanted));
        }
    }

    /// Records what one answer said (in input order); returns its facts.
    fn merge(&mut self, indicator: &Indicator, digested: Digested) -> Option<Facts> {
        let kind = kind_name(indicator.kind);
        match self.report.indicators.get_mut(kind) {
            Some(count) => *count += 1,
            None => {
                self.report.indicators.insert(kind.to_string(), 1);
            }
        }
        if let Some(source) = digested.source {
            self.count_source(source);
        }
        if digested.not_found {
            self.report.not_found += 1;
        }
        if let Some(reason) = &digested.failure {
            self.lookup_failed(indicator, reason);
        }
        let item = indicator.value.as_str();
        for (log, values) in digested.logs {
            let (outbox, owner) = (&self.outbox, self.temp_owner.as_deref());
            let lines = self.logs.entry(log).or_insert_with(|| LogLines::in_dir_of(outbox, owner));
            for value in &values {
                lines.push(item, value);
            }
        }
        digested.facts
    }

    fn count_source(&mut self, source: AnswerSource) {
        match source {
            AnswerSource::Cache => self.report.cache_hits += 1,
            AnswerSource::RunMemory => self.report.reused_answers += 1,
            AnswerSource::Offline => self.report.offline_answers += 1,
            AnswerSource::Api => {}
        }
    }

    fn lookup_failed(&mut self, indicator: &Indicator, reason: &str) {
        self.report.failed_lookups += 1;
        let message = self.enricher.config.seclytics.access_token.redact(&format!(
            "{}: SecLytics lookup of {} failed: {}",
            self.input.display(),
            indicator,
            reason
        ));
        self.errors.push(message);
    }

    /// The fills of data row `data_row` (0 = the first row after the header) of an XLSX table, as cells.
    fn row_cells(&mut self, table: &TableScan, data_row: usize, row: &impl RowCells) -> Vec<(usize, Cell)> {
        let position = table.row_indicators.get(data_row).copied().unwrap_or(NO_INDICATOR);
        let Some(indicator) = table.indicators.get(position as usize) else { return Vec::new() };
        let facts = self.facts.get(indicator).and_then(Option::as_ref);
        let fills = table.plan.fills(row, indicator.kind, facts, &self.ips, indicator.ip());
        count_fills(&mut self.fills_by_header, &fills);
        fills.into_iter().map(|fill| (fill.column, xlsx_cell(fill.value))).collect()
    }

    /// The fills of an appended IP row (XLSX), as cells.
    fn appended_row_cells(&mut self, table: &TableScan, ip: &Indicator) -> Vec<(usize, Cell)> {
        let facts = self.facts.get(ip).and_then(Option::as_ref);
        let fills = table.plan.fills(&plan::EmptyRow, ip.kind, facts, &self.ips, ip.ip());
        count_fills(&mut self.fills_by_header, &fills);
        fills.into_iter().map(|fill| (fill.column, xlsx_cell(fill.value))).collect()
    }

    /// Writes the logs, the error lines and the report; returns the report.
    fn finish(mut self, output: PathBuf, unique: u64, started: Instant) -> Result<FileReport, EnrichError> {
        let outbox = &self.outbox;
        let outbox_error =
            |source| EnrichError::from(CriticalError::Outbox { path: outbox.to_path_buf(), source });
        let mut logs: Vec<(SeclyticLog, LogLines)> = SeclyticLog::ALL
            .into_iter()
            .filter_map(|log| self.logs.remove(&log).map(|lines| (log, lines)))
            .collect();
        let mut non_empty: Vec<(SeclyticLog, &mut LogLines)> = logs
            .iter_mut()
            .filter(|(_, lines)| !lines.is_empty())
            .map(|(log, lines)| (*log, lines))
            .collect();
        let (unique, paths) = outbox::write_log_set(outbox, unique, &mut non_empty).map_err(outbox_error)?;
        self.report.log_files =
            paths.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
        for message in &self.errors {
            outbox::append_error_log(outbox, message);
        }
        for (header, count) in self.fills_by_header.0.drain(..) {
            *self.report.cells_filled.entry(header.to_string()).or_default() += count;
        }
        let stats = self.enricher.client.stats();
        self.report.api_requests = stats.api_requests.saturating_sub(self.requests_before);
        self.report.unique_string = unique.to_string();
        self.report.output = output.clone();
        self.report.duration_ms = started.elapsed().as_millis() as u64;
        let json = serde_json::to_vec_pretty(&self.report).unwrap_or_default();
        let report_name = outbox::report_name(&output.file_name().unwrap_or_default().to_string_lossy());
        outbox::write_new_owned_file(outbox, &report_name, &json, self.temp_owner.as_deref())
            .map_err(outbox_error)?;
        let summary = format!(
            "{} -> {}: {}, {} ({}, {} from cache, {} reused, {} offline, {} not found, {} failed), {} filled, {} \
             appended, {} ms",
            self.report.input.display(),
            output.display(),
            counted(self.report.rows as u64, "row"),
            counted(self.report.indicators.values().sum::<usize>() as u64, "indicator"),
            counted(self.report.api_requests, "API request"),
            self.report.cache_hits,
            self.report.reused_answers,
            self.report.offline_answers,
            self.report.not_found,
            self.report.failed_lookups,
            counted(self.report.cells_filled.values().sum::<usize>() as u64, "cell"),
            counted(self.report.rows_appended as u64, "row"),
            self.report.duration_ms,
        );
        tracing::info!("{summary}");
        let indicators = self.report.indicators.values().sum::<usize>();
        if indicators > 0 && self.report.failed_lookups >= indicators {
            // Failed lookups are not a failed file (SPEC §8): the workbook is published with those cells empty,
            // and the run may end with success. When nothing at all could be looked up, say it plainly.
            tracing::warn!(
                "{}: every lookup failed (reasons in {}): is the API reachable at `base_url`? The cells stay \
                 empty and a later run fills them",
                self.report.input.display(),
                outbox.join(outbox::ERROR_LOG).display()
            );
        }
        let _ = std::io::stderr().flush();
        Ok(self.report)
    }
}

/// Filled cells per static header name: a short list (a dozen headers at most), searched by pointer first, so
/// counting the millions of cells a large CSV fills costs neither a String nor a hash per cell.
#[derive(Default)]
struct FillCounts(Vec<(&'static str, usize)>);

/// Counts filled cells; [`Job::finish`] moves the counts into `report.cells_filled`.
fn count_fills(counts: &mut FillCounts, fills: &[Fill<'_>]) {
    for fill in fills {
        count_header(counts, fill.header, 1);
    }
}

/// [`count_fills`] for `rows` rows that got fills under these headers.
fn count_headers(counts: &mut FillCounts, headers: &[&'static str], rows: usize) {
    if rows > 0 {
        for header in headers {
            count_header(counts, header, rows);
        }
    }
}

fn count_header(counts: &mut FillCounts, filled: &'static str, cells: usize) {
    let found = counts.0.iter_mut().find(|(header, _)| std::ptr::eq(*header, filled) || *header == filled);
    match found {
        Some((_, count)) => *count += cells,
        None => counts.0.push((filled, cells)),
    }
}

/// Indicators per call of [`Client::lookup_all`] in [`Job::look_up`]: large enough to keep every request
/// slot busy (a chunk ends with at most `concurrency` requests draining), small enough that the bodies of one
/// chunk (a few KB each) stay a few MB.
const LOOKUP_CHUNK: usize = 2048;

/// What one answer says, computed away from the [`Job`] (in parallel) and merged into it in input order.
struct Digested {
    /// Where a found / not-found answer came from (counted in the report).
    source: Option<AnswerSource>,
    not_found: bool,
    /// `None` = the lookup failed (cells stay empty).
    facts: Option<Facts>,
    /// Why the lookup failed.
    failure: Option<String>,
    /// Values for the Seclytic logs of this item, per enabled log, in the order they are written.
    logs: Vec<(SeclyticLog, Vec<String>)>,
}

impl Digested {
    /// A lookup that failed for `reason`: no facts, nothing to log.
    fn failed(reason: String) -> Digested {
        Digested { source: None, not_found: false, facts: None, failure: Some(reason), logs: Vec::new() }
    }
}

/// The indicators without an answer in `known` (cloned, in order) and their positions.
fn unanswered(indicators: &[Indicator], known: &[Option<Digested>]) -> (Vec<Indicator>, Vec<usize>) {
    indicators
        .iter()
        .zip(known)
        .enumerate()
        .filter(|(_, (_, known))| known.is_none())
        .map(|(slot, (indicator, _))| (indicator.clone(), slot))
        .unzip()
}

fn digest(
    lists: &watchlists::WatchLists,
    switches: crate::config::LogSwitches,
    indicator: &Indicator,
    answer: Answer,
    parsed: Option<model::Document>,
) -> Digested {
    match answer {
        // The client's parse of this very body, when it made one (cached answers): no need to parse twice.
        Answer::Found { body, source } => match parsed.map_or_else(|| model::parse_document(&body), Ok) {
            Ok(document) => {
                let (facts, logs) = facts_from(lists, switches, indicator, &document, &body);
                Digested { source: Some(source), not_found: false, facts: Some(facts), failure: None, logs }
            }
            Err(e) => Digested { source: Some(source), ..Digested::failed(e.to_string()) },
        },
        Answer::NotFound { source } => Digested {
            source: Some(source),
            not_found: true,
            facts: Some(facts_not_found(lists, indicator)),
            failure: None,
            logs: Vec::new(),
        },
        Answer::Failed { reason } => Digested::failed(reason),
    }
}

/// The facts of a found document, and its values for the Seclytic logs.
fn facts_from(
    lists: &watchlists::WatchLists,
    switches: crate::config::LogSwitches,
    indicator: &Indicator,
    document: &model::Document,
    body: &str,
) -> (Facts, Vec<(SeclyticLog, Vec<String>)>) {
    let findings = tokens::extract(indicator, document);
    let join = |items: &[String], sep: &str| tokens::join_truncated(items, sep, CELL_LIMIT);
    let mut iocs: Vec<&str> = vec![indicator.value.as_str()];
    iocs.extend(findings.related_ips.iter().map(String::as_str));
    iocs.extend(findings.related_domains.iter().map(String::as_str));
    let facts = Facts {
        reputation: join(&findings.reputation, "^"),
        file_metadata: join(&findings.file_metadata, "^"),
        file_count: Some(findings.file_count as u64),
        // Free texts are cut like token lists (SPEC §4: every cell at most 8000 characters).
        whois: findings.whois_owner.as_ref().map(|text| join(std::slice::from_ref(text), "^")),
        validation: findings.whitelist.as_ref().map(|text| join(std::slice::from_ref(text), "^")),
        first_seen: findings.first_seen,
        passive_dns_ip: findings.passive_dns_ips.first().copied(),
        keyword_watch: join(&lists.keyword_matches(body), "^"),
        url_watch: join(&lists.url_matches(findings.urls.iter().map(String::as_str)), "   "),
        ip_domain_watch: join(&lists.ip_domain_matches(iocs), "^"),
        detection_watch: join(
            &lists.detection_matches(findings.detection_candidates.iter().map(String::as_str)),
            "^",
        ),
    };
    let mut logs = Vec::new();
    for (enabled, log, values) in [
        (switches.ips, SeclyticLog::Ips, findings.related_ips),
        (switches.hashes, SeclyticLog::Hashes, findings.hashes),
        (switches.urls, SeclyticLog::Urls, findings.urls),
        (switches.reference_urls, SeclyticLog::References, findings.reference_urls),
    ] {
        if enabled {
            logs.push((log, values));
        }
    }
    (facts, logs)
}

/// A 404: the API knows nothing, which is an answer: File Count 0, and the item's own watch-list hit.
fn facts_not_found(lists: &watchlists::WatchLists, indicator: &Indicator) -> Facts {
    let hits = lists.ip_domain_matches([indicator.value.as_str()]);
    Facts {
        file_count: Some(0),
        ip_domain_watch: tokens::join_truncated(&hits, "^", CELL_LIMIT),
        ..Facts::default()
    }
}

fn kind_name(kind: IndicatorKind) -> &'static str {
    match kind {
        IndicatorKind::Ip => "ip",
        IndicatorKind::Host => "host",
        IndicatorKind::File => "file",
    }
}

/// A progress bar for the lookups of one workbook; invisible when stderr is not a terminal.
fn progress_bar(input: &Path, len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} lookups ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(input.file_name().unwrap_or_default().to_string_lossy().into_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_singular_only_for_one() {
        assert_eq!(counted(1, "row"), "1 row");
        assert_eq!(counted(0, "API request"), "0 API requests");
        assert_eq!(counted(12, "indicator"), "12 indicators");
    }

    /// A full, over-quota or read-only volume under the workbook being written is critical; any other write
    /// failure stays the file's, and so do read failures of any kind.
    #[test]
    fn only_a_volume_without_room_makes_a_write_failure_critical() {
        use std::io::ErrorKind;
        let failure = |step, kind: ErrorKind| EnrichError::File {
            step,
            error: WorkbookError::io(
                Path::new("/outbox/.x.tmp"),
                "write the output",
                std::io::Error::from(kind),
            ),
        };
        for kind in [ErrorKind::StorageFull, ErrorKind::QuotaExceeded, ErrorKind::ReadOnlyFilesystem] {
            let error = no_room_is_critical(failure("write", kind));
            assert!(matches!(error, EnrichError::Critical(CriticalError::Other(_))), "{error:?}");
            assert!(error.to_string().contains("/outbox/.x.tmp"), "{error}");
        }
        for (step, kind) in [("write", ErrorKind::InvalidData), ("read", ErrorKind::StorageFull)] {
            let error = no_room_is_critical(failure(step, kind));
            assert!(matches!(error, EnrichError::File { .. }), "{error:?}");
        }
    }

    #[test]
    fn csv_date_time_is_chrono_format() {
        let cases = [
            "2024-03-02T00:00:00",
            "1999-12-31T23:59:59",
            "0001-01-01T00:00:00",
            "0000-01-01T00:00:00",
            "9999-12-31T23:59:59",
            "2024-02-29T08:05:09",
        ];
        for text in cases {
            let when: chrono::NaiveDateTime = text.parse().unwrap();
            assert_eq!(csv_date_time(when), when.format("%Y-%m-%d %H:%M:%S").to_string(), "{text}");
        }
        // Out of the hand-written range: chrono decides.
        let far = chrono::NaiveDate::from_ymd_opt(12345, 6, 7).unwrap().and_hms_opt(1, 2, 3).unwrap();
        assert_eq!(csv_date_time(far), far.format("%Y-%m-%d %H:%M:%S").to_string());
        let before = chrono::NaiveDate::from_ymd_opt(-44, 3, 15).unwrap().and_hms_opt(12, 0, 0).unwrap();
        assert_eq!(csv_date_time(before), before.format("%Y-%m-%d %H:%M:%S").to_string());
        for n in [0, 7, 10, 99, 1000, 123_456_789, u64::MAX] {
            assert_eq!(decimal(n), n.to_string());
        }
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_milli_opt(23, 59, 59, 1500)
            .unwrap();
        assert_eq!(csv_date_time(leap), leap.format("%Y-%m-%d %H:%M:%S").to_string());
    }

    /// The second guard behind `parse_timestamp`'s year range: a date chrono writes with a sign becomes inert
    /// text in a CSV cell; an ordinary date is written as it is.
    #[test]
    fn a_csv_date_never_starts_a_formula() {
        let signed = [(-1, 12, 31), (20_000, 1, 1)]
            .map(|(y, m, d)| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(0, 0, 0).unwrap());
        for when in signed {
            let text = csv_text(FillValue::DateTime(when));
            assert!(text.starts_with('\''), "{text}");
        }
        let plain = chrono::NaiveDate::from_ymd_opt(2024, 3, 2).unwrap().and_hms_opt(10, 20, 30).unwrap();
        assert_eq!(csv_text(FillValue::DateTime(plain)), "2024-03-02 10:20:30");
    }
}
