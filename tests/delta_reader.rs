//! Any Delta reader can open a pond: Python's `deltalake` (in the venv scripts/test.sh makes) reads
//! the table, and its rows and inline content match what was written.

use pond::oplog::ROOT_INO;

use crate::common::sizes::T;
use crate::common::{TestPond, pattern, write_file};

/// Reads the table, keeps each key's latest row, and prints name -> (large, blake3, content hex).
const READER: &str = r#"
import json, os, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1]).to_pyarrow_table().to_pylist()
latest = {}
for r in t:
    key = (r["record"], r["ino"], r["name"])
    if key not in latest or latest[key]["seq"] < r["seq"]:
        latest[key] = r
nodes = {r["ino"]: r for (rec, _, _), r in latest.items() if rec == "node" and r["kind"] is not None}
out = {}
for (rec, parent, name), r in latest.items():
    if rec == "dirent" and parent == 1 and r["child"] is not None:
        n = nodes[r["child"]]
        out[bytes(name).decode()] = {
            "kind": n["kind"], "size": n["size"], "mode": n["mode"], "large": n["large"], "blake3": n["blake3"],
            "content": None if n["content"] is None else bytes(n["content"]).hex(),
        }
print(json.dumps(out))
"#;

#[test]
fn python_deltalake_reads_rows_and_inline_content() {
    let pond = TestPond::new();
    let written: Vec<(String, Vec<u8>)> = [(0usize, "empty"), (T / 64, "small"), (T, "at-threshold"), (T + 1, "large")]
        .iter()
        .enumerate()
        .map(|(i, (size, name))| (name.to_string(), pattern(*size, i as u64)))
        .collect();
    {
        let fs = pond.open();
        for (name, data) in &written {
            write_file(&fs, ROOT_INO, name, data);
        }
        fs.mkdir(ROOT_INO, b"dir", 0o750, pond::fs::Caller { uid: 0, gid: 0 }).unwrap();
        fs.shutdown().unwrap();
    }
    let out = crate::common::python_deltalake(READER, &[pond.root.as_os_str()]);
    assert!(out.status.success(), "python deltalake failed: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from python");
    for (name, data) in &written {
        let row = &got[name.as_str()];
        assert_eq!(row["kind"], "file", "{name}: {row}");
        assert_eq!(row["size"], data.len(), "{name}");
        assert_eq!(row["blake3"], blake3::hash(data).to_hex().to_string(), "{name}");
        if data.len() <= T {
            assert_eq!(row["large"], false, "{name}");
            assert_eq!(row["content"], hex::encode(data), "{name}: inline content as written");
        } else {
            assert_eq!(
                (row["large"].clone(), row["content"].clone()),
                (serde_json::json!(true), serde_json::Value::Null),
                "{name}"
            );
        }
    }
    assert_eq!(
        (got["dir"]["kind"].clone(), got["dir"]["mode"].clone()),
        (serde_json::json!("dir"), serde_json::json!(0o750))
    );
}
