//! A VM's settings as the run that saved it knew them: part of the file
//! format (see [`super::schema`]), and what a restore names and weighs the VM by.

use serde::{Deserialize, Serialize};

use crate::hypercall::PortMap;

/// The VM as the run that took the snapshot knew it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmIdentity {
    /// Its name there.
    pub name: String,
    /// Its guest there (a built-in name or a path).
    pub guest: String,
    /// Its scheduling weight.
    pub weight: f64,
    /// Ports mapped to hypercalls: (port, call).
    pub ports: Vec<(u16, String)>,
    /// Show accesses to other ports.
    pub show_ports: bool,
}

impl VmIdentity {
    /// The port map these settings make.
    pub fn port_map(&self) -> Result<PortMap, String> {
        let mut map = PortMap::default();
        map.show_unknown = self.show_ports;
        for (port, call) in &self.ports {
            map.map(*port, call)?;
        }
        Ok(map)
    }
}
