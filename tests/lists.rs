//! Watch lists, sinkholes and reverse DNS through the public API, on real files in temporary folders and a real
//! DNS server on 127.0.0.1.

mod support_dns;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vttl_seclytics::enrich::rdns::ReverseResolver;
use vttl_seclytics::enrich::sinkholes::Sinkholes;
use vttl_seclytics::enrich::watchlists::{ListWarning, WatchLists};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP literal")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path
}

fn load(files: &[(&str, &str)], url_regex: bool) -> (tempfile::TempDir, WatchLists, Vec<ListWarning>) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        write(dir.path(), name, text.as_bytes());
    }
    let (lists, warnings) = WatchLists::load(dir.path(), url_regex);
    (dir, lists, warnings)
}

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

// ---------------------------------------------------------------- watch lists

#[test]
fn missing_folder_gives_empty_lists_without_warnings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (lists, warnings) = WatchLists::load(&dir.path().join("nope"), false);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(
        !lists.has_keywords() && !lists.has_urls() && !lists.has_ip_domains() && !lists.has_detection_names()
    );
    assert!(lists.keyword_matches("anything").is_empty());
    assert!(lists.url_matches(["http://x/"]).is_empty());
}

#[test]
fn blank_lines_only_is_an_empty_list() {
    let (_dir, lists, warnings) = load(&[("KWordwatchlist.txt", "\r\n   \r\n\t\r\n")], false);
    assert!(warnings.is_empty());
    assert!(!lists.has_keywords());
    assert!(lists.keyword_matches("whatever text").is_empty());
}

#[test]
fn keywords_match_lower_cased_body_including_json_keys_in_file_order() {
    let (_dir, lists, _) =
        load(&[("KWordwatchlist.txt", "VPN\r\nproxy\r\n\r\n  SSH  \r\nrdp\r\nvpn\r\n")], false);
    assert!(lists.has_keywords());
    let body = r#"{"context":{"categories":{"feed":["SSH-Brute"]}},"proxy_type":"open"}"#;
    // `proxy` only occurs as part of a JSON key; `SSH` in upper case in a value; `vpn` and `rdp` nowhere.
    assert_eq!(lists.keyword_matches(body), vec!["proxy", "ssh"]);
    assert_eq!(lists.keyword_matches(r#"{"a":"Open VPN and RDP"}"#), vec!["vpn", "rdp"]);
    assert!(lists.keyword_matches(r#"{"a":"nothing here"}"#).is_empty());
}

#[test]
fn url_substrings_match_case_insensitively_and_accumulate_over_urls() {
    let (_dir, lists, warnings) =
        load(&[("URLwatchlist.txt", "/wp-content/upd/\r\n.EXE\r\n/gate.php\r\nnever-matches\r\n")], false);
    assert!(warnings.is_empty());
    let urls = [
        "http://a.test/wp-content/upd/loader.EXE",
        "http://b.test/clean/page.html", // matches nothing: must not wipe earlier matches (VTTL 7.3)
        "https://c.test/admin/gate.php?id=1",
        "http://d.test/other.exe",
    ];
    let matches = lists.url_matches(urls);
    assert_eq!(matches, vec!["/wp-content/upd/", ".EXE", "/gate.php"]);
    assert_eq!(matches.join("   "), "/wp-content/upd/   .EXE   /gate.php");
    assert!(lists.url_matches(["http://b.test/clean/page.html"]).is_empty());
}

#[test]
fn url_regexes_are_case_insensitive_and_keep_upper_case_classes() {
    let text = "^https?://[^/]+/wp-content/upd/\r\n\\.exe$\r\nid=\\D+$\r\n";
    let (_dir, lists, warnings) = load(&[("URLwatchlist.txt", text)], true);
    assert!(warnings.is_empty(), "{warnings:?}");
    let matches = lists.url_matches(["HTTP://A.TEST/WP-CONTENT/UPD/x.EXE", "http://b.test/?id=abc"]);
    assert_eq!(matches, vec!["^https?://[^/]+/wp-content/upd/", "\\.exe$", "id=\\D+$"]);
    // `\D` stays "not a digit" (VTTL lower-cased it into `\d`).
    assert!(lists.url_matches(["http://b.test/?id=123"]).is_empty());
}

#[test]
fn url_substring_mode_does_not_treat_entries_as_regexes() {
    let (_dir, lists, _) = load(&[("URLwatchlist.txt", "a.c\r\n")], false);
    assert!(lists.url_matches(["http://abc.test/"]).is_empty());
    assert_eq!(lists.url_matches(["http://a.c.test/"]), vec!["a.c"]);
}

#[test]
fn bad_regex_is_a_warning_with_file_and_line_and_is_skipped() {
    let text = "good\\.php\r\n\r\nbad[regex\r\nalso(bad\r\n\\.exe\r\n";
    let (dir, lists, warnings) = load(&[("URLwatchlist.txt", text)], true);
    let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
    assert_eq!(lines, vec![3, 4]);
    for warning in &warnings {
        assert_eq!(warning.file, dir.path().join("URLwatchlist.txt"));
        assert!(warning.to_string().contains("URLwatchlist.txt:"), "{warning}");
    }
    assert!(warnings[0].message.contains("bad[regex"), "{}", warnings[0].message);
    assert_eq!(
        lists.url_matches(["http://x.test/good.php", "http://x.test/a.exe"]),
        vec!["good\\.php", "\\.exe"]
    );
    // The same text in substring mode is fine: no warnings.
    let (_dir, _, warnings) = load(&[("URLwatchlist.txt", text)], false);
    assert!(warnings.is_empty());
}

#[test]
fn ip_domain_entries_with_and_without_notes() {
    let text = "203.0.113.45|Example C2 list\r\n\
                Update-Check.Example.NET|Phishing kit|extra|more\r\n\
                198.51.100.23\r\n\
                198.51.100.24|\r\n\
                2001:DB8::0:1|v6 note\r\n";
    let (_dir, lists, warnings) = load(&[("IPDwatchlist.txt", text)], false);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(lists.has_ip_domains());
    let found = lists.ip_domain_matches([
        "update-check.example.net",
        "203.0.113.45",
        "198.51.100.23",
        "UPDATE-CHECK.EXAMPLE.NET", // same entry again: de-duplicated
        "198.51.100.24",
        "2001:db8::1",
        "192.0.2.1",
        "example.net",
    ]);
    assert_eq!(
        found,
        vec![
            "Phishing kit/update-check.example.net",
            "Example C2 list/203.0.113.45",
            "198.51.100.23",
            "198.51.100.24",
            "v6 note/2001:db8::0:1",
        ]
    );
}

#[test]
fn ip_domain_duplicate_key_keeps_first_and_warns() {
    let (_dir, lists, warnings) = load(
        &[("IPDwatchlist.txt", "evil.test|first\r\nEVIL.test|second\r\nevil.test|first\r\n|orphan note\r\n")],
        false,
    );
    assert_eq!(warnings.iter().map(|w| w.line).collect::<Vec<_>>(), vec![2, 4]);
    assert_eq!(lists.ip_domain_matches(["evil.test"]), vec!["first/evil.test"]);
}

#[test]
fn detection_names_match_exactly_lower_cased() {
    let text = "FormBook\r\ntrojan:win32/formbook!ml\r\nagenttesla\r\n";
    let (_dir, lists, _) = load(&[("DNwatchlist.txt", text)], false);
    assert!(lists.has_detection_names());
    let found =
        lists.detection_matches(["Trojan:Win32/Formbook!ml", "formbook_v2", "FORMBOOK", "formbook", "tesla"]);
    assert_eq!(found, vec!["trojan:win32/formbook!ml", "formbook"]);
}

#[test]
fn windows_1252_and_utf16_files_decode() {
    let dir = tempfile::tempdir().expect("tempdir");
    // "café" in Windows-1252 (é = 0xE9), CRLF.
    write(dir.path(), "KWordwatchlist.txt", b"caf\xe9\r\nr\xe9seau\r\n");
    // UTF-16LE with BOM: "Évasion".
    let mut utf16 = vec![0xFF, 0xFE];
    for unit in "Évasion\r\n".encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    write(dir.path(), "DNwatchlist.txt", &utf16);
    // UTF-8 with BOM.
    write(dir.path(), "IPDwatchlist.txt", "\u{feff}203.0.113.7|Liste noire élevée\r\n".as_bytes());
    let (lists, warnings) = WatchLists::load(dir.path(), false);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(lists.keyword_matches(r#"{"note":"Le CAFÉ du coin"}"#), vec!["café"]);
    assert_eq!(lists.detection_matches(["évasion"]), vec!["évasion"]);
    assert_eq!(lists.ip_domain_matches(["203.0.113.7"]), vec!["Liste noire élevée/203.0.113.7"]);
}

#[test]
fn shipped_example_watch_lists_load_cleanly() {
    for regex in [false, true] {
        let (lists, warnings) = WatchLists::load(&repo_file("config"), regex);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(
            lists.has_keywords() && lists.has_urls() && lists.has_ip_domains() && lists.has_detection_names()
        );
        assert_eq!(lists.keyword_matches(r#"{"x":"SystemBC proxy"}"#), vec!["systembc", "proxy"]);
        assert_eq!(lists.ip_domain_matches(["203.0.113.45"]), vec!["Example C2 list/203.0.113.45"]);
    }
}

// ---------------------------------------------------------------- sinkholes

fn shipped_sinkholes() -> Sinkholes {
    let (list, warnings) =
        Sinkholes::load(&repo_file("config/sinkholes.txt")).expect("read shipped sinkholes");
    assert!(warnings.is_empty(), "{warnings:?}");
    list
}

#[test]
fn shipped_sinkhole_file_labels_known_addresses() {
    let list = shipped_sinkholes();
    assert_eq!(list.len(), 30);
    let label = |text: &str| list.label_for(ip(text), None);
    assert_eq!(label("142.0.36.234").as_deref(), Some("ET DNS Reply Sinkhole FBI Zeus P2P 1 - 142.0.36.234"));
    assert_eq!(label("195.22.26.200").as_deref(), Some("195.22.26.192/26 - AnubisNetworks Sinkhole"));
    assert_eq!(label("195.22.26.255").as_deref(), Some("195.22.26.192/26 - AnubisNetworks Sinkhole"));
    assert_eq!(label("195.22.26.100"), None);
    assert_eq!(label("195.22.26.191"), None);
    // VTTL's rule is "last octet above 192": .192 itself is no sinkhole, though the label names the /26.
    assert_eq!(label("195.22.26.192"), None);
    assert_eq!(label("195.22.26.193").as_deref(), Some("195.22.26.192/26 - AnubisNetworks Sinkhole"));
    let lolcat = Some("ET TROJAN AnubisNetworks Sinkhole SSL Cert lolcat - specific IPs");
    assert_eq!(label("195.22.28.193").as_deref(), lolcat);
    assert_eq!(label("195.22.28.222").as_deref(), lolcat);
    assert_eq!(label("195.22.28.223"), None);
    assert_eq!(label("195.22.28.192"), None);
    // VTTL's never-firing Microsoft prefix rules, fixed.
    assert_eq!(
        label("199.2.137.5").as_deref(),
        Some("ET TROJAN DNS Reply Sinkhole - Microsoft - 199.2.137.0/24")
    );
    assert_eq!(
        label("207.46.90.77").as_deref(),
        Some("ET TROJAN DNS Reply Sinkhole - Microsoft - 207.46.90.0/24")
    );
    assert_eq!(label("204.95.99.1").as_deref(), Some("ET TROJAN DNS Reply Sinkhole Microsoft NO-IP Domain"));
    assert_eq!(label("199.2.138.5"), None);
    // Final labels of the IPs VTTL listed twice.
    assert_eq!(
        label("148.81.111.111").as_deref(),
        Some("ET TROJAN Connection to a cert.pl Sinkhole IP (Possible Infected Host)")
    );
    assert_eq!(
        label("91.233.244.106").as_deref(),
        Some("ET TROJAN Connection to Dr Web Sinkhole IP(Possible Infected Host)")
    );
    assert_eq!(
        label("72.5.65.111").as_deref(),
        Some("Palo Alto Networks Sinkhole - sinkhole.paloaltonetworks.com")
    );
    assert_eq!(label("8.8.8.8"), None);
}

#[test]
fn reverse_dns_rule_marks_unlisted_ips_and_listed_label_wins() {
    let list = shipped_sinkholes();
    assert_eq!(list.label_for(ip("192.0.2.10"), Some("SinkHole-01.Example.net")).as_deref(), Some("X"));
    assert_eq!(list.label_for(ip("192.0.2.10"), Some("ns.snkhole.example")).as_deref(), Some("X"));
    assert_eq!(list.label_for(ip("192.0.2.10"), Some("mail.example.net")), None);
    assert_eq!(list.label_for(ip("192.0.2.10"), None), None);
    assert_eq!(
        list.label_for(ip("72.5.65.111"), Some("sinkhole.paloaltonetworks.com")).as_deref(),
        Some("Palo Alto Networks Sinkhole - sinkhole.paloaltonetworks.com")
    );
}

#[test]
fn most_specific_entry_wins_and_later_line_breaks_ties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "# comment\n\
                203.0.113.0/24 | wide block\n\
                203.0.113.9 | exact address\n\
                203.0.113.0/28 | narrow block\n\
                \n\
                203.0.113.100-203.0.113.101 | first pair\n\
                203.0.113.100 - 203.0.113.101 | second pair\n\
                10.0.0.0/8 | ten\n\
                10.1.2.3 | exact ten\n\
                10.1.2.3 | exact ten, later line\n";
    let path = write(dir.path(), "sinkholes.txt", text.as_bytes());
    let (list, warnings) = Sinkholes::load(&path).expect("load");
    assert!(warnings.is_empty(), "{warnings:?}");
    let label = |text: &str| list.ip_label(ip(text)).map(str::to_string);
    assert_eq!(label("203.0.113.9").as_deref(), Some("exact address"));
    assert_eq!(label("203.0.113.10").as_deref(), Some("narrow block"));
    assert_eq!(label("203.0.113.200").as_deref(), Some("wide block"));
    assert_eq!(label("203.0.113.100").as_deref(), Some("second pair"));
    assert_eq!(label("10.1.2.3").as_deref(), Some("exact ten, later line"));
    assert_eq!(label("10.200.0.1").as_deref(), Some("ten"));
    assert_eq!(label("11.0.0.1"), None);
}

#[test]
fn ipv6_entries_and_bad_lines_with_line_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "2001:db8:5::/48 | v6 block\n\
                2001:db8:5::53 | v6 exact\n\
                not-an-ip | nope\n\
                203.0.113.1\n\
                203.0.113.2 |   \n\
                # 203.0.113.3 | commented out\n\
                203.0.113.4/40 | bad prefix\n\
                203.0.113.9-203.0.113.5 | backwards\n\
                203.0.113.1-2001:db8::1 | mixed\n\
                203.0.113.7 203.0.113.8 | two addresses\n\
                203.0.113.6 | fine\n";
    let path = write(dir.path(), "sinkholes.txt", text.as_bytes());
    let (list, warnings) = Sinkholes::load(&path).expect("load");
    let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
    assert_eq!(lines, vec![3, 4, 5, 7, 8, 9, 10], "{warnings:?}");
    assert!(warnings.iter().all(|w| w.file == path));
    assert_eq!(list.len(), 3);
    assert_eq!(list.ip_label(ip("2001:db8:5::53")), Some("v6 exact"));
    assert_eq!(list.ip_label(ip("2001:db8:5:ffff::1")), Some("v6 block"));
    assert_eq!(list.ip_label(ip("2001:db8:6::1")), None);
    assert_eq!(list.ip_label(ip("203.0.113.6")), Some("fine"));
    assert_eq!(list.ip_label(ip("203.0.113.3")), None);
}

#[test]
fn missing_sinkhole_file_is_empty_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (list, warnings) = Sinkholes::load(&dir.path().join("absent.txt")).expect("missing is not an error");
    assert!(list.is_empty());
    assert_eq!(warnings.len(), 1);
    assert_eq!(list.label_for(ip("203.0.113.1"), Some("sinkhole.example")).as_deref(), Some("X"));
}

// ---------------------------------------------------------------- reverse DNS

#[test]
fn reverse_lookups_come_from_the_configured_server() {
    let server = support_dns::PtrServer::start(&[
        (ip("203.0.113.45"), "sinkhole.example.net."),
        (ip("198.51.100.7"), "mail.example.org."),
        (ip("2001:db8::53"), "v6.example.net."),
    ]);
    let (resolver, warning) =
        ReverseResolver::new(Some(server.addr), Duration::from_secs(2)).expect("resolver");
    assert!(warning.is_none());
    assert!(resolver.is_enabled());
    let ips =
        [ip("203.0.113.45"), ip("198.51.100.7"), ip("192.0.2.99"), ip("2001:db8::53"), ip("203.0.113.45")];
    let names = resolver.lookup_many(&ips);
    assert_eq!(names.len(), 4);
    assert_eq!(names[&ip("203.0.113.45")].as_deref(), Some("sinkhole.example.net"));
    assert_eq!(names[&ip("198.51.100.7")].as_deref(), Some("mail.example.org"));
    assert_eq!(names[&ip("2001:db8::53")].as_deref(), Some("v6.example.net"));
    assert_eq!(names[&ip("192.0.2.99")], None);
    assert!(server.queries() >= 4);
    assert_eq!(resolver.lookup(ip("198.51.100.7")).as_deref(), Some("mail.example.org"));

    // End to end with the sinkhole rule.
    let list = Sinkholes::empty();
    let name = resolver.lookup(ip("203.0.113.45"));
    assert_eq!(list.label_for(ip("203.0.113.45"), name.as_deref()).as_deref(), Some("X"));
}

#[test]
fn unanswering_server_gives_none_within_the_timeout() {
    let (silent, addr) = support_dns::silent_server();
    let timeout = Duration::from_millis(400);
    let (resolver, _) = ReverseResolver::new(Some(addr), timeout).expect("resolver");
    let ips: Vec<IpAddr> = (1..=40u8).map(|n| IpAddr::from([198, 51, 100, n])).collect();
    let started = Instant::now();
    let names = resolver.lookup_many(&ips);
    let elapsed = started.elapsed();
    assert_eq!(names.len(), 40);
    assert!(names.values().all(Option::is_none));
    eprintln!("40 unanswered lookups took {elapsed:?}");
    assert!(elapsed < timeout + Duration::from_millis(600), "took {elapsed:?}");
    // The queries really went to the silent server (so the None answers are timeouts, not set-up failures).
    silent.set_nonblocking(true).expect("nonblocking");
    let mut buffer = [0u8; 512];
    assert!(silent.recv_from(&mut buffer).is_ok(), "the silent server received no query");
}

#[test]
fn lookups_work_from_inside_an_async_runtime() {
    let server = support_dns::PtrServer::start(&[(ip("203.0.113.45"), "sinkhole.example.net.")]);
    let (resolver, _) = ReverseResolver::new(Some(server.addr), Duration::from_secs(2)).expect("resolver");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let name = runtime.block_on(async { resolver.lookup(ip("203.0.113.45")) });
    assert_eq!(name.as_deref(), Some("sinkhole.example.net"));
    runtime.block_on(async move { drop(resolver) });
}

#[test]
fn disabled_resolver_answers_nothing() {
    let resolver = ReverseResolver::disabled().expect("resolver");
    assert!(!resolver.is_enabled());
    let names = resolver.lookup_many(&[ip("203.0.113.45")]);
    assert_eq!(names.get(&ip("203.0.113.45")), Some(&None));
}

#[test]
fn a_large_batch_against_a_silent_server_is_bounded_as_a_whole() {
    let (_silent, addr) = support_dns::silent_server();
    let timeout = Duration::from_millis(300);
    let (resolver, _) = ReverseResolver::new(Some(addr), timeout).expect("resolver");
    // Far more IPs than run at once: without the batch bound this would take (n / in-flight) × timeout.
    let count = vttl_seclytics::enrich::rdns::MAX_IN_FLIGHT * 6;
    let ips: Vec<IpAddr> =
        (0..count).map(|n| IpAddr::from([10, 9, (n / 256) as u8, (n % 256) as u8])).collect();
    let started = Instant::now();
    let names = resolver.lookup_many(&ips);
    let elapsed = started.elapsed();
    assert_eq!(names.len(), count);
    assert!(names.values().all(Option::is_none));
    let bound = timeout * vttl_seclytics::enrich::rdns::BATCH_TIMEOUTS;
    assert!(elapsed < bound + Duration::from_millis(700), "took {elapsed:?}, bound {bound:?}");
}

#[test]
fn system_resolver_is_either_enabled_or_disabled_with_a_warning() {
    let (resolver, warning) = ReverseResolver::new(None, Duration::from_millis(200)).expect("resolver");
    assert_eq!(resolver.is_enabled(), warning.is_none(), "{warning:?}");
    if let Some(warning) = warning {
        assert!(warning.contains("reverse DNS disabled"), "{warning}");
    }
}

#[test]
fn unreadable_list_file_is_a_warning_and_the_others_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("KWordwatchlist.txt")).expect("a folder where a file is expected");
    write(dir.path(), "DNwatchlist.txt", b"  AgentTesla  \r\n");
    let (lists, warnings) = WatchLists::load(dir.path(), false);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].file, dir.path().join("KWordwatchlist.txt"));
    assert_eq!(warnings[0].line, 0);
    assert!(!lists.has_keywords());
    assert_eq!(lists.detection_matches([" AGENTTESLA "]), vec!["agenttesla"]);
}

#[test]
fn ip_domain_candidates_are_normalised_like_the_keys() {
    let (_dir, lists, _) = load(&[("IPDwatchlist.txt", "bad.example.com.|trailing dot in file\r\n")], false);
    assert_eq!(
        lists.ip_domain_matches(["BAD.example.com.", " bad.example.com "]),
        vec!["trailing dot in file/bad.example.com"]
    );
    assert!(lists.ip_domain_matches(["sub.bad.example.com", "example.com"]).is_empty());
}

#[test]
fn shipped_url_list_matches_realistic_urls() {
    let (lists, _) = WatchLists::load(&repo_file("config"), false);
    let urls =
        ["hxxp://blog.example/wp-content/upd/inv.zip", "http://cdn.example/Setup.EXE", "http://ok.example/"];
    assert_eq!(lists.url_matches(urls), vec!["/wp-content/upd/", ".exe"]);
}
