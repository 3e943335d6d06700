//! The mount helper (issue #5): `mount -t pond`, `/etc/fstab`, systemd units, `scripts/install.sh`,
//! and `pond mount`'s daemon mode under them: it returns only once the mount is live or fails with
//! the reason, and every way of unmounting commits what was released before the daemon exits.
//!
//! mount(8) looks for helpers only in /sbin, so the tests that go through it install the helpers
//! there for as long as they run ([`helpers`]) and put back what was there before; the pond binary
//! is this build's, through `POND_BIN`. There is no systemd running here: the systemd tests check
//! the unit files with `systemd-analyze verify`, turn fstab lines into units with
//! systemd-fstab-generator, and start and stop a mount with the exact commands systemd runs for a
//! `.mount` unit (`mount WHAT WHERE -t TYPE -o OPTIONS` less nofail/noauto/auto; `umount WHERE -c`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::{
    Mounted, TestPond, assert_same_bytes, daemons, describe, is_mounted, latest_version, pattern, pond, pond_bin,
    pond_ok, require_fuse, wait_for_exit,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helper_src(name: &str) -> PathBuf {
    repo().join("mount-helper").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Run a command (with `POND_BIN` set to this build's pond); its output, whatever the exit.
fn run(cmd: &mut Command) -> Output {
    cmd.env("POND_BIN", pond_bin()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// `run`, requiring success.
fn run_ok(cmd: &mut Command) -> Output {
    crate::common::run_ok(cmd.env("POND_BIN", pond_bin()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fail loudly (never skip) where a tool the test needs is missing.
fn require_tool(path_or_name: &str, package: &str) -> PathBuf {
    let found = if path_or_name.contains('/') {
        Some(PathBuf::from(path_or_name)).filter(|p| p.exists())
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).map(|d| d.join(path_or_name)).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.is_file())
    };
    found.unwrap_or_else(|| panic!("this test needs {path_or_name}: apt-get install -y {package}"))
}

// ---------------------------------------------------------------------------------------------
// The helpers in /sbin, for as long as any test needs them.

const INSTALLED: [&str; 3] = ["/sbin/mount.pond", "/sbin/mount.fuse.pond", "/sbin/umount.fuse.pond"];

/// What was at one of [`INSTALLED`] before the tests put the helpers there.
enum Before {
    Absent,
    File(Vec<u8>, u32),
    Link(PathBuf),
}

/// How many tests hold the helpers, and what to put back when the last one lets go.
static HELPERS: Mutex<(usize, Vec<Before>)> = Mutex::new((0, Vec::new()));

/// While alive, /sbin holds this repository's helpers. Take it before any mount guard, so the
/// guards (which unmount through the helpers) drop first.
struct Helpers;

fn helpers() -> Helpers {
    require_tool("mount", "mount");
    let mut held = HELPERS.lock().unwrap_or_else(|p| p.into_inner());
    if held.0 == 0 {
        held.1 = INSTALLED.iter().map(|p| before(Path::new(p))).collect();
        put_file(&helper_src("mount.pond"), Path::new(INSTALLED[0]));
        put_link(Path::new("mount.pond"), Path::new(INSTALLED[1]));
        put_file(&helper_src("umount.fuse.pond"), Path::new(INSTALLED[2]));
    }
    held.0 += 1;
    Helpers
}

impl Drop for Helpers {
    fn drop(&mut self) {
        let mut held = HELPERS.lock().unwrap_or_else(|p| p.into_inner());
        held.0 -= 1;
        if held.0 == 0 {
            for (path, was) in INSTALLED.iter().map(Path::new).zip(std::mem::take(&mut held.1)) {
                let tmp = path.with_extension("test-restore");
                let _ = std::fs::remove_file(&tmp);
                match was {
                    Before::Absent => {
                        let _ = std::fs::remove_file(path);
                    }
                    Before::File(bytes, mode) => {
                        if std::fs::write(&tmp, bytes).is_ok() {
                            let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode));
                            let _ = std::fs::rename(&tmp, path);
                        }
                    }
                    Before::Link(target) => {
                        if std::os::unix::fs::symlink(target, &tmp).is_ok() {
                            let _ = std::fs::rename(&tmp, path);
                        }
                    }
                }
            }
        }
    }
}

fn before(path: &Path) -> Before {
    match std::fs::symlink_metadata(path) {
        Err(_) => Before::Absent,
        Ok(m) if m.file_type().is_symlink() => Before::Link(std::fs::read_link(path).expect("read link")),
        Ok(m) => Before::File(std::fs::read(path).expect("read helper"), m.permissions().mode() & 0o7777),
    }
}

/// Replace `dest` by rename, never in place (another process may be running it).
fn put_file(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("test-install");
    std::fs::copy(src, &tmp).unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), tmp.display()));
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, dest).expect("install helper");
}

fn put_link(target: &Path, dest: &Path) {
    let tmp = dest.with_extension("test-install");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, dest).expect("install helper link");
}

// ---------------------------------------------------------------------------------------------
// Daemons and mounts.

/// The pids of the `pond mount` daemons serving `pond` (zombies excluded).
fn daemon_pids(pond: &Path) -> Vec<i32> {
    daemons(pond, None)
}

/// The one daemon serving `pond`.
fn daemon_pid(pond: &Path) -> i32 {
    let pids = daemon_pids(pond);
    assert_eq!(pids.len(), 1, "expected one pond daemon for {}, found {pids:?}", pond.display());
    pids[0]
}

/// Wait until no daemon serves `pond` (on `at`, if given); SIGKILL as the last resort so none is
/// ever left behind.
fn reap_daemons(pond: &Path, at: Option<&Path>, limit: Duration) -> bool {
    let mut clean = true;
    for pid in daemons(pond, at) {
        if !wait_for_exit(pid, limit) {
            clean = false;
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            wait_for_exit(pid, Duration::from_secs(5));
        }
    }
    clean
}

/// Unmounts `dir` on every path (panics included) and leaves no daemon behind: for mounts made by
/// mount(8), or by anything but [`Mounted`]. Create it before mounting.
struct Unmount {
    dir: PathBuf,
    pond: PathBuf,
}

impl Unmount {
    fn new(pond: &Path, dir: &Path) -> Unmount {
        require_fuse();
        std::fs::create_dir_all(dir).expect("mount point");
        let dir = std::fs::canonicalize(dir).expect("canonical mount point");
        Unmount { dir, pond: pond.to_path_buf() }
    }
}

impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = pond(&["umount", s(&self.dir)]);
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-i").arg("-l").arg(&self.dir).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_mounted(&self.dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Only this mount point's: another mount of the same pond may still be live.
        if !reap_daemons(&self.pond, Some(&self.dir), Duration::from_secs(30)) {
            eprintln!("the pond daemon on {} did not exit after unmounting: killed it", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the pond has committed.

fn committed(pond: &Path, path: &str) -> Vec<u8> {
    let out = pond_cat(pond, path);
    assert!(out.status.success(), "pond cat {path}: {}", describe(&out));
    out.stdout
}

fn pond_cat(root: &Path, path: &str) -> Output {
    pond(&["cat", s(root), path])
}

/// `pond log`: (version, operation) per line.
fn history(pond: &Path) -> Vec<(u64, String)> {
    pond_ok(&["log", s(pond)])
        .lines()
        .map(|l| {
            let version = l
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("pond log line {l:?}"));
            (version, l.split_whitespace().last().unwrap_or("").to_string())
        })
        .collect()
}

/// Large-file objects in the pond (content above the threshold).
fn large_objects(pond: &Path) -> usize {
    crate::common::store::objects(pond).len()
}

/// Write the files the mount tests check: a small one (inline) and one of 5000 bytes (inline at
/// the default threshold, a large object at threshold=4096). Each is closed when this returns.
fn write_files(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let small = b"hello from the helper\n".to_vec();
    let big = pattern(5000, 5);
    std::fs::write(dir.join("small.txt"), &small).expect("write small.txt");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir sub");
    std::fs::write(dir.join("sub/big.bin"), &big).expect("write sub/big.bin");
    (small, big)
}

/// Both files of [`write_files`] are committed, and the history has a commit after `before`.
fn assert_committed(pond: &Path, files: &(Vec<u8>, Vec<u8>), before: u64, how: &str) {
    assert!(latest_version(pond) > before, "{how}: no commit after version {before}: {:?}", history(pond));
    let small = pond_cat(pond, "small.txt");
    assert!(small.status.success(), "{how}: small.txt not committed: {}", describe(&small));
    assert_same_bytes(&small.stdout, &files.0, &format!("{how}: small.txt"));
    assert_same_bytes(&committed(pond, "sub/big.bin"), &files.1, &format!("{how}: sub/big.bin"));
}

fn mountinfo_type(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.get(4) == Some(&s(&dir))).then(|| f[sep + 1].to_string())
    })
}

// ---------------------------------------------------------------------------------------------
// The helper on its own, with a stand-in for pond that records what it was given.

struct FakePond {
    dir: tempfile::TempDir,
}

impl FakePond {
    /// A `pond` that writes its arguments, one a line, to `args` and exits with `$FAKE_EXIT`.
    fn new() -> FakePond {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("pond");
        std::fs::write(
            &bin,
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\nexit \"${FAKE_EXIT:-0}\"\n",
        )
        .expect("fake pond");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        FakePond { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("pond")
    }

    /// Run the helper `name` from the repository with `args`; its output and what pond got.
    fn helper(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> (Output, Option<Vec<String>>) {
        let _ = std::fs::remove_file(self.dir.path().join("args"));
        let mut cmd = Command::new("sh");
        cmd.arg(helper_src(name)).args(args).env("POND_BIN", self.bin());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run the helper");
        let got =
            std::fs::read_to_string(self.dir.path().join("args")).ok().map(|t| t.lines().map(String::from).collect());
        (out, got)
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Every generic option mount.pond drops (and pond itself ignores), as mount(8), fstab and systemd
/// pass them.
const GENERIC: &str = "defaults,rw,auto,noauto,user,users,nouser,owner,group,\
    _netdev,nofail,atime,noatime,relatime,norelatime,strictatime,nostrictatime,diratime,nodiratime,\
    lazytime,nolazytime,iversion,noiversion,mand,nomand,silent,loud,default_permissions,x-systemd.automount,\
    x-systemd.idle-timeout=1min,x-whatever,comment=systemd.x,context=x,fscontext=x,defcontext=x,rootcontext=x,\
    helper=pond,uhelper=pond";

/// The options the kernel enforces: mount.pond passes them on, pond makes them take effect.
const ENFORCED: &str = "exec,noexec,suid,nosuid,dev,nodev,async,sync,dirsync";

#[test]
fn helper_keeps_ponds_options_and_drops_the_generic_ones() {
    let fake = FakePond::new();
    let generic = GENERIC;
    let cases: &[(&[&str], &[&str])] = &[
        (&["P", "D"], &["mount", "P", "D"]),
        (&["P", "D", "-o", generic], &["mount", "P", "D"]),
        (
            &["P", "D", "-o", &format!("{generic},threshold=4096,allow_other")],
            &["mount", "P", "D", "-o", "threshold=4096,allow_other"],
        ),
        // -o may come several times; ro/rw: the last one wins, as in mount(8).
        (
            &["P", "D", "-o", "ro,version=3", "-o", "log=/tmp/x.log"],
            &["mount", "P", "D", "-o", "ro,version=3,log=/tmp/x.log"],
        ),
        (&["P", "D", "-o", "ro", "-o", "rw"], &["mount", "P", "D"]),
        (&["P", "D", "-o", "rw,ro"], &["mount", "P", "D", "-o", "ro"]),
        // -n (no mtab), -v, -t and a glued -oOPTS are accepted.
        (&["P", "D", "-n", "-v", "-t", "fuse.pond", "-othreshold=1"], &["mount", "P", "D", "-o", "threshold=1"]),
        // Unknown options reach pond (which refuses them, or a newer one knows them) ...
        (&["P", "D", "-o", "treshold=1"], &["mount", "P", "D", "-o", "treshold=1"]),
        // ... unless sloppy.
        (&["P", "D", "-s", "-o", "treshold=1,allow_other"], &["mount", "P", "D", "-o", "allow_other"]),
        (&["P", "D", "-sv", "-o", "treshold=1"], &["mount", "P", "D"]),
        // What the kernel enforces goes through, in order (the last of a pair wins in pond).
        (&["P", "D", "-o", &format!("{generic},{ENFORCED}")], &["mount", "P", "D", "-o", ENFORCED]),
        // Glob characters in an option are not expanded.
        (&["P", "D", "-o", "log=/*"], &["mount", "P", "D", "-o", "log=/*"]),
    ];
    for (args, want) in cases {
        let (out, got) = fake.helper("mount.pond", args, &[]);
        assert!(out.status.success(), "mount.pond {args:?}: {}", describe(&out));
        assert_eq!(got, Some(strings(want)), "mount.pond {args:?}");
    }
    // -v says what it runs.
    let (out, _) = fake.helper("mount.pond", &["P", "D", "-v", "-o", "nofail,allow_other"], &[]);
    assert!(
        stderr(&out).contains(&format!("running {} mount P D -o allow_other", s(&fake.bin()))),
        "{}",
        describe(&out)
    );
}

#[test]
fn helper_fake_usage_and_failures() {
    let fake = FakePond::new();
    // -f: fake, nothing is run.
    let (out, got) = fake.helper("mount.pond", &["P", "D", "-f", "-o", "allow_other"], &[]);
    assert!(out.status.success() && got.is_none(), "-f must do nothing: {} {got:?}", describe(&out));
    // Bad usage: exit 1 with the reason.
    for (args, says) in [
        (&[][..], "no pond given"),
        (&["P"][..], "no mount point given"),
        (&["P", "D", "E"][..], "unexpected argument"),
        (&["P", "D", "-x"][..], "unknown flag -x"),
    ] {
        let (out, got) = fake.helper("mount.pond", args, &[]);
        assert_eq!(out.status.code(), Some(1), "mount.pond {args:?}: {}", describe(&out));
        assert!(stderr(&out).contains(says) && got.is_none(), "mount.pond {args:?}: {}", describe(&out));
    }
    // pond failing: mount(8)'s "mount failure", 32, with the command named.
    let (out, _) = fake.helper("mount.pond", &["P", "D"], &[("FAKE_EXIT", "2")]);
    assert_eq!(out.status.code(), Some(32), "{}", describe(&out));
    assert!(stderr(&out).contains("mount P D failed (exit status 2)"), "{}", describe(&out));
    // remount cannot be done.
    let (out, got) = fake.helper("mount.pond", &["P", "D", "-o", "remount,rw"], &[]);
    assert_eq!(out.status.code(), Some(32), "{}", describe(&out));
    assert!(stderr(&out).contains("remount is not supported") && got.is_none(), "{}", describe(&out));
    // A POND_BIN that is not there.
    let (out, _) = fake.helper("mount.pond", &["P", "D"], &[("POND_BIN", "/nonexistent/pond")]);
    assert_eq!(out.status.code(), Some(32), "{}", describe(&out));
    assert!(stderr(&out).contains("POND_BIN=/nonexistent/pond is not an executable file"), "{}", describe(&out));
}

#[test]
fn helper_finds_pond_through_pond_bin_then_usr_local_then_path() {
    let fake = FakePond::new();
    let path = format!("{}:/usr/bin:/bin", s(fake.dir.path()));
    let mut cmd = Command::new("sh");
    cmd.arg(helper_src("mount.pond")).args(["P", "D", "-f", "-v"]).env_remove("POND_BIN").env("PATH", &path);
    let out = cmd.output().expect("run the helper");
    assert!(out.status.success(), "{}", describe(&out));
    // /usr/local/bin/pond comes before PATH (where scripts/install.sh put it on this machine).
    let want =
        if Path::new("/usr/local/bin/pond").exists() { PathBuf::from("/usr/local/bin/pond") } else { fake.bin() };
    assert!(stderr(&out).contains(&format!("running {} mount P D", s(&want))), "{}", describe(&out));
    if !Path::new("/usr/local/bin/pond").exists() {
        // And none at all: a message saying where it looked.
        let out = Command::new("sh")
            .arg(helper_src("mount.pond"))
            .args(["P", "D"])
            .env_remove("POND_BIN")
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("run the helper");
        assert_eq!(out.status.code(), Some(32), "{}", describe(&out));
        assert!(stderr(&out).contains("cannot find the pond binary"), "{}", describe(&out));
    }
}

#[test]
fn umount_helper_runs_pond_umount_and_falls_back_for_lazy_and_forced() {
    let fake = FakePond::new();
    let (out, got) = fake.helper("umount.fuse.pond", &["/srv/p", "-t", "fuse.pond"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(got, Some(strings(&["umount", "/srv/p"])));
    // -l, -f and -N go to umount(8) without helpers (-i): here a stand-in umount on PATH.
    let umount = fake.dir.path().join("umount");
    std::fs::write(&umount, "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\n").expect("fake umount");
    std::fs::set_permissions(&umount, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:/usr/bin:/bin", s(fake.dir.path()));
    for (args, want) in [
        (&["/srv/p", "-l"][..], &["-i", "-l", "--", "/srv/p"][..]),
        (&["/srv/p", "-fv"][..], &["-i", "-f", "-v", "--", "/srv/p"][..]),
        (&["/srv/p", "-N", "1234"][..], &["-i", "-N", "1234", "--", "/srv/p"][..]),
    ] {
        let (out, got) = fake.helper("umount.fuse.pond", args, &[("PATH", &path)]);
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
        assert_eq!(got, Some(strings(want)), "umount.fuse.pond {args:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// scripts/install.sh

#[test]
fn install_script_installs_into_destdir_and_is_idempotent() {
    let root = tempfile::tempdir().expect("tempdir");
    let install = |args: &[&str]| {
        let out = Command::new("sh")
            .arg(repo().join("scripts/install.sh"))
            .args(args)
            .env("DESTDIR", root.path())
            .output()
            .expect("run scripts/install.sh");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr(&out))
    };
    let bin = pond_bin();
    let (ok, first, err) = install(&["--binary", s(&bin)]);
    assert!(ok, "install.sh failed: {first}{err}");
    let version = pond_ok(&["--version"]);
    for (line, what) in [
        ("installed  {}/usr/local/bin/pond", version.trim()),
        ("installed  {}/sbin/mount.pond", "mount -t pond"),
        ("installed  {}/sbin/mount.fuse.pond -> mount.pond", "mount -t fuse.pond"),
        ("installed  {}/sbin/umount.fuse.pond", "final commit"),
    ] {
        let line = line.replace("{}", s(root.path()));
        assert!(
            first.lines().any(|l| l.starts_with(&line) && l.contains(what)),
            "install.sh should say {line:?} ({what}):\n{first}"
        );
    }
    let dest = |p: &str| root.path().join(p);
    for (installed, src) in
        [("sbin/mount.pond", helper_src("mount.pond")), ("sbin/umount.fuse.pond", helper_src("umount.fuse.pond"))]
    {
        assert_eq!(std::fs::read(dest(installed)).unwrap(), std::fs::read(src).unwrap(), "{installed}");
        assert_eq!(std::fs::metadata(dest(installed)).unwrap().permissions().mode() & 0o777, 0o755, "{installed}");
    }
    assert_eq!(std::fs::read_link(dest("sbin/mount.fuse.pond")).unwrap(), Path::new("mount.pond"));
    assert_eq!(std::fs::metadata(dest("usr/local/bin/pond")).unwrap().len(), std::fs::metadata(&bin).unwrap().len());
    let out = Command::new(dest("usr/local/bin/pond")).arg("--version").output().expect("run the installed pond");
    assert_eq!(String::from_utf8_lossy(&out.stdout), version);

    // Again: nothing changes, and it says so.
    let (ok, second, err) = install(&["--binary", s(&bin)]);
    assert!(ok, "second install.sh failed: {second}{err}");
    let unchanged = second.lines().filter(|l| l.starts_with("unchanged  ")).count();
    assert_eq!(unchanged, 4, "a second run must leave all four files alone:\n{second}");
    assert!(!second.contains("installed  "), "{second}");

    // A binary that is not there, or not pond, is refused.
    let (ok, _, err) = install(&["--binary", "/nonexistent/pond"]);
    assert!(!ok && err.contains("/nonexistent/pond is not an executable file"), "{err}");
    let (ok, _, err) = install(&["--binary", "/bin/true"]);
    assert!(!ok && err.contains("pond binary"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Through mount(8).

#[test]
fn mount_t_pond_then_umount_commits() {
    let _helpers = helpers();
    let pond = TestPond::new();
    let dir = pond.scratch("mnt");
    let before = latest_version(&pond.root);
    let guard = Unmount::new(&pond.root, &dir);
    let out = run_ok(Command::new("mount").args(["-t", "pond", pond.path(), s(&dir), "-o", "threshold=4096"]));
    assert!(is_mounted(&dir), "mount returned but nothing is mounted: {}", describe(&out));
    assert_eq!(mountinfo_type(&dir).as_deref(), Some("fuse.pond"));
    let files = write_files(&dir);
    let pid = daemon_pid(&pond.root);

    // Plain umount as root does not wait (libmount's statfs shortcut sees type "fuse" and skips
    // the fuse.pond helper): the daemon commits, then exits.
    run_ok(Command::new("umount").arg(&dir));
    assert!(!is_mounted(&dir));
    assert!(wait_for_exit(pid, Duration::from_secs(60)), "the daemon did not exit after umount");
    assert_committed(&pond.root, &files, before, "mount -t pond, umount");
    assert_eq!(large_objects(&pond.root), 1, "threshold=4096 must make the 5000-byte file a large object");
    drop(guard);
}

#[test]
fn mount_t_fuse_pond_and_systemds_umount_wait_for_the_commit() {
    let _helpers = helpers();
    let pond = TestPond::new();
    let dir = pond.scratch("mnt");
    let before = latest_version(&pond.root);
    let _guard = Unmount::new(&pond.root, &dir);
    run_ok(Command::new("mount").args(["-t", "fuse.pond", pond.path(), s(&dir)]));
    assert!(is_mounted(&dir));
    assert_eq!(mountinfo_type(&dir).as_deref(), Some("fuse.pond"));
    let files = write_files(&dir);
    // `umount WHERE -c` is what systemd runs to stop a .mount unit; -c makes libmount read the
    // mount table, see fuse.pond and run /sbin/umount.fuse.pond, which runs `pond umount`.
    run_ok(Command::new("umount").arg(&dir).arg("-c"));
    assert!(!is_mounted(&dir));
    // No waiting here: the commit is done when umount returns.
    assert_committed(&pond.root, &files, before, "umount -c");
    assert_eq!(large_objects(&pond.root), 0, "at the default threshold 5000 bytes are inline");
}

#[test]
fn fstab_line_with_systemds_options_mounts_and_umount_waits() {
    let _helpers = helpers();
    let pond = TestPond::new();
    let dir = pond.scratch("mnt");
    let before = latest_version(&pond.root);
    let fstab = pond.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!("{} {} pond rw,noauto,nofail,_netdev,x-systemd.automount,threshold=4096 0 0\n", pond.path(), s(&dir)),
    )
    .expect("fstab");
    let _guard = Unmount::new(&pond.root, &dir);
    run_ok(Command::new("mount").arg("--fstab").arg(&fstab).arg(&dir));
    assert!(is_mounted(&dir));
    let files = write_files(&dir);
    // The userspace options (_netdev, x-systemd.automount) put the mount in libmount's utab, so
    // even a plain umount reads the mount table and goes through umount.fuse.pond: it returns
    // after the final commit.
    run_ok(Command::new("umount").arg(&dir));
    assert!(!is_mounted(&dir));
    assert_committed(&pond.root, &files, before, "fstab mount, umount");
    assert_eq!(large_objects(&pond.root), 1, "threshold=4096 from the fstab line must reach pond");
    // umount(8) cleaned up the utab entry mount(8) wrote.
    let utab = std::fs::read_to_string("/run/mount/utab").unwrap_or_default();
    assert!(!utab.contains(&format!("TARGET={} ", s(&dir))), "stale utab entry:\n{utab}");
}

#[test]
fn mount_failures_exit_32_with_ponds_reason() {
    let _helpers = helpers();
    let pond = TestPond::new();
    let dir = pond.scratch("mnt");
    let other = pond.scratch("other");
    let _guard = Unmount::new(&pond.root, &dir);
    let _guard_other = Unmount::new(&pond.root, &other);
    let mount =
        |src: &str, at: &Path, opts: &str| run(Command::new("mount").args(["-t", "pond", src, s(at), "-o", opts]));
    let missing = pond.dir.path().join("no-such-pond");
    let cases = [
        (mount(s(&missing), &dir, "rw"), format!("{} does not exist", missing.display())),
        (mount(s(pond.dir.path()), &dir, "rw"), "is not a pond".to_string()),
        (mount(pond.path(), &pond.dir.path().join("no-such-dir"), "rw"), "no-such-dir".to_string()),
        (mount(pond.path(), &dir, "treshold=1"), "unknown mount option \"treshold=1\"".to_string()),
    ];
    for (out, says) in cases {
        assert_eq!(out.status.code(), Some(32), "{}", describe(&out));
        assert!(stderr(&out).contains(&says), "stderr should say {says:?}: {}", describe(&out));
        assert!(!is_mounted(&dir));
    }
    // A second read-write mount of a mounted pond; a busy mount point.
    run_ok(Command::new("mount").args(["-t", "pond", pond.path(), s(&dir)]));
    let out = mount(pond.path(), &other, "rw");
    assert_eq!(out.status.code(), Some(32), "{}", describe(&out));
    assert!(stderr(&out).contains("already mounted read-write"), "{}", describe(&out));
    let out = mount(pond.path(), &dir, "ro");
    assert_eq!(out.status.code(), Some(32), "{}", describe(&out));
    assert!(stderr(&out).contains("is busy"), "{}", describe(&out));
    // Read-only beside it is fine.
    run_ok(Command::new("mount").args(["-t", "pond", "-r", pond.path(), s(&other)]));
    assert_eq!(daemon_pids(&pond.root).len(), 2);
}

/// The S3 settings mount(8) must not need in its environment (they come from a credentials file).
const AWS_VARS: [&str; 5] =
    ["AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"];

#[test]
fn a_replica_on_s3_mounts_through_mount_t_pond_and_fstab_with_credentials_from_a_file() {
    let _helpers = helpers();
    let server = crate::common::s3::s3();
    let endpoint = server.endpoint.clone();
    let pond = TestPond::new();
    let data = pattern(200_000, 9);
    {
        let fs = pond.open();
        crate::common::write_file(&fs, pond::oplog::ROOT_INO, "data", &data);
        fs.shutdown().unwrap();
    }
    let url = server.url();
    let creds = pond.dir.path().join("s3.credentials");
    std::fs::write(
        &creds,
        format!(
            "# S3 for the replica\nAWS_ENDPOINT_URL={endpoint}\nAWS_ALLOW_HTTP=true\n[default]\n\
             aws_access_key_id = test\naws_secret_access_key = test\nregion = us-east-1\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with_creds = format!("cache={},credentials={}", s(&pond.scratch("cache")), s(&creds));
    // The test's environment has the S3 settings (scripts/s3-local.sh): pond replicate uses them.
    let out = run(Command::new(pond_bin()).args(["replicate", pond.path(), &url]));
    assert!(out.status.success(), "replicate to S3: {}", describe(&out));
    let dir = pond.scratch("mnt");
    let _guard = Unmount::new(Path::new(&url), &dir);
    let mount = |args: &[&str]| {
        let mut cmd = Command::new("mount");
        for v in AWS_VARS {
            cmd.env_remove(v);
        }
        run(cmd.args(args))
    };
    // mount(8) passes rw unless told ro: the helper drops it, and a replica mounts read-only anyway.
    let out = mount(&["-t", "pond", &url, s(&dir), "-o", &with_creds]);
    assert!(out.status.success(), "mount -t pond URL: {}", describe(&out));
    assert_eq!(mountinfo_type(&dir).as_deref(), Some("fuse.pond"));
    assert_same_bytes(&std::fs::read(dir.join("data")).unwrap(), &data, "read through mount -t pond");
    assert_eq!(std::fs::write(dir.join("data"), b"x").unwrap_err().raw_os_error(), Some(libc::EROFS));
    run_ok(Command::new("umount").arg(&dir));
    assert!(reap_daemons(Path::new(&url), Some(&dir), Duration::from_secs(10)), "the daemon exits after umount");

    let fstab = pond.dir.path().join("fstab");
    std::fs::write(&fstab, format!("{url} {} pond ro,nofail,_netdev,{with_creds} 0 0\n", s(&dir))).unwrap();
    let out = mount(&["--fstab", s(&fstab), s(&dir)]);
    assert!(out.status.success(), "mount from an fstab line: {}", describe(&out));
    assert_same_bytes(&std::fs::read(dir.join("data")).unwrap(), &data, "read through an fstab line");
    run_ok(Command::new("umount").arg(&dir));
    assert!(!is_mounted(&dir));

    // Secrets readable by others are refused, with the fix.
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = mount(&["-t", "pond", &url, s(&dir), "-o", &with_creds]);
    assert_eq!(out.status.code(), Some(32), "{}", describe(&out));
    assert!(stderr(&out).contains("chmod 600"), "{}", describe(&out));
}

// ---------------------------------------------------------------------------------------------
// systemd: unit files, fstab lines through systemd's generator, and systemd's own commands.

fn analyze_verify(dir: &Path, units: &[&str]) -> Output {
    require_tool("systemd-analyze", "systemd");
    Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(units)
        .current_dir(dir)
        .output()
        .expect("run systemd-analyze verify")
}

/// `systemd-analyze verify` passes with not one warning.
fn assert_verifies(dir: &Path, units: &[&str]) {
    let out = analyze_verify(dir, units);
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify {units:?}: {}",
        describe(&out)
    );
}

fn escape_path(path: &str, suffix: &str) -> String {
    let out = Command::new(require_tool("systemd-escape", "systemd"))
        .args(["-p", &format!("--suffix={suffix}"), path])
        .output()
        .expect("run systemd-escape");
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn unit_setting(unit: &str, key: &str) -> Option<String> {
    unit.lines().find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

#[test]
fn systemd_units_verify_and_are_named_after_their_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut names = Vec::new();
    for ext in ["mount", "automount"] {
        let name = format!("srv-pond.{ext}");
        let text = std::fs::read_to_string(helper_src(&format!("systemd/{name}"))).expect("unit file");
        let where_ = unit_setting(&text, "Where").expect("Where=");
        assert_eq!(escape_path(&where_, ext), name, "the unit's name must follow its Where=");
        std::fs::write(dir.path().join(&name), &text).expect("copy unit");
        names.push(name);
    }
    let mount = std::fs::read_to_string(dir.path().join("srv-pond.mount")).unwrap();
    assert_eq!(unit_setting(&mount, "Type").as_deref(), Some("pond"));
    assert!(unit_setting(&mount, "What").is_some_and(|w| w.starts_with('/')));
    assert!(unit_setting(&mount, "Options").is_some());
    assert_verifies(dir.path(), &["srv-pond.mount", "srv-pond.automount"]);

    // verify really checks here (no running systemd needed): a misnamed unit is refused.
    std::fs::write(dir.path().join("srv-other.mount"), &mount).unwrap();
    let out = analyze_verify(dir.path(), &["srv-other.mount"]);
    assert!(!out.status.success() && stderr(&out).contains("doesn't match unit name"), "{}", describe(&out));

    // The README's example of a path that needs escaping.
    assert_eq!(escape_path("/srv/my-pond", "mount"), r"srv-my\x2dpond.mount");
    let readme = std::fs::read_to_string(helper_src("README.md")).unwrap();
    assert!(readme.contains(r"srv-my\x2dpond.mount"));
}

fn fstab_generator() -> PathBuf {
    [
        "/usr/lib/systemd/system-generators/systemd-fstab-generator",
        "/lib/systemd/system-generators/systemd-fstab-generator",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("this test needs systemd-fstab-generator: apt-get install -y systemd"))
}

/// Run systemd-fstab-generator on `fstab`; the directory of units it wrote.
fn generate(fstab: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().expect("tempdir");
    for d in ["normal", "early", "late"] {
        std::fs::create_dir(out.path().join(d)).unwrap();
    }
    let run = Command::new(fstab_generator())
        .args(["normal", "early", "late"].map(|d| out.path().join(d)))
        .env("SYSTEMD_FSTAB", fstab)
        .env("SYSTEMD_PROC_CMDLINE", "")
        .output()
        .expect("run systemd-fstab-generator");
    assert!(run.status.success() && run.stderr.is_empty(), "systemd-fstab-generator: {}", describe(&run));
    out
}

#[test]
fn fstab_example_lines_make_units_that_verify() {
    let example = std::fs::read_to_string(helper_src("fstab.example")).expect("fstab.example");
    let lines: Vec<&str> =
        example.lines().filter(|l| l.trim_start().trim_start_matches('#').starts_with('/')).collect();
    assert_eq!(lines.len(), 2, "fstab.example: one line at boot, one automount (commented out)");
    for (i, line) in lines.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let fstab = tmp.path().join("fstab");
        std::fs::write(&fstab, format!("{}\n", line.trim_start_matches('#'))).unwrap();
        let units = generate(&fstab);
        let normal = units.path().join("normal");
        let mount = std::fs::read_to_string(normal.join("srv-pond.mount"))
            .unwrap_or_else(|e| panic!("line {i}: no srv-pond.mount: {e}"));
        assert_eq!(unit_setting(&mount, "Type").as_deref(), Some("pond"), "line {i}");
        let mut verify = vec!["srv-pond.mount"];
        if i == 0 {
            // nofail: the boot wants it, and does not fail without it.
            assert!(
                normal.join("local-fs.target.wants/srv-pond.mount").exists(),
                "line {i}: nofail should make it wanted, not required"
            );
            assert!(!normal.join("local-fs.target.requires/srv-pond.mount").exists(), "line {i}");
            assert!(unit_setting(&mount, "Options").is_some_and(|o| o.contains("threshold=65536")), "{mount}");
        } else {
            assert!(normal.join("srv-pond.automount").exists(), "line {i}: x-systemd.automount makes an automount");
            verify.push("srv-pond.automount");
        }
        assert_eq!(unit_setting(&mount, "TimeoutSec").as_deref(), Some("5min"), "line {i}");
        assert_verifies(&normal, &verify);
    }
}

#[test]
fn systemd_mount_unit_starts_and_stops_as_systemd_runs_it() {
    let _helpers = helpers();
    let pond = TestPond::new();
    let dir = pond.scratch("srv/pond mnt");
    let before = latest_version(&pond.root);
    // An fstab line with the options of an automount (what systemd-fstab-generator sees).
    let fstab = pond.dir.path().join("fstab");
    let escaped = s(&dir).replace(' ', "\\040");
    std::fs::write(
        &fstab,
        format!("{} {escaped} pond rw,noauto,nofail,_netdev,x-systemd.automount,threshold=4096 0 0\n", pond.path()),
    )
    .unwrap();
    let units = generate(&fstab);
    let normal = units.path().join("normal");
    let name = escape_path(s(&dir), "mount");
    let unit = std::fs::read_to_string(normal.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_verifies(&normal, &[&name, &name.replace(".mount", ".automount")]);

    // Start: what systemd's mount.c spawns for the unit.
    let what = unit_setting(&unit, "What").unwrap();
    let where_ = unit_setting(&unit, "Where").unwrap();
    let all_options = unit_setting(&unit, "Options").unwrap();
    let options: Vec<&str> = all_options.split(',').filter(|o| !["nofail", "noauto", "auto"].contains(o)).collect();
    assert_eq!(Path::new(&where_), dir);
    let _guard = Unmount::new(&pond.root, &dir);
    run_ok(Command::new("mount").args([
        &what,
        &where_,
        "-t",
        &unit_setting(&unit, "Type").unwrap(),
        "-o",
        &options.join(","),
    ]));
    assert!(is_mounted(&dir));
    let files = write_files(&dir);

    // Stop: what systemd spawns; it returns after the final commit.
    run_ok(Command::new("umount").args([&where_, "-c"]));
    assert!(!is_mounted(&dir));
    assert_committed(&pond.root, &files, before, "systemd stop");
    assert_eq!(large_objects(&pond.root), 1, "threshold=4096 from the unit's Options= must reach pond");
}

// ---------------------------------------------------------------------------------------------
// pond mount's daemon mode.

#[test]
fn daemon_mode_failures_exit_non_zero_with_the_reason() {
    require_fuse();
    let pond = TestPond::new();
    let dir = pond.scratch("mnt");
    let other = pond.scratch("other");
    let plain = pond.scratch("plain-dir");
    let missing = pond.dir.path().join("missing");
    let cases = [
        (vec!["mount", s(&missing), s(&dir)], format!("{} does not exist", missing.display())),
        (vec!["mount", s(&plain), s(&dir)], format!("{} is not a pond", plain.display())),
        (vec!["mount", pond.path(), s(&missing)], format!("mountpoint {}", missing.display())),
        (vec!["mount", pond.path(), s(&dir), "-o", "version=x"], "not a whole number".to_string()),
    ];
    for (args, says) in &cases {
        let out = crate::common::pond(args);
        assert_eq!(out.status.code(), Some(2), "pond {args:?}: {}", describe(&out));
        assert!(stderr(&out).contains(says.as_str()), "pond {args:?} should say {says:?}: {}", describe(&out));
        assert!(!is_mounted(&dir) && daemon_pids(&pond.root).is_empty());
    }
    let _mounted = Mounted::new(&pond.root, &dir, &[]);
    let _guard = Unmount::new(&pond.root, &other);
    let out = crate::common::pond(&["mount", pond.path(), s(&other)]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains(&format!("{} is already mounted read-write", pond.path())), "{}", describe(&out));
    let out = crate::common::pond(&["mount", pond.path(), s(&dir), "-o", "ro"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("is busy"), "{}", describe(&out));
    assert_eq!(daemon_pids(&pond.root).len(), 1, "a failed mount must leave no daemon");
}

#[test]
fn pond_mount_itself_ignores_the_generic_options() {
    // What an older helper, or a caller without one, passes straight to pond.
    let pond = TestPond::new();
    let dir = pond.scratch("mnt");
    let mounted = Mounted::new(&pond.root, &dir, &[GENERIC]);
    std::fs::write(dir.join("a"), b"a").unwrap();
    mounted.unmount();
    assert_eq!(committed(&pond.root, "a"), b"a");
}

#[test]
fn daemon_mode_without_fuse_says_so() {
    require_tool("unshare", "util-linux");
    let pond = TestPond::new();
    let dir = pond.scratch("mnt");
    // In a private mount namespace, an empty /dev: no /dev/fuse for this one process.
    let script = format!("mount -t tmpfs tmpfs /dev && exec {} mount {} {}", s(&pond_bin()), pond.path(), s(&dir));
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("FUSE is not available: /dev/fuse is missing"), "{}", describe(&out));
}

#[test]
fn daemon_detaches_and_logs_to_the_named_file() {
    let pond = TestPond::new();
    let dir = pond.scratch("mnt");
    let log = pond.dir.path().join("logs/pond.log");
    let opt = format!("log={}", s(&log));
    let mounted = Mounted::new(&pond.root, &dir, &[&opt]);
    let pid = daemon_pid(&pond.root);
    // Its own session, no terminal: stdin on /dev/null, stdout and stderr to the log; cwd /.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    assert_eq!(fields[3], pid.to_string(), "the daemon leads its own session");
    assert_eq!(fields[4], "0", "the daemon has no controlling terminal");
    let fd = |n: u32| std::fs::read_link(format!("/proc/{pid}/fd/{n}")).unwrap();
    assert_eq!(fd(0), Path::new("/dev/null"));
    assert_eq!(fd(1), log);
    assert_eq!(fd(2), log);
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), Path::new("/"));
    std::fs::write(dir.join("a"), b"a").unwrap();
    mounted.unmount();
    assert!(wait_for_exit(pid, Duration::from_secs(10)));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("mounted") && text.contains("unmounted"), "log:\n{text}");
    assert!(text.len() < 4096, "the daemon's log should hold pond's events, not the Delta crates' chatter:\n{text}");
    assert!(!pond.root.join("_pond/mount.log").exists(), "log= replaces the default log");

    // Without log=: POND/_pond/mount.log.
    let mounted = Mounted::new(&pond.root, &dir, &[]);
    mounted.unmount();
    assert!(reap_daemons(&pond.root, None, Duration::from_secs(10)), "a daemon did not exit after pond umount");
    let text = std::fs::read_to_string(pond.root.join("_pond/mount.log")).unwrap();
    assert!(text.contains("mounted"), "default log:\n{text}");
}

/// Every clean unmount used to log `WARN fuser::session: Failed to umount filesystem: Invalid
/// argument`: fuser unmounted again what the kernel had unmounted (see `PondFuse::destroy`).
#[test]
fn a_clean_mount_write_and_unmount_log_no_warning() {
    let pond = TestPond::new();
    let dir = pond.scratch("mnt");
    let log = pond.root.join("_pond/mount.log");
    let routes: [(&str, &dyn Fn(i32)); 3] = [
        ("pond umount", &|_| {
            pond_ok(&["umount", s(&dir)]);
        }),
        ("umount", &|_| {
            run_ok(Command::new("umount").arg(&dir));
        }),
        ("SIGTERM", &|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
        }),
    ];
    for (route, unmount) in routes {
        let _ = std::fs::remove_file(&log);
        let _mounted = Mounted::new(&pond.root, &dir, &[]);
        let pid = daemon_pid(&pond.root);
        std::fs::write(dir.join("a"), route.as_bytes()).unwrap();
        unmount(pid);
        assert!(wait_for_exit(pid, Duration::from_secs(30)), "{route}: the daemon did not exit");
        let text = std::fs::read_to_string(&log).unwrap();
        let alarming: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
        assert!(alarming.is_empty(), "{route}: a clean unmount logged\n{}", alarming.join("\n"));
        assert!(text.contains("unmounted"), "{route}: log:\n{text}");
    }
}

#[test]
fn sigterm_to_the_daemon_commits_then_exits() {
    let pond = TestPond::new();
    let dir = pond.scratch("mnt");
    let before = latest_version(&pond.root);
    let _mounted = Mounted::new(&pond.root, &dir, &[]);
    let pid = daemon_pid(&pond.root);
    let files = write_files(&dir);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert!(wait_for_exit(pid, Duration::from_secs(60)), "the daemon did not exit after SIGTERM");
    assert!(!is_mounted(&dir), "SIGTERM must unmount");
    assert_committed(&pond.root, &files, before, "SIGTERM");
}

#[test]
fn fusermount_u_commits_then_the_daemon_exits() {
    require_tool("fusermount3", "fuse3");
    let pond = TestPond::new();
    let dir = pond.scratch("mnt");
    let before = latest_version(&pond.root);
    let _mounted = Mounted::new(&pond.root, &dir, &[]);
    let pid = daemon_pid(&pond.root);
    let files = write_files(&dir);
    run_ok(Command::new("fusermount3").arg("-u").arg(&dir));
    assert!(wait_for_exit(pid, Duration::from_secs(60)), "the daemon did not exit after fusermount3 -u");
    assert_committed(&pond.root, &files, before, "fusermount3 -u");
}

#[test]
fn pond_umount_of_a_read_only_mount_does_not_wait_for_the_writer() {
    let pond = TestPond::new();
    let rw_dir = pond.scratch("rw");
    let ro_dir = pond.scratch("ro");
    let before = latest_version(&pond.root);
    let rw = Mounted::new(&pond.root, &rw_dir, &[]);
    let ro = Mounted::new(&pond.root, &ro_dir, &["ro"]);
    let files = write_files(&rw_dir);
    // Used to wait for the read-write mount's writer lock: 10 minutes, then fail.
    let mut child = Command::new(pond_bin()).args(["umount", s(&ro.mountpoint)]).spawn().expect("pond umount");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pond umount of a read-only mount hangs while a read-write mount is live");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert!(!is_mounted(&ro_dir) && is_mounted(&rw_dir));
    rw.unmount();
    assert_committed(&pond.root, &files, before, "pond umount");
    assert!(reap_daemons(&pond.root, None, Duration::from_secs(10)), "a daemon did not exit after pond umount");
}
