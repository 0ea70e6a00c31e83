//! The DSO processes a test starts on this host: their log file (stdout and stderr) and their
//! plain-HTTP ports (readiness, metrics).

use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Lines of a log printed when a test fails.
const TAIL_LINES: usize = 100;

/// A process's log file: both of its output streams, read back by assertions and, its last
/// lines, printed when a test fails.
pub struct LogFile {
    path: PathBuf,
    name: &'static str,
}

impl LogFile {
    /// Creates (or empties) the file at `path` and returns it with the handles to give the
    /// process as its stdout and its stderr. `name` heads the printed tail.
    pub fn create(path: PathBuf, name: &'static str) -> (LogFile, Stdio, Stdio) {
        let file = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        let stderr = file.try_clone().expect("a second handle on the log file");
        (
            LogFile { path, name },
            Stdio::from(file),
            Stdio::from(stderr),
        )
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// The last lines, headed by the process's name and the file's path.
    pub fn tail(&self) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(TAIL_LINES);
        format!(
            "--- {} log: last {} of {} lines ({}) ---\n{}",
            self.name,
            lines.len() - from,
            lines.len(),
            self.path.display(),
            lines[from..].join("\n")
        )
    }
}

/// GET on `127.0.0.1:port` over plain HTTP/1.1: the status code and the body (no dependency
/// needed for the readiness and metrics endpoints).
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
