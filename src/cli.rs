//! The command line (SPEC §2): clap parses the raw arguments, [`Plan::resolve`] merges them with `vttl.ini`
//! into a validated plan, and [`run`] carries it out.
//!
//! Exit codes of `enrich`: `0` every file was enriched; `1` at least one file failed (each failure is reported
//! and logged, the others still go through); `2` a critical problem stopped the run (bad configuration, token
//! refused, outbox not writable), with a one-line reason on stderr.
//!
//! Exit codes of `watch`: `0` the inbox was handled (`--once`: every file processed or quarantined in
//! `failed`) or the service stopped cleanly on a signal; `2` a critical problem (same as above); `130`
//! `--once` was interrupted by a signal before the inbox was empty.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::enrich::{EnrichError, Enricher};
use crate::error::CriticalError;

/// Fills the empty SecLytics, WHOIS, Validation, Date First Seen and watch-list cells of VTTL spreadsheets.
#[derive(Debug, Parser)]
#[command(
    name = "vttl-seclytics",
    version,
    about,
    long_about = None,
    after_help = "The API token: `access_token` in [seclytics] of vttl.ini, or the SECLYTICS_ACCESS_TOKEN \
                  environment variable (which wins).\nExit status: 0 done (`watch --once`: also when files went \
                  to `failed`); 1 `enrich`: some files failed (see the outbox's VTTL_Error.log); 2 a critical \
                  problem (bad configuration, token refused, outbox not writable); 130 `watch --once` \
                  interrupted.\nMore detail on stderr: VTTL_LOG=debug."
)]
pub struct RawArgs {
    /// The ini file (default: vttl.ini in the current directory).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Ignore cached answers for this run (answers are still stored in the cache).
    #[arg(long, global = true)]
    pub refresh: bool,
    #[command(subcommand)]
    pub command: RawCommand,
}

#[derive(Debug, Subcommand)]
pub enum RawCommand {
    /// Enrich the given workbooks into the outbox; the inputs stay where they are, unchanged.
    Enrich {
        /// CSV, XLSX, XLSM or XLS files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Where to write (default: `[watch] outbox` of the ini).
        #[arg(long, value_name = "DIR")]
        outbox: Option<PathBuf>,
    },
    /// The main job: watch the inbox and enrich every spreadsheet that lands there.
    ///
    /// Every spreadsheet that lands in `[watch] inbox` is enriched into the outbox, then the input is moved to
    /// `processed` (or to `failed`, with the reason). Runs until Ctrl-C/SIGTERM unless `--once` is given.
    Watch {
        /// Handle everything in the inbox, then exit.
        #[arg(long)]
        once: bool,
    },
}

/// What to do, with the configuration resolved and validated.
#[derive(Debug)]
pub enum Plan {
    Enrich { config: Config, files: Vec<PathBuf>, outbox: PathBuf, refresh: bool },
    Watch { config: Config, once: bool, refresh: bool },
}

impl Plan {
    /// Merges the arguments with the ini file; command-line flags win.
    pub fn resolve(args: RawArgs) -> Result<Plan, CriticalError> {
        let (path, allow_missing) = match &args.config {
            Some(path) => (path.clone(), false),
            None => (PathBuf::from("vttl.ini"), true),
        };
        let config = Config::load(&path, allow_missing)?;
        match args.command {
            RawCommand::Enrich { files, outbox } => {
                let files = if cfg!(windows) { expand_wildcards(files) } else { files };
                let outbox = outbox.unwrap_or_else(|| config.watch.outbox.clone());
                Ok(Plan::Enrich { config, files, outbox, refresh: args.refresh })
            }
            RawCommand::Watch { once } => Ok(Plan::Watch { config, once, refresh: args.refresh }),
        }
    }
}

/// Windows shells hand `*.csv` to a program as it is (cmd and PowerShell leave wildcards to the program): an
/// argument whose file name holds `*` or `?` — characters no Windows file name can hold — becomes the files it
/// matches in its folder (case-insensitively, in name order); one that matches nothing stays as given, to fail
/// with "cannot read" under its own name. Elsewhere the shell expands wildcards, and `*` is a legal character
/// of a file name, so this is used on Windows only.
fn expand_wildcards(files: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut expanded = Vec::with_capacity(files.len());
    for file in files {
        let Some(pattern) = file.file_name().and_then(|n| n.to_str()).filter(|n| n.contains(['*', '?']))
        else {
            expanded.push(file);
            continue;
        };
        let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let matcher = globset::GlobBuilder::new(pattern)
            .case_insensitive(true)
            .literal_separator(true)
            .build()
            .map(|glob| glob.compile_matcher());
        let mut found: Vec<PathBuf> = match (matcher, std::fs::read_dir(folder)) {
            (Ok(matcher), Ok(entries)) => entries
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
                .filter(|entry| entry.file_name().to_str().is_some_and(|name| matcher.is_match(name)))
                .map(|entry| file.with_file_name(entry.file_name()))
                .collect(),
            _ => Vec::new(),
        };
        if found.is_empty() {
            expanded.push(file);
        } else {
            found.sort();
            expanded.extend(found);
        }
    }
    expanded
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    init_logging();
    raise_open_file_limit();
    let args = RawArgs::parse();
    match Plan::resolve(args).and_then(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vttl-seclytics: {e}");
            ExitCode::from(2)
        }
    }
}

/// Each sheet of an XLSX being written keeps a temporary file open until the workbook is packed
/// (rust_xlsxwriter's constant-memory mode), so a workbook of a thousand sheets needs more open files than the
/// soft limit of 1 024 many Unix systems start a process with. The soft limit is raised to the hard one (as
/// Go's runtime does for every program); where that is not allowed, nothing changes and such a workbook fails
/// alone with "Too many open files". Windows has no such limit on the handles Rust opens.
fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
        unsafe {
            let mut limit: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max {
                return;
            }
            // macOS refuses a soft limit above OPEN_MAX (10 240) even when the hard limit is unlimited.
            #[cfg(target_os = "macos")]
            let wanted = limit.rlim_max.min(10_240);
            #[cfg(not(target_os = "macos"))]
            let wanted = limit.rlim_max;
            let raised = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::debug!(from = limit.rlim_cur, to = wanted, "open-file limit raised");
            }
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VTTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colour_on_stderr())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Colour codes only for a person at a terminal: a log redirected to a file, a pipe or a service's log gets
/// plain text, and `NO_COLOR` (any non-empty value, no-color.org) turns colour off everywhere.
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    !no_color && std::io::stderr().is_terminal() && console_takes_colour_codes()
}

/// Windows consoles show colour codes only with virtual-terminal processing on, which older consoles (cmd.exe
/// on Windows 10, Server 2016–2022) do not turn on by themselves: it is asked for, and without it the log
/// stays plain instead of showing `←[32m`. Elsewhere terminals take the codes.
fn console_takes_colour_codes() -> bool {
    #[cfg(windows)]
    {
        use windows_sys::Win32::System::Console::{
            ENABLE_VIRTUAL_TERMINAL_PROCESSING, GetConsoleMode, GetStdHandle, STD_ERROR_HANDLE,
            SetConsoleMode,
        };
        // SAFETY: plain console calls on our own standard-error handle; `mode` lives across them.
        unsafe {
            let handle = GetStdHandle(STD_ERROR_HANDLE);
            let mut mode = 0;
            if GetConsoleMode(handle, &mut mode) == 0 {
                return false;
            }
            mode & ENABLE_VIRTUAL_TERMINAL_PROCESSING != 0
                || SetConsoleMode(handle, mode | ENABLE_VIRTUAL_TERMINAL_PROCESSING) != 0
        }
    }
    #[cfg(not(windows))]
    true
}

/// Carries out a plan. Per-file failures give exit code 1; critical errors are returned.
pub fn run(plan: Plan) -> Result<ExitCode, CriticalError> {
    match plan {
        Plan::Enrich { config, files, outbox, refresh } => {
            let secret = config.seclytics.access_token.clone();
            let (enricher, warnings) = Enricher::new(config, refresh)?;
            for warning in &warnings {
                tracing::warn!("{warning}");
            }
            // Temporary files of earlier `enrich` runs on this machine that were killed mid-run.
            crate::watch::claims::remove_temp_files_of_dead_runs(&outbox);
            let hooks = crate::enrich::OneShotHooks { owner: crate::watch::claims::one_shot_owner() };
            let mut failed = 0usize;
            for file in &files {
                match enricher.enrich_file_with(file, &outbox, &hooks) {
                    Ok(_) => {}
                    Err(EnrichError::Critical(e)) => {
                        // Whoever reads the outbox's error log learns why the run stopped (SPEC §7, §8).
                        crate::outbox::log_critical_error(&outbox, &secret.redact(&e.to_string()), &e);
                        return Err(e);
                    }
                    Err(EnrichError::File { step, error }) => {
                        failed += 1;
                        // No control character from the file (a sheet name, say) may forge a log line.
                        let message: String = format!("{} failed at step `{step}`: {error}", file.display())
                            .chars()
                            .map(|c| if c.is_control() { ' ' } else { c })
                            .collect();
                        tracing::error!("{message}");
                        if crate::outbox::ensure_writable(&outbox).is_ok() {
                            crate::outbox::append_error_log(&outbox, &message);
                        }
                    }
                }
            }
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Plan::Watch { config, once, refresh } => {
            match crate::watch::run(config, crate::watch::WatchOptions { once, refresh })? {
                crate::watch::WatchEnd::Finished(counts) => {
                    tracing::info!(
                        "watch finished: {} processed, {} failed, {} recovered",
                        counts.processed,
                        counts.failed,
                        counts.recovered
                    );
                    Ok(ExitCode::SUCCESS)
                }
                crate::watch::WatchEnd::Interrupted(counts) => {
                    eprintln!(
                        "vttl-seclytics: interrupted before the inbox was empty ({} processed, {} failed)",
                        counts.processed, counts.failed
                    );
                    Ok(ExitCode::from(130))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_become_the_files_they_match_and_the_rest_stays_as_given() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.csv", "A.CSV", "c.xlsx", "notes.txt"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        std::fs::create_dir(dir.path().join("folder.csv")).unwrap();
        let given = vec![
            dir.path().join("*.csv"),
            dir.path().join("?.xlsx"),
            dir.path().join("plain.csv"),
            dir.path().join("*.json"),
        ];
        let expanded = expand_wildcards(given);
        let expected = vec![
            dir.path().join("A.CSV"),
            dir.path().join("b.csv"),
            dir.path().join("c.xlsx"),
            dir.path().join("plain.csv"),
            dir.path().join("*.json"),
        ];
        assert_eq!(expanded, expected);
    }
}
