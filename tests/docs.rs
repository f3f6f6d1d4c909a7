//! The README and docs/ hold together: every relative link and anchor
//! resolves, the README stays an entrance (at most 400 lines), and the pages
//! speak of dates and hosts, not of work sittings.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn pages() -> Vec<PathBuf> {
    let mut pages = vec![Path::new(ROOT).join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines outside fenced code blocks, with their numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push((number + 1, line));
        }
    }
    lines
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to hyphens; a repeated one gets -1, -2, ...
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (_, line) in prose(text) {
        let Some(heading) = line.strip_prefix('#') else { continue };
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while !seen.insert(unique.clone()) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
    }
    seen
}

/// The targets of the `[text](target)` links in a line, code spans left out.
fn links(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let without_code: String = line.split('`').enumerate().filter(|(i, _)| i % 2 == 0).map(|(_, s)| s).collect();
    let mut rest = without_code.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].to_string());
        rest = &after[end..];
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (number, line) in prose(&text) {
            for target in links(line) {
                if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
                let file = if path.is_empty() { page.clone() } else { page.parent().unwrap().join(path) };
                let place = format!("{}:{number}: {target}", page.strip_prefix(ROOT).unwrap().display());
                if !file.exists() {
                    broken.push(format!("{place}: no such file"));
                } else if !anchor.is_empty() {
                    let anchors = anchors(&std::fs::read_to_string(&file).unwrap());
                    if !anchors.contains(anchor) {
                        broken.push(format!("{place}: no such heading"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_an_entrance_and_maps_every_page() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 400, "the README has {lines} lines; depth goes in docs/");
    for page in &pages()[1..] {
        let name = format!("docs/{}", page.file_name().unwrap().to_string_lossy());
        assert!(readme.contains(&format!("]({name})")), "the README's map lacks {name}");
    }
    for needed in ["cargo run --release", "cargo test", "## Keys", "## Command line", "## Lessons"] {
        assert!(readme.contains(needed), "the README lacks {needed:?}");
    }
}

#[test]
fn pages_name_dates_and_hosts_not_work_sittings() {
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap().to_lowercase();
        // The word is put together here, so that this file does not itself
        // name what it forbids.
        let sitting = ["ses", "sion"].concat();
        let words = (1..=9).map(|n| format!("{sitting} {n}")).chain([format!("{sitting}s "), "sitting".into()]);
        for word in words {
            assert!(!text.contains(&word), "{} speaks of {word:?}", page.display());
        }
    }
}

#[test]
fn anchors_follow_github() {
    let text = "# Safety: what a guest can and cannot do\n## What this host's KVM can and cannot run\n## A\n## A\n";
    let anchors = anchors(text);
    for anchor in ["safety-what-a-guest-can-and-cannot-do", "what-this-hosts-kvm-can-and-cannot-run", "a", "a-1"] {
        assert!(anchors.contains(anchor), "{anchor} in {anchors:?}");
    }
    assert_eq!(links("see [x](a.md#b) and `[y](c.md)`"), ["a.md#b"]);
}

/// Every `matrix-tui ...` command of README.md and docs/: in code spans
/// (a paragraph's, across its line breaks) and at the start of a line of a
/// code block (a synopsis's explanation after two spaces left off; a
/// screen's header line starts with a space). Each with its page and line.
fn documented_commands() -> Vec<(String, String)> {
    let mut commands = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let name = page.strip_prefix(ROOT).unwrap().display().to_string();
        let (mut fenced, mut paragraph, mut starts) = (false, String::new(), 0);
        let spans_of = |paragraph: &mut String, starts: usize, commands: &mut Vec<(String, String)>| {
            for span in paragraph.split('`').skip(1).step_by(2) {
                if span.starts_with("matrix-tui ") || span == "matrix-tui" {
                    commands.push((format!("{name}:{starts}"), span.to_string()));
                }
            }
            paragraph.clear();
        };
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                spans_of(&mut paragraph, starts, &mut commands);
                continue;
            }
            if fenced {
                let line = line.strip_prefix("$ ").unwrap_or(line);
                if line.starts_with("matrix-tui") {
                    let command = line.split("  ").next().unwrap().split(" # ").next().unwrap().trim();
                    commands.push((format!("{name}:{}", number + 1), command.to_string()));
                }
            } else if line.trim().is_empty() {
                spans_of(&mut paragraph, starts, &mut commands);
            } else {
                if paragraph.is_empty() {
                    starts = number + 1;
                }
                paragraph.push_str(line);
                paragraph.push(' ');
            }
        }
        spans_of(&mut paragraph, starts, &mut commands);
    }
    commands
}

/// Placeholders in the docs' commands and values that stand for them.
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("OPTIONS", ""),
    ("--only NAME", "--only preempt"),
    ("NAME|LESSON.toml", "preemption"),
    ("NAME|FILE", "preemption"),
    ("NAME=GUEST[:WEIGHT]", "neo=ticker:2"),
    ("NAME=GUEST", "neo=ticker"),
    ("NAME=ARGS", "neo=1,2"),
    ("NAME=ADDR", "neo=127.0.0.1:1234"),
    ("NAME=MODE", "neo=long"),
    ("NAME=N", "neo=2"),
    ("FILE.cast", "x.cast"),
    ("FILE.toml", "assets/matrix.toml"),
    ("FILE.jsonl", "x.jsonl"),
    ("SCENARIO.toml", "assets/matrix.toml"),
    ("PATH", "x.elf"),
    // Parsed only, never bound.
    ("ADDR", "./in.sock"),
    ("FILE", "x.snap"),
    ("NAME", "neo"),
    ("DIR", "/tmp"),
];

#[test]
fn every_documented_command_parses_and_its_files_exist() {
    use clap::Parser;
    let commands = documented_commands();
    assert!(commands.len() > 30, "the docs' commands were found: {}", commands.len());
    let mut wrong = Vec::new();
    for (place, command) in &commands {
        // A synopsis ([--flag VALUE], A|B, ...) names flags: each must exist.
        let mut text = command.replace(['[', ']'], " ").replace("...", " ");
        for (placeholder, value) in PLACEHOLDERS {
            text = text.replace(placeholder, value);
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        if let Err(error) = matrix_tui::cli::Cli::try_parse_from(&words) {
            if !matches!(error.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) {
                wrong.push(format!("{place}: `{command}`: {}", error.render().to_string().lines().next().unwrap()));
            }
        }
        for word in &words {
            let file = Path::new(ROOT).join(word);
            if word.starts_with("assets/") && !file.exists() {
                wrong.push(format!("{place}: `{command}`: {word} does not exist"));
            }
        }
    }
    assert!(wrong.is_empty(), "commands in the docs that would fail:\n{}", wrong.join("\n"));
}

#[test]
fn every_check_kind_and_state_a_lesson_accepts_is_documented() {
    let docs = std::fs::read_to_string(Path::new(ROOT).join("docs/lessons.md")).unwrap();
    let head = "title = \"T\"\ntext = \"x\"\n[scenario]\n[[scenario.vm]]\nname = \"neo\"\nguest = \"neo\"\n\
                [[step]]\ndo = \"x\"\n";
    // The parser's own refusals list what it accepts.
    let accepted = |check: &str, after: &str| -> Vec<String> {
        let text = format!("{head}check = {check}\n");
        let error = matrix_tui::lesson::parse(&text, "t.toml", Path::new("")).unwrap_err().to_string();
        let list = error.split(after).nth(1).unwrap_or_else(|| panic!("{error}"));
        list.split([',', ' ']).filter(|word| !word.is_empty() && *word != "or").map(str::to_string).collect()
    };
    let kinds = accepted("{ }", "give one of ");
    let states = accepted("{ vm = \"neo\", state = \"x\" }", "use ");
    let outcomes = accepted("{ vm = \"neo\", migrated = \"x\" }", "use ");
    assert!(kinds.len() > 10 && states.len() > 5 && outcomes.len() == 3, "{kinds:?} {states:?} {outcomes:?}");
    for kind in &kinds {
        assert!(docs.contains(&format!("{kind} = ")), "docs/lessons.md does not show the check `{kind}`");
    }
    for word in states.iter().chain(&outcomes) {
        assert!(docs.contains(&format!("`{word}`")), "docs/lessons.md does not name `{word}`");
    }
}
