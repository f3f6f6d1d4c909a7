//! Snapshots: one VM saved to a file and brought back exactly, in this run
//! or any later one. `format` is the file's layout (pure bytes), `state` what
//! its JSON holds and how it is checked, `file` reading and writing it.

pub mod file;
pub mod format;
pub mod state;

pub use state::{RuntimeState, Snapshot, SnapshotState, VmIdentity};
