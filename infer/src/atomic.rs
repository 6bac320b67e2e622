//! Writing files so that readers never see a partial one: write a temporary file beside the
//! target, flush it to disk, rename it over the target, then flush the folder so the rename
//! itself survives a crash. Every output of the toolkit is written this way.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A file being written under a temporary name beside its target; [`AtomicFile::commit`]
/// renames it into place, and dropping it uncommitted removes it.
pub struct AtomicFile {
    tmp: NamedTempFile,
    target: PathBuf,
}

impl AtomicFile {
    /// Starts `.<name>.XXXXXX.tmp` in the target's folder.
    pub fn create(target: &Path) -> std::io::Result<AtomicFile> {
        let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let prefix = format!(".{name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        // Temporary files are private (0600) by default; outputs are ordinary files.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
        Ok(AtomicFile { tmp: builder.tempfile_in(dir)?, target: target.to_path_buf() })
    }

    /// The path the file will have once committed.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Where the content is until the commit (to check it before it replaces the target).
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Flushes the file to disk and renames it over the target.
    pub fn commit(self) -> std::io::Result<()> {
        let target = self.target.clone();
        self.commit_to(&target)
    }

    /// Like [`AtomicFile::commit`], but to another path in the same folder (e.g. a `.partial`
    /// file when a run stops before its output is complete).
    pub fn commit_to(self, path: &Path) -> std::io::Result<()> {
        self.tmp.as_file().sync_all()?;
        self.tmp.persist(path).map_err(|e| e.error)?;
        sync_parent(path)
    }
}

/// Removes temporary files that a killed writer left in `dir` for the outputs named in
/// `names` (`.<name>.XXXXXX.tmp`); returns how many there were. Only for a folder this
/// process owns: a concurrent writer's temporary file would be removed too.
pub fn remove_leftovers(dir: &Path, names: &[&str]) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else { continue };
        let ours = names.iter().any(|name| n.starts_with(&format!(".{name}.")) && n.ends_with(".tmp"));
        if ours && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Flushes a folder's entries (the rename) to disk; a no-op where folders cannot be opened.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match File::open(dir) {
        Ok(d) => d.sync_all().or(Ok(())),
        Err(_) => Ok(()),
    }
}

/// Writes `path` atomically with `fill`, which receives a buffered writer.
pub fn write_with<F>(path: &Path, fill: F) -> std::io::Result<()>
where
    F: FnOnce(&mut BufWriter<&mut File>) -> std::io::Result<()>,
{
    let mut file = AtomicFile::create(path)?;
    {
        let mut w = BufWriter::new(file.file());
        fill(&mut w)?;
        w.flush()?;
    }
    file.commit()
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, |w| w.write_all(bytes))
}

/// Writes an image as PNG to `path` atomically.
pub fn write_png(path: &Path, img: &image::RgbImage) -> std::io::Result<()> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).map_err(std::io::Error::other)?;
    write_bytes(path, buf.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("best.pt");
        write_bytes(&p, b"old").unwrap();
        let r = write_with(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        let leftovers = std::fs::read_dir(d.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary file removed");
        write_bytes(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn commit_to_another_name_and_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out.jsonl");
        let mut f = AtomicFile::create(&target).unwrap();
        f.file().write_all(b"so far").unwrap();
        f.commit_to(&d.path().join("out.jsonl.partial")).unwrap();
        assert!(!target.exists());
        assert_eq!(std::fs::read(d.path().join("out.jsonl.partial")).unwrap(), b"so far");
        // A writer killed before its commit leaves its temporary file; it is cleaned up later.
        let killed = AtomicFile::create(&d.path().join("best.pt")).unwrap();
        std::mem::forget(killed);
        std::fs::write(d.path().join(".other.abc.tmp"), b"x").unwrap();
        assert_eq!(remove_leftovers(d.path(), &["best.pt", "last.pt"]), 1);
        assert!(d.path().join(".other.abc.tmp").exists());
    }
}
