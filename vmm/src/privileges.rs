//! What each kiln-vmm thread gives up before it runs guest code or serves the API: every
//! capability, and the right to gain privileges again (`no_new_privs`).

use caps::errors::CapsError;
use caps::{CapSet, Capability};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PrivilegeError {
    #[error("dropping the thread's {set} capabilities: {source}")]
    Capabilities {
        set: &'static str,
        source: CapsError,
    },
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
}

/// Drops every capability of the calling thread (capabilities are per thread: each thread
/// calls this for itself) and sets `no_new_privs`. The bounding set is emptied too when the
/// thread may (CAP_SETPCAP); without it, an empty permitted set and `no_new_privs` already
/// mean nothing can be regained.
pub fn drop_privileges() -> Result<(), PrivilegeError> {
    let fail = |set| move |source| PrivilegeError::Capabilities { set, source };
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        caps::clear(None, CapSet::Bounding).map_err(fail("bounding"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(fail("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(fail("inheritable"))?;
    caps::clear(None, CapSet::Effective).map_err(fail("effective"))?;
    caps::clear(None, CapSet::Permitted).map_err(fail("permitted"))?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_drops_them_keeps_none_and_other_threads_keep_theirs() {
        let before = caps::read(None, CapSet::Permitted).unwrap_or_default();
        let after = std::thread::spawn(|| {
            drop_privileges().map(|()| {
                (
                    caps::read(None, CapSet::Effective).unwrap_or_default(),
                    caps::read(None, CapSet::Permitted).unwrap_or_default(),
                )
            })
        })
        .join();
        let Ok(Ok((effective, permitted))) = after else {
            panic!("drop_privileges failed: {after:?}");
        };
        assert!(effective.is_empty(), "{effective:?}");
        assert!(permitted.is_empty(), "{permitted:?}");
        assert_eq!(
            caps::read(None, CapSet::Permitted).unwrap_or_default(),
            before,
            "only the calling thread"
        );
    }
}
