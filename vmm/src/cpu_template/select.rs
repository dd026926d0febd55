//! Choosing a CPU template: `auto` (match the host), `none`, a built-in name, or a JSON file.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use devices::host_file::read_text;

use super::{CpuTemplate, CpuTemplateError};

/// The largest template file read: a template lists a few dozen CPUID and MSR modifiers.
const TEMPLATE_FILE_LIMIT: u64 = 1 << 20;

/// Built-in templates, shipped in `resources/cpu-templates/`.
const BUILTIN: &[(&str, &str)] = &[(
    "pvm-host",
    include_str!("../../../resources/cpu-templates/pvm-host.json"),
)];

/// All built-in templates, parsed.
pub fn builtin_templates() -> Result<Vec<CpuTemplate>, CpuTemplateError> {
    BUILTIN
        .iter()
        .map(|(name, json)| CpuTemplate::from_json(name, json))
        .collect()
}

/// What the user asked for with `--cpu-template`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TemplateChoice {
    /// The first built-in template whose `host_match` holds on this host; none if none does.
    #[default]
    Auto,
    /// KVM's supported CPUID as is.
    None,
    /// A built-in template by name.
    Builtin(String),
    /// A template file.
    File(PathBuf),
}

impl FromStr for TemplateChoice {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => TemplateChoice::Auto,
            "none" => TemplateChoice::None,
            s if s.contains('/') || s.ends_with(".json") => TemplateChoice::File(s.into()),
            s => TemplateChoice::Builtin(s.into()),
        })
    }
}

impl TemplateChoice {
    /// Resolves the choice; `sys_module` is the host's `/sys/module` (a parameter for tests).
    pub fn resolve(&self, sys_module: &Path) -> Result<Option<CpuTemplate>, CpuTemplateError> {
        match self {
            TemplateChoice::None => Ok(None),
            TemplateChoice::Auto => Ok(builtin_templates()?
                .into_iter()
                .find(|t| matches_host(t, sys_module))),
            TemplateChoice::Builtin(name) => {
                let all = builtin_templates()?;
                let names = all
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                all.iter()
                    .find(|t| &t.name == name)
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| CpuTemplateError::Unknown(name.clone(), names))
            }
            TemplateChoice::File(path) => {
                let json = read_text("CPU template", path, TEMPLATE_FILE_LIMIT)?;
                CpuTemplate::from_json(&path.display().to_string(), &json).map(Some)
            }
        }
    }
}

/// Whether the template's `host_match` holds; a template without one never matches `auto`.
fn matches_host(t: &CpuTemplate, sys_module: &Path) -> bool {
    match t
        .host_match
        .as_ref()
        .and_then(|h| h.kernel_module.as_deref())
    {
        Some(module) => sys_module.join(module).is_dir(),
        None => false,
    }
}
