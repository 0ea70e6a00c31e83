//! tests/aws-fault-proxy.py in front of an AWS endpoint (moto): one a test can take down,
//! throttle, deny, slow or cut (the modes are in the script's doc), for the processes it starts
//! on this host.

use std::path::PathBuf;
use std::process::{Child, Command};
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
        let dir =
            std::env::temp_dir().join(format!("dso-fault-proxy-{}-{port}", std::process::id()));
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
        let proxy = FaultProxy {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        proxy.wait_listening(true);
        proxy
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
