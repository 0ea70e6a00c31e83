//! `refresh.signal`: finds the main process of the target container in the pod's shared process
//! namespace and sends it the DsoSecret's signal.
//!
//! **Which process.** In a pod with `shareProcessNamespace: true` every container sees every
//! process of the pod (PID 1 is the pod's pause process). The sidecar recognises the target
//! container's processes by their mount table: the kubelet bind-mounts each container's
//! termination-message file from its own directory, `<kubelet root>/pods/<pod uid>/containers/
//! <container name>/<id>`, and `/proc/<pid>/mountinfo` shows that source path (field 4, the
//! mount's root). Any user may read another process's `mountinfo` (unlike its `environ`, `root`
//! or namespace links, which need ptrace rights), and the path holds both the pod UID (from the
//! downward API, `DSO_POD_UID`) and the container's name, so neither a look-alike command line
//! nor another container can match. Of the container's processes (its main process, its
//! children, `kubectl exec` sessions) the main one is the oldest: the lowest start time in
//! `/proc/<pid>/stat`.
//!
//! **Permission.** `kill(2)` succeeds when the sender's user is the target's (or with
//! `CAP_KILL`, which Pod Security `restricted` forbids): the webhook runs DSO's containers as
//! the target container's user.
//!
//! [`find_main`] is the scan, over a `/proc` directory given as a path (tests give a fake one);
//! [`parse_stat`] and [`in_container`] are its pure parts.

use dso_api::RefreshSignal;
use std::path::Path;

/// Parent PID and start time (clock ticks since boot) from the text of `/proc/<pid>/stat`.
/// The command name (field 2) is in parentheses and may hold spaces or `)`, so fields are
/// counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts with field 3 (state): ppid is field 4, starttime field 22.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// True when a process with this `mountinfo` belongs to container `container` of pod `pod_uid`:
/// one of its mounts comes from the kubelet's directory of that container.
pub fn in_container(mountinfo: &str, pod_uid: &str, container: &str) -> bool {
    let needle = format!("/pods/{pod_uid}/containers/{container}/");
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(3))
        .any(|root| root.contains(&needle))
}

/// A process, as told apart from any other that ever had its PID: the PID and its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Process {
    pub pid: i32,
    /// Clock ticks since boot (`/proc/<pid>/stat`, field 22).
    pub start: u64,
}

/// The main process of container `container` of pod `pod_uid`, as seen in `proc_root`: the
/// oldest process whose mounts say it belongs to the container (ties: the lowest PID). `None`
/// when it has no process (not started yet, or restarting). Processes that end during the
/// scan are skipped.
pub fn find_main(
    proc_root: &Path,
    pod_uid: &str,
    container: &str,
) -> std::io::Result<Option<Process>> {
    let mut best: Option<(u64, i32)> = None;
    for entry in std::fs::read_dir(proc_root)?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(mountinfo) = std::fs::read_to_string(entry.path().join("mountinfo")) else {
            continue;
        };
        if !in_container(&mountinfo, pod_uid, container) {
            continue;
        }
        let Some((_, start)) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        else {
            continue;
        };
        if best.is_none_or(|b| (start, pid) < b) {
            best = Some((start, pid));
        }
    }
    Ok(best.map(|(start, pid)| Process { pid, start }))
}

/// Sends `signal` to process `pid`.
pub fn send(pid: i32, signal: RefreshSignal) -> std::io::Result<()> {
    use rustix::process::{Pid, Signal, kill_process};
    let pid = Pid::from_raw(pid).ok_or_else(|| std::io::Error::other("PID 0"))?;
    let sig = match signal {
        RefreshSignal::Sighup => Signal::HUP,
        RefreshSignal::Sigusr1 => Signal::USR1,
        RefreshSignal::Sigusr2 => Signal::USR2,
    };
    kill_process(pid, sig).map_err(std::io::Error::from)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    pub(crate) const UID: &str = "0b7e2f4c-1d2a-4c5b-9e8f-123456789abc";

    fn mountinfo(container: &str) -> String {
        format!(
            "690 621 0:52 / / rw,relatime master:1 - overlay overlay rw\n\
             701 690 253:1 /var/lib/kubelet/pods/{UID}/etc-hosts /etc/hosts rw - ext4 /dev/vda1 rw\n\
             702 690 253:1 /var/lib/kubelet/pods/{UID}/containers/{container}/5c1e8f2a /dev/termination-log rw - ext4 /dev/vda1 rw\n"
        )
    }

    fn stat(pid: i32, comm: &str, ppid: i32, start: u64) -> String {
        format!(
            "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 1000 200 18446744073709551615"
        )
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name_whatever_it_holds() {
        assert_eq!(parse_stat(&stat(42, "sh", 0, 1234)), Some((0, 1234)));
        assert_eq!(parse_stat(&stat(7, "a) b (c", 3, 99)), Some((3, 99)));
        assert_eq!(parse_stat("7 (sh) S 1"), None, "truncated");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_process_belongs_to_the_container_whose_kubelet_directory_it_mounts() {
        assert!(in_container(&mountinfo("app"), UID, "app"));
        assert!(!in_container(&mountinfo("app"), UID, "ap"), "a prefix");
        assert!(!in_container(&mountinfo("app-proxy"), UID, "app"));
        assert!(!in_container(&mountinfo("app"), "another-pod", "app"));
        // A separate kubelet filesystem shows the path from its own root.
        let own_fs = mountinfo("app").replace("/var/lib/kubelet/pods", "/pods");
        assert!(in_container(&own_fs, UID, "app"));
    }

    pub(crate) fn fake_proc(processes: &[(i32, &str, u64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        fs::create_dir(dir.path().join("self")).expect("self");
        for &(pid, container, start) in processes {
            let p = dir.path().join(pid.to_string());
            fs::create_dir(&p).expect("pid dir");
            fs::write(p.join("mountinfo"), mountinfo(container)).expect("mountinfo");
            fs::write(p.join("stat"), stat(pid, "sh", 0, start)).expect("stat");
        }
        dir
    }

    #[test]
    fn the_main_process_is_the_containers_oldest_and_other_containers_never_match() {
        let proc = fake_proc(&[
            (1, "pause", 10),
            (7, "dso-refresh", 20),
            (13, "proxy", 25),
            (15, "app", 30),
            (40, "app", 90), // a child, or a `kubectl exec` shell
        ]);
        let pid = |c| find_main(proc.path(), UID, c).expect("scan").map(|p| p.pid);
        assert_eq!(pid("app"), Some(15));
        assert_eq!(pid("proxy"), Some(13));
        assert_eq!(
            find_main(proc.path(), UID, "app").expect("scan"),
            Some(Process { pid: 15, start: 30 }),
            "told apart from a later process with the same PID by its start time"
        );
        assert_eq!(find_main(proc.path(), UID, "web").expect("scan"), None);
        assert_eq!(find_main(proc.path(), "other", "app").expect("scan"), None);
    }

    #[test]
    fn a_process_that_ends_during_the_scan_is_skipped() {
        let proc = fake_proc(&[(15, "app", 30)]);
        fs::create_dir(proc.path().join("16")).expect("a process without files");
        assert_eq!(
            find_main(proc.path(), UID, "app").expect("scan"),
            Some(Process { pid: 15, start: 30 })
        );
    }

    #[test]
    fn a_signal_reaches_a_process_of_the_same_user() {
        // `sleep` ends on SIGUSR1 (SIGHUP would do too, but not under `nohup`, which leaves
        // SIGHUP ignored in every child).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        send(pid, RefreshSignal::Sigusr1).expect("sent");
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(10), "ended by SIGUSR1");
    }
}
