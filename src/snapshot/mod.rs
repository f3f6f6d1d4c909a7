//! Snapshots: one VM saved to a file and brought back exactly, in this run
//! or any later one. `format` is the file's layout (pure bytes); `schema`,
//! `identity` and `vcpu_record` its JSON's own types; `running` the running
//! code's view of the same; `state` how a file is checked and described;
//! `file` reading and writing it.

pub mod file;
pub mod format;
pub mod identity;
pub mod running;
pub mod schema;
pub mod state;
pub mod vcpu_record;

pub use state::{RuntimeState, SavedVcpu, SavedVcpuState, Snapshot, SnapshotState, VmIdentity};
