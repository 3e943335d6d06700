//! How long the fault suite runs, and what it reports. The test command runs each fault test in its
//! short form; `scripts/soak.sh` sets `POND_SOAK_SCALE` (a multiplier of rounds, kills and seconds)
//! and `POND_FAULT_REPORT` (a file every fault test appends its tally to) and runs them again and again.

use std::io::Write;
use std::time::Duration;

/// The multiplier `scripts/soak.sh` asks for (1 in the test command).
pub fn soak_scale() -> u64 {
    std::env::var("POND_SOAK_SCALE").ok().and_then(|s| s.parse().ok()).filter(|&n| n >= 1).unwrap_or(1)
}

/// `short` rounds in the test command, `short × scale` under the soak.
pub fn rounds(short: u64) -> u64 {
    short * soak_scale()
}

/// `short` in the test command, `short × scale` under the soak.
pub fn duration(short: Duration) -> Duration {
    short * soak_scale() as u32
}

/// What one fault test went through: `runs` (rounds, passes, cases), `faults` injected, and data
/// `lost` (acknowledged bytes or files missing or wrong afterwards; the test fails unless it is 0).
/// Printed as one `FAULT-REPORT` line and appended to `$POND_FAULT_REPORT` when set.
pub fn report(part: &str, runs: u64, faults: u64, lost: u64) {
    let line = format!("FAULT-REPORT part={part} runs={runs} faults={faults} lost={lost}");
    eprintln!("{line}");
    if let Ok(path) = std::env::var("POND_FAULT_REPORT") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("could not append the fault report to {path}: {e}");
        }
    }
}
