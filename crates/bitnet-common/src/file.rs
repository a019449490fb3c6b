//! Opening input files safely. `open()` on a FIFO blocks until a writer appears (forever, for a
//! model path), and a device node is not a file of fixed length: `/dev/zero` would read as an
//! empty, truncated model. Inputs must be regular files, checked before the open and again on
//! the descriptor (the path could be swapped in between).

use std::fs::{File, FileType};
use std::io;
use std::path::Path;

/// "a FIFO", "a symlink", "a character device", ... for messages.
pub fn describe_file_type(ft: &FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_symlink() {
        "a symlink"
    } else if ft.is_dir() {
        "a folder"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

fn not_regular(path: &Path, ft: &FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is {}, not a regular file",
            path.display(),
            describe_file_type(ft)
        ),
    )
}

/// Opens `path` for reading with O_NONBLOCK, so that a FIFO without a writer cannot hang the
/// open; the flag stays set (it changes nothing for regular files).
fn open_nonblocking(path: &Path) -> io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    opts.open(path)
}

/// Opens `path` (following symlinks) for reading if it is a regular file. The open itself is
/// non-blocking, so a FIFO swapped in after the check cannot hang it; the descriptor's type is
/// checked again after the open.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let meta = std::fs::metadata(path)?;
    if !meta.file_type().is_file() {
        return Err(not_regular(path, &meta.file_type()));
    }
    let file = open_nonblocking(path)?;
    let ft = file.metadata()?.file_type();
    if !ft.is_file() {
        return Err(not_regular(path, &ft));
    }
    Ok(file)
}

/// Opens `path` for reading as a stream: a regular file, or a pipe or device such as
/// `/dev/stdin` or bash's `<(command)`, which a text input may well be. The open never blocks
/// (a FIFO that no writer ever opens would hang a plain open forever); reads then block as
/// usual, and a FIFO without a writer reads as empty. Folders are refused.
pub fn open_stream(path: &Path) -> io::Result<File> {
    let file = open_nonblocking(path)?;
    let ft = file.metadata()?.file_type();
    if ft.is_dir() {
        return Err(not_regular(path, &ft));
    }
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is an open descriptor owned by `file` for the duration of both calls;
        // F_GETFL/F_SETFL only read and set its status flags.
        let cleared = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
        };
        if !cleared {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(file)
}

/// The whole of a regular file.
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut open_regular(path)?, &mut bytes)?;
    Ok(bytes)
}

/// The whole of a regular text file.
pub fn read_regular_to_string(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    io::Read::read_to_string(&mut open_regular(path)?, &mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_open_without_blocking_and_folders_are_refused() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("prompt.txt");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // No writer: a plain open() would block forever; this one reads as empty.
        let mut text = String::new();
        open_stream(&fifo)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "");
        let mut zeros = Vec::new();
        open_stream(Path::new("/dev/zero"))
            .unwrap()
            .take(5)
            .read_to_end(&mut zeros)
            .unwrap();
        assert_eq!(zeros, [0; 5]);
        let err = open_stream(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is a folder"), "{err}");
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("model.gguf");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Would block forever in a plain open(): no writer ever comes.
        let err = open_regular(&fifo).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            err.to_string().contains("is a FIFO, not a regular file"),
            "{err}"
        );
        let err = read_regular_to_string(&fifo).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        let err = open_regular(Path::new("/dev/zero")).unwrap_err();
        assert!(
            err.to_string().contains("/dev/zero is a character device"),
            "{err}"
        );
        let err = open_regular(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is a folder"), "{err}");
        assert_eq!(
            open_regular(&dir.path().join("missing"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        // A symlink to a regular file is followed.
        let real = dir.path().join("real.txt");
        std::fs::write(&real, "text").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(read_regular_to_string(&link).unwrap(), "text");
    }
}
