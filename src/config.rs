//! `vttl.ini` and the command line, resolved into one validated [`Config`] (SPEC §2).
//!
//! The file is VTTL's own INI format. VTTL's sections (`[main]`, `[vendor]`, `[VirusTotal]`, …) carry many keys
//! we do not use: we read the handful we need and ignore the rest, so an analyst's full VTTL `vttl.ini` works
//! as it is. Our own sections (`[seclytics]`, `[watch]`, `[watchlists]`) are strict: an unknown key or a bad
//! value is an error naming the key and the file. Section and key names match case-insensitively and the
//! first occurrence wins, as in VTTL. Relative paths resolve against the folder of the ini file.
//!
//! The access token is held in a [`Secret`], whose `Debug` and `Display` never show it.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable that overrides `[seclytics] access_token`.
pub const TOKEN_ENV: &str = "SECLYTICS_ACCESS_TOKEN";

/// A configuration problem: always names the file, and the key when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid INI: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("config file {path}: unknown key `{key}` in [{section}]")]
    UnknownKey { path: PathBuf, section: String, key: String },
    #[error(
        "config file {}: [{}] {} = `{}` is invalid: {}",
        .0.path.display(), .0.section, .0.key, shown_value(&.0.value), .0.reason
    )]
    Invalid(Box<InvalidSetting>),
}

/// A value as an error shows it: as written (a Windows folder keeps its single backslashes), with control
/// characters escaped so none reaches the terminal.
fn shown_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// What [`ConfigError::Invalid`] says (boxed: five owned fields would make every `Result` carrying a config
/// error large, and with Windows' 32-byte `PathBuf` past clippy's `result_large_err` limit).
#[derive(Debug)]
pub struct InvalidSetting {
    pub path: PathBuf,
    pub section: String,
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// A value that must never be printed: the API token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call this only where it goes into a request.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces every occurrence of the secret in `text` with `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        if self.0.is_empty() { text.to_string() } else { text.replace(&self.0, "[redacted]") }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(empty)" } else { "Secret([redacted])" })
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How the token is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `Authorization: Bearer <token>`
    Header,
    /// `?access_token=<token>` (VTTL's way)
    Query,
}

/// `[seclytics]`: the API client.
#[derive(Debug, Clone)]
pub struct SeclyticsSettings {
    pub base_url: String,
    pub access_token: Secret,
    pub auth: AuthMode,
    /// When set, answers come from recorded bodies under this folder instead of HTTP.
    pub offline_dir: Option<PathBuf>,
    pub requests_per_minute: u32,
    pub concurrency: usize,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Connection timeout (`connect_timeout_secs`, default 10 s, never more than `timeout`).
    pub connect_timeout: Duration,
    pub max_retries: u32,
    /// SQLite cache file; `None` disables the cache.
    pub cache: Option<PathBuf>,
    pub cache_ttl: Duration,
    /// Largest response body accepted (`max_body_bytes`, default 16 MiB).
    pub max_body_bytes: usize,
    /// DNS server for reverse lookups (`dns_server`, `host:port`); `None` = the system's resolvers.
    pub dns_server: Option<std::net::SocketAddr>,
    /// Time allowed for one reverse lookup (`dns_timeout_ms`, default 2000).
    pub dns_timeout: Duration,
}

impl Default for SeclyticsSettings {
    fn default() -> Self {
        SeclyticsSettings {
            base_url: "https://api.seclytics.com".into(),
            access_token: Secret::default(),
            auth: AuthMode::Header,
            offline_dir: None,
            requests_per_minute: 120,
            concurrency: 4,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_retries: 4,
            cache: Some(PathBuf::from("seclytics-cache.sqlite")),
            cache_ttl: Duration::from_secs(24 * 3600),
            max_body_bytes: 16 << 20,
            dns_server: None,
            dns_timeout: Duration::from_millis(2000),
        }
    }
}

/// `[watch]`: the hot folder.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub processed: PathBuf,
    pub failed: PathBuf,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub settle: Duration,
    /// `None`: OS file events; `Some(d)`: poll every `d`.
    pub poll: Option<Duration>,
    /// Full rescan of the inbox as a safety net against lost events (`rescan_secs`, default 30).
    pub rescan: Duration,
    /// A claim folder whose lease has not changed for this long (our own monotonic clock) belongs to a dead
    /// instance and is recovered (`claim_stale_secs`, default 120).
    pub claim_stale: Duration,
    /// On Ctrl-C/SIGTERM, how long the current workbook may take to finish before it is handed back
    /// (`shutdown_grace_secs`, default 30).
    pub shutdown_grace: Duration,
    /// After a critical error (token refused, outbox not writable) the service waits this long before it
    /// tries again (`critical_retry_secs`, default 300).
    pub critical_retry: Duration,
}

/// `[vendor]` switches for the Seclytic log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSwitches {
    pub ips: bool,
    pub hashes: bool,
    pub urls: bool,
    pub reference_urls: bool,
}

/// Everything the program needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The ini file this came from (may not exist: then every default applies).
    pub source: PathBuf,
    pub seclytics: SeclyticsSettings,
    pub watch: WatchSettings,
    /// Folder with `KWordwatchlist.txt`, `URLwatchlist.txt`, `IPDwatchlist.txt`, `DNwatchlist.txt`.
    pub watchlists_dir: PathBuf,
    /// Sinkhole data file (`[watchlists] sinkholes`, default `<dir>/sinkholes.txt`).
    pub sinkholes_file: PathBuf,
    pub logs: LogSwitches,
    /// `[VirusTotal] UseRegexForURL`
    pub url_watchlist_regex: bool,
    /// `[main] reverseDNS`
    pub reverse_dns: bool,
}

const SECLYTICS_KEYS: &[&str] = &[
    "base_url",
    "access_token",
    "auth",
    "offline_dir",
    "requests_per_minute",
    "concurrency",
    "timeout_secs",
    "connect_timeout_secs",
    "max_retries",
    "cache",
    "cache_ttl_hours",
    "max_body_bytes",
    "dns_server",
    "dns_timeout_ms",
];
const WATCH_KEYS: &[&str] = &[
    "inbox",
    "outbox",
    "processed",
    "failed",
    "include",
    "exclude",
    "settle_ms",
    "poll_ms",
    "rescan_secs",
    "claim_stale_secs",
    "shutdown_grace_secs",
    "critical_retry_secs",
];
const WATCHLIST_KEYS: &[&str] = &["dir", "sinkholes"];

/// The INI file as (section, key, value) triples, names matched case-insensitively, first occurrence wins.
struct IniFile {
    path: PathBuf,
    entries: Vec<(String, String, String)>,
}

impl IniFile {
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(s, k, _)| s.eq_ignore_ascii_case(section) && k.eq_ignore_ascii_case(key))
            .map(|(_, _, v)| v.as_str())
    }

    /// A non-empty value (VTTL: an empty value keeps the default).
    fn value(&self, section: &str, key: &str) -> Option<&str> {
        self.get(section, key).map(str::trim).filter(|v| !v.is_empty())
    }

    fn invalid(&self, section: &str, key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(Box::new(InvalidSetting {
            path: self.path.clone(),
            section: section.into(),
            key: key.into(),
            value: value.into(),
            reason: reason.into(),
        }))
    }

    fn check_known(&self, section: &str, known: &[&str]) -> Result<(), ConfigError> {
        // A key given twice: the first wins (as in VTTL), so a setting an analyst added lower down to change it
        // does nothing — said in a warning.
        let mut seen: Vec<String> = Vec::new();
        for (s, k, _) in &self.entries {
            if s.eq_ignore_ascii_case(section) && known.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                let key = k.to_ascii_lowercase();
                if seen.contains(&key) {
                    tracing::warn!(
                        "{}: `{key}` is set more than once in [{section}]; the first one is used",
                        self.path.display()
                    );
                } else {
                    seen.push(key);
                }
            }
        }
        for (s, k, _) in &self.entries {
            if s.eq_ignore_ascii_case(section) && !known.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                // A key read over several lines (a line without `=` and those after it) may hold the token in any
                // of them, the first too (`access_token =` with the token wrapped onto the next line): none of its
                // text is shown then. A key on one line is shown (cut, and with its controls escaped).
                if k.contains(['\n', '\r']) {
                    return Err(ConfigError::Syntax {
                        path: self.path.clone(),
                        reason: format!(
                            "a line in [{section}] has no `=` (its text is not shown: it may hold the access token)"
                        ),
                    });
                }
                // One line, but perhaps still `access_token SECRET` (the `=` missing, the token ending in `=`):
                // only the first word is shown.
                let first_word: String =
                    k.split_whitespace().next().unwrap_or_default().chars().take(40).collect();
                let mut key = first_word.escape_debug().to_string();
                if k.trim() != first_word {
                    key.push_str("…` (the rest of the line is not shown) `");
                }
                return Err(ConfigError::UnknownKey {
                    path: self.path.clone(),
                    section: section.into(),
                    key,
                });
            }
        }
        Ok(())
    }

    /// A key of one of our sections found in another section (or above the first one) is ignored there — a
    /// misspelled `[seclytic]` would lose `offline_dir` and send every lookup to the live API: each such key is
    /// named in a warning.
    fn warn_about_misplaced_keys(&self) {
        for (section, key, _) in &self.entries {
            if STRICT_SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section)) {
                continue;
            }
            let owner =
                [("seclytics", SECLYTICS_KEYS), ("watch", WATCH_KEYS), ("watchlists", WATCHLIST_KEYS)]
                    .into_iter()
                    .find(|(_, keys)| keys.iter().any(|k| k.eq_ignore_ascii_case(key)));
            // `dir` is too common a word in other programs' sections to be a sign of anything.
            if let Some((owner, _)) = owner.filter(|_| !key.eq_ignore_ascii_case("dir")) {
                let place = if section.is_empty() {
                    "above the first section".to_string()
                } else {
                    format!("in [{section}]")
                };
                tracing::warn!(
                    "{}: `{key}` {place} is ignored: it is read in [{owner}] (a misspelled section name?)",
                    self.path.display()
                );
            }
        }
    }

    fn bool(&self, section: &str, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.value(section, key) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(self.invalid(section, key, v, "expected True or False")),
        }
    }

    fn number<T>(&self, section: &str, key: &str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        match self.value(section, key) {
            None => Ok(default),
            Some(v) => match v.parse::<T>() {
                Ok(n) if n >= min && n <= max => Ok(n),
                Ok(_) => Err(self.invalid(section, key, v, format!("must be between {min} and {max}"))),
                Err(_)
                    if v.trim_start_matches(['+', '-']).bytes().all(|b| b.is_ascii_digit())
                        && !v.is_empty() =>
                {
                    Err(self.invalid(section, key, v, format!("must be between {min} and {max}")))
                }
                Err(_) => Err(self.invalid(section, key, v, "expected a whole number")),
            },
        }
    }

    /// A comma-separated list; empty (or only commas) means the default, as for every other key — an empty
    /// `include` would otherwise silently take no file at all.
    fn list(&self, section: &str, key: &str, default: &str) -> Vec<String> {
        let split = |raw: &str| -> Vec<String> {
            raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
        };
        let given = self.get(section, key).map(split).unwrap_or_default();
        if given.is_empty() { split(default) } else { given }
    }
}

/// The sections whose every key we read and check; the others are VTTL's (or anyone's), read only for
/// `reverseDNS` and the Seclytic log switches.
const STRICT_SECTIONS: [&str; 3] = ["seclytics", "watch", "watchlists"];

/// VTTL reads its ini line by line and skips a line without `=` (a heading or a note an analyst typed). The
/// ini parser instead reads such a line together with the lines after it, up to the next `=`, as one key: the
/// setting that follows (`reverseDNS = False`, a log switch) or a whole `[section]` header would silently
/// vanish. So, before parsing, such lines are emptied (line numbers stay) outside our own sections, as VTTL
/// skips them, and refused inside them, naming the line but not its text — it may hold the access token.
fn skip_lines_without_equals(text: &str) -> Result<String, String> {
    let mut section = String::new();
    let mut kept = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim();
        let bare = !trimmed.is_empty()
            && !trimmed.starts_with('[')
            && !trimmed.starts_with(';')
            && !trimmed.starts_with('#')
            && !trimmed.contains(['=', ':']);
        if trimmed.starts_with('[') {
            section =
                trimmed.trim_start_matches('[').split(']').next().unwrap_or_default().trim().to_string();
        }
        if !bare {
            kept.push_str(line);
        } else if STRICT_SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(&section)) {
            return Err(format!(
                "line {} in [{section}] has no `=` (its text is not shown: it may hold the access token)",
                index + 1
            ));
        } else {
            kept.push_str(&line[line.trim_end_matches(['\r', '\n']).len()..]);
        }
    }
    Ok(kept)
}

fn read_ini(path: &Path) -> Result<IniFile, ConfigError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return Err(ConfigError::Read { path: path.to_path_buf(), source: e }),
    };
    let text = crate::workbook::decode_text_file(&bytes);
    // The parser reads a `\` at the very end of a line as "continued on the next line" (whatever the escape
    // option), so a Windows folder ending in `\` in a file with LF line ends would take in the next line — a
    // `[section]` header too. A space after it keeps the line whole (values are trimmed, so it changes nothing).
    let text = text.replace("\\\n", "\\ \n");
    // The parser knows comments only at the start of a line; an indented one (valid for Python's
    // configparser, which VTTL uses) would be read as a key, taking in the lines after it up to the next `=`
    // — a `[section]` header too. Comment lines become empty lines (so line numbers stay the same).
    let text: String = text
        .split_inclusive('\n')
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with(';') || trimmed.starts_with('#') {
                if line.ends_with("\r\n") {
                    "\r\n"
                } else if line.ends_with('\n') {
                    "\n"
                } else {
                    ""
                }
            } else {
                line
            }
        })
        .collect();
    let text = skip_lines_without_equals(&text)
        .map_err(|reason| ConfigError::Syntax { path: path.to_path_buf(), reason })?;
    let options = ini::ParseOption { enabled_escape: false, enabled_quote: false, ..Default::default() };
    let ini = ini::Ini::load_from_str_opt(&text, options)
        .map_err(|e| ConfigError::Syntax { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut entries = Vec::new();
    for (section, props) in ini.iter() {
        let section = section.unwrap_or("").trim().to_string();
        for (key, value) in props.iter() {
            entries.push((section.clone(), key.trim().to_string(), value.to_string()));
        }
    }
    Ok(IniFile { path: path.to_path_buf(), entries })
}

impl Config {
    /// Loads `path`. A missing file is an error unless `allow_missing` (the default `vttl.ini` may be absent:
    /// then every default applies, relative to the current directory).
    pub fn load(path: &Path, allow_missing: bool) -> Result<Config, ConfigError> {
        let ini = if allow_missing && !path.exists() {
            // Started from the wrong folder, the program would go on with every default (live API, folders
            // and cache made here) without a word.
            let here = std::env::current_dir().unwrap_or_default();
            tracing::warn!(
                "no {} in {}: every setting takes its default (folders and cache relative to it); use --config \
                 to name the file",
                path.display(),
                here.display()
            );
            IniFile { path: path.to_path_buf(), entries: Vec::new() }
        } else {
            read_ini(path)?
        };
        let token_env = std::env::var(TOKEN_ENV).ok().filter(|t| !t.trim().is_empty());
        Config::from_ini(&ini, token_env)
    }

    fn from_ini(ini: &IniFile, token_env: Option<String>) -> Result<Config, ConfigError> {
        ini.warn_about_misplaced_keys();
        ini.check_known("seclytics", SECLYTICS_KEYS)?;
        ini.check_known("watch", WATCH_KEYS)?;
        ini.check_known("watchlists", WATCHLIST_KEYS)?;
        let base = ini.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &str| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { base.join(p) }
        };

        const S: &str = "seclytics";
        let base_url = ini.value(S, "base_url").unwrap_or("https://api.seclytics.com").trim_end_matches('/');
        // The scheme in any case (`HTTPS://…` is a URL too); the rest is checked by the URL parser below.
        let lower = base_url.to_ascii_lowercase();
        let host_part = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
        if host_part.is_none_or(str::is_empty) {
            return Err(ini.invalid(S, "base_url", base_url, "expected an http:// or https:// URL"));
        }
        // Checked here as the client will read it, so the message names the file and the key.
        if let Err(e) = reqwest::Url::parse(base_url) {
            return Err(ini.invalid(S, "base_url", base_url, format!("not a valid URL ({e})")));
        }
        let token = token_env.or_else(|| ini.value(S, "access_token").map(String::from)).unwrap_or_default();
        let auth = match ini.value(S, "auth").map(str::to_ascii_lowercase).as_deref() {
            None | Some("header") => AuthMode::Header,
            Some("query") => AuthMode::Query,
            Some(_) => {
                let v = ini.value(S, "auth").unwrap_or_default();
                return Err(ini.invalid(S, "auth", v, "expected `header` or `query`"));
            }
        };
        let timeout = Duration::from_secs(ini.number(S, "timeout_secs", 30u64, 1, 3600)?);
        let connect_timeout = Duration::from_secs(ini.number(S, "connect_timeout_secs", 10u64, 1, 3600)?);
        let dns_server = match ini.value(S, "dns_server") {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| ini.invalid(S, "dns_server", v, "expected ip:port"))?),
        };
        // A folder that is not there would answer every lookup "not found", silently, and `0` file counts filled
        // from that would never be corrected by a later run (a filled cell is never changed).
        let offline_dir = match ini.value(S, "offline_dir") {
            None => None,
            Some(v) => {
                let dir = resolve(v);
                if !dir.is_dir() {
                    return Err(ini.invalid(S, "offline_dir", v, "is not an existing folder"));
                }
                Some(dir)
            }
        };
        let seclytics = SeclyticsSettings {
            base_url: base_url.to_string(),
            access_token: Secret::new(token.trim()),
            auth,
            offline_dir,
            requests_per_minute: ini.number(S, "requests_per_minute", 120u32, 1, 1_000_000)?,
            concurrency: ini.number(S, "concurrency", 4usize, 1, 256)?,
            timeout,
            connect_timeout: connect_timeout.min(timeout),
            max_retries: ini.number(S, "max_retries", 4u32, 0, 100)?,
            cache: match ini.get(S, "cache") {
                None => Some(resolve("seclytics-cache.sqlite")),
                Some(v) if v.trim().is_empty() => None,
                Some(v) => Some(resolve(v.trim())),
            },
            cache_ttl: Duration::from_secs(3600 * ini.number(S, "cache_ttl_hours", 24u64, 0, 24 * 365 * 10)?),
            max_body_bytes: ini.number(S, "max_body_bytes", 16usize << 20, 1024, 1 << 30)?,
            dns_server,
            dns_timeout: Duration::from_millis(ini.number(S, "dns_timeout_ms", 2000u64, 10, 60_000)?),
        };

        const W: &str = "watch";
        let inbox = resolve(ini.value(W, "inbox").unwrap_or("inbox"));
        let outbox = resolve(ini.value(W, "outbox").unwrap_or("outbox"));
        let processed = ini.value(W, "processed").map(resolve).unwrap_or_else(|| inbox.join("processed"));
        let failed = ini.value(W, "failed").map(resolve).unwrap_or_else(|| inbox.join("failed"));
        let include = ini.list(W, "include", "*.csv, *.xlsx, *.xls");
        let exclude = ini.list(W, "exclude", "~$*, .~lock.*, *.tmp, *.part, .*");
        for (key, globs) in [("include", &include), ("exclude", &exclude)] {
            for glob in globs {
                if let Err(e) = globset::Glob::new(glob) {
                    return Err(ini.invalid(W, key, glob, e.to_string()));
                }
                // A file name may hold a `;`, so this is no error; but a list written `*.csv;*.xlsx` (as in a
                // Windows file dialog) would silently take nothing.
                if glob.contains(';') {
                    tracing::warn!(
                        "{}: the `{key}` glob `{glob}` holds a `;`: globs are separated by commas \
                         (`*.csv, *.xlsx`)",
                        ini.path.display()
                    );
                }
            }
        }
        let poll_ms = ini.number(W, "poll_ms", 0u64, 0, 3_600_000)?;
        let watch = WatchSettings {
            inbox,
            outbox,
            processed,
            failed,
            include,
            exclude,
            settle: Duration::from_millis(ini.number(W, "settle_ms", 1000u64, 0, 3_600_000)?),
            poll: (poll_ms > 0).then(|| Duration::from_millis(poll_ms)),
            rescan: Duration::from_secs(ini.number(W, "rescan_secs", 30u64, 1, 86_400)?),
            claim_stale: Duration::from_secs(ini.number(W, "claim_stale_secs", 120u64, 1, 86_400)?),
            shutdown_grace: Duration::from_secs(ini.number(W, "shutdown_grace_secs", 30u64, 0, 3600)?),
            critical_retry: Duration::from_secs(ini.number(W, "critical_retry_secs", 300u64, 1, 86_400)?),
        };

        let watchlists_dir = resolve(ini.value("watchlists", "dir").unwrap_or("config"));
        let sinkholes_file = ini
            .value("watchlists", "sinkholes")
            .map(resolve)
            .unwrap_or_else(|| watchlists_dir.join("sinkholes.txt"));
        let logs = LogSwitches {
            ips: ini.bool("vendor", "LogIPs", true)?,
            hashes: ini.bool("vendor", "LogHashes", true)?,
            urls: ini.bool("vendor", "LogURLs", true)?,
            reference_urls: ini.bool("vendor", "LogReferenceURLs", true)?,
        };
        Ok(Config {
            source: ini.path.clone(),
            seclytics,
            watch,
            watchlists_dir,
            sinkholes_file,
            logs,
            url_watchlist_regex: ini.bool("VirusTotal", "UseRegexForURL", false)?,
            reverse_dns: ini.bool("main", "reverseDNS", true)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let options = ini::ParseOption { enabled_escape: false, enabled_quote: false, ..Default::default() };
        let ini = ini::Ini::load_from_str_opt(text, options).unwrap();
        let mut entries = Vec::new();
        for (section, props) in ini.iter() {
            for (k, v) in props.iter() {
                entries.push((section.unwrap_or("").to_string(), k.to_string(), v.to_string()));
            }
        }
        Config::from_ini(&IniFile { path: PathBuf::from("/etc/vttl/vttl.ini"), entries }, None)
    }

    #[test]
    fn defaults_and_relative_paths() {
        let config = parse("").unwrap();
        assert_eq!(config.seclytics.base_url, "https://api.seclytics.com");
        assert_eq!(config.seclytics.requests_per_minute, 120);
        assert_eq!(config.seclytics.concurrency, 4);
        assert_eq!(config.seclytics.cache.as_deref(), Some(Path::new("/etc/vttl/seclytics-cache.sqlite")));
        assert_eq!(config.watch.inbox, Path::new("/etc/vttl/inbox"));
        assert_eq!(config.watch.processed, Path::new("/etc/vttl/inbox/processed"));
        assert_eq!(config.watch.include, vec!["*.csv", "*.xlsx", "*.xls"]);
        assert_eq!(config.watch.exclude.len(), 5);
        assert!(config.watch.poll.is_none());
        assert!(config.reverse_dns && config.logs.ips && !config.url_watchlist_regex);
    }

    /// A line without `=` in a VTTL section is skipped, as VTTL skips it: it no longer takes in the setting after
    /// it (`reverseDNS = False` was lost, and reverse lookups ran) nor a section header, nor makes a last line
    /// refuse the file. In our own sections it is refused, naming the line but not its text.
    #[test]
    fn a_line_without_equals_is_skipped_in_vttl_sections_and_refused_in_ours() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("vttl.ini");
        std::fs::write(
            &ini,
            "[main]\r\nReverse DNS settings\r\nreverseDNS = False\r\n[vendor]\r\nVTTL vendor switches\r\nLogIPs = False\r\n\
             [seclytics]\r\nconcurrency = 2\r\n[other]\r\ntrailing note",
        )
        .unwrap();
        let config = Config::load(&ini, false).unwrap();
        assert!(!config.reverse_dns && !config.logs.ips);
        assert_eq!(config.seclytics.concurrency, 2);
        std::fs::write(&ini, "[main]\nthis line has no equals\n[seclytics]\naccess_token = SEKRIT2\n")
            .unwrap();
        assert_eq!(Config::load(&ini, false).unwrap().seclytics.access_token.expose(), "SEKRIT2");
        for (text, line) in [
            ("[main]\nfoo\n[seclytics]\nconcurrency = 2\nSEKRIT3\n", 5),
            ("[watch]\ninbox = in\n\n; note\nSEKRIT3 here\n[main]\n", 5),
            ("[WatchLists]\r\nSEKRIT3", 2),
        ] {
            std::fs::write(&ini, text).unwrap();
            let error = Config::load(&ini, false).unwrap_err().to_string();
            assert!(error.contains(&format!("line {line} in [")) && error.contains("vttl.ini"), "{error}");
            assert!(!error.contains("SEKRIT3"), "{error}");
        }
    }

    /// Indented comments (valid for Python's configparser) neither hide the next section nor make a file refused;
    /// a key without `=` whose token ends in `=` is shown by its first word only.
    #[test]
    fn indented_comments_are_comments_and_a_token_after_a_key_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("vttl.ini");
        std::fs::write(
            &ini,
            "[main]\nreverseDNS = True\n    ; SecLytics settings below\n[seclytics]\nconcurrency = 2\n",
        )
        .unwrap();
        assert_eq!(Config::load(&ini, false).unwrap().seclytics.concurrency, 2);
        std::fs::write(
            &ini,
            "[seclytics]\r\n  ; live lookups: set the token below\r\naccess_token = abc123\r\n",
        )
        .unwrap();
        assert_eq!(Config::load(&ini, false).unwrap().seclytics.access_token.expose(), "abc123");
        std::fs::write(&ini, "[seclytics]\naccess_token Ab/Cd+Ef9ZxSEKRIT==\n").unwrap();
        let error = Config::load(&ini, false).unwrap_err().to_string();
        assert!(!error.contains("SEKRIT") && error.contains("access_token"), "{error}");
    }

    /// A value ending in `\` (a Windows folder) in a file with LF line ends does not take in the next line.
    #[test]
    fn a_value_ending_in_a_backslash_does_not_take_in_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("vttl.ini");
        std::fs::write(&ini, "[main]\nStaticIntelPath = C:\\VTTL\\static\\\n[seclytics]\nconcurrency = 2\n")
            .unwrap();
        assert_eq!(Config::load(&ini, false).unwrap().seclytics.concurrency, 2);
    }

    /// A line without `=` is read with the lines after it as one key; the error shows none of it then — the
    /// token may be on any of those lines, the first one too.
    #[test]
    fn a_line_without_equals_never_shows_what_follows_it() {
        for text in [
            "[seclytics]\naccess_token SEKRIT1\n[watch]\ninbox = x\n",
            "[seclytics]\naccess_token SEKRIT1 ; note\nconcurrency = 2\n",
            "[seclytics]\naccess_token =\nSEKRIT1\nconcurrency = 2\n",
            "[seclytics]\naccess_token = SEK\nRIT1\nconcurrency = 2\n",
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(!error.contains("SEKRIT1") && !error.contains("RIT1"), "{error}");
            assert!(error.contains("[seclytics]") && error.contains("no `=`"), "{error}");
        }
    }

    /// A URL the client could not use, and a number too large for its type, are named with file and key and
    /// said for what they are.
    #[test]
    fn unusable_urls_and_numbers_out_of_range_are_named() {
        for url in ["http://exa mple.com", "http://example.com:99999"] {
            let error = parse(&format!("[seclytics]\nbase_url = {url}\n")).expect_err(url).to_string();
            assert!(
                error.contains("base_url") && error.contains("vttl.ini") && error.contains("not a valid URL"),
                "{error}"
            );
        }
        let error =
            parse("[seclytics]\nrequests_per_minute = 99999999999999999999\n").unwrap_err().to_string();
        assert!(error.contains("must be between"), "{error}");
        let error = parse("[seclytics]\nrequests_per_minute = lots\n").unwrap_err().to_string();
        assert!(error.contains("whole number"), "{error}");
    }

    /// A value in an error is shown as written: a Windows folder keeps its single backslashes; control
    /// characters are escaped.
    #[test]
    fn invalid_values_are_shown_as_written() {
        let error = parse("[seclytics]\nauth = C:\\VTTL\\x\u{1b}[2J\n").unwrap_err().to_string();
        assert!(error.contains("auth = `C:\\VTTL\\x\\u{1b}[2J` is invalid"), "{error}");
    }

    /// A key given twice: the first wins, as in VTTL (a warning says so); the URL's scheme may be written in
    /// any case.
    #[test]
    fn the_first_of_a_key_set_twice_wins_and_the_url_scheme_has_any_case() {
        assert_eq!(
            parse("[seclytics]\nconcurrency = 2\nConcurrency = 5\n").unwrap().seclytics.concurrency,
            2
        );
        let config = parse("[seclytics]\nbase_url = HTTPS://api.example.test/\n").unwrap();
        assert_eq!(config.seclytics.base_url, "HTTPS://api.example.test");
        for url in ["https://", "ftp://example.test", "example.test"] {
            let error = parse(&format!("[seclytics]\nbase_url = {url}\n")).unwrap_err().to_string();
            assert!(error.contains("expected an http:// or https:// URL"), "{url}: {error}");
        }
    }

    /// An empty `include` (or one of commas only) used to take no file at all, silently: empty means the
    /// default, as for every other key.
    #[test]
    fn empty_name_lists_mean_the_default() {
        for text in ["[watch]\ninclude =\nexclude =\n", "[watch]\ninclude = ,\nexclude = , ,\n"] {
            let config = parse(text).unwrap();
            assert_eq!(config.watch.include, vec!["*.csv", "*.xlsx", "*.xls"], "{text}");
            assert_eq!(config.watch.exclude.len(), 5, "{text}");
        }
        let config = parse("[watch]\ninclude = *.csv\n").unwrap();
        assert_eq!(config.watch.include, vec!["*.csv"]);
    }

    #[test]
    fn vttl_sections_are_case_insensitive_and_lenient() {
        let config = parse(
            "[Main]\nREVERSEDNS=false\ntime_between_lookups=15000\n[vendor]\nlogurls=False\nuseSeclytics=True\n\
             [virustotal]\nUseRegexForURL=True\n[SecLytics]\nAUTH=query\ncache=\n",
        )
        .unwrap();
        assert!(!config.reverse_dns);
        assert!(!config.logs.urls && config.logs.ips);
        assert!(config.url_watchlist_regex);
        assert_eq!(config.seclytics.auth, AuthMode::Query);
        assert!(config.seclytics.cache.is_none());
    }

    #[test]
    fn offline_dir_must_be_an_existing_folder() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(&format!("[seclytics]\noffline_dir = {}\n", dir.path().display())).unwrap();
        assert_eq!(config.seclytics.offline_dir.as_deref(), Some(dir.path()));
        let missing = dir.path().join("does-not-exist");
        let error =
            parse(&format!("[seclytics]\noffline_dir = {}\n", missing.display())).unwrap_err().to_string();
        assert!(error.contains("offline_dir") && error.contains("not an existing folder"), "{error}");
    }

    #[test]
    fn unknown_and_invalid_keys_are_named() {
        let err = parse("[seclytics]\nrequests_per_minit=5\n").unwrap_err().to_string();
        assert!(err.contains("requests_per_minit") && err.contains("vttl.ini"), "{err}");
        let err = parse("[watch]\nsettle_ms=soon\n").unwrap_err().to_string();
        assert!(err.contains("settle_ms") && err.contains("soon"), "{err}");
        let err = parse("[seclytics]\nconcurrency=0\n").unwrap_err().to_string();
        assert!(err.contains("concurrency"), "{err}");
        let err = parse("[main]\nreverseDNS=maybe\n").unwrap_err().to_string();
        assert!(err.contains("reverseDNS"), "{err}");
        let err = parse("[seclytics]\nauth=cookie\n").unwrap_err().to_string();
        assert!(err.contains("auth"), "{err}");
    }

    #[test]
    fn watch_claim_shutdown_and_retry_keys() {
        let config = parse("").unwrap();
        assert_eq!(config.watch.claim_stale, Duration::from_secs(120));
        assert_eq!(config.watch.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.watch.critical_retry, Duration::from_secs(300));
        let config =
            parse("[watch]\nclaim_stale_secs=3\nshutdown_grace_secs=0\ncritical_retry_secs=2\n").unwrap();
        assert_eq!(config.watch.claim_stale, Duration::from_secs(3));
        assert_eq!(config.watch.shutdown_grace, Duration::ZERO);
        assert_eq!(config.watch.critical_retry, Duration::from_secs(2));
        let err = parse("[watch]\nclaim_stale_secs=0\n").unwrap_err().to_string();
        assert!(err.contains("claim_stale_secs"), "{err}");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("tok-123456");
        assert!(!format!("{s:?} {s}").contains("tok-123456"));
        assert_eq!(s.redact("url?access_token=tok-123456"), "url?access_token=[redacted]");
    }
}
