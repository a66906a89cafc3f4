//! XLSX (and XLS) workbooks: read with calamine into the typed model, written with rust_xlsxwriter.
