//! The parsers that take untrusted input, fuzzed with a bounded number of cases: the config
//! (whole files and child entries, as `cadre actors spawn` sends them) and conversation ids.
//! No input may panic, and every rejection must be a clear error: `FILE:LINE:COL: message`
//! for the config, `FIELD: message` for ids.

use cadre_actors::SupervisorFlags;
use cadre_actors::config::{ChildConfig, Config, schema};
use cadre_actors::exec::{MAX_ID_LEN, check_conversation_id};
use proptest::prelude::*;

/// Values a field may be given, good and bad.
const VALUES: &[&str] = &[
    "",
    "~",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1",
    "7",
    "1.5",
    "1e400",
    "99999999999999999999999",
    "lots",
    "v1",
    "v2",
    "\"\"",
    "[]",
    "[a, b]",
    "[\"\"]",
    "{}",
    "{ a: 1 }",
    "one_for_one",
    "rest_for_one",
    "permanent",
    "temporary",
    "brutal_kill",
    "infinity",
    "http://127.0.0.1:1/v1",
    "https://x",
    "127.0.0.1:0",
    "not-an-address",
    "gvisor",
    "process",
    "[sh, -c, \"exit 3\"]",
    "\"\\u0000\"",
    "é",
    "&a",
    "*a",
    "!tag x",
    "|\n  text",
    "'single'",
    "- item",
    "\"a: b\"",
];

/// Every key the config knows, at any level.
fn keys() -> Vec<&'static str> {
    let mut keys: Vec<&str> = schema::sections()
        .iter()
        .flat_map(|s| s.fields.iter().map(|f| f.key))
        .collect();
    keys.extend(["zz_unknown", "version", "children", "- id"]);
    keys
}

/// YAML-shaped text: lines of known and unknown keys with good and bad values, nested at
/// random depths, sometimes with a stray character.
fn yamlish() -> impl Strategy<Value = String> {
    let line = (
        0usize..4,
        prop::sample::select(keys()),
        prop::sample::select(VALUES.to_vec()),
        prop::option::of(prop::sample::select(vec![
            "-", "#", "\t", ":", "---", "\u{feff}",
        ])),
    )
        .prop_map(|(depth, key, value, stray)| {
            format!(
                "{}{}{key}: {value}",
                "  ".repeat(depth),
                stray.unwrap_or("")
            )
        });
    prop::collection::vec(line, 0..12).prop_map(|lines| {
        let mut text = String::from("version: v1\n");
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
        text
    })
}

/// `FILE:LINE:COL: message` (or `FILE: message`), with a message.
fn clear_config_error(file: &str, error: &str) -> bool {
    let Some(rest) = error.strip_prefix(&format!("{file}:")) else {
        return false;
    };
    let mut parts = rest.splitn(3, ':');
    let (line, column, message) = (parts.next(), parts.next(), parts.next());
    let numbered = line.is_some_and(|l| l.parse::<usize>().is_ok())
        && column.is_some_and(|c| c.parse::<usize>().is_ok());
    numbered && message.is_some_and(|m| m.trim().len() > 3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn a_config_never_panics_and_every_rejection_names_its_place(text in yamlish()) {
        if let Err(e) = Config::parse("fuzz.yaml", &text) {
            let shown = e.to_string();
            prop_assert!(clear_config_error("fuzz.yaml", &shown), "{shown:?} for\n{text}");
        }
    }

    #[test]
    fn arbitrary_text_is_refused_clearly(text in ".{0,300}") {
        if let Err(e) = Config::parse("fuzz.yaml", &text) {
            let shown = e.to_string();
            prop_assert!(clear_config_error("fuzz.yaml", &shown), "{shown:?} for {text:?}");
        }
        if let Err(e) = ChildConfig::parse("spec_yaml", &text, &SupervisorFlags::default()) {
            let shown = e.to_string();
            prop_assert!(clear_config_error("spec_yaml", &shown), "{shown:?} for {text:?}");
        }
    }

    #[test]
    fn a_child_entry_never_panics(text in yamlish()) {
        let entry = text.trim_start_matches("version: v1\n");
        if let Err(e) = ChildConfig::parse("spec_yaml", entry, &SupervisorFlags::default()) {
            let shown = e.to_string();
            prop_assert!(clear_config_error("spec_yaml", &shown), "{shown:?} for\n{entry}");
        }
    }

    #[test]
    fn a_conversation_id_is_accepted_exactly_when_it_has_the_documented_form(
        id in prop_oneof![".{0,8}", "[A-Za-z0-9._:-]{1,210}", "[A-Za-zé ]{195,205}"],
    ) {
        let valid = !id.is_empty()
            && id.chars().count() <= MAX_ID_LEN
            && id.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
        match check_conversation_id("conversation_id", &id) {
            Ok(()) => prop_assert!(valid, "{id:?} accepted"),
            Err(e) => {
                prop_assert!(!valid, "{id:?} refused: {e}");
                let shown = e.to_string();
                prop_assert!(shown.contains("conversation_id: "), "{shown}");
                if id.chars().count() > MAX_ID_LEN {
                    let said = format!("{} characters", id.chars().count());
                    prop_assert!(shown.contains(&said), "{shown}");
                }
            }
        }
    }
}
