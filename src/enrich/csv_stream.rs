//! The CSV path of the enrichment: two streaming passes, with memory bounded by the number of *distinct*
//! indicators (a few dozen bytes each), never by the size of the file or of what the API says about it.
//!
//! 1. **Scan.** Each record's indicator cell is classified; every distinct indicator gets an id in order of
//!    first appearance, with the number of rows that use it and two flags (a domain row wants a passive-DNS IP,
//!    an IP row has an empty `Reverse DNS`/`Sinkhole`). The id of each row is kept (4 bytes per row), so the
//!    second pass does not classify again.
//! 2. **Look up**, on a thread of its own, while both passes run: each [`LOOKUP_CHUNK`] new indicators the scan
//!    finds are looked up together and their answers digested (JSON, tokens, watch lists), at most
//!    [`CHUNKS_AHEAD`] chunks ahead of the write pass. Ids come in order of first appearance, which is exactly
//!    the order in which the write pass needs them. Until the scan has read the whole file, only answers that
//!    need no request (run memory, cache, offline folder) are prepared: a file that turns out to be broken
//!    half-way costs no API quota.
//! 3. **Write.** Records are read again and written out one by one. When a row needs an indicator of the next
//!    chunk, the write pass takes that chunk (merging its counters and log lines in order) and, when reverse
//!    DNS is on, resolves the IPs of that chunk. The facts of an indicator are dropped after the last row that uses it. When more than
//!    [`MAX_WAITING_FACTS`] indicators still have rows to come, their facts are moved to an anonymous temporary
//!    file and read back per row, so even a sheet whose indicators all come back at its very end stays bounded.
//!    Passive-DNS IPs found on the way become rows appended at the end, looked up after the last record.
//!    With reverse DNS off, the fills made for an indicator's row are kept while it has rows to come, and a
//!    later row with the same blank cells ([`TablePlan::row_fill_key`]) is written with them instead of
//!    making them again ([`RepeatedFills`], bounded by [`REPEATED_FILLS_BYTES`]).
//!
//! For a sheet whose indicators repeat (the usual case), every lookup is done while the first pass still
//! reads; for a sheet of distinct indicators, lookups and writing overlap on two cores.
//!
//! The lookup order, counters, log lines and error messages are those of the XLSX path (lookups in order of
//! first appearance, then the appended IPs). Reverse DNS is resolved chunk by chunk, each chunk one bounded
//! batch, instead of one batch for the whole file.
//!
//! Between the passes the file may change: each row's indicator cell is checked against the id found by the
//! scan (a cheap comparison), the number of rows must match, and the size and modification time are compared
//! at the end; any difference fails the file instead of writing fills into the wrong rows.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, mpsc};

use super::plan::{Facts, RowCells, TablePlan};
use super::{
    CsvRow, Digested, EnrichError, Enricher, FillCounts, Job, LOOKUP_CHUNK, NO_INDICATOR, count_fills,
    count_headers, csv_patches, file_error, file_stamp, plan, progress_bar,
};
use crate::error::CriticalError;
use crate::outbox;
use crate::seclytics::client::FatalError;
use crate::vttl::{ColumnMap, Indicator, IndicatorKind, LONGEST_INDICATOR, Mode};
use crate::workbook::WorkbookError;
use crate::workbook::csv::{CsvReader, CsvWriter, Record, TextEncoding, field_text};

/// Facts kept in memory for indicators that still have rows to come; beyond this many they move to a file.
pub(super) const MAX_WAITING_FACTS: usize = 50_000;

/// Most distinct raw indicator cells whose id the scan remembers by their bytes (a few MB; never more than
/// 32 MB, as only cells up to [`LONG_RAW_CELL`] bytes are remembered).
const RAW_CELL_CACHE: usize = 65_536;

/// The row is a domain row whose `IP Address` is empty (it may take a passive-DNS IP).
const WANTS_PASSIVE_DNS: u8 = 1;
/// The row is an IP row with an empty `Reverse DNS` or `Sinkhole` cell.
const WANTS_IP_NOTES: u8 = 2;

/// An indicator cell longer than this (raw bytes) is read by the parsing thread itself, so that what it
/// passes on stays small however a hostile file pads its cells: its trimmed text, or one of the two flags
/// below. Shorter cells are passed on raw and remembered by their bytes ([`RAW_CELL_CACHE`]).
const LONG_RAW_CELL: usize = 512;
/// A long indicator cell that is blank once trimmed (no bytes passed on).
const LONG_CELL_BLANK: u8 = 4;
/// A long indicator cell whose trimmed text is longer than any indicator (no bytes passed on).
const LONG_CELL_NOT_INDICATOR: u8 = 8;
/// A long indicator cell passed on as its trimmed text, in UTF-8.
const LONG_CELL_TRIMMED: u8 = 16;
const LONG_CELL: u8 = LONG_CELL_BLANK | LONG_CELL_NOT_INDICATOR | LONG_CELL_TRIMMED;

/// What the first pass learnt.
struct Scan {
    plan: TablePlan,
    skipped: usize,
    /// Distinct indicators by id (order of first appearance); shared with the lookup thread.
    indicators: Arc<Vec<Indicator>>,
    /// Rows using each id.
    uses: Vec<u32>,
    /// `WANTS_…` flags of each id (any of its rows).
    flags: Vec<u8>,
    /// The id of each data row, or [`NO_INDICATOR`].
    row_ids: Vec<u32>,
}

pub(super) fn enrich_csv(
    enricher: &Enricher,
    input: &Path,
    name: &str,
    job: &mut Job,
) -> Result<tempfile::NamedTempFile, EnrichError> {
    let before = file_stamp(input);
    let mut reader = CsvReader::open(input).map_err(|e| file_error("read", e))?;
    let bar = progress_bar(input, 0);
    let result = std::thread::scope(|threads| {
        // The lookup thread: takes chunks of new indicators as the scan finds them (copies, up to
        // `SCAN_PREFETCH` indicators), then the rest from the scan's own list once it is complete; looks each
        // chunk up, digests the answers, and hands them over in order. The bounded channel keeps it at most
        // `CHUNKS_AHEAD` chunks ahead of the rows being written.
        let (found, to_look_up) = mpsc::channel::<Work>();
        let (looked_up, digested) = mpsc::sync_channel(CHUNKS_AHEAD);
        let bar = &bar;
        threads.spawn(move || {
            let hand_over = |result: Result<Vec<Digested>, FatalError>| {
                let fatal = result.is_err();
                looked_up.send(result).is_ok() && !fatal
            };
            // While the scan runs the file is not known to be sound: only answers that need no request are
            // prepared (a file that fails half-way must not cost API quota); the rest waits for the scan's end.
            let mut prepared: Vec<(Vec<Indicator>, Vec<Option<Digested>>)> = Vec::new();
            for work in to_look_up {
                let go_on = match work {
                    Work::Chunk(chunk) => {
                        let known = enricher.known_digested(&chunk, bar);
                        prepared.push((chunk, known));
                        true
                    }
                    Work::Rest { all, from } => {
                        prepared
                            .drain(..)
                            .all(|(chunk, known)| hand_over(enricher.complete_digested(&chunk, known, bar)))
                            && all[from..]
                                .chunks(LOOKUP_CHUNK)
                                .all(|chunk| hand_over(enricher.fetch_digested(chunk, bar)))
                    }
                };
                if !go_on {
                    break;
                }
            }
        });
        let started = std::time::Instant::now();
        let mut chunk = Vec::with_capacity(LOOKUP_CHUNK);
        let mut sent = 0usize;
        let mut record = Record::empty();
        let scan = scan(enricher, input, &mut reader, &mut record, &mut |indicator| {
            if sent >= SCAN_PREFETCH {
                return;
            }
            chunk.push(indicator.clone());
            if chunk.len() == LOOKUP_CHUNK {
                // A send fails only when the lookup thread stopped on a fatal error, reported below.
                let _ =
                    found.send(Work::Chunk(std::mem::replace(&mut chunk, Vec::with_capacity(LOOKUP_CHUNK))));
                sent += LOOKUP_CHUNK;
            }
        })?;
        let _ = found.send(Work::Rest { all: scan.indicators.clone(), from: sent });
        drop(found);
        bar.set_length(scan.indicators.len() as u64);
        tracing::debug!(
            rows = scan.row_ids.len(),
            indicators = scan.indicators.len(),
            ms = started.elapsed().as_millis() as u64,
            "CSV scan done"
        );
        let started = std::time::Instant::now();
        let result = write_pass(enricher, input, name, job, &scan, &mut reader, &mut record, &digested, bar);
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "CSV write pass done");
        result
    });
    bar.finish_and_clear();
    let temp = result?;
    if file_stamp(input) != before {
        return Err(file_changed(input));
    }
    Ok(temp)
}

/// Lookup chunks the lookup thread may have ready before the write pass takes them (a few MB of facts).
const CHUNKS_AHEAD: usize = 8;

/// Indicators handed to the lookup thread while the scan still runs (copies; the rest is read from the
/// finished scan): enough for the lookups of a typical sheet to be done before its write pass starts.
const SCAN_PREFETCH: usize = (CHUNKS_AHEAD + 2) * LOOKUP_CHUNK;

/// What the lookup thread is given to look up.
enum Work {
    Chunk(Vec<Indicator>),
    /// `all[from..]`, once the scan is complete.
    Rest {
        all: Arc<Vec<Indicator>>,
        from: usize,
    },
}

fn file_changed(input: &Path) -> EnrichError {
    file_error(
        "read",
        WorkbookError::Corrupt {
            path: input.to_path_buf(),
            reason: "the file changed while it was read".into(),
        },
    )
}

/// Pass 2: every record again, written with its fills, then the appended rows.
#[allow(clippy::too_many_arguments)]
fn write_pass(
    enricher: &Enricher,
    input: &Path,
    name: &str,
    job: &mut Job,
    scan: &Scan,
    reader: &mut CsvReader,
    record: &mut Record,
    digested: &mpsc::Receiver<Result<Vec<Digested>, FatalError>>,
    bar: &indicatif::ProgressBar,
) -> Result<tempfile::NamedTempFile, EnrichError> {
    let read_err = |e| file_error("read", e);
    job.report.rows += scan.row_ids.len();
    job.report.skipped_indicators += scan.skipped;
    job.report.tables = 1;
    reader.rewind().map_err(read_err)?;
    let temp = job.output_temp_file(name)?;
    let write_err = |e: std::io::Error| file_error("write", WorkbookError::io(input, "write the output", e));
    let output = outbox::FlushingBehind::new(temp);
    let mut writer = CsvWriter::new(std::io::BufWriter::with_capacity(1 << 20, output), reader.dialect())
        .map_err(write_err)?;
    if !reader.read_into(record).map_err(read_err)? {
        return Err(file_changed(input));
    }
    let plan = &scan.plan;
    writer.write_record(record, plan.appended_headers()).map_err(write_err)?;

    let mut store = FactStore::new(&scan.uses, MAX_WAITING_FACTS);
    let mut looked_up = 0usize;
    // Passive-DNS IPs that may become appended rows, in the order their rows found them; which of them are
    // new to the sheet is decided once, at the end.
    let mut found_ips = FoundIps::default();
    let passive_dns_mode = plan.mode() == Mode::IpDomain;
    let mut row_index = 0usize;
    let mut waited = std::time::Duration::ZERO;
    // Not with reverse DNS on: the names of a chunk are resolved when it is merged, and keeping fills across
    // that is not worth the care for a lookup that costs far more than the fills.
    let mut repeated = enricher.resolver.is_none().then(RepeatedFills::default);
    let mut repeated_rows = 0usize;
    while reader.read_into(record).map_err(read_err)? {
        let Some(&id) = scan.row_ids.get(row_index) else { return Err(file_changed(input)) };
        row_index += 1;
        let row = CsvRow(record);
        if id == NO_INDICATOR {
            if Indicator::classify(&row.text(plan.indicator_column())).is_some() {
                return Err(file_changed(input));
            }
            writer.copy_record(record).map_err(write_err)?;
            continue;
        }
        let id = id as usize;
        let indicator = &scan.indicators[id];
        if !cell_holds(&row.text(plan.indicator_column()), indicator) {
            return Err(file_changed(input));
        }
        while looked_up <= id {
            let waiting = std::time::Instant::now();
            let chunk = digested
                .recv()
                .map_err(|_| {
                    file_error(
                        "look up",
                        WorkbookError::Corrupt {
                            path: input.to_path_buf(),
                            reason: "the lookup thread stopped early".into(),
                        },
                    )
                })?
                .map_err(CriticalError::from)?;
            waited += waiting.elapsed();
            let end = looked_up + chunk.len();
            let facts = job.merge_all(&scan.indicators[looked_up..end], chunk);
            if enricher.resolver.is_some() {
                let ips = chunk_ips_to_resolve(scan, looked_up, &facts);
                job.resolve_reverse_names(&ips);
            }
            store.insert(looked_up, facts).map_err(|e| spill_error(input, e))?;
            looked_up = end;
        }
        // A later row of an indicator whose earlier row had the same blank cells gets that row's fills. Its
        // passive-DNS IP needs no second look either: that row saw the same facts and the same `IP Address`.
        let key = if repeated.is_some() && scan.uses[id] > 1 { plan.row_fill_key(&row) } else { None };
        if let Some(kept) = key.and_then(|key| repeated.as_mut()?.reuse(id, key)) {
            repeated_rows += 1;
            writer.write_record(record, &kept.patches).map_err(write_err)?;
        } else {
            let rows_to_come = store.rows_to_come(id);
            let facts = store.get(id).map_err(|e| spill_error(input, e))?;
            let facts = facts.as_deref();
            if let Some(facts) = facts
                && indicator.kind == IndicatorKind::Host
                && passive_dns_mode
                && plan.wants_passive_dns(&row)
                && let Some(ip) = facts.passive_dns_ip
                && plan::is_globally_routable(ip)
            {
                found_ips.push(ip);
            }
            let fills = plan.fills(&row, indicator.kind, facts, &job.ips, indicator.ip());
            count_fills(&mut job.fills_by_header, &fills);
            let keep =
                key.filter(|_| rows_to_come > 1).map(|key| (key, fills.iter().map(|f| f.header).collect()));
            let patches = csv_patches(fills);
            writer.write_record(record, &patches).map_err(write_err)?;
            if let (Some(repeated), Some((key, headers))) = (repeated.as_mut(), keep) {
                repeated.keep(id, key, &patches, headers, &mut job.fills_by_header);
            }
        }
        store.used(id);
        if let Some(repeated) = repeated.as_mut()
            && store.rows_to_come(id) == 0
        {
            repeated.forget(id, &mut job.fills_by_header);
        }
    }
    if row_index != scan.row_ids.len() {
        return Err(file_changed(input));
    }
    tracing::debug!(ms = waited.as_millis() as u64, "time the CSV write pass waited for lookups");
    if let Some(repeated) = &repeated {
        tracing::debug!(
            rows = repeated_rows,
            most_bytes = repeated.most_bytes,
            "rows that reused the fills of an earlier row of their indicator"
        );
    }

    // Appended rows: the passive-DNS IPs, looked up (and resolved) now, in the order their rows found them.
    let (present_v4, present_v6) = sheet_ips(&scan.indicators);
    let appended: Vec<Indicator> = found_ips
        .new_ips(&present_v4, &present_v6)
        .into_iter()
        .filter_map(|ip| Indicator::classify(&ip.to_string()))
        .collect();
    job.report.rows_appended += appended.len();
    bar.set_length(bar.length().unwrap_or(0) + appended.len() as u64);
    let mut appended_facts = Vec::with_capacity(appended.len());
    for chunk in appended.chunks(LOOKUP_CHUNK) {
        appended_facts.extend(job.look_up_facts(chunk, bar)?);
    }
    if enricher.resolver.is_some() && plan.has_ip_note_columns() {
        let ips: Vec<IpAddr> = appended.iter().filter_map(Indicator::ip).collect();
        job.resolve_reverse_names(&ips);
    }
    for (ip, facts) in appended.iter().zip(&appended_facts) {
        let fills = plan.fills(&plan::EmptyRow, ip.kind, facts.as_ref(), &job.ips, ip.ip());
        count_fills(&mut job.fills_by_header, &fills);
        let mut cells = csv_patches(fills);
        cells.push((plan.indicator_column(), Cow::Borrowed(ip.value.as_str())));
        writer.write_new_row(plan.width(), &cells).map_err(write_err)?;
    }
    let replaced = writer.fields_with_replacements();
    if replaced > 0 {
        tracing::warn!(
            "{}: {} of new text held characters Windows-1252 cannot represent, written as `?` (a CSV saved as \
             UTF-8 keeps them)",
            input.display(),
            super::counted(replaced, "cell")
        );
    }
    let buffered = writer.finish().map_err(write_err)?;
    let (temp, flushes) = buffered.into_inner().map_err(|e| write_err(e.into_error()))?.finish();
    tracing::debug!(flushes, "times the workbook was flushed to disk while it was written");
    Ok(temp)
}

/// Pass 1: the header, the plan, and the indicator of every row.
/// `new_indicator` is told each distinct indicator when first seen.
///
/// Two threads: a parsing thread reads the records and sends, per batch of rows, the raw indicator cells and
/// what the rows want ([`ParsedRows`]); this thread classifies and numbers the indicators. Each was about
/// half of the pass when one thread did both (perf, a million distinct indicators), and during this pass
/// the other core has little else to do.
fn scan(
    enricher: &Enricher,
    input: &Path,
    reader: &mut CsvReader,
    record: &mut Record,
    new_indicator: &mut dyn FnMut(&Indicator),
) -> Result<Scan, EnrichError> {
    let read_err = |e| file_error("read", e);
    let not_vttl = || file_error("read", WorkbookError::NotVttl { path: input.to_path_buf() });
    if !reader.read_into(record).map_err(read_err)? {
        return Err(not_vttl());
    }
    if record.has_unclosed_quote() {
        return Err(file_error("read", unclosed_quote(input, record)));
    }
    let header_texts: Vec<String> = record.fields().map(Cow::into_owned).collect();
    let mut columns = ColumnMap::from_header(&header_texts).ok_or_else(not_vttl)?;
    // Where appended columns go is only known once every record has been seen (after the widest); nothing the
    // scan asks of the plan involves them (the passive-DNS and IP-note columns are never appended).
    let plan = TablePlan::new(columns.clone(), &enricher.lists);
    let encoding = reader.dialect().encoding;
    let (batches, parsed) = mpsc::sync_channel::<Result<ParsedRows, WorkbookError>>(PARSED_BATCHES_AHEAD);
    let numbered = std::thread::scope(|threads| {
        let plan = &plan;
        threads.spawn(move || parse_rows(input, reader, record, plan, &batches));
        // Dropping `parsed` early (an error here) stops the parsing thread at its next batch.
        number_indicators(input, encoding, parsed, new_indicator)
    })?;
    let Numbered { skipped, indicators, uses, flags, row_ids, widest } = numbered;
    let plan = if widest > columns.header_len() {
        columns.widen_to(widest);
        TablePlan::new(columns, &enricher.lists)
    } else {
        plan
    };
    // Checked before any lookup is spent: the write would refuse the first row past the limit.
    if let Some(error) = super::no_room_for_columns(input, &plan, &format!("data reaches column {widest}")) {
        return Err(error);
    }
    Ok(Scan { plan, skipped, indicators: Arc::new(indicators), uses, flags, row_ids })
}

/// Rows per batch from the parsing thread of the scan.
const PARSED_BATCH_ROWS: usize = 4096;

/// Batches the parsing thread may have ready before they are numbered.
const PARSED_BATCHES_AHEAD: usize = 4;

/// A batch of rows from the parsing thread of the scan: each row's raw indicator cell (quotes included, in
/// the record's internal encoding; empty when the row has no such cell) and its `WANTS_…` flags as they would
/// be for either kind of indicator (`WANTS_PASSIVE_DNS` for a host, `WANTS_IP_NOTES` for an IP).
struct ParsedRows {
    cells: Vec<u8>,
    /// Where each row's cell ends in `cells`, and its flags.
    rows: Vec<(usize, u8)>,
    /// Most fields in a record of the batch.
    widest: usize,
}

/// The parsing thread of the scan: every record after the header, in batches, until the end of the file, an
/// error (sent, then it stops) or the receiver going away.
/// The fields of `record` up to its last one that is not blank (empty trailing fields are no data: they must
/// not push the appended columns out, as they do not in an XLSX sheet).
fn width_with_data(record: &Record) -> usize {
    (0..record.len())
        .rev()
        .find(|&i| {
            record.raw_field(i).is_some_and(|raw| raw.iter().any(|b| !matches!(b, b' ' | b'\t' | b'"')))
        })
        .map_or(0, |i| i + 1)
}

/// A record whose quoted field is never closed runs to the end of the file. Its fills would land inside
/// that open field (changing a cell the analyst wrote and shifting the fills), and so would any appended
/// row, so the file is refused: it is most likely cut short.
fn unclosed_quote(input: &Path, record: &Record) -> WorkbookError {
    WorkbookError::Corrupt {
        path: input.to_path_buf(),
        reason: format!(
            "record {} opens a quote that is never closed, so it runs to the end of the file (is the file cut \
             short?)",
            record.index() + 1
        ),
    }
}

fn parse_rows(
    input: &Path,
    reader: &mut CsvReader,
    record: &mut Record,
    plan: &TablePlan,
    batches: &mpsc::SyncSender<Result<ParsedRows, WorkbookError>>,
) {
    let column = plan.indicator_column();
    let encoding = reader.dialect().encoding;
    let passive_dns_mode = plan.mode() == Mode::IpDomain;
    let new_batch =
        || ParsedRows { cells: Vec::new(), rows: Vec::with_capacity(PARSED_BATCH_ROWS), widest: 0 };
    let mut batch = new_batch();
    loop {
        match reader.read_into(record) {
            Ok(true) if record.has_unclosed_quote() => {
                let _ = batches.send(Err(unclosed_quote(input, record)));
                return;
            }
            Ok(true) => {
                let row = CsvRow(record);
                let mut row_flags = 0;
                if passive_dns_mode && plan.wants_passive_dns(&row) {
                    row_flags |= WANTS_PASSIVE_DNS;
                }
                if plan.wants_ip_notes(&row) {
                    row_flags |= WANTS_IP_NOTES;
                }
                let raw = record.raw_field(column).unwrap_or_default();
                if raw.len() > LONG_RAW_CELL {
                    let text = field_text(raw, encoding);
                    let text = text.trim();
                    if text.is_empty() {
                        row_flags |= LONG_CELL_BLANK;
                    } else if text.len() > LONGEST_INDICATOR {
                        row_flags |= LONG_CELL_NOT_INDICATOR;
                    } else {
                        batch.cells.extend_from_slice(text.as_bytes());
                        row_flags |= LONG_CELL_TRIMMED;
                    }
                } else {
                    batch.cells.extend_from_slice(raw);
                }
                batch.rows.push((batch.cells.len(), row_flags));
                batch.widest = batch.widest.max(width_with_data(record));
                if batch.rows.len() == PARSED_BATCH_ROWS
                    && batches.send(Ok(std::mem::replace(&mut batch, new_batch()))).is_err()
                {
                    return;
                }
            }
            Ok(false) => {
                if !batch.rows.is_empty() {
                    let _ = batches.send(Ok(batch));
                }
                return;
            }
            Err(e) => {
                // The scan fails with it: the rows of the unfinished batch do not matter.
                let _ = batches.send(Err(e));
                return;
            }
        }
    }
}

/// What numbering the indicators of the scan learnt (see [`Scan`]).
struct Numbered {
    widest: usize,
    skipped: usize,
    indicators: Vec<Indicator>,
    uses: Vec<u32>,
    flags: Vec<u8>,
    row_ids: Vec<u32>,
}

/// The numbering side of the scan: classifies each row's indicator cell and gives each distinct indicator an
/// id, in order of first appearance.
fn number_indicators(
    input: &Path,
    encoding: TextEncoding,
    parsed: mpsc::Receiver<Result<ParsedRows, WorkbookError>>,
    new_indicator: &mut dyn FnMut(&Indicator),
) -> Result<Numbered, EnrichError> {
    // foldhash: several times faster than SipHash on these short keys, and randomly seeded per process, so a
    // hostile sheet cannot aim at collisions. The raw-cell map skips classifying a cell text seen before (the
    // usual case: indicators repeat); it is bounded, the indicator map is the one that must hold them all.
    // The ids are held in a table of `IdSlot`s whose keys are looked up in `indicators` (9 bytes a slot instead
    // of a map entry holding the indicator: this table is the largest thing a sheet of distinct indicators
    // needs). Each slot keeps its indicator's hash, so growing the table re-hashes nothing: with a million
    // distinct indicators, fetching every indicator again to hash it was 6 % of the main thread (perf).
    let hasher = foldhash::fast::RandomState::default();
    let hash_of = |indicator: &Indicator| IdSlot::hash_of(hasher.hash_one(indicator));
    let mut ids: hashbrown::HashTable<IdSlot> = hashbrown::HashTable::new();
    let mut indicators: Vec<Indicator> = Vec::new();
    let mut raw_ids: HashMap<Box<[u8]>, u32, foldhash::fast::RandomState> = HashMap::default();
    let mut uses: Vec<u32> = Vec::new();
    let mut flags: Vec<u8> = Vec::new();
    let mut row_ids: Vec<u32> = Vec::new();
    let mut skipped = 0usize;
    let mut kinds: Vec<IndicatorKind> = Vec::new();
    let mut widest = 0;
    for batch in parsed {
        let batch = batch.map_err(|e| file_error("read", e))?;
        widest = widest.max(batch.widest);
        let mut start = 0;
        for &(end, row_flags) in &batch.rows {
            let raw = &batch.cells[start..end];
            start = end;
            let long_cell = row_flags & LONG_CELL;
            let remembered = if long_cell == 0 { raw_ids.get(raw) } else { None };
            let id = match remembered {
                Some(&id) => id,
                None => {
                    let cell = match long_cell {
                        0 => field_text(raw, encoding),
                        LONG_CELL_TRIMMED => String::from_utf8_lossy(raw),
                        LONG_CELL_NOT_INDICATOR => {
                            skipped += 1;
                            row_ids.push(NO_INDICATOR);
                            continue;
                        }
                        _ => Cow::Borrowed(""),
                    };
                    if cell.trim().is_empty() {
                        row_ids.push(NO_INDICATOR);
                        continue;
                    }
                    let Some(indicator) = Indicator::classify(&cell) else {
                        skipped += 1;
                        row_ids.push(NO_INDICATOR);
                        continue;
                    };
                    let next_id =
                        u32::try_from(uses.len()).ok().filter(|&id| id != NO_INDICATOR).ok_or_else(|| {
                            file_error(
                                "read",
                                WorkbookError::TooLarge {
                                    path: input.to_path_buf(),
                                    reason: format!("more than {} distinct indicators", NO_INDICATOR - 1),
                                },
                            )
                        })?;
                    let hash = hash_of(&indicator);
                    let known = ids.find(hash, |slot| {
                        slot.hash == hash as u32 && indicators[slot.id as usize] == indicator
                    });
                    let id = match known {
                        Some(slot) => slot.id,
                        None => {
                            new_indicator(&indicator);
                            uses.push(0);
                            flags.push(0);
                            kinds.push(indicator.kind);
                            indicators.push(indicator);
                            ids.insert_unique(
                                hash,
                                IdSlot { id: next_id, hash: hash as u32 },
                                IdSlot::table_hash,
                            );
                            next_id
                        }
                    };
                    if long_cell == 0 && raw_ids.len() < RAW_CELL_CACHE {
                        raw_ids.insert(raw.into(), id);
                    }
                    id
                }
            };
            let row_flags = row_flags
                & match kinds[id as usize] {
                    IndicatorKind::Host => WANTS_PASSIVE_DNS,
                    IndicatorKind::Ip => WANTS_IP_NOTES,
                    _ => 0,
                };
            uses[id as usize] += 1;
            flags[id as usize] |= row_flags;
            row_ids.push(id);
        }
    }
    Ok(Numbered { widest, skipped, indicators, uses, flags, row_ids })
}

/// A slot of the scan's table of indicator ids: the id, and the low half of its indicator's hash, from which
/// [`IdSlot::hash_of`] makes the whole hash the table uses (both halves the same), so the table can grow
/// without looking at the indicators again.
#[derive(Clone, Copy)]
struct IdSlot {
    id: u32,
    hash: u32,
}

impl IdSlot {
    /// The table's hash of an indicator whose full hash is `full`: its low 32 bits, repeated in the high half
    /// (the table takes a slot's position from the low bits and a tag from the top 7).
    fn hash_of(full: u64) -> u64 {
        let low = full & u64::from(u32::MAX);
        low | (low << 32)
    }

    fn table_hash(&self) -> u64 {
        IdSlot::hash_of(u64::from(self.hash))
    }
}

/// The fills of indicators that have rows still to come, made for their first row, by the row's
/// [`TablePlan::row_fill_key`]: a sheet whose indicators repeat computes the fills of each indicator once
/// (formatting, formula neutralising and copying per row were a quarter of its write pass). At most
/// [`REPEATED_FILLS_BYTES`] of text are kept; beyond that rows are filled one by one as before. Entries go when
/// their indicator's last row is written.
#[derive(Default)]
struct RepeatedFills {
    /// By indicator id, grown as needed (a table of distinct indicators used once each stays empty): a row
    /// reads its slot directly, where a hash map's probe was a cache miss per row.
    slots: Vec<Option<KeptFills>>,
    bytes: usize,
    /// The most `bytes` ever were (for the debug log).
    most_bytes: usize,
}

struct KeptFills {
    key: u32,
    patches: Vec<(usize, String)>,
    /// The column header of each patch: what the report counts.
    headers: Vec<&'static str>,
    /// Rows that reused these fills, not yet counted in the report.
    reused: u32,
}

impl KeptFills {
    /// What counts against [`REPEATED_FILLS_BYTES`].
    fn size(&self) -> usize {
        self.patches.iter().map(|(_, text)| text.len() + 48).sum()
    }

    /// Adds the rows that reused these fills to the report's count per column.
    fn count_reuses(&mut self, counts: &mut FillCounts) {
        count_headers(counts, &self.headers, std::mem::take(&mut self.reused) as usize);
    }
}

/// Largest amount of fill text [`RepeatedFills`] keeps.
const REPEATED_FILLS_BYTES: usize = 16 << 20;

impl RepeatedFills {
    /// The fills kept for `id` and rows with `key`, counted as reused by one more row.
    fn reuse(&mut self, id: usize, key: u32) -> Option<&KeptFills> {
        let kept = self.slots.get_mut(id)?.as_mut().filter(|kept| kept.key == key)?;
        kept.reused += 1;
        Some(kept)
    }

    /// Keeps the fills of `id` for rows with `key` (replacing those kept for another key, whose reuses are
    /// counted into `counts` first).
    fn keep(
        &mut self,
        id: usize,
        key: u32,
        patches: &[(usize, Cow<'_, str>)],
        headers: Vec<&'static str>,
        counts: &mut FillCounts,
    ) {
        let patches = patches.iter().map(|(column, text)| (*column, text.clone().into_owned())).collect();
        let kept = KeptFills { key, patches, headers, reused: 0 };
        let replaced = self.slots.get(id).and_then(Option::as_ref).map_or(0, KeptFills::size);
        let bytes = self.bytes - replaced + kept.size();
        if bytes > REPEATED_FILLS_BYTES {
            return;
        }
        if self.slots.len() <= id {
            self.slots.resize_with(id + 1, || None);
        }
        if let Some(mut old) = self.slots[id].replace(kept) {
            old.count_reuses(counts);
        }
        self.bytes = bytes;
        self.most_bytes = self.most_bytes.max(bytes);
    }

    /// Drops the fills of `id` (its last row is written), counting their reuses into `counts`.
    fn forget(&mut self, id: usize, counts: &mut FillCounts) {
        if let Some(mut kept) = self.slots.get_mut(id).and_then(Option::take) {
            kept.count_reuses(counts);
            self.bytes -= kept.size();
        }
    }
}

/// The passive-DNS IPs the rows of the write pass found (repeats allowed), from which the appended rows are
/// taken at the end ([`FoundIps::new_ips`]): each IP once, unless it is an IP indicator of the sheet, in the
/// order first found. Sorting at the end replaces a hash-set probe per domain row, which with half a million
/// IPs in a sheet was two cache misses each, 6 % of the main thread (perf). IPv4 entries are 8 bytes (address
/// and order in one `u64`, so sorting them sorts by address, then order).
struct FoundIps {
    v4: Vec<u64>,
    v6: Vec<(u128, u32)>,
    /// The order number of the next entry.
    next: u32,
    last: Option<IpAddr>,
    /// When `next` reaches this, the entries are numbered again (`u32::MAX`; smaller in a test).
    renumber_at: u32,
}

impl Default for FoundIps {
    fn default() -> Self {
        FoundIps { v4: Vec::new(), v6: Vec::new(), next: 0, last: None, renumber_at: u32::MAX }
    }
}

impl FoundIps {
    fn push(&mut self, ip: IpAddr) {
        if self.last == Some(ip) {
            return;
        }
        self.last = Some(ip);
        if self.next >= self.renumber_at {
            // Numbered again from 0 after keeping each IP's first entry: fewer entries than distinct IPs.
            for ip in self.new_ips(&[], &[]) {
                self.push_entry(ip);
            }
        }
        self.push_entry(ip);
    }

    fn push_entry(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.v4.push(u64::from(v4.to_bits()) << 32 | u64::from(self.next)),
            IpAddr::V6(v6) => self.v6.push((v6.to_bits(), self.next)),
        }
        self.next += 1;
    }

    /// Takes the entries: each IP once, but none of `present_v4` / `present_v6` (sorted), in the order first
    /// found.
    fn new_ips(&mut self, present_v4: &[u32], present_v6: &[u128]) -> Vec<IpAddr> {
        fn first_of_each_but<K: Ord + Copy>(
            sorted: impl Iterator<Item = (K, u32)>,
            present: &[K],
            to_ip: impl Fn(K) -> IpAddr,
            new: &mut Vec<(u32, IpAddr)>,
        ) {
            let mut present = present.iter().peekable();
            let mut previous = None;
            for (key, order) in sorted {
                if previous == Some(key) {
                    continue;
                }
                previous = Some(key);
                while present.next_if(|&&p| p < key).is_some() {}
                if present.peek() != Some(&&key) {
                    new.push((order, to_ip(key)));
                }
            }
        }
        let (mut v4, mut v6) = (std::mem::take(&mut self.v4), std::mem::take(&mut self.v6));
        (self.next, self.last) = (0, None);
        v4.sort_unstable();
        v6.sort_unstable();
        let mut new = Vec::new();
        let v4_entries = v4.into_iter().map(|entry| ((entry >> 32) as u32, entry as u32));
        first_of_each_but(
            v4_entries,
            present_v4,
            |bits| IpAddr::from(std::net::Ipv4Addr::from_bits(bits)),
            &mut new,
        );
        first_of_each_but(
            v6.into_iter(),
            present_v6,
            |bits| IpAddr::from(std::net::Ipv6Addr::from_bits(bits)),
            &mut new,
        );
        new.sort_unstable_by_key(|&(order, _)| order);
        new.into_iter().map(|(_, ip)| ip).collect()
    }
}

/// The IPs passive-DNS rows must not append, as [`FoundIps::new_ips`] wants them: the sheet's IP indicators,
/// sorted.
fn sheet_ips(indicators: &[Indicator]) -> (Vec<u32>, Vec<u128>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for ip in indicators.iter().filter_map(Indicator::ip) {
        match ip {
            IpAddr::V4(ip) => v4.push(ip.to_bits()),
            IpAddr::V6(ip) => v6.push(ip.to_bits()),
        }
    }
    v4.sort_unstable();
    v6.sort_unstable();
    (v4, v6)
}

/// True when `cell` (a row's indicator cell in the second pass) still holds `indicator`. The common case is
/// decided without allocating: the trimmed cell is the indicator's text up to ASCII case.
fn cell_holds(cell: &str, indicator: &Indicator) -> bool {
    cell.trim().eq_ignore_ascii_case(&indicator.value)
        || Indicator::classify(cell).as_ref() == Some(indicator)
}

/// The IPs of a freshly looked-up chunk (ids from `first`) whose rows will show a reverse name or sinkhole:
/// IP items with an empty note cell, and the passive-DNS IP of domain rows that take one.
fn chunk_ips_to_resolve(scan: &Scan, first: usize, facts: &[Option<Facts>]) -> Vec<IpAddr> {
    if !scan.plan.has_ip_note_columns() {
        return Vec::new();
    }
    let mut ips = Vec::new();
    for (offset, facts) in facts.iter().enumerate() {
        let id = first + offset;
        let flags = scan.flags[id];
        if flags & WANTS_IP_NOTES != 0
            && let Some(ip) = scan.indicators[id].ip()
        {
            ips.push(ip);
        }
        if flags & WANTS_PASSIVE_DNS != 0
            && let Some(ip) = facts.as_ref().and_then(|f| f.passive_dns_ip)
        {
            ips.push(ip);
        }
    }
    ips
}

fn spill_error(input: &Path, error: std::io::Error) -> EnrichError {
    file_error("write", WorkbookError::io(input, "keep looked-up facts in a temporary file for", error))
}

/// Where the facts of one indicator are while the second pass runs.
enum Slot {
    /// Not looked up yet.
    Pending,
    /// The lookup failed: its rows get nothing.
    Failed,
    Ready(Box<Facts>),
    /// In the temporary file: offset and length of its encoding.
    Moved {
        offset: u64,
        len: u32,
    },
    /// Every row using it has been written.
    Done,
}

/// The facts of the indicators whose rows are still to come.
struct FactStore {
    slots: Vec<Slot>,
    /// Rows still to come, per id.
    remaining: Vec<u32>,
    /// Ids whose facts may be in memory (some may be done by now).
    in_memory: Vec<u32>,
    file: Option<std::fs::File>,
    file_len: u64,
    /// Scratch buffer for encoding and decoding.
    buffer: Vec<u8>,
    /// Facts kept in memory before they are moved to the file ([`MAX_WAITING_FACTS`]).
    max_in_memory: usize,
}

impl FactStore {
    fn new(uses: &[u32], max_in_memory: usize) -> FactStore {
        FactStore {
            slots: uses.iter().map(|_| Slot::Pending).collect(),
            remaining: uses.to_vec(),
            in_memory: Vec::new(),
            file: None,
            file_len: 0,
            buffer: Vec::new(),
            max_in_memory,
        }
    }

    /// Stores the facts of ids `first`, `first + 1`, …; moves the facts waiting in memory to the file when
    /// there are too many.
    fn insert(&mut self, first: usize, facts: Vec<Option<Facts>>) -> std::io::Result<()> {
        for (offset, facts) in facts.into_iter().enumerate() {
            let id = first + offset;
            self.slots[id] = match facts {
                Some(facts) => {
                    self.in_memory.push(id as u32);
                    Slot::Ready(Box::new(facts))
                }
                None => Slot::Failed,
            };
        }
        self.in_memory.retain(|&id| matches!(self.slots[id as usize], Slot::Ready(_)));
        if self.in_memory.len() > self.max_in_memory {
            self.move_to_file()?;
        }
        Ok(())
    }

    fn move_to_file(&mut self) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(tempfile::tempfile()?),
        };
        file.seek(SeekFrom::Start(self.file_len))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut *file);
        for id in self.in_memory.drain(..) {
            let slot = &mut self.slots[id as usize];
            let Slot::Ready(facts) = slot else { continue };
            self.buffer.clear();
            facts.encode(&mut self.buffer);
            let len = u32::try_from(self.buffer.len()).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "facts too large for the temporary file")
            })?;
            out.write_all(&self.buffer)?;
            *slot = Slot::Moved { offset: self.file_len, len };
            self.file_len += u64::from(len);
        }
        out.flush()
    }

    /// The facts of `id` (`None`: its lookup failed).
    fn get(&mut self, id: usize) -> std::io::Result<Option<Cow<'_, Facts>>> {
        match &self.slots[id] {
            Slot::Ready(facts) => Ok(Some(Cow::Borrowed(&**facts))),
            Slot::Failed => Ok(None),
            &Slot::Moved { offset, len } => {
                let file =
                    self.file.as_mut().ok_or_else(|| std::io::Error::other("temporary file missing"))?;
                file.seek(SeekFrom::Start(offset))?;
                self.buffer.resize(len as usize, 0);
                file.read_exact(&mut self.buffer)?;
                let facts = Facts::decode(&self.buffer).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "unreadable facts in the temporary file",
                    )
                })?;
                Ok(Some(Cow::Owned(facts)))
            }
            Slot::Pending | Slot::Done => {
                Err(std::io::Error::other("facts asked for an indicator that is not looked up"))
            }
        }
    }

    /// Rows of `id` not yet written (the current one included until [`FactStore::used`]).
    fn rows_to_come(&self, id: usize) -> u32 {
        self.remaining[id]
    }

    /// One more row of `id` is written; after its last row its facts are dropped.
    fn used(&mut self, id: usize) {
        let remaining = &mut self.remaining[id];
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            self.slots[id] = Slot::Done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `FoundIps` against the obvious per-row rule: an IP found is appended when it is not an IP
    /// indicator of the sheet and was not appended before, in the order found.
    #[test]
    fn found_ips_keep_new_ips_once_in_the_order_found() {
        let pool: Vec<IpAddr> = (0..40u8)
            .map(|i| match i % 4 {
                0 => IpAddr::from([198, 51, 100, i]),
                1 => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)]),
                // (IPv4-mapped IPv6 addresses never get here: cells and passive-DNS answers are read as the
                // IPv4 address.)
                2 => IpAddr::from([192, 0, 2, i]),
                _ => IpAddr::from([203, 0, 113, 255 - i]),
            })
            .collect();
        let mut rng = fastrand::Rng::with_seed(6);
        for round in 0..300 {
            let present: Vec<IpAddr> = pool.iter().copied().filter(|_| rng.u8(..4) == 0).collect();
            let mut indicators: Vec<Indicator> =
                present.iter().filter_map(|ip| Indicator::classify(&ip.to_string())).collect();
            assert_eq!(indicators.len(), present.len(), "every IP of the pool is an indicator");
            indicators.extend(Indicator::classify("example.com"));
            let found: Vec<IpAddr> = (0..rng.usize(..60)).map(|_| pool[rng.usize(..pool.len())]).collect();
            let mut expected = Vec::new();
            for ip in &found {
                if !present.contains(ip) && !expected.contains(ip) {
                    expected.push(*ip);
                }
            }
            // Also with the entries numbered again every few IPs (as after 4 billion rows).
            let mut found_ips = FoundIps { renumber_at: [u32::MAX, 3, 5][round % 3], ..FoundIps::default() };
            for &ip in &found {
                found_ips.push(ip);
            }
            let (present_v4, present_v6) = sheet_ips(&indicators);
            assert_eq!(found_ips.new_ips(&present_v4, &present_v6), expected, "round {round}: {found:?}");
        }
    }

    fn facts(i: u64) -> Facts {
        Facts {
            reputation: format!("reason-{i}"),
            file_count: Some(i),
            passive_dns_ip: Some(IpAddr::from([203, 0, 113, (i % 250) as u8])),
            whois: i.is_multiple_of(2).then(|| format!("org {i}")),
            ..Facts::default()
        }
    }

    #[test]
    fn facts_waiting_beyond_the_limit_go_to_the_file_and_come_back() {
        // Ids 0..10, each used by three rows; at most four facts in memory.
        let uses = vec![3u32; 10];
        let mut store = FactStore::new(&uses, 4);
        store.insert(0, (0..6).map(|i| Some(facts(i))).collect()).unwrap();
        assert!(store.file.is_some(), "six waiting facts are more than four");
        assert!(store.slots[..6].iter().all(|slot| matches!(slot, Slot::Moved { .. })));
        store.insert(6, vec![Some(facts(6)), None, Some(facts(8)), Some(facts(9))]).unwrap();
        assert!(matches!(store.slots[7], Slot::Failed));
        for _round in 0..3 {
            for id in 0..10 {
                let got = store.get(id).unwrap().map(Cow::into_owned);
                assert_eq!(got, (id != 7).then(|| facts(id as u64)), "id {id}");
                store.used(id);
            }
        }
        // After its last row an id's facts are gone.
        assert!(store.slots.iter().all(|slot| matches!(slot, Slot::Done)));
        assert!(store.get(3).is_err());
    }

    #[test]
    fn facts_within_the_limit_stay_in_memory_and_are_dropped_after_their_last_row() {
        let mut store = FactStore::new(&[1, 2], 4);
        store.insert(0, vec![Some(facts(0)), Some(facts(1))]).unwrap();
        assert!(store.file.is_none());
        assert!(matches!(store.get(0).unwrap(), Some(Cow::Borrowed(_))));
        store.used(0);
        assert!(matches!(store.slots[0], Slot::Done));
        store.used(1);
        assert!(matches!(store.slots[1], Slot::Ready(_)));
        store.used(1);
        assert!(matches!(store.slots[1], Slot::Done));
    }

    #[test]
    fn cell_check_accepts_the_same_indicator_written_differently() {
        let ip = Indicator::classify("2001:db8::1").unwrap();
        assert!(cell_holds(" 2001:DB8::1 ", &ip));
        assert!(cell_holds("2001:0db8:0:0:0:0:0:1", &ip));
        assert!(!cell_holds("2001:db8::2", &ip));
        let host = Indicator::classify("Example.COM").unwrap();
        assert!(cell_holds("EXAMPLE.com", &host));
        assert!(!cell_holds("example.org", &host));
    }
}
