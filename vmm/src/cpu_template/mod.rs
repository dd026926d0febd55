//! CPU templates: JSON files that adjust CPUID and MSRs and add guest command-line options,
//! chosen by name, by path, or automatically from the host.
//!
//! CPUID and MSR modifiers use Firecracker's custom-template bitmap format ("0b" then one
//! character per bit, most significant first: `0`/`1` force the bit, `x` keeps KVM's value).

mod bitmap;
mod select;

use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry};
use serde::Deserialize;
use thiserror::Error;
use tracing::warn;

pub use bitmap::Bitmap;
pub use select::{builtin_templates, TemplateChoice};

#[derive(Debug, Error)]
pub enum CpuTemplateError {
    #[error("CPU template {origin}: {source}")]
    Parse {
        origin: String,
        source: serde_json::Error,
    },
    #[error("CPU template {origin}: {what}")]
    Invalid { origin: String, what: String },
    #[error(transparent)]
    File(#[from] devices::host_file::HostFileError),
    #[error("unknown CPU template {0:?}: use auto, none, a built-in name ({1}) or a path to a JSON file")]
    Unknown(String, String),
}

/// Which host a template is meant for; used by `--cpu-template auto`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostMatch {
    /// A kernel module that must be loaded on the host (`/sys/module/<name>` exists).
    pub kernel_module: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegisterModifier {
    register: String,
    bitmap: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCpuidModifier {
    leaf: String,
    #[serde(default = "zero_hex")]
    subleaf: String,
    #[serde(default)]
    flags: u32,
    modifiers: Vec<RawRegisterModifier>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMsrModifier {
    addr: String,
    bitmap: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    host_match: Option<HostMatch>,
    #[serde(default)]
    kernel_cmdline: String,
    #[serde(default)]
    cpuid_modifiers: Vec<RawCpuidModifier>,
    #[serde(default)]
    msr_modifiers: Vec<RawMsrModifier>,
}

fn zero_hex() -> String {
    "0x0".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuidModifier {
    pub leaf: u32,
    pub subleaf: u32,
    pub register: CpuidRegister,
    pub bitmap: Bitmap,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrModifier {
    pub index: u32,
    pub bitmap: Bitmap,
}

/// A validated CPU template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuTemplate {
    pub name: String,
    pub description: String,
    pub host_match: Option<HostMatch>,
    /// Options added to the guest command line (before the user's own, so the user can override).
    pub kernel_cmdline: String,
    pub cpuid: Vec<CpuidModifier>,
    pub msrs: Vec<MsrModifier>,
}

fn parse_hex_u32(origin: &str, field: &str, s: &str) -> Result<u32, CpuTemplateError> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u32::from_str_radix(digits, 16).map_err(|_| CpuTemplateError::Invalid {
        origin: origin.into(),
        what: format!("{field} {s:?} is not a 32-bit hex number like \"0x1\""),
    })
}

impl CpuTemplate {
    /// Parses and validates a template; `origin` names it in errors (a path or a built-in name).
    pub fn from_json(origin: &str, json: &str) -> Result<Self, CpuTemplateError> {
        let raw: RawTemplate =
            serde_json::from_str(json).map_err(|source| CpuTemplateError::Parse {
                origin: origin.into(),
                source,
            })?;
        let invalid = |what: String| CpuTemplateError::Invalid {
            origin: origin.into(),
            what,
        };
        let mut cpuid = Vec::new();
        for m in &raw.cpuid_modifiers {
            let leaf = parse_hex_u32(origin, "leaf", &m.leaf)?;
            let subleaf = parse_hex_u32(origin, "subleaf", &m.subleaf)?;
            let _ = m.flags; // accepted for Firecracker compatibility; matching uses the subleaf
            for r in &m.modifiers {
                let register = match r.register.as_str() {
                    "eax" => CpuidRegister::Eax,
                    "ebx" => CpuidRegister::Ebx,
                    "ecx" => CpuidRegister::Ecx,
                    "edx" => CpuidRegister::Edx,
                    other => return Err(invalid(format!("unknown CPUID register {other:?}"))),
                };
                let bitmap = Bitmap::parse(&r.bitmap, 32).map_err(invalid)?;
                cpuid.push(CpuidModifier {
                    leaf,
                    subleaf,
                    register,
                    bitmap,
                });
            }
        }
        let mut msrs = Vec::new();
        for m in &raw.msr_modifiers {
            msrs.push(MsrModifier {
                index: parse_hex_u32(origin, "addr", &m.addr)?,
                bitmap: Bitmap::parse(&m.bitmap, 64).map_err(invalid)?,
            });
        }
        if let Some(module) = raw
            .host_match
            .as_ref()
            .and_then(|h| h.kernel_module.as_ref())
        {
            if module.is_empty()
                || !module
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(invalid(format!(
                    "host_match.kernel_module {module:?} is not a module name"
                )));
            }
        }
        if raw.kernel_cmdline.contains(['\n', '\0']) {
            return Err(invalid("kernel_cmdline must be a single line".into()));
        }
        Ok(CpuTemplate {
            name: raw.name.unwrap_or_else(|| origin.to_string()),
            description: raw.description.unwrap_or_default(),
            host_match: raw.host_match,
            kernel_cmdline: raw.kernel_cmdline.trim().to_string(),
            cpuid,
            msrs,
        })
    }

    /// Applies the CPUID modifiers to one vCPU's entries. A leaf KVM does not report is skipped
    /// with a warning: a template cannot invent leaves the host does not support.
    pub fn apply_cpuid(&self, entries: &mut [kvm_cpuid_entry2]) {
        for m in &self.cpuid {
            let Some(e) = entries
                .iter_mut()
                .find(|e| e.function == m.leaf && e.index == m.subleaf)
            else {
                warn!(
                    "CPU template {}: CPUID leaf {:#x} subleaf {:#x} is not reported by KVM; skipped",
                    self.name, m.leaf, m.subleaf
                );
                continue;
            };
            let reg = match m.register {
                CpuidRegister::Eax => &mut e.eax,
                CpuidRegister::Ebx => &mut e.ebx,
                CpuidRegister::Ecx => &mut e.ecx,
                CpuidRegister::Edx => &mut e.edx,
            };
            *reg = m.bitmap.apply(u64::from(*reg)) as u32;
        }
    }

    /// Applies the MSR modifiers to the boot MSR list; MSRs not in the list are added with the
    /// modifier applied to `current(index)` (the vCPU's present value).
    pub fn apply_msrs(&self, msrs: &mut Vec<kvm_msr_entry>, mut current: impl FnMut(u32) -> u64) {
        for m in &self.msrs {
            match msrs.iter_mut().find(|e| e.index == m.index) {
                Some(e) => e.data = m.bitmap.apply(e.data),
                None => msrs.push(kvm_msr_entry {
                    index: m.index,
                    data: m.bitmap.apply(current(m.index)),
                    ..Default::default()
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests;
