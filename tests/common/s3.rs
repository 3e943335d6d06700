//! The local S3 server the tests use (scripts/test.sh starts it through scripts/s3-local.sh and
//! exports `POND_S3_ENDPOINT` and `POND_S3_BUCKET`): its settings, in one place.

use std::process::{Command, Output};

/// The server's settings.
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
}

/// The server, or a panic saying how to start it (tests that need S3 fail loudly without it).
pub fn s3() -> S3 {
    let endpoint = std::env::var("POND_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "POND_S3_ENDPOINT is not set: run these tests through scripts/test.sh, or start the local S3 server \
             with `eval \"$(scripts/s3-local.sh start)\"`"
        )
    });
    S3 { endpoint, bucket: std::env::var("POND_S3_BUCKET").unwrap_or_else(|_| "pond-test".into()) }
}

impl S3 {
    /// A fresh prefix in the bucket: `s3://BUCKET/<uuid>/pond`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}/pond", self.bucket, uuid::Uuid::new_v4())
    }

    /// The `AWS_*` settings pond reads, reaching the server at `endpoint` (the server itself, or a
    /// proxy in front of it).
    pub fn env_via(&self, endpoint: &str) -> Vec<(String, String)> {
        let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_string());
        vec![
            ("AWS_ENDPOINT_URL".into(), endpoint.to_string()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), var("AWS_ACCESS_KEY_ID", "test")),
            ("AWS_SECRET_ACCESS_KEY".into(), var("AWS_SECRET_ACCESS_KEY", "test")),
            ("AWS_REGION".into(), var("AWS_REGION", "us-east-1")),
        ]
    }

    /// The `AWS_*` settings pond reads to reach the server.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_via(&self.endpoint)
    }
}

/// `pond ARGS` with extra environment.
pub fn pond_env(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(super::pond_bin()).args(args).envs(env.iter().map(|(k, v)| (k, v))).output().expect("run pond")
}
