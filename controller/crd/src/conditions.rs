//! Conditions as KubeVirt writes them (type, status, reason, message, transition time), and
//! the one way Kiln updates a list of them: the transition time moves only when the status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

/// VM and VMI condition types Kiln reports.
pub mod kind {
    pub const READY: &str = "Ready";
    pub const PAUSED: &str = "Paused";
    pub const FAILURE: &str = "Failure";
    /// VMI: the pod's scheduling (KubeVirt copies the pod's PodScheduled condition).
    pub const POD_SCHEDULED: &str = "PodScheduled";
    /// VMI: whether the controller could realise the spec (pod, volumes, images); the reason
    /// says what is wrong (FailedPvcNotFound, ErrImagePull, ImagePullBackOff, ...).
    pub const SYNCHRONIZED: &str = "Synchronized";
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Condition {
    pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Condition {
        Condition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            last_probe_time: None,
            last_transition_time: None,
            reason: (!reason.is_empty()).then(|| reason.into()),
            message: Some(message.into()).filter(|m: &String| !m.is_empty()),
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// The condition of `type_` in `conditions`, if any.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether `conditions` has `type_` with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(Condition::is_true)
}

/// Builds the new list from `wanted`, keeping each condition's transition time from `old`
/// when its status did not change, and stamping `now` when it did (or is new).
pub fn merge(old: &[Condition], wanted: Vec<Condition>, now: &Time) -> Vec<Condition> {
    wanted
        .into_iter()
        .map(|mut c| {
            c.last_transition_time = match find(old, &c.type_) {
                Some(prev) if prev.status == c.status => prev
                    .last_transition_time
                    .clone()
                    .or_else(|| Some(now.clone())),
                _ => Some(now.clone()),
            };
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let old = merge(
            &[],
            vec![Condition::new("Ready", false, "Booting", "")],
            &at(10),
        );
        assert_eq!(old[0].last_transition_time, Some(at(10)));
        let same = merge(
            &old,
            vec![Condition::new("Ready", false, "StillBooting", "x")],
            &at(20),
        );
        assert_eq!(same[0].last_transition_time, Some(at(10)));
        assert_eq!(same[0].reason.as_deref(), Some("StillBooting"));
        let flipped = merge(&same, vec![Condition::new("Ready", true, "", "")], &at(30));
        assert_eq!(flipped[0].last_transition_time, Some(at(30)));
        assert!(is_true(&flipped, "Ready"));
        assert!(!is_true(&flipped, "Paused"));
    }
}
