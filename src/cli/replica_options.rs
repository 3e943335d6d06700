//! `-o` strings of `pond mount URL` to [`ReplicaMountOptions`], and the S3 settings a mount of a
//! replica uses: the `AWS_*` environment, then a `credentials=FILE` (so that fstab lines and mount
//! units, which have no environment, never carry secrets on a command line `ps` shows).
//!
//! A replica is always mounted read-only: `ro` is accepted, `rw` refused with the reason. mount(8)'s
//! generic options are ignored as for a pond (mount.pond drops `rw` before pond sees it, so an
//! fstab line that does not say `ro` still mounts); anything else is an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::mount_options::{IGNORED, IGNORED_PREFIXES};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaMountOptions {
    pub allow_other: bool,
    pub noexec: bool,
    /// `cache=DIR`: the cache root (default: the user's cache directory, see [`default_cache_root`]).
    pub cache: Option<PathBuf>,
    /// `cache_size=BYTES` (K, M, G, T suffixes: powers of 1024).
    pub cache_size: Option<u64>,
    /// `refresh=SECONDS`: look for new versions this often (never when absent or 0).
    pub refresh: Option<Duration>,
    /// `version=N`: serve this version only.
    pub version: Option<u64>,
    /// `timeout=SECONDS`: the most one request to the remote may take, retries included.
    pub timeout: Option<Duration>,
    /// `credentials=FILE`: S3 settings (see [`aws_settings`]).
    pub credentials: Option<PathBuf>,
    /// `log=FILE`: the daemon's log (default: `mount.log` in the replica's cache directory).
    pub log: Option<PathBuf>,
}

const TAKES: &str = "ro, allow_other, noexec, cache=DIR, cache_size=BYTES, refresh=SECONDS, version=N, \
                     timeout=SECONDS, credentials=FILE, log=FILE";

pub fn parse(options: &[String]) -> Result<ReplicaMountOptions, String> {
    let mut out = ReplicaMountOptions::default();
    for opt in options.iter().flat_map(|o| o.split(',')).map(str::trim).filter(|o| !o.is_empty()) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = |what: &str| value.ok_or(format!("mount option {key} needs a value ({key}={what})"));
        match key {
            "ro" => {}
            "rw" => {
                return Err("a replica is always mounted read-only: drop rw (change the pond it replicates, and \
                            replicate again)"
                    .into());
            }
            "allow_other" => out.allow_other = true,
            "noexec" | "exec" => out.noexec = key == "noexec",
            "threshold" => {
                return Err("threshold= sets how new files are stored: a replica is mounted read-only".into());
            }
            "cache" => out.cache = Some(PathBuf::from(need("DIR")?)),
            "cache_size" => out.cache_size = Some(parse_bytes(need("BYTES")?).map_err(|e| format!("cache_size: {e}"))?),
            "refresh" => {
                let every = parse_seconds(need("SECONDS")?).map_err(|e| format!("refresh: {e}"))?;
                out.refresh = (!every.is_zero()).then_some(every);
            }
            "version" => {
                let v = need("N")?;
                out.version =
                    Some(v.parse().map_err(|_| format!("mount option version: {v:?} is not a whole number"))?);
            }
            "timeout" => {
                let t = parse_seconds(need("SECONDS")?).map_err(|e| format!("timeout: {e}"))?;
                if t.is_zero() {
                    return Err("mount option timeout: give a time above 0 seconds".into());
                }
                out.timeout = Some(t);
            }
            "credentials" => out.credentials = Some(PathBuf::from(need("FILE")?)),
            "log" => out.log = Some(PathBuf::from(need("FILE")?)),
            // What a pond's mount takes from the kernel's list but means nothing read-only.
            "suid" | "nosuid" | "dev" | "nodev" | "sync" | "async" | "dirsync" => {}
            _ if IGNORED.contains(&opt) => {}
            _ if IGNORED_PREFIXES.iter().any(|p| opt.starts_with(p)) => {}
            _ => return Err(format!("unknown mount option {opt:?} for a replica (it takes {TAKES})")),
        }
    }
    if out.version.is_some() && out.refresh.is_some() {
        return Err("version=N serves one version and refresh= moves to newer ones: give one of them".into());
    }
    Ok(out)
}

/// `4096`, `512M`, `10G`, `1T` (powers of 1024; a trailing `B` or `iB` is allowed).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("{s:?} is not a size (as in 4096, 512M or 10G)"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// `30`, `2.5` (seconds).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("{s:?} is not a number of seconds"))
}

/// The cache root when `cache=` is not given: `$XDG_CACHE_HOME/pond`, `$HOME/.cache/pond`, or
/// `/var/cache/pond` for a user without a home (a system mount).
pub fn default_cache_root() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(x) = non_empty("XDG_CACHE_HOME") {
        return x.join("pond");
    }
    match non_empty("HOME") {
        Some(home) => home.join(".cache").join("pond"),
        None => PathBuf::from("/var/cache/pond"),
    }
}

/// The S3 settings: every `AWS_*` variable of the environment, then those of `credentials` (which
/// win). The file holds `KEY=VALUE` lines (`AWS_ACCESS_KEY_ID=...`, `export` allowed) or is an AWS
/// credentials file (`aws_access_key_id = ...`, its first profile); keys without the `AWS_` prefix
/// get it. It must be readable by its owner only, like any file of secrets.
pub fn aws_settings(credentials: Option<&Path>) -> Result<Vec<(String, String)>, String> {
    let mut settings: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).collect();
    let Some(path) = credentials else { return Ok(settings) };
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("credentials file {shown}: {e}"))?;
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
        return Err(format!("credentials file {shown} is readable by others: chmod 600 {shown}"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("credentials file {shown}: {e}"))?;
    for (key, value) in parse_credentials(&text) {
        settings.retain(|(k, _)| *k != key);
        settings.push((key, value));
    }
    Ok(settings)
}

fn parse_credentials(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut sections = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            sections += 1;
            continue;
        }
        if sections > 1 {
            break; // the first profile only
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else { continue };
        let key = key.trim().to_ascii_uppercase();
        let key = if key.starts_with("AWS_") { key } else { format!("AWS_{key}") };
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        out.push((key, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_options_are_parsed_and_rw_is_refused_with_the_reason() {
        let o = parse(&["ro,cache=/c,cache_size=2G,refresh=1.5,timeout=3,_netdev,x-systemd.automount".into()]).unwrap();
        assert_eq!(o.cache, Some(PathBuf::from("/c")));
        assert_eq!(o.cache_size, Some(2 << 30));
        assert_eq!(o.refresh, Some(Duration::from_millis(1500)));
        assert_eq!(o.timeout, Some(Duration::from_secs(3)));
        assert!(parse(&["rw".into()]).unwrap_err().contains("read-only"));
        assert!(parse(&["version=3,refresh=5".into()]).unwrap_err().contains("give one of them"));
        assert!(parse(&["threshold=1".into()]).unwrap_err().contains("read-only"));
        assert!(parse(&["cache_size=12Q".into()]).unwrap_err().contains("unknown unit"));
        assert!(parse(&["aws_secret_access_key=x".into()]).unwrap_err().contains("unknown mount option"));
        assert_eq!(parse(&["refresh=0".into()]).unwrap().refresh, None);
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("3k"), Ok(3072));
        assert!(parse_bytes("x").is_err());
    }

    #[test]
    fn credentials_files_of_both_kinds_are_read() {
        let env_style = parse_credentials("# keys\nexport AWS_ACCESS_KEY_ID=AK\nAWS_SECRET_ACCESS_KEY=\"SK\"\n");
        assert_eq!(
            env_style,
            vec![("AWS_ACCESS_KEY_ID".into(), "AK".into()), ("AWS_SECRET_ACCESS_KEY".into(), "SK".into())]
        );
        let aws_style =
            parse_credentials("[default]\naws_access_key_id = AK\nregion=eu-west-1\n[other]\naws_access_key_id = NO\n");
        assert_eq!(
            aws_style,
            vec![("AWS_ACCESS_KEY_ID".into(), "AK".into()), ("AWS_REGION".into(), "eu-west-1".into())]
        );
    }
}
