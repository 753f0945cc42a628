//! Segment files: `<number of their first record, 20 digits>.seg` in the
//! journal's directory, each created at its full size (blocks reserved, so a
//! full disk fails the creation, not a later copy into the mapping), mapped
//! while records are appended, trimmed to what they hold when the next
//! segment starts.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use memmap2::MmapMut;

const SUFFIX: &str = ".seg";

/// A segment on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    pub first_seq: u64,
    pub path: PathBuf,
}

pub fn path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SUFFIX}"))
}

/// The directory's segments, oldest first. Other files are not the journal's.
pub fn list(dir: &Path) -> std::io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first_seq) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)).and_then(|n| n.parse().ok()) else {
            continue;
        };
        out.push(SegmentFile { first_seq, path: entry.path() });
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// Written pages are handed back to the page cache in steps of this many
/// bytes, so the mapping costs the process at most this much resident
/// memory however full the segment is.
const RELEASE_STEP: usize = 1 << 20;
const PAGE: usize = 4096;

/// The segment records are appended to.
pub struct Mapped {
    file: File,
    pub map: MmapMut,
    /// Bytes from the start whose pages were handed back (`release_written`).
    released: usize,
}

impl Mapped {
    /// Opens (or creates) the segment at `path`, grown to `size` bytes if it
    /// is smaller (a segment trimmed just before a crash), and maps it.
    pub fn open(path: PathBuf, size: u64) -> std::io::Result<Mapped> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path)?;
        let len = file.metadata()?.len();
        if len < size {
            reserve(&file, len, size)?;
        }
        let map = map(&file)?;
        Ok(Mapped { file, map, released: 0 })
    }

    /// Whether every byte from `from` on is zero, read with `pread`: read
    /// through the mapping, a fresh segment's zeros would all become
    /// resident memory of the process.
    pub fn is_zero_from(&self, from: usize) -> std::io::Result<bool> {
        let mut buffer = vec![0; 1 << 16];
        let mut at = from;
        while at < self.map.len() {
            let n = buffer.len().min(self.map.len() - at);
            self.file.read_exact_at(&mut buffer[..n], at as u64)?;
            if buffer[..n].iter().any(|b| *b != 0) {
                return Ok(false);
            }
            at += n;
        }
        Ok(true)
    }

    /// Records now take `end` bytes: once another step of them is written,
    /// their pages leave the process (they stay in the page cache, dirty
    /// until written back, and readers use `pread`). Appends never touch
    /// bytes before `end` again, so nothing of the mapping that is in use
    /// is given back.
    pub fn release_written(&mut self, end: usize) {
        let upto = end / PAGE * PAGE;
        if upto < self.released + RELEASE_STEP {
            return;
        }
        self.release(self.released, upto);
        // Failed or not, the range is not tried again (a failure only costs
        // memory, and retrying would cost a system call per append).
        self.released = upto;
    }

    /// Zeroes everything from `from` on (a torn record's bytes after a
    /// crash), then hands those pages back: a segment's zero tail is not
    /// the process's memory.
    pub fn zero_from(&mut self, from: usize) {
        self.map[from..].fill(0);
        self.release(from.div_ceil(PAGE) * PAGE, self.map.len());
    }

    #[allow(unsafe_code)]
    fn release(&mut self, from: usize, to: usize) {
        if from >= to {
            return;
        }
        // SAFETY: `&mut self` means no borrow of the mapping is alive.
        // MADV_DONTNEED on a shared file mapping drops this process's
        // page-table entries only: the data stays in the page cache (dirty
        // pages stay dirty and are written back) and a later access faults
        // it in unchanged.
        let advised = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from) };
        if let Err(error) = advised {
            tracing::debug!(%error, "cannot hand journal pages back to the page cache");
        }
    }

    /// Unmaps the segment and cuts it to the `used` bytes its records take.
    pub fn trim(self, used: usize) -> std::io::Result<()> {
        let Mapped { file, map, .. } = self;
        map.flush_async()?;
        drop(map);
        file.set_len(used as u64)
    }

    /// Writes the mapping back to disk: a clean stop leaves nothing only in
    /// the page cache.
    pub fn sync(&self) -> std::io::Result<()> {
        self.map.flush()
    }
}

/// Reserves the blocks of `[from, to)`, zero-filled. Where the file system
/// cannot reserve (`fallocate` unsupported), writes the zeros.
fn reserve(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), from, to - from) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
            let zeros = vec![0; 1 << 20];
            let mut at = from;
            while at < to {
                let n = (to - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Maps `file` for writing.
#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<MmapMut> {
    // SAFETY: a mapping is undefined behaviour if the file changes under it
    // other than through it. The journal's files are written only through
    // this mapping, by one `Journal` (it holds an exclusive `flock` on the
    // directory's LOCK file, so a second process cannot open the journal),
    // created 0600 in a 0700 directory, and never truncated while mapped
    // (`trim` unmaps first). Readers use `read(2)`, never the mapping.
    unsafe { MmapMut::map_mut(file) }
}

/// Reads a segment with `pread`, never through a mapping.
pub struct Reader {
    file: File,
    len: u64,
}

impl Reader {
    /// None when the segment is gone (deleted by retention meanwhile).
    pub fn open(path: &Path) -> std::io::Result<Option<Reader>> {
        match File::open(path) {
            Ok(file) => {
                let len = file.metadata()?.len();
                Ok(Some(Reader { file, len }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bytes `[from, upto)`, cut at the file's end.
    pub fn read(&self, from: u64, upto: u64) -> std::io::Result<Bytes> {
        let end = upto.min(self.len);
        if from >= end {
            return Ok(Bytes::new());
        }
        let mut out = vec![0; (end - from) as usize];
        // A segment trimmed since it was opened (the next one started)
        // reads short: what is there is what there is.
        let mut read = 0;
        while read < out.len() {
            match self.file.read_at(&mut out[read..], from + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        out.truncate(read);
        Ok(Bytes::from(out))
    }
}

/// Holds the directory's LOCK file exclusively for as long as it lives.
pub struct DirLock(#[allow(dead_code)] File);

pub fn lock_dir(dir: &Path) -> std::io::Result<DirLock> {
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(dir.join("LOCK"))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
    Ok(DirLock(file))
}
