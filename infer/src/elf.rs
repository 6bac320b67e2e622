//! The shared libraries an ELF file asks for (its `DT_NEEDED` entries), read from its headers
//! alone, so `doctor` can say how each dependency of ONNX Runtime's CUDA provider (a 284 MB
//! file) resolves without loading it. Every size read is checked against the file's.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ElfError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    #[error("malformed ELF file: {0}")]
    Malformed(&'static str),
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;

struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_at(f: &mut File, offset: u64, len: u64, file_len: u64) -> Result<Vec<u8>, ElfError> {
    let end = offset.checked_add(len).ok_or(ElfError::Malformed("offset overflows"))?;
    if end > file_len {
        return Err(ElfError::Malformed("a table lies past the end of the file"));
    }
    let mut buf = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn segments(f: &mut File, file_len: u64) -> Result<Vec<Segment>, ElfError> {
    let head = read_at(f, 0, 64, file_len).map_err(|_| ElfError::NotElf64)?;
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return Err(ElfError::NotElf64);
    }
    let (phoff, phentsize, phnum) = (u64_at(&head, 32), u64::from(u16_at(&head, 54)), u64::from(u16_at(&head, 56)));
    if phentsize < 56 {
        return Err(ElfError::Malformed("program headers too small"));
    }
    let table = read_at(f, phoff, phentsize * phnum, file_len)?;
    Ok((0..phnum as usize)
        .map(|i| {
            let p = &table[i * phentsize as usize..];
            Segment { kind: u32_at(p, 0), offset: u64_at(p, 8), vaddr: u64_at(p, 16), filesz: u64_at(p, 32) }
        })
        .collect())
}

/// The file offset of virtual address `vaddr`, through the loadable segments.
fn file_offset(segments: &[Segment], vaddr: u64) -> Option<u64> {
    segments
        .iter()
        .filter(|s| s.kind == PT_LOAD)
        .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
        .map(|s| s.offset + (vaddr - s.vaddr))
}

/// The `DT_NEEDED` names of the ELF file at `path`, in order.
pub fn needed_libraries(path: &Path) -> Result<Vec<String>, ElfError> {
    let mut f = File::open(path)?;
    let file_len = f.metadata()?.len();
    let segments = segments(&mut f, file_len)?;
    let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) else { return Ok(vec![]) };
    let table = read_at(&mut f, dynamic.offset, dynamic.filesz, file_len)?;
    let (mut needed, mut strtab, mut strsz) = (Vec::new(), None, None);
    for entry in table.chunks_exact(16) {
        match (u64_at(entry, 0), u64_at(entry, 8)) {
            (DT_NULL, _) => break,
            (DT_NEEDED, v) => needed.push(v),
            (DT_STRTAB, v) => strtab = Some(v),
            (DT_STRSZ, v) => strsz = Some(v),
            _ => {}
        }
    }
    if needed.is_empty() {
        return Ok(vec![]);
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(ElfError::Malformed("no string table"));
    };
    let at = file_offset(&segments, strtab).ok_or(ElfError::Malformed("string table outside the file"))?;
    let strings = read_at(&mut f, at, strsz, file_len)?;
    needed
        .into_iter()
        .map(|off| {
            let tail = strings.get(off as usize..).ok_or(ElfError::Malformed("name outside the string table"))?;
            let end = tail.iter().position(|&b| b == 0).ok_or(ElfError::Malformed("unterminated name"))?;
            Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needed_libraries_from(bytes: &[u8]) -> Result<Vec<String>, ElfError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.so");
        std::fs::write(&path, bytes).unwrap();
        needed_libraries(&path)
    }

    /// The test binary itself: an ELF file that needs libc.
    #[test]
    fn reads_what_ldd_would() {
        let exe = std::env::current_exe().unwrap();
        let needed = needed_libraries(&exe).unwrap();
        assert!(needed.iter().any(|n| n.starts_with("libc.so")), "{needed:?}");
    }

    /// A small real shared library (the system's libm), else this test binary.
    fn small_elf() -> Vec<u8> {
        let libm = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        std::fs::read(libm.map_or_else(|| std::env::current_exe().unwrap(), std::path::PathBuf::from)).unwrap()
    }

    /// Seeded mutations of a real shared library's headers (its first 4 KiB, which hold or
    /// point at every table read) and truncations: each gives names or an error, never a panic
    /// or a huge allocation (sizes are checked against the file's).
    #[test]
    fn damaged_files_give_errors_not_panics() {
        let exe = small_elf();
        assert!(!needed_libraries_from(&exe).unwrap().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.so");
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut outcomes = [0usize; 2];
        for _ in 0..2000 {
            let mut bytes = exe.clone();
            for _ in 0..(1 + next() % 8) {
                let at = (next() % 4096.min(bytes.len() as u64)) as usize;
                bytes[at] = next() as u8;
            }
            if next() % 4 == 0 {
                bytes.truncate((next() % bytes.len() as u64) as usize);
            }
            std::fs::write(&path, &bytes).unwrap();
            outcomes[usize::from(needed_libraries(&path).is_ok())] += 1;
        }
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    }
}
