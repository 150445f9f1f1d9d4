//! The state's files: the key file beside the database, private folders, the owner
//! check, and moving a damaged database aside.

use std::path::{Path, PathBuf};

use super::StateError;
use crate::state::hashing::{HashKey, KEY_BYTES};

/// Moves a database that cannot be opened out of the way, to
/// `<path>.broken-<time>` (with a number added if that is taken); where it went.
pub fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stem = format!(
        "{}.broken-{}",
        path.display(),
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    let mut aside = PathBuf::from(&stem);
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = PathBuf::from(format!("{stem}-{n}"));
    }
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

/// `<state>.<suffix>`: a file or folder beside the state's database, not in it.
pub(super) fn beside(state: &Path, suffix: &str) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".");
    p.push(suffix);
    PathBuf::from(p)
}

/// Removes the folder at `path` with what is in it, if it is there.
pub(crate) fn remove_dir_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the file at `path`, if it is there.
pub(crate) fn remove_file_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes the creation, rename or removal of `path` durable: syncs the folder that
/// holds it.
pub(crate) fn sync_folder_of(path: &Path) -> std::io::Result<()> {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    std::fs::File::open(folder.unwrap_or(Path::new(".")))?.sync_all()
}

/// Where the secret of the state at `state` is kept: beside the database, not in it
/// (`/var/lib/dialsync/state.key` for `/var/lib/dialsync/state`), so that a copy of the
/// database alone reveals no value.
pub(crate) fn key_path(state: &Path) -> PathBuf {
    beside(state, "key")
}

/// The folder beside the state at `state` for a run's temporary files (downloads, the
/// spooled plan, a rebuild's scratch database): `/var/lib/dialsync/state.downloads`.
pub(crate) fn downloads_path(state: &Path) -> PathBuf {
    beside(state, "downloads")
}

/// The folder beside the state at `state` for its jobs' digests (see
/// [`crate::state::digest::Seal`]): `/var/lib/dialsync/state.digests`.
pub(crate) fn digests_path(state: &Path) -> PathBuf {
    beside(state, "digests")
}

/// Job `job`'s digest file in [`digests_path`]: `state.digests/<job>.digest`.
pub(crate) fn digest_file(state: &Path, job: &str) -> PathBuf {
    digests_path(state).join(format!("{job}.digest"))
}

/// The state's secret: read, or made (32 random bytes, 0600, written durably) when there
/// is none.
pub(super) fn load_or_create_key(state: &Path) -> std::io::Result<HashKey> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = key_path(state);
    match std::fs::File::open(&path) {
        Ok(mut f) => {
            let mut bytes = [0u8; KEY_BYTES];
            f.read_exact(&mut bytes).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("the key file is damaged ({e}); move it aside and run again: a new key is made, and each contact is sent its fields once"),
                )
            })?;
            Ok(HashKey::from_bytes(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = HashKey::generate()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(key.bytes())?;
            f.sync_all()?;
            sync_folder_of(&path)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Narrows `dir` to 0700 and what is in it to 0700 (directories) or 0600 (files).
pub(super) fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let narrow = |p: &Path, mode: u32| -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(p)?;
        if meta.permissions().mode() & 0o777 != mode {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    };
    narrow(dir, 0o700)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            make_private(&entry.path())?;
        } else if kind.is_file() {
            narrow(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

/// Root opening a state that belongs to the service's user would leave root-owned files
/// in it, and the service could not open it any more: refuse, and say as whom to run.
pub(super) fn refuse_as_root(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    Err(StateError::ForeignOwner {
        path: path.to_path_buf(),
        owner: user_name(meta.uid()).unwrap_or_else(|| format!("#{}", meta.uid())),
    })
}

/// The name of user `uid` from /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// Makes the folder `dir` (and its parents) if missing, 0700 whatever the umask: the
/// state's folders say who is called and when.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates (or empties) the file at `path` for writing, 0600 whatever the umask: the
/// temporary file of a [`replace_durably`].
pub(crate) fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Puts `file`, written in full at `tmp`, in place as `path`: on disk first (fsync), then
/// renamed over `path`, then its folder synced so that the rename outlives a crash. A
/// reader of `path` sees the old file or the new one, never a part.
pub(crate) fn replace_durably(file: std::fs::File, tmp: &Path, path: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, path)?;
    sync_folder_of(path)
}
