//! tests/aws-fault-proxy.py in front of an AWS endpoint (moto): one a test can take down,
//! throttle, deny, slow or cut (the modes are in the script's doc), for the processes it starts
//! on this host.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running proxy, its control file and its log; killed (and its files removed) when dropped.
pub struct FaultProxy {
    child: Child,
    dir: PathBuf,
    /// Its URL (`http://127.0.0.1:<port>`), for `AWS_ENDPOINT_URL`.
    pub url: String,
}

impl FaultProxy {
    /// Starts it on 127.0.0.1:`port` (a free port when `None`), forwarding to `upstream` (e.g.
    /// `DSO_MOTO_ENDPOINT`), every call passing; returns once it accepts connections.
    pub fn start(upstream: &str, port: Option<u16>) -> FaultProxy {
        FaultProxy::start_on("127.0.0.1", upstream, port)
    }

    /// [`FaultProxy::start`] on `host` (`0.0.0.0`: also for pods, at the node's address); its
    /// [`FaultProxy::url`] stays on 127.0.0.1.
    pub fn start_on(host: &str, upstream: &str, port: Option<u16>) -> FaultProxy {
        let port = port.unwrap_or_else(free_port);
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dso-fault-proxy-{}-{port}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fault proxy directory");
        let log = std::fs::File::create(dir.join("log")).expect("fault proxy log");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/aws-fault-proxy.py");
        let child = Command::new("python3")
            .arg(script)
            .args([
                "--host",
                host,
                "--port",
                &port.to_string(),
                "--upstream",
                upstream,
                "--control",
            ])
            .arg(dir.join("control.json"))
            .stdout(log.try_clone().expect("fault proxy log"))
            .stderr(log)
            .spawn()
            .expect("start tests/aws-fault-proxy.py (python3)");
        let mut proxy = FaultProxy {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        proxy.wait_own_listener();
        proxy.wait_listening(true);
        proxy
    }

    /// Waits for this proxy's own process to say it listens: a port that accepts may be held
    /// by another process (a proxy left over from an earlier run), which would see none of the
    /// requests this one is asked to count. The child exits when it cannot bind.
    fn wait_own_listener(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().lines().any(|l| l.starts_with("listening on ")) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "fault proxy on {} exited ({status}) before listening (port taken?): {}",
                    self.url,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "fault proxy on {} not listening after 10 s: {}",
                self.url,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets the fault, e.g. `{"mode": "deny", "match": "<secret id>"}`; "down" returns once
    /// connections are refused, any other mode once they are accepted.
    pub fn set(&self, control: serde_json::Value) {
        let tmp = self.dir.join("control.json.tmp");
        std::fs::write(&tmp, control.to_string()).expect("fault proxy control file");
        std::fs::rename(&tmp, self.dir.join("control.json")).expect("fault proxy control file");
        self.wait_listening(control["mode"] != "down");
    }

    fn wait_listening(&self, up: bool) {
        let addr = self.url.trim_start_matches("http://");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_ok() != up {
            assert!(
                Instant::now() < deadline,
                "fault proxy listening != {up}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One line per request: `<operation> <fault or pass>`.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// How many requests the log shows with this line (e.g. `DescribeSecret pass`).
    pub fn count(&self, line: &str) -> usize {
        self.log().lines().filter(|l| *l == line).count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on now (the OS's pick, released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream nobody serves: these tests send no request.
    const NOWHERE: &str = "http://127.0.0.1:9";

    #[test]
    fn a_proxy_starts_and_accepts() {
        let p = FaultProxy::start(NOWHERE, None);
        assert!(std::net::TcpStream::connect(p.url.trim_start_matches("http://")).is_ok());
        assert!(p.log().contains("listening on"), "{}", p.log());
    }

    #[test]
    #[should_panic(expected = "before listening (port taken?)")]
    fn a_port_another_process_listens_on_is_refused_not_taken_for_this_proxy() {
        let first = FaultProxy::start(NOWHERE, None);
        let port = first.url.rsplit(':').next().and_then(|p| p.parse().ok());
        let _second = FaultProxy::start(NOWHERE, port);
    }
}
