//! A pond written before chunk-level storage (`tests/fixtures/old-format-pond`, see its `.md`) keeps
//! opening and reading at every version, and new writes into it use the new format beside the old
//! objects, pointing into them for the chunks they share.

use std::path::{Path, PathBuf};

use pond::large_files::{LargeFileStore, ObjectFormat};

use crate::common::{Mounted, assert_same_bytes, pattern, pond_ok};

const C: usize = 64 * 1024;

/// A copy of the fixture in a temp dir (the fixture itself is never written).
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pond");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old-format-pond");
    let status = std::process::Command::new("cp").arg("-a").arg(&src).arg(&root).status().expect("cp");
    assert!(status.success(), "copying the fixture");
    (dir, root)
}

/// What the fixture's files hold at version 4 (its latest).
fn at_version_4() -> Vec<(&'static str, Vec<u8>)> {
    let mut large = pattern(3 * C + 7, 2);
    large[70_000..70_021].copy_from_slice(b"EDITED IN VERSION TWO");
    vec![
        ("hello.txt", b"hello from an old pond\n".to_vec()),
        ("docs/hello-hardlink.txt", b"hello from an old pond\n".to_vec()),
        ("docs/empty", Vec::new()),
        ("docs/at-threshold.bin", pattern(C, 1)),
        ("docs/deep/large.bin", large),
        ("grows.bin", [pattern(C + 1, 3), pattern(2 * C, 4)].concat()),
    ]
}

fn cat(root: &Path, path: &str, version: Option<u64>) -> Vec<u8> {
    let mut args = vec!["cat", root.to_str().unwrap(), path];
    let v = version.map(|v| v.to_string());
    if let Some(v) = &v {
        args.extend(["--version", v]);
    }
    let out = crate::common::pond(&args);
    assert!(out.status.success(), "pond cat {path}: {}", crate::common::describe(&out));
    out.stdout
}

#[test]
fn an_old_pond_reads_at_every_version_and_verifies_clean() {
    let (_d, root) = fixture();
    for (path, want) in at_version_4() {
        assert_same_bytes(&cat(&root, path, None), &want, &format!("{path} at the latest version"));
    }
    assert_same_bytes(&cat(&root, "docs/deep/large.bin", Some(3)), &pattern(3 * C + 7, 2), "large.bin at version 3");
    assert_same_bytes(&cat(&root, "grows.bin", Some(3)), &pattern(C + 1, 3), "grows.bin at version 3");
    let store = LargeFileStore::new(&root);
    for h in store.list_objects().expect("list") {
        assert_eq!(store.open(&h).expect("open").format(), ObjectFormat::Full, "the fixture holds format 1 objects");
    }
    let v = pond_ok(&["verify", root.to_str().unwrap()]);
    assert!(v.starts_with("clean: 5 versions"), "{v}");
    let m = Mounted::new(&root, &root.with_file_name("mnt"), &["ro"]);
    for (path, want) in at_version_4() {
        assert_same_bytes(&std::fs::read(m.path(path)).expect("read"), &want, &format!("{path} through a mount"));
    }
    assert_eq!(std::fs::read_link(m.path("link-to-large")).expect("readlink"), Path::new("docs/deep/large.bin"));
    assert_eq!(xattr(&m.path("hello.txt"), "user.origin"), b"fixture");
}

#[test]
fn new_writes_into_an_old_pond_use_the_new_format_and_point_into_the_old_objects() {
    let (_d, root) = fixture();
    let before: Vec<_> = LargeFileStore::new(&root).list_objects().expect("list");
    let mut want = at_version_4();
    {
        let m = Mounted::new(&root, &root.with_file_name("mnt"), &[]);
        use std::io::Write;
        let tail = pattern(C + 11, 70);
        let mut f = std::fs::OpenOptions::new().append(true).open(m.path("grows.bin")).expect("open for append");
        f.write_all(&tail).expect("append");
        crate::common::close(f).expect("close");
        want.iter_mut().find(|(p, _)| *p == "grows.bin").expect("grows.bin").1.extend_from_slice(&tail);
        std::fs::write(m.path("new.bin"), pattern(2 * C + 3, 71)).expect("write a new large file");
        want.push(("new.bin", pattern(2 * C + 3, 71)));
        m.unmount();
    }
    for (path, want) in &want {
        assert_same_bytes(&cat(&root, path, None), want, &format!("{path} after new writes"));
    }
    let store = LargeFileStore::new(&root);
    let grows = blake3::hash(&want.iter().find(|(p, _)| *p == "grows.bin").unwrap().1);
    let r = store.open(&grows.into()).expect("the appended version's object");
    assert_eq!(r.format(), ObjectFormat::Manifest, "new versions are manifests");
    let into_old =
        r.data_files().iter().filter(|f| matches!(f, pond::layout::PondFile::Object(h) if before.contains(h))).count();
    assert_eq!(into_old, 1, "the appended version points into the old object for the chunks it kept");
    for h in &before {
        assert!(store.contains(h), "old objects stay");
    }
    let v = pond_ok(&["verify", root.to_str().unwrap()]);
    assert!(v.starts_with("clean"), "{v}");
    assert!(!v.contains("unreferenced"), "nothing is left unreferenced: {v}");
    // Old versions still read the old objects.
    assert_same_bytes(&cat(&root, "grows.bin", Some(3)), &pattern(C + 1, 3), "grows.bin at version 3");
    // And the mixed pond goes through a replica and back.
    let remote = root.with_file_name("remote");
    let restored = root.with_file_name("restored");
    pond_ok(&["replicate", root.to_str().unwrap(), remote.to_str().unwrap()]);
    pond_ok(&["restore", remote.to_str().unwrap(), restored.to_str().unwrap()]);
    for (path, want) in &want {
        assert_same_bytes(&cat(&restored, path, None), want, &format!("{path} restored"));
    }
}

fn xattr(path: &Path, name: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "getxattr {name}: {}", std::io::Error::last_os_error());
    buf.truncate(len as usize);
    buf
}
