//! Who picamd runs as. Started as root (to bind port 80 without systemd's help, or by a
//! hand-written init script), it binds first and then switches for good to an unprivileged
//! account; it refuses to serve the network as root unless told to.
//!
//! The switch happens while the process still has a single thread, before the async runtime
//! and the pipelines start: the kernel keeps credentials per thread (the C library only
//! papers over that), and nothing started as root — a capture thread, an ffmpeg child — may
//! outlive it.

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::{Config, ConfigError, Sourced};

/// What to do about privileges, decided before anything is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Keep running as the current user.
    Stay,
    /// Keep running as root, because `allow_root` says so.
    StayRoot,
    /// After binding, switch to this account.
    Switch { name: String, uid: Uid, gid: Gid },
}

/// Switching failed half-way or could be undone: the process must not carry on.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot {step} for user {user}: {source}")]
    Syscall {
        step: &'static str,
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("after switching to {user}, the process could become root again")]
    Regained { user: String },
}

/// Decides what [`switch`] will do, from the configuration and who we are now. Errors name
/// the key (`user`, `group`) and exit with the other configuration errors.
pub fn plan(config: &Config) -> Result<Plan, ConfigError> {
    plan_for(config, Uid::effective(), Gid::effective())
}

fn plan_for(config: &Config, euid: Uid, egid: Gid) -> Result<Plan, ConfigError> {
    let Some(user) = &config.user else {
        if euid.is_root() && !config.allow_root {
            return Err(ConfigError::Required {
                key: "user",
                message: "picamd is running as root and will not serve the network with root \
                          privileges; set `user` (e.g. `--user picamd`: picamd binds its port, \
                          then switches to that account) or `allow_root = true`"
                    .into(),
            });
        }
        return Ok(if euid.is_root() {
            Plan::StayRoot
        } else {
            Plan::Stay
        });
    };
    let account = lookup_user(user)?;
    let gid = match &config.group {
        Some(g) => lookup_group(g)?,
        None => account.gid,
    };
    if !euid.is_root() {
        if account.uid != euid {
            return Err(invalid(
                "user",
                user,
                format!(
                    "picamd runs as uid {euid}, not as root, so it cannot switch to {} \
                     (uid {}); start it as root or as that user, or drop `user`",
                    account.name, account.uid
                ),
            ));
        }
        if let Some(g) = &config.group {
            if gid != egid {
                return Err(invalid(
                    "group",
                    g,
                    format!("picamd runs with gid {egid}, not as root, so it cannot switch to gid {gid}"),
                ));
            }
        }
        return Ok(Plan::Stay);
    }
    if account.uid.is_root() {
        if !config.allow_root {
            return Err(invalid(
                "user",
                user,
                format!(
                    "{} is root; set `allow_root = true` to run as root",
                    account.name
                ),
            ));
        }
        return Ok(Plan::StayRoot);
    }
    Ok(Plan::Switch {
        name: account.name,
        uid: account.uid,
        gid,
    })
}

fn invalid(key: &'static str, v: &Sourced<String>, message: String) -> ConfigError {
    ConfigError::Invalid {
        key,
        origin: v.origin.clone(),
        message,
    }
}

/// A name, or a numeric id when no account has that name.
fn lookup_user(v: &Sourced<String>) -> Result<User, ConfigError> {
    let found = match User::from_name(&v.value) {
        Ok(None) => match v.value.parse::<u32>() {
            Ok(id) => User::from_uid(Uid::from_raw(id)),
            Err(_) => Ok(None),
        },
        other => other,
    };
    match found {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(invalid(
            "user",
            v,
            format!("no user {:?} on this system", v.value),
        )),
        Err(e) => Err(invalid(
            "user",
            v,
            format!("cannot look up {:?}: {e}", v.value),
        )),
    }
}

fn lookup_group(v: &Sourced<String>) -> Result<Gid, ConfigError> {
    let found = match Group::from_name(&v.value) {
        Ok(None) => match v.value.parse::<u32>() {
            Ok(id) => Group::from_gid(Gid::from_raw(id)),
            Err(_) => Ok(None),
        },
        other => other,
    };
    match found {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(invalid(
            "group",
            v,
            format!("no group {:?} on this system", v.value),
        )),
        Err(e) => Err(invalid(
            "group",
            v,
            format!("cannot look up {:?}: {e}", v.value),
        )),
    }
}

/// Carries out `plan`. Call with the listening socket already open and before any other
/// thread exists (see the module docs).
pub fn switch(plan: &Plan) -> Result<(), PrivilegeError> {
    let Plan::Switch { name, uid, gid } = plan else {
        if *plan == Plan::StayRoot {
            tracing::info!("running as root (allow_root = true)");
        }
        return Ok(());
    };
    let fail = |step: &'static str| {
        let user = name.clone();
        move |source| PrivilegeError::Syscall { step, user, source }
    };
    // Supplementary groups first (video, gpio…: the device nodes), while still allowed to
    // set them; then the group, and the user last, since it gives up the right to do the rest.
    let cname = CString::new(name.as_str()).map_err(|_| PrivilegeError::Syscall {
        step: "read the name",
        user: name.clone(),
        source: nix::Error::EINVAL,
    })?;
    nix::unistd::initgroups(&cname, *gid).map_err(fail("set the supplementary groups"))?;
    nix::unistd::setresgid(*gid, *gid, *gid).map_err(fail("set the group id"))?;
    nix::unistd::setresuid(*uid, *uid, *uid).map_err(fail("set the user id"))?;
    // With real, effective and saved ids all non-zero the kernel has cleared every
    // capability; check rather than trust it.
    let regained = nix::unistd::setuid(Uid::from_raw(0)).is_ok()
        || nix::unistd::setgid(Gid::from_raw(0)).is_ok()
        || Uid::effective().is_root()
        || Uid::current().is_root();
    if regained {
        return Err(PrivilegeError::Regained { user: name.clone() });
    }
    tracing::info!(user = %name, uid = %uid, gid = %gid, "switched to an unprivileged user");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigLayer;

    fn config(user: Option<&str>, group: Option<&str>, allow_root: bool) -> Config {
        ConfigLayer::resolve(
            None,
            ConfigLayer {
                user: user.map(Into::into),
                group: group.map(Into::into),
                allow_root: Some(allow_root),
                ..Default::default()
            },
        )
        .unwrap()
    }

    const ROOT: (Uid, Gid) = (Uid::from_raw(0), Gid::from_raw(0));

    #[test]
    fn root_needs_a_user_or_allow_root() {
        let e = plan_for(&config(None, None, false), ROOT.0, ROOT.1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`user`") && e.contains("allow_root"), "{e}");
        assert_eq!(
            plan_for(&config(None, None, true), ROOT.0, ROOT.1).unwrap(),
            Plan::StayRoot
        );
        let Plan::Switch { uid, .. } =
            plan_for(&config(Some("nobody"), None, false), ROOT.0, ROOT.1).unwrap()
        else {
            panic!("root with a user switches")
        };
        assert!(!uid.is_root());
        let e = plan_for(&config(Some("root"), None, false), ROOT.0, ROOT.1).unwrap_err();
        assert!(e.to_string().contains("allow_root"), "{e}");
    }

    #[test]
    fn unknown_accounts_and_foreign_users_are_errors() {
        let e = plan_for(&config(Some("no-such-user-9"), None, false), ROOT.0, ROOT.1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`user`") && e.contains("no user"), "{e}");
        let e = plan_for(
            &config(Some("nobody"), Some("no-such-grp-9"), false),
            ROOT.0,
            ROOT.1,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`group`"), "{e}");
        // Not root: only the same user is acceptable.
        let me = Uid::from_raw(4242);
        let e = plan_for(
            &config(Some("nobody"), None, false),
            me,
            Gid::from_raw(4242),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`user`") && e.contains("not as root"), "{e}");
        let nobody = User::from_name("nobody").unwrap().unwrap();
        assert_eq!(
            plan_for(&config(Some("nobody"), None, false), nobody.uid, nobody.gid).unwrap(),
            Plan::Stay
        );
        assert_eq!(
            plan_for(&config(None, None, false), me, Gid::from_raw(4242)).unwrap(),
            Plan::Stay
        );
    }
}
