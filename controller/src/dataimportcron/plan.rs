//! The pure part of a DataImportCron: when its schedule is due, the pinned URL and the name of
//! the import a digest gets, and which imports garbage collection removes.

use std::str::FromStr;

use croner::Cron;
use k8s_openapi::jiff::{tz::TimeZone, Timestamp};

/// A schedule: standard five-field cron (minute hour day-of-month month day-of-week), in UTC.
pub fn parse_schedule(text: &str) -> Result<Cron, String> {
    if text.split_whitespace().count() != 5 {
        return Err(format!(
            "schedule {text:?}: give five fields (minute hour day-of-month month day-of-week)"
        ));
    }
    Cron::from_str(text).map_err(|e| format!("schedule {text:?}: {e}"))
}

/// The first time after `after` the schedule fires.
pub fn next_run(cron: &Cron, after: Timestamp) -> Option<Timestamp> {
    let zoned = after.to_zoned(TimeZone::UTC);
    cron.find_next_occurrence(&zoned, false)
        .ok()
        .map(|z| z.timestamp())
}

/// Whether a run is due at `now`: never ran (the first import happens at once), or the
/// schedule fired since the last run.
pub fn due(cron: &Cron, last_run: Option<Timestamp>, now: Timestamp) -> bool {
    match last_run {
        None => true,
        Some(last) => next_run(cron, last).is_some_and(|next| next <= now),
    }
}

/// `docker://host/repo:tag` pinned to `digest`: `docker://host/repo@sha256:...`.
pub fn pinned_url(url: &str, digest: &str) -> String {
    let rest = url.strip_prefix("docker://").unwrap_or(url);
    let repo = match rest.split_once('@') {
        Some((r, _)) => r,
        None => {
            // A tag is what follows the last ':' after the last '/' (a port has a '/' after it).
            match rest.rfind(':') {
                Some(i) if !rest[i..].contains('/') => &rest[..i],
                _ => rest,
            }
        }
    };
    format!("docker://{repo}@{digest}")
}

/// The import (DataVolume and claim) of `digest` for DataSource `source`: CDI's
/// `<source>-<first 12 hex digits>`, cut to fit a DNS label.
pub fn import_name(source: &str, digest: &str) -> String {
    let hex: String = digest
        .rsplit(':')
        .next()
        .unwrap_or(digest)
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    let room = 63 - hex.len() - 1;
    let head: String = source.chars().take(room).collect();
    format!("{}-{hex}", head.trim_end_matches(['-', '.']))
}

/// One import as garbage collection sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    pub name: String,
    pub created: Timestamp,
    pub succeeded: bool,
}

/// The imports to delete: beyond the `keep` newest succeeded ones, and failed ones older than
/// the newest import; never `in_use` (what the DataSource points at) nor the newest import.
pub fn collect(imports: &[Import], keep: usize, in_use: Option<&str>) -> Vec<String> {
    let mut by_age: Vec<&Import> = imports.iter().collect();
    by_age.sort_by(|a, b| b.created.cmp(&a.created).then(b.name.cmp(&a.name)));
    let newest = by_age.first().map(|i| i.name.clone());
    let mut kept = 0;
    let mut out = Vec::new();
    for i in by_age {
        let protected = Some(i.name.as_str()) == in_use || Some(&i.name) == newest.as_ref();
        if i.succeeded && kept < keep {
            kept += 1;
            continue;
        }
        if !protected {
            out.push(i.name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn schedules_are_five_field_cron_in_utc() {
        let c = parse_schedule("*/10 * * * *").unwrap();
        assert_eq!(
            next_run(&c, at("2026-12-03T10:01:00Z")),
            Some(at("2026-12-03T10:10:00Z"))
        );
        let daily = parse_schedule("30 2 * * *").unwrap();
        assert_eq!(
            next_run(&daily, at("2026-12-03T10:00:00Z")),
            Some(at("2026-12-04T02:30:00Z"))
        );
        assert!(parse_schedule("0 0 * * * *").is_err(), "six fields");
        assert!(parse_schedule("61 * * * *").is_err());
        assert!(parse_schedule("@daily").is_err());
    }

    #[test]
    fn a_run_is_due_first_and_after_each_firing() {
        let c = parse_schedule("0 * * * *").unwrap();
        assert!(due(&c, None, at("2026-12-03T10:30:00Z")));
        assert!(!due(
            &c,
            Some(at("2026-12-03T10:00:05Z")),
            at("2026-12-03T10:59:59Z")
        ));
        assert!(due(
            &c,
            Some(at("2026-12-03T10:00:05Z")),
            at("2026-12-03T11:00:00Z")
        ));
    }

    #[test]
    fn urls_are_pinned_to_the_digest() {
        let d = "sha256:0123456789abcdef0123";
        assert_eq!(
            pinned_url(
                "docker://kiln-registry.kube-system.svc:5000/containerdisks/kiln-guest:latest",
                d
            ),
            format!("docker://kiln-registry.kube-system.svc:5000/containerdisks/kiln-guest@{d}")
        );
        assert_eq!(
            pinned_url("docker://reg:5000/x", d),
            format!("docker://reg:5000/x@{d}")
        );
        assert_eq!(
            pinned_url("docker://reg/x@sha256:old", d),
            format!("docker://reg/x@{d}")
        );
    }

    #[test]
    fn imports_are_named_after_their_digest() {
        let d = format!("sha256:{}", "ab12".repeat(16));
        assert_eq!(import_name("debian", &d), "debian-ab12ab12ab12");
        let long = import_name(&"x".repeat(80), &d);
        assert!(
            long.len() <= 63 && long.ends_with("-ab12ab12ab12"),
            "{long}"
        );
    }

    #[test]
    fn collection_keeps_the_newest_succeeded_and_what_is_in_use() {
        let i = |name: &str, t: &str, ok: bool| Import {
            name: name.into(),
            created: at(t),
            succeeded: ok,
        };
        let imports = vec![
            i("a", "2026-12-01T00:00:00Z", true),
            i("b", "2026-12-02T00:00:00Z", true),
            i("c", "2026-12-03T00:00:00Z", false),
            i("d", "2026-12-04T00:00:00Z", true),
            i("e", "2026-12-05T00:00:00Z", false), // the newest: still importing
        ];
        assert_eq!(collect(&imports, 2, Some("d")), ["c", "a"]);
        // The DataSource still on a: it stays.
        assert_eq!(collect(&imports, 1, Some("a")), ["c", "b"]);
        assert_eq!(collect(&imports, 3, Some("d")), ["c"]);
        assert!(collect(&[], 3, None).is_empty());
    }
}
