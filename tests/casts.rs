//! Every shipped recording plays back cleanly: a viewer's terminal is left on
//! its main screen, with the mouse off and the cursor shown.

mod common;

use common::cast::Cast;

#[test]
fn every_shipped_cast_leaves_the_viewers_terminal_as_it_was() {
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let mut casts: Vec<_> = std::fs::read_dir(&assets)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cast"))
        .collect();
    casts.sort();
    assert!(casts.len() >= 2, "the demo and the lesson recordings are shipped: {casts:?}");
    for path in casts {
        let cast = Cast::read(&path);
        cast.assert_ends_cleanly(&path.display().to_string());
        assert!(!cast.markers().is_empty(), "{}: no markers to jump to", path.display());
    }
}
