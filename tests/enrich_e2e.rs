//! End-to-end tests of `vttl-seclytics enrich` (SPEC §4–§7): the real binary, a real SecLytics-like HTTP server
//! and a real DNS server on 127.0.0.1, inputs written by the tests, outputs re-read independently (CSV with the
//! `csv` crate after decoding, XLSX with calamine) and checked cell by cell.
//!
//! One scenario covers every row of the SPEC §4 table; each column has a test in CSV and one in XLSX.

mod support;
#[path = "support_dns/mod.rs"]
mod support_dns;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use calamine::{Data, Reader};
use serde_json::{Value, json};
use support::api_server::{ApiServer, Behaviour};

const TOKEN: &str = "tok-E2E-5ecret-7f3a9c";

const HEADER: &[&str] = &[
    "Scanned Item",
    "Country Name",
    "Reverse DNS",
    "WHOIS",
    "IP Address",
    "Validation",
    "Keyword Watch List",
    "Date First Seen",
    "Sinkhole",
    "IP Domain Watch List",
    "Detection Name Watch List",
    "URL Watch List",
    "Seclytics Reputation and Reason",
    "Seclytics Associated File Metadata",
    "Seclytics File Count",
];

/// The IP/domain rows of the scenario: (indicator, pre-filled cells).
fn ip_rows() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        ("203.0.113.45", vec![("Country Name", "Netherlands")]),
        ("198.51.100.53", vec![]),
        ("198.51.100.60", vec![("Validation", "top 100 domain")]),
        ("cdn.example.co.uk", vec![]),
        ("login.example.net", vec![]),
        ("second.example.net", vec![]),
        ("sink.example.org", vec![]),
        ("private.example.com", vec![]),
        (
            "prefilled.example.com",
            vec![("IP Address", "192.0.2.1"), ("Seclytics Reputation and Reason", "analyst says clean")],
        ),
        ("203.0.113.99", vec![]),
        ("not an indicator", vec![]),
        ("ptr.example.net", vec![]),
    ]
}

fn period(start: &str) -> Value {
    json!({"duration": 86400, "end_at": "2024-12-31T00:00:00", "start_at": start})
}

/// Scripts the fake API with the scenario's documents.
fn script_api(server: &ApiServer) {
    server.set_document(
        "/ips/203.0.113.45",
        json!({
            "accessed_by_files": ["9f2c4e1a7b3d5f608e1c2b4a6d8f0e3c5a7b9d1f3e5c7a9b0d2f4e6a8c0b1d3e",
                                  "0b7e3d9a1c5f2e8d4b6a0c3e7f9d1b5a2c4e6f8a0d3b5c7e9f1a2b4c6d8e0f1a",
                                  "6f1e2d3c4b5a69788796a5b4c3d2e1f0"],
            "asn": {"description": "EXAMPLE-HOSTING-AS", "number": "64500"},
            "connections": [{"context": {"names": {"hybrid_analysis": ["invoice_0312.exe"]}},
                             "id": "6f1e2d3c4b5a69788796a5b4c3d2e1f0", "type": "file"}],
            "context": {
                "categories": {"dshield": ["scanner"], "hybrid_analysis": ["malicious", "scanner"]},
                "ips": {"gtmpdns": ["198.51.100.7"]},
                "reasons": {"hybrid_analysis": ["AgentTesla.XK", "Predicted address, contacted by malware",
                                                "Trojan:Win32/AgentTesla!ml", "update-check.example.com",
                                                "abuse@example.com"]},
                "sha256": {"hybrid_analysis": ["5D0C8E2A4F6B1D3E7A9C0B2D4F6E8A1C3B5D7F9E0A2C4B6D8E1F3A5C7B9D0E2F"]},
                "source_urls": {"hybrid_analysis": ["https://www.hybrid-analysis.com/sample/9f2c",
                                                    "http://update-check.example.com/gate.php?id=7"]}
            },
            "history": {"first_seen_at": "2024-03-02T00:00:00",
                        "global_history": [period("2024-03-02T00:00:00"), period("2024-02-10T08:30:00")]},
            "id": "203.0.113.45", "type": "ip"
        }),
    );
    server.set_document(
        "/ips/198.51.100.53",
        json!({"history": {"first_seen_at": "2019-11-13T02:43:18"}, "id": "198.51.100.53", "type": "ip",
               "whitelist": "Public recursive DNS resolver",
               "whois": [{"name": "VR-ARIN", "org": "VR-ARIN"}, {"name": "X", "org": ""},
                         {"name": "EXAMPLE-DNS-NET", "org": "Example DNS Services"}]}),
    );
    server.set_document(
        "/ips/198.51.100.60",
        json!({"asn": {"number": 64501}, "id": "198.51.100.60", "type": "ip", "whitelist": "Corporate proxy"}),
    );
    server.set_document(
        "/ips/192.0.2.77",
        json!({"asn": {"description": "=HYPERLINK(\"http://evil.example\",\"click\")", "number": "64502"},
               "context": {"reasons": {"blocklist": ["=1+2", "@SUM(A1)"]}},
               "id": "192.0.2.77", "type": "ip", "whitelist": "+cmd"}),
    );
    server.set_document(
        "/hosts/cdn.example.co.uk",
        json!({
            "accessed_by_files": ["5d0c8e2a4f6b1d3e7a9c0b2d4f6e8a1c3b5d7f9e0a2c4b6d8e1f3a5c7b9d0e2f"],
            "context": {"categories": {"urlhaus": ["malware"]}, "identifiers": {"urlhaus": ["formbook"]},
                        "urls": {"urlhaus": ["http://cdn.example.co.uk/upd/inv.exe", "HTTP://CDN.example.co.uk/x"]}},
            "file_connections": [{"context": {"mime_types": {"premium": ["application/x-dosexec"]}},
                                  "hash": "5d0c8e2a4f6b1d3e7a9c0b2d4f6e8a1c3b5d7f9e0a2c4b6d8e1f3a5c7b9d0e2f",
                                  "type": "file"}],
            "history": {"global_history": [period("2024-03-06T00:00:00")]},
            "id": "cdn.example.co.uk",
            "passive_dns": [{"answer_ip": "203.0.113.45", "answer_type": "A"},
                            {"answer_ip": "192.0.2.55", "answer_type": "A"}],
            "type": "host", "whitelist": "Tranco top 10k"
        }),
    );
    for host in ["login.example.net", "second.example.net"] {
        server.set_document(
            &format!("/hosts/{host}"),
            json!({"context": {"categories": {"phishtank": ["phishing"]},
                               "references": {"phishtank": ["https://www.phishtank.com/phish_detail.php?id=1"]}},
                   "id": host, "passive_dns": [{"answer_ip": "192.0.2.77"}], "type": "host"}),
        );
    }
    server.set_document(
        "/hosts/sink.example.org",
        json!({"id": "sink.example.org", "passive_dns": [{"answer_ip": "142.0.36.234"}], "type": "host"}),
    );
    server.set_document(
        "/hosts/private.example.com",
        json!({"id": "private.example.com", "passive_dns": [{"answer_ip": "10.1.2.3"}], "type": "host"}),
    );
    server.set_document(
        "/hosts/prefilled.example.com",
        json!({"context": {"categories": {"x": ["malware"]}}, "id": "prefilled.example.com",
               "passive_dns": [{"answer_ip": "192.0.2.200"}], "type": "host"}),
    );
    server.set_document(
        "/hosts/ptr.example.net",
        json!({"id": "ptr.example.net", "passive_dns": [{"answer_ip": "198.51.100.99"}], "type": "host"}),
    );
    server.set_document(
        "/ips/198.51.100.99",
        json!({"asn": {"description": "PTR-TEST-AS"}, "id": "198.51.100.99", "type": "ip"}),
    );
    server.set("/ips/203.0.113.99", Behaviour::status(500, "internal error"));
    server.set_document(
        "/files/6f1e2d3c4b5a69788796a5b4c3d2e1f0",
        json!({"context": {"categories": {"gtmpdns": ["malware"]}, "ips": {"gtmpdns": ["203.0.113.45"]},
                           "md5": {"gtmpdns": ["6f1e2d3c4b5a69788796a5b4c3d2e1f0"]},
                           "names": {"premium": ["AgentTesla.XK", "agenttesla"]}},
               "hash": "6f1e2d3c4b5a69788796a5b4c3d2e1f0", "hash_type": "md5",
               "history": {"first_seen_at": "2024-03-06T11:22:33"}, "id": "6f1e2d3c4b5a69788796a5b4c3d2e1f0",
               "type": "file"}),
    );
}

/// A temp folder with the ini, watch lists, and the servers.
struct Scenario {
    dir: tempfile::TempDir,
    api: ApiServer,
    _dns: support_dns::PtrServer,
}

impl Scenario {
    fn new() -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let api = ApiServer::start();
        script_api(&api);
        api.require_token(Some(TOKEN));
        let dns = support_dns::PtrServer::start(&[
            ("203.0.113.45".parse().unwrap(), "host-45.example-hosting.net."),
            ("198.51.100.99".parse().unwrap(), "sinkhole.example-security.org."),
            // An IP row that is no domain's passive-DNS IP: resolved because its own row wants the name.
            ("198.51.100.53".parse().unwrap(), "resolver-53.example.net."),
        ]);
        let lists = dir.path().join("lists");
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(lists.join("KWordwatchlist.txt"), "AgentTesla\r\ntranco\r\nnot-in-any-body\r\n")
            .unwrap();
        std::fs::write(lists.join("URLwatchlist.txt"), "/gate.php\r\n.exe\r\n/upd/\r\n").unwrap();
        std::fs::write(
            lists.join("IPDwatchlist.txt"),
            "203.0.113.45|C2 list\r\nupdate-check.example.com|Loader\r\n192.0.2.77\r\n",
        )
        .unwrap();
        std::fs::write(lists.join("DNwatchlist.txt"), "trojan:win32/agenttesla!ml\r\nagenttesla\r\n")
            .unwrap();
        // The shipped sinkhole list, copied beside the ini (a path relative to it works wherever the tests run,
        // also for a Windows build run under Wine, where this crate's Unix path is not a Windows path).
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sinkholes.txt");
        std::fs::copy(shipped, dir.path().join("sinkholes.txt")).unwrap();
        let ini = format!(
            "[seclytics]\nbase_url = {}\naccess_token = {TOKEN}\nauth = query\nconcurrency = 3\n\
             requests_per_minute = 100000\nmax_retries = 1\ntimeout_secs = 5\ncache = cache.sqlite\n\
             dns_server = {}\ndns_timeout_ms = 1500\n\
             [watchlists]\ndir = lists\nsinkholes = sinkholes.txt\n[main]\nreverseDNS = True\n",
            api.base_url(),
            dns.addr,
        );
        std::fs::write(dir.path().join("vttl.ini"), ini).unwrap();
        Scenario { dir, api, _dns: dns }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn outbox(&self) -> PathBuf {
        self.path("out")
    }

    /// The command that runs `enrich` on `inputs` into `outbox`, with the scenario's ini.
    fn enrich_command(&self, inputs: &[&Path], extra: &[&str], outbox: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vttl-seclytics"));
        command
            .arg("--config")
            .arg(self.path("vttl.ini"))
            .args(extra)
            .arg("enrich")
            .args(inputs)
            .arg("--outbox")
            .arg(outbox)
            .env_remove("SECLYTICS_ACCESS_TOKEN");
        command
    }

    /// Runs `enrich` on `inputs`; returns (exit code, stderr).
    fn enrich(&self, inputs: &[&Path], extra: &[&str]) -> (i32, String) {
        let output = self.enrich_command(inputs, extra, &self.outbox()).output().unwrap();
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
    }

    /// Writes `text` as the CSV input `name`, runs `enrich` on it (which must succeed) and reads the output.
    fn enrich_csv(&self, name: &str, text: impl AsRef<[u8]>) -> Table {
        let input = self.path(name);
        std::fs::write(&input, text).unwrap();
        let (code, stderr) = self.enrich(&[&input], &[]);
        assert_eq!(code, 0, "{stderr}");
        read_csv_table(&std::fs::read(self.outbox().join(name)).unwrap(), encoding_rs::WINDOWS_1252)
    }

    /// Runs `enrich` on `input` into `outbox` with `VTTL_LOG=debug` (the figures of each phase, read with
    /// [`logged_count`]); returns (exit code, stderr).
    fn enrich_logged(&self, input: &Path, outbox: &Path) -> (i32, String) {
        let output = self.enrich_command(&[input], &[], outbox).env("VTTL_LOG", "debug").output().unwrap();
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn csv_line(cells: &[&str]) -> String {
    format!("\"{}\"\r\n", cells.join("\",\""))
}

/// The scenario as VTTL's CSV: Windows-1252, all quoted, CRLF.
fn ip_csv_bytes() -> Vec<u8> {
    let mut text = csv_line(HEADER);
    for (item, prefilled) in ip_rows() {
        let mut cells = vec![""; HEADER.len()];
        cells[0] = item;
        for (column, value) in prefilled {
            cells[HEADER.iter().position(|h| *h == column).unwrap()] = value;
        }
        text.push_str(&csv_line(&cells));
    }
    encoding_rs::WINDOWS_1252.encode(&text).0.into_owned()
}

const HASH_HEADER: &[&str] = &["Hash", "Scan Date", "Date First Seen"];

fn hash_rows() -> Vec<[&'static str; 3]> {
    vec![
        ["6F1E2D3C4B5A69788796A5B4C3D2E1F0", "", ""],
        ["77770000022222211333333444445555", "", "2020-01-01 00:00:00"],
    ]
}

/// Writes the scenario as an XLSX: the IP/domain table, a hash table, and a non-VTTL sheet.
fn write_xlsx(path: &Path) {
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet().set_name("Threat Intelligence").unwrap();
    for (c, h) in HEADER.iter().enumerate() {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    for (r, (item, prefilled)) in ip_rows().into_iter().enumerate() {
        let r = r as u32 + 1;
        sheet.write_string(r, 0, item).unwrap();
        for (column, value) in prefilled {
            sheet.write_string(r, HEADER.iter().position(|h| *h == column).unwrap() as u16, value).unwrap();
        }
    }
    let hashes = book.add_worksheet().set_name("Hashes").unwrap();
    for (c, h) in HASH_HEADER.iter().enumerate() {
        hashes.write_string(0, c as u16, *h).unwrap();
    }
    for (r, row) in hash_rows().iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            if !v.is_empty() {
                hashes.write_string(r as u32 + 1, c as u16, *v).unwrap();
            }
        }
    }
    let notes = book.add_worksheet().set_name("Notes").unwrap();
    notes.write_string(0, 0, "free text").unwrap();
    notes.write_number(1, 0, 42.5).unwrap();
    // A hidden sheet, a defined name and a formula that uses it with an array constant at its end.
    // (`Formula::new` takes a leading `{=` and a trailing `}` off: wrapped, the formula is `Answer+{1,2}`.)
    notes.write_formula(2, 0, rust_xlsxwriter::Formula::new("{=Answer+{1,2}}").set_result("43.5")).unwrap();
    notes.set_hidden(true);
    book.define_name("Answer", "=Notes!$A$2").unwrap();
    book.save(path).unwrap();
}

/// An output table: header + rows of text, looked up by (indicator, column).
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn column(&self, name: &str) -> usize {
        self.header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name}: {:?}", self.header))
    }

    fn row(&self, item: &str) -> &Vec<String> {
        let matches: Vec<_> =
            self.rows.iter().filter(|r| r.first().map(String::as_str) == Some(item)).collect();
        assert_eq!(matches.len(), 1, "rows for {item}");
        matches[0]
    }

    fn get(&self, item: &str, column: &str) -> String {
        self.row(item).get(self.column(column)).cloned().unwrap_or_default()
    }

    fn items(&self) -> Vec<&str> {
        self.rows.iter().map(|r| r[0].as_str()).collect()
    }
}

fn read_csv_table(bytes: &[u8], encoding: &'static encoding_rs::Encoding) -> Table {
    let text = encoding.decode_without_bom_handling(bytes).0.into_owned();
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text).to_string();
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut records = reader.records().map(|r| r.unwrap().iter().map(String::from).collect::<Vec<_>>());
    let header = records.next().unwrap();
    Table { header, rows: records.collect() }
}

fn data_text(cell: &Data) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::String(s) => s.clone(),
        Data::Float(f) => f.to_string(),
        Data::Int(i) => i.to_string(),
        Data::Bool(b) => b.to_string(),
        Data::DateTime(d) => {
            let (y, mo, da, h, mi, s, _) = d.to_ymd_hms_milli();
            format!("{y:04}-{mo:02}-{da:02} {h:02}:{mi:02}:{s:02}")
        }
        other => format!("{other:?}"),
    }
}

fn read_xlsx_sheet(path: &Path, sheet: &str) -> (Table, calamine::Range<Data>) {
    let mut book: calamine::Xlsx<_> = calamine::open_workbook(path).unwrap();
    let range = book.worksheet_range(sheet).unwrap();
    assert_eq!(range.start(), Some((0, 0)));
    let mut rows = range.rows().map(|r| r.iter().map(data_text).collect::<Vec<_>>());
    let header = rows.next().unwrap();
    let rows = rows.map(|mut r| {
        while r.last().is_some_and(String::is_empty) {
            r.pop();
        }
        r
    });
    (Table { header, rows: rows.collect() }, range)
}

/// Runs the scenario once per format and caches nothing between tests (each test has its own servers).
fn run_csv() -> (Scenario, Table) {
    let scenario = Scenario::new();
    let input = scenario.path("book.csv");
    std::fs::write(&input, ip_csv_bytes()).unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");
    let bytes = std::fs::read(scenario.outbox().join("book.csv")).unwrap();
    let table = read_csv_table(&bytes, encoding_rs::WINDOWS_1252);
    (scenario, table)
}

fn run_xlsx() -> (Scenario, Table) {
    let scenario = Scenario::new();
    let input = scenario.path("book.xlsx");
    write_xlsx(&input);
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");
    let (table, _) = read_xlsx_sheet(&scenario.outbox().join("book.xlsx"), "Threat Intelligence");
    (scenario, table)
}

/// What a CSV cell `want` looks like in XLSX: the `'` that neutralises a formula in CSV is not needed there,
/// because XLSX stores such text as a text cell.
fn as_xlsx(want: &str) -> &str {
    match want.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@']) => rest,
        _ => want,
    }
}

/// Expected values of one column: (indicator, expected CSV text). Indicators not listed must be empty, except
/// pre-filled cells, which must be unchanged.
fn check_column(table: &Table, column: &str, expected: &[(&str, &str)], xlsx: bool) {
    let expected: HashMap<&str, &str> = expected.iter().copied().collect();
    let prefilled: HashMap<(&str, &str), &str> = ip_rows()
        .into_iter()
        .flat_map(|(item, cells)| cells.into_iter().map(move |(c, v)| ((item, c), v)))
        .collect();
    for item in table.items() {
        let got = table.get(item, column);
        let want =
            expected.get(item).copied().or_else(|| prefilled.get(&(item, column)).copied()).unwrap_or("");
        let want = if xlsx { as_xlsx(want) } else { want };
        assert_eq!(got, want, "column {column:?}, row {item:?}");
    }
}

macro_rules! column_tests {
    ($($name:ident: $column:expr => [$($item:expr => $value:expr),* $(,)?];)*) => {
        mod csv_columns {
            use super::*;
            $(#[test] fn $name() { let (_s, t) = run_csv(); check_column(&t, $column, &[$(($item, $value)),*], false); })*
        }
        mod xlsx_columns {
            use super::*;
            $(#[test] fn $name() { let (_s, t) = run_xlsx(); check_column(&t, $column, &[$(($item, $value)),*], true); })*
        }
    };
}

column_tests! {
    reputation: "Seclytics Reputation and Reason" => [
        "203.0.113.45" => "scanner^malicious^AgentTesla.XK^update-check.example.com",
        "cdn.example.co.uk" => "malware^formbook",
        "login.example.net" => "phishing",
        "second.example.net" => "phishing",
        "192.0.2.77" => "'=1+2",
    ];
    file_metadata: "Seclytics Associated File Metadata" => [
        "203.0.113.45" => "invoice_0312.exe",
        "cdn.example.co.uk" => "application/x-dosexec",
    ];
    file_count: "Seclytics File Count" => [
        "203.0.113.45" => "3", "198.51.100.53" => "0", "198.51.100.60" => "0", "cdn.example.co.uk" => "1",
        "login.example.net" => "0", "second.example.net" => "0", "sink.example.org" => "0",
        "private.example.com" => "0", "prefilled.example.com" => "0", "ptr.example.net" => "0",
        "192.0.2.77" => "0", "142.0.36.234" => "0", "198.51.100.99" => "0",
    ];
    whois: "WHOIS" => [
        "203.0.113.45" => "EXAMPLE-HOSTING-AS", "198.51.100.53" => "Example DNS Services",
        "198.51.100.60" => "AS64501", "192.0.2.77" => "'=HYPERLINK(\"http://evil.example\",\"click\")",
        "198.51.100.99" => "PTR-TEST-AS",
    ];
    validation: "Validation" => [
        "198.51.100.53" => "Public recursive DNS resolver", "cdn.example.co.uk" => "Tranco top 10k",
        "192.0.2.77" => "'+cmd",
    ];
    date_first_seen: "Date First Seen" => [
        "203.0.113.45" => "2024-02-10 08:30:00", "198.51.100.53" => "2019-11-13 02:43:18",
        "cdn.example.co.uk" => "2024-03-06 00:00:00",
    ];
    ip_address: "IP Address" => [
        "cdn.example.co.uk" => "203.0.113.45", "login.example.net" => "192.0.2.77",
        "second.example.net" => "192.0.2.77", "sink.example.org" => "142.0.36.234",
        "private.example.com" => "10.1.2.3", "ptr.example.net" => "198.51.100.99",
    ];
    reverse_dns: "Reverse DNS" => [
        "203.0.113.45" => "host-45.example-hosting.net", "cdn.example.co.uk" => "host-45.example-hosting.net",
        "ptr.example.net" => "sinkhole.example-security.org", "198.51.100.99" => "sinkhole.example-security.org",
        "198.51.100.53" => "resolver-53.example.net",
    ];
    sinkhole: "Sinkhole" => [
        "sink.example.org" => "ET DNS Reply Sinkhole FBI Zeus P2P 1 - 142.0.36.234",
        "142.0.36.234" => "ET DNS Reply Sinkhole FBI Zeus P2P 1 - 142.0.36.234",
        "ptr.example.net" => "X", "198.51.100.99" => "X",
    ];
    keyword_watch_list: "Keyword Watch List" => [
        "203.0.113.45" => "agenttesla", "cdn.example.co.uk" => "tranco",
    ];
    url_watch_list: "URL Watch List" => [
        "203.0.113.45" => "/gate.php", "cdn.example.co.uk" => ".exe   /upd/",
    ];
    ip_domain_watch_list: "IP Domain Watch List" => [
        "203.0.113.45" => "C2 list/203.0.113.45^Loader/update-check.example.com",
        "192.0.2.77" => "192.0.2.77",
    ];
    detection_name_watch_list: "Detection Name Watch List" => [
        "203.0.113.45" => "trojan:win32/agenttesla!ml",
    ];
}

#[test]
fn appended_rows_order_and_duplicates_csv_and_xlsx() {
    // 192.0.2.77 (login, second: once), 142.0.36.234 (sink), 198.51.100.99 (ptr); not 203.0.113.45 (already a
    // row), not 10.1.2.3 (private), not 192.0.2.200 (IP Address was pre-filled), not 192.0.2.55 (second answer).
    let expected_tail = ["192.0.2.77", "142.0.36.234", "198.51.100.99"];
    for (_, table) in [run_csv(), run_xlsx()] {
        let items = table.items();
        let originals = ip_rows().len();
        assert_eq!(items.len(), originals + 3, "{items:?}");
        assert_eq!(&items[originals..], &expected_tail);
    }
}

#[test]
fn untouched_rows_and_prefilled_cells_survive_byte_for_byte() {
    let (scenario, _) = run_csv();
    let input = std::fs::read(scenario.path("book.csv")).unwrap();
    let output = std::fs::read(scenario.outbox().join("book.csv")).unwrap();
    let input_lines: Vec<&[u8]> = input.split_inclusive(|b| *b == b'\n').collect();
    let output_lines: Vec<&[u8]> = output.split_inclusive(|b| *b == b'\n').collect();
    // Rows with nothing to fill: the failed lookup and the text that is not an indicator.
    for item in ["\"203.0.113.99\"", "\"not an indicator\""] {
        let find = |lines: &[&[u8]]| {
            lines.iter().find(|l| l.starts_with(item.as_bytes())).map(|l| l.to_vec()).unwrap()
        };
        assert_eq!(find(&input_lines), find(&output_lines), "{item}");
    }
    // The pre-filled row keeps its cells and changes only empty ones.
    let prefilled_in = input_lines.iter().find(|l| l.starts_with(b"\"prefilled")).unwrap();
    let prefilled_out = output_lines.iter().find(|l| l.starts_with(b"\"prefilled")).unwrap();
    assert!(String::from_utf8_lossy(prefilled_out).contains("\"192.0.2.1\""));
    assert!(String::from_utf8_lossy(prefilled_out).contains("\"analyst says clean\""));
    assert_ne!(prefilled_in, prefilled_out, "File Count should have been filled");
    // The header keeps its bytes and only gains nothing (all columns exist).
    assert_eq!(input_lines[0], output_lines[0]);
}

#[test]
fn xlsx_other_sheets_and_hash_table() {
    let (scenario, _) = run_xlsx();
    let out = scenario.outbox().join("book.xlsx");
    let mut book: calamine::Xlsx<_> = calamine::open_workbook(&out).unwrap();
    assert_eq!(book.sheet_names(), vec!["Threat Intelligence", "Hashes", "Notes"]);
    let notes = book.worksheet_range("Notes").unwrap();
    assert_eq!(notes.get_value((0, 0)), Some(&Data::String("free text".into())));
    assert_eq!(notes.get_value((1, 0)), Some(&Data::Float(42.5)));
    let notes_formulas = book.worksheet_formula("Notes").unwrap();
    assert_eq!(notes_formulas.get_value((2, 0)).map(String::as_str), Some("Answer+{1,2}"));
    assert_eq!(book.sheets_metadata()[2].visible, calamine::SheetVisible::Hidden);
    assert_eq!(book.defined_names(), [("Answer".to_string(), "Notes!$A$2".to_string())]);
    let (hashes, range) = read_xlsx_sheet(&out, "Hashes");
    assert_eq!(
        hashes.header,
        [
            "Hash",
            "Scan Date",
            "Date First Seen",
            "Seclytics File Associated Metadata",
            "Keyword Watch List",
            "URL Watch List",
            "IP Domain Watch List",
            "Detection Name Watch List"
        ]
    );
    assert_eq!(hashes.get("6F1E2D3C4B5A69788796A5B4C3D2E1F0", "Date First Seen"), "2024-03-06 11:22:33");
    assert_eq!(
        hashes.get("6F1E2D3C4B5A69788796A5B4C3D2E1F0", "Seclytics File Associated Metadata"),
        "malware^AgentTesla.XK^agenttesla"
    );
    assert_eq!(
        hashes.get("6F1E2D3C4B5A69788796A5B4C3D2E1F0", "IP Domain Watch List"),
        "C2 list/203.0.113.45"
    );
    assert_eq!(hashes.get("6F1E2D3C4B5A69788796A5B4C3D2E1F0", "Detection Name Watch List"), "agenttesla");
    // The pre-filled date stays text, the filled one is a real date cell.
    assert_eq!(hashes.get("77770000022222211333333444445555", "Date First Seen"), "2020-01-01 00:00:00");
    assert!(matches!(range.get_value((1, 2)), Some(Data::DateTime(_))), "{:?}", range.get_value((1, 2)));
    assert!(matches!(range.get_value((2, 2)), Some(Data::String(_))));
    // Formula-looking API text is a text cell, never a formula.
    let formulas = book.worksheet_formula("Threat Intelligence").unwrap();
    assert!(formulas.used_cells().all(|(_, _, f)| f.is_empty()), "no formula may be written");
    let (ti, range) = read_xlsx_sheet(&out, "Threat Intelligence");
    let whois = ti.column("WHOIS");
    let row = ti.items().iter().position(|i| *i == "192.0.2.77").unwrap() + 1;
    assert_eq!(
        range.get_value((row as u32, whois as u32)),
        Some(&Data::String("=HYPERLINK(\"http://evil.example\",\"click\")".into()))
    );
    let count = ti.column("Seclytics File Count");
    assert_eq!(range.get_value((1, count as u32)), Some(&Data::Float(3.0)));
}

/// A hash of digits only that Excel turned into a number keeps 15 to 17 of its digits (`1.23457E+31`): the
/// text of that number is a made-up hash. Such cells (a number, or a formula with a numeric result) are
/// skipped and counted, never looked up, and stay as they were; a hash written as text beside them still is.
#[test]
fn a_number_in_an_indicator_cell_is_never_looked_up_as_a_made_up_hash() {
    let scenario = Scenario::new();
    let input = scenario.path("numbers.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet().set_name("Hashes").unwrap();
    sheet.write_string(0, 0, "Hash").unwrap();
    sheet.write_string(0, 1, "Date First Seen").unwrap();
    sheet.write_string(1, 0, "6F1E2D3C4B5A69788796A5B4C3D2E1F0").unwrap();
    sheet.write_number(2, 0, 12345678901234567890123456789012.0).unwrap();
    sheet.write_number(3, 0, 1234567890123456789012345678901234567890.0).unwrap();
    sheet.write_formula(4, 0, rust_xlsxwriter::Formula::new("=10^31").set_result("1E+31")).unwrap();
    let items = book.add_worksheet().set_name("Items").unwrap();
    items.write_string(0, 0, "Scanned Item").unwrap();
    items.write_number(1, 0, 98765432109876543210987654321098.0).unwrap();
    book.save(&input).unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");

    let requested: Vec<String> = scenario.api.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(requested, ["/files/6f1e2d3c4b5a69788796a5b4c3d2e1f0"]);
    let report: Value =
        serde_json::from_slice(&std::fs::read(scenario.outbox().join("numbers.xlsx.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["skipped_indicators"], 4);
    let out = scenario.outbox().join("numbers.xlsx");
    let (hashes, range) = read_xlsx_sheet(&out, "Hashes");
    assert_eq!(hashes.get("6F1E2D3C4B5A69788796A5B4C3D2E1F0", "Date First Seen"), "2024-03-06 11:22:33");
    assert_eq!(range.get_value((2, 0)), Some(&Data::Float(12345678901234567890123456789012.0)));
    assert_eq!(range.get_value((3, 0)), Some(&Data::Float(1234567890123456789012345678901234567890.0)));
    for row in 2..=4 {
        assert!(range.get_value((row, 1)).is_none_or(|cell| *cell == Data::Empty), "row {row}");
    }
    let mut book: calamine::Xlsx<_> = calamine::open_workbook(&out).unwrap();
    assert_eq!(
        book.worksheet_formula("Hashes").unwrap().get_value((4, 0)).map(String::as_str),
        Some("10^31")
    );
    let (_, range) = read_xlsx_sheet(&out, "Items");
    assert_eq!(range.get_value((1, 0)), Some(&Data::Float(98765432109876543210987654321098.0)));
}

/// The reverse-DNS sinkhole rule reads the IP's PTR name as resolved now as well as a name already in the
/// row's `Reverse DNS` cell: an IP sinkholed since VTTL wrote its (older) name, and a domain row whose
/// `Reverse DNS` holds a note, get their `X` (the cell itself keeps what it had).
#[test]
fn a_sinkhole_ptr_name_counts_beside_an_older_name_in_the_row() {
    let scenario = Scenario::new();
    let header = ["Scanned Item", "IP Address", "Reverse DNS", "Sinkhole"];
    let rows = [
        ["198.51.100.99", "", "old-name.example.net", ""],
        ["ptr.example.net", "", "checked by hand", ""],
        ["203.0.113.45", "", "sinkhole.old.example", ""],
    ];
    let mut text = csv_line(&header);
    for row in &rows {
        text.push_str(&csv_line(row));
    }
    std::fs::write(scenario.path("ptr.csv"), &text).unwrap();
    let mut book = rust_xlsxwriter::Workbook::new();
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| c.to_string()).collect()).collect();
    add_sheet_rows(&mut book, "Sheet1", &header, &rows);
    book.save(scenario.path("ptr.xlsx")).unwrap();
    let (code, stderr) = scenario.enrich(&[&scenario.path("ptr.csv"), &scenario.path("ptr.xlsx")], &[]);
    assert_eq!(code, 0, "{stderr}");
    let csv =
        read_csv_table(&std::fs::read(scenario.outbox().join("ptr.csv")).unwrap(), encoding_rs::WINDOWS_1252);
    let (xlsx, _) = read_xlsx_sheet(&scenario.outbox().join("ptr.xlsx"), "Sheet1");
    for table in [&csv, &xlsx] {
        assert_eq!(table.get("198.51.100.99", "Reverse DNS"), "old-name.example.net");
        assert_eq!(table.get("198.51.100.99", "Sinkhole"), "X");
        assert_eq!(table.get("ptr.example.net", "IP Address"), "198.51.100.99");
        assert_eq!(table.get("ptr.example.net", "Reverse DNS"), "checked by hand");
        assert_eq!(table.get("ptr.example.net", "Sinkhole"), "X");
        // A sinkhole name already in the row still counts when the PTR name is an ordinary one.
        assert_eq!(table.get("203.0.113.45", "Sinkhole"), "X");
    }
}

#[test]
fn header_gains_missing_columns_in_order() {
    let scenario = Scenario::new();
    let input = scenario.path("old.csv");
    std::fs::write(
        &input,
        b"\"Scanned Item\",\"WHOIS\"\r\n\"203.0.113.45\",\"\"\r\n\"cdn.example.co.uk\"\r\n",
    )
    .unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");
    let out = std::fs::read_to_string(scenario.outbox().join("old.csv")).unwrap();
    let mut lines = out.split("\r\n");
    assert_eq!(
        lines.next().unwrap(),
        "\"Scanned Item\",\"WHOIS\",\"Seclytics Reputation and Reason\",\"Seclytics Associated File Metadata\",\
         \"Seclytics File Count\",\"Validation\",\"Keyword Watch List\",\"URL Watch List\",\"IP Domain Watch List\",\
         \"Detection Name Watch List\""
    );
    assert!(lines.next().unwrap().starts_with("\"203.0.113.45\",\"EXAMPLE-HOSTING-AS\",\"scanner^malicious"));
    // The short row is padded only as far as its last filled cell.
    assert_eq!(
        lines.next().unwrap(),
        "\"cdn.example.co.uk\",\"\",\"malware^formbook\",\"application/x-dosexec\",\"1\",\"Tranco top 10k\",\"tranco\",\".exe   /upd/\""
    );
}

/// An analyst's note in a column without a header (right of the last header cell) is data: the columns the
/// enricher appends start after the widest row, so the note never sits under `Seclytics Reputation and
/// Reason` (where it would read as SecLytics' verdict and stop the real fill). CSV and XLSX alike.
#[test]
fn appended_columns_start_after_data_in_columns_without_a_header() {
    let scenario = Scenario::new();
    let csv_in = scenario.path("notes.csv");
    std::fs::write(
        &csv_in,
        b"\"Scanned Item\",\"WHOIS\"\r\n\"203.0.113.45\",\"\",\"analyst: ticket 4711\"\r\n\"203.0.113.45\",\"\"\r\n",
    )
    .unwrap();
    let xlsx_in = scenario.path("notes.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet().set_name("Intel").unwrap();
    sheet.write_string(0, 0, "Scanned Item").unwrap();
    sheet.write_string(0, 1, "WHOIS").unwrap();
    sheet.write_string(1, 0, "203.0.113.45").unwrap();
    sheet.write_string(1, 2, "analyst: ticket 4711").unwrap();
    sheet.write_string(2, 0, "203.0.113.45").unwrap();
    book.save(&xlsx_in).unwrap();
    let (code, stderr) = scenario.enrich(&[&csv_in, &xlsx_in], &[]);
    assert_eq!(code, 0, "{stderr}");

    let csv_out = std::fs::read(scenario.outbox().join("notes.csv")).unwrap();
    let table = read_csv_table(&csv_out, encoding_rs::UTF_8);
    let (xlsx_table, _) = read_xlsx_sheet(&scenario.outbox().join("notes.xlsx"), "Intel");
    for (format, table) in [("CSV", &table), ("XLSX", &xlsx_table)] {
        let reputation = table.column("Seclytics Reputation and Reason");
        assert!(reputation > 2, "{format}: appended at column {reputation}, over the note's column");
        assert_eq!(table.header[2], "", "{format}: the note's column got a header");
        for row in &table.rows {
            assert!(row[reputation].starts_with("scanner^malicious"), "{format}: {row:?}");
        }
        assert_eq!(table.rows[0][2], "analyst: ticket 4711", "{format}");
    }
    assert!(csv_out.starts_with(b"\"Scanned Item\",\"WHOIS\",\"\",\"Seclytics Reputation and Reason\""));

    // Empty (or blank) trailing fields are no data: they do not push the appended columns out.
    let trailing = scenario.path("trailing.csv");
    std::fs::write(&trailing, b"\"Scanned Item\",\"WHOIS\"\r\n\"203.0.113.45\",\"\",\"\",\" \",,\"\"\r\n")
        .unwrap();
    let (code, stderr) = scenario.enrich(&[&trailing], &[]);
    assert_eq!(code, 0, "{stderr}");
    let table =
        read_csv_table(&std::fs::read(scenario.outbox().join("trailing.csv")).unwrap(), encoding_rs::UTF_8);
    assert_eq!(table.column("Seclytics Reputation and Reason"), 2, "{:?}", table.header);
}

/// Every file `enrich` publishes — workbook, Seclytic logs, report, error log — has the mode of any new file
/// (0666 less the umask), not the owner-only mode of the temporary file it was written as: the next module
/// reading the outbox, or an analyst, may be another account. Run with umask 022: 0644 expected.
#[cfg(unix)]
#[test]
fn published_files_are_readable_like_any_new_file() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let scenario = Scenario::new();
    let input = scenario.path("book.csv");
    std::fs::write(&input, ip_csv_bytes()).unwrap();
    let outbox = scenario.outbox();
    let mut command = scenario.enrich_command(&[&input], &[], &outbox);
    // SAFETY: `umask` is async-signal-safe and touches only the child's own mask.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let published: Vec<PathBuf> = walk(&outbox);
    let names: Vec<String> =
        published.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for wanted in ["book.csv", "book.csv.report.json", "VTTL_Error.log"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} missing: {names:?}");
    }
    assert!(names.iter().any(|n| n.contains("_Seclytic_")), "no log: {names:?}");
    for path in &published {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{path:?} has mode {mode:o}");
    }
}

/// A workbook of 1 100 sheets is written with a temporary file per sheet held open until it is packed: under
/// the common soft open-file limit of 1 024 it failed with "Too many open files". The program raises its soft
/// limit to the hard one at start; run here with the soft limit at 1 024 (the hard one unchanged).
#[cfg(unix)]
#[test]
fn a_workbook_of_1100_sheets_is_written_under_a_soft_limit_of_1024_open_files() {
    use std::os::unix::process::CommandExt;
    const SHEETS: usize = 1100;
    // SAFETY: getrlimit only writes the struct passed to it.
    let hard = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_max
    };
    if hard < 1300 {
        eprintln!(
            "skipped: the hard open-file limit here is {hard}, too low for {SHEETS} sheets in any case"
        );
        return;
    }
    let scenario = Scenario::new();
    let input = scenario.path("many.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    let first = book.add_worksheet().set_name("Threat Intelligence").unwrap();
    for (c, h) in HEADER.iter().enumerate() {
        first.write_string(0, c as u16, *h).unwrap();
    }
    first.write_string(1, 0, "203.0.113.45").unwrap();
    for i in 2..=SHEETS {
        book.add_worksheet()
            .set_name(format!("Notes {i}"))
            .unwrap()
            .write_string(0, 0, format!("note {i}"))
            .unwrap();
    }
    book.save(&input).unwrap();
    let outbox = scenario.outbox();
    let mut command = scenario.enrich_command(&[&input], &[], &outbox);
    // SAFETY: setrlimit is async-signal-safe and changes only the child's own limit.
    unsafe {
        command.pre_exec(|| {
            let mut limit: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = 1024;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let enriched = outbox.join("many.xlsx");
    let book: calamine::Xlsx<_> = calamine::open_workbook(&enriched).unwrap();
    assert_eq!(book.sheet_names().len(), SHEETS);
    let (table, _) = read_xlsx_sheet(&enriched, "Threat Intelligence");
    let whois = table.header.iter().position(|h| h == "WHOIS").unwrap();
    assert!(!table.rows[0][whois].is_empty(), "the indicator was enriched: {:?}", table.rows[0]);
    let (last, _) = read_xlsx_sheet(&enriched, &format!("Notes {SHEETS}"));
    assert_eq!(last.header, vec![format!("note {SHEETS}")]);
}

fn read_log(outbox: &Path, prefix: &str) -> Vec<String> {
    let entry = std::fs::read_dir(outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} log"));
    let text = std::fs::read_to_string(entry).unwrap();
    assert!(text.ends_with("\r\n") && !text.replace("\r\n", "").contains('\n'), "CRLF lines");
    text.split("\r\n").filter(|l| !l.is_empty()).map(String::from).collect()
}

#[test]
fn log_files_lines() {
    let (scenario, _) = run_csv();
    let outbox = scenario.outbox();
    // IP items ignore context IPs (rule 1), and no host of the scenario has any: no IPs log is created.
    let names: Vec<String> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with("IPs_Seclytic_")), "{names:?}");
    assert_eq!(
        read_log(&outbox, "Hashes_Seclytic_"),
        [
            "203.0.113.45|5d0c8e2a4f6b1d3e7a9c0b2d4f6e8a1c3b5d7f9e0a2c4b6d8e1f3a5c7b9d0e2f",
            "203.0.113.45|9f2c4e1a7b3d5f608e1c2b4a6d8f0e3c5a7b9d1f3e5c7a9b0d2f4e6a8c0b1d3e",
            "203.0.113.45|0b7e3d9a1c5f2e8d4b6a0c3e7f9d1b5a2c4e6f8a0d3b5c7e9f1a2b4c6d8e0f1a",
            "203.0.113.45|6f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "cdn.example.co.uk|5d0c8e2a4f6b1d3e7a9c0b2d4f6e8a1c3b5d7f9e0a2c4b6d8e1f3a5c7b9d0e2f",
        ]
    );
    assert_eq!(
        read_log(&outbox, "URLs_Seclytic_"),
        [
            "203.0.113.45|http://update-check.example.com/gate.php?id=7",
            "cdn.example.co.uk|http://cdn.example.co.uk/upd/inv.exe",
            "cdn.example.co.uk|HTTP://CDN.example.co.uk/x",
        ]
    );
    assert_eq!(
        read_log(&outbox, "references_Seclytic_"),
        [
            "203.0.113.45|https://www.hybrid-analysis.com/sample/9f2c",
            "login.example.net|https://www.phishtank.com/phish_detail.php?id=1",
            "second.example.net|https://www.phishtank.com/phish_detail.php?id=1",
        ]
    );
    let errors = std::fs::read_to_string(outbox.join("VTTL_Error.log")).unwrap();
    assert_eq!(errors.lines().count(), 1, "{errors}");
    assert!(errors.contains("203.0.113.99"), "{errors}");
}

/// A related IP written in its IPv4-mapped IPv6 form (`::ffff:203.0.113.45`) is that IPv4 address (SPEC §5 rule 1):
/// it is checked against the IP/domain watch list, whose `203.0.113.45|C2 list` entry it matches, and logged in
/// its IPv4 form, as indicators and passive-DNS answers already are. An entry written in the mapped form matches
/// the IPv4 item too.
#[test]
fn a_related_ip_in_ipv4_mapped_form_is_its_ipv4_address() {
    let scenario = Scenario::new();
    scenario.api.set_document(
        "/hosts/mapped.example.com",
        json!({"context": {"ips": {"gtmpdns": ["::ffff:203.0.113.45", "::FFFF:CB00:712D"]}},
               "id": "mapped.example.com", "type": "host"}),
    );
    scenario.api.set_document("/ips/198.51.100.61", json!({"id": "198.51.100.61", "type": "ip"}));
    let lists = scenario.path("lists/IPDwatchlist.txt");
    let entries = std::fs::read_to_string(&lists).unwrap() + "::ffff:198.51.100.61|Mapped entry\r\n";
    std::fs::write(&lists, entries).unwrap();
    let table = scenario.enrich_csv(
        "mapped.csv",
        "\"Scanned Item\",\"IP Domain Watch List\"\r\n\"mapped.example.com\",\"\"\r\n\"198.51.100.61\",\"\"\r\n",
    );
    assert_eq!(table.get("mapped.example.com", "IP Domain Watch List"), "C2 list/203.0.113.45");
    assert_eq!(table.get("198.51.100.61", "IP Domain Watch List"), "Mapped entry/::ffff:198.51.100.61");
    assert_eq!(read_log(&scenario.outbox(), "IPs_Seclytic_"), ["mapped.example.com|203.0.113.45"]);
}

#[test]
fn log_switches_and_related_ips_log() {
    let scenario = Scenario::new();
    // A host whose context lists an IP: logged to IPs_Seclytic.
    scenario.api.set_document(
        "/hosts/rel.example.com",
        json!({"context": {"ips": {"gtmpdns": ["198.51.100.7", "198.51.100.7"]},
                           "urls": {"x": ["http://rel.example.com/a"]}}, "id": "rel.example.com", "type": "host"}),
    );
    let input = scenario.path("rel.csv");
    std::fs::write(&input, "\"Scanned Item\"\r\n\"rel.example.com\"\r\n").unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(read_log(&scenario.outbox(), "IPs_Seclytic_"), ["rel.example.com|198.51.100.7"]);
    // With LogIPs/LogURLs off those logs are not written.
    let ini = std::fs::read_to_string(scenario.path("vttl.ini")).unwrap()
        + "[vendor]\nLogIPs = False\nLogURLs = false\n";
    std::fs::write(scenario.path("vttl.ini"), ini).unwrap();
    std::fs::remove_dir_all(scenario.outbox()).unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");
    let names: Vec<String> = std::fs::read_dir(scenario.outbox())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with("IPs_") && !n.starts_with("URLs_")), "{names:?}");
}

#[test]
fn report_numbers() {
    let (scenario, _) = run_csv();
    let report: Value =
        serde_json::from_slice(&std::fs::read(scenario.outbox().join("book.csv.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["rows"], 12);
    assert_eq!(report["skipped_indicators"], 1);
    assert_eq!(report["indicators"]["ip"], 4 + 3);
    assert_eq!(report["indicators"]["host"], 7);
    assert_eq!(report["rows_appended"], 3);
    assert_eq!(report["failed_lookups"], 1);
    assert_eq!(report["not_found"], 1); // 142.0.36.234 has no document
    assert_eq!(report["cache_hits"], 0);
    // 14 distinct lookups, the failing one tried twice (max_retries = 1).
    assert_eq!(report["api_requests"], 15);
    assert_eq!(scenario.api.request_count(), 15);
    assert_eq!(report["cells_filled"]["Seclytics File Count"], 13);
    assert_eq!(report["cells_filled"]["IP Address"], 6);
    assert_eq!(report["cells_filled"]["Sinkhole"], 4);
    let unique = report["unique_string"].as_str().unwrap();
    assert!(scenario.outbox().join(format!("URLs_Seclytic_{unique}.log")).exists());
    assert!(report["output"].as_str().unwrap().ends_with("book.csv"));
    assert!(report["duration_ms"].is_u64());

    // A second run is answered from the cache: no request except the one failed lookup (errors are never
    // cached), and the output has the same bytes.
    let before = scenario.api.request_count();
    let (code, stderr) = scenario.enrich(&[&scenario.path("book.csv")], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(scenario.api.request_count(), before + 2, "only the failed lookup is asked again");
    // The summary line counts in words a reader can take as they are.
    assert!(
        stderr.contains(": 12 rows, 14 indicators (2 API requests, 13 from cache, 0 reused, 0 offline,"),
        "{stderr}"
    );
    assert!(stderr.contains(" filled, 3 rows appended, "), "{stderr}");
    let second: Value =
        serde_json::from_slice(&std::fs::read(scenario.outbox().join("book_1.csv.report.json")).unwrap())
            .unwrap();
    assert_eq!(second["cache_hits"], 13);
    assert_eq!(
        std::fs::read(scenario.outbox().join("book.csv")).unwrap(),
        std::fs::read(scenario.outbox().join("book_1.csv")).unwrap()
    );
}

#[test]
fn token_appears_in_no_output() {
    let (scenario, _) = run_csv();
    let (code, stderr) = scenario.enrich(&[&scenario.path("book.csv")], &["--refresh"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains(TOKEN));
    // The requests did carry it (query auth), so the test would notice a leak.
    assert!(scenario.api.requests().iter().all(|r| r.query_param("access_token").as_deref() == Some(TOKEN)));
    let mut files = 0;
    for entry in walk(scenario.dir.path()) {
        if entry.file_name().unwrap() == "vttl.ini" {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()), "token in {}", entry.display());
        files += 1;
    }
    assert!(files >= 8, "{files}");
}

#[test]
fn refused_token_stops_the_run_with_exit_2() {
    let scenario = Scenario::new();
    scenario.api.require_token(Some("a-different-token"));
    let input = scenario.path("book.csv");
    std::fs::write(&input, ip_csv_bytes()).unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("refused the access token"), "{stderr}");
    assert!(!stderr.contains(TOKEN));
    assert!(!scenario.outbox().join("book.csv").exists());
    // The outbox's error log says why (SPEC §7): one line, without the token.
    let error_log = std::fs::read_to_string(scenario.outbox().join("VTTL_Error.log")).unwrap();
    assert_eq!(error_log.lines().count(), 1, "{error_log}");
    assert!(error_log.contains("CRITICAL: SecLytics refused the access token (HTTP 401)"), "{error_log}");
    assert!(!error_log.contains(TOKEN));
}

/// With no token configured, the start says so, and the refusal says that no token is configured — not that
/// the token is wrong — on stderr and in the error log.
#[test]
fn a_missing_token_is_reported_as_missing_not_as_wrong() {
    let scenario = Scenario::new();
    let ini = std::fs::read_to_string(scenario.path("vttl.ini")).unwrap();
    let without_token = ini.replace(&format!("access_token = {TOKEN}\n"), "");
    assert_ne!(ini, without_token);
    std::fs::write(scenario.path("vttl.ini"), without_token).unwrap();
    let input = scenario.path("book.csv");
    std::fs::write(&input, ip_csv_bytes()).unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no access token is configured"), "{stderr}");
    assert!(stderr.contains("SECLYTICS_ACCESS_TOKEN"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("no access token is configured"), "the reason of the stop: {last}");
    let error_log = std::fs::read_to_string(scenario.outbox().join("VTTL_Error.log")).unwrap();
    assert!(error_log.contains("no access token is configured"), "{error_log}");
}

/// Started where there is no `vttl.ini` (and no `--config`), the program says so, and that the default
/// watch-list folder is missing, instead of going on silently with every default.
#[test]
fn a_missing_default_ini_and_watch_list_folder_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vttl-seclytics"))
        .args(["enrich", "no-such-book.csv", "--outbox", "out"])
        .current_dir(dir.path())
        .env_remove("SECLYTICS_ACCESS_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "the one file fails: {stderr}");
    assert!(stderr.contains("no vttl.ini in") && stderr.contains("--config"), "{stderr}");
    assert!(stderr.contains("watch-list folder") && stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("no access token is configured"), "{stderr}");
}

/// The stderr of `enrich` on a workbook that is not there, in a temporary folder holding `ini` as `vttl.ini`
/// and an empty `lists/` folder: what the program says about its configuration before any workbook.
fn warnings_of_enrich_with_ini(ini: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lists")).unwrap();
    std::fs::write(dir.path().join("vttl.ini"), ini).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vttl-seclytics"))
        .arg("--config")
        .arg(dir.path().join("vttl.ini"))
        .args(["enrich", "no-such-book.csv", "--outbox"])
        .arg(dir.path().join("out"))
        .current_dir(dir.path())
        .env_remove("SECLYTICS_ACCESS_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr.into_owned()
}

/// A warning about a whole list file (here a sinkhole file that is not there) names the file without a line
/// number: it said `sinkholes.txt:0:`, a line no file has.
#[test]
fn a_warning_about_a_whole_list_file_names_no_line_zero() {
    let stderr = warnings_of_enrich_with_ini(
        "[watchlists]\ndir = lists\nsinkholes = no-such-sinkholes.txt\n[main]\nreverseDNS = False\n",
    );
    assert!(stderr.contains("no-such-sinkholes.txt: sinkhole list not found"), "{stderr}");
    assert!(!stderr.contains(".txt:0:"), "{stderr}");
}

/// A key of our sections under a misspelled section name (or above the first section) is ignored there —
/// `offline_dir` in `[seclytic]` would send every lookup to the live API — and a warning names it. So does
/// an `include` glob list written with `;`, which would take no file.
#[test]
fn a_key_under_a_misspelled_section_is_named_in_a_warning() {
    let stderr = warnings_of_enrich_with_ini(
        "concurrency = 2\n[seclytic]\noffline_dir = answers\n[seclytics]\ntimeout_secs = 5\ntimeout_secs = 9\n\
         [watch]\ninclude = *.csv;*.xlsx, *.xls\n",
    );
    assert!(stderr.contains("`offline_dir` in [seclytic] is ignored: it is read in [seclytics]"), "{stderr}");
    assert!(stderr.contains("`concurrency` above the first section is ignored"), "{stderr}");
    assert!(
        stderr.contains("`timeout_secs` is set more than once in [seclytics]; the first one is used"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the `include` glob `*.csv;*.xlsx` holds a `;`: globs are separated by commas"),
        "{stderr}"
    );
}

/// On Windows the shell leaves `*.csv` to the program: `enrich` expands it (run under Wine by `.ci/run`).
#[test]
#[cfg(windows)]
fn enrich_expands_wildcards_on_windows() {
    let scenario = Scenario::new();
    let books = scenario.path("books");
    std::fs::create_dir(&books).unwrap();
    for name in ["one.csv", "two.csv"] {
        std::fs::write(books.join(name), "\"Scanned Item\"\r\n\"198.51.100.53\"\r\n").unwrap();
    }
    let (code, stderr) = scenario.enrich(&[&books.join("*.csv")], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        scenario.outbox().join("one.csv").exists() && scenario.outbox().join("two.csv").exists(),
        "{stderr}"
    );
}

/// When no lookup at all succeeds (an API that cannot be reached), the workbook is still published with those
/// cells empty and the run succeeds (SPEC §8) — and a warning says plainly that every lookup failed.
#[test]
fn a_workbook_whose_every_lookup_failed_is_said_so() {
    let scenario = Scenario::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let ini = std::fs::read_to_string(scenario.path("vttl.ini")).unwrap();
    let unreachable =
        ini.replace(&format!("base_url = {}", scenario.api.base_url()), &format!("base_url = {url}"));
    assert_ne!(ini, unreachable);
    std::fs::write(scenario.path("vttl.ini"), unreachable).unwrap();
    let input = scenario.path("book.csv");
    std::fs::write(&input, "\"Scanned Item\",\"WHOIS\"\r\n\"198.51.100.53\",\"\"\r\n").unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("every lookup failed") && stderr.contains("VTTL_Error.log"), "{stderr}");
    assert!(scenario.outbox().join("book.csv").exists());
}

#[test]
fn bad_files_fail_alone_with_exit_1() {
    let scenario = Scenario::new();
    let good = scenario.path("good.csv");
    std::fs::write(&good, "\"Scanned Item\"\r\n\"198.51.100.53\"\r\n").unwrap();
    let not_vttl = scenario.path("other.csv");
    std::fs::write(&not_vttl, "\"Name\",\"Value\"\r\n\"a\",\"b\"\r\n").unwrap();
    let corrupt = scenario.path("broken.xlsx");
    std::fs::write(&corrupt, b"PK\x03\x04 this is not a workbook").unwrap();
    let (code, stderr) = scenario.enrich(&[&not_vttl, &good, &corrupt], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(scenario.outbox().join("good.csv").exists());
    assert!(!scenario.outbox().join("other.csv").exists());
    let errors = std::fs::read_to_string(scenario.outbox().join("VTTL_Error.log")).unwrap();
    assert!(errors.contains("other.csv") && errors.contains("not a VTTL spreadsheet"), "{errors}");
    assert!(errors.contains("broken.xlsx"), "{errors}");
    // Inputs are untouched.
    assert_eq!(std::fs::read(&not_vttl).unwrap(), b"\"Name\",\"Value\"\r\n\"a\",\"b\"\r\n");
}

/// A folder named instead of its workbooks (`enrich books`) was "unsupported file type", and that message left
/// out `.xlsm`, which `enrich` takes; a text file under an `.xlsx` name was the zip library's "Could not find
/// EOCD".
#[test]
fn a_folder_an_unknown_type_and_text_under_an_excel_name_are_named_plainly() {
    let scenario = Scenario::new();
    let folder = scenario.path("books");
    std::fs::create_dir(&folder).unwrap();
    let notes = scenario.path("notes.txt");
    std::fs::write(&notes, "Scanned Item\r\n198.51.100.53\r\n").unwrap();
    let text = scenario.path("export.xlsx");
    std::fs::write(&text, "Scanned Item\r\n198.51.100.53\r\n").unwrap();
    // Cut off inside the zip signature: a truncated workbook, not text.
    let cut = scenario.path("cut.xlsx");
    std::fs::write(&cut, b"PK\x03").unwrap();
    let (code, stderr) = scenario.enrich(&[&folder, &notes, &text, &cut], &[]);
    assert_eq!(code, 1, "{stderr}");
    let errors = std::fs::read_to_string(scenario.outbox().join("VTTL_Error.log")).unwrap();
    let line = |name: &str| errors.lines().find(|l| l.contains(name)).unwrap_or_default().to_string();
    let books = line("books");
    assert!(books.contains("a folder, not a workbook") && books.contains("*.csv"), "{errors}");
    assert!(line("notes.txt").contains("expected .csv, .xlsx, .xlsm or .xls"), "{errors}");
    let export = line("export.xlsx");
    assert!(export.contains("not an Excel workbook: the file holds text"), "{errors}");
    assert!(!export.contains("EOCD"), "{errors}");
    let cut = line("cut.xlsx");
    assert!(cut.contains("corrupt or unreadable workbook") && !cut.contains("holds text"), "{errors}");
    assert_eq!(scenario.api.request_count(), 0, "{stderr}");
}

/// In a chain the next stage takes `book.csv` out of the outbox and leaves `book.csv.report.json` (reports are
/// never inputs). A new `book.csv` must not then be published beside that report of another run, its own report
/// pushed to `book.csv.report_1.json`: it takes the next name whose report name is free too, and its report is
/// `<its name>.report.json`, describing it.
#[test]
fn a_workbook_is_never_published_beside_another_runs_report() {
    let scenario = Scenario::new();
    let first = scenario.path("book.csv");
    std::fs::write(&first, ip_csv_bytes()).unwrap();
    assert_eq!(scenario.enrich(&[&first], &[]).0, 0);
    std::fs::remove_file(scenario.outbox().join("book.csv")).unwrap();
    let other = scenario.path("other");
    std::fs::create_dir_all(&other).unwrap();
    let second = other.join("book.csv");
    std::fs::write(&second, csv_line(&["Scanned Item"]) + &csv_line(&["198.51.100.53"])).unwrap();
    let (code, stderr) = scenario.enrich(&[&second], &[]);
    assert_eq!(code, 0, "{stderr}");
    let names: std::collections::BTreeSet<String> = std::fs::read_dir(scenario.outbox())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("book"))
        .collect();
    let expected: std::collections::BTreeSet<String> =
        ["book.csv.report.json", "book_1.csv", "book_1.csv.report.json"].map(String::from).into();
    assert_eq!(names, expected);
    let report: Value =
        serde_json::from_slice(&std::fs::read(scenario.outbox().join("book_1.csv.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["input"].as_str().unwrap(), second.to_str().unwrap());
    let old: Value =
        serde_json::from_slice(&std::fs::read(scenario.outbox().join("book.csv.report.json")).unwrap())
            .unwrap();
    assert_eq!(old["input"].as_str().unwrap(), first.to_str().unwrap());
}

/// When every name for an output is taken in the outbox (`b.csv`, `b_1.csv` … `b_9999.csv` — anyone who can
/// write there, the next stage of a chain, could do that), that file fails with the reason; the other files
/// still go through and the run is not stopped as if the outbox could not be written.
#[test]
fn an_output_without_a_free_name_fails_alone() {
    let scenario = Scenario::new();
    let outbox = scenario.outbox();
    std::fs::create_dir_all(&outbox).unwrap();
    std::fs::write(outbox.join("b.csv"), "").unwrap();
    for n in 1..10_000 {
        std::fs::write(outbox.join(format!("b_{n}.csv")), "").unwrap();
    }
    let (b, c) = (scenario.path("b.csv"), scenario.path("c.csv"));
    for path in [&b, &c] {
        std::fs::write(path, csv_line(&["Scanned Item"]) + &csv_line(&["198.51.100.53"])).unwrap();
    }
    let (code, stderr) = scenario.enrich(&[&b, &c], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(outbox.join("c.csv").exists(), "{stderr}");
    let errors = std::fs::read_to_string(outbox.join("VTTL_Error.log")).unwrap();
    assert!(errors.contains("b.csv") && errors.contains("no free name"), "{errors}");
    assert_eq!(std::fs::read(outbox.join("b_1.csv")).unwrap(), b"", "an existing output was replaced");
}

/// A sheet with data in its last possible column (XFD) leaves no room for the columns to append after it:
/// refused with that reason before any lookup is spent (it used to fail at the write, after the lookups).
#[test]
fn a_sheet_with_data_in_the_last_column_is_refused_before_any_lookup() {
    let scenario = Scenario::new();
    let input = scenario.path("wide.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    sheet.write_string(0, 0, "Scanned Item").unwrap();
    sheet.write_string(1, 0, "203.0.113.45").unwrap();
    sheet.write_string(1, 16_383, "note in XFD").unwrap();
    book.save(&input).unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 1, "{stderr}");
    let errors = std::fs::read_to_string(scenario.outbox().join("VTTL_Error.log")).unwrap();
    assert!(errors.contains("wide.xlsx") && errors.contains("no room"), "{errors}");
    assert_eq!(scenario.api.requests().len(), 0, "lookups were spent");

    // A sheet name is the file's text: a newline in it must not forge a line of the log on stderr.
    let forged = scenario.path("forged.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    sheet.write_string(0, 0, "Scanned Item").unwrap();
    sheet.write_string(1, 16_383, "note in XFD").unwrap();
    book.save(&forged).unwrap();
    let bytes = std::fs::read(&forged).unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut rewritten = zip::ZipWriter::new(std::fs::File::create(&forged).unwrap());
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).unwrap();
        let name = entry.name().unwrap().into_owned();
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut text).unwrap();
        if name == "xl/workbook.xml" {
            let xml = String::from_utf8(text).unwrap();
            text = xml.replace("name=\"Sheet1\"", "name=\"S&#10;FORGED LINE\"").into_bytes();
        }
        rewritten.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
        std::io::Write::write_all(&mut rewritten, &text).unwrap();
    }
    rewritten.finish().unwrap();
    let (code, stderr) = scenario.enrich(&[&forged], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("FORGED LINE"), "{stderr}");
    assert!(stderr.lines().all(|line| !line.starts_with("FORGED")), "a forged line: {stderr}");

    // The same for a CSV whose data reaches field 16 384.
    let csv = scenario.path("wide.csv");
    let mut row = vec![String::new(); 16_384];
    row[0] = "203.0.113.45".into();
    row[16_383] = "note in XFD".into();
    std::fs::write(&csv, format!("\"Scanned Item\"\r\n{}\r\n", row.join(","))).unwrap();
    let (code, stderr) = scenario.enrich(&[&csv], &[]);
    assert_eq!(code, 1, "{stderr}");
    let errors = std::fs::read_to_string(scenario.outbox().join("VTTL_Error.log")).unwrap();
    assert!(errors.contains("wide.csv") && errors.contains("no room"), "{errors}");
    assert_eq!(scenario.api.requests().len(), 0, "lookups were spent");
}

/// A legal but long name (the report's name, 12 bytes longer, would pass the file system's 255) is refused
/// before any lookup, and the run goes on — it used to stop as "outbox not writable" after publishing.
#[test]
fn a_name_too_long_for_its_report_is_refused_before_any_lookup() {
    let scenario = Scenario::new();
    let long = scenario.path(&format!("{}.csv", "a".repeat(245)));
    let good = scenario.path("good.csv");
    for path in [&long, &good] {
        std::fs::write(path, csv_line(&["Scanned Item"]) + &csv_line(&["198.51.100.53"])).unwrap();
    }
    let (code, stderr) = scenario.enrich(&[&long, &good], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(scenario.outbox().join("good.csv").exists());
    assert!(scenario.outbox().join("good.csv.report.json").exists());
    let errors = std::fs::read_to_string(scenario.outbox().join("VTTL_Error.log")).unwrap();
    assert!(errors.contains("too long"), "{errors}");
    assert_eq!(scenario.api.count_path("/ips/198.51.100.53"), 1, "only good.csv looked it up");
}

/// A quote never closed makes the last field run to the end of the file: fills written into that record
/// would land inside the open field (changing the analyst's cell), and appended passive-DNS rows after it
/// would vanish into it. Such a file (most likely cut short) is refused with a reason naming the record,
/// whether the open quote is in a row to fill or in a later one; nothing is published for it.
#[test]
fn a_csv_whose_last_quote_never_closes_is_refused() {
    let scenario = Scenario::new();
    let cases: [(&str, &[u8], &str); 3] = [
        ("open_fill.csv", b"\"Scanned Item\",\"Note\"\r\n\"198.51.100.53\",\"abc", "record 2"),
        (
            "open_after.csv",
            b"\"Scanned Item\",\"Note\"\r\n\"login-portal.example.net\",\"\"\r\n\"\",\"unclosed note",
            "record 3",
        ),
        ("open_header.csv", b"\"Scanned Item\",\"Note\r\n198.51.100.53,x\r\n", "record 1"),
    ];
    let mut inputs = Vec::new();
    for (name, bytes, _) in &cases {
        let path = scenario.path(name);
        std::fs::write(&path, bytes).unwrap();
        inputs.push(path);
    }
    let good = scenario.path("good.csv");
    std::fs::write(&good, "\"Scanned Item\"\r\n\"198.51.100.53\"\r\n").unwrap();
    inputs.push(good);
    let refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let (code, stderr) = scenario.enrich(&refs, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(scenario.outbox().join("good.csv").exists(), "{stderr}");
    let errors = std::fs::read_to_string(scenario.outbox().join("VTTL_Error.log")).unwrap();
    for (name, bytes, record) in &cases {
        assert!(!scenario.outbox().join(name).exists(), "{name} was published");
        let line = errors.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name}: {errors}"));
        assert!(line.contains("never closed") && line.contains(record), "{line}");
        assert_eq!(std::fs::read(scenario.path(name)).unwrap(), *bytes, "{name} changed");
    }
}

/// Colour (SGR) sequences in `text`: `ESC [ digits/semicolons m`.
fn colour_codes(text: &str) -> usize {
    regex::Regex::new("\x1b\\[[0-9;]*m").unwrap().find_iter(text).count()
}

/// Logs carry colour codes only when a person reads them at a terminal: redirected to a pipe (as by a service
/// or `2> run.log`) they are plain text, and `NO_COLOR` turns colour off at a terminal too. The terminal is
/// the pseudo-terminal of util-linux `script` (an essential package on Debian, so present on CI).
#[test]
fn logs_are_coloured_only_at_a_terminal_without_no_color() {
    let scenario = Scenario::new();
    let not_vttl = scenario.path("other.csv");
    std::fs::write(&not_vttl, "\"Name\",\"Value\"\r\n\"a\",\"b\"\r\n").unwrap();

    let (code, piped) = scenario.enrich(&[&not_vttl], &[]);
    assert_eq!(code, 1, "{piped}");
    assert!(piped.contains("ERROR") && piped.contains("not a VTTL spreadsheet"), "{piped}");
    assert!(!piped.contains('\u{1b}'), "escape codes in a piped log: {piped:?}");

    if cfg!(not(target_os = "linux")) {
        return;
    }
    let at_terminal = |no_color: Option<&str>| {
        let command = scenario.enrich_command(&[&not_vttl], &[], &scenario.outbox());
        // One shell command line, every word single-quoted.
        let quote = |word: &std::ffi::OsStr| format!("'{}'", word.to_string_lossy().replace('\'', "'\\''"));
        let words: Vec<String> =
            std::iter::once(command.get_program()).chain(command.get_args()).map(quote).collect();
        let line = words.join(" ");
        let mut script = Command::new("script");
        script.args(["-qec", &line, "/dev/null"]).env_remove("SECLYTICS_ACCESS_TOKEN");
        match no_color {
            Some(value) => script.env("NO_COLOR", value),
            None => script.env_remove("NO_COLOR"),
        };
        let output = script.output().expect("util-linux `script` runs the program at a terminal");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(text.contains("not a VTTL spreadsheet"), "{text:?}");
        text
    };
    let coloured = at_terminal(None);
    assert!(colour_codes(&coloured) > 0, "no colour at a terminal: {coloured:?}");
    let plain = at_terminal(Some("1"));
    assert_eq!(colour_codes(&plain), 0, "colour despite NO_COLOR: {plain:?}");
    // An empty NO_COLOR does not count (no-color.org).
    assert!(colour_codes(&at_terminal(Some(""))) > 0);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn an_indicator_shared_by_two_workbooks_is_requested_once_per_run() {
    let scenario = Scenario::new();
    // No cache at all: only the run's own memory can avoid the second request.
    let ini = std::fs::read_to_string(scenario.path("vttl.ini"))
        .unwrap()
        .replace("cache = cache.sqlite", "cache =");
    std::fs::write(scenario.path("vttl.ini"), ini).unwrap();
    let a = scenario.path("a.csv");
    let b = scenario.path("b.csv");
    std::fs::write(&a, "\"Scanned Item\"\r\n\"203.0.113.45\"\r\n\"cdn.example.co.uk\"\r\n").unwrap();
    std::fs::write(&b, "\"Scanned Item\"\r\n\"203.0.113.45\"\r\n").unwrap();
    let (code, stderr) = scenario.enrich(&[&a, &b], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(scenario.api.count_path("/ips/203.0.113.45"), 1);
    let report: Value =
        serde_json::from_slice(&std::fs::read(scenario.outbox().join("b.csv.report.json")).unwrap()).unwrap();
    assert_eq!(report["api_requests"], 0);
    // Reused from the run's memory, not a cache hit: there is no cache.
    assert_eq!(report["cache_hits"], 0);
    assert_eq!(report["reused_answers"], 1);
    assert!(stderr.contains("(0 API requests, 0 from cache, 1 reused, 0 offline,"), "{stderr}");
    // Both outputs are filled alike.
    for name in ["a.csv", "b.csv"] {
        let out = std::fs::read_to_string(scenario.outbox().join(name)).unwrap();
        assert!(out.contains("\"203.0.113.45\",\"scanner^malicious^AgentTesla.XK"), "{name}: {out}");
    }
    // `--refresh` asks the API again, once per run.
    let (code, stderr) = scenario.enrich(&[&a, &b], &["--refresh"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(scenario.api.count_path("/ips/203.0.113.45"), 2);
}

/// The same indicator written differently (case, surrounding spaces) is one indicator: looked up once, counted
/// once, every row filled alike. (The CSV scan finds it through its table of distinct indicators, not its
/// table of raw cell texts.)
#[test]
fn an_indicator_written_several_ways_is_looked_up_once() {
    let scenario = Scenario::new();
    let input = scenario.path("spellings.csv");
    let spellings =
        ["203.0.113.45", " 203.0.113.45 ", "cdn.example.co.uk", "CDN.Example.CO.UK", " cdn.EXAMPLE.co.uk."];
    let mut text = csv_line(&["Scanned Item", "Seclytics Reputation and Reason"]);
    for spelling in spellings {
        text.push_str(&csv_line(&[spelling, ""]));
    }
    std::fs::write(&input, text).unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(scenario.api.count_path("/ips/203.0.113.45"), 1);
    assert_eq!(scenario.api.count_path("/hosts/cdn.example.co.uk"), 1);
    assert_eq!(scenario.api.requests().len(), 2, "no other request");
    let report: Value =
        serde_json::from_slice(&std::fs::read(scenario.outbox().join("spellings.csv.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["indicators"], serde_json::json!({"host": 1, "ip": 1}));
    let table =
        read_csv_table(&std::fs::read(scenario.outbox().join("spellings.csv")).unwrap(), encoding_rs::UTF_8);
    let reputations: Vec<&str> = table.rows.iter().map(|row| row[1].as_str()).collect();
    assert!(reputations[0].contains("AgentTesla"), "{reputations:?}");
    assert!(reputations[2].contains("formbook"), "{reputations:?}");
    assert_eq!(reputations[0], reputations[1]);
    assert!(reputations[2] == reputations[3] && reputations[3] == reputations[4], "{reputations:?}");
}

/// A workbook larger than the flush step (16 MiB) is flushed to disk while it is written, so that the flush
/// before its publication has little left to do; it comes out as a small one would.
#[test]
fn a_large_csv_workbook_is_flushed_to_disk_while_it_is_written() {
    let scenario = Scenario::new();
    let input = scenario.path("large.csv");
    let other_vendor = "x".repeat(2_000);
    let mut text = csv_line(&["Scanned Item", "Other Vendor", "Seclytics Reputation and Reason"]);
    let mut rows = 0;
    while text.len() < 18 << 20 {
        let item = if rows % 2 == 0 { "203.0.113.45" } else { "cdn.example.co.uk" };
        text.push_str(&csv_line(&[item, &other_vendor, ""]));
        rows += 1;
    }
    std::fs::write(&input, &text).unwrap();
    let (code, stderr) = scenario.enrich_logged(&input, &scenario.outbox());
    assert_eq!(code, 0, "{stderr}");
    assert!(logged_count(&stderr, "flushes") >= 1, "{stderr}");
    let table =
        read_csv_table(&std::fs::read(scenario.outbox().join("large.csv")).unwrap(), encoding_rs::UTF_8);
    assert_eq!(table.rows.len(), rows);
    assert!(table.rows.iter().all(|row| row[1] == other_vendor && !row[2].is_empty()));
    assert!(table.rows[0][2].contains("AgentTesla") && table.rows[1][2].contains("formbook"));
}

/// An `enrich` killed mid-run leaves its hidden temporary files in the outbox, named with its run
/// (`.@enrich-<machine>-<pid>.`); the next `enrich` on this machine deletes them, and nothing else, first.
#[cfg(target_os = "linux")]
#[test]
fn temporary_files_of_a_killed_enrich_are_deleted_by_the_next_run() {
    let scenario = Scenario::new();
    // Long enough for the write pass to take a while: one indicator on every row.
    let big = scenario.path("big.csv");
    let mut text = csv_line(&["Scanned Item", "Seclytics Reputation and Reason"]);
    for _ in 0..600_000 {
        text.push_str(&csv_line(&["203.0.113.45", ""]));
    }
    std::fs::write(&big, text).unwrap();
    let outbox = scenario.outbox();
    std::fs::create_dir_all(&outbox).unwrap();
    // A temporary file without an owner (an older version's, or another tool's) is never ours to delete.
    std::fs::write(outbox.join(".other.abc123.tmp"), "x").unwrap();
    let run_temps = |outbox: &Path| -> Vec<(String, u64)> {
        std::fs::read_dir(outbox)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                name.contains(".@enrich-").then_some((name, len))
            })
            .collect()
    };
    let mut child =
        scenario.enrich_command(&[&big], &[], &outbox).stderr(std::process::Stdio::null()).spawn().unwrap();
    let started = std::time::Instant::now();
    // The workbook's temporary file once it holds something (the outbox's writability probe is empty).
    while !run_temps(&outbox).iter().any(|(_, len)| *len > 0) {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "no temporary file appeared");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its temporary file was seen");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = run_temps(&outbox);
    assert!(!left.is_empty());
    for (name, _) in &left {
        assert!(name.contains(&format!("-{}.", child.id())), "{name}");
    }

    let small = scenario.path("small.csv");
    std::fs::write(&small, csv_line(&["Scanned Item"]) + &csv_line(&["203.0.113.45"])).unwrap();
    let (code, stderr) = scenario.enrich(&[&small], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("deleted {} temporary files that killed runs left", left.len())),
        "{stderr}"
    );
    assert_eq!(run_temps(&outbox), vec![], "every temporary file of the killed run deleted");
    assert!(outbox.join(".other.abc123.tmp").exists(), "a file without an owner is kept");
    assert!(outbox.join("small.csv").exists() && !outbox.join("big.csv").exists());
}

#[test]
fn long_free_text_values_are_cut_at_8000_characters() {
    let scenario = Scenario::new();
    let long_owner = "OWNER-".repeat(3000);
    let long_reason = "allow-listed because ".repeat(1000);
    scenario.api.set_document(
        "/ips/198.51.100.61",
        json!({"asn": {"description": long_owner}, "id": "198.51.100.61", "type": "ip", "whitelist": long_reason}),
    );
    let table = scenario.enrich_csv(
        "long.csv",
        "\"Scanned Item\",\"WHOIS\",\"Validation\"\r\n\"198.51.100.61\",\"\",\"\"\r\n",
    );
    let whois = table.get("198.51.100.61", "WHOIS");
    let validation = table.get("198.51.100.61", "Validation");
    assert_eq!(whois.chars().count(), 8000);
    assert!(long_owner.starts_with(&whois));
    assert_eq!(validation.chars().count(), 8000);
    assert!(long_reason.starts_with(&validation));
}

/// A cache that cannot be opened (here `cache = .`, a folder) is no reason to stop: the run goes on without
/// one, and the warning names the file and the setting to change.
#[test]
fn an_unusable_cache_file_is_named_with_its_setting_and_the_run_goes_on() {
    let scenario = Scenario::new();
    let ini = std::fs::read_to_string(scenario.path("vttl.ini")).unwrap();
    std::fs::write(scenario.path("vttl.ini"), ini.replace("cache = cache.sqlite", "cache = .")).unwrap();
    let input = scenario.path("nocache.csv");
    std::fs::write(&input, "\"Scanned Item\",\"WHOIS\"\r\n\"198.51.100.60\",\"\"\r\n").unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("cannot use cache file"), "{stderr}");
    assert!(
        stderr.contains(
            "(`cache` in the [seclytics] section of the ini); continuing without the response cache"
        ),
        "{stderr}"
    );
    assert!(scenario.outbox().join("nocache.csv").exists());
    assert_eq!(scenario.api.count_path("/ips/198.51.100.60"), 1);
}

/// A Windows-1252 CSV cannot hold every character of the API's text: such characters are written as `?` (a
/// documented decision), and a warning says how many new cells lost some, naming the file and the way out.
#[test]
fn characters_windows_1252_cannot_hold_become_question_marks_with_a_warning() {
    let scenario = Scenario::new();
    scenario.api.set_document(
        "/ips/198.51.100.63",
        json!({"asn": {"description": "Köln 日本 Telecom"}, "id": "198.51.100.63", "type": "ip",
               "whitelist": "Ωmega proxy"}),
    );
    scenario.api.set_document(
        "/ips/198.51.100.64",
        json!({"asn": {"description": "Zürich Net"}, "id": "198.51.100.64", "type": "ip"}),
    );
    let input = scenario.path("cp.csv");
    let rows = "\"Scanned Item\",\"WHOIS\",\"Validation\"\r\n\"198.51.100.63\",\"\",\"\"\r\n\
                \"198.51.100.64\",\"\",\"\"\r\n";
    std::fs::write(&input, rows).unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");
    let table =
        read_csv_table(&std::fs::read(scenario.outbox().join("cp.csv")).unwrap(), encoding_rs::WINDOWS_1252);
    assert_eq!(table.get("198.51.100.63", "WHOIS"), "Köln ?? Telecom");
    assert_eq!(table.get("198.51.100.63", "Validation"), "?mega proxy");
    assert_eq!(table.get("198.51.100.64", "WHOIS"), "Zürich Net");
    let warning = "2 cells of new text held characters Windows-1252 cannot represent, written as `?`";
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
    assert!(stderr.contains("cp.csv: 2 cells"), "{stderr}");

    // A UTF-8 input keeps them, and nothing is said.
    let utf8 = scenario.path("utf8.csv");
    std::fs::write(&utf8, format!("{rows}\"198.51.100.64\",\"\",\"Ä\"\r\n")).unwrap();
    let (code, stderr) = scenario.enrich(&[&utf8], &[]);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(scenario.outbox().join("utf8.csv")).unwrap();
    assert!(text.contains("\"Köln 日本 Telecom\",\"Ωmega proxy\""), "{text}");
    assert!(!stderr.contains("cannot represent"), "{stderr}");
}

/// The formula guard's `'` counts against the 8000-character limit too: a token list or free text cut to
/// exactly 8000 characters that starts with `-` is cut one character shorter (at a `^` for a token list).
#[test]
fn a_cut_value_that_gets_the_formula_guard_stays_within_8000_characters() {
    let scenario = Scenario::new();
    let tokens: Vec<String> = (0..1200).map(|i| format!("-tok{i:04}")).collect();
    let long_owner = "-OWNER".repeat(2000);
    scenario.api.set_document(
        "/ips/198.51.100.62",
        json!({"asn": {"description": long_owner}, "id": "198.51.100.62", "type": "ip",
               "context": {"malware": {"feed": tokens}}}),
    );
    let table = scenario.enrich_csv(
        "guarded.csv",
        "\"Scanned Item\",\"WHOIS\",\"Seclytics Reputation and Reason\"\r\n\"198.51.100.62\",\"\",\"\"\r\n",
    );
    let whois = table.get("198.51.100.62", "WHOIS");
    assert_eq!(whois.chars().count(), 8000, "{}", &whois[..40]);
    assert!(whois.starts_with("'-OWNER") && long_owner.starts_with(&whois[1..]));
    let reputation = table.get("198.51.100.62", "Seclytics Reputation and Reason");
    assert!(reputation.chars().count() <= 8000, "{} characters", reputation.chars().count());
    assert!(reputation.starts_with("'-tok0000^-tok0001^"), "{}", &reputation[..40]);
    let unguarded = &reputation[1..];
    assert!(tokens.join("^").starts_with(unguarded) && !unguarded.ends_with('^'));
    assert!(tokens.join("^").as_bytes()[unguarded.len()] == b'^', "cut at a separator");
}

/// Distinct IPs and hosts of the several-chunk workbooks: more than one lookup chunk (2 048) together.
const CHUNKED_IPS: usize = 2600;
const CHUNKED_HOSTS: usize = 1400;
const CHUNKED_HEADER: [&str; 6] = [
    "Scanned Item",
    "WHOIS",
    "IP Address",
    "Date First Seen",
    "Seclytics Reputation and Reason",
    "Seclytics File Count",
];

/// Answers for the several-chunk workbooks: each IP its own document, each host a passive-DNS IP that is
/// either one of the sheet's IPs or a new one (appended), every other path one default IP document.
fn script_chunked_documents(scenario: &Scenario) {
    let (distinct_ips, distinct_hosts) = (CHUNKED_IPS, CHUNKED_HOSTS);
    for i in 0..distinct_ips {
        let ip = format!("11.0.{}.{}", i / 250, i % 250 + 1);
        scenario.api.set_document(
            &format!("/ips/{ip}"),
            json!({"asn": {"description": format!("ORG-{i}"), "number": "64500"},
                   "context": {"categories": {"feed": [format!("cat{}", i % 7)]}},
                   "accessed_by_files": [format!("{:064x}", i)],
                   "history": {"first_seen_at": format!("2020-01-{:02}T00:00:{:02}", i % 28 + 1, i % 60)},
                   "id": ip, "type": "ip"}),
        );
    }
    for i in 0..distinct_hosts {
        // Every third host points at an IP of the sheet, the others at a new IP (appended once, in order).
        let answer = if i % 3 == 0 {
            format!("11.0.0.{}", i % 200 + 1)
        } else {
            format!("12.1.{}.{}", i / 200, i % 200 + 1)
        };
        scenario.api.set_document(
            &format!("/hosts/h{i}.example.com"),
            json!({"passive_dns": [{"answer_ip": answer, "answer_type": "A"}],
                   "context": {"urls": {"feed": [format!("http://h{i}.example.com/p{}.exe", i % 5)]}},
                   "id": format!("h{i}.example.com"), "type": "host"}),
        );
    }
    // Appended IPs are looked up too: answer them all with one default document.
    scenario
        .api
        .set_default(Behaviour::document(json!({"asn": {"description": "APPENDED-ORG"}, "type": "ip"})));
}

/// The rows of the several-chunk workbook (without the header): every IP and host, a fifth twice, shuffled,
/// rows without an indicator every 40 rows, the first 300 rows again at the end, some cells pre-filled.
fn chunked_rows() -> Vec<Vec<String>> {
    let (distinct_ips, distinct_hosts) = (CHUNKED_IPS, CHUNKED_HOSTS);
    let header = CHUNKED_HEADER;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut rng = fastrand::Rng::with_seed(42);
    for i in 0..distinct_ips {
        rows.push(vec![format!("11.0.{}.{}", i / 250, i % 250 + 1)]);
    }
    for i in 0..distinct_hosts {
        rows.push(vec![format!("h{i}.example.com")]);
    }
    // Second copies of a fifth of them, then a shuffle, then the first 300 rows again at the very end.
    let copies: Vec<Vec<String>> = rows.iter().filter(|_| rng.usize(0..5) == 0).cloned().collect();
    rows.extend(copies);
    rng.shuffle(&mut rows);
    // Rows without a usable indicator here and there (blank, or text that is no indicator): they get nothing,
    // and the rows after them still get their own fills.
    for at in (0..rows.len()).step_by(40).rev() {
        let filler = if at % 80 == 0 { "" } else { "n/a" };
        rows.insert(at, vec![filler.to_string(), String::new(), String::new(), "kept".to_string()]);
    }
    let tail: Vec<Vec<String>> = rows[..300].to_vec();
    rows.extend(tail);
    for (r, row) in rows.iter_mut().enumerate() {
        row.resize(header.len(), String::new());
        if r % 97 == 0 {
            row[1] = "analyst's WHOIS".into(); // pre-filled: never overwritten
        }
        if r % 89 == 0 && row[0].starts_with('h') {
            row[2] = "192.0.2.1".into(); // pre-filled IP Address: no passive-DNS row from this row
        }
    }
    rows
}

/// `rows` under `header` as a Windows-1252 CSV file.
fn write_csv_rows(path: &Path, header: &[&str], rows: &[Vec<String>]) {
    let mut text = csv_line(header);
    for row in rows {
        text.push_str(&csv_line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    std::fs::write(path, encoding_rs::WINDOWS_1252.encode(&text).0).unwrap();
}

/// Writes `rows` under `header` into a new worksheet `name` of `book` (empty strings as empty cells).
fn add_sheet_rows(book: &mut rust_xlsxwriter::Workbook, name: &str, header: &[&str], rows: &[Vec<String>]) {
    let sheet = book.add_worksheet();
    sheet.set_name(name).unwrap();
    for (c, h) in header.iter().enumerate() {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    for (r, row) in rows.iter().enumerate() {
        for (c, value) in row.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
            sheet.write_string(r as u32 + 1, c as u16, value).unwrap();
        }
    }
}

/// Asserts two tables hold the same text, row by row (trailing empty cells ignored).
fn assert_same_rows(a: &Table, b: &Table, what: &str) {
    assert_eq!(a.header, b.header, "{what}: header");
    assert_eq!(a.rows.len(), b.rows.len(), "{what}: rows");
    for (r, (x, y)) in a.rows.iter().zip(&b.rows).enumerate() {
        let x: Vec<&str> = x.iter().map(String::as_str).rev().skip_while(|v| v.is_empty()).collect();
        let y: Vec<&str> = y.iter().map(String::as_str).rev().skip_while(|v| v.is_empty()).collect();
        assert_eq!(x, y, "{what}: row {r}");
    }
}

/// A CSV larger than one lookup chunk (2 048 indicators), with indicators repeated far apart, domain rows whose
/// passive-DNS IP is new (appended) or already in the sheet, and pre-filled cells: the streamed CSV path (lookups
/// on their own thread, facts dropped after their last row) must fill exactly what the in-memory XLSX path fills
/// for the same rows, request each indicator once, write the same logs and count the same fills in the report.
#[test]
fn a_csv_of_several_lookup_chunks_fills_exactly_like_the_xlsx_path() {
    csv_of_several_lookup_chunks_against_xlsx(true);
}

/// The same with reverse DNS off, where the CSV path reuses the fills of an indicator's earlier row for its
/// later rows with the same blank cells (rows with a pre-filled WHOIS or IP Address get their own).
#[test]
fn a_csv_whose_rows_reuse_the_fills_of_earlier_rows_fills_exactly_like_the_xlsx_path() {
    csv_of_several_lookup_chunks_against_xlsx(false);
}

/// The number after `rows=` on the debug line about reused fills (`None`: no such line).
fn reused_fill_rows(stderr: &str) -> Option<usize> {
    let line = stderr.lines().find(|line| line.contains("reused the fills"))?;
    let at = line.find(" rows=")? + " rows=".len();
    line[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

fn csv_of_several_lookup_chunks_against_xlsx(reverse_dns: bool) {
    let scenario = Scenario::new();
    turn_reverse_dns(&scenario, reverse_dns);
    script_chunked_documents(&scenario);
    let (distinct_ips, distinct_hosts) = (CHUNKED_IPS, CHUNKED_HOSTS);
    let header = CHUNKED_HEADER;
    let rows = chunked_rows();
    let csv_input = scenario.path("big.csv");
    write_csv_rows(&csv_input, &header, &rows);
    let xlsx_input = scenario.path("big.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    add_sheet_rows(&mut book, "Sheet1", &header, &rows);
    book.save(&xlsx_input).unwrap();

    let (code, stderr) = scenario.enrich_logged(&csv_input, &scenario.outbox());
    assert_eq!(code, 0, "{stderr}");
    match reused_fill_rows(&stderr) {
        // Every row of a repeated indicator after its first, but those whose blank cells differ.
        Some(reused) => assert!(!reverse_dns && reused > 1000, "{reused} rows reused fills"),
        None => assert!(reverse_dns, "no line about reused fills: {stderr}"),
    }
    // Once per distinct indicator, appended IPs included, nothing twice.
    let requests = scenario.api.requests();
    let mut paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    let total = paths.len();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), total, "an indicator was requested twice");
    let csv_logs = [read_log(&scenario.outbox(), "Hashes_"), read_log(&scenario.outbox(), "URLs_")];

    let xlsx_outbox = scenario.path("out-xlsx");
    let output = scenario.enrich_command(&[&xlsx_input], &[], &xlsx_outbox).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(scenario.api.request_count(), total, "the XLSX run is served from the cache");

    let csv =
        read_csv_table(&std::fs::read(scenario.outbox().join("big.csv")).unwrap(), encoding_rs::WINDOWS_1252);
    let sheet_name =
        calamine::open_workbook_auto(xlsx_outbox.join("big.xlsx")).unwrap().sheet_names()[0].clone();
    let (xlsx, _) = read_xlsx_sheet(&xlsx_outbox.join("big.xlsx"), &sheet_name);
    assert!(csv.rows.len() > rows.len(), "passive-DNS rows are appended");
    assert_same_rows(&csv, &xlsx, "CSV vs XLSX");
    // Spot checks against the documents themselves.
    let whois = csv.column("WHOIS");
    let first_seen = csv.column("Date First Seen");
    for (r, row) in csv.rows.iter().enumerate().take(rows.len()) {
        let item = &rows[r][0];
        assert_eq!(&row[0], item);
        if let Some(i) = item.strip_prefix("11.0.").map(|rest| {
            let (a, b) = rest.split_once('.').unwrap();
            a.parse::<usize>().unwrap() * 250 + b.parse::<usize>().unwrap() - 1
        }) {
            let want = if r % 97 == 0 { "analyst's WHOIS".to_string() } else { format!("ORG-{i}") };
            assert_eq!(row[whois], want, "row {r}");
            assert_eq!(row[first_seen], format!("2020-01-{:02} 00:00:{:02}", i % 28 + 1, i % 60), "row {r}");
        }
    }
    let xlsx_logs = [read_log(&xlsx_outbox, "Hashes_"), read_log(&xlsx_outbox, "URLs_")];
    assert_eq!(csv_logs, xlsx_logs);
    let cells_filled = |report: &Path| -> Value {
        serde_json::from_slice::<Value>(&std::fs::read(report).unwrap()).unwrap()["cells_filled"].clone()
    };
    assert_eq!(
        cells_filled(&scenario.outbox().join("big.csv.report.json")),
        cells_filled(&xlsx_outbox.join("big.xlsx.report.json"))
    );
    assert_eq!(csv_logs[0].len(), distinct_ips);
    assert_eq!(csv_logs[1].len(), distinct_hosts);
}

/// `reverseDNS = False` in the scenario's ini (then XLSX rows are written while the lookups go on).
fn turn_reverse_dns(scenario: &Scenario, on: bool) {
    let path = scenario.path("vttl.ini");
    let ini = std::fs::read_to_string(&path).unwrap();
    let (from, to) = if on {
        ("reverseDNS = False", "reverseDNS = True")
    } else {
        ("reverseDNS = True", "reverseDNS = False")
    };
    std::fs::write(&path, ini.replace(from, to)).unwrap();
}

/// The number in the `FIELD=N` field of the XLSX pipeline's debug line in `stderr`: `rows_before_last_lookup`
/// (rows written before the last chunk of lookups was merged) or `rows_while_looking_up` (also those written
/// when it was).
fn logged_count(stderr: &str, field: &str) -> usize {
    // A piped log is plain text (no colour codes): see logs_are_coloured_only_at_a_terminal_without_no_color.
    let key = format!("{field}=");
    let at = stderr.find(&key).unwrap_or_else(|| panic!("no {key} in: {stderr}"));
    let digits: String = stderr[at + key.len()..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

/// An XLSX workbook is written while it is looked up: with reverse DNS off, each row goes to the writer as
/// soon as its indicator (and every indicator first seen above it) is merged. Two tables sharing indicators,
/// the second in reverse order (its rows need lookups from both ends of the list), sheets without a table
/// before and between them, passive-DNS rows appended to both: each table must come out exactly as its rows
/// enriched alone as a CSV, the other sheets unchanged. With reverse DNS on, rows wait for the names (none
/// are sent early) and the workbook is the same.
#[test]
fn an_xlsx_written_while_it_is_looked_up_fills_each_table_like_its_rows_alone() {
    let scenario = Scenario::new();
    script_chunked_documents(&scenario);
    turn_reverse_dns(&scenario, false);
    let header = CHUNKED_HEADER;
    let rows = chunked_rows();
    let half = rows.len() / 2;
    let first: Vec<Vec<String>> = rows[..half + 500].to_vec();
    let second: Vec<Vec<String>> = rows[half..].iter().rev().cloned().collect();
    for (name, table) in [("first.csv", &first), ("second.csv", &second)] {
        write_csv_rows(&scenario.path(name), &header, table);
    }
    let (code, stderr) = scenario.enrich(&[&scenario.path("first.csv"), &scenario.path("second.csv")], &[]);
    assert_eq!(code, 0, "{stderr}");
    let requests = scenario.api.request_count();

    let input = scenario.path("two-tables.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    let notes = book.add_worksheet().set_name("Notes").unwrap();
    notes.write_string(0, 0, "Case notes").unwrap();
    notes.write_number(1, 1, 42.5).unwrap();
    add_sheet_rows(&mut book, "First", &header, &first);
    let between = book.add_worksheet().set_name("Between").unwrap();
    between.write_string(2, 3, "=1+1 stays text").unwrap();
    add_sheet_rows(&mut book, "Second", &header, &second);
    book.save(&input).unwrap();
    let xlsx_outbox = scenario.path("out-xlsx");
    let (code, stderr) = scenario.enrich_logged(&input, &xlsx_outbox);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(scenario.api.request_count(), requests, "served from the cache");
    let early = logged_count(&stderr, "rows_before_last_lookup");
    assert!(early > 0, "no row was written before the last lookup");

    let output_path = xlsx_outbox.join("two-tables.xlsx");
    let names = calamine::open_workbook_auto(&output_path).unwrap().sheet_names();
    assert_eq!(names, ["Notes", "First", "Between", "Second"]);
    for (sheet, csv_name, table) in [("First", "first.csv", &first), ("Second", "second.csv", &second)] {
        let (xlsx, _) = read_xlsx_sheet(&output_path, sheet);
        let csv = read_csv_table(
            &std::fs::read(scenario.outbox().join(csv_name)).unwrap(),
            encoding_rs::WINDOWS_1252,
        );
        assert!(csv.rows.len() > table.len(), "{sheet}: passive-DNS rows are appended");
        assert_same_rows(&csv, &xlsx, sheet);
    }
    let mut book: calamine::Xlsx<_> = calamine::open_workbook(&output_path).unwrap();
    let notes = book.worksheet_range("Notes").unwrap();
    assert_eq!(notes.get_value((0, 0)), Some(&Data::String("Case notes".into())));
    assert_eq!(notes.get_value((1, 1)), Some(&Data::Float(42.5)));
    assert_eq!(notes.used_cells().count(), 2);
    let between = book.worksheet_range("Between").unwrap();
    assert_eq!(between.get_value((2, 3)), Some(&Data::String("=1+1 stays text".into())));
    assert_eq!(between.used_cells().count(), 1);

    turn_reverse_dns(&scenario, true);
    let rdns_outbox = scenario.path("out-rdns");
    let (code, stderr) = scenario.enrich_logged(&input, &rdns_outbox);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        logged_count(&stderr, "rows_while_looking_up"),
        0,
        "with reverse DNS on, rows wait for the names"
    );
    for sheet in ["First", "Second"] {
        let (without, _) = read_xlsx_sheet(&output_path, sheet);
        let (with, _) = read_xlsx_sheet(&rdns_outbox.join("two-tables.xlsx"), sheet);
        assert_same_rows(&without, &with, sheet);
    }
}

/// A critical error in a later chunk of lookups, after rows were already handed to the writer, leaves
/// nothing in the outbox: no workbook, no temporary file.
#[test]
fn an_xlsx_whose_lookups_stop_half_way_leaves_nothing_in_the_outbox() {
    let scenario = Scenario::new();
    script_chunked_documents(&scenario);
    turn_reverse_dns(&scenario, false);
    let mut rows = chunked_rows();
    // First seen in the last row: looked up in the last chunk, after the rows above went to the writer.
    rows.push(vec!["11.200.0.1".to_string()]);
    scenario.api.set("/ips/11.200.0.1", Behaviour::status(401, "token revoked"));
    let input = scenario.path("stopped.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    add_sheet_rows(&mut book, "Sheet1", &CHUNKED_HEADER, &rows);
    book.save(&input).unwrap();
    let (code, stderr) = scenario.enrich_logged(&input, &scenario.outbox());
    assert_eq!(code, 2, "{stderr}");
    assert!(logged_count(&stderr, "rows_while_looking_up") > 0, "rows were written before the refusal");
    let left: Vec<PathBuf> = if scenario.outbox().exists() { walk(&scenario.outbox()) } else { Vec::new() };
    assert!(
        left.iter().all(|p| !p.to_string_lossy().contains("stopped.xlsx")
            && !p.file_name().unwrap().to_string_lossy().ends_with(".tmp")),
        "{left:?}"
    );
}

/// A log longer than the lines kept in memory (4 MiB) has its lines in a hidden temporary file in the outbox,
/// published under the log's name by a link: the log is whole and in order, and no temporary file is left.
#[test]
fn a_log_longer_than_its_memory_buffer_is_published_whole_and_leaves_no_temporary_file() {
    let scenario = Scenario::new();
    let (ips, hashes_per_ip) = (100, 600);
    let mut expected = Vec::new();
    let mut text = csv_line(&["Scanned Item", "WHOIS"]);
    for i in 0..ips {
        let ip = format!("11.7.0.{}", i + 1);
        let hashes: Vec<String> = (0..hashes_per_ip).map(|h| format!("{:064x}", i * 10_000 + h)).collect();
        expected.extend(hashes.iter().map(|h| format!("{ip}|{h}")));
        scenario.api.set_document(
            &format!("/ips/{ip}"),
            json!({"asn": {"description": "ORG"}, "accessed_by_files": hashes, "id": ip, "type": "ip"}),
        );
        text.push_str(&csv_line(&[&ip, ""]));
    }
    assert!(expected.iter().map(|l| l.len() + 2).sum::<usize>() > 4 << 20, "longer than the buffer");
    let input = scenario.path("many-hashes.csv");
    std::fs::write(&input, &text).unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(read_log(&scenario.outbox(), "Hashes_"), expected);
    let names: Vec<String> = walk(&scenario.outbox())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

/// The CSV passes check each row's indicator: a file whose rows change between the first and the second pass
/// (same size, modification time put back) fails instead of getting fills meant for other rows.
#[test]
fn a_csv_changed_between_the_passes_fails() {
    let scenario = Scenario::new();
    scenario.api.set_latency(std::time::Duration::from_millis(400));
    let ini = std::fs::read_to_string(scenario.path("vttl.ini"))
        .unwrap()
        .replace("concurrency = 3", "concurrency = 1");
    std::fs::write(scenario.path("vttl.ini"), ini).unwrap();
    // Far more than the reader's buffer, so the rows at the end are read again after the lookups start.
    let mut text = csv_line(&["Scanned Item", "WHOIS", "Notes"]);
    let filler = "x".repeat(200);
    for i in 0..4000 {
        let item = ["198.51.100.53", "198.51.100.60", "cdn.example.co.uk"][i % 3];
        text.push_str(&csv_line(&[item, "", &filler]));
    }
    let input = scenario.path("moving.csv");
    std::fs::write(&input, &text).unwrap();
    let modified = std::fs::metadata(&input).unwrap().modified().unwrap();
    let child = scenario
        .enrich_command(&[&input], &[], &scenario.outbox())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first request is sent when the first pass has ended; the write pass then waits for the answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while scenario.api.request_count() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Swap two indicators near the end of the file: same size, different rows.
    let changed = {
        let at = text.rfind("198.51.100.53").unwrap();
        let mut bytes = text.clone().into_bytes();
        bytes[at..at + 13].copy_from_slice(b"198.51.100.60");
        bytes
    };
    assert_eq!(changed.len(), text.len());
    let file = std::fs::OpenOptions::new().write(true).open(&input).unwrap();
    use std::io::Write;
    (&file).write_all(&changed).unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("changed while it was read"), "{stderr}");
    assert!(!scenario.outbox().join("moving.csv").exists(), "no output for a file that changed");
}

/// While the first pass still reads a CSV, only answers that need no request are prepared: a file that turns
/// out to be broken half-way (here a record with more fields than a sheet can have, after more indicators than
/// one lookup chunk) fails without having cost a single API request.
#[test]
fn a_csv_broken_half_way_costs_no_api_request() {
    let scenario = Scenario::new();
    let mut text = csv_line(&["Scanned Item", "WHOIS"]);
    for i in 0..3000 {
        text.push_str(&csv_line(&[&format!("11.9.{}.{}", i / 250, i % 250 + 1), ""]));
    }
    text.push_str(&",".repeat(20_000));
    text.push_str("\r\n");
    text.push_str(&csv_line(&["198.51.100.53", ""]));
    let input = scenario.path("broken.csv");
    std::fs::write(&input, &text).unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("fields"), "{stderr}");
    assert_eq!(scenario.api.request_count(), 0, "a broken file must not spend API quota");
    assert!(!scenario.outbox().join("broken.csv").exists());
    // The same rows without the broken record are looked up normally.
    let good = text.replace(&format!("{}\r\n", ",".repeat(20_000)), "");
    std::fs::write(&input, good).unwrap();
    let (code, stderr) = scenario.enrich(&[&input], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(scenario.api.request_count(), 3001);
}

/// Runs `enrich` on `input` into the outbox folder `outbox` (under the scenario); returns the output bytes and
/// the report.
fn enrich_into(scenario: &Scenario, input: &Path, outbox: &str) -> (Vec<u8>, Value) {
    let outbox = scenario.path(outbox);
    let output = scenario.enrich_command(&[input], &[], &outbox).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let name = input.file_name().unwrap().to_string_lossy().into_owned();
    let report = serde_json::from_slice(&std::fs::read(outbox.join(format!("{name}.report.json"))).unwrap());
    (std::fs::read(outbox.join(&name)).unwrap(), report.unwrap())
}

#[test]
fn a_rerun_fills_from_the_kept_digests_exactly_like_the_first_run_and_a_list_change_invalidates_them() {
    let scenario = Scenario::new();
    let input = scenario.path("book.csv");
    std::fs::write(&input, ip_csv_bytes()).unwrap();
    let (first, first_report) = enrich_into(&scenario, &input, "out1");
    assert_eq!(first_report["failed_lookups"], 1);
    // Failed lookups are never cached: each run asks for that one again (twice: `max_retries = 1`).
    let failed_path = "/ips/203.0.113.99";
    let requests = || scenario.api.request_count() - scenario.api.count_path(failed_path);
    let cached_requests = requests();
    assert!(cached_requests > 0);
    let cache = rusqlite::Connection::open(scenario.path("cache.sqlite")).unwrap();
    let count = |table: &str| -> i64 {
        cache.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0)).unwrap()
    };
    // Every cached answer (found or not found) got its digest.
    assert!(count("responses") > 0);
    assert_eq!(count("digests"), count("responses"));

    // Second run: everything from the cache, byte for byte the same workbook and logs.
    let (second, report) = enrich_into(&scenario, &input, "out2");
    assert_eq!(requests(), cached_requests, "no new request");
    assert_eq!(report["cache_hits"].as_u64(), Some(count("responses") as u64));
    assert_eq!(report["not_found"], first_report["not_found"]);
    assert_eq!(report["cells_filled"], first_report["cells_filled"]);
    assert_eq!(String::from_utf8_lossy(&second), String::from_utf8_lossy(&first));
    let logs: Vec<String> = std::fs::read_dir(scenario.path("out1"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|name| name.contains("_Seclytic_"))
        .map(|name| name[..name.find("_Seclytic_").unwrap() + "_Seclytic_".len()].to_string())
        .collect();
    assert!(logs.len() >= 2, "{logs:?}");
    for log in &logs {
        assert_eq!(read_log(&scenario.path("out2"), log), read_log(&scenario.path("out1"), log), "{log}");
    }

    // The digests are what the second run used: with the cached bodies changed behind the cache's back (only
    // a new answer, which drops the digest, changes a body in real use), the output stays the same.
    let changed = cache
        .execute("UPDATE responses SET body = replace(body, 'AgentTesla', 'ZebraKit') WHERE body LIKE '%AgentTesla%'", [])
        .unwrap();
    assert!(changed > 0);
    let (third, _) = enrich_into(&scenario, &input, "out3");
    assert_eq!(String::from_utf8_lossy(&third), String::from_utf8_lossy(&first));

    // Editing a watch list invalidates every digest: the bodies are digested again (from the cache, still
    // no request), so the changed bodies and the new keyword show.
    let lists = scenario.path("lists/KWordwatchlist.txt");
    let mut keywords = std::fs::read_to_string(&lists).unwrap();
    keywords.push_str("ZebraKit\r\n");
    std::fs::write(&lists, keywords).unwrap();
    let (fourth, report) = enrich_into(&scenario, &input, "out4");
    assert_eq!(requests(), cached_requests, "still no new request");
    assert_eq!(report["cache_hits"].as_u64(), Some(count("responses") as u64));
    let table = read_csv_table(&fourth, encoding_rs::WINDOWS_1252);
    let keywords = table.get("203.0.113.45", "Keyword Watch List").to_lowercase();
    assert!(keywords.contains("zebrakit") && !keywords.contains("agenttesla"), "{keywords}");
    let reputation = table.get("203.0.113.45", "Seclytics Reputation and Reason");
    assert!(reputation.contains("ZebraKit.XK"), "{reputation}");
    // … and digests are kept again under the new lists: a fifth run answers like the fourth.
    let (fifth, _) = enrich_into(&scenario, &input, "out5");
    assert_eq!(String::from_utf8_lossy(&fifth), String::from_utf8_lossy(&fourth));

    // A damaged digest is a miss: the body is digested again, the output is the same.
    cache.execute("UPDATE digests SET data = x'00'", []).unwrap();
    let (sixth, report) = enrich_into(&scenario, &input, "out6");
    assert_eq!(String::from_utf8_lossy(&sixth), String::from_utf8_lossy(&fourth));
    assert_eq!(report["cache_hits"].as_u64(), Some(count("responses") as u64));
    assert_eq!(requests(), cached_requests);
}
