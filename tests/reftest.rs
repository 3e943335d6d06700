//! Property test: random operations (write at offsets, truncate, rename, unlink, link, mkdir, fsync,
//! remount) applied through a real pond mount and to a native directory with the same std::fs code;
//! every operation must succeed or fail alike, and the trees must match after each case. Failures
//! proptest finds are shrunk and kept in tests/reftest.proptest-regressions (replayed first on every
//! run), and each gets a named test below.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use crate::common::sizes::{C, T};
use crate::common::tree::assert_same_tree;
use crate::common::{Mounted, TestPond, pattern};

const NAMES: &[&str] = &["a", "b", "d/x", "d/y", "d/e/z"];

#[derive(Clone, Debug)]
pub enum Op {
    Write { file: usize, offset: usize, len: usize, seed: u64 },
    Truncate { file: usize, len: usize },
    Rename { from: usize, to: usize },
    Unlink { file: usize },
    Link { from: usize, to: usize },
    Mkdir { deep: bool },
    Fsync { file: usize },
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..NAMES.len();
    // Offsets and sizes straddle the threshold and chunk borders.
    let size = prop_oneof![0..64usize, (T - 64)..(T + 64), (2 * C - 64)..(2 * C + 64)];
    prop_oneof![
        4 => (file.clone(), size.clone(), 0..(C + 10), any::<u64>()).prop_map(|(file, offset, len, seed)| Op::Write { file, offset, len, seed }),
        1 => (file.clone(), size).prop_map(|(file, len)| Op::Truncate { file, len }),
        1 => (file.clone(), file.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => file.clone().prop_map(|file| Op::Unlink { file }),
        1 => (file.clone(), file.clone()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => any::<bool>().prop_map(|deep| Op::Mkdir { deep }),
        1 => file.prop_map(|file| Op::Fsync { file }),
        1 => Just(Op::Remount),
    ]
}

/// Apply `op` under `root`; the outcome (Ok or the errno) is what is compared.
fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |i: usize| root.join(NAMES[i]);
    let r = match op {
        Op::Write { file, offset, len, seed } => OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(p(*file))
            .and_then(|f| f.write_all_at(&pattern(*len, *seed), *offset as u64)),
        Op::Truncate { file, len } => {
            OpenOptions::new().write(true).open(p(*file)).and_then(|f| f.set_len(*len as u64))
        }
        Op::Rename { from, to } => std::fs::rename(p(*from), p(*to)),
        Op::Unlink { file } => std::fs::remove_file(p(*file)),
        Op::Link { from, to } => std::fs::hard_link(p(*from), p(*to)),
        Op::Mkdir { deep } => std::fs::create_dir(root.join(if *deep { "d/e" } else { "d" })),
        Op::Fsync { file } => std::fs::File::open(p(*file)).and_then(|f| f.sync_all()),
        Op::Remount => Ok(()),
    };
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

pub fn run_case(ops: &[Op]) {
    let pond = TestPond::new();
    let native = pond.scratch("native");
    let mnt = pond.scratch("mnt");
    let mut m = Some(Mounted::new(&pond.root, &mnt, &[]));
    for (i, op) in ops.iter().enumerate() {
        if let Op::Remount = op {
            if let Some(old) = m.take() {
                old.unmount();
            }
            m = Some(Mounted::new(&pond.root, &mnt, &[]));
            continue;
        }
        let want = apply(&native, op);
        let got = apply(&mnt, op);
        assert_eq!(got, want, "op {i} {op:?}: pond and native directory disagree");
    }
    // Compare without the directories' mtimes and the files' mtimes, which differ by the wall clock.
    let _ = set_all_mtimes(&native);
    let _ = set_all_mtimes(&mnt);
    assert_same_tree(&mnt, &native);
    m.take().unwrap().unmount();
    let m = Mounted::new(&pond.root, &mnt, &[]);
    assert_same_tree(&m.mountpoint, &native);
}

fn set_all_mtimes(root: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(root)? {
        let p = e?.path();
        if std::fs::symlink_metadata(&p)?.is_dir() {
            set_all_mtimes(&p)?;
        }
        crate::common::tree::set_mtime(&p, 1_700_000_000, 0);
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        // PROPTEST_CASES raises the count for a longer search (scripts/test.sh keeps the default).
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/reftest.proptest-regressions"))),
        ..Config::default()
    })]
    #[test]
    fn random_operations_match_a_native_directory(ops in proptest::collection::vec(op(), 1..40)) {
        run_case(&ops);
    }
}

/// Hand-picked edge case (not from a proptest failure): rename onto another name of the same inode
/// is a no-op (POSIX), and both names survive a remount.
#[test]
fn rename_onto_a_hard_link_of_itself_is_a_no_op() {
    run_case(&[
        Op::Write { file: 0, offset: 0, len: T + 1, seed: 1 },
        Op::Link { from: 0, to: 1 },
        Op::Rename { from: 0, to: 1 },
        Op::Remount,
        Op::Truncate { file: 1, len: T },
    ]);
}
