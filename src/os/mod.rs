//! Where the process meets the operating system: stop signals, the files a
//! user names, writers that never hold up a run's end, and listeners that
//! back off when accept fails.

pub mod affinity;
pub mod backoff;
pub mod files;
pub mod line_file;
pub mod rescue;
pub mod signals;
pub mod stream;
