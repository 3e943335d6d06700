//! Mount options the kernel enforces, through real mounts: each takes effect, none is dropped.
//! `noexec`; `nosuid` (the default) and `suid`; `nodev` (the default) and `dev`; `sync`, under
//! which a write is committed before it returns; `dirsync`. The last of a pair wins.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::common::{Mounted, TestPond, describe};

/// The per-mount and superblock options the kernel shows for `mountpoint`.
fn kernel_options(mountpoint: &Path) -> Vec<String> {
    let want = std::fs::canonicalize(mountpoint).unwrap();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4) == want.to_str().as_ref() {
            let sep = fields.iter().position(|f| *f == "-").unwrap();
            let mut options: Vec<String> = fields[5].split(',').map(String::from).collect();
            options.extend(fields[sep + 3].split(',').map(String::from));
            return options;
        }
    }
    panic!("{} is not mounted", mountpoint.display());
}

fn mounted_with(pond: &TestPond, options: &[&str]) -> Mounted {
    let mnt = pond.scratch("mnt");
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    Mounted::new(&pond.root, &mnt, options)
}

fn is(options: &[String], flag: &str) -> bool {
    options.iter().any(|o| o == flag)
}

#[test]
fn noexec_refuses_to_run_what_is_on_the_mount() {
    let pond = TestPond::new();
    for (options, runs) in [(&[][..], true), (&["noexec"][..], false), (&["noexec,exec"][..], true)] {
        let m = mounted_with(&pond, options);
        assert_eq!(is(&kernel_options(&m.mountpoint), "noexec"), !runs, "{options:?}");
        if !m.path("true").exists() {
            std::fs::copy("/bin/true", m.path("true")).unwrap();
        }
        match Command::new(m.path("true")).status() {
            Ok(status) => assert!(runs && status.success(), "{options:?}: ran, {status}"),
            Err(e) => assert!(!runs && e.raw_os_error() == Some(libc::EACCES), "{options:?}: {e}"),
        }
        m.unmount();
    }
}

#[test]
fn set_user_id_takes_effect_only_with_suid() {
    let pond = TestPond::new();
    std::fs::set_permissions(pond.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (options, elevates) in [(&["allow_other"][..], false), (&["allow_other,suid"][..], true)] {
        let m = mounted_with(&pond, options);
        assert_eq!(is(&kernel_options(&m.mountpoint), "nosuid"), !elevates, "{options:?}");
        if !m.path("id").exists() {
            std::fs::copy("/usr/bin/id", m.path("id")).unwrap();
            std::fs::set_permissions(m.path("id"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        }
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(m.path("id"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(said.contains("euid=0"), elevates, "{options:?}: {said}");
        m.unmount();
    }
}

#[test]
fn device_nodes_open_only_with_dev() {
    let pond = TestPond::new();
    for (options, opens) in [(&[][..], false), (&["dev"][..], true), (&["dev,nodev"][..], false)] {
        let m = mounted_with(&pond, options);
        assert_eq!(is(&kernel_options(&m.mountpoint), "nodev"), !opens, "{options:?}");
        let null = m.path("null");
        if !null.exists() {
            let c = std::ffi::CString::new(null.to_str().unwrap()).unwrap();
            // SAFETY: a valid path; makes /dev/null's twin (1, 3).
            let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
            assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
        }
        match std::fs::write(&null, b"into the void") {
            Ok(()) => assert!(opens, "{options:?}: a device node opened"),
            Err(e) => assert!(!opens && e.raw_os_error() == Some(libc::EACCES), "{options:?}: {e}"),
        }
        m.unmount();
    }
}

#[test]
fn under_sync_a_write_is_committed_before_it_returns() {
    let pond = TestPond::new();
    let m = mounted_with(&pond, &["sync"]);
    assert!(is(&kernel_options(&m.mountpoint), "sync"));
    std::fs::create_dir(m.path("d")).unwrap();
    let f = std::fs::File::create(m.path("d/f")).unwrap();
    std::io::Write::write_all(&mut &f, b"committed before close").unwrap();
    // Still open: the content is committed only because of `sync`.
    let out = crate::common::pond(&["cat", pond.path(), "d/f"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "committed before close", "{}", describe(&out));
    drop(f);
    m.unmount();

    let m = mounted_with(&pond, &["dirsync"]);
    let options = kernel_options(&m.mountpoint);
    assert!(is(&options, "dirsync") && !is(&options, "sync"), "{options:?}");
    m.unmount();
}
