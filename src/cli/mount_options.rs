//! `-o` strings to [`MountOptions`]. Each accepted option is listed with what it does; mount(8)'s
//! generic options that mean nothing for a pond are accepted and ignored (they reach us from fstab
//! and systemd); anything else is an error, so a typo such as `treshold=` is not silently dropped.
//! Options that change what the kernel enforces (`noexec`, `nosuid`, `nodev` and their opposites,
//! `sync`, `dirsync`) take effect; for each pair the last one given wins, as in mount(8).

use std::path::PathBuf;

use pond::fuse::{MountConfig, Synchronous};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub threshold: Option<u64>,
    pub version: Option<u64>,
    /// Daemon log file (default: `POND/_pond/mount.log`).
    pub log: Option<PathBuf>,
    /// `ro`, `allow_other`, `noexec`, `suid`, `dev`, `sync`, `dirsync`.
    pub mount: MountConfig,
}

/// Options mount(8), fstab and systemd pass that mean nothing to pond: mount(8)'s own (who may
/// mount, when, what to do when it fails), and the atime family (pond never updates atime on a
/// read: it would make a commit, see README), `async` (the default) and the long-gone `mand`.
pub(super) const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
    "default_permissions",
    "nostrictatime",
    "iversion",
    "noiversion",
    "mand",
    "nomand",
];

/// Prefixes of ignored `key` or `key=value` options (`x-systemd.automount`, `comment=...`).
pub(super) const IGNORED_PREFIXES: &[&str] =
    &["x-", "comment=", "context=", "fscontext=", "defcontext=", "rootcontext=", "helper=", "uhelper="];

pub fn parse(options: &[String]) -> Result<MountOptions, String> {
    let mut out = MountOptions::default();
    for opt in options.iter().flat_map(|o| o.split(',')).map(str::trim).filter(|o| !o.is_empty()) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let number = |v: Option<&str>| -> Result<u64, String> {
            v.ok_or(format!("mount option {key} needs a value ({key}=N)"))?
                .parse()
                .map_err(|_| format!("mount option {key}: {:?} is not a whole number", v.unwrap_or("")))
        };
        match key {
            "ro" | "rw" => out.mount.read_only = key == "ro",
            "allow_other" => out.mount.allow_other = true,
            "exec" | "noexec" => out.mount.noexec = key == "noexec",
            "suid" | "nosuid" => out.mount.suid = key == "suid",
            "dev" | "nodev" => out.mount.dev = key == "dev",
            "async" => out.mount.synchronous = Synchronous::No,
            "sync" => out.mount.synchronous = Synchronous::Everything,
            // dirsync adds to sync's nothing, and never takes it back.
            "dirsync" if out.mount.synchronous == Synchronous::No => out.mount.synchronous = Synchronous::Directories,
            "dirsync" => {}
            "threshold" => {
                let t = number(value)?;
                if t > pond::oplog::MAX_THRESHOLD {
                    return Err(format!(
                        "mount option threshold={t} is above the largest pond takes ({} bytes)",
                        pond::oplog::MAX_THRESHOLD
                    ));
                }
                out.threshold = Some(t);
            }
            "version" => out.version = Some(number(value)?),
            "log" => out.log = Some(PathBuf::from(value.ok_or("mount option log needs a file (log=FILE)")?)),
            _ if IGNORED.contains(&opt) => {}
            _ if IGNORED_PREFIXES.iter().any(|p| opt.starts_with(p)) => {}
            _ => {
                return Err(format!(
                    "unknown mount option {opt:?} (pond takes ro, allow_other, threshold=BYTES, version=N, log=FILE, \
                     noexec, nosuid, nodev, sync, dirsync and their opposites)"
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pond_options_are_parsed_and_generic_ones_ignored() {
        let o = parse(&["rw,_netdev,x-systemd.automount,noauto,threshold=4096".into(), "allow_other,version=3".into()])
            .unwrap();
        assert_eq!(
            o,
            MountOptions {
                threshold: Some(4096),
                version: Some(3),
                mount: MountConfig { allow_other: true, ..Default::default() },
                ..Default::default()
            }
        );
        // The rest of what mount.pond drops, so pond run directly takes the same lines.
        let o =
            parse(&["nostrictatime,iversion,noiversion,mand,nomand,helper=pond,uhelper=pond,relatime".into()]).unwrap();
        assert_eq!(o, MountOptions::default());
    }

    #[test]
    fn options_the_kernel_enforces_take_effect_and_the_last_of_a_pair_wins() {
        let o = parse(&["noexec,suid,dev,sync".into()]).unwrap();
        assert_eq!(
            o.mount,
            MountConfig {
                noexec: true,
                suid: true,
                dev: true,
                synchronous: Synchronous::Everything,
                ..Default::default()
            }
        );
        let o = parse(&["noexec,exec,suid,nosuid,dev,nodev,sync,async,ro,rw".into()]).unwrap();
        assert_eq!(o.mount, MountConfig::default());
        assert_eq!(parse(&["dirsync".into()]).unwrap().mount.synchronous, Synchronous::Directories);
        assert_eq!(parse(&["sync,dirsync".into()]).unwrap().mount.synchronous, Synchronous::Everything);
        assert_eq!(parse(&["dirsync,sync".into()]).unwrap().mount.synchronous, Synchronous::Everything);
    }

    #[test]
    fn unknown_or_malformed_options_are_refused() {
        assert!(parse(&["treshold=1".into()]).unwrap_err().contains("unknown mount option"));
        assert!(parse(&["threshold=abc".into()]).unwrap_err().contains("not a whole number"));
        assert!(parse(&["version".into()]).unwrap_err().contains("needs a value"));
        let too_large = format!("threshold={}", pond::oplog::MAX_THRESHOLD + 1);
        assert!(parse(&[too_large]).unwrap_err().contains("above the largest"));
        assert!(parse(&[format!("threshold={}", pond::oplog::MAX_THRESHOLD)]).is_ok());
    }
}
