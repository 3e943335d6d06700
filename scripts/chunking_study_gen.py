#!/usr/bin/env python3
"""Version sequences made with real tools for the chunking study (scripts/chunking-study.sh).

    chunking_study_gen.py sqlite DIR [--mb 10] [--txns 100]
    chunking_study_gen.py tar    DIR [--files 2000] [--edits 5] [--grow 200]
    chunking_study_gen.py git    DIR [--files 2000] [--commits 200] [--more 20]
    chunking_study_gen.py vm     DIR [--mib 256]

Each writes the versions of one file into DIR, named so that sorting them gives their order, plus
DIR/NOTE (one line on what was made, shown in the study's report). Everything is deterministic: a
seeded random.Random, fixed mtimes, commit dates and file-system UUIDs, so a second run makes the
same bytes (up to the versions of git, tar, SQLite and e2fsprogs on the machine), except the inode
generation numbers mke2fs draws at random (~11 KB of a 64 MiB image's inode tables; they move the
VM image's figures by well under 0.1%).
"""

import argparse
import os
import random
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile

WORDS = (
    "alpha beta gamma delta epsilon value index buffer chunk offset length result error status "
    "config reader writer stream handle table column schema record version commit parent child "
    "node inode size mode owner group time create update delete insert select where order limit "
    "return match some none self struct impl trait enum pub fn let mut const static async await "
    "sensor station pressure humidity temperature reading sample window average median total"
).split()
IDENTS = [a + "_" + b for a in WORDS[:30] for b in WORDS[30:60]]

T0 = 1_700_000_000  # mtime of every generated file; edited files get T0 + 1 day


def code_line(rng):
    """One line of source-like text."""
    kind = rng.random()
    ind = "    " * rng.randint(0, 3)
    if kind < 0.15:
        return f"{ind}// {' '.join(rng.choices(WORDS, k=rng.randint(3, 12)))}\n"
    if kind < 0.25:
        return "\n"
    if kind < 0.6:
        args = ", ".join(rng.choices(IDENTS, k=rng.randint(0, 3)))
        return f"{ind}let {rng.choice(IDENTS)} = {rng.choice(IDENTS)}({args});\n"
    if kind < 0.8:
        return f"{ind}if {rng.choice(IDENTS)} > {rng.randint(0, 65536)} {{\n"
    return f"{ind}{rng.choice(IDENTS)}.{rng.choice(WORDS)}({rng.randint(0, 999)})?;\n"


def code_text(rng, size):
    out, n = [], 0
    while n < size:
        line = code_line(rng)
        out.append(line)
        n += len(line)
    return "".join(out)


def make_tree(root, files, seed):
    """`files` source-like text files in 40 directories; sizes log-normal, median ~3 KB."""
    rng = random.Random(seed)
    paths = []
    for i in range(files):
        d = os.path.join(root, f"mod{i % 40:02d}", f"sub{(i // 40) % 5}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"file{i:05d}.rs")
        size = min(int(rng.lognormvariate(8.0, 1.0)), 60_000)
        with open(p, "w") as f:
            f.write(code_text(rng, size))
        paths.append(p)
    fix_mtimes(root)
    return paths


def fix_mtimes(root, t=T0):
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (t, t))
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        os.utime(dirpath, (t, t))


def note(out, text):
    with open(os.path.join(out, "NOTE"), "w") as f:
        f.write(text.strip() + "\n")
    print(f"{os.path.basename(out)}: {text.strip()}")


def gen_sqlite(out, mb, txns):
    """A SQLite database of `mb` MB (default rollback journal), then `txns` single-row transactions
    (alternately an INSERT of a row with a random key and an UPDATE of a random row's payload), a
    snapshot of the db file after each commit."""
    rng = random.Random(2)
    path = os.path.join(out, "live.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, key TEXT, ts INTEGER, payload TEXT)")
    db.execute("CREATE INDEX items_key ON items (key)")

    def row():
        key = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=16))
        payload = " ".join(rng.choices(WORDS, k=rng.randint(10, 40)))
        return key, rng.randint(T0, T0 + 86_400 * 365), payload

    db.execute("BEGIN")
    n = 0
    while True:
        db.executemany("INSERT INTO items (key, ts, payload) VALUES (?, ?, ?)", [row() for _ in range(1000)])
        n += 1000
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        if db.execute("PRAGMA page_count").fetchone()[0] * page_size >= mb * 1_000_000:
            break
    db.execute("COMMIT")
    journal = db.execute("PRAGMA journal_mode").fetchone()[0]

    def snapshot(i):
        shutil.copyfile(path, os.path.join(out, f"v{i:04d}.db"))

    snapshot(0)
    for i in range(1, txns + 1):
        if i % 2:
            db.execute("INSERT INTO items (key, ts, payload) VALUES (?, ?, ?)", row())
        else:
            _, ts, payload = row()
            db.execute("UPDATE items SET ts = ?, payload = ? WHERE id = ?", (ts, payload, rng.randint(1, n)))
        snapshot(i)  # autocommit: each statement above is one committed transaction
    db.close()
    os.remove(path)
    size = os.path.getsize(os.path.join(out, f"v{txns:04d}.db"))
    note(
        out,
        f"SQLite {sqlite3.sqlite_version}, journal_mode={journal}, page size {page_size}: {n:,} rows with an "
        f"index, {size:,} bytes; {txns} single-row transactions (INSERT and UPDATE alternately), the db file "
        f"copied after each commit",
    )


def gen_tar(out, files, edits, grow):
    """A tar of a generated tree, then the tree with `edits` files edited (one grows by `grow` bytes,
    the others, picked at random, change 20 bytes in place) and tarred again. The grown file is in the
    middle of the archive and its growth changes its 512-byte-padded size, so the members after it
    move (a 200-byte growth of a random file moves nothing with probability ~(512-200)/512: tar pads
    each member to 512 bytes)."""
    rng = random.Random(6)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        root = os.path.join(tmp, "src")
        paths = make_tree(root, files, seed=6)
        tar = ["tar", "--sort=name", "--format=gnu", "--owner=0", "--group=0", "--numeric-owner", "-C", root]
        subprocess.run(tar + ["-cf", os.path.join(out, "v0.tar"), "."], check=True)
        # The grown file is the first one past the middle of the archive whose padded size grows:
        # half the archive moves, the expected case for a file picked at random.
        members = sorted(paths, key=lambda p: os.path.relpath(p, root))
        half, acc = sum(os.path.getsize(p) for p in members) / 2, 0
        for grown in members:
            acc += os.path.getsize(grown)
            if acc >= half and -(-(os.path.getsize(grown) + grow) // 512) > -(-os.path.getsize(grown) // 512):
                break
        chosen = [grown] + rng.sample([p for p in paths if p != grown], edits - 1)
        for p in chosen:
            with open(p) as f:
                text = f.read()
            if p == grown:
                at = text.index("\n", len(text) // 2) + 1
                text = text[:at] + code_text(rng, grow)[:grow - 1] + "\n" + text[at:]
            else:
                at = rng.randrange(0, len(text) - 20)
                text = text[:at] + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=20)) + text[at + 20:]
            with open(p, "w") as f:
                f.write(text)
            os.utime(p, (T0 + 86_400, T0 + 86_400))
        subprocess.run(tar + ["-cf", os.path.join(out, "v1.tar"), "."], check=True)
    with tarfile.open(os.path.join(out, "v1.tar")) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("/" + os.path.relpath(grown, root)))
        moved_from = member.offset_data + member.size
    size = os.path.getsize(os.path.join(out, "v0.tar"))
    note(
        out,
        f"GNU tar of {files:,} generated source files ({size:,} bytes); {edits} files edited, one grown by "
        f"{grow} bytes in its middle, at byte {moved_from:,} of the archive, so the {size - moved_from:,} bytes "
        f"after it move by 512",
    )


def git(repo, *args, date=None):
    env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1")
    if date is not None:
        stamp = f"@{date} +0000"
        env.update(GIT_AUTHOR_DATE=stamp, GIT_COMMITTER_DATE=stamp)
    subprocess.run(["git", "-C", repo, *args], check=True, env=env, stdout=subprocess.DEVNULL)


def gen_git(out, files, commits, more):
    """A repository of generated source files with `commits` commits (each edits 3 files: a line
    changed, lines added), `git gc`, its pack is version 0; `more` commits later and another
    `git gc`, its pack is version 1."""
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        repo = os.path.join(tmp, "repo")
        os.makedirs(repo)
        git(repo, "init", "-q", "-b", "main")
        for k, v in [("user.name", "Study"), ("user.email", "study@example.org"), ("gc.auto", "0"),
                     ("pack.threads", "1"), ("core.fsync", "none")]:
            git(repo, "config", k, v)
        paths = make_tree(repo, files, seed=7)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "import", date=T0)

        def commit(i):
            for p in rng.sample(paths, 3):
                with open(p) as f:
                    lines = f.readlines()
                if lines:
                    lines[rng.randrange(len(lines))] = code_line(rng)
                at = rng.randint(0, len(lines))
                lines[at:at] = [code_line(rng) for _ in range(rng.randint(1, 10))]
                with open(p, "w") as f:
                    f.writelines(lines)
            git(repo, "commit", "-q", "-a", "-m", f"change {i}", date=T0 + 3600 * i)

        def pack(name):
            git(repo, "gc", "-q")
            d = os.path.join(repo, ".git", "objects", "pack")
            packs = [os.path.join(d, f) for f in os.listdir(d) if f.endswith(".pack")]
            shutil.copyfile(max(packs, key=os.path.getsize), os.path.join(out, name))

        for i in range(1, commits + 1):
            commit(i)
        pack("v0.pack")
        for i in range(commits + 1, commits + more + 1):
            commit(i)
        pack("v1.pack")
    note(
        out,
        f"git {subprocess.run(['git', '--version'], capture_output=True, text=True).stdout.split()[-1]}: "
        f"{files:,} generated source files, {commits} commits of 3 edited files each, `git gc`'s pack "
        f"({os.path.getsize(os.path.join(out, 'v0.pack')):,} bytes); {more} commits more, `git gc`'s pack "
        f"({os.path.getsize(os.path.join(out, 'v1.pack')):,} bytes)",
    )


def gen_vm(out, mib):
    """A raw ext4 image of `mib` MiB (mkfs.ext4 -d) holding 2,000 source files and binary files of
    random bytes (compressed data, libraries; 2-3 MiB each), about half full: the base version. The
    study makes the later versions by writing random 4 KiB blocks into it."""
    rng = random.Random(8)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        root = os.path.join(tmp, "fs")
        make_tree(os.path.join(root, "src"), 2000, seed=8)
        os.makedirs(os.path.join(root, "bin"))
        for i in range(int(mib * 0.45 / 2.5)):
            with open(os.path.join(root, "bin", f"blob{i:02d}.bin"), "wb") as f:
                f.write(rng.randbytes(rng.randint(2 << 20, 3 << 20)))
        fix_mtimes(root)
        img = os.path.join(out, "v0.img")
        env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(T0))
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-b", "4096", "-U", "8a0c9e52-6f0e-4c57-9d0b-4b5c3c2d1e0f",
             "-E", "root_owner=0:0,hash_seed=0b0c4c1e-2f4f-4d4b-8e9e-6c1f2a3b4c5d", "-d", root, img, f"{mib}M"],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )
        used = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    note(out, f"raw ext4 image of {mib} MiB (mkfs.ext4 -d) holding {used:,} bytes of files "
              f"(2,000 source files, {int(mib * 0.45 / 2.5)} files of random bytes)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sqlite")
    s.add_argument("--mb", type=int, default=10)
    s.add_argument("--txns", type=int, default=100)
    t = sub.add_parser("tar")
    t.add_argument("--files", type=int, default=2000)
    t.add_argument("--edits", type=int, default=5)
    t.add_argument("--grow", type=int, default=200)
    g = sub.add_parser("git")
    g.add_argument("--files", type=int, default=2000)
    g.add_argument("--commits", type=int, default=200)
    g.add_argument("--more", type=int, default=20)
    v = sub.add_parser("vm")
    v.add_argument("--mib", type=int, default=256)
    for p in (s, t, g, v):
        p.add_argument("dir")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    if a.cmd == "sqlite":
        gen_sqlite(a.dir, a.mb, a.txns)
    elif a.cmd == "tar":
        gen_tar(a.dir, a.files, a.edits, a.grow)
    elif a.cmd == "git":
        gen_git(a.dir, a.files, a.commits, a.more)
    else:
        gen_vm(a.dir, a.mib)


if __name__ == "__main__":
    main()
