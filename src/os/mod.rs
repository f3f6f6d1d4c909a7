//! Where the process meets the operating system: stop signals, the files a
//! user names, and writers that never hold up a run's end.

pub mod files;
pub mod line_file;
pub mod rescue;
pub mod signals;
pub mod stream;
