//! Helpers of the hot-folder tests (`tests/watch.rs`, `tests/hostile_watch.rs`): small CSV inputs, file
//! listings, and a monitor that checks every output the moment it becomes visible in the outbox.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The names of the plain files in `dir` (dot-files only when `hidden`); empty when `dir` cannot be read.
pub fn file_names(dir: &Path, hidden: bool) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeSet::new() };
    entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| hidden || !n.starts_with('.'))
        .collect()
}

/// [`file_names`] without the dot-files.
pub fn visible_file_names(dir: &Path) -> BTreeSet<String> {
    file_names(dir, false)
}

/// A CSV of `count` IPs starting at `198.51.100.<first + 1>`, each row tagged with `tag`, WHOIS empty.
pub fn ip_csv(tag: &str, first: usize, count: usize) -> String {
    let mut text = String::from("\"Scanned Item\",\"Note\",\"WHOIS\"\r\n");
    for i in first..first + count {
        text.push_str(&format!("\"198.51.100.{}\",\"{tag}\",\"\"\r\n", i + 1));
    }
    text
}

/// Watches `outbox` until `stop`: every visible output must be complete (`lines` CSV lines, CRLF-terminated;
/// reports parse as JSON). Returns the violations seen.
pub fn outbox_monitor(
    outbox: PathBuf,
    lines: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut violations = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            for name in visible_file_names(&outbox) {
                let Ok(bytes) = std::fs::read(outbox.join(&name)) else { continue };
                let text = String::from_utf8_lossy(&bytes);
                if name.ends_with(".csv") && (text.lines().count() != lines || !text.ends_with("\r\n")) {
                    violations.push(format!("{name} incomplete: {} lines", text.lines().count()));
                }
                if name.ends_with(".report.json")
                    && serde_json::from_slice::<serde_json::Value>(&bytes).is_err()
                {
                    violations.push(format!("{name} is not complete JSON"));
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        violations
    })
}
