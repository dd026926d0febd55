//! The NoCloud seed as read: meta-data, and user-data as cloud-config (the keys Kiln applies,
//! every other key kept by name to be reported) or as a script.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use crate::Error;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MetaData {
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub local_hostname: Option<String>,
}

/// What user-data holds.
#[derive(Debug)]
pub enum UserData {
    None,
    Config(Box<CloudConfig>),
    /// A script (`#!...`), run once per instance.
    Script(String),
}

#[derive(Debug, Default, Deserialize)]
pub struct CloudConfig {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub fqdn: Option<String>,
    /// Users to create; "default" (or no list) is the image's default user.
    #[serde(default)]
    pub users: Option<Vec<UserEntry>>,
    /// Keys for the default user.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub write_files: Vec<WriteFile>,
    #[serde(default)]
    pub bootcmd: Vec<Command>,
    #[serde(default)]
    pub runcmd: Vec<Command>,
    /// Keys Kiln does not apply (reported on the console).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UserEntry {
    /// "default".
    Name(String),
    User(Box<User>),
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub shell: Option<String>,
    /// "ALL=(ALL) NOPASSWD:ALL" or a list of such rules; false for none.
    #[serde(default)]
    pub sudo: Option<Value>,
    #[serde(default)]
    pub groups: Option<Value>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WriteFile {
    pub path: String,
    #[serde(default)]
    pub content: String,
    /// b64 / base64, or text (default).
    #[serde(default)]
    pub encoding: Option<String>,
    /// Octal, as a string ("0644") or a YAML number.
    #[serde(default)]
    pub permissions: Option<Value>,
    /// user:group.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub append: bool,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A command: a shell line, or an argument list run without a shell.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Args(Vec<String>),
}

pub fn meta_data(text: &str) -> Result<MetaData, Error> {
    if text.trim().is_empty() {
        return Ok(MetaData::default());
    }
    serde_yaml::from_str(text).map_err(|e| Error::Seed(format!("meta-data: {e}")))
}

pub fn user_data(text: &str) -> Result<UserData, Error> {
    let first = text.lines().next().unwrap_or_default().trim();
    if first.starts_with("#!") {
        return Ok(UserData::Script(text.to_string()));
    }
    if first.starts_with("#cloud-config") {
        let config: Option<CloudConfig> = serde_yaml::from_str(text)
            .map_err(|e| Error::Seed(format!("user-data (cloud-config): {e}")))?;
        return Ok(config.map_or(UserData::None, |c| UserData::Config(Box::new(c))));
    }
    if text.trim().is_empty() {
        return Ok(UserData::None);
    }
    Err(Error::Seed(format!(
        "user-data starts with {first:?}: Kiln's Debian image applies #cloud-config and #! scripts"
    )))
}

impl WriteFile {
    pub fn bytes(&self) -> Result<Vec<u8>, Error> {
        use base64::Engine;
        match self.encoding.as_deref() {
            None | Some("text") | Some("text/plain") => Ok(self.content.clone().into_bytes()),
            Some("b64") | Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(self.content.trim())
                .map_err(|e| Error::Seed(format!("write_files {}: base64: {e}", self.path))),
            Some(other) => Err(Error::Seed(format!(
                "write_files {}: encoding {other} (Kiln's image takes text and b64)",
                self.path
            ))),
        }
    }

    /// The mode: "0600" / "600" / 0o600 written as the YAML number 600 or 0600.
    pub fn mode(&self) -> Result<u32, Error> {
        let bad = || {
            Error::Seed(format!(
                "write_files {}: permissions {:?}",
                self.path, self.permissions
            ))
        };
        match &self.permissions {
            None => Ok(0o644),
            Some(Value::String(s)) => {
                u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| bad())
            }
            Some(Value::Number(n)) => {
                // YAML 1.1's 0644 reads as the decimal digits 644 here: take them as octal.
                let digits = n.as_u64().ok_or_else(bad)?.to_string();
                u32::from_str_radix(&digits, 8).map_err(|_| bad())
            }
            Some(_) => Err(bad()),
        }
    }
}

impl Command {
    /// The command as one line of a POSIX shell script.
    pub fn shell_line(&self) -> String {
        match self {
            Command::Shell(s) => s.clone(),
            Command::Args(args) => args
                .iter()
                .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_config_keys_kiln_applies_and_those_it_reports() {
        let text = "#cloud-config\nhostname: web\nssh_authorized_keys: [ssh-ed25519 AAA k]\nwrite_files:\n  - path: /etc/x\n    content: hi\n    permissions: '0600'\n  - path: /etc/y\n    content: aGk=\n    encoding: b64\n    permissions: 0755\nruncmd:\n  - echo one\n  - [touch, \"/tmp/it's\"]\npackages: [nginx]\n";
        let UserData::Config(c) = user_data(text).unwrap() else {
            panic!("not a config")
        };
        assert_eq!(c.hostname.as_deref(), Some("web"));
        assert_eq!(c.ssh_authorized_keys, ["ssh-ed25519 AAA k"]);
        assert_eq!(c.write_files[0].mode().unwrap(), 0o600);
        assert_eq!(c.write_files[1].mode().unwrap(), 0o755);
        assert_eq!(c.write_files[1].bytes().unwrap(), b"hi");
        assert_eq!(c.runcmd[1].shell_line(), r#"'touch' '/tmp/it'\''s'"#);
        assert_eq!(c.other.keys().collect::<Vec<_>>(), ["packages"]);
    }

    #[test]
    fn scripts_meta_data_and_bad_seeds() {
        assert!(matches!(
            user_data("#!/bin/sh\necho hi\n").unwrap(),
            UserData::Script(_)
        ));
        assert!(matches!(user_data("").unwrap(), UserData::None));
        assert!(matches!(
            user_data("#cloud-config\n").unwrap(),
            UserData::None
        ));
        let e = user_data("Content-Type: multipart/mixed\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("#cloud-config and #! scripts"), "{e}");
        assert!(user_data("#cloud-config\nwrite_files: 3\n").is_err());
        let m = meta_data("instance-id: i-1\nlocal-hostname: db\n").unwrap();
        assert_eq!(m.instance_id.as_deref(), Some("i-1"));
        assert_eq!(m.local_hostname.as_deref(), Some("db"));
        assert!(meta_data("[").is_err());
        let bad = WriteFile {
            path: "/x".into(),
            encoding: Some("gzip".into()),
            ..Default::default()
        };
        assert!(bad.bytes().is_err());
    }
}
