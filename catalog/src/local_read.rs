//! Data files of a local warehouse, read into reusable buffers.
//!
//! object_store's local reads allocate a zero-filled buffer for every byte range and hand the
//! read to a blocking thread. For a query over page-cached files that is most of the cost of
//! reading: the zero fill, the page faults of fresh buffers, and a thread hand-off per column
//! chunk. Query scans of a `file://` warehouse read their ranges here instead: positioned reads
//! into buffers kept in a small process-wide pool, returned to it when the last `Bytes` slice of
//! a range is dropped.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;
use datafusion::physical_plan::metrics::Count;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use url::Url;

/// Idle buffers the pool keeps, in bytes.
const IDLE_LIMIT: usize = 64 << 20;
/// The smallest buffer, as a power of two.
const MIN_CLASS: u32 = 12;
/// Ranges above this are read into buffers of their own, never pooled.
const MAX_POOLED: usize = 16 << 20;

/// Where a local table's files are on disk.
#[derive(Debug)]
pub(crate) struct LocalFiles(LocalFileSystem);

impl LocalFiles {
    /// The files under `root`, when it is a `file://` URL.
    pub(crate) fn of(root: &Url) -> Option<LocalFiles> {
        if root.scheme() != "file" {
            return None;
        }
        let dir = root.to_file_path().ok()?;
        LocalFileSystem::new_with_prefix(dir).ok().map(LocalFiles)
    }

    /// A reader of the file at `location` (relative to the root), counting what it reads.
    pub(crate) fn reader(
        &self,
        location: &Path,
        bytes_scanned: Count,
    ) -> object_store::Result<LocalReader> {
        let path = self.0.path_to_filesystem(location)?;
        Ok(LocalReader {
            path,
            file: None,
            bytes_scanned,
        })
    }
}

/// One file's byte ranges, read on the calling thread.
pub(crate) struct LocalReader {
    path: PathBuf,
    file: Option<File>,
    bytes_scanned: Count,
}

impl LocalReader {
    /// The bytes of each range, in order.
    pub(crate) fn read(&mut self, ranges: &[Range<u64>]) -> parquet::errors::Result<Vec<Bytes>> {
        let path = &self.path;
        let file = match &mut self.file {
            Some(file) => file,
            none => none.insert(File::open(path).map_err(|e| read_error(path, e))?),
        };
        let mut out = Vec::with_capacity(ranges.len());
        for range in ranges {
            let len = usize::try_from(range.end.saturating_sub(range.start))
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
            let mut buf = take(len);
            if let Err(e) = file.read_exact_at(&mut buf[..len], range.start) {
                give_back(buf);
                return Err(read_error(path, e));
            }
            self.bytes_scanned.add(len);
            out.push(Bytes::from_owner(Pooled { buf, len }));
        }
        Ok(out)
    }
}

fn read_error(path: &std::path::Path, e: std::io::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::General(format!("reading {}: {e}", path.display()))
}

/// A read range's buffer, back to the pool when dropped.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

/// Idle buffers by size class (a power of two), and their total size.
struct Pool {
    classes: Vec<Vec<Vec<u8>>>,
    idle: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    classes: Vec::new(),
    idle: 0,
});

fn class_of(len: usize) -> u32 {
    len.next_power_of_two().trailing_zeros().max(MIN_CLASS)
}

/// A buffer of at least `len` bytes.
fn take(len: usize) -> Vec<u8> {
    if len > MAX_POOLED {
        return vec![0; len];
    }
    let class = class_of(len);
    if let Ok(mut pool) = POOL.lock()
        && let Some(buf) = pool
            .classes
            .get_mut(class as usize)
            .and_then(|idle| idle.pop())
    {
        pool.idle -= buf.len();
        return buf;
    }
    vec![0; 1 << class]
}

fn give_back(buf: Vec<u8>) {
    let len = buf.len();
    if len > MAX_POOLED || !len.is_power_of_two() || len < 1 << MIN_CLASS {
        return;
    }
    if let Ok(mut pool) = POOL.lock()
        && pool.idle + len <= IDLE_LIMIT
    {
        let class = class_of(len) as usize;
        if pool.classes.len() <= class {
            pool.classes.resize_with(class + 1, Vec::new);
        }
        pool.classes[class].push(buf);
        pool.idle += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_what_the_file_holds_and_buffers_come_back() {
        let dir = tempfile::tempdir().expect("dir");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::create_dir_all(dir.path().join("day=2026-11-01")).expect("mkdir");
        std::fs::write(dir.path().join("day=2026-11-01/part-0.parquet"), &data).expect("write");
        let root = Url::from_directory_path(dir.path()).expect("url");
        let files = LocalFiles::of(&root).expect("local");
        let count = Count::new();
        let mut reader = files
            .reader(&Path::from("day=2026-11-01/part-0.parquet"), count.clone())
            .expect("reader");
        let ranges = [0..10, 4_000..70_000, 99_990..100_000, 5..5];
        for _ in 0..3 {
            let read = reader.read(&ranges).expect("read");
            for (bytes, range) in read.iter().zip(&ranges) {
                assert_eq!(
                    bytes.as_ref(),
                    &data[range.start as usize..range.end as usize]
                );
            }
            // Slices keep the buffer alive past the `Bytes` they came from.
            let tail = read[1].slice(65_000..);
            drop(read);
            assert_eq!(tail.as_ref(), &data[69_000..70_000]);
        }
        assert_eq!(count.value(), 3 * (10 + 66_000 + 10));

        // Past the end of the file: an error naming the file, not short or stale bytes.
        let err = reader
            .read(std::slice::from_ref(&(99_990..100_001)))
            .expect_err("past the end");
        assert!(err.to_string().contains("part-0.parquet"), "{err}");
        let mut missing = files
            .reader(&Path::from("day=2026-11-01/gone.parquet"), Count::new())
            .expect("reader");
        let err = missing
            .read(std::slice::from_ref(&(0..1)))
            .expect_err("missing");
        assert!(err.to_string().contains("gone.parquet"), "{err}");

        assert!(LocalFiles::of(&Url::parse("s3://bucket/t/").expect("url")).is_none());
    }

    #[test]
    fn buffers_are_reused_by_size_class() {
        assert_eq!(take(5_000).len(), 8_192);
        // The largest class, which no other test reads.
        let a = take(MAX_POOLED - 1);
        assert_eq!(a.len(), MAX_POOLED);
        let ptr = a.as_ptr();
        give_back(a);
        let b = take(MAX_POOLED / 2 + 1);
        assert_eq!(b.as_ptr(), ptr);
        give_back(b);
        assert_eq!(take(MAX_POOLED + 1).len(), MAX_POOLED + 1);
        assert_eq!(take(1).len(), 1 << MIN_CLASS);
    }
}
