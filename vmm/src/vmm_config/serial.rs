//! Where the guest's serial console output goes.

use std::path::PathBuf;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialConfig {
    /// The VMM's standard output (the default); standard input feeds the guest.
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    Null,
}

impl std::str::FromStr for SerialConfig {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "-" | "stdout" => SerialConfig::Stdout,
            "none" | "null" => SerialConfig::Null,
            path => SerialConfig::File(path.into()),
        })
    }
}
