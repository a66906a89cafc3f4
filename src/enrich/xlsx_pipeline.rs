//! XLSX/XLS enrichment: the workbook is read whole into the typed model (calamine has no other way), its
//! tables scanned, and then three things overlap:
//!
//! * a lookup thread fetches and digests the next chunk of indicators ([`Job::look_up_tables`]);
//! * this thread merges each chunk into the job (counters, log lines, facts) and fills every row whose
//!   indicator now has its facts;
//! * a writer thread ([`xlsx::WorkbookWriter`]) writes each filled row as soon as it gets it, and packs the
//!   file at the end.
//!
//! Writing is the longest step (rust_xlsxwriter serialises and deflates every cell), so it no longer waits
//! for the last lookup: the rows of a table are filled in order, and row *n* goes out once the indicators of
//! rows 1…*n* are merged. The first appearances of a table's indicators are in row order and the lookups run
//! in that order, so rows become ready from the top down, one chunk at a time.
//!
//! The output is the same as filling the whole model first: a row's fills depend only on the row and its
//! indicator's facts — except the reverse-DNS names, resolved in one batch after all lookups; with reverse DNS
//! on, every row waits for them. Rows appended from passive DNS are written after the table's own rows, once
//! their own lookups are done. If a lookup stops the run (a critical error), the writer is told nothing more,
//! drops its temporary file and nothing reaches the outbox.

use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use super::{EnrichError, Enricher, Job, ModelRow, NO_INDICATOR, TableScan, file_error, no_room_is_critical};
use crate::outbox;
use crate::vttl::ColumnMap;
use crate::workbook::{Cell, Sheet, Workbook, WorkbookError, xlsx};

use super::plan::TablePlan;

/// What the writer thread is told.
enum ToWriter {
    /// The next rows of one sheet (by index in the workbook), in order.
    Rows { sheet: usize, rows: Vec<Vec<Cell>> },
    /// Every row has been sent: pack the file.
    Complete,
}

/// Reads, enriches and writes one XLSX/XLS workbook into a temporary file in the outbox.
pub(super) fn enrich_xlsx(
    enricher: &Enricher,
    input: &Path,
    name: &str,
    job: &mut Job,
) -> Result<tempfile::NamedTempFile, EnrichError> {
    let started = Instant::now();
    let mut book = xlsx::read_workbook(input).map_err(|e| file_error("read", e))?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "workbook read");
    let started = Instant::now();
    let mut tables = Vec::new();
    let mut sheet_of_table = Vec::new();
    for (index, sheet) in book.sheets.iter().enumerate() {
        let Some(header) = sheet.rows.first() else { continue };
        let texts: Vec<String> = header.iter().map(|c| c.to_text().into_owned()).collect();
        let Some(mut columns) = ColumnMap::from_header(&texts) else { continue };
        // Up to each row's last cell that is not blank (as in a CSV: blank cells are no data).
        let with_data = |row: &Vec<Cell>| row.iter().rposition(|cell| !cell.to_text().trim().is_empty());
        columns.widen_to(sheet.rows.iter().filter_map(with_data).max().map_or(0, |last| last + 1));
        let plan = TablePlan::new(columns, &enricher.lists);
        // Checked before any lookup is spent: the write would fail on the first column past the grid.
        let place = format!("sheet {:?} has data too near the last column Excel allows", sheet.name);
        if let Some(error) = super::no_room_for_columns(input, &plan, &place) {
            return Err(error);
        }
        let mut table = TableScan::new(plan);
        for row in sheet.rows.iter().skip(1) {
            table.observe(&ModelRow(row));
        }
        tables.push(table);
        sheet_of_table.push(index);
    }
    if tables.is_empty() {
        return Err(file_error("read", WorkbookError::NotVttl { path: input.to_path_buf() }));
    }
    for (table, &index) in tables.iter().zip(&sheet_of_table) {
        for (column, header) in table.plan.appended_headers() {
            book.sheets[index].set(0, *column, Cell::Text(header.to_string()));
        }
    }
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "workbook scanned");

    let temp = job.output_temp_file(name)?;
    // An .xlsm keeps its macro project (the output keeps the .xlsm name, so it must stay a macro workbook).
    let is_xlsm = input.extension().is_some_and(|e| e.eq_ignore_ascii_case("xlsm"));
    let vba_project = if is_xlsm {
        // A write error of the copy (into the outbox) is a write error: a full outbox is critical, not a bad file.
        xlsx::extract_vba_project(input, &job.outbox).map_err(|e| match e {
            WorkbookError::Io { .. } => no_room_is_critical(file_error("write", e)),
            other => file_error("read", other),
        })?
    } else {
        None
    };
    let options = xlsx::WriteOptions {
        vba_project: vba_project.as_ref().map(|p| p.to_path_buf()),
        ..Default::default()
    };
    let mut writer =
        xlsx::WorkbookWriter::new(&book.sheets, input, &options).map_err(|e| file_error("write", e))?;
    writer.define_names(&book.defined_names).map_err(|e| file_error("write", e))?;
    // Reverse names are resolved after the last lookup and some fills show them: then every row waits.
    let fill_while_looking_up = enricher.resolver.is_none();

    let started = Instant::now();
    std::thread::scope(|threads| {
        let (to_writer, from_filler) = mpsc::channel();
        let writing = threads.spawn(move || -> Result<tempfile::NamedTempFile, WorkbookError> {
            for message in from_filler {
                match message {
                    ToWriter::Rows { sheet, rows } => writer.write_rows(sheet, &rows)?,
                    ToWriter::Complete => {
                        let (temp, flushes) = writer.finish(outbox::FlushingBehind::new(temp))?.finish();
                        tracing::debug!(
                            flushes,
                            "times the workbook was flushed to disk while it was written"
                        );
                        return Ok(temp);
                    }
                }
            }
            // The filler stopped without completing (a critical error, reported by it): nothing to pack.
            Err(WorkbookError::io(input, "write XLSX", std::io::Error::other("the enrichment stopped")))
        });
        let mut filler = Filler {
            to_writer,
            next_row: vec![1; tables.len()],
            sheet_of_table,
            rows_before_last_lookup: 0,
            rows_at_latest_lookup: 0,
        };
        filler.send_untouched(&mut book);
        let looked_up = job.look_up_tables(&mut tables, |job, tables, merged| {
            if fill_while_looking_up {
                filler.fill_ready(job, tables, &mut book, merged);
            }
        });
        // Tests read this line to see that rows are written while the lookups go on.
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            rows_before_last_lookup = filler.rows_before_last_lookup,
            rows_while_looking_up = filler.rows_before_last_lookup + filler.rows_at_latest_lookup,
            "workbook looked up"
        );
        if looked_up.is_ok() {
            filler.fill_ready(job, &tables, &mut book, usize::MAX);
            filler.append_rows(job, &tables);
            filler.send(ToWriter::Complete);
        }
        drop(filler);
        let written = writing.join().unwrap_or_else(|_| {
            Err(WorkbookError::io(
                input,
                "write XLSX",
                std::io::Error::other("the XLSX writer thread failed"),
            ))
        });
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "workbook looked up, filled and written");
        looked_up?;
        written.map_err(|e| file_error("write", e))
    })
}

/// Hands rows to the writer thread as they become ready.
struct Filler {
    to_writer: mpsc::Sender<ToWriter>,
    /// Per table: the first row (sheet row index) not sent yet.
    next_row: Vec<usize>,
    sheet_of_table: Vec<usize>,
    /// Rows filled and sent before the last chunk of the tables' lookups was merged…
    rows_before_last_lookup: usize,
    /// …and those sent when the latest chunk was.
    rows_at_latest_lookup: usize,
}

impl Filler {
    /// Sends what is not filled: every row of a sheet without a table, and each table's header row.
    fn send_untouched(&mut self, book: &mut Workbook) {
        for (index, sheet) in book.sheets.iter_mut().enumerate() {
            let rows = if self.sheet_of_table.contains(&index) {
                sheet.rows.iter_mut().take(1).map(std::mem::take).collect()
            } else {
                std::mem::take(&mut sheet.rows)
            };
            self.send(ToWriter::Rows { sheet: index, rows });
        }
    }

    /// Fills and sends the rows of each table, from the first one not sent yet down to the first whose
    /// indicator is not among the first `merged` indicators looked up (all rows when `merged` is `usize::MAX`).
    fn fill_ready(&mut self, job: &mut Job, tables: &[TableScan], book: &mut Workbook, merged: usize) {
        let while_looking_up = merged != usize::MAX;
        if while_looking_up {
            self.rows_before_last_lookup += std::mem::take(&mut self.rows_at_latest_lookup);
        }
        for (table_index, table) in tables.iter().enumerate() {
            let sheet_index = self.sheet_of_table[table_index];
            let sheet: &mut Sheet = &mut book.sheets[sheet_index];
            let start = self.next_row[table_index];
            let mut end = start;
            while end < sheet.rows.len() {
                let position = table.row_indicators.get(end - 1).copied().unwrap_or(NO_INDICATOR);
                let ready = position == NO_INDICATOR
                    || table
                        .lookup_order
                        .get(position as usize)
                        .is_some_and(|&order| (order as usize) < merged);
                if !ready {
                    break;
                }
                end += 1;
            }
            if end == start {
                continue;
            }
            for row_index in start..end {
                for (column, cell) in job.row_cells(table, row_index - 1, &ModelRow(&sheet.rows[row_index])) {
                    sheet.set(row_index, column, cell);
                }
            }
            let rows = sheet.rows[start..end].iter_mut().map(std::mem::take).collect();
            self.next_row[table_index] = end;
            if while_looking_up {
                self.rows_at_latest_lookup += end - start;
            }
            self.send(ToWriter::Rows { sheet: sheet_index, rows });
        }
    }

    /// Sends each table's appended passive-DNS rows (after all its own rows).
    fn append_rows(&mut self, job: &mut Job, tables: &[TableScan]) {
        for (table_index, table) in tables.iter().enumerate() {
            if table.appended.is_empty() {
                continue;
            }
            let mut appended = Sheet::default();
            for (row_index, ip) in table.appended.iter().enumerate() {
                appended.push_row(Vec::new());
                appended.set(row_index, table.plan.indicator_column(), Cell::Text(ip.to_string()));
                for (column, cell) in job.appended_row_cells(table, ip) {
                    appended.set(row_index, column, cell);
                }
            }
            self.send(ToWriter::Rows { sheet: self.sheet_of_table[table_index], rows: appended.rows });
        }
    }

    /// A writer that has stopped has its own error, returned when it is joined: nothing to do here.
    fn send(&self, message: ToWriter) {
        let _ = self.to_writer.send(message);
    }
}
