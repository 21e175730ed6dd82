//! Dropping privileges before the function runs: another user, no
//! supplementary groups, `no_new_privs`, and an optional seccomp filter.
//!
//! `hotmem-run` is started as root by the guest agent: joining the
//! instance's cgroup and binding (`CAP_SYS_RESOURCE`) need it. Everything
//! after that runs as the instance's own unprivileged user, which by plain
//! Unix permissions cannot write the (root-owned) cgroup files, signal or
//! ptrace processes of other users (the agent, other instances), or bind
//! again.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::str::FromStr;

use nix::unistd::{getresgid, getresuid, setgroups, setresgid, setresuid, Gid, Uid};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use crate::PR_HOTMEM;

/// The user (and group) a function runs as: `UID[:GID]`, numeric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id (the uid's number when not given).
    pub gid: u32,
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// A `UID[:GID]` that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not UID[:GID] (numeric ids, e.g. 100001 or 100001:100001)")]
pub struct BadUser(String);

impl FromStr for User {
    type Err = BadUser;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadUser(s.to_owned());
        let id = |t: &str| -> Result<u32, BadUser> {
            // u32::MAX is (uid_t)-1, "no change" to set*id(2).
            match t.parse::<u32>() {
                Ok(v) if v != u32::MAX && !t.starts_with('+') => Ok(v),
                _ => Err(bad()),
            }
        };
        match s.split_once(':') {
            None => id(s).map(|uid| User { uid, gid: uid }),
            Some((u, g)) => Ok(User {
                uid: id(u)?,
                gid: id(g)?,
            }),
        }
    }
}

/// Why privileges could not be dropped (the function must not run then).
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    /// A set*id or setgroups call failed.
    #[error("cannot switch to user {user}: {call} failed: {source}")]
    Switch {
        /// The target user.
        user: User,
        /// The failing call.
        call: &'static str,
        /// errno.
        #[source]
        source: nix::Error,
    },
    /// After the switch the process still had (or could regain) other ids.
    #[error("switching to user {user} did not stick: {detail}")]
    NotDropped {
        /// The target user.
        user: User,
        /// What was found.
        detail: String,
    },
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("prctl(PR_SET_NO_NEW_PRIVS) failed: {0}")]
    NoNewPrivs(io::Error),
    /// The seccomp filter could not be built or installed.
    #[error("seccomp filter: {0}")]
    Seccomp(#[from] seccompiler::Error),
    /// The seccomp filter could not be built or installed.
    #[error("seccomp filter: {0}")]
    SeccompBackend(#[from] seccompiler::BackendError),
}

/// Becomes `user`: clears the supplementary groups, sets real, effective
/// and saved gid, then uid, and checks that none of the old ids is left.
///
/// Going from root to another uid also empties the capability sets, so
/// afterwards the process cannot bind (no `CAP_SYS_RESOURCE`), write
/// root-owned files or signal other users' processes.
pub fn switch_user(user: User) -> Result<(), PrivError> {
    let fail = |call| move |source| PrivError::Switch { user, call, source };
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    setgroups(&[]).map_err(fail("setgroups"))?;
    setresgid(gid, gid, gid).map_err(fail("setresgid"))?;
    setresuid(uid, uid, uid).map_err(fail("setresuid"))?;
    let not_dropped = |detail: String| PrivError::NotDropped { user, detail };
    let r = getresuid().map_err(fail("getresuid"))?;
    let g = getresgid().map_err(fail("getresgid"))?;
    if [r.real, r.effective, r.saved] != [uid; 3] || [g.real, g.effective, g.saved] != [gid; 3] {
        return Err(not_dropped(format!("ids are now {r:?} {g:?}")));
    }
    if !user_is_root(user)
        && setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok()
    {
        return Err(not_dropped("it could become root again".to_owned()));
    }
    Ok(())
}

fn user_is_root(user: User) -> bool {
    user.uid == 0
}

/// Sets `no_new_privs`: exec can no longer grant privileges (set-user-id
/// binaries, file capabilities); needed for an unprivileged seccomp filter.
pub fn set_no_new_privs() -> Result<(), PrivError> {
    #[allow(unsafe_code)]
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes only integers.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if ret != 0 {
        return Err(PrivError::NoNewPrivs(io::Error::last_os_error()));
    }
    Ok(())
}

/// System calls the filter refuses with `EPERM` outright.
///
/// ptrace and the cross-process memory calls (others' memory), mounts,
/// namespaces and chroot (a private, writable view of the cgroup or proc
/// file systems), and kernel keyrings/BPF (no business of a function).
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_keyctl,
];

/// The seccomp filter for function instances: `prctl(PR_HOTMEM, ...)` and
/// the [`DENIED`] calls fail with `EPERM`, everything else is allowed.
///
/// cgroup files need no rule: they are owned by root, which the instance
/// is not; the filter keeps it from mounting its own view of them.
pub fn instance_filter() -> Result<BpfProgram, PrivError> {
    let hotmem = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        // PR_HOTMEM is a positive 32-bit constant.
        PR_HOTMEM.unsigned_abs().into(),
    )?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .map(|&nr| (nr, Vec::new())) // no rule: every call matches
        .collect();
    rules.insert(libc::SYS_prctl, vec![SeccompRule::new(vec![hotmem])?]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.unsigned_abs()),
        std::env::consts::ARCH.try_into()?,
    )?;
    Ok(filter.try_into()?)
}

/// Installs [`instance_filter`] on the calling thread (and, through exec
/// and fork, on everything the function runs). Sets `no_new_privs` first.
pub fn apply_instance_filter() -> Result<(), PrivError> {
    let program = instance_filter()?;
    set_no_new_privs()?;
    seccompiler::apply_filter(&program)?;
    Ok(())
}

/// True if the running kernel supports seccomp filters (`CONFIG_SECCOMP_FILTER`).
pub fn seccomp_supported() -> bool {
    std::path::Path::new("/proc/sys/kernel/seccomp/actions_avail").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse() {
        assert_eq!(
            "100001".parse(),
            Ok(User {
                uid: 100_001,
                gid: 100_001
            })
        );
        assert_eq!("5:7".parse(), Ok(User { uid: 5, gid: 7 }));
        assert_eq!("0".parse(), Ok(User { uid: 0, gid: 0 }));
        for bad in [
            "",
            ":",
            "x",
            "1:",
            ":1",
            "1:2:3",
            "-1",
            "+1",
            "4294967295",
            "1:4294967295",
            "nobody",
        ] {
            assert!(bad.parse::<User>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(User { uid: 1, gid: 2 }.to_string(), "1:2");
    }

    #[test]
    fn filter_builds() {
        let program = instance_filter().unwrap();
        // One check per denied call plus the prctl argument check, and the
        // architecture check around them.
        assert!(program.len() > DENIED.len() + 4, "{}", program.len());
    }
}
