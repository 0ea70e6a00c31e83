//! The InPlace layout ([`dso_api::inplace`]): a DsoSecret's files in a generation directory
//! `<mount>/..dso/<DsoSecret>/<generation>/`, and `<mount>/<DsoSecret>` a symbolic link to it,
//! replaced with `rename(2)` so that a reader sees one generation or the other, never a mix.
//!
//! [`install`] serves `dso-init` (the first generation) and the `dso-refresh` sidecar (every
//! later one) alike. [`read_state`] / [`write_state`] keep the versions hash of each
//! DsoSecret's current generation in `<mount>/..dso/state.json`; [`read_pending`] /
//! [`write_pending`] / [`clear_pending`] the signals the sidecar still owes the app
//! (`<mount>/..dso/signal-pending.json`, see [`crate::refresh`]).

use crate::error::{Error, Result, Target};
use crate::write::{Pending, dir_mode, ensure_dir, write_under};
use dso_api::inplace::{DATA_DIR, STATE_FILE};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Mode of `<mount>/..dso`: anyone who may read some DsoSecret must traverse it; it lists only
/// DsoSecret names and the state file (hashes of version ids, nothing from a value).
const DATA_DIR_MODE: u32 = 0o755;

/// Writes `files` (all of DsoSecret `name`) as a new generation and links `<mount>/<name>` to
/// it; removes generations older than the one it replaces. Returns the new generation's name.
pub fn install(mount: &Path, name: &str, files: &[&Pending], file_mode: u32) -> Result<String> {
    if !mount.is_dir() {
        return Err(Error::MountPath(mount.to_path_buf()));
    }
    let at = Target {
        dso_secret: name.to_string(),
        file: "(directory)".into(),
        secret_id: String::new(),
    };
    let io = |path: PathBuf| {
        let at = at.clone();
        move |source| Error::Write {
            at,
            path,
            source,
            names_from_secret: false,
        }
    };
    let data = mount.join(DATA_DIR);
    ensure_dir(&data, DATA_DIR_MODE).map_err(io(data.clone()))?;
    let generations = data.join(name);
    ensure_dir(&generations, dir_mode(file_mode)).map_err(io(generations.clone()))?;

    let generation = new_generation_name(&generations);
    // write_under creates <generations>/<generation> with the DsoSecret's directory mode.
    write_under(&generations, files.iter().copied(), |_| generation.as_str())?;
    let gen_dir = generations.join(&generation);
    if files.is_empty() {
        ensure_dir(&gen_dir, dir_mode(file_mode)).map_err(io(gen_dir.clone()))?;
    }

    let link = mount.join(name);
    let previous = fs::read_link(&link)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    // A relative target: the link resolves wherever the volume is mounted.
    let target = Path::new(DATA_DIR).join(name).join(&generation);
    let tmp = mount.join(format!("..{name}.dso~link"));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).map_err(io(tmp.clone()))?;
    if let Err(e) = fs::rename(&tmp, &link) {
        let _ = fs::remove_file(&tmp);
        return Err(io(link.clone())(e));
    }
    fs::File::open(mount)
        .and_then(|d| d.sync_all())
        .map_err(io(mount.to_path_buf()))?;

    // Keep the new generation and the one just replaced (a reader may still be in it).
    if let Ok(entries) = fs::read_dir(&generations) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n != generation && Some(&n) != previous.as_ref() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(generation)
}

/// A generation name that sorts by time and is not taken: `g<unix nanoseconds>`.
fn new_generation_name(dir: &Path) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut n = nanos;
    loop {
        let name = format!("g{n}");
        if !dir.join(&name).exists() {
            return name;
        }
        n += 1;
    }
}

/// DsoSecret name → versions hash of its current generation; empty when there is no state yet.
pub fn read_state(mount: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(mount.join(DATA_DIR).join(STATE_FILE))
        .map(|s| dso_api::inplace::parse(&s))
        .unwrap_or_default()
}

/// Replaces the state file (temp file, then rename).
pub fn write_state(mount: &Path, state: &BTreeMap<String, String>) -> Result<()> {
    let json = serde_json::to_vec(state).unwrap_or_default();
    write_data_file(mount, STATE_FILE, &json)
}

/// The file, under [`DATA_DIR`], that holds the signals owed to the app.
pub const PENDING_FILE: &str = "signal-pending.json";

/// The signals owed to the app, if a sidecar wrote some and did not send them all; `None` when
/// there are none (or the file cannot be read as such: nothing is then owed).
pub fn read_pending<T: serde::de::DeserializeOwned>(mount: &Path) -> Option<T> {
    let text = fs::read_to_string(mount.join(DATA_DIR).join(PENDING_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Records the signals owed to the app (temp file, then rename).
pub fn write_pending<T: serde::Serialize>(mount: &Path, pending: &T) -> Result<()> {
    let json = serde_json::to_vec(pending).unwrap_or_default();
    write_data_file(mount, PENDING_FILE, &json)
}

/// Forgets the signals owed to the app: every one was sent, or none is needed any more.
pub fn clear_pending(mount: &Path) -> Result<()> {
    let path = mount.join(DATA_DIR).join(PENDING_FILE);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(data_file_error(path, PENDING_FILE, e))
        }
        _ => Ok(()),
    }
}

fn data_file_error(path: PathBuf, file: &str, source: std::io::Error) -> Error {
    Error::Write {
        at: Target {
            dso_secret: DATA_DIR.into(),
            file: file.into(),
            secret_id: String::new(),
        },
        path,
        source,
        names_from_secret: false,
    }
}

/// Replaces `<mount>/..dso/<file>` with `bytes` (temp file, then rename).
fn write_data_file(mount: &Path, file: &str, bytes: &[u8]) -> Result<()> {
    let data = mount.join(DATA_DIR);
    let path = data.join(file);
    let tmp = data.join(format!(".{file}.dso~tmp"));
    let fail = |source| data_file_error(path.clone(), file, source);
    ensure_dir(&data, DATA_DIR_MODE).map_err(fail)?;
    (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })()
    .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Contents;

    fn pending(secret: &str, path: &str, bytes: &[u8]) -> Pending {
        Pending {
            at: Target {
                dso_secret: secret.into(),
                file: path.into(),
                secret_id: "id".into(),
            },
            dso_secret: secret.into(),
            path: path.into(),
            contents: Contents::new(bytes.to_vec()),
            mode: 0o440,
            named_by_secret: false,
        }
    }

    fn generations(mount: &Path, name: &str) -> usize {
        fs::read_dir(mount.join(DATA_DIR).join(name))
            .expect("ls")
            .count()
    }

    #[test]
    fn apps_read_the_usual_paths_through_the_link_and_a_swap_replaces_every_file_at_once() {
        let m = tempfile::tempdir().expect("tmp");
        let m = m.path();
        let v1 = [
            pending("db", "user", b"u1"),
            pending("db", "conf/pass", b"p1"),
        ];
        install(m, "db", &v1.iter().collect::<Vec<_>>(), 0o440).expect("first");
        assert_eq!(fs::read(m.join("db/user")).expect("read"), b"u1");
        assert_eq!(fs::read(m.join("db/conf/pass")).expect("read"), b"p1");
        assert!(
            fs::symlink_metadata(m.join("db"))
                .expect("stat")
                .file_type()
                .is_symlink()
        );
        // A reader that resolved the directory before the swap keeps its generation.
        let old = fs::canonicalize(m.join("db")).expect("resolve");
        let v2 = [
            pending("db", "user", b"u2"),
            pending("db", "conf/pass", b"p2"),
        ];
        install(m, "db", &v2.iter().collect::<Vec<_>>(), 0o440).expect("swap");
        assert_eq!(fs::read(m.join("db/user")).expect("read"), b"u2");
        assert_eq!(fs::read(m.join("db/conf/pass")).expect("read"), b"p2");
        assert_eq!(fs::read(old.join("user")).expect("old kept"), b"u1");
        assert_eq!(fs::read(old.join("conf/pass")).expect("old kept"), b"p1");
        // A third generation removes the first: two are kept.
        let v3 = [
            pending("db", "user", b"u3"),
            pending("db", "conf/pass", b"p3"),
        ];
        install(m, "db", &v3.iter().collect::<Vec<_>>(), 0o440).expect("swap");
        assert_eq!(generations(m, "db"), 2);
        assert!(!old.exists());
        assert!(!m.join("..db.dso~link").exists(), "no leftover link");
    }

    #[test]
    fn a_file_the_new_version_lacks_disappears_with_the_swap() {
        let m = tempfile::tempdir().expect("tmp");
        let m = m.path();
        let v1 = [pending("db", "a", b"1"), pending("db", "b", b"1")];
        install(m, "db", &v1.iter().collect::<Vec<_>>(), 0o440).expect("first");
        let v2 = [pending("db", "a", b"2")];
        install(m, "db", &v2.iter().collect::<Vec<_>>(), 0o440).expect("swap");
        assert!(!m.join("db/b").exists());
    }

    #[test]
    fn the_state_round_trips_and_is_empty_at_first() {
        let m = tempfile::tempdir().expect("tmp");
        assert!(read_state(m.path()).is_empty());
        let state = BTreeMap::from([("db".to_string(), "abc".to_string())]);
        write_state(m.path(), &state).expect("write");
        assert_eq!(read_state(m.path()), state);
    }
}
