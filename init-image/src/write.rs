//! Writing the files into the memory volume.
//!
//! Everything is checked before the first byte is written: no two entries write the same path,
//! no file sits where another needs a directory, and the page-rounded total fits the volume's
//! `sizeLimit` (tmpfs charges whole pages, so a 10-byte file costs 4 KiB).
//!
//! Each file is written to a temporary file in its own directory, given its mode with `fchmod`
//! (the umask plays no part), synced, and renamed into place: a reader sees the old file or the
//! new one, never a part. Directories get the file mode's read bits plus the matching search
//! bits (0440 → 0750, 0444 → 0755, 0400 → 0700), so whoever may read the files may reach them
//! and nobody else may list them.
//!
//! Ownership: `dso-init` chowns nothing. The pod gets an `fsGroup` (the webhook sets one), the
//! kubelet gives the volume that group with the set-group-ID bit, and every file and directory
//! created under it inherits the group — so a group-readable mode (the default 0440) lets the app
//! containers read the files whatever user they run as. The set-group-ID bit a new directory
//! inherits is kept when its mode is set.

use crate::error::{Error, Result, Target};
use crate::value::Contents;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// tmpfs allocation unit.
pub const PAGE_BYTES: u64 = 4096;

/// One file, ready to write.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The plan entry it comes from (for messages).
    pub at: Target,
    /// The DsoSecret's directory name.
    pub dso_secret: String,
    /// Path relative to the DsoSecret's directory.
    pub path: String,
    pub contents: Contents,
    pub mode: u32,
    /// `path` is a JSON key of the secret's value (`expand`): it is kept out of the pod status.
    pub named_by_secret: bool,
}

/// What a file costs on tmpfs.
pub fn footprint(len: usize) -> u64 {
    (len as u64).div_ceil(PAGE_BYTES) * PAGE_BYTES
}

/// The mode of the directories holding files of `file_mode`.
pub fn dir_mode(file_mode: u32) -> u32 {
    let mut mode = 0o700;
    if file_mode & 0o070 != 0 {
        mode |= 0o050;
    }
    if file_mode & 0o007 != 0 {
        mode |= 0o005;
    }
    mode
}

/// Refuses two entries writing one path, and a file where another entry needs a directory.
pub fn check_layout(files: &[Pending]) -> Result<()> {
    let mut by_path: BTreeMap<(&str, &str), &Pending> = BTreeMap::new();
    for f in files {
        if let Some(first) = by_path.insert((&f.dso_secret, &f.path), f) {
            return Err(Error::PathCollision {
                at: f.at.clone(),
                why: format!(
                    "{:?} is also written by the entry for secret {:?} (file {:?}); rename one of them",
                    f.path, first.at.secret_id, first.at.file
                ),
                names_from_secret: f.named_by_secret || first.named_by_secret,
            });
        }
    }
    for f in files {
        let mut prefix = String::new();
        for seg in f
            .path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(seg);
            if let Some(other) = by_path.get(&(f.dso_secret.as_str(), prefix.as_str())) {
                return Err(Error::PathCollision {
                    at: f.at.clone(),
                    why: format!(
                        "{:?} needs {prefix:?} to be a directory, but another entry writes a file there",
                        f.path
                    ),
                    names_from_secret: f.named_by_secret || other.named_by_secret,
                });
            }
        }
    }
    Ok(())
}

/// Refuses a set of files that would not fit the volume.
pub fn check_size(files: &[Pending], limit: u64) -> Result<()> {
    let needed: u64 = files.iter().map(|f| footprint(f.contents.len())).sum();
    if needed <= limit {
        return Ok(());
    }
    let largest = files
        .iter()
        .max_by_key(|f| f.contents.len())
        .map(|f| (f.at.clone(), footprint(f.contents.len())))
        .unwrap_or_default();
    Err(Error::SizeLimit {
        at: largest.0,
        needed,
        limit,
        file_bytes: largest.1,
    })
}

/// Writes every file under `<mount>/<DsoSecret>/`, after [`check_layout`] and [`check_size`].
pub fn write_all(mount: &Path, files: &[Pending]) -> Result<()> {
    if !mount.is_dir() {
        return Err(Error::MountPath(mount.to_path_buf()));
    }
    write_under(mount, files.iter(), |f| &f.dso_secret)
}

/// Writes `files` under `<base>/<dir_of(file)>/`: the DsoSecret's directory, or an InPlace
/// generation directory ([`crate::swap`]).
pub(crate) fn write_under<'a>(
    mount: &Path,
    files: impl Iterator<Item = &'a Pending>,
    dir_of: impl Fn(&'a Pending) -> &'a str,
) -> Result<()> {
    let mut synced_dirs: BTreeMap<PathBuf, &Target> = BTreeMap::new();
    for f in files {
        let fail = |path: PathBuf| {
            let at = f.at.clone();
            let names_from_secret = f.named_by_secret;
            move |source| Error::Write {
                at,
                path,
                source,
                names_from_secret,
            }
        };
        let target = mount.join(dir_of(f)).join(&f.path);
        let dir = target.parent().unwrap_or(mount).to_path_buf();
        let mut current = mount.join(dir_of(f));
        ensure_dir(&current, dir_mode(f.mode)).map_err(fail(current.clone()))?;
        if let Some(parent) = Path::new(&f.path).parent() {
            for seg in parent.components() {
                current.push(seg);
                ensure_dir(&current, dir_mode(f.mode)).map_err(fail(current.clone()))?;
            }
        }
        write_atomic(&target, f.contents.as_bytes(), f.mode).map_err(fail(target.clone()))?;
        synced_dirs.entry(dir).or_insert(&f.at);
    }
    // The renames themselves, made durable (a no-op on tmpfs, cheap elsewhere).
    for (dir, at) in synced_dirs {
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| Error::Write {
                at: at.clone(),
                path: dir.clone(),
                source,
                names_from_secret: false,
            })?;
    }
    Ok(())
}

/// Creates a directory if needed and sets its mode, keeping an inherited set-group-ID bit.
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ));
    }
    let setgid = meta.permissions().mode() & 0o2000;
    fs::set_permissions(dir, Permissions::from_mode(setgid | mode))
}

/// temp file in the same directory → write → fchmod → fsync → rename.
fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // '~' is never part of a planned path (check_path), so no planned file is ever mistaken
    // for a temporary one.
    let tmp = target.with_file_name(format!(".{name}.dso~tmp"));
    // A leftover from an interrupted run of this container.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, target)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(secret: &str, path: &str, bytes: &[u8], mode: u32) -> Pending {
        Pending {
            at: Target {
                dso_secret: secret.into(),
                file: path.into(),
                secret_id: "id".into(),
            },
            dso_secret: secret.into(),
            path: path.into(),
            contents: Contents::new(bytes.to_vec()),
            mode,
            named_by_secret: false,
        }
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn directory_modes_follow_the_file_modes_read_bits() {
        assert_eq!(dir_mode(0o440), 0o750);
        assert_eq!(dir_mode(0o444), 0o755);
        assert_eq!(dir_mode(0o400), 0o700);
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o404), 0o705);
    }

    proptest::proptest! {
        #[test]
        fn directories_open_to_exactly_the_classes_the_files_are_open_to(mode in 0u32..=0o777) {
            let d = dir_mode(mode);
            proptest::prop_assert_eq!(d & 0o700, 0o700);
            proptest::prop_assert_eq!(d & 0o070 != 0, mode & 0o070 != 0);
            proptest::prop_assert_eq!(d & 0o007 != 0, mode & 0o007 != 0);
            proptest::prop_assert_eq!(d & 0o222 & !0o200, 0, "only the owner may write");
        }
    }

    #[test]
    fn files_are_written_with_their_mode_under_the_dso_secret_directory() {
        let mount = tempfile::tempdir().expect("tmp");
        let files = [
            pending("db", "password", b"one", 0o440),
            pending("db", "conf/app.json", b"two", 0o440),
            pending("api", "token", b"three", 0o400),
        ];
        write_all(mount.path(), &files).expect("write");
        let m = mount.path();
        assert_eq!(fs::read(m.join("db/password")).expect("read"), b"one");
        assert_eq!(fs::read(m.join("db/conf/app.json")).expect("read"), b"two");
        assert_eq!(mode_of(&m.join("db/password")), 0o440);
        assert_eq!(mode_of(&m.join("db")), 0o750);
        assert_eq!(mode_of(&m.join("db/conf")), 0o750);
        assert_eq!(mode_of(&m.join("api/token")), 0o400);
        assert_eq!(mode_of(&m.join("api")), 0o700);
        let leftovers: Vec<_> = fs::read_dir(m.join("db"))
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("dso~tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_second_run_replaces_read_only_files() {
        let mount = tempfile::tempdir().expect("tmp");
        write_all(mount.path(), &[pending("db", "p", b"old", 0o400)]).expect("first");
        write_all(mount.path(), &[pending("db", "p", b"new", 0o400)]).expect("second");
        assert_eq!(fs::read(mount.path().join("db/p")).expect("read"), b"new");
    }

    #[test]
    fn an_inherited_set_group_id_bit_is_kept_on_new_directories() {
        let mount = tempfile::tempdir().expect("tmp");
        fs::set_permissions(mount.path(), Permissions::from_mode(0o2777)).expect("chmod");
        write_all(mount.path(), &[pending("db", "a/p", b"x", 0o440)]).expect("write");
        assert_eq!(mode_of(&mount.path().join("db")), 0o2750);
        assert_eq!(mode_of(&mount.path().join("db/a")), 0o2750);
    }

    #[test]
    fn a_missing_mount_path_is_reported() {
        let err = write_all(
            Path::new("/nonexistent/dso"),
            &[pending("db", "p", b"x", 0o440)],
        )
        .expect_err("missing");
        assert_eq!(err.label(), "mount_path");
    }

    #[test]
    fn two_entries_writing_one_path_collide() {
        let files = [
            pending("db", "user", b"a", 0o440),
            pending("db", "user", b"b", 0o440),
        ];
        assert_eq!(
            check_layout(&files).expect_err("dup").label(),
            "path_collision"
        );
        let other_dir = [
            pending("db", "user", b"a", 0o440),
            pending("api", "user", b"b", 0o440),
        ];
        assert!(check_layout(&other_dir).is_ok());
    }

    #[test]
    fn a_collision_with_a_file_named_after_a_json_key_keeps_the_key_out_of_the_status() {
        let key = "customer-acme-corp";
        let mut expanded = Pending {
            named_by_secret: true,
            ..pending("db", key, b"a", 0o440)
        };
        expanded.at.file = "(expand)".into();
        let other = Pending {
            at: Target {
                file: "(expand)".into(),
                secret_id: "other".into(),
                ..expanded.at.clone()
            },
            ..expanded.clone()
        };
        let err = check_layout(&[other, expanded.clone()]).expect_err("collision");
        assert!(err.line().contains(key), "{}", err.line());
        assert!(!err.status_line().contains(key), "{}", err.status_line());
        // A planned path that needs the key's file as its directory: the planned path is in
        // the pod spec anyway, the message still takes the redacted form.
        let nested = pending("db", "conf/x", b"b", 0o440);
        let conf = Pending {
            path: "conf".into(),
            ..expanded
        };
        let err = check_layout(&[conf, nested]).expect_err("collision");
        assert!(
            err.status_line().contains("named after a JSON key"),
            "{}",
            err.status_line()
        );
        let planned = [
            pending("db", "conf", b"a", 0o440),
            pending("db", "conf", b"b", 0o440),
        ];
        let err = check_layout(&planned).expect_err("collision");
        assert_eq!(err.status_line(), err.line(), "planned paths stay");
    }

    #[test]
    fn a_file_where_a_directory_is_needed_collides() {
        let files = [
            pending("db", "conf", b"a", 0o440),
            pending("db", "conf/x", b"b", 0o440),
        ];
        assert_eq!(
            check_layout(&files).expect_err("dir").label(),
            "path_collision"
        );
    }

    #[test]
    fn the_size_check_counts_whole_pages() {
        let files = [
            pending("db", "a", b"x", 0o440),
            pending("db", "b", &[0; 4097], 0o440),
        ];
        assert!(check_size(&files, 3 * PAGE_BYTES).is_ok());
        let err = check_size(&files, 3 * PAGE_BYTES - 1).expect_err("too big");
        assert_eq!(err.label(), "size_limit");
        assert!(err.to_string().contains(r#"file "b""#), "{err}");
        assert_eq!(footprint(0), 0);
        assert_eq!(footprint(1), PAGE_BYTES);
    }
}
