//! The built-in job kinds (docs/protocol.md): `scan` and `demo`.

mod demo;
mod scan;

pub use demo::Demo;
pub use scan::{Scan, ScanLimits};

use crate::runtime::WorkerBuilder;

impl WorkerBuilder {
    /// Registers the built-in kinds: `demo`, and `scan` confined to
    /// `scan_root` (without one, every `scan` job fails: see
    /// [`Scan::new`]).
    pub fn builtin(self, scan_root: Option<std::path::PathBuf>) -> WorkerBuilder {
        self.handler(jobwire_core::kinds::DemoParams::KIND, Demo)
            .handler(jobwire_core::kinds::ScanParams::KIND, Scan::new(scan_root))
    }
}
