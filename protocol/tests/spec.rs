//! The spec and the code tell the same story: these tests read `spec/protocol.md` itself and check
//! its frame catalogue, its error-code table and every frame of its worked example against this
//! crate.

use std::collections::BTreeMap;

use tern_protocol::frames::frame_type;
use tern_protocol::{ErrorCode, FrameDecoder};

fn spec() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/protocol.md");
    std::fs::read_to_string(path).expect("spec/protocol.md is readable")
}

/// The text between a heading that starts with `start` and the next heading of the same level.
fn section<'a>(text: &'a str, start: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("the spec has a section {start:?}"));
    let level = start.split(' ').next().unwrap_or("##");
    let rest = &text[from + start.len()..];
    let end = rest.find(&format!("\n{level} ")).map_or(rest.len(), |i| i);
    &rest[..end]
}

/// The cells of every table row in `text`.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect()
}

// Proves the catalogue in §7 lists exactly the frame types the crate defines, with the same numbers.
#[test]
fn frame_catalogue_matches_the_code() {
    let text = spec();
    let catalogue = section(&text, "## 7. Frame catalogue");
    let mut in_spec = BTreeMap::new();
    for row in rows(catalogue) {
        if let Some(hex) = row[0].strip_prefix("0x") {
            let number = u16::from_str_radix(hex, 16).expect("a hex type number");
            assert!(
                in_spec.insert(number, row[1].clone()).is_none(),
                "type 0x{number:04x} listed twice"
            );
        }
    }
    let in_code: BTreeMap<u16, String> = frame_type::ALL
        .iter()
        .map(|(n, name)| (*n, (*name).to_owned()))
        .collect();
    assert_eq!(in_spec, in_code);
}

// Proves the error table in §15.1 has every code the crate defines, with the same number, name and
// whether it closes the connection.
#[test]
fn error_codes_match_the_code() {
    let text = spec();
    let table = section(&text, "### 15.1 Error codes");
    let mut in_spec = BTreeMap::new();
    for row in rows(table) {
        let Ok(code) = row[0].parse::<u16>() else {
            continue;
        };
        let closes = match row[3].as_str() {
            "closes" => true,
            "stays open" => false,
            other => panic!("code {code}: connection column says {other:?}"),
        };
        in_spec.insert(code, (row[1].clone(), closes));
    }
    let in_code: BTreeMap<u16, (String, bool)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.0, (c.name().to_owned(), c.closes_connection())))
        .collect();
    assert_eq!(in_spec, in_code);
}

// Proves every frame of the worked example decodes as exactly one frame and re-encodes to the same
// bytes, so the hex a reader learns from is what the implementation produces.
#[test]
fn worked_example_frames_decode() {
    let text = spec();
    let example = section(&text, "## 18. Worked example");
    let mut count = 0;
    let mut rest = example;
    while let Some(start) = rest.find("```hex\n") {
        let body = &rest[start + 7..];
        let end = body.find("```").expect("a closed hex block");
        let bytes: Vec<u8> = body[..end]
            .split_whitespace()
            .map(|pair| u8::from_str_radix(pair, 16).expect("hex byte pairs"))
            .collect();
        let frame = FrameDecoder::new()
            .decode_exact(&bytes)
            .unwrap_or_else(|e| panic!("example frame {count}: {e}"));
        assert_eq!(
            frame.to_bytes().unwrap().as_ref(),
            bytes.as_slice(),
            "example frame {count} re-encodes"
        );
        count += 1;
        rest = &body[end + 3..];
    }
    assert!(count >= 15, "the worked example has {count} frames");
}

/// The rows of §4.1's table of revisions (the subsection is the last of its chapter: it ends at the
/// chapter's rule).
fn revisions(text: &str) -> Vec<Vec<String>> {
    let table = section(text, "### 4.1 Revisions");
    let table = table.split("\n---").next().unwrap_or_default();
    rows(table).into_iter().skip(1).collect()
}

// Proves the spec's title and its table of revisions (§4.1) name the revision this crate
// implements as the newest.
#[test]
fn revision_matches_the_code() {
    use tern_protocol::limits::{PROTOCOL_REVISION, PROTOCOL_VERSION};
    let text = spec();
    let revision = format!("{PROTOCOL_VERSION}.{PROTOCOL_REVISION}");
    let title = text.lines().next().unwrap_or_default();
    assert!(
        title.ends_with(&format!("(revision {revision})")),
        "{title}"
    );
    let newest = revisions(&text)
        .into_iter()
        .map(|row| row[0].clone())
        .next_back();
    assert_eq!(newest, Some(revision));
}

// Proves the row of revision 1.1 in §4.1 names every field appended since 1.0: the `after` of
// `History` and `HistoryPage` (whose tables in §10.6 and §10.7 type it as an appended option) and
// every frame of §19.7's table of appended `encrypted` flags.
#[test]
fn revision_1_1_lists_every_appended_field() {
    let text = spec();
    let row = revisions(&text)
        .into_iter()
        .find(|row| row[0] == "1.1")
        .expect("a row for revision 1.1");
    let adds = row[1].as_str();
    for (heading, name) in [
        ("### 10.6 History", "History.after"),
        ("### 10.7 HistoryPage", "HistoryPage.after"),
    ] {
        let appended = rows(section(&text, heading))
            .into_iter()
            .any(|r| r.len() > 2 && r[1] == "after" && r[2].starts_with("appended option"));
        assert!(appended, "{heading} has an appended option `after`");
        assert!(adds.contains(name), "the 1.1 row names {name}: {adds}");
    }
    let flags = section(&text, "### 19.7 Encrypted conversations");
    let mut count = 0;
    for r in rows(flags).into_iter().skip(1) {
        if r.len() == 4 && r[1] == "encrypted" {
            let frame = r[0].split_whitespace().next().unwrap_or_default();
            let frame = frame.trim_matches('`');
            assert!(adds.contains(frame), "the 1.1 row names {frame}: {adds}");
            count += 1;
        }
    }
    assert_eq!(count, 4, "§19.7 lists the four appended encrypted flags");
    assert!(adds.contains("encrypted"), "{adds}");
}
