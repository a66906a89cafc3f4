//! XLSX (and XLS) workbooks: read with calamine into the typed [`Workbook`] model, written with
//! rust_xlsxwriter (SPEC §3).
//!
//! The reader is chosen by the file's content when it clearly disagrees with the extension (a zip named
//! `.xls` is read as XLSX, an OLE2 file named `.xlsx` as XLS; an OLE2 `.xlsx` that is not a readable XLS is
//! reported as possibly password-protected). Reading an XLSX happens in three steps, all on the
//! hostile-file assumption:
//!
//! 1. **Zip check** (our own code, `zip` + `quick-xml`): every entry's *declared* uncompressed size is
//!    checked against [`Limits::max_part_bytes`]; every XML part (shared strings, styles, workbook,
//!    relationships, sheets) is then decompressed into a counting sink and checked against the same limit
//!    and [`Limits::max_total_xml_bytes`] (the zip crate itself also refuses an entry that inflates past its
//!    declared size), so a zip bomb is stopped before calamine allocates or spends hours inflating. This
//!    costs one extra inflate pass, cheap next to the XML parsing. The workbook part is located through
//!    `_rels/.rels` (fallback `xl/workbook.xml`); a zip without one is `Corrupt` with that reason. The same
//!    step reads each sheet's layout — frozen panes (`<pane state="frozen">` of the first sheet view) and
//!    explicit column widths (`<cols><col width>`, hidden columns skipped) — from the beginning of the sheet
//!    XML, stopping at `<sheetData>`, because calamine does not expose them. The parts calamine loads whole
//!    have their own, smaller limits ([`Limits::max_shared_strings_bytes`], [`Limits::max_styles_bytes`]), and
//!    a shared-strings part may not declare (`uniqueCount`) more strings than its bytes can hold, since
//!    calamine reserves that much room up front and a failed allocation aborts the process.
//! 2. **Cells** (calamine's streaming `worksheet_cells_reader`): the declared `<dimension>` is checked
//!    against [`Limits::max_sheet_cells`] and Excel's grid first; then cells are streamed into the model (one
//!    slot budget for the whole workbook, see [`MAX_WORKBOOK_CELLS`], and one for its bytes of text,
//!    [`MAX_WORKBOOK_TEXT_BYTES`]: a shared string is copied into every cell that uses it),
//!    counting every allocated slot (row entries plus cells, including the empty cells padded in front of a
//!    value), and reading stops with `TooLarge` as soon as the count passes the limit — declared dimensions
//!    can lie. A new row reserves room for as many cells as the header row has, capped at twice the previous
//!    row's length, so rows are not regrown cell by cell and the spare room stays within a small factor of
//!    the counted slots. Positions are absolute: `rows[0]` is sheet row 1 and every row starts at column A, whatever
//!    the used range's top-left corner is. Shared formulas are expanded per cell.
//! 3. **Number formats of date cells**: only when a sheet holds date/time values, a second streaming pass
//!    (`next_style_id`) looks up each such cell's style in the workbook's style palette (calamine 0.38 style
//!    API) and records its number format code.
//!
//! XLS: calamine's XLS reader parses every sheet when the file is opened (there is no streaming reader), so
//! the file-size limit is the real guard there; the cell limit is checked on each sheet's range afterwards.
//!
//! Every calamine call runs under `catch_unwind`, so a reader panic on a malformed file becomes `Corrupt`;
//! the writer is guarded the same way (a panic becomes an `Io` error).
//!
//! Decisions where SPEC is silent:
//! * Error cells: rust_xlsxwriter has no error-cell writer. We write `#N/A` as the formula `=#N/A` with the
//!   cached result `#N/A` (an error-typed `t="e"` cell that Excel displays identically and recalculates to the
//!   same error). On reading, a formula whose text is exactly its cached error literal is folded back to
//!   [`Cell::Error`], so the round trip is exact.
//! * XLS formulas are calamine's decompiled text, with its comparison operators and the `$` of a BIFF8 mixed
//!   reference (`C$3`, which calamine writes `$C3`) put right ([`xls_formula_text`]). A formula calamine's
//!   text cannot render is written as its last computed value, with a warning: one that refers to another
//!   sheet ([`names_a_sheet`]: calamine reads such references wrongly), one that uses a defined name
//!   ([`uses_a_defined_name`]: XLS defined names are not carried, so Excel would show `#NAME?`), one whose
//!   string literals cannot be told apart ([`has_sound_string_literals`]: calamine does not double a `"` in
//!   them), and one calamine cannot decompile ([`is_undecoded`]).
//! * XLS has no per-cell number format in calamine's API: XLS date cells get `yyyy-mm-dd` (whole days),
//!   `yyyy-mm-dd hh:mm:ss` (with a time), `hh:mm:ss` (values below one day: a time of day, which keeps its
//!   value in a 1904-date workbook) or `[h]:mm:ss` (durations).
//! * 1904-epoch workbooks: date serials are shifted by 1462 days into the 1900 epoch that rust_xlsxwriter
//!   writes, so the displayed dates stay the same; a time of day (a value below one day whose format has no
//!   date part, such as `h:mm`) is not a day count and keeps its value ([`shows_a_date`]), durations likewise.
//! * Number formats of plain numbers (e.g. `0.00`), fonts, fills, merged cells, comments, charts and hidden
//!   columns are not carried over (the model has no place for them); values and types are.
//! * Chart sheets, dialog sheets and macro sheets come out as empty worksheets with the same name and place,
//!   so sheet order and names survive. Hidden and very hidden sheets stay so (when the first sheet is hidden,
//!   the first visible one opens).
//! * Defined names (global, and local with their sheet) are read from the workbook part ourselves (calamine
//!   drops the scope) and defined again; Excel's reserved `_xlnm.` names, and names the writer refuses, are
//!   left out with a warning. Hidden names come out visible (the writer has no hidden flag). Excel tables,
//!   external links, autofilters, conditional formats and data validation are not carried over: a formula
//!   that refers to a table (`Table1[Score]`) or another workbook keeps its text and cached value, and Excel
//!   reports it broken when it recalculates.
//! * `.xlsm`: the macro project is not part of the model. [`extract_vba_project`] copies it out of the input
//!   and [`WriteOptions::vba_project`] embeds it in the output (macro-enabled content type); without that, an
//!   `.xlsm` output would be a plain XLSX under an `.xlsm` name, which Excel refuses to open.
//! * Text longer than Excel's 32,767 characters (UTF-16 units) is truncated on writing rather than failing
//!   the file; a formula's cached text result likewise.
//! * rust_xlsxwriter infers the type of a formula's cached result from its text: a cached text that looks
//!   like a number (`"42"`), `"TRUE"`/`"FALSE"` or an error literal comes back as a number, boolean or error,
//!   and a formula stored without a cached value, or with an empty text result (`=""`), gets the cached
//!   result 0; a result Rust reads as a non-finite number (`NaN`, `inf`) is left out, since XLSX cannot hold
//!   one; a literal `_xHHHH_` in a text result is escaped so it reads back unchanged. Formula text is written
//!   exactly as read (see [`exact_formula`]), except that rust_xlsxwriter adds the `_xlfn.` prefix newer
//!   functions need in the file and writes a formula using a dynamic-array function (`FILTER`, `XLOOKUP`…) as
//!   a one-cell dynamic array. Excel recalculates every formula
//!   on open (rust_xlsxwriter sets full recalculation), so only the cached value seen by other readers
//!   changes; the formula text is always kept.
//! * Array formulas are written back as ordinary formulas (calamine does not say a formula was an array).
//! * Non-finite numbers (only possible in a hand-made file) are written as text, since XLSX cannot hold
//!   them.
//! * Writing uses rust_xlsxwriter's constant-memory mode: rows are flushed to a temp file one by one, so a
//!   100,000 × 43 sheet costs almost no writer memory. Text is always written with `write_string`, never as
//!   a formula, even when it starts with `=` (formula-injection defence).
//! * Dates keep their number format: a custom one by its code, a built-in one (id below 164) by its id, since
//!   several of those display by the reader's locale or are East Asian formats calamine has no code for
//!   ([`builtin_format`]) — unless the file defines that id itself with another code (some generators number
//!   their own formats from 50; localised Excel writes its codes for built-in ids): then by the file's code
//!   ([`defined_by_the_file`]). Date cells stored as ISO text (`t="d"`) are read as dates.
//! * Cached error results of newer Excel versions (`#SPILL!`, `#CALC!`…), which calamine refuses, are read
//!   through a temporary copy where they are `#N/A`, then put back by cell reference
//!   ([`read_xlsx_with_newer_errors`]); only a workbook holding one pays for the copy.
//! * A sheet name Excel refuses (other programs write names longer than 31 characters, or with `/`, `:` …) is
//!   written under the nearest name it accepts ([`writable_sheet_names`]), with a warning, instead of failing
//!   the workbook. Each sheet is written through a temporary file of rust_xlsxwriter's, all open until the
//!   workbook is packed: a workbook of about a thousand sheets needs more open files than a soft limit of
//!   1 024 allows (the binary raises its soft limit to the hard one at start, `cli::main`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use calamine::{Data, DataRef, Dimensions, Reader, SheetType, SheetVisible, Xls, Xlsx};
use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use rust_xlsxwriter::{Format as CellFormat, Formula, Worksheet};

use super::{
    Cell, DefinedName, Format, MAX_CELL_CHARS, MAX_COLS, MAX_FILE_BYTES, MAX_ROWS, MAX_SHEET_CELLS, Sheet,
    Visibility, Workbook, WorkbookError, check_input_file,
};

/// Number format of the Date First Seen values we write, and of XLS date/times that have a time of day.
pub const DATETIME_FORMAT: &str = "yyyy-mm-dd hh:mm:ss";
/// Number format given to XLS dates without a time of day.
pub const DATE_FORMAT: &str = "yyyy-mm-dd";
/// Number format given to XLS durations.
pub const DURATION_FORMAT: &str = "[h]:mm:ss";

/// Days between the 1904 and the 1900 date epochs.
const EPOCH_1904_OFFSET: f64 = 1462.0;

/// The error literals Excel accepts as a formula constant (and rust_xlsxwriter writes as an error result).
const ERROR_LITERALS: [&str; 7] = ["#DIV/0!", "#N/A", "#NAME?", "#NULL!", "#NUM!", "#REF!", "#VALUE!"];

/// Largest number of cell slots read from one workbook by default. The typed model costs about 41 bytes of
/// peak memory per slot (measured: 10 million one-digit cells peak at 410 MB), so 16 million keeps one
/// workbook well under 1 GiB; the older per-sheet limit of 50 million would have allowed about 2 GB, and as
/// many sheets as the file had. A VTTL sheet of 100,000 rows × 43 columns is 4.3 million slots.
pub const MAX_WORKBOOK_CELLS: u64 = 16_000_000;

/// Size limits applied while reading. [`Limits::default`] uses the crate-wide limits; tests lower them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest number of cell slots: the declared dimension area of one sheet, and the real rows + cells
    /// counted while reading, for the **whole workbook** (all sheets together), which is what bounds memory.
    pub max_sheet_cells: u64,
    /// Largest uncompressed size of one zip entry (declared for every entry, measured for every XML part).
    pub max_part_bytes: u64,
    /// Largest uncompressed size of all XML parts together (measured).
    pub max_total_xml_bytes: u64,
    /// Largest number of bytes of text read from one workbook (all text cells and formulas together). One
    /// long shared string can be used by any number of cells, each getting its own copy: the cell count alone
    /// does not bound memory.
    pub max_text_bytes: u64,
    /// Largest uncompressed size of the shared-strings part, which calamine loads whole (about 2.2 bytes of
    /// memory per byte of XML for short strings, measured by review).
    pub max_shared_strings_bytes: u64,
    /// Largest uncompressed size of the styles part, which calamine loads whole (Excel itself allows 64,000
    /// cell formats, a few MB of XML).
    pub max_styles_bytes: u64,
}

/// [`Limits::max_text_bytes`] by default.
pub const MAX_WORKBOOK_TEXT_BYTES: u64 = 512 << 20;
/// [`Limits::max_shared_strings_bytes`] by default.
pub const MAX_SHARED_STRINGS_BYTES: u64 = 256 << 20;
/// [`Limits::max_styles_bytes`] by default.
pub const MAX_STYLES_BYTES: u64 = 32 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sheet_cells: MAX_SHEET_CELLS.min(MAX_WORKBOOK_CELLS),
            max_part_bytes: MAX_FILE_BYTES,
            max_total_xml_bytes: 2 * MAX_FILE_BYTES,
            max_text_bytes: MAX_WORKBOOK_TEXT_BYTES,
            max_shared_strings_bytes: MAX_SHARED_STRINGS_BYTES,
            max_styles_bytes: MAX_STYLES_BYTES,
        }
    }
}

/// Reads every sheet, in order, with its name, using the default [`Limits`]. Dispatches on the extension:
/// `.xlsx`/`.xlsm` through calamine's XLSX reader, `.xls` through its XLS reader.
pub fn read_workbook(path: &Path) -> Result<Workbook, WorkbookError> {
    read_workbook_with_limits(path, &Limits::default())
}

/// [`read_workbook`] with explicit limits.
pub fn read_workbook_with_limits(path: &Path, limits: &Limits) -> Result<Workbook, WorkbookError> {
    let size = check_input_file(path)?;
    if size == 0 {
        return Err(corrupt(path, "the file is empty (0 bytes)"));
    }
    let format = match Format::from_path(path) {
        Some(format @ (Format::Xlsx | Format::Xls)) => format,
        _ => return Err(WorkbookError::Unsupported { path: path.to_path_buf() }),
    };
    // The content decides the reader when it clearly disagrees with the extension: users rename files, and
    // an XLSX saved as `.xls` (or the reverse) is still the analyst's workbook.
    let container = sniff_container(path)?;
    if container == Container::Text {
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        return Err(corrupt(
            path,
            format!(
                "not an Excel workbook: the file holds text (a CSV, a tab-separated or HTML export saved under \
                 an `.{ext}` name?); a CSV is read only under a `.csv` name"
            ),
        ));
    }
    let as_xlsx = match (format, container) {
        (_, Container::Zip) => true,
        (_, Container::Cfb) => false,
        (Format::Xlsx, Container::Other) => true,
        _ => false,
    };
    if as_xlsx {
        let layouts = guarded(path, || read_xlsx_layouts(path, limits))?;
        match guarded(path, || read_xlsx_cells(path, limits, &layouts)) {
            Err(error) if holds_newer_error_values(&error) => {
                // Read from a copy whose newer error results calamine can read; if that fails too, the first
                // error (which says what the file holds) is the one to report.
                guarded(path, || read_xlsx_with_newer_errors(path, limits, &layouts)).map_err(|_| error)
            }
            read => read,
        }
    } else {
        guarded(path, || read_xls(path, limits)).map_err(|error| match (format, error) {
            (Format::Xlsx, WorkbookError::Corrupt { path, reason }) => WorkbookError::Corrupt {
                path,
                reason: format!(
                    "an OLE2 container, not an XLSX zip: a password-protected (encrypted) workbook or an \
                     unreadable XLS file ({reason})"
                ),
            },
            (_, error) => error,
        })
    }
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    /// A zip archive (`PK\x03\x04`): XLSX/XLSM.
    Zip,
    /// An OLE2 compound file: XLS, or an encrypted XLSX.
    Cfb,
    /// Text (a CSV, a tab-separated or HTML export) under an Excel name: neither reader can open it.
    Text,
    Other,
}

fn sniff_container(path: &Path) -> Result<Container, WorkbookError> {
    let mut file = File::open(path).map_err(|e| WorkbookError::io(path, "open", e))?;
    // Enough bytes to tell text (no NUL byte, or a UTF-16 byte-order mark) from a binary file.
    let mut magic = [0u8; 4096];
    let mut filled = 0;
    while filled < magic.len() {
        match file.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WorkbookError::io(path, "read", e)),
        }
    }
    let head = &magic[..filled];
    const ZIP: &[u8] = b"PK\x03\x04";
    const CFB: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
    Ok(if head.starts_with(ZIP) {
        Container::Zip
    } else if head.starts_with(CFB) {
        Container::Cfb
    } else if ZIP.starts_with(head) || CFB.starts_with(head) {
        // A file cut off inside a signature is a truncated workbook, not text.
        Container::Other
    } else if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) || !head.contains(&0) {
        Container::Text
    } else {
        Container::Other
    })
}

/// Writes the workbook as XLSX into `out` and hands `out` back (the caller passes a temp file in the
/// outbox; `path` is only used in error messages). Memory stays flat: constant-memory worksheets, written
/// strictly row by row, their rows buffered in the system temp directory.
pub fn write_workbook<W: Write + Send>(workbook: &Workbook, out: W, path: &Path) -> Result<W, WorkbookError> {
    write_workbook_with_options(workbook, out, path, &WriteOptions::default())
}

/// Optional settings of [`write_workbook_with_options`].
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Where constant-memory worksheets buffer their rows (e.g. on the outbox's disk rather than a
    /// RAM-backed `/tmp`); the system temp directory when `None`.
    pub tempdir: Option<PathBuf>,
    /// A `vbaProject.bin` to embed, making the output a macro-enabled workbook (for `.xlsm` inputs; see
    /// [`extract_vba_project`]). Without it, an `.xlsm` input comes out without macros and with the XLSX
    /// content type.
    pub vba_project: Option<PathBuf>,
}

/// [`write_workbook`] with explicit [`WriteOptions`]. A panic inside the writer (rust_xlsxwriter panics on
/// some I/O failures of its temp files) is reported as an I/O error instead of crashing the run.
pub fn write_workbook_with_options<W: Write + Send>(
    workbook: &Workbook,
    out: W,
    path: &Path,
    options: &WriteOptions,
) -> Result<W, WorkbookError> {
    let mut writer = WorkbookWriter::new(&workbook.sheets, path, options)?;
    writer.define_names(&workbook.defined_names)?;
    for (index, sheet) in workbook.sheets.iter().enumerate() {
        writer.write_rows(index, &sheet.rows)?;
    }
    writer.finish(out)
}

/// Largest macro project carried over from an `.xlsm`. Real ones are kilobytes to a few megabytes; the project
/// is held in memory and stored uncompressed by the writer, so a 1 MB file of a compressed gigabyte of zeros
/// would otherwise become a 1 GB output (and a 1 GB process), for this outbox and the next stage's inbox.
pub const MAX_VBA_PROJECT_BYTES: u64 = 64 << 20;

/// Copies the macro project (`xl/vbaProject.bin`) of an `.xlsm`/`.xlsx` input into a temp file in
/// `dest_dir` (deleted when the returned path is dropped), for [`WriteOptions::vba_project`]. `None` when the
/// workbook has no macros. The copy is limited to [`MAX_VBA_PROJECT_BYTES`].
pub fn extract_vba_project(
    input: &Path,
    dest_dir: &Path,
) -> Result<Option<tempfile::TempPath>, WorkbookError> {
    guarded(input, || {
        let mut archive = open_archive(input)?;
        let Some(index) = archive.index_for_name("xl/vbaProject.bin") else { return Ok(None) };
        let entry = archive
            .by_index(index)
            .map_err(|e| corrupt(input, format!("unreadable zip entry `xl/vbaProject.bin`: {e}")))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".vbaProject")
            .suffix(".bin")
            .tempfile_in(dest_dir)
            .map_err(|e| WorkbookError::io(dest_dir, "create a temp file in", e))?;
        // Reading (the input's fault) and writing (the outbox's: a full volume is no corrupt input) apart.
        let mut limited = entry.take(MAX_VBA_PROJECT_BYTES + 1);
        let mut buffer = vec![0u8; 64 << 10];
        let mut copied = 0u64;
        loop {
            let read = limited
                .read(&mut buffer)
                .map_err(|e| corrupt(input, format!("cannot decompress `xl/vbaProject.bin`: {e}")))?;
            if read == 0 {
                break;
            }
            temp.write_all(&buffer[..read])
                .map_err(|e| WorkbookError::io(dest_dir, "copy the macro project into", e))?;
            copied += read as u64;
        }
        if copied > MAX_VBA_PROJECT_BYTES {
            return Err(too_large(
                input,
                format!("`xl/vbaProject.bin` is larger than {} MiB", MAX_VBA_PROJECT_BYTES >> 20),
            ));
        }
        Ok(Some(temp.into_temp_path()))
    })
}

/// Writes a workbook row by row instead of from a whole [`Workbook`]: the sheets are declared up front (name,
/// frozen panes, column widths — their rows are ignored), then rows are added to any sheet in any order of
/// sheets, but in row order within each sheet, and [`WorkbookWriter::finish`] packs the file. The enricher
/// runs it on a thread of its own and hands it each row as soon as the row is filled, so writing overlaps
/// the lookups (see `enrich`). [`write_workbook`] is this writer fed a whole model.
///
/// Rows go to rust_xlsxwriter constant-memory worksheets (one temp file per sheet), so the writer holds no
/// rows itself. A panic inside rust_xlsxwriter is reported as an `Io` error and poisons the writer: every
/// later call fails the same way.
pub struct WorkbookWriter {
    book: rust_xlsxwriter::Workbook,
    path: PathBuf,
    /// Per sheet: its name (for messages) and the number of rows written so far.
    sheets: Vec<(String, usize)>,
    /// Per sheet: the name it is written under ([`writable_sheet_names`]).
    written_names: Vec<String>,
    formats: FormatCache,
    poisoned: bool,
}

impl WorkbookWriter {
    /// A writer for sheets with the names and layouts of `sheets` (in that order; their rows are not
    /// written). `path` names the output in error messages.
    pub fn new(
        sheets: &[Sheet],
        path: &Path,
        options: &WriteOptions,
    ) -> Result<WorkbookWriter, WorkbookError> {
        let written = |e: rust_xlsxwriter::XlsxError| write_error(path, e);
        let written_names = writable_sheet_names(sheets);
        let declared = catch_writer_panic(path, || {
            let mut book = rust_xlsxwriter::Workbook::new();
            if let Some(dir) = &options.tempdir {
                book.set_tempdir(dir).map_err(written)?;
            }
            if let Some(vba_project) = &options.vba_project {
                book.add_vba_project(vba_project).map_err(written)?;
            }
            for (sheet, name) in sheets.iter().zip(written_names.iter().cloned()) {
                let worksheet = book.add_worksheet_with_constant_memory().map_err(written)?;
                if name != sheet.name {
                    tracing::warn!(
                        "{}: sheet name {:?} is not one Excel accepts; written as {name:?}",
                        path.display(),
                        sheet.name
                    );
                }
                worksheet.set_name(&name).map_err(written)?;
                if let Some((rows, cols)) = sheet.freeze {
                    worksheet.set_freeze_panes(rows, cols).map_err(written)?;
                }
                for &(col, width) in &sheet.column_widths {
                    worksheet.set_column_width(col, width).map_err(written)?;
                }
                match sheet.visibility {
                    Visibility::Visible => {}
                    Visibility::Hidden => {
                        worksheet.set_hidden(true);
                    }
                    Visibility::VeryHidden => {
                        worksheet.set_very_hidden(true);
                    }
                }
            }
            // rust_xlsxwriter makes the first sheet the active one, and an active sheet cannot be hidden: when
            // the first sheet is hidden, the first visible one opens instead (a workbook with no visible sheet,
            // which Excel does not allow, keeps its first sheet visible).
            if sheets.first().is_some_and(|sheet| sheet.visibility != Visibility::Visible)
                && let Some(index) = sheets.iter().position(|sheet| sheet.visibility == Visibility::Visible)
            {
                book.worksheet_from_index(index).map_err(written)?.set_active(true);
            }
            Ok(book)
        })?;
        Ok(WorkbookWriter {
            book: declared,
            path: path.to_path_buf(),
            sheets: sheets.iter().map(|sheet| (sheet.name.clone(), 0)).collect(),
            written_names,
            formats: FormatCache::default(),
            poisoned: false,
        })
    }

    /// Defines the workbook's names (local ones on the sheet of that position, under the name it is written
    /// with). A name the writer refuses — Excel's reserved `_xlnm.` names (print areas, filters: what they
    /// belong to is not carried over either), a spelling Excel does not allow — and one it would refuse only
    /// when packing — a second definition in the same scope, a sheet that does not exist — or an empty
    /// definition is left out with a warning, never failing the workbook.
    pub fn define_names(&mut self, names: &[DefinedName]) -> Result<(), WorkbookError> {
        self.check_not_poisoned()?;
        let written_names = &self.written_names;
        let path = self.path.clone();
        let book = &mut self.book;
        let mut seen: std::collections::HashSet<(Option<usize>, String)> = std::collections::HashSet::new();
        let mut skipped = Vec::new();
        catch_writer_panic(&path, || {
            for defined in names {
                let scoped = match defined.sheet {
                    // rust_xlsxwriter reads `Sheet!Name` (or `'Sheet'!Name`) as a name local to that sheet, and
                    // refuses a sheet it does not have only when packing, failing the whole workbook.
                    None if defined.name.contains('!') || defined.name.starts_with('\'') => None,
                    None => Some(defined.name.clone()),
                    Some(index) => written_names
                        .get(index)
                        .map(|sheet| format!("'{}'!{}", sheet.replace('\'', "''"), defined.name)),
                };
                let key = (defined.sheet, defined.name.to_lowercase());
                let accepted = match scoped {
                    Some(scoped) if !seen.contains(&key) && !defined.formula.is_empty() => {
                        book.define_name(scoped, &defined.formula).is_ok()
                    }
                    _ => false,
                };
                if accepted {
                    seen.insert(key);
                } else if !defined.name.to_ascii_lowercase().starts_with("_xlnm.") {
                    // (Excel's own names go with what is not carried over anyway — an autofilter, a print
                    // area — and would make this warning a constant.)
                    skipped.push(defined.name.as_str());
                }
            }
            Ok(())
        })?;
        if !skipped.is_empty() {
            // Names come from the file: no control character may reach the log, and no name longer than a
            // name Excel allows.
            let shown: Vec<String> = skipped
                .iter()
                .take(5)
                .map(|name| {
                    crate::workbook::csv::replace_control_chars(&name.chars().take(64).collect::<String>())
                        .into_owned()
                })
                .collect();
            tracing::warn!(
                "{}: {} defined name(s) not carried over (invalid, empty or repeated): {}{}",
                path.display(),
                skipped.len(),
                shown.join(", "),
                if skipped.len() > shown.len() { ", …" } else { "" }
            );
        }
        Ok(())
    }

    /// Appends `rows` to sheet number `sheet` (0-based, in the order given to [`WorkbookWriter::new`]),
    /// after the rows written to it before.
    pub fn write_rows(&mut self, sheet: usize, rows: &[Vec<Cell>]) -> Result<(), WorkbookError> {
        self.check_not_poisoned()?;
        let WorkbookWriter { book, path, sheets, formats, poisoned, .. } = self;
        let Some((name, written_rows)) = sheets.get_mut(sheet) else {
            return Err(WorkbookError::io(
                path,
                "write XLSX",
                std::io::Error::other(format!("the workbook has no sheet number {sheet}")),
            ));
        };
        let path: &Path = path;
        let outcome = catch_writer_panic(path, || {
            let written = |e: rust_xlsxwriter::XlsxError| write_error(path, e);
            let worksheet = book.worksheet_from_index(sheet).map_err(written)?;
            for row in rows {
                let row_number =
                    u32::try_from(*written_rows).ok().filter(|r| *r < MAX_ROWS).ok_or_else(|| {
                        too_large(path, format!("sheet `{name}` has more than {MAX_ROWS} rows"))
                    })?;
                if row.len() > MAX_COLS as usize {
                    return Err(too_large(
                        path,
                        format!("sheet `{name}` row {} has more than {MAX_COLS} columns", *written_rows + 1),
                    ));
                }
                for (col_index, cell) in row.iter().enumerate() {
                    // Fits: checked against MAX_COLS (16,384) just above.
                    let col_number = col_index as u16;
                    write_cell(worksheet, row_number, col_number, cell, formats).map_err(written)?;
                }
                *written_rows += 1;
            }
            Ok(())
        });
        if outcome.is_err() {
            *poisoned = true;
        }
        outcome
    }

    /// Packs the workbook into `out` and returns it.
    pub fn finish<W: Write + Send>(self, mut out: W) -> Result<W, WorkbookError> {
        self.check_not_poisoned()?;
        let WorkbookWriter { mut book, path, .. } = self;
        catch_writer_panic(&path, || book.save_to_writer(&mut out).map_err(|e| write_error(&path, e)))?;
        Ok(out)
    }

    fn check_not_poisoned(&self) -> Result<(), WorkbookError> {
        if self.poisoned {
            return Err(WorkbookError::io(
                &self.path,
                "write XLSX",
                std::io::Error::other("an earlier write to this workbook failed"),
            ));
        }
        Ok(())
    }
}

/// The sheet names to write: each sheet's own when Excel accepts it, else the nearest one it does. Readers
/// accept names Excel (and rust_xlsxwriter) refuse — longer than 31 characters (pandas and openpyxl write them
/// with a warning), with `[ ] : * ? / \`, starting or ending with an apostrophe, empty — and refusing the
/// whole workbook for its name would fail a good file. Forbidden characters become `_`, apostrophes at the
/// ends are dropped, the name is cut to 31 UTF-16 units, and a name that then repeats another (Excel compares
/// without case) gets ` (2)`, ` (3)`, … within the 31 units.
pub fn writable_sheet_names(sheets: &[Sheet]) -> Vec<String> {
    fn cut_to_units(text: &str, units: usize) -> String {
        let mut used = 0;
        text.chars()
            .take_while(|c| {
                used += c.len_utf16();
                used <= units
            })
            .collect()
    }
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    // Names Excel accepts are kept first, so a renamed sheet never takes the name of a later one.
    let mut names: Vec<Option<String>> = sheets
        .iter()
        .map(|sheet| {
            let valid = rust_xlsxwriter::utility::check_sheet_name(&sheet.name).is_ok();
            (valid && taken.insert(sheet.name.to_lowercase())).then(|| sheet.name.clone())
        })
        .collect();
    for (sheet, name) in sheets.iter().zip(names.iter_mut()).filter(|(_, name)| name.is_none()) {
        let replaced: String =
            sheet.name.chars().map(|c| if "[]:*?/\\".contains(c) { '_' } else { c }).collect();
        let trimmed = replaced.trim_matches('\'');
        let base = if trimmed.is_empty() { "Sheet".to_string() } else { cut_to_units(trimmed, 31) };
        let base = base.trim_end_matches('\'').to_string();
        let mut candidate = base.clone();
        let mut number = 1;
        while !taken.insert(candidate.to_lowercase()) {
            number += 1;
            let suffix = format!(" ({number})");
            candidate = format!("{}{suffix}", cut_to_units(&base, 31 - suffix.len()).trim_end());
        }
        *name = Some(candidate);
    }
    names.into_iter().map(Option::unwrap_or_default).collect()
}

/// Runs one step of the writer, turning a panic of rust_xlsxwriter into an `Io` error.
fn catch_writer_panic<T>(
    path: &Path,
    step: impl FnOnce() -> Result<T, WorkbookError>,
) -> Result<T, WorkbookError> {
    catch_unwind(AssertUnwindSafe(step)).unwrap_or_else(|_| {
        Err(WorkbookError::io(
            path,
            "write XLSX",
            std::io::Error::other("the XLSX writer failed (panicked) while writing"),
        ))
    })
}

/// A Date First Seen value: `Cell::DateTime` with the 1900-epoch serial of `ndt` (Excel's fictitious
/// 1900-02-29 included, so dates before 1900-03-01 count one day less) and the format [`DATETIME_FORMAT`].
/// A date cell stored as ISO 8601 text (`t="d"`, written by LibreOffice, openpyxl and strict OOXML): a date
/// to Excel, so a date cell of the model (serial and format; the cell's own format is applied later, like any
/// date's) — written back as text it would have become a text cell. A value that is not a plain date or
/// date-time of years 1900–9999 stays [`Cell::IsoDateTime`] (written as its text).
fn iso_date_cell(text: String) -> Cell {
    use chrono::{Datelike, NaiveDate, NaiveDateTime};
    let trimmed = text.trim();
    let parsed = NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|when| (when, DATETIME_FORMAT))
        .or_else(|| {
            let date = NaiveDate::parse_from_str(trimmed, "%Y-%m-%d").ok()?;
            Some((date.and_hms_opt(0, 0, 0)?, DATE_FORMAT))
        });
    match parsed {
        Some((when, format)) if (1900..=9999).contains(&when.year()) => match datetime_cell(when) {
            Cell::DateTime { serial, .. } => Cell::DateTime { serial, format: format.into() },
            other => other,
        },
        _ => Cell::IsoDateTime(text),
    }
}

pub fn datetime_cell(ndt: chrono::NaiveDateTime) -> Cell {
    let epoch = chrono::NaiveDate::from_ymd_opt(1899, 12, 30)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default();
    let millis = (ndt - epoch).num_milliseconds();
    let mut serial = millis as f64 / 86_400_000.0;
    if serial < 61.0 {
        serial -= 1.0;
    }
    Cell::DateTime { serial, format: DATETIME_FORMAT.into() }
}

// ---------------------------------------------------------------------------------------------------------
// Errors and panic guard

fn corrupt(path: &Path, reason: impl Into<String>) -> WorkbookError {
    WorkbookError::Corrupt { path: path.to_path_buf(), reason: reason.into() }
}

fn too_large(path: &Path, reason: impl Into<String>) -> WorkbookError {
    WorkbookError::TooLarge { path: path.to_path_buf(), reason: reason.into() }
}

fn write_error(path: &Path, error: rust_xlsxwriter::XlsxError) -> WorkbookError {
    match error {
        rust_xlsxwriter::XlsxError::IoError(source) => WorkbookError::io(path, "write XLSX", source),
        // An I/O error inside (the zip writer's, say) keeps its kind: a full disk must stay a full disk.
        other => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&other);
            let mut kind = std::io::ErrorKind::Other;
            while let Some(error) = source {
                if let Some(io) = error.downcast_ref::<std::io::Error>() {
                    kind = io.kind();
                    break;
                }
                source = error.source();
            }
            WorkbookError::io(path, "write XLSX", std::io::Error::new(kind, other.to_string()))
        }
    }
}

/// Runs a reader step, turning a panic inside calamine (or zip/quick-xml) into `Corrupt`.
fn guarded<T>(path: &Path, step: impl FnOnce() -> Result<T, WorkbookError>) -> Result<T, WorkbookError> {
    match catch_unwind(AssertUnwindSafe(step)) {
        Ok(result) => result,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            Err(corrupt(path, format!("the workbook reader crashed on malformed data ({detail})")))
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Step 1: zip checks and sheet layouts (frozen panes, column widths)

/// What we read from a sheet's XML ourselves.
#[derive(Debug, Default)]
struct SheetLayout {
    freeze: Option<(u32, u16)>,
    column_widths: Vec<(u16, f64)>,
}

/// What step 1 reads that calamine does not give: each worksheet's layout, by sheet name, and the workbook's
/// defined names with their scope (calamine drops which sheet a local name belongs to).
#[derive(Debug, Default)]
struct Layouts {
    sheets: HashMap<String, SheetLayout>,
    defined_names: Vec<DefinedName>,
}

/// Most defined names kept from one workbook (real ones have a few to a few hundred); the rest are dropped
/// with a warning rather than handed to the writer one by one.
const MAX_DEFINED_NAMES: usize = 10_000;

/// Excel's limits for a defined name (255 characters) and for what it stands for (a formula: 8 192): a longer
/// one is not Excel's and is dropped when read, so a hostile file cannot make the reader hold (and the writer
/// copy) megabytes of it.
const MAX_DEFINED_NAME_CHARS: usize = 255;
const MAX_FORMULA_CHARS: usize = 8_192;

type Archive = zip::ZipArchive<BufReader<File>>;

fn open_archive(path: &Path) -> Result<Archive, WorkbookError> {
    let file = File::open(path).map_err(|e| WorkbookError::io(path, "open", e))?;
    zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        corrupt(path, format!("not a readable XLSX file (broken or truncated zip archive: {e})"))
    })
}

/// Checks the archive's entry sizes and returns the layout of every worksheet, keyed by sheet name.
fn read_xlsx_layouts(path: &Path, limits: &Limits) -> Result<Layouts, WorkbookError> {
    let mut archive = open_archive(path)?;
    let mut names = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let entry = archive
            .by_index_raw(index)
            .map_err(|e| corrupt(path, format!("unreadable zip entry #{index}: {e}")))?;
        let name = entry.name().map(Cow::into_owned).unwrap_or_else(|_| format!("#{index}"));
        if entry.size() > limits.max_part_bytes {
            return Err(too_large(
                path,
                format!(
                    "zip entry `{}` declares {} uncompressed bytes; the limit is {}",
                    name,
                    entry.size(),
                    limits.max_part_bytes
                ),
            ));
        }
        names.push(name);
    }

    // Every XML part the readers may parse (calamine loads shared strings and styles whole, and streams the
    // sheets): decompress it into a counting sink first, so a zip bomb that lies about its size is stopped
    // here rather than by memory or hours of inflating.
    let mut total_xml = 0u64;
    let mut measured: HashMap<&str, u64> = HashMap::new();
    for name in &names {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".xml") || lower.ends_with(".rels") {
            let size = measure_part(path, &mut archive, name, limits.max_part_bytes)?;
            measured.insert(name.as_str(), size);
            total_xml = total_xml.saturating_add(size);
            if total_xml > limits.max_total_xml_bytes {
                return Err(too_large(
                    path,
                    format!(
                        "the workbook's XML parts decompress to more than {} bytes",
                        limits.max_total_xml_bytes
                    ),
                ));
            }
        }
    }

    let workbook_part = find_workbook_part(path, &mut archive, &names)?.ok_or_else(|| {
        corrupt(path, "the zip archive is not an Excel workbook (it has no xl/workbook.xml part)")
    })?;

    check_loaded_whole_parts(path, &mut archive, &measured, limits)?;

    let (sheets, defined_names) = sheet_parts(path, &mut archive, &workbook_part)?;
    let mut layouts = Layouts { defined_names, ..Layouts::default() };
    for (sheet_name, part) in sheets {
        if archive.index_for_name(&part).is_none() {
            continue;
        }
        let layout = parse_sheet_layout(path, &mut archive, &part)?;
        layouts.sheets.insert(sheet_name, layout);
    }
    Ok(layouts)
}

/// Each sheet the workbook part declares, by name, with the zip part its relationship points at (sheets whose
/// relationship is missing are left out); and the workbook's defined names.
fn sheet_parts(
    path: &Path,
    archive: &mut Archive,
    workbook_part: &str,
) -> Result<WorkbookPart, WorkbookError> {
    let (sheets, defined_names) = parse_workbook_part(path, archive, workbook_part)?;
    let (dir, file_name) = match workbook_part.rfind('/') {
        Some(slash) => (&workbook_part[..=slash], &workbook_part[slash + 1..]),
        None => ("", workbook_part),
    };
    let targets = parse_relationships(path, archive, &format!("{dir}_rels/{file_name}.rels"))?;
    let sheets = sheets
        .into_iter()
        .filter_map(|(sheet, id)| Some((sheet, resolve_target(dir, targets.get(&id)?))))
        .collect();
    Ok((sheets, defined_names))
}

/// The parts calamine loads whole — shared strings and styles, in any folder and compared without case (a
/// superset of the ones it reads) — must be within their own limits, and shared strings may not declare more
/// strings than their bytes can hold: calamine reserves room for the declared `uniqueCount` up front, and an
/// allocation that fails aborts the process (no error, no quarantine: the claimed file would abort every
/// restart).
fn check_loaded_whole_parts(
    path: &Path,
    archive: &mut Archive,
    measured: &HashMap<&str, u64>,
    limits: &Limits,
) -> Result<(), WorkbookError> {
    let mut parts: Vec<(&str, u64)> = measured.iter().map(|(name, size)| (*name, *size)).collect();
    parts.sort_unstable();
    for (name, size) in parts {
        // calamine finds parts by name without case and with `\\` read as `/`.
        let file_name = name.rsplit(['/', '\\']).next().unwrap_or(name);
        let (part, limit) = if file_name.eq_ignore_ascii_case("styles.xml") {
            ("styles.xml", limits.max_styles_bytes)
        } else if file_name.eq_ignore_ascii_case("sharedStrings.xml") {
            ("sharedStrings.xml", limits.max_shared_strings_bytes)
        } else {
            continue;
        };
        if size > limit {
            return Err(too_large(
                path,
                format!(
                    "zip entry `{name}` decompresses to {size} bytes; the limit for that part is {limit}"
                ),
            ));
        }
        if part != "sharedStrings.xml" {
            continue;
        }
        // The shortest shared string, `<si/>`, takes 5 bytes.
        let most = size / 5;
        let entry = archive
            .by_name(name)
            .map_err(|e| corrupt(path, format!("unreadable zip entry `{name}`: {e}")))?;
        let mut reader = quick_xml::Reader::from_reader(BufReader::new(entry));
        let mut buf = Vec::new();
        loop {
            match reader.read_event_into(&mut buf) {
                // calamine reads the first `sst` tag, wherever it is (an empty `<sst …/>` too: it expands empty
                // elements), and its attribute named exactly `uniqueCount`; every attribute of that local name
                // is checked here, and any leading digits count, so no spelling gets past.
                Ok(Event::Start(e) | Event::Empty(e)) if e.local_name().as_ref() == "sst" => {
                    for attribute in e.attributes().flatten() {
                        if attribute.key.local_name().as_ref() != "uniqueCount" {
                            continue;
                        }
                        let value = attribute.value.to_string();
                        let digits: String = value
                            .trim()
                            .trim_start_matches('+')
                            .chars()
                            .take_while(char::is_ascii_digit)
                            .collect();
                        let declared =
                            if digits.is_empty() { 0 } else { digits.parse::<u64>().unwrap_or(u64::MAX) };
                        if declared > most {
                            return Err(corrupt(
                                path,
                                format!(
                                    "`{name}` declares {} distinct shared strings, more than its {size} bytes can \
                                     hold",
                                    value.chars().take(40).collect::<String>()
                                ),
                            ));
                        }
                    }
                    break;
                }
                Ok(Event::Eof) => break,
                Err(e) => return Err(corrupt(path, format!("malformed XML in `{name}`: {e}"))),
                _ => {}
            }
            buf.clear();
        }
    }
    Ok(())
}

/// Decompresses one entry into a counting sink and returns its real size; `TooLarge` above `cap` bytes.
fn measure_part(path: &Path, archive: &mut Archive, name: &str, cap: u64) -> Result<u64, WorkbookError> {
    let entry =
        archive.by_name(name).map_err(|e| corrupt(path, format!("unreadable zip entry `{name}`: {e}")))?;
    let copied = std::io::copy(&mut entry.take(cap.saturating_add(1)), &mut std::io::sink())
        .map_err(|e| corrupt(path, format!("cannot decompress zip entry `{name}`: {e}")))?;
    if copied > cap {
        return Err(too_large(
            path,
            format!("zip entry `{name}` decompresses to more than {cap} bytes (more than it declares)"),
        ));
    }
    Ok(copied)
}

/// The workbook part named by the package relationships (`_rels/.rels`), else `xl/workbook.xml` when present.
fn find_workbook_part(
    path: &Path,
    archive: &mut Archive,
    names: &[String],
) -> Result<Option<String>, WorkbookError> {
    if names.iter().any(|n| n == "_rels/.rels") {
        let entry = archive
            .by_name("_rels/.rels")
            .map_err(|e| corrupt(path, format!("unreadable _rels/.rels: {e}")))?;
        let mut reader = quick_xml::Reader::from_reader(BufReader::new(entry));
        let mut buf = Vec::new();
        loop {
            match reader.read_event_into(&mut buf) {
                Ok(Event::Start(e) | Event::Empty(e)) if e.local_name().as_ref() == "Relationship" => {
                    let is_document = attribute(&e, "Type").is_some_and(|t| t.ends_with("/officeDocument"));
                    if let (true, Some(target)) = (is_document, attribute(&e, "Target")) {
                        let part = resolve_target("", &target);
                        if names.contains(&part) {
                            return Ok(Some(part));
                        }
                    }
                }
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => return Err(corrupt(path, format!("malformed _rels/.rels: {e}"))),
            }
            buf.clear();
        }
    }
    Ok(names.iter().find(|n| *n == "xl/workbook.xml").cloned())
}

/// What the workbook part declares: `(sheet name, relationship id)` for every `<sheet>`, in order, and its
/// `<definedName>`s, with the sheet of each local one (`localSheetId`, the sheet's position in `<sheets>`,
/// which is the model's order) — at most [`MAX_DEFINED_NAMES`].
type WorkbookPart = (Vec<(String, String)>, Vec<DefinedName>);

fn parse_workbook_part(
    path: &Path,
    archive: &mut Archive,
    part: &str,
) -> Result<WorkbookPart, WorkbookError> {
    let entry = archive.by_name(part).map_err(|e| corrupt(path, format!("unreadable `{part}`: {e}")))?;
    let mut reader = quick_xml::Reader::from_reader(BufReader::new(entry));
    let mut buf = Vec::new();
    let mut sheets = Vec::new();
    let mut names = Vec::new();
    let mut dropped = 0usize;
    // The name being read: its attributes, and its text so far.
    let mut current: Option<(String, Option<usize>, String)> = None;
    // Text past Excel's limit is not kept (the name is dropped at its end): a hostile file cannot make the
    // reader hold its megabytes twice.
    let room = 4 * MAX_FORMULA_CHARS;
    let push = |current: &mut Option<(String, Option<usize>, String)>, piece: &str| {
        if let Some((_, _, formula)) = current.as_mut() {
            if formula.len() + piece.len() <= room {
                formula.push_str(piece);
            } else {
                // Marks it too long whatever the rest: more than the limit in characters.
                formula.clear();
                formula.extend(std::iter::repeat_n('#', MAX_FORMULA_CHARS + 1));
            }
        }
    };
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e) | Event::Empty(e)) if e.local_name().as_ref() == "sheet" => {
                if let (Some(name), Some(id)) = (attribute(&e, "name"), attribute(&e, "id")) {
                    sheets.push((name, id));
                }
            }
            Ok(Event::Start(e)) if e.local_name().as_ref() == "definedName" => {
                let sheet = attribute(&e, "localSheetId").and_then(|id| id.trim().parse::<usize>().ok());
                current = attribute(&e, "name").map(|name| (name, sheet, String::new()));
            }
            Ok(Event::Text(text)) => push(&mut current, &text.xml_content(XmlVersion::Implicit1_0)),
            Ok(Event::CData(text)) => push(&mut current, text.as_ref()),
            Ok(Event::GeneralRef(reference)) => match reference.resolve_char_ref() {
                Ok(Some(c)) => push(&mut current, c.encode_utf8(&mut [0; 4])),
                _ => {
                    let entity = reference.xml_content(XmlVersion::Implicit1_0);
                    push(&mut current, quick_xml::escape::resolve_xml_entity(&entity).unwrap_or(""));
                }
            },
            Ok(Event::End(e)) if e.local_name().as_ref() == "definedName" => {
                if let Some((name, sheet, formula)) = current.take() {
                    let formula = formula.trim().trim_start_matches('=').to_string();
                    let within_limits = name.chars().count() <= MAX_DEFINED_NAME_CHARS
                        && formula.chars().count() <= MAX_FORMULA_CHARS;
                    if names.len() < MAX_DEFINED_NAMES && within_limits {
                        names.push(DefinedName { name, formula, sheet });
                    } else {
                        dropped += 1;
                    }
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(corrupt(path, format!("malformed `{part}`: {e}"))),
        }
        buf.clear();
    }
    if dropped > 0 {
        tracing::warn!(
            "{}: {dropped} defined names are not carried over (longer than Excel allows, or past the first \
             {MAX_DEFINED_NAMES})",
            path.display()
        );
    }
    Ok((sheets, names))
}

/// Relationship id → target of a `.rels` part (empty when the part is missing).
fn parse_relationships(
    path: &Path,
    archive: &mut Archive,
    part: &str,
) -> Result<HashMap<String, String>, WorkbookError> {
    let mut targets = HashMap::new();
    if archive.index_for_name(part).is_none() {
        return Ok(targets);
    }
    let entry = archive.by_name(part).map_err(|e| corrupt(path, format!("unreadable `{part}`: {e}")))?;
    let mut reader = quick_xml::Reader::from_reader(BufReader::new(entry));
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e) | Event::Empty(e)) if e.local_name().as_ref() == "Relationship" => {
                if let (Some(id), Some(target)) = (attribute(&e, "Id"), attribute(&e, "Target")) {
                    targets.insert(id, target);
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(corrupt(path, format!("malformed `{part}`: {e}"))),
        }
        buf.clear();
    }
    Ok(targets)
}

/// Resolves a relationship target against the directory of the part that names it (`/x` is absolute).
fn resolve_target(dir: &str, target: &str) -> String {
    let joined = match target.strip_prefix('/') {
        Some(absolute) => absolute.to_string(),
        None => format!("{dir}{target}"),
    };
    let mut segments: Vec<&str> = Vec::new();
    for segment in joined.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    segments.join("/")
}

/// Reads the frozen pane of the first sheet view and the explicit column widths; stops at `<sheetData>`.
fn parse_sheet_layout(path: &Path, archive: &mut Archive, part: &str) -> Result<SheetLayout, WorkbookError> {
    let entry = archive.by_name(part).map_err(|e| corrupt(path, format!("unreadable `{part}`: {e}")))?;
    let mut reader = quick_xml::Reader::from_reader(BufReader::new(entry));
    let mut buf = Vec::new();
    let mut layout = SheetLayout::default();
    let mut widths: BTreeMap<u16, f64> = BTreeMap::new();
    let mut sheet_views = 0usize;
    // `<col>` elements may each span up to 16,384 columns; bound the work a hostile file can ask for.
    let mut column_budget = 4 * MAX_COLS as usize;
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e) | Event::Empty(e)) => match e.local_name().as_ref() {
                "sheetView" => sheet_views += 1,
                "pane" if sheet_views == 1 && layout.freeze.is_none() => {
                    let state = attribute(&e, "state").unwrap_or_default();
                    if state == "frozen" || state == "frozenSplit" {
                        let split = |name: &str| {
                            attribute(&e, name)
                                .and_then(|v| v.trim().parse::<f64>().ok())
                                .filter(|v| v.is_finite())
                        };
                        let rows = split("ySplit").unwrap_or(0.0).clamp(0.0, f64::from(MAX_ROWS - 1)) as u32;
                        let cols = split("xSplit").unwrap_or(0.0).clamp(0.0, f64::from(MAX_COLS - 1)) as u16;
                        if rows > 0 || cols > 0 {
                            layout.freeze = Some((rows, cols));
                        }
                    }
                }
                "col" => {
                    let number = |name: &str| attribute(&e, name).and_then(|v| v.trim().parse::<u32>().ok());
                    let hidden = attribute(&e, "hidden").is_some_and(|h| h == "1" || h == "true");
                    let width = attribute(&e, "width").and_then(|v| v.trim().parse::<f64>().ok());
                    if let (Some(min), Some(max), Some(width), false) =
                        (number("min"), number("max"), width, hidden)
                        && width.is_finite()
                        && min >= 1
                    {
                        let user_width = character_width(width);
                        for col in min..=max.min(MAX_COLS) {
                            if column_budget == 0 {
                                break;
                            }
                            column_budget -= 1;
                            widths.insert((col - 1) as u16, user_width);
                        }
                    }
                }
                "sheetData" => break,
                _ => {}
            },
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(corrupt(path, format!("malformed sheet `{part}`: {e}"))),
        }
        buf.clear();
    }
    layout.column_widths = widths.into_iter().collect();
    Ok(layout)
}

/// Converts a `<col width>` (which includes Excel's cell padding) back to the width in characters that
/// Excel shows and `set_column_width` takes, using Calibri 11 metrics (7-pixel digits, 5 pixels padding) —
/// the inverse of rust_xlsxwriter's conversion, so a written width reads back unchanged.
fn character_width(xml_width: f64) -> f64 {
    let pixels = (xml_width.clamp(0.0, 255.0) * 7.0).round();
    if pixels >= 12.0 { (pixels - 5.0) / 7.0 } else { pixels / 12.0 }
}

/// The value of the attribute with local name `name` (namespace prefix ignored), unescaped.
fn attribute(element: &BytesStart<'_>, name: &str) -> Option<String> {
    element
        .attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| a.normalized_value(XmlVersion::Implicit1_0).ok().map(Cow::into_owned))
}

// ---------------------------------------------------------------------------------------------------------
// Step 2 and 3: cells (XLSX)

fn read_xlsx_cells(path: &Path, limits: &Limits, layouts: &Layouts) -> Result<Workbook, WorkbookError> {
    let file = File::open(path).map_err(|e| WorkbookError::io(path, "open", e))?;
    let mut book: Xlsx<_> = Xlsx::new(BufReader::new(file))
        .map_err(|e| corrupt(path, format!("not a readable XLSX workbook: {e}")))?;
    let is_1904 = book.has_1904_epoch();
    let metadata = book.sheets_metadata().to_vec();
    let mut workbook = Workbook::default();
    // One budget for the whole workbook: memory is what it bounds.
    let mut budget = CellBudget::new(limits);
    for meta in metadata {
        let mut sheet =
            Sheet { name: meta.name.clone(), visibility: visibility(meta.visible), ..Sheet::default() };
        if meta.typ == SheetType::WorkSheet {
            read_xlsx_sheet(path, limits, &mut book, &mut sheet, is_1904, &mut budget)?;
        }
        if let Some(layout) = layouts.sheets.get(&meta.name) {
            sheet.freeze = layout.freeze;
            sheet.column_widths = layout.column_widths.clone();
        }
        workbook.sheets.push(sheet);
    }
    workbook.defined_names = layouts.defined_names.clone();
    Ok(workbook)
}

fn read_xlsx_sheet<RS: Read + Seek>(
    path: &Path,
    limits: &Limits,
    book: &mut Xlsx<RS>,
    sheet: &mut Sheet,
    is_1904: bool,
    budget: &mut CellBudget,
) -> Result<(), WorkbookError> {
    let sheet_error = |e: calamine::XlsxError, name: &str| {
        let text = e.to_string();
        // calamine knows the seven classic error values only; newer Excel versions write more.
        let hint = if matches!(e, calamine::XlsxError::CellError(_)) { NEWER_ERROR_VALUES_HINT } else { "" };
        corrupt(path, format!("sheet `{name}`: {text}{hint}"))
    };
    let mut has_dates = false;
    {
        let mut reader = book.worksheet_cells_reader(&sheet.name).map_err(|e| sheet_error(e, &sheet.name))?;
        check_dimensions(path, &sheet.name, reader.dimensions(), limits)?;
        while let Some(record) = reader.next_cell_with_formula().map_err(|e| sheet_error(e, &sheet.name))? {
            let value = cell_from_data_ref(record.value, is_1904);
            let cell = match record.formula {
                Some(formula) if !formula.is_empty() => formula_cell(formula, value),
                _ => value,
            };
            if cell == Cell::Empty {
                continue;
            }
            has_dates |= holds_datetime(&cell);
            place(path, sheet, record.pos, cell, budget)?;
        }
    }
    if has_dates {
        let mut reader = book.worksheet_cells_reader(&sheet.name).map_err(|e| sheet_error(e, &sheet.name))?;
        let format_codes: Vec<Option<String>> = reader
            .styles()
            .iter()
            .map(|style| {
                style.number_format.as_ref().map(|n| match n.format_id {
                    Some(id) if id < FIRST_CUSTOM_FORMAT_ID && !defined_by_the_file(id, &n.format_code) => {
                        builtin_format(id)
                    }
                    _ => n.format_code.clone(),
                })
            })
            .collect();
        while let Some((row, col, style_id)) =
            reader.next_style_id().map_err(|e| sheet_error(e, &sheet.name))?
        {
            let Some(Some(code)) = format_codes.get(style_id) else { continue };
            let Some(cell) = sheet.rows.get_mut(row as usize).and_then(|r| r.get_mut(col as usize)) else {
                continue;
            };
            let cell = match cell {
                Cell::Formula { cached, .. } => cached.as_mut(),
                cell => cell,
            };
            if let Cell::DateTime { serial, format } = cell {
                // Step 2 moved every 1904 serial that is not a duration into the 1900 epoch; a time of day —
                // below one day, shown without a date (`h:mm`) — is not a day and keeps its value: 0.25 is 6:00
                // in both epochs, and a formula like `A1*24` reads it. A whole date-time shown as a time only
                // still moves (its date is there, hidden, and `A1-B1` against a date must not change). Moved
                // back only from the moved range, so a cell the file lists twice is not moved twice.
                if is_1904
                    && **format != *DURATION_FORMAT
                    && (EPOCH_1904_OFFSET..EPOCH_1904_OFFSET + 1.0).contains(serial)
                    && !shows_a_date(code)
                {
                    *serial -= EPOCH_1904_OFFSET;
                }
                *format = code.as_str().into();
            }
        }
    }
    Ok(())
}

/// Said of a sheet whose cached error results calamine cannot read (it knows the seven classic ones).
const NEWER_ERROR_VALUES_HINT: &str = " (an error result of newer Excel versions, such as #SPILL! or #CALC!, which \
     the XLSX reader cannot read: paste that formula's results as values, or fix the formula, and drop the file \
     again)";

fn holds_newer_error_values(error: &WorkbookError) -> bool {
    matches!(error, WorkbookError::Corrupt { reason, .. } if reason.ends_with(NEWER_ERROR_VALUES_HINT))
}

/// Reads a workbook whose sheets hold error results of newer Excel versions (`#SPILL!`, `#CALC!`, `#BUSY!`…),
/// which calamine refuses: the sheets are copied to a temporary workbook with those results written as `#N/A`
/// (each remembered by its cell reference), that copy is read, and the remembered results are put back into
/// the model. Gives up (an error; the caller reports the original one) on any cell without a reference or any
/// cell the model does not hold as the placeholder error.
fn read_xlsx_with_newer_errors(
    path: &Path,
    limits: &Limits,
    layouts: &Layouts,
) -> Result<Workbook, WorkbookError> {
    let mut archive = open_archive(path)?;
    let names: Vec<String> = (0..archive.len())
        .map(|i| {
            let entry = archive.by_index_raw(i).ok();
            entry.and_then(|e| e.name().ok().map(Cow::into_owned)).unwrap_or_else(|| format!("#{i}"))
        })
        .collect();
    let workbook_part = find_workbook_part(path, &mut archive, &names)?
        .ok_or_else(|| corrupt(path, "the zip archive is not an Excel workbook"))?;
    let sheet_parts: HashMap<String, String> = sheet_parts(path, &mut archive, &workbook_part)?
        .0
        .into_iter()
        .map(|(sheet, part)| (part, sheet))
        .collect();

    let io = |e: std::io::Error| WorkbookError::io(path, "copy the workbook for reading", e);
    let zip_error = |e: zip::result::ZipError| io(std::io::Error::other(e));
    let copy = tempfile::NamedTempFile::new().map_err(io)?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(copy.reopen().map_err(io)?));
    let mut results: HashMap<String, Vec<ErrorResult>> = HashMap::new();
    for index in 0..archive.len() {
        let name = names.get(index).cloned().unwrap_or_default();
        match sheet_parts.get(&name) {
            Some(sheet) => {
                let entry = archive.by_index(index).map_err(zip_error)?;
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated)
                    .large_file(true);
                zip.start_file(name.as_str(), options).map_err(zip_error)?;
                let found = replace_newer_error_values(path, BufReader::new(entry), &mut zip, limits)?;
                results.insert(sheet.clone(), found);
            }
            None => {
                let entry = archive.by_index_raw(index).map_err(zip_error)?;
                zip.raw_copy_file(entry).map_err(zip_error)?;
            }
        }
    }
    zip.finish().map_err(zip_error)?.flush().map_err(io)?;

    let mut workbook = read_xlsx_cells(copy.path(), limits, layouts)?;
    for sheet in &mut workbook.sheets {
        for ((row, col), original) in results.remove(&sheet.name).unwrap_or_default() {
            let cell = sheet.rows.get_mut(row as usize).and_then(|r| r.get_mut(col as usize));
            let placeholder = match cell {
                Some(Cell::Error(text)) => Some(text),
                Some(Cell::Formula { cached, .. }) => match cached.as_mut() {
                    Cell::Error(text) => Some(text),
                    _ => None,
                },
                _ => None,
            };
            match placeholder {
                Some(text) if text == PLACEHOLDER_ERROR => *text = original,
                _ => return Err(corrupt(path, "an error result could not be put back where it was")),
            }
        }
    }
    Ok(workbook)
}

/// A cached error result found in a sheet's XML: its 0-based (row, column) and its text.
type ErrorResult = ((u32, u32), String);

/// What [`read_xlsx_with_newer_errors`] writes in place of a newer error result (one calamine reads).
const PLACEHOLDER_ERROR: &str = "#N/A";

/// Copies one sheet's XML from `reader` to `out`, writing every cached error result (`<c t="e"><v>`) that is
/// not one of the classic seven as [`PLACEHOLDER_ERROR`]; returns those results with their cell positions
/// (0-based row and column, from the cell's `r` reference — a cell without one is an error).
fn replace_newer_error_values(
    path: &Path,
    reader: impl std::io::BufRead,
    out: &mut impl Write,
    limits: &Limits,
) -> Result<Vec<ErrorResult>, WorkbookError> {
    let mut reader = quick_xml::Reader::from_reader(reader);
    let mut writer = quick_xml::Writer::new(out);
    let mut buf = Vec::new();
    let mut found = Vec::new();
    // The reference of the error cell being read (`Some(None)`: an error cell without a reference).
    let mut error_cell: Option<Option<(u32, u32)>> = None;
    let mut in_value = false;
    let write_error = |e: std::io::Error| WorkbookError::io(path, "copy the workbook for reading", e);
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| corrupt(path, format!("malformed sheet XML: {e}")))?;
        match &event {
            Event::Eof => break,
            Event::Start(e) if e.local_name().as_ref() == "c" => {
                error_cell = (attribute(e, "t").as_deref() == Some("e"))
                    .then(|| attribute(e, "r").and_then(|r| cell_position(&r)));
            }
            Event::End(e) if e.local_name().as_ref() == "c" => error_cell = None,
            Event::Start(e) if e.local_name().as_ref() == "v" => in_value = error_cell.is_some(),
            Event::End(e) if e.local_name().as_ref() == "v" => in_value = false,
            Event::Text(text) if in_value => {
                let value = text.trim().to_string();
                if !ERROR_LITERALS.contains(&value.as_str()) {
                    let position = error_cell
                        .flatten()
                        .ok_or_else(|| corrupt(path, "an error cell without a cell reference"))?;
                    if found.len() as u64 >= limits.max_sheet_cells {
                        return Err(too_large(path, "more error results than the workbook may have cells"));
                    }
                    found.push((position, value));
                    writer
                        .write_event(Event::Text(quick_xml::events::BytesText::new(PLACEHOLDER_ERROR)))
                        .map_err(write_error)?;
                    buf.clear();
                    continue;
                }
            }
            _ => {}
        }
        writer.write_event(event).map_err(write_error)?;
        buf.clear();
    }
    Ok(found)
}

/// A cell reference such as `B12` as a 0-based (row, column).
fn cell_position(reference: &str) -> Option<(u32, u32)> {
    let letters = reference.bytes().take_while(u8::is_ascii_alphabetic).count();
    let (column, row) = reference.split_at(letters);
    if column.is_empty() || column.len() > 3 {
        return None;
    }
    let column = column.bytes().fold(0u32, |n, b| n * 26 + u32::from(b.to_ascii_uppercase() - b'A') + 1);
    let row: u32 = row.parse().ok()?;
    Some((row.checked_sub(1)?, column - 1))
}

fn holds_datetime(cell: &Cell) -> bool {
    match cell {
        Cell::DateTime { .. } => true,
        Cell::Formula { cached, .. } => matches!(cached.as_ref(), Cell::DateTime { .. }),
        _ => false,
    }
}

/// Refuses a sheet whose declared used range is beyond Excel's grid or larger than the cell limit.
fn check_dimensions(
    path: &Path,
    sheet: &str,
    dims: Dimensions,
    limits: &Limits,
) -> Result<(), WorkbookError> {
    let (first_row, first_col) = dims.start;
    let (last_row, last_col) = dims.end;
    if last_row >= MAX_ROWS || last_col >= MAX_COLS {
        return Err(too_large(path, format!("sheet `{sheet}` declares a used range beyond Excel's grid")));
    }
    let rows = u64::from(last_row.saturating_sub(first_row)) + 1;
    let cols = u64::from(last_col.saturating_sub(first_col)) + 1;
    let area = rows.saturating_mul(cols);
    if area > limits.max_sheet_cells {
        return Err(too_large(
            path,
            format!(
                "sheet `{sheet}` declares {rows} rows × {cols} columns = {area} cells; the limit is {}",
                limits.max_sheet_cells
            ),
        ));
    }
    Ok(())
}

/// Counts the slots the model allocates for one workbook (row entries and cells, padding included), and the
/// bytes of its text.
struct CellBudget {
    used: u64,
    limit: u64,
    text_used: u64,
    text_limit: u64,
}

impl CellBudget {
    fn new(limits: &Limits) -> Self {
        CellBudget { used: 0, limit: limits.max_sheet_cells, text_used: 0, text_limit: limits.max_text_bytes }
    }
}

/// Bytes of text a cell holds (its formula and cached text for a formula).
fn text_bytes(cell: &Cell) -> usize {
    match cell {
        Cell::Text(text) | Cell::IsoDateTime(text) | Cell::Error(text) => text.len(),
        Cell::Formula { formula, cached } => formula.len() + text_bytes(cached),
        _ => 0,
    }
}

/// Puts a cell at its absolute (0-based) sheet position, charging the budget for every slot it allocates.
fn place(
    path: &Path,
    sheet: &mut Sheet,
    pos: (u32, u32),
    cell: Cell,
    budget: &mut CellBudget,
) -> Result<(), WorkbookError> {
    let (row, col) = pos;
    if row >= MAX_ROWS || col >= MAX_COLS {
        return Err(corrupt(path, format!("sheet `{}` has a cell outside Excel's grid", sheet.name)));
    }
    let (row, col) = (row as usize, col as usize);
    let new_rows = (row + 1).saturating_sub(sheet.rows.len());
    let row_len = sheet.rows.get(row).map_or(0, Vec::len);
    let new_cells = (col + 1).saturating_sub(row_len);
    budget.used = budget.used.saturating_add((new_rows + new_cells) as u64);
    budget.text_used = budget.text_used.saturating_add(text_bytes(&cell) as u64);
    if budget.text_used > budget.text_limit {
        return Err(too_large(
            path,
            format!(
                "sheet `{}` brings the workbook past {} bytes of text (a shared string counts in every cell using it)",
                sheet.name, budget.text_limit
            ),
        ));
    }
    if budget.used > budget.limit {
        return Err(too_large(
            path,
            format!(
                "sheet `{}` brings the workbook past {} cells (counted while reading, whatever its declared size)",
                sheet.name, budget.limit
            ),
        ));
    }
    if new_rows > 0 {
        // A new row gets room for its cells up front, so it is not regrown cell by cell (each regrowth is a
        // fresh allocation and a copy): as many as the header row has — the enricher's filled columns are
        // in there too — but never more than twice the previous row's length nor less than this cell needs,
        // so the reservation stays within a small factor of the cells counted above.
        let header_len = sheet.rows.first().map_or(0, Vec::len);
        let previous_len = sheet.rows.last().map_or(0, Vec::len);
        let room = header_len.min(2 * previous_len).max(col + 1);
        sheet.rows.resize_with(row + 1, Vec::new);
        sheet.rows[row].reserve_exact(room);
    }
    sheet.set(row, col, cell);
    Ok(())
}

/// A formula cell, except that a formula that is just its own error literal (`=#N/A` caching `#N/A`, how
/// we write error cells) is an error cell.
fn formula_cell(formula: String, cached: Cell) -> Cell {
    if let Cell::Error(error) = &cached
        && formula.trim() == error
    {
        return cached;
    }
    Cell::Formula { formula: formula.into_boxed_str(), cached: Box::new(cached) }
}

/// Whether number format `code` (a custom code or a [`builtin_format`]) shows a date, not only a time of day
/// or a duration: a `y`, `d`, era (`e`, `g`) or Buddhist year (`b`) part, or an `m` that means the month (not
/// right after an hour nor right before seconds), outside quoted text, escaped characters, `[…]` sections
/// other than elapsed time,
/// the `_x`/`*x` spacing codes and `AM/PM`. Built-in ids 18–21, 32, 33 and 45–47 are times; the East Asian
/// ids differ by locale (34, 35, 55, 56 are times in Chinese and dates in Japanese) and count as dates.
fn shows_a_date(code: &str) -> bool {
    if let Some(id) = code.strip_prefix(BUILTIN_FORMAT_MARK) {
        return !matches!(id.parse::<u32>(), Ok(18..=21 | 32 | 33 | 45..=47));
    }
    // The date and time letters in order, AM/PM and the rest dropped.
    let mut letters: Vec<char> = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                }
            }
            '\\' | '_' | '*' => {
                chars.next();
            }
            '[' => {
                // `[h]`, `[mm]`, `[ss]` are elapsed time; other sections are colours, conditions, locales.
                let section: String = chars.by_ref().take_while(|&c| c != ']').collect();
                let section = section.to_ascii_lowercase();
                if let Some(first) = section.chars().next()
                    && section.chars().all(|c| c == first)
                    && matches!(first, 'h' | 'm' | 's')
                {
                    letters.push(first);
                }
            }
            'a' | 'A' => {
                // `AM/PM` or `A/P`: skip the rest of it. `aaa`/`aaaa` (a weekday, in Japanese formats) is a date.
                let rest: String = chars.clone().take(4).collect::<String>().to_ascii_lowercase();
                let skip = if rest.starts_with("m/pm") {
                    4
                } else if rest.starts_with("/p") {
                    2
                } else if rest.starts_with("aa") {
                    letters.push('d');
                    rest.chars().take_while(|&c| c == 'a').count()
                } else {
                    0
                };
                for _ in 0..skip {
                    chars.next();
                }
            }
            _ => {
                let c = c.to_ascii_lowercase();
                if matches!(c, 'y' | 'd' | 'e' | 'g' | 'b' | 'm' | 'h' | 's') {
                    letters.push(c);
                }
            }
        }
    }
    letters.iter().enumerate().any(|(i, &c)| match c {
        'y' | 'd' | 'e' | 'g' | 'b' => true,
        'm' => {
            let after_hour = letters[..i].iter().rev().find(|&&l| l != 'm') == Some(&'h');
            let before_seconds = letters[i..].iter().find(|&&l| l != 'm') == Some(&'s');
            !after_hour && !before_seconds
        }
        _ => false,
    })
}

fn visibility(visible: SheetVisible) -> Visibility {
    match visible {
        SheetVisible::Visible => Visibility::Visible,
        SheetVisible::Hidden => Visibility::Hidden,
        SheetVisible::VeryHidden => Visibility::VeryHidden,
    }
}

fn datetime_from_serial(serial: f64, is_duration: bool, is_1904: bool) -> Cell {
    let serial = if is_1904 && !is_duration { serial + EPOCH_1904_OFFSET } else { serial };
    let format = if is_duration {
        DURATION_FORMAT
    } else if serial.fract() == 0.0 {
        DATE_FORMAT
    } else {
        DATETIME_FORMAT
    };
    Cell::DateTime { serial, format: format.into() }
}

fn cell_from_data_ref(value: DataRef<'_>, is_1904: bool) -> Cell {
    match value {
        DataRef::Empty => Cell::Empty,
        DataRef::Int(n) => Cell::Int(n),
        DataRef::Float(f) => Cell::Float(f),
        DataRef::String(s) => Cell::Text(s),
        DataRef::SharedString(s) => Cell::Text(s.to_string()),
        DataRef::Bool(b) => Cell::Bool(b),
        DataRef::DateTime(dt) => datetime_from_serial(dt.as_f64(), dt.is_duration(), is_1904),
        DataRef::DateTimeIso(s) => iso_date_cell(s),
        DataRef::DurationIso(s) => Cell::IsoDateTime(s),
        DataRef::Error(e) => Cell::Error(e.to_string()),
    }
}

fn cell_from_data(value: &Data, is_1904: bool) -> Cell {
    match value {
        Data::Empty => Cell::Empty,
        Data::Int(n) => Cell::Int(*n),
        Data::Float(f) => Cell::Float(*f),
        Data::String(s) => Cell::Text(s.clone()),
        Data::Bool(b) => Cell::Bool(*b),
        Data::DateTime(dt) => datetime_from_serial(dt.as_f64(), dt.is_duration(), is_1904),
        Data::DateTimeIso(s) => iso_date_cell(s.clone()),
        Data::DurationIso(s) => Cell::IsoDateTime(s.clone()),
        Data::Error(e) => Cell::Error(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------------------
// XLS

/// Before calamine opens an XLS, the record stream is scanned for what calamine would allocate: calamine
/// parses every sheet at open time, reserves room for each sheet's declared `DIMENSIONS` (rows × columns
/// cells) and then allocates the full bounding box of the cells it found (rows × columns, for values and
/// again for formulas). A 6 KB hostile file found by fuzzing declared two far-apart cells and made it allocate
/// 23 GB, and one whose compound-file sector chain loops. This scan (our own code: the compound file through
/// `cfb`, which validates its structure, then the BIFF record headers) refuses a broken compound file, and an
/// XLS whose declared dimensions or cell bounding boxes exceed [`xls_cell_budget`] before calamine runs.
/// On the way it reads the workbook's BIFF version as calamine does ([`XlsVersion::of_bof`]), which the
/// formula text depends on. It returns the record stream it checked, which is all calamine is then given
/// ([`xls_holding_only`]): calamine finds its stream its own way (the first directory entry whose name *bytes*
/// read `Workbook`, whatever the name's declared length), so a file could show this check one stream and
/// calamine another — the fuzzer found one whose `Workbook` entry declares an empty name: `cfb` found no
/// stream, this check was skipped, and calamine read 9 GB into memory from a 5.6 KB file. A compound file
/// without a `Workbook` (or BIFF5 `Book`) stream at its root is refused.
fn check_xls_extent(path: &Path, limits: &Limits) -> Result<(XlsVersion, Vec<u8>), WorkbookError> {
    // calamine's own compound-file reader follows sector chains without detecting loops (the fuzzer found a
    // 6 KB file whose cyclic chain made it allocate until the process died); `cfb` validates the structure,
    // so a file it refuses never reaches calamine.
    let mut compound = cfb::open(path)
        .map_err(|e| corrupt(path, format!("not a readable XLS workbook: broken compound file: {e}")))?;
    let Some(name) = ["/Workbook", "/Book"].into_iter().find(|n| compound.is_stream(n)) else {
        return Err(corrupt(path, "not a readable XLS workbook: its compound file holds no Workbook stream"));
    };
    // A stream that cannot be read in full (a truncated file, found by the fuzzer) is refused: calamine's own
    // reader tolerates it and would read, past every check here, what this walk never saw.
    let mut bytes = Vec::new();
    let unreadable =
        |e: std::io::Error| corrupt(path, format!("not a readable XLS workbook: its {name} stream: {e}"));
    let stream = compound.open_stream(name).map_err(unreadable)?;
    stream.take(MAX_FILE_BYTES).read_to_end(&mut bytes).map_err(unreadable)?;
    let budget = xls_cell_budget(limits);
    let refuse = |what: String| {
        Err(too_large(path, format!("{what}; the limit for an XLS workbook is {budget} cells")))
    };
    let u16_at =
        |data: &[u8], at: usize| data.get(at..at + 2).map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])));
    let u32_at = |data: &[u8], at: usize| {
        data.get(at..at + 4).map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    };
    // Bounding box of the current substream: (first row, last row, first column, last column).
    let mut bbox: Option<(u64, u64, u64, u64)> = None;
    let mut total: u64 = 0;
    let close = |bbox: &mut Option<(u64, u64, u64, u64)>| -> u64 {
        bbox.take().map_or(0, |(r0, r1, c0, c1)| (r1 - r0 + 1).saturating_mul(c1 - c0 + 1))
    };
    // Substreams nest (a chart inside a sheet): only the outermost BOF and EOF start and end a sheet, whose
    // cells calamine gathers into one range across the nested one. The sheets the workbook declares
    // (BoundSheet) must each start at a different substream the walk saw: calamine reads a sheet once per
    // declaration, so sheets declared on one substream, or on data hidden inside another record, would be read
    // (and held) many times over, unseen by this count.
    let mut depth = 0usize;
    let mut substream_starts: Vec<u64> = Vec::new();
    let mut declared_sheets: Vec<u64> = Vec::new();
    // The shared strings (SST and its CONTINUE records) and the LabelSst cells using them: calamine copies the
    // string into every cell, so the text those cells will hold is counted against the text budget.
    let mut sst_parts: Vec<&[u8]> = Vec::new();
    let mut in_sst = false;
    let mut label_sst: Vec<u32> = Vec::new();
    // The version calamine parses every formula with: that of the last BOF before the first EOF (the
    // workbook globals), BIFF8 when there is none.
    let mut version = XlsVersion::Biff8;
    let mut globals_ended = false;
    let mut pos = 0usize;
    while pos + 4 <= bytes.len() {
        let record_start = pos as u64;
        let typ = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        let len = usize::from(u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]));
        let data = &bytes[pos + 4..(pos + 4 + len).min(bytes.len())];
        pos += 4 + len;
        let mut cells: [Option<(u64, u64)>; 2] = [None, None];
        match typ {
            0x00FC => {
                sst_parts = vec![data];
                in_sst = true;
            }
            0x003C if in_sst => sst_parts.push(data),
            _ => in_sst = false,
        }
        if typ == 0x00FD
            && let Some(index) = u32_at(data, 6)
        {
            label_sst.push(index as u32);
        }
        match typ {
            // BOF: a new substream starts (at depth 0 a new sheet, or the workbook globals).
            0x0809 => {
                if !globals_ended {
                    version = XlsVersion::of_bof(data);
                }
                if depth == 0 {
                    total = total.saturating_add(close(&mut bbox));
                    if total > budget {
                        return refuse(format!("its sheets span {total} cells"));
                    }
                    substream_starts.push(record_start);
                }
                depth += 1;
            }
            // EOF: the substream ends; the sheet ends with the outermost one.
            0x000A => {
                globals_ended = true;
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    total = total.saturating_add(close(&mut bbox));
                    if total > budget {
                        return refuse(format!("its sheets span {total} cells"));
                    }
                }
            }
            // BoundSheet: where a declared sheet starts.
            0x0085 => {
                if let Some(start) = u32_at(data, 0) {
                    declared_sheets.push(start);
                }
            }
            // DIMENSIONS: calamine reserves this many cells.
            0x0200 => {
                let (rows, cols) = reserved_by_dimensions(data);
                if rows.saturating_mul(cols) > budget {
                    return refuse(format!("a sheet declares {rows} rows × {cols} columns"));
                }
            }
            // Cell records that calamine keeps: Number, Label, RString, BoolErr, RK, LabelSst, Formula.
            0x0203 | 0x0204 | 0x00D6 | 0x0205 | 0x027E | 0x00FD | 0x0006 => {
                cells[0] = u16_at(data, 0).zip(u16_at(data, 2));
            }
            // MulRk: row, first column, …, last column.
            0x00BD if data.len() >= 6 => {
                let row = u16_at(data, 0).unwrap_or(0);
                cells[0] = u16_at(data, 2).map(|c| (row, c));
                cells[1] = u16_at(data, data.len() - 2).map(|c| (row, c));
            }
            _ => {}
        }
        for (row, col) in cells.into_iter().flatten() {
            let (r0, r1, c0, c1) = bbox.get_or_insert((row, row, col, col));
            (*r0, *r1, *c0, *c1) = ((*r0).min(row), (*r1).max(row), (*c0).min(col), (*c1).max(col));
            let area = (*r1 - *r0 + 1).saturating_mul(*c1 - *c0 + 1);
            if area > budget || total.saturating_add(area) > budget {
                return refuse(format!(
                    "a sheet's cells span {} rows × {} columns",
                    *r1 - *r0 + 1,
                    *c1 - *c0 + 1
                ));
            }
        }
    }
    if !label_sst.is_empty() {
        let lengths = sst_string_bytes(&sst_parts);
        let text: u64 = label_sst
            .iter()
            .map(|&index| lengths.get(index as usize).copied().unwrap_or(0))
            .fold(0u64, u64::saturating_add);
        if text > limits.max_text_bytes {
            return Err(too_large(
                path,
                format!(
                    "its cells hold {text} bytes of shared text (a string counts in every cell using it); the limit \
                     is {}",
                    limits.max_text_bytes
                ),
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for start in &declared_sheets {
        if !seen.insert(*start) {
            return Err(corrupt(path, "several sheets are declared on the same sheet data"));
        }
        if !substream_starts.contains(start) {
            return Err(corrupt(path, "a sheet is declared where no sheet data starts"));
        }
    }
    Ok((version, bytes))
}

/// A compound file holding one stream, `Workbook`, with `stream` in it: what calamine reads an XLS from, so
/// that it reads exactly the records [`check_xls_extent`] checked (calamine reads nothing else of an XLS for
/// us: no summary streams, no VBA project).
fn xls_holding_only(path: &Path, stream: &[u8]) -> Result<std::io::Cursor<Vec<u8>>, WorkbookError> {
    let copy_failed = |e: std::io::Error| WorkbookError::io(path, "copy the workbook stream", e);
    let buffer = std::io::Cursor::new(Vec::with_capacity(stream.len() + stream.len() / 64 + 4096));
    let mut compound =
        cfb::CompoundFile::create_with_version(cfb::Version::V3, buffer).map_err(copy_failed)?;
    compound.create_stream("/Workbook").and_then(|mut out| out.write_all(stream)).map_err(copy_failed)?;
    compound.flush().map_err(copy_failed)?;
    let mut buffer = compound.into_inner();
    buffer.set_position(0);
    Ok(buffer)
}

/// The rows and columns calamine 0.38 reserves room for when it reads a DIMENSIONS record (`parse_dimensions`
/// and the reservation in its sheet loop), computed its way: a first column above 0xFF, or after the last, is
/// taken as 0, and the counts are `last - first + 1` in u32 arithmetic, which a release build does not check:
/// a first row after the last wraps around into billions of rows, an allocation that aborts the process
/// (found by the fuzzer in the thirteenth session; the check used to saturate at 0 rows instead). `(0, 0)` for
/// a record calamine refuses.
fn reserved_by_dimensions(data: &[u8]) -> (u64, u64) {
    let u16_at = |at: usize| u32::from(u16::from_le_bytes([data[at], data[at + 1]]));
    let u32_at = |at: usize| u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    let (first_row, last_row, mut first_col, last_col) = match data.len() {
        10 => (u16_at(0), u16_at(2), u16_at(4), u16_at(6)),
        14 | 16 => (u32_at(0), u32_at(4), u16_at(8), u16_at(10)),
        _ => return (0, 0),
    };
    if first_col > 0xFF || last_col < first_col {
        first_col = 0;
    }
    if last_row < 1 || last_col < 1 {
        return (1, 1);
    }
    // calamine's end is (last_row - 1, last_col - 1), its counts `end - start + 1`.
    let count = |last: u32, first: u32| u64::from((last - 1).wrapping_sub(first).wrapping_add(1));
    (count(last_row, first_row), count(last_col, first_col))
}

/// The BIFF version of an XLS workbook, as far as calamine's formula text depends on it: calamine 0.38 reads
/// the relative flags of a BIFF8 cell reference the wrong way round ([`xls_formula_text`]), and those of an
/// older one right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum XlsVersion {
    /// BIFF8 (Excel 97 to 2003), and whatever calamine takes for it.
    Biff8,
    /// BIFF5 (Excel 5 and 95; BIFF2 to BIFF4 files are no compound files and never get this far).
    Biff5OrOlder,
}

impl XlsVersion {
    /// The version a BOF record's payload (MS-XLS 2.4.21) names, decided as calamine 0.38 decides it (its
    /// `parse_bof`): 0x0500 and older are pre-BIFF8, and so is a version 0 with the BIFF5 document type
    /// 0x1000; anything else, unknown versions included, is BIFF8.
    fn of_bof(data: &[u8]) -> XlsVersion {
        let word = |at: usize| data.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        match (word(0), word(2)) {
            (Some(0x0002 | 0x0007 | 0x0200 | 0x0300 | 0x0400 | 0x0500), _) | (Some(0), Some(0x1000)) => {
                XlsVersion::Biff5OrOlder
            }
            _ => XlsVersion::Biff8,
        }
    }
}

/// Cells an XLS workbook may span (bounding boxes of all sheets together): a quarter of the workbook budget,
/// because calamine allocates each box twice (values and formulas) at about 32 + 24 bytes per cell before our
/// model copies the used cells. BIFF8 sheets hold at most 65,536 × 256 cells; a VTTL sheet of 65,535 rows ×
/// 43 columns spans 2.8 million.
/// The most bytes each string of a BIFF8 shared-string table (the SST record's payload and its CONTINUE
/// records', in order) takes as text: its character count, times 3 for two-byte characters (UTF-8). Reading
/// stops at the first string that does not fit (a hostile table): the strings before it are counted.
fn sst_string_bytes(parts: &[&[u8]]) -> Vec<u64> {
    // A cursor over the parts; `boundary` tells when a part was just entered (character data continued into a
    // new CONTINUE record starts with a fresh flags byte).
    struct Cursor<'a> {
        parts: &'a [&'a [u8]],
        part: usize,
        at: usize,
    }
    impl Cursor<'_> {
        fn at_part_start(&mut self) -> bool {
            while self.part < self.parts.len() && self.at >= self.parts[self.part].len() {
                self.part += 1;
                self.at = 0;
            }
            self.at == 0 && self.part > 0
        }
        fn byte(&mut self) -> Option<u8> {
            self.at_part_start();
            let byte = *self.parts.get(self.part)?.get(self.at)?;
            self.at += 1;
            Some(byte)
        }
        fn bytes(&mut self, n: u64) -> Option<()> {
            let mut left = n;
            while left > 0 {
                self.at_part_start();
                let part = self.parts.get(self.part)?;
                let step = left.min((part.len() - self.at) as u64);
                self.at += step as usize;
                left -= step;
            }
            Some(())
        }
        fn u16(&mut self) -> Option<u64> {
            Some(u64::from(u16::from_le_bytes([self.byte()?, self.byte()?])))
        }
        fn u32(&mut self) -> Option<u64> {
            Some(u64::from(u32::from_le_bytes([self.byte()?, self.byte()?, self.byte()?, self.byte()?])))
        }
    }
    let mut cursor = Cursor { parts, part: 0, at: 0 };
    let mut lengths = Vec::new();
    let Some(_total) = cursor.u32() else { return lengths };
    let Some(unique) = cursor.u32() else { return lengths };
    let one = |cursor: &mut Cursor<'_>| -> Option<u64> {
        let characters = cursor.u16()?;
        let flags = cursor.byte()?;
        let mut wide = flags & 0x01 != 0;
        let runs = if flags & 0x08 != 0 { cursor.u16()? } else { 0 };
        let extended = if flags & 0x04 != 0 { cursor.u32()? } else { 0 };
        let mut left = characters;
        let mut widest = wide;
        while left > 0 {
            if cursor.at_part_start() && left < characters {
                wide = cursor.byte()? & 0x01 != 0;
                widest |= wide;
            }
            let part_left = (cursor.parts.get(cursor.part)?.len() - cursor.at) as u64;
            let width = if wide { 2 } else { 1 };
            let here = left.min(part_left / width).max(1).min(left);
            cursor.bytes(here * width)?;
            left -= here;
        }
        cursor.bytes(runs * 4)?;
        cursor.bytes(extended)?;
        Some(characters * if widest { 3 } else { 1 })
    };
    for _ in 0..unique.min(16_000_000) {
        match one(&mut cursor) {
            Some(bytes) => lengths.push(bytes),
            None => break,
        }
    }
    lengths
}

fn xls_cell_budget(limits: &Limits) -> u64 {
    (limits.max_sheet_cells / 4).max(1)
}

fn read_xls(path: &Path, limits: &Limits) -> Result<Workbook, WorkbookError> {
    let (version, stream) = check_xls_extent(path, limits)?;
    let checked = xls_holding_only(path, &stream)?;
    drop(stream);
    let mut book: Xls<_> =
        Xls::new(checked).map_err(|e| corrupt(path, format!("not a readable XLS workbook: {e}")))?;
    let is_1904 = book.has_1904_epoch();
    let metadata = book.sheets_metadata().to_vec();
    let mut workbook = Workbook::default();
    let mut budget = CellBudget::new(limits);
    // Formulas written as their last computed values, by reason.
    let mut written_as_values = [0usize; 4];
    // calamine writes a sheet name as it is: an odd `"` in it (`12" Rulers!B1`) reads as a string literal to
    // [`names_a_sheet`], so such names are looked for as they are.
    let quoted_names: Vec<String> = metadata
        .iter()
        .filter(|meta| meta.name.contains('"'))
        .map(|meta| format!("{}!", meta.name))
        .collect();
    let defined_names = DefinedNames::new(book.defined_names().iter().map(|(name, _)| name.as_str()));
    let unreliable = |formula: &str| {
        if is_undecoded(formula) {
            Some(Unreliable::Undecoded)
        } else if names_a_sheet(formula) || quoted_names.iter().any(|name| formula.contains(name.as_str())) {
            Some(Unreliable::OtherSheet)
        } else if !has_sound_string_literals(formula) {
            Some(Unreliable::StringLiteral)
        } else if uses_a_defined_name(formula, &defined_names) {
            Some(Unreliable::DefinedName)
        } else {
            None
        }
    };
    for meta in metadata {
        let mut sheet =
            Sheet { name: meta.name.clone(), visibility: visibility(meta.visible), ..Sheet::default() };
        if meta.typ == SheetType::WorkSheet {
            let sheet_error = |e: calamine::XlsError| corrupt(path, format!("sheet `{}`: {e}", meta.name));
            let values = book.worksheet_range(&meta.name).map_err(sheet_error)?;
            let formulas = book.worksheet_formula(&meta.name).map_err(sheet_error)?;
            if let (Some(start), Some(end)) = (values.start(), values.end()) {
                check_dimensions(path, &meta.name, Dimensions { start, end }, limits)?;
                for (row, col, value) in values.used_cells() {
                    let pos = (start.0 + row as u32, start.1 + col as u32);
                    let cached = xls_cell(value, is_1904);
                    let cell = match formulas.get_value(pos).filter(|formula| !formula.is_empty()) {
                        Some(formula) => match unreliable(formula) {
                            Some(reason) => {
                                written_as_values[reason as usize] += 1;
                                cached
                            }
                            None => formula_cell(xls_formula_text(formula, version), cached),
                        },
                        None => cached,
                    };
                    if cell != Cell::Empty {
                        place(path, &mut sheet, pos, cell, &mut budget)?;
                    }
                }
            }
            // Formulas whose cached value is missing.
            if let Some(start) = formulas.start() {
                for (row, col, formula) in formulas.used_cells() {
                    let pos = (start.0 + row as u32, start.1 + col as u32);
                    if !formula.is_empty() && *sheet.cell(pos.0 as usize, pos.1 as usize) == Cell::Empty {
                        if let Some(reason) = unreliable(formula) {
                            // Counted already if it had a value; without one there is nothing to keep.
                            written_as_values[reason as usize] +=
                                usize::from(values.get_value(pos).is_none());
                            continue;
                        }
                        let cell = formula_cell(xls_formula_text(formula, version), Cell::Empty);
                        place(path, &mut sheet, pos, cell, &mut budget)?;
                    }
                }
            }
        }
        workbook.sheets.push(sheet);
    }
    for reason in
        [Unreliable::OtherSheet, Unreliable::DefinedName, Unreliable::StringLiteral, Unreliable::Undecoded]
    {
        let count = written_as_values[reason as usize];
        if count > 0 {
            tracing::warn!(
                "{}: {count} formulas {} are written as their last computed values: {} (save it as .xlsx to keep \
                 them)",
                path.display(),
                reason.what(),
                reason.why()
            );
        }
    }
    Ok(workbook)
}

/// Why an XLS formula is written as its last computed value instead of as a formula (see [`read_xls`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unreliable {
    /// It refers to another sheet ([`names_a_sheet`]).
    OtherSheet = 0,
    /// It uses a defined name ([`uses_a_defined_name`]).
    DefinedName = 1,
    /// Its string literals cannot be told apart ([`has_sound_string_literals`]).
    StringLiteral = 2,
    /// calamine could not decompile it, or left out a part of it ([`is_undecoded`]).
    Undecoded = 3,
}

impl Unreliable {
    /// Which formulas, in the warning.
    fn what(self) -> &'static str {
        match self {
            Unreliable::OtherSheet => "that refer to another sheet",
            Unreliable::DefinedName => "that use a defined name",
            Unreliable::StringLiteral => "whose text holds a `\"`",
            Unreliable::Undecoded => "of a kind this program cannot read (such as an array constant `{1,2}`)",
        }
    }

    /// Why, in the warning.
    fn why(self) -> &'static str {
        match self {
            Unreliable::OtherSheet => "their references cannot be read reliably from an XLS file",
            Unreliable::DefinedName => {
                "the defined names of an XLS file are not carried over, and Excel would show #NAME? in their place"
            }
            Unreliable::StringLiteral => "their text cannot be read reliably from an XLS file",
            Unreliable::Undecoded => "their text cannot be read from an XLS file",
        }
    }
}

/// Whether calamine 0.38 gave no formula text for an XLS formula: for a token it does not decompile (such as
/// `ptgMemFunc`, `ptgRefN`) it gives the text `Unrecognised formula for cell (r, c): <error>` instead of the
/// formula, and for an array constant (`ptgArray`, `SUM({1,2})`) the placeholder `{PtgArray}`. Written as a
/// formula, either is text Excel cannot read (it may call the XLSX damaged), so the formula is written as its
/// last computed value.
fn is_undecoded(formula: &str) -> bool {
    formula.starts_with("Unrecognised formula for cell") || formula.contains("{PtgArray}")
}

/// Whether an XLS formula, as calamine gives its text, refers to a sheet (`Data!A1`, `'My Notes'!A1:B2`): a
/// `!` outside string literals and error literals (`#REF!`, `#DIV/0!`…). calamine 0.38 cannot be trusted with
/// such references: a 3-D cell reference takes its column from the wrong bits (`Beta!B1` reads as a column
/// further right), a 3-D area names the wrong sheet (or `#REF`) and columns such as `$BTRM$1`, and a sheet name that
/// needs quotes is written without them (a formula Excel refuses). Such a formula is written as its last
/// computed value instead — the value the analyst saw, kept; the formula, said in a warning.
fn names_a_sheet(formula: &str) -> bool {
    let outside_strings: String = outside_literals(formula).collect();
    // An error literal's `!` is followed by an operator, a separator or the end; one followed by a reference is a
    // sheet's: calamine writes `#REF` for a sheet it cannot name (`SUM(#REF!$A$1:$A$2)`), and a sheet may be
    // named `Q#NUM`.
    let text = outside_strings.as_str();
    text.match_indices('!').any(|(at, _)| {
        let error_literal = ERROR_LITERALS
            .iter()
            .filter(|error| error.ends_with('!'))
            .any(|error| text[..=at].ends_with(error));
        let reference_follows =
            text[at + 1..].chars().next().is_some_and(|c| c == '$' || c == '#' || c.is_alphanumeric());
        !error_literal || reference_follows
    })
}

/// Format of an XLS time of day (see [`xls_cell`]).
const XLS_TIME_FORMAT: &str = "hh:mm:ss";

/// A cell of an XLS sheet. calamine gives no number format for XLS cells, so a date/time value below one day
/// — a time of day such as 06:15 shown `hh:mm` — cannot be told from a date-time by its format as in XLSX; it
/// is taken for what it almost always is, a time of day: it keeps its value (in a 1904-date workbook too, where
/// moving it by 1 462 days like a date changed it, and a formula such as `D2*24` with it) and shows as a time
/// (the date-time format showed `1900-01-00 06:15:00`). Only a 1904 date-time on 1904-01-01 is read wrong so.
fn xls_cell(value: &Data, is_1904: bool) -> Cell {
    match value {
        Data::DateTime(dt) if !dt.is_duration() && (0.0..1.0).contains(&dt.as_f64()) => {
            Cell::DateTime { serial: dt.as_f64(), format: XLS_TIME_FORMAT.into() }
        }
        _ => cell_from_data(value, is_1904),
    }
}

/// Whether the string literals of an XLS formula, as calamine gives its text, can be told apart. calamine 0.38
/// writes a literal's text between `"` without doubling a `"` in it (`="a""b"` comes out as `"a"b"`), which is
/// no formula: written to an XLSX file, Excel may report the file damaged. Since calamine never doubles a
/// `"`, a literal ends at the next `"`, and the text is sound when every literal has its closing `"` and is
/// followed by what may follow an operand: the end, an operator, `,`, `)` or a space. So `""` is an empty
/// literal, never an escaped quote — one right after a closing `"` (`"a""b"`, from the text `a""b`) means the
/// text held quotes, and so does a letter, digit or `(` there. Undetectable: a `"` in a literal's text followed
/// by what may follow a literal (the text `a"&"b` reads as two literals joined, `"a"&"b"`).
fn has_sound_string_literals(formula: &str) -> bool {
    let mut chars = formula.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        // An opening `"`: the literal runs to the next one, which must exist.
        if !chars.by_ref().any(|c| c == '"') {
            return false;
        }
        if chars.clone().next().is_some_and(|next| !" \r\n,)&+-*/^=<>%".contains(next)) {
            return false;
        }
    }
    true
}

/// The parts of an XLS formula's text outside its string literals: splitting at every `"`, the even parts are
/// outside (an empty literal `""` gives an empty odd part; a `""` inside a literal, which calamine never
/// writes, an empty even part). Exact for a text whose literals are sound ([`has_sound_string_literals`]).
fn outside_literals(formula: &str) -> impl Iterator<Item = &str> {
    formula.split('"').step_by(2)
}

/// Characters of a defined name or of an identifier (Excel: letters, digits, `_`, `.`, `\` and `?`).
fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '\\' | '?')
}

/// An XLS workbook's defined names, made ready once for [`uses_a_defined_name`]: a workbook may hold tens of
/// thousands of names (copied sheets carry theirs along), and comparing every identifier of every formula
/// with each of them made reading such a workbook take minutes.
struct DefinedNames {
    /// The names that are identifiers, in lower case.
    identifiers: HashSet<String>,
    /// Whether the built-in name `_FilterDatabase` (the one-character code 0x0D, a CR: every sheet with an
    /// AutoFilter has one) is among them: calamine writes a formula's line breaks as CRs too, so it is looked
    /// for apart from the others ([`uses_the_filter_database`]).
    filter_database: bool,
    /// Every other name (another built-in name, or what a hostile file holds), looked for as it is, all in one
    /// pass over a formula. `Err` when they are too many for that: then every formula is taken as using one.
    others: Result<Option<AhoCorasick>, ()>,
}

impl DefinedNames {
    fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> DefinedNames {
        let mut identifiers = HashSet::new();
        let mut filter_database = false;
        let mut others = HashSet::new();
        for name in names {
            if name.is_empty() {
                continue;
            }
            if name.chars().all(is_name_char) {
                identifiers.insert(name.to_lowercase());
            } else if name == "\r" {
                filter_database = true;
            } else {
                others.insert(name);
            }
        }
        let others =
            if others.is_empty() { Ok(None) } else { AhoCorasick::new(others).map(Some).map_err(|_| ()) };
        DefinedNames { identifiers, filter_database, others }
    }
}

/// Whether an XLS formula, as calamine gives its text (its string literals sound), uses a defined name:
/// calamine writes a name of the workbook as its text (`Rate*C2`), and an external name — an add-in function
/// such as `ISEVEN` in a BIFF8 file, or a name in another workbook — as `[PtgNameX]`. A name that is an
/// identifier is compared with every identifier outside string literals and error literals that is not
/// followed by `(` (`RATE(` is Excel's function, `Rate` the name), case-insensitively as Excel does. An XLS
/// workbook's defined names are not carried over (calamine does not say which sheet a local name belongs to,
/// nor hands over their formulas reliably), so such a formula would show `#NAME?` once Excel recalculated: it
/// is written as its last computed value instead.
fn uses_a_defined_name(formula: &str, names: &DefinedNames) -> bool {
    // A built-in name (`Print_Area`…) is stored as a one-character code that is no identifier.
    let other_name = match &names.others {
        Ok(None) => false,
        Ok(Some(others)) => others.is_match(formula),
        Err(()) => true,
    };
    if other_name || (names.filter_database && uses_the_filter_database(formula)) {
        return true;
    }
    outside_literals(formula).any(|part| {
        if part.contains("[PtgNameX]") {
            return true;
        }
        if names.identifiers.is_empty() {
            return false;
        }
        // Error literals hold name characters that name nothing (`#N/A`, `#NAME?`; calamine knows one more).
        let part = ERROR_LITERALS
            .iter()
            .chain(&["#GETTING_DATA"])
            .fold(part.to_string(), |text, error| text.replace(error, " "));
        let mut rest = part.as_str();
        while let Some(at) = rest.find(is_name_char) {
            let len = rest[at..].find(|c| !is_name_char(c)).map_or(rest.len(), |end| at + end);
            let identifier = &rest[at..len];
            rest = &rest[len..];
            if !rest.starts_with('(') && names.identifiers.contains(&identifier.to_lowercase()) {
                return true;
            }
        }
        false
    })
}

/// Whether an XLS formula, as calamine gives its text (its string literals sound), uses the built-in name
/// `_FilterDatabase`, which calamine writes as its code, a CR. calamine writes a line break of the formula
/// (a `PtgAttrSpace` token) as a CR too, always right before an operand (`A1+\rB1`), so a run of CRs and
/// spaces outside string literals is the name only when no operand follows it (`SUM(\r)`, `\r+1`).
fn uses_the_filter_database(formula: &str) -> bool {
    let mut in_literal = false;
    let mut rest = formula;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '"' => in_literal = !in_literal,
            '\r' if !in_literal => {
                rest = rest.trim_start_matches(['\r', ' ']);
                let operand_follows = rest
                    .starts_with(|c: char| is_name_char(c) || matches!(c, '$' | '"' | '(' | '#' | '[' | '{'));
                if !operand_follows {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// The text of an XLS formula as calamine gives it (its string literals sound, see
/// [`has_sound_string_literals`]), put right outside string literals:
/// * Comparison operators: calamine 0.38 prints the token `ptgGe` (0x0C) as `>` and `ptgGt` (0x0D) as `>=`
///   (MS-XLS 2.5.198: 0x0C is `>=`, 0x0D is `>`), so `IF(C2>1,…)` read as `IF(C2>=1,…)` and Excel,
///   recalculating on open, showed other values. Both are swapped back; `<>` (0x0E), `<` and `<=` are printed
///   right and stay.
/// * Mixed references of a BIFF8 workbook: in a BIFF8 cell reference (`ptgRef`, `ptgArea`) bit 14 of the
///   column field says the column is relative and bit 15 the row, and calamine reads them the other way
///   round, so `C$3` came out as `$C3` and `$C3` as `C$3` — the same cell, but moving the other way when
///   copied, and `SUM(C$2:$C2)` summing another range once copied. The `$` is moved back to the other part
///   ([`swap_mixed_references`]). A BIFF5 workbook's references are read right (and its areas always as
///   absolute), so they stay. References to other sheets never get here ([`names_a_sheet`]).
fn xls_formula_text(formula: &str, version: XlsVersion) -> String {
    let text = put_comparisons_right(formula);
    if version != XlsVersion::Biff8 {
        return text;
    }
    let mut fixed = String::with_capacity(text.len());
    for (index, part) in text.split('"').enumerate() {
        if index > 0 {
            fixed.push('"');
        }
        if index % 2 == 0 { fixed.push_str(&swap_mixed_references(part)) } else { fixed.push_str(part) }
    }
    fixed
}

/// `text` (a part of a formula outside string literals) with the `$` of every mixed cell reference moved to
/// its other part (`C$3` ↔ `$C3`; `$C$3` and `C3` stay). A reference is one to three letters and a row number,
/// each maybe after a `$`, standing alone: not inside a longer name or number, nor followed by `(` (a
/// function such as `LOG10(`). Defined names never hold a `$`, so none is changed.
fn swap_mixed_references(text: &str) -> String {
    let mut fixed = String::with_capacity(text.len());
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let standalone = !previous.is_some_and(|p| is_name_char(p) || p == '$');
        if standalone && let Some(reference) = CellReference::at(rest) {
            if reference.column_absolute == reference.row_absolute {
                fixed.push_str(&rest[..reference.len]);
            } else {
                let dollar = |absolute: bool| if absolute { "$" } else { "" };
                fixed.push_str(dollar(reference.row_absolute));
                fixed.push_str(reference.column);
                fixed.push_str(dollar(reference.column_absolute));
                fixed.push_str(reference.row);
            }
            previous = reference.row.chars().next_back();
            rest = &rest[reference.len..];
            continue;
        }
        fixed.push(c);
        previous = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    fixed
}

/// A cell reference in A1 style at the start of a formula's text, as calamine writes one (see
/// [`swap_mixed_references`]).
struct CellReference<'a> {
    /// Its length in bytes.
    len: usize,
    /// Column letters and row digits.
    column: &'a str,
    row: &'a str,
    /// Which parts have a `$` before them.
    column_absolute: bool,
    row_absolute: bool,
}

impl<'a> CellReference<'a> {
    /// The reference `text` starts with: `$`, one to three letters, `$`, digits (each `$` optional), not
    /// followed by a name character, `$` or `(`.
    fn at(text: &'a str) -> Option<CellReference<'a>> {
        let bytes = text.as_bytes();
        let column_absolute = bytes.first() == Some(&b'$');
        let column_start = usize::from(column_absolute);
        let letters = bytes[column_start..].iter().take_while(|b| b.is_ascii_alphabetic()).count();
        if !(1..=3).contains(&letters) {
            return None;
        }
        let column_end = column_start + letters;
        let row_absolute = bytes.get(column_end) == Some(&b'$');
        let row_start = column_end + usize::from(row_absolute);
        let digits = bytes[row_start..].iter().take_while(|b| b.is_ascii_digit()).count();
        let len = row_start + digits;
        if digits == 0 || text[len..].starts_with(|c: char| is_name_char(c) || c == '$' || c == '(') {
            return None;
        }
        Some(CellReference {
            len,
            column: &text[column_start..column_end],
            row: &text[row_start..len],
            column_absolute,
            row_absolute,
        })
    }
}

/// Comparison operators put right outside string literals (see [`xls_formula_text`]).
fn put_comparisons_right(formula: &str) -> String {
    let mut text = String::with_capacity(formula.len() + 4);
    let mut in_string = false;
    let mut chars = formula.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // An empty literal `""` toggles twice: still outside.
            '"' => in_string = !in_string,
            '>' if !in_string && !text.ends_with('<') => {
                if chars.next_if_eq(&'=').is_some() {
                    text.push('>');
                } else {
                    text.push_str(">=");
                }
                continue;
            }
            _ => {}
        }
        text.push(c);
    }
    text
}

// ---------------------------------------------------------------------------------------------------------
// Writing

/// Number format ids below this are Excel's built-in formats (their codes are not stored in the file).
const FIRST_CUSTOM_FORMAT_ID: u32 = 164;

/// What a date cell's `format` holds for built-in format `id`: the id, not a code. Several built-in date
/// formats display by the reader's locale (id 14 is `3/15/2023` in the US, `15/03/2023` in the UK, and ids
/// 27–36 and 50–58 are East Asian date formats whose codes calamine does not know, giving `General`); writing
/// any code in their place would change how the date shows, or lose that it is a date.
pub fn builtin_format(id: u32) -> String {
    format!("{BUILTIN_FORMAT_MARK}{id}")
}

/// Whether number format `id` (below [`FIRST_CUSTOM_FORMAT_ID`]) is one the file defines itself, given the
/// code calamine reports for it: the file's own definition when it has one, else the built-in code calamine
/// knows (the ECMA-376 list below), else `General`. Files may define their own formats under ids below 164
/// (some generators start at 50): writing such an id back without its definition lost the format (a date
/// came out as a bare number), so a code that differs from the built-in one is kept as a code.
fn defined_by_the_file(id: u32, code: &str) -> bool {
    code != ecma_builtin_format_code(id).unwrap_or("General")
}

/// The codes of the built-in number formats ECMA-376 (18.8.30) lists for every locale; the East Asian ones
/// (27–36, 50–58) vary by locale and have none.
fn ecma_builtin_format_code(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "General",
        1 => "0",
        2 => "0.00",
        3 => "#,##0",
        4 => "#,##0.00",
        9 => "0%",
        10 => "0.00%",
        11 => "0.00E+00",
        12 => "# ?/?",
        13 => "# ??/??",
        14 => "mm-dd-yy",
        15 => "d-mmm-yy",
        16 => "d-mmm",
        17 => "mmm-yy",
        18 => "h:mm AM/PM",
        19 => "h:mm:ss AM/PM",
        20 => "h:mm",
        21 => "h:mm:ss",
        22 => "m/d/yy h:mm",
        37 => "#,##0 ;(#,##0)",
        38 => "#,##0 ;[Red](#,##0)",
        39 => "#,##0.00;(#,##0.00)",
        40 => "#,##0.00;[Red](#,##0.00)",
        41 => r#"_(* #,##0_);_(* (#,##0);_(* "-"_);_(@_)"#,
        42 => r#"_($* #,##0_);_($* (#,##0);_($* "-"_);_(@_)"#,
        43 => r#"_(* #,##0.00_);_(* (#,##0.00);_(* "-"??_);_(@_)"#,
        44 => r#"_($* #,##0.00_);_($* (#,##0.00);_($* "-"??_);_(@_)"#,
        45 => "mm:ss",
        46 => "[h]:mm:ss",
        47 => "mmss.0",
        48 => "##0.0E+0",
        49 => "@",
        _ => return None,
    })
}

/// Starts a [`builtin_format`]; never the start of a real format code.
const BUILTIN_FORMAT_MARK: &str = "\u{0}builtin:";

/// One rust_xlsxwriter format per number format code (or built-in format id).
#[derive(Default)]
struct FormatCache {
    by_code: HashMap<String, CellFormat>,
}

impl FormatCache {
    fn get(&mut self, code: &str) -> &CellFormat {
        // Looked up by `&str` first: the entry API would copy `code` into a new String for every date cell.
        if !self.by_code.contains_key(code) {
            let builtin = code.strip_prefix(BUILTIN_FORMAT_MARK).and_then(|id| id.parse::<u8>().ok());
            let format = match builtin {
                Some(id) => CellFormat::new().set_num_format_index(id),
                None => CellFormat::new().set_num_format(code),
            };
            self.by_code.insert(code.to_string(), format);
        }
        &self.by_code[code]
    }
}

/// `text` cut to Excel's limit of [`MAX_CELL_CHARS`] UTF-16 units, at a character boundary.
fn excel_text(text: &str) -> Cow<'_, str> {
    // Quick exit: a string of at most MAX_CELL_CHARS bytes has at most as many UTF-16 units.
    if text.len() <= MAX_CELL_CHARS {
        return Cow::Borrowed(text);
    }
    let mut units = 0usize;
    for (index, ch) in text.char_indices() {
        units += ch.len_utf16();
        if units > MAX_CELL_CHARS {
            return Cow::Owned(text[..index].to_string());
        }
    }
    Cow::Borrowed(text)
}

fn number_text(value: f64) -> String {
    value.to_string()
}

fn write_cell(
    worksheet: &mut Worksheet,
    row: u32,
    col: u16,
    cell: &Cell,
    formats: &mut FormatCache,
) -> Result<(), rust_xlsxwriter::XlsxError> {
    match cell {
        Cell::Empty => {}
        Cell::Text(text) | Cell::IsoDateTime(text) => {
            worksheet.write_string(row, col, excel_text(text).as_ref())?;
        }
        Cell::Int(n) => {
            worksheet.write_number(row, col, *n as f64)?;
        }
        Cell::Float(f) if f.is_finite() => {
            worksheet.write_number(row, col, *f)?;
        }
        Cell::Float(f) => {
            worksheet.write_string(row, col, number_text(*f))?;
        }
        Cell::Bool(b) => {
            worksheet.write_boolean(row, col, *b)?;
        }
        Cell::DateTime { serial, format } => {
            worksheet.write_number_with_format(row, col, *serial, formats.get(format))?;
        }
        Cell::Error(error) => {
            if ERROR_LITERALS.contains(&error.as_str()) {
                worksheet.write_formula(row, col, Formula::new(error).set_result(error))?;
            } else {
                worksheet.write_string(row, col, excel_text(error).as_ref())?;
            }
        }
        Cell::Formula { formula, cached } => {
            let result = formula_result(cached);
            let formula = exact_formula(formula).set_result(result);
            match cached.as_ref() {
                Cell::DateTime { format, .. } => {
                    worksheet.write_formula_with_format(row, col, formula, formats.get(format))?;
                }
                _ => {
                    worksheet.write_formula(row, col, formula)?;
                }
            }
        }
    }
    Ok(())
}

/// A formula whose text is written exactly as read. `Formula::new` takes one leading `{`, one leading `=`
/// and one trailing `}` off whatever it is given (it expects formulas as typed), which cut an array constant
/// at either end of a formula read from a file (`{1,2,3}` came out as `1,2,3`, `SUM(1)+{1,2}` as
/// `SUM(1)+{1,2`: formulas Excel refuses); wrapped in `{=…}` first, exactly those three come off again.
fn exact_formula(text: &str) -> Formula {
    Formula::new(format!("{{={text}}}"))
}

/// The cached result of a formula as rust_xlsxwriter wants it: a number, `TRUE`/`FALSE`, an error literal
/// or text.
///
/// rust_xlsxwriter writes a result that Rust parses as a number as a number, `NaN` and `inf` included, which
/// XLSX cannot hold (a file other readers may refuse): such a result is left out (Excel computes it again on
/// open). A result's text is written without the `_xHHHH_` escaping cell text gets, so a literal `_x0041_`
/// would read back as `A`: it is escaped here.
fn formula_result(cached: &Cell) -> String {
    let result = match cached {
        Cell::Empty => String::new(),
        Cell::Int(n) => n.to_string(),
        Cell::Float(f) => number_text(*f),
        Cell::DateTime { serial, .. } => number_text(*serial),
        Cell::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        Cell::Text(text) | Cell::IsoDateTime(text) => escape_xml_char_codes(&excel_text(text)),
        Cell::Error(text) => excel_text(text).into_owned(),
        Cell::Formula { cached, .. } => formula_result(cached),
    };
    if result.trim().parse::<f64>().is_ok_and(|number| !number.is_finite()) { String::new() } else { result }
}

/// `text` with every `_xHHHH_` (how XML files spell a character code) escaped as `_x005F_xHHHH_`, so a reader
/// gives the text back as it was.
fn escape_xml_char_codes(text: &str) -> String {
    static CHAR_CODE: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new("_x[0-9A-Fa-f]{4}_").expect("valid pattern"));
    CHAR_CODE.replace_all(text, "_x005F$0").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_shows_a_date_when_it_has_a_date_part_outside_text_and_sections() {
        for code in [
            "yyyy-mm-dd",
            "d-mmm",
            "mmm",
            "[Red]mmm d",
            "mmm hh:mm",
            "dd/mm/yyyy h:mm AM/PM",
            "ge.m.d",
            "aaa",
            "aaaa h:mm",
        ] {
            assert!(shows_a_date(code), "{code}");
        }
        for code in [
            "h:mm",
            "hh:mm:ss",
            "mm:ss",
            "[mm]:ss",
            "[h]:mm",
            "h:mm AM/PM",
            "h:mm A/P",
            "[$-409]h:mm AM/PM;@",
            r#"h "days""#,
            r"h\d",
            "h_d:mm",
            "h*y",
        ] {
            assert!(!shows_a_date(code), "{code}");
        }
        assert!(shows_a_date(&builtin_format(14)) && shows_a_date(&builtin_format(22)));
        assert!(shows_a_date(&builtin_format(57)));
        for id in [18, 19, 20, 21, 32, 33, 45, 46, 47] {
            assert!(!shows_a_date(&builtin_format(id)), "{id}");
        }
    }

    #[test]
    fn a_formula_names_a_sheet_only_with_a_bang_outside_literals_and_error_values() {
        assert!(names_a_sheet("SUM(Beta!$A$1:$A$2)"));
        assert!(names_a_sheet("My Notes!A1+1"));
        assert!(names_a_sheet("Data!#REF!"));
        // calamine's `#REF` for a sheet it cannot name, and a sheet whose name ends like an error literal.
        assert!(names_a_sheet("SUM(#REF!$BTRO$2:$BTRO$2)"));
        assert!(names_a_sheet("#REF!#REF!"));
        assert!(names_a_sheet("Q#NUM!A1*2"));
        assert!(!names_a_sheet("#REF! A1+#N/A"));
        assert!(!names_a_sheet("IF(C2>1,\"a!b\",C2*2)"));
        assert!(!names_a_sheet("IF(ISERROR(A1),#DIV/0!,#NULL!&#VALUE!&#NUM!&#REF!)"));
        assert!(!names_a_sheet("\"say \"\"hi!\"\"\"&A1"));
    }

    #[test]
    fn string_literals_are_sound_when_each_closes_and_an_operand_may_follow() {
        for formula in [r#""a"&A1"#, r#"IF(C2>1,"","x")"#, r#"""&C2"#, "A1+1", r#"LEN("a b") "#, r#""%"%"#] {
            assert!(has_sound_string_literals(formula), "{formula}");
        }
        // calamine's text of `"a""b"`, `"say ""hi"""&C2`, `"""1"`, `"a""""b"` and a call on a literal.
        for formula in [r#""a"b""#, r#""say "hi""&C2"#, r#"""1""#, r#""a""b""#, r#""x"(1)"#, r#""a"1"#] {
            assert!(!has_sound_string_literals(formula), "{formula}");
        }
    }

    #[test]
    fn a_defined_name_is_an_identifier_outside_literals_not_followed_by_a_parenthesis() {
        let names = DefinedNames::new(["Rate", "n", "\u{6}"]);
        for formula in ["Rate*C2", "SUM(RATE)", "1+rate", "User([PtgNameX],C2)", "N+1", "\u{6}"] {
            assert!(uses_a_defined_name(formula, &names), "{formula}");
        }
        for formula in [r#"RATE(10,-100,800)&"Rate""#, "Rates+1", "C2*2", "#N/A", r#""[PtgNameX]""#, "Rate.x"]
        {
            assert!(!uses_a_defined_name(formula, &names), "{formula}");
        }
    }

    #[test]
    fn a_biff8_mixed_reference_gets_its_dollar_on_the_other_part() {
        let biff8 = |formula| xls_formula_text(formula, XlsVersion::Biff8);
        assert_eq!(biff8("$C2*2"), "C$2*2");
        assert_eq!(biff8("SUM($A1:B$2)"), "SUM(A$1:$B2)");
        assert_eq!(biff8("$C$2+C2+$IV65536"), "$C$2+C2+IV$65536");
        assert_eq!(biff8(r#"LOG10(C$2)&"C$2""#), r#"LOG10($C2)&"C$2""#);
        assert_eq!(biff8("ATAN2($A1,1)+ABCD$1+A1B$2"), "ATAN2(A$1,1)+ABCD$1+A1B$2");
        assert_eq!(biff8("IF($C2>=1,1,2)"), "IF(C$2>1,1,2)", "comparisons put right too");
        // calamine reads BIFF5 references right (and its areas as absolute): they stay.
        assert_eq!(xls_formula_text("$C2*2+C$2", XlsVersion::Biff5OrOlder), "$C2*2+C$2");
    }

    #[test]
    fn the_biff_version_is_read_from_the_bof_record_as_calamine_reads_it() {
        assert_eq!(XlsVersion::of_bof(&[0x00, 0x06, 0x05, 0x00]), XlsVersion::Biff8);
        assert_eq!(XlsVersion::of_bof(&[0x00, 0x05, 0x05, 0x00]), XlsVersion::Biff5OrOlder);
        assert_eq!(XlsVersion::of_bof(&[0x00, 0x00, 0x00, 0x10]), XlsVersion::Biff5OrOlder);
        assert_eq!(XlsVersion::of_bof(&[0x00, 0x00, 0x10, 0x00]), XlsVersion::Biff8);
        assert_eq!(XlsVersion::of_bof(&[0x34, 0x12]), XlsVersion::Biff8, "unknown versions as calamine");
    }

    #[test]
    fn only_a_code_that_differs_from_the_built_in_one_is_the_files_own() {
        assert!(!defined_by_the_file(14, "mm-dd-yy"));
        assert!(defined_by_the_file(14, "dd.mm.yyyy"));
        assert!(!defined_by_the_file(57, "General"), "no code known: calamine says General");
        assert!(defined_by_the_file(100, "yyyy-mm-dd"));
        assert!(defined_by_the_file(2, "yyyy-mm-dd"));
    }

    /// Random formula-like text: the characters the XLS text functions look at (`"`, `$`, letters, digits,
    /// operators, `!`, `#`, `(`), and any Unicode scalar value, in runs of any length.
    fn random_formula(rng: &mut fastrand::Rng) -> String {
        const PIECES: &[&str] = &[
            "\"",
            "\"\"",
            "$",
            "$",
            "A",
            "c",
            "XFD",
            "IV",
            "1",
            "65536",
            "9",
            ":",
            "(",
            ")",
            ",",
            "!",
            "#",
            "#REF!",
            "#N/A",
            ">",
            ">=",
            "<",
            "=",
            " ",
            "\r",
            "E",
            "TRUE",
            "R1C1",
            "TAX2023",
            "LOG10(",
            "[PtgNameX]",
            "{PtgArray}",
            ".",
            "_",
            "?",
            "\\",
            "é",
            "€",
            "😀",
            "\u{6}",
            "\u{0}",
            "\u{30A}",
        ];
        let len = rng.usize(0..40);
        let mut text = String::new();
        for _ in 0..len {
            if rng.u8(..) < 40 {
                let c = rng.u32(..=0x10_FFFF);
                text.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
            } else {
                text.push_str(PIECES[rng.usize(..PIECES.len())]);
            }
        }
        text
    }

    /// The XLS formula-text functions never panic on any text (they see calamine's text of hostile files), and
    /// moving the `$` of mixed references twice gives the text back.
    #[test]
    fn xls_formula_text_functions_survive_random_text() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0ff0);
        let names = DefinedNames::new(["rate", "tax2023", "\u{6}", "\r", "a.b", "n", "\"x", "$"]);
        let long = ["\"".repeat(100_000), "$".repeat(100_000), "A$1+".repeat(20_000), "é$".repeat(50_000)];
        let random = (0..20_000).map(|_| random_formula(&mut rng));
        for formula in long.into_iter().chain(random) {
            let swapped = swap_mixed_references(&formula);
            assert_eq!(swap_mixed_references(&swapped), formula, "{formula:?}");
            let _ = has_sound_string_literals(&formula);
            let _ = uses_a_defined_name(&formula, &names);
            let _ = is_undecoded(&formula);
            let _ = names_a_sheet(&formula);
            for version in [XlsVersion::Biff8, XlsVersion::Biff5OrOlder] {
                let _ = xls_formula_text(&formula, version);
            }
            let _ = XlsVersion::of_bof(formula.as_bytes());
        }
    }

    /// `_FilterDatabase`, in the sheets of every workbook with an AutoFilter, is the code 0x0D (a CR), which
    /// calamine also writes for a line break in a formula: only a CR no operand follows is the name.
    #[test]
    fn a_line_break_in_a_formula_is_not_the_filter_database_name() {
        let names = DefinedNames::new(["\r", "Rate"]);
        for formula in ["A1+\rB1", "SUM(\r\r A1:B2)", "IF(A1>1,\r\"x\",\r(2))", "\"a\rb\"&C2", "\r$C$2*2"] {
            assert!(!uses_a_defined_name(formula, &names), "{formula:?}");
        }
        for formula in ["SUM(\r)", "\r+1", "A1*\r", "COUNT(\r,A1)", "A1+\r \r"] {
            assert!(uses_a_defined_name(formula, &names), "{formula:?}");
        }
        assert!(
            !uses_a_defined_name("A1+\rB1", &DefinedNames::new(["Rate"])),
            "no such name in the workbook"
        );
    }

    /// A workbook holding tens of thousands of defined names (copied sheets carry theirs along): each identifier
    /// is one look-up in a set now, where comparing it with every name took about 11 s for 1 000 formulas and
    /// 20 000 names (debug build; measured by hand, not here: speed is for benchmarks, not timed tests). What
    /// this test holds is the result: the last of 20 000 names is found whatever its case, cell references
    /// and function names are no names.
    /// The cells calamine reserves for a DIMENSIONS record, counted as calamine counts them: a first row after
    /// the last wraps around to billions of rows (it used to count as none, and calamine's allocation aborted
    /// the process: the fuzzer's finding).
    #[test]
    fn dimensions_are_counted_as_calamine_counts_them() {
        let biff8 = |first_row: u32, last_row: u32, first_col: u16, last_col: u16| {
            let mut data = Vec::new();
            data.extend_from_slice(&first_row.to_le_bytes());
            data.extend_from_slice(&last_row.to_le_bytes());
            data.extend_from_slice(&first_col.to_le_bytes());
            data.extend_from_slice(&last_col.to_le_bytes());
            data.extend_from_slice(&[0, 0]);
            reserved_by_dimensions(&data)
        };
        assert_eq!(biff8(0, 10, 0, 3), (10, 3));
        assert_eq!(biff8(0, 0, 0, 0), (1, 1));
        // A first column above 0xFF or after the last counts from column 0.
        assert_eq!(biff8(0, 10, 0x100, 3), (10, 3));
        assert_eq!(biff8(0, 10, 5, 3), (10, 3));
        // A first row after the last: calamine's `last - 1 - first + 1` wraps.
        assert_eq!(biff8(0xAAAA_AAAA, 10, 0, 3), (u64::from(10u32.wrapping_sub(0xAAAA_AAAA)), 3));
        // The same first and last column: calamine's count wraps to 0 (it reserves nothing).
        assert_eq!(biff8(0, 10, 3, 3), (10, 0));
        let biff5 = [2u8, 0, 1, 0, 0, 0, 4, 0, 0, 0];
        assert_eq!(reserved_by_dimensions(&biff5), (u64::from(0u32.wrapping_sub(2).wrapping_add(1)), 4));
        assert_eq!(reserved_by_dimensions(&[0; 12]), (0, 0));
    }

    #[test]
    fn many_defined_names_are_found_by_their_identifier() {
        let names: Vec<String> = (0..20_000).map(|i| format!("Name_{i}")).collect();
        let names = DefinedNames::new(names.iter().map(String::as_str));
        for i in 0..5_000 {
            assert!(!uses_a_defined_name(&format!("SUM(A{i}:B{i})*C{i}+D{i}"), &names));
        }
        assert!(uses_a_defined_name("C2*NAME_19999", &names));
        assert!(!uses_a_defined_name("C2*NAME_20000", &names));
        assert!(!uses_a_defined_name("Name_7(C2)", &names));
    }
}
