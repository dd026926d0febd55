//! Boot source: kernel image, optional initrd, and the user's part of the kernel command line.

use std::path::PathBuf;

use api::models::BootSource;
use thiserror::Error;

use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;

/// Command line used when the user gives none: the console on the first serial port.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSourceConfig {
    pub kernel_image_path: PathBuf,
    pub initrd_path: Option<PathBuf>,
    /// The user's command line; `None` means [`DEFAULT_BOOT_ARGS`].
    pub boot_args: Option<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BootSourceError {
    #[error("kernel command line is {0} bytes; Linux on x86_64 accepts at most {max} including the terminating NUL", max = CMDLINE_MAX_SIZE)]
    CmdlineTooLong(usize),
    #[error("kernel command line must be printable ASCII on one line (found byte {0:#04x})")]
    CmdlineInvalidByte(u8),
    #[error("kernel_image_path is empty")]
    NoKernel,
}

impl BootSourceConfig {
    /// The user's part of the command line.
    pub fn boot_args(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }

    /// Checks what can be checked without touching files or KVM.
    pub fn validate(&self) -> Result<(), BootSourceError> {
        if self.kernel_image_path.as_os_str().is_empty() {
            return Err(BootSourceError::NoKernel);
        }
        check_cmdline(self.boot_args())
    }

    pub fn to_api(&self) -> BootSource {
        BootSource {
            kernel_image_path: self.kernel_image_path.display().to_string(),
            initrd_path: self.initrd_path.as_ref().map(|p| p.display().to_string()),
            boot_args: self.boot_args.clone(),
        }
    }
}

impl TryFrom<&BootSource> for BootSourceConfig {
    type Error = BootSourceError;

    fn try_from(b: &BootSource) -> Result<Self, Self::Error> {
        let cfg = BootSourceConfig {
            kernel_image_path: b.kernel_image_path.clone().into(),
            initrd_path: b.initrd_path.as_ref().map(PathBuf::from),
            boot_args: b.boot_args.clone(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A command line Linux accepts: printable ASCII, short enough with its NUL.
pub fn check_cmdline(cmdline: &str) -> Result<(), BootSourceError> {
    if let Some(b) = cmdline.bytes().find(|b| !(0x20..0x7f).contains(b)) {
        return Err(BootSourceError::CmdlineInvalidByte(b));
    }
    if cmdline.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(BootSourceError::CmdlineTooLong(cmdline.len() + 1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: Option<&str>) -> BootSourceConfig {
        BootSourceConfig {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: args.map(str::to_string),
        }
    }

    #[test]
    fn default_args_and_limits() {
        assert_eq!(cfg(None).boot_args(), DEFAULT_BOOT_ARGS);
        assert!(cfg(Some(&"a".repeat(CMDLINE_MAX_SIZE - 1)))
            .validate()
            .is_ok());
        assert_eq!(
            cfg(Some(&"a".repeat(CMDLINE_MAX_SIZE))).validate(),
            Err(BootSourceError::CmdlineTooLong(CMDLINE_MAX_SIZE + 1))
        );
        assert_eq!(
            cfg(Some("a\nb")).validate(),
            Err(BootSourceError::CmdlineInvalidByte(b'\n'))
        );
    }
}
