//! VTTL CSV files, read and written losslessly.
