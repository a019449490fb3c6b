//! Where a written file may go. A path that names a FIFO, a device node, a socket or a symlink
//! is refused: renaming a finished file over it would replace the node itself (as root,
//! `/dev/full`), and writing into it would block or write somewhere else. New paths and regular
//! files are written through a temporary file in the same folder that is renamed over the
//! target only once complete, so a failure never leaves a half-written file under the name.

use std::fs::File;
use std::io;
use std::path::Path;

/// Checks that `path` is a new name or an existing regular file (not followed through a symlink).
pub fn check_output_path(path: &Path) -> io::Result<()> {
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {}, not a regular file; refusing to replace it",
                path.display(),
                bitnet_common::describe_file_type(&m.file_type())
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot check {}: {e}", path.display()),
        )),
    }
}

/// Writes `path` through `write` on a temporary file beside it, synced, then renamed over it.
/// New files get the usual permissions (0666 less the umask), an existing file keeps its own.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    check_output_path(path)?;
    let with_path =
        |e: io::Error| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()));
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    let perms = {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_or(0o666, |m| m.permissions().mode() & 0o7777);
        std::fs::Permissions::from_mode(mode)
    };
    #[cfg(unix)]
    builder.permissions(perms);
    let mut tmp = builder.tempfile_in(dir).map_err(with_path)?;
    write(tmp.as_file_mut()).map_err(with_path)?;
    tmp.as_file().sync_all().map_err(with_path)?;
    // Checked again: something may have been put at the path while the file was written.
    check_output_path(path)?;
    tmp.persist(path).map_err(|e| with_path(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_and_regular_ones_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.gguf");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.path().join("link.gguf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = write_atomically(&link, |f| io::Write::write_all(f, b"new")).unwrap_err();
        assert!(err.to_string().contains("a symlink"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old", "target untouched");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());

        let fifo = dir.path().join("fifo.gguf");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = write_atomically(&fifo, |f| io::Write::write_all(f, b"new")).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        assert!(std::fs::remove_file(&fifo).is_ok());
        for special in ["/dev/null", "/dev/full"] {
            let err = check_output_path(Path::new(special)).unwrap_err();
            assert!(err.to_string().contains("character device"), "{err}");
        }
        let err = check_output_path(dir.path()).unwrap_err();
        assert!(err.to_string().contains("folder"), "{err}");

        write_atomically(&target, |f| io::Write::write_all(f, b"new")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // A failed write leaves the old file and no temporary behind.
        let err = write_atomically(&target, |_| Err(io::Error::other("disk on fire"))).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["link.gguf", "target.gguf"]);
    }

    #[cfg(unix)]
    #[test]
    fn new_files_get_umask_permissions_and_old_ones_keep_theirs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kept.gguf");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&p, |f| io::Write::write_all(f, b"y")).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let q = dir.path().join("new.gguf");
        write_atomically(&q, |f| io::Write::write_all(f, b"z")).unwrap();
        // Not tempfile's private 0600 but what any new file gets: 0666 less the umask.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        let mode = std::fs::metadata(&q).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask, "{mode:o}");
    }
}
