//! Lossless reading and writing of VTTL workbooks (SPEC §3).
//!
//! Two very different formats share one idea: the program only ever *adds* values (into empty cells, into
//! appended header cells, into appended rows). Everything it did not add must come out as it came in:
//!
//! * [`csv`] keeps the raw bytes of every record and field, so an untouched row is copied byte for byte and a
//!   filled row changes only the bytes of the filled fields. It streams: a file is read record by record, twice
//!   (once to collect indicators, once to write), and never held whole in memory.
//! * [`xlsx`] reads every sheet with calamine into the typed [`Workbook`] model below and writes it back with
//!   rust_xlsxwriter, keeping each cell's type (text, number, boolean, date/time with its number format,
//!   formula with its cached value, error), sheet order and names, the frozen header row and column widths.
//!
//! Both report problems as [`WorkbookError`], which names the file and says what is wrong with it.

pub mod csv;
pub mod xlsx;

use std::path::{Path, PathBuf};

/// Largest input file we open at all (1 GiB). Anything bigger is refused before any allocation.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Largest number of cells (rows × columns of the declared dimensions) one XLSX sheet may have.
pub const MAX_SHEET_CELLS: u64 = 50_000_000;
/// Excel's own limits.
pub const MAX_ROWS: u32 = 1_048_576;
pub const MAX_COLS: u32 = 16_384;
/// Excel's limit on the characters of one text cell.
pub const MAX_CELL_CHARS: usize = 32_767;

/// The workbook formats we read. XLS is read and written back as XLSX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Xlsx,
    Xls,
}

impl Format {
    /// Format from the file extension (case-insensitive), `None` for anything else.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "xlsx" | "xlsm" => Some(Format::Xlsx),
            "xls" => Some(Format::Xls),
            _ => None,
        }
    }

    /// The file name the output gets: the same name, except that an XLS input becomes `<stem>.xlsx`.
    pub fn output_file_name(path: &Path) -> Option<std::ffi::OsString> {
        let name = path.file_name()?;
        match Format::from_path(path)? {
            Format::Xls => {
                let mut stem = path.file_stem()?.to_os_string();
                stem.push(".xlsx");
                Some(stem)
            }
            _ => Some(name.to_os_string()),
        }
    }
}

/// A cell value with its spreadsheet type. CSV cells are always [`Cell::Text`] (or `Empty`).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Empty,
    Text(String),
    /// A whole number (XLS integer cells; written back as a number).
    Int(i64),
    Float(f64),
    Bool(bool),
    /// An Excel date/time serial (days since the workbook epoch, fraction = time of day) with the number
    /// format that displays it, e.g. `yyyy-mm-dd hh:mm:ss`.
    DateTime {
        serial: f64,
        /// Boxed text, not `String`: keeps [`Cell`] at 32 bytes.
        format: Box<str>,
    },
    /// An ISO 8601 date/time or duration stored as text in the file (`DateTimeIso`/`DurationIso`).
    IsoDateTime(String),
    /// An error value such as `#N/A` or `#DIV/0!`.
    Error(String),
    /// A formula (without the leading `=`) and the value Excel cached for it.
    Formula {
        /// Boxed text, not `String`: keeps [`Cell`] at 32 bytes.
        formula: Box<str>,
        cached: Box<Cell>,
    },
}

impl Cell {
    /// True when the cell counts as empty for the fill rule: no value, or text that is blank after trimming.
    /// A formula is never empty, whatever it evaluates to.
    pub fn is_blank(&self) -> bool {
        match self {
            Cell::Empty => true,
            Cell::Text(text) => text.trim().is_empty(),
            _ => false,
        }
    }

    /// True for a number, a date/time serial, or a formula whose cached value is one of those.
    pub fn is_number(&self) -> bool {
        match self {
            Cell::Int(_) | Cell::Float(_) | Cell::DateTime { .. } => true,
            Cell::Formula { cached, .. } => cached.is_number(),
            _ => false,
        }
    }

    /// The value as text, for reading headers and indicators (numbers in their shortest form).
    pub fn to_text(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            Cell::Empty => Cow::Borrowed(""),
            Cell::Text(text) | Cell::IsoDateTime(text) | Cell::Error(text) => Cow::Borrowed(text),
            Cell::Int(n) => Cow::Owned(n.to_string()),
            Cell::Float(f) => Cow::Owned(f.to_string()),
            Cell::Bool(b) => Cow::Borrowed(if *b { "TRUE" } else { "FALSE" }),
            Cell::DateTime { serial, .. } => Cow::Owned(serial.to_string()),
            Cell::Formula { cached, .. } => Cow::Owned(cached.to_text().into_owned()),
        }
    }
}

/// One worksheet: its name, its rows (row 0 is row 1 of the sheet, the header of a VTTL table) and the
/// layout details we carry over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sheet {
    pub name: String,
    /// Rows from row 1 down; each row from column A. Rows may have different lengths: missing trailing cells
    /// are empty.
    pub rows: Vec<Vec<Cell>>,
    /// Frozen panes as (rows, columns) above/left of the split, when the file had them.
    pub freeze: Option<(u32, u16)>,
    /// Explicit column widths (0-based column, width in Excel character units).
    pub column_widths: Vec<(u16, f64)>,
    /// Whether the sheet shows as a tab (XLSX and XLS; CSV sheets are always visible).
    pub visibility: Visibility,
}

/// Whether a sheet shows as a tab in Excel. A hidden sheet can be shown again from Excel's menus, a very hidden
/// one only from VBA — a workbook's author uses it to keep data out of sight, so it is kept as it was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Visibility {
    #[default]
    Visible,
    Hidden,
    VeryHidden,
}

impl Sheet {
    /// The cell at (row, col), `Empty` when outside the stored rows.
    pub fn cell(&self, row: usize, col: usize) -> &Cell {
        static EMPTY: Cell = Cell::Empty;
        self.rows.get(row).and_then(|r| r.get(col)).unwrap_or(&EMPTY)
    }

    /// Writes a value, padding the row (only that row) with empty cells when it is shorter.
    pub fn set(&mut self, row: usize, col: usize, value: Cell) {
        if self.rows.len() <= row {
            self.rows.resize_with(row + 1, Vec::new);
        }
        let cells = &mut self.rows[row];
        if cells.len() <= col {
            cells.resize(col + 1, Cell::Empty);
        }
        cells[col] = value;
    }

    /// Appends a row at the end of the sheet.
    pub fn push_row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }
}

/// A whole workbook: every sheet, in order, and the names its formulas may use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workbook {
    pub sheets: Vec<Sheet>,
    /// The names defined in an XLSX workbook (Excel's Name Manager), in the file's order.
    pub defined_names: Vec<DefinedName>,
}

/// A name defined in a workbook (`TaxRate` → `Sheet1!$B$1`), which formulas use in place of a reference.
#[derive(Debug, Clone, PartialEq)]
pub struct DefinedName {
    pub name: String,
    /// What it stands for: a reference, a constant or a formula, without a leading `=`.
    pub formula: String,
    /// The sheet (index into [`Workbook::sheets`]) it belongs to, for a name local to one sheet.
    pub sheet: Option<usize>,
}

/// What can be wrong with an input or output workbook. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum WorkbookError {
    #[error("{path}: not a VTTL spreadsheet (no sheet has a `Scanned Item` or `Hash` header in row 1)")]
    NotVttl { path: PathBuf },
    #[error("{path}: corrupt or unreadable workbook: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: bad text encoding: {reason}")]
    Encoding { path: PathBuf, reason: String },
    #[error("{path}: too large: {reason}")]
    TooLarge { path: PathBuf, reason: String },
    #[error("{path}: unsupported file type (expected .csv, .xlsx, .xlsm or .xls)")]
    Unsupported { path: PathBuf },
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl WorkbookError {
    pub(crate) fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        WorkbookError::Io { path: path.to_path_buf(), action, source }
    }

    /// A short machine-readable name of the kind of problem, for reports and error files.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkbookError::NotVttl { .. } => "not_vttl",
            WorkbookError::Corrupt { .. } => "corrupt",
            WorkbookError::Encoding { .. } => "encoding",
            WorkbookError::TooLarge { .. } => "too_large",
            WorkbookError::Unsupported { .. } => "unsupported",
            WorkbookError::Io { .. } => "io",
        }
    }
}

/// Checks that `path` is a regular file no larger than [`MAX_FILE_BYTES`]; returns its size.
pub fn check_input_file(path: &Path) -> Result<u64, WorkbookError> {
    let meta = std::fs::metadata(path).map_err(|e| WorkbookError::io(path, "read", e))?;
    if meta.is_dir() {
        return Err(folder_given(path));
    }
    if !meta.is_file() {
        return Err(WorkbookError::Corrupt { path: path.to_path_buf(), reason: "not a regular file".into() });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(WorkbookError::TooLarge {
            path: path.to_path_buf(),
            reason: format!("{} bytes; the limit is {} bytes", meta.len(), MAX_FILE_BYTES),
        });
    }
    Ok(meta.len())
}

/// A folder named where a workbook was expected (`enrich books` for `enrich books/*.csv`).
pub fn folder_given(path: &Path) -> WorkbookError {
    WorkbookError::Corrupt {
        path: path.to_path_buf(),
        reason: format!(
            "a folder, not a workbook: name the files in it (e.g. `{}`)",
            path.join("*.csv").display()
        ),
    }
}

/// Decodes a small text file of ours or VTTL's (ini, watch lists, sinkhole data): by its byte-order mark
/// (UTF-8, UTF-16LE/BE), else UTF-8 when the bytes are valid UTF-8, else Windows-1252 (VTTL's "ANSI").
pub fn decode_text_file(bytes: &[u8]) -> String {
    if let Some((encoding, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
        let (text, _had_errors) = encoding.decode_without_bom_handling(&bytes[bom_len..]);
        return text.into_owned();
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes).0.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::Cell;

    /// A workbook holds millions of cells: the rare long variants keep their text boxed so a cell stays as
    /// small as calamine's own (measured on a 100 000 × 43 workbook: peak memory 330 → 304 MiB from 40 bytes).
    #[test]
    fn a_cell_is_at_most_32_bytes() {
        assert!(std::mem::size_of::<Cell>() <= 32, "{} bytes", std::mem::size_of::<Cell>());
    }
}
