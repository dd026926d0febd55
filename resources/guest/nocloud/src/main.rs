//! kiln-nocloud: applies a cloud-init NoCloud seed in Kiln's Debian image, where cloud-init
//! itself cannot start in time (see resources/guest/debian/README.md). Run at boot with the
//! mounted seed: the hostname every boot; bootcmd every boot; the default user and SSH keys,
//! write_files, runcmd and user-data scripts once per instance-id. Keys it does not apply are
//! named on the console, never silently dropped.

mod config;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};

use config::{CloudConfig, Command, MetaData, User, UserData, UserEntry};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Seed(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Failed(String),
}

/// The image's default user (Debian's cloud images name theirs the same).
const DEFAULT_USER: &str = "debian";
const STATE: &str = "/var/lib/kiln-nocloud";

/// A console line, stamped with the guest's uptime as the kernel stamps its own (boot time
/// here is spent in steps worth seeing).
fn say(msg: &str) {
    let uptime = fs::read_to_string("/proc/uptime").unwrap_or_default();
    let seconds = uptime.split_whitespace().next().unwrap_or("?");
    println!("[{seconds:>9}] kiln-nocloud: {msg}");
}

fn read(seed: &Path, name: &str) -> Result<String, Error> {
    match fs::read_to_string(seed.join(name)) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::Io(format!("reading {name}"), e)),
    }
}

fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T, Error> {
    r.map_err(|e| Error::Io(what.into(), e))
}

/// Sets `path`'s mode.
fn chmod(path: impl AsRef<Path>, mode: u32) -> Result<(), Error> {
    let path = path.as_ref();
    io(
        format!("chmod {:o} {}", mode, path.display()),
        fs::set_permissions(path, fs::Permissions::from_mode(mode)),
    )
}

fn set_hostname(name: &str) -> Result<(), Error> {
    let short = name.split('.').next().unwrap_or(name);
    // SAFETY: the pointer and length describe `short`'s bytes, which outlive the call.
    let rc = unsafe { libc::sethostname(short.as_ptr().cast(), short.len()) };
    if rc != 0 {
        return Err(Error::Io(
            "sethostname".into(),
            std::io::Error::last_os_error(),
        ));
    }
    io(
        "/etc/hostname",
        fs::write("/etc/hostname", format!("{short}\n")),
    )?;
    let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
    let mut kept: Vec<&str> = hosts
        .lines()
        .filter(|l| !l.starts_with("127.0.1.1"))
        .collect();
    let line = if short == name {
        format!("127.0.1.1\t{short}")
    } else {
        format!("127.0.1.1\t{name} {short}")
    };
    kept.push(&line);
    io(
        "/etc/hosts",
        fs::write("/etc/hosts", kept.join("\n") + "\n"),
    )
}

fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let status = io(
        format!("running {program}"),
        Process::new(program).args(args).status(),
    )?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "{program} {}: {status}",
            args.join(" ")
        )))
    }
}

/// Runs `lines` as one /bin/sh script (what cloud-init's runcmd and bootcmd are).
fn run_script(name: &str, lines: &[String]) -> Result<(), Error> {
    let path = PathBuf::from(STATE).join(name);
    let body = format!("#!/bin/sh\n{}\n", lines.join("\n"));
    io(
        format!("writing {}", path.display()),
        fs::write(&path, body),
    )?;
    run("/bin/sh", &[&path.display().to_string()])
}

/// Field `want`, a number, of the first entry of an /etc/passwd or /etc/group style file whose
/// field `key` is `value`.
fn field_where(file: &str, key: usize, value: &str, want: usize) -> Option<u32> {
    fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(':').collect();
        (fields.get(key) == Some(&value)).then(|| fields.get(want)?.parse().ok())?
    })
}

/// The id (third field) of `name` in an /etc/passwd or /etc/group style file.
fn id_in(file: &str, name: &str) -> Option<u32> {
    field_where(file, 0, name, 2)
}

fn user_exists(name: &str) -> bool {
    id_in("/etc/passwd", name).is_some()
}

/// Gives `path` to `owner` ("user", "user:group" or "user:"; numeric ids too) in-process:
/// chown(1) is dynamically linked, and each exec of one costs seconds in this guest.
fn chown(path: impl AsRef<Path>, owner: &str) -> Result<(), Error> {
    let path = path.as_ref();
    let (user, group) = owner.split_once(':').unwrap_or((owner, ""));
    let lookup = |file: &str, name: &str| {
        name.parse()
            .ok()
            .or_else(|| id_in(file, name))
            .ok_or_else(|| Error::Seed(format!("owner {owner}: no such {name} in {file}")))
    };
    let uid = lookup("/etc/passwd", user)?;
    let gid = match group {
        // "user:" is the user's login group, the fourth field of its /etc/passwd entry.
        "" if owner.contains(':') => Some(
            field_where("/etc/passwd", 2, &uid.to_string(), 3)
                .ok_or_else(|| Error::Seed(format!("owner {owner}: no login group")))?,
        ),
        "" => None,
        g => Some(lookup("/etc/group", g)?),
    };
    io(
        format!("chown {owner} {}", path.display()),
        std::os::unix::fs::lchown(path, Some(uid), gid),
    )
}

/// Creates `user` (if new) with its keys, shell and sudo rule.
fn ensure_user(user: &User) -> Result<(), Error> {
    for key in user.other.keys() {
        say(&format!(
            "users[{}].{key} is not applied by Kiln's image",
            user.name
        ));
    }
    if !user_exists(&user.name) {
        let shell = user.shell.as_deref().unwrap_or("/bin/bash");
        let mut args = vec!["-m", "-s", shell, "-p", "*"];
        let groups = match &user.groups {
            Some(serde_yaml::Value::String(s)) => s.replace(' ', ""),
            Some(serde_yaml::Value::Sequence(v)) => v
                .iter()
                .filter_map(|g| g.as_str())
                .collect::<Vec<_>>()
                .join(","),
            _ => String::new(),
        };
        if !groups.is_empty() {
            args.extend(["-G", &groups]);
        }
        args.push(&user.name);
        run("/usr/sbin/useradd", &args)?;
        say(&format!("created user {}", user.name));
    }
    let rules: Vec<String> = match &user.sudo {
        Some(serde_yaml::Value::String(s)) => vec![s.clone()],
        Some(serde_yaml::Value::Sequence(v)) => v
            .iter()
            .filter_map(|r| r.as_str().map(String::from))
            .collect(),
        _ => vec![],
    };
    if !rules.is_empty() {
        let text: String = rules
            .iter()
            .map(|r| format!("{} {r}\n", user.name))
            .collect();
        let path = format!("/etc/sudoers.d/90-kiln-{}", user.name);
        io(&path, fs::write(&path, text))?;
        chmod(&path, 0o440)?;
    }
    if !user.ssh_authorized_keys.is_empty() {
        let home = PathBuf::from(if user.name == "root" {
            "/root".into()
        } else {
            format!("/home/{}", user.name)
        });
        let ssh = home.join(".ssh");
        io(
            format!("creating {}", ssh.display()),
            fs::create_dir_all(&ssh),
        )?;
        let keys = ssh.join("authorized_keys");
        let mut text = fs::read_to_string(&keys).unwrap_or_default();
        for k in &user.ssh_authorized_keys {
            if !text.lines().any(|l| l == k) {
                text.push_str(k);
                text.push('\n');
            }
        }
        io(
            format!("writing {}", keys.display()),
            fs::write(&keys, text),
        )?;
        chmod(&ssh, 0o700)?;
        chmod(&keys, 0o600)?;
        let owner = format!("{}:", user.name);
        chown(&ssh, &owner)?;
        chown(&keys, &owner)?;
        say(&format!(
            "{} SSH key(s) for {}",
            user.ssh_authorized_keys.len(),
            user.name
        ));
    }
    Ok(())
}

fn write_file(f: &config::WriteFile) -> Result<(), Error> {
    for key in f.other.keys() {
        say(&format!(
            "write_files {}: {key} is not applied by Kiln's image",
            f.path
        ));
    }
    let bytes = f.bytes()?;
    let mode = f.mode()?;
    let path = Path::new(&f.path);
    if let Some(dir) = path.parent() {
        io(
            format!("creating {}", dir.display()),
            fs::create_dir_all(dir),
        )?;
    }
    let mut file = io(
        format!("opening {}", f.path),
        fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(f.append)
            .truncate(!f.append)
            .mode(mode)
            .open(path),
    )?;
    io(format!("writing {}", f.path), file.write_all(&bytes))?;
    chmod(path, mode)?;
    if let Some(owner) = &f.owner {
        chown(path, owner)?;
    }
    say(&format!("wrote {} ({} bytes)", f.path, bytes.len()));
    Ok(())
}

fn default_user(keys: &[String]) -> User {
    User {
        name: DEFAULT_USER.into(),
        ssh_authorized_keys: keys.to_vec(),
        sudo: Some(serde_yaml::Value::String("ALL=(ALL) NOPASSWD:ALL".into())),
        groups: Some(serde_yaml::Value::String("sudo".into())),
        ..Default::default()
    }
}

/// What happens once per instance.
fn first_boot(config: &CloudConfig) -> Result<(), Error> {
    let users: Vec<User> = match &config.users {
        None => vec![default_user(&config.ssh_authorized_keys)],
        Some(list) => list
            .iter()
            .map(|u| match u {
                UserEntry::Name(n) if n == "default" => {
                    Ok(default_user(&config.ssh_authorized_keys))
                }
                UserEntry::Name(n) => Err(Error::Seed(format!(
                    "users: {n:?} (give a mapping with a name, or \"default\")"
                ))),
                UserEntry::User(u) => Ok(u.as_ref().clone()),
            })
            .collect::<Result<_, _>>()?,
    };
    for u in &users {
        ensure_user(u)?;
    }
    for f in &config.write_files {
        write_file(f)?;
    }
    if !config.runcmd.is_empty() {
        let lines: Vec<String> = config.runcmd.iter().map(Command::shell_line).collect();
        run_script("runcmd", &lines)?;
        say(&format!("ran runcmd ({} commands)", lines.len()));
    }
    Ok(())
}

fn apply(seed: &Path) -> Result<(), Error> {
    let meta: MetaData = config::meta_data(&read(seed, "meta-data")?)?;
    let user = config::user_data(&read(seed, "user-data")?)?;
    if !read(seed, "network-config")?.trim().is_empty() {
        say("network-config is not applied: eth0 takes its address by DHCP");
    }
    let instance = meta.instance_id.clone().unwrap_or_else(|| "none".into());
    io("creating the state folder", fs::create_dir_all(STATE))?;
    let marker = PathBuf::from(STATE).join("instance-id");
    let seen = fs::read_to_string(&marker).unwrap_or_default().trim() == instance;
    let config = match &user {
        UserData::Config(c) => Some(c.as_ref()),
        _ => None,
    };
    let host = config
        .and_then(|c| c.fqdn.clone().or_else(|| c.hostname.clone()))
        .or(meta.local_hostname.clone());
    if let Some(h) = &host {
        set_hostname(h)?;
        say(&format!("hostname {h}"));
    }
    if let Some(c) = config {
        let ignored: Vec<&str> = c.other.keys().map(String::as_str).collect();
        if !ignored.is_empty() {
            say(&format!(
                "not applied by Kiln's image (cloud-init cannot run here): {}",
                ignored.join(", ")
            ));
        }
        if !c.bootcmd.is_empty() {
            let lines: Vec<String> = c.bootcmd.iter().map(Command::shell_line).collect();
            run_script("bootcmd", &lines)?;
        }
    }
    if seen {
        say(&format!(
            "instance {instance} was set up on an earlier boot"
        ));
        return Ok(());
    }
    match &user {
        UserData::Config(c) => first_boot(c)?,
        UserData::Script(s) => {
            ensure_user(&default_user(&[]))?;
            let path = PathBuf::from(STATE).join("user-script");
            io("writing the user-data script", fs::write(&path, s))?;
            chmod(&path, 0o755)?;
            run(&path.display().to_string(), &[])?;
            say("ran the user-data script");
        }
        UserData::None => ensure_user(&default_user(&[]))?,
    }
    io(
        "writing the instance marker",
        fs::write(&marker, format!("{instance}\n")),
    )?;
    Ok(())
}

fn main() -> ExitCode {
    let seed = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("/run/kiln/seed"), PathBuf::from);
    say(&format!("applying the seed in {}", seed.display()));
    match apply(&seed) {
        Ok(()) => {
            say("done");
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&format!("failed: {e}"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_by_whole_name() {
        let dir = std::env::temp_dir().join(format!("kiln-nocloud-ids-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("passwd");
        fs::write(
            &file,
            "root:x:0:0:root:/root:/bin/bash\ndebian2:x:1001:1001::/home/debian2:/bin/bash\n\
             debian:x:1000:1000::/home/debian:/bin/bash\nbroken\n",
        )
        .unwrap();
        let file = file.display().to_string();
        assert_eq!(id_in(&file, "debian"), Some(1000));
        assert_eq!(id_in(&file, "root"), Some(0));
        assert_eq!(id_in(&file, "debia"), None);
        assert_eq!(id_in(&file, "broken"), None);
        assert_eq!(id_in("/nonexistent/passwd", "root"), None);
        // A login group, found by uid (chown's "user:").
        assert_eq!(field_where(&file, 2, "1001", 3), Some(1001));
        assert_eq!(field_where(&file, 2, "1002", 3), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
