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
