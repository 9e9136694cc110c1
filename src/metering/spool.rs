//! The spool: JSON-lines segments in `spool_dir/segments`, named so that their names sort in
//! the order they were opened. A segment being written is `STEM.open` and carries an
//! exclusive `flock` of its writer; a finished one is `STEM.jsonl`. A process that died
//! (`kill -9`) leaves an `.open` file whose lock the kernel released: whoever delivers seals
//! it, cut back to its last whole line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The segment this process is writing and how much of it is on disk (fsynced): what the
/// sinks of this process may read of it.
pub static ACTIVE: Mutex<Option<(String, u64)>> = Mutex::new(None);

/// Set when a segment newer than this process's open one exists (the other process of an
/// upgrade opened it): a single cursor cannot read past an open segment, so the writer
/// seals its own and continues in one that sorts after every other.
pub static ROTATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Signalled on every seal: the spool just grew by a whole segment, so the janitor checks
/// `spool_max` now rather than at its next tick.
pub static SEALED: tokio::sync::Notify = tokio::sync::Notify::const_new();

pub fn active() -> Option<(String, u64)> {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set_active(v: Option<(String, u64)>) {
    *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = v;
}

pub fn segments_dir(spool: &Path) -> PathBuf {
    spool.join("segments")
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub stem: String,
    pub path: PathBuf,
    pub sealed: bool,
    pub len: u64,
}

/// Every segment, oldest first.
pub fn list(spool: &Path) -> io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(segments_dir(spool))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (stem, sealed) = if let Some(s) = name.strip_suffix(".jsonl") {
            (s, true)
        } else if let Some(s) = name.strip_suffix(".open") {
            (s, false)
        } else {
            continue;
        };
        // Only names the writer makes: a stray file must not sort among the segments.
        if !is_stem(stem) {
            continue;
        }
        let len = match entry.metadata() {
            Ok(m) => m.len(),
            // Removed between the listing and now.
            Err(_) => continue,
        };
        out.push(Segment {
            stem: stem.to_string(),
            path: entry.path(),
            sealed,
            len,
        });
    }
    out.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok(out)
}

/// `MICROS-PID`: 20 and 10 digits.
fn is_stem(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 31 && b[20] == b'-' && b.iter().enumerate().all(|(i, c)| i == 20 || c.is_ascii_digit())
}

fn stem_micros(s: &str) -> u128 {
    s.get(..20).and_then(|t| t.parse().ok()).unwrap_or(0)
}

fn flock(f: &File, nonblocking: bool) -> bool {
    let flags = libc::LOCK_EX | if nonblocking { libc::LOCK_NB } else { 0 };
    // SAFETY: flock on a descriptor this File owns; the lock lives as long as the File.
    unsafe { libc::flock(f.as_raw_fd(), flags) == 0 }
}

/// The delivery lock: only its holder reads the spool for sinks, moves cursors and removes
/// segments, so two processes (the old and the new one of an upgrade) never deliver the
/// same events at once. Held until the returned file is dropped or the process ends.
pub fn try_deliver_lock(spool: &Path) -> io::Result<Option<File>> {
    let f = OpenOptions::new().create(true).append(true).open(spool.join("deliver.lock"))?;
    Ok(flock(&f, true).then_some(f))
}

/// Seals the `.open` segments whose writer is gone (its lock is free), cutting a torn last
/// line. Returns how many it sealed.
pub fn recover(spool: &Path) -> io::Result<usize> {
    let own = active().map(|(s, _)| s);
    let mut sealed = 0;
    for seg in list(spool)? {
        if seg.sealed || own.as_deref() == Some(seg.stem.as_str()) {
            continue;
        }
        // One unreadable or vanished file must not stop the upkeep of the others.
        match seal_dead(&seg) {
            Ok(true) => sealed += 1,
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::error!("metering: cannot recover {}: {e}", seg.path.display()),
        }
    }
    if sealed > 0 {
        sync_dir(&segments_dir(spool));
    }
    Ok(sealed)
}

/// Seals `seg` if its writer is gone (its lock is free); false if it is still being written.
fn seal_dead(seg: &Segment) -> io::Result<bool> {
    let mut f = OpenOptions::new().read(true).write(true).open(&seg.path)?;
    if !flock(&f, true) {
        return Ok(false);
    }
    let keep = last_line_end(&mut f, seg.len)?;
    if keep < seg.len {
        log::warn!(
            "metering: {} ended in a torn line ({} bytes cut)",
            seg.path.display(),
            seg.len - keep
        );
        f.set_len(keep)?;
    }
    f.sync_all()?;
    fs::rename(&seg.path, seg.path.with_extension("jsonl"))?;
    Ok(true)
}

/// The length of the file up to and including its last newline.
fn last_line_end(f: &mut File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Where a sink is: the next unread byte of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub stem: String,
    pub offset: u64,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        let (stem, offset) = s.trim().split_once(' ')?;
        Some(Cursor {
            stem: stem.to_string(),
            offset: offset.parse().ok()?,
        })
    }

    pub fn text(&self) -> String {
        format!("{} {}", self.stem, self.offset)
    }

    /// Whether this cursor is past every byte of `seg`.
    pub fn passed(&self, seg: &Segment) -> bool {
        self.stem > seg.stem || (self.stem == seg.stem && seg.sealed && self.offset >= seg.len)
    }
}

/// Writes `data` to `path` so that a crash leaves either the old or the new contents.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Whole lines read from the spool, and where reading stopped.
#[derive(Debug, Default)]
pub struct Batch {
    pub buf: Vec<u8>,
    pub lines: Vec<(usize, usize)>,
    pub end: Cursor,
}

impl Batch {
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.iter().map(|&(a, b)| &self.buf[a..b])
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

const READ_MAX: usize = 8 << 20;
const CHUNK: usize = 64 << 10;

/// Up to `max_lines` lines after `from`, in segment order. It stops at a segment another
/// live process is still writing, and reads this process's own open segment only as far
/// as it is on disk.
pub fn read_batch(spool: &Path, from: &Cursor, max_lines: usize) -> io::Result<Batch> {
    let active = active();
    let mut batch = Batch {
        end: from.clone(),
        ..Batch::default()
    };
    let segs = list(spool)?;
    if let (Some((own, _)), Some(last)) = (&active, segs.last()) {
        if last.stem > *own {
            ROTATE.store(true, std::sync::atomic::Ordering::Release);
        }
    }
    for seg in segs {
        if seg.stem < batch.end.stem {
            continue;
        }
        let limit = match (&active, seg.sealed) {
            (_, true) => seg.len,
            (Some((stem, synced)), false) if *stem == seg.stem => *synced,
            // Another live process is writing it: stop before it, without moving onto it
            // (a segment that sorts before it may still appear).
            _ => break,
        };
        if seg.stem != batch.end.stem {
            batch.end = Cursor {
                stem: seg.stem.clone(),
                offset: 0,
            };
        }
        if batch.end.offset < limit {
            let mut f = match File::open(&seg.path) {
                Ok(f) => f,
                // Sealed (renamed) or removed since the listing: the next read sees it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            };
            f.seek(SeekFrom::Start(batch.end.offset))?;
            // In chunks, until enough lines: a batch of 100 reads what 100 lines take.
            let mut left = limit - batch.end.offset;
            let mut at = batch.buf.len();
            while left > 0 && batch.lines.len() < max_lines && batch.buf.len() < READ_MAX {
                let start = batch.buf.len();
                let want = (left as usize).min(CHUNK);
                batch.buf.resize(start + want, 0);
                f.read_exact(&mut batch.buf[start..])?;
                left -= want as u64;
                while batch.lines.len() < max_lines {
                    let Some(nl) = batch.buf[at..].iter().position(|&b| b == b'\n') else {
                        break;
                    };
                    if nl > 0 {
                        batch.lines.push((at, at + nl));
                    }
                    at += nl + 1;
                }
            }
            let unread = batch.buf.len() - at;
            batch.buf.truncate(at);
            batch.end.offset = limit - left - unread as u64;
        }
        if batch.lines.len() >= max_lines || batch.buf.len() >= READ_MAX || !seg.sealed || batch.end.offset < limit {
            break;
        }
    }
    Ok(batch)
}

/// The segment this process appends to.
pub struct Writer {
    spool: PathBuf,
    segment_size: u64,
    open: Option<(File, String, u64)>,
    last_stem: u128,
}

impl Writer {
    pub fn new(spool: &Path, segment_size: u64) -> io::Result<Writer> {
        fs::create_dir_all(segments_dir(spool))?;
        fs::create_dir_all(spool.join("cursors"))?;
        Ok(Writer {
            spool: spool.to_path_buf(),
            segment_size,
            open: None,
            last_stem: 0,
        })
    }

    /// Appends whole lines and makes them durable (fdatasync) before they count as
    /// spooled. On a failed write the segment is cut back to where it was, so a torn line
    /// never sits between whole ones.
    /// A segment is cut at the last whole line that fits in `segment_size` (a single longer
    /// line gets a segment to itself), so the spool's size is bounded in whole segments.
    pub fn append(&mut self, mut lines: &[u8]) -> io::Result<()> {
        while !lines.is_empty() {
            let room = self.segment_size.saturating_sub(self.open.as_ref().map_or(0, |o| o.2)) as usize;
            let cut = match lines[..room.min(lines.len())].iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                // Not one whole line fits: a fresh segment takes the next line, whatever its size.
                None if self.open.as_ref().is_some_and(|o| o.2 > 0) => {
                    self.seal()?;
                    continue;
                }
                None => lines.iter().position(|&b| b == b'\n').map_or(lines.len(), |i| i + 1),
            };
            self.append_part(&lines[..cut])?;
            lines = &lines[cut..];
        }
        Ok(())
    }

    fn append_part(&mut self, lines: &[u8]) -> io::Result<()> {
        if self.open.is_none() {
            self.open = Some(self.create()?);
        }
        let Some((f, stem, len)) = self.open.as_mut() else {
            return Err(io::Error::other("no open segment"));
        };
        if let Err(e) = f.write_all(lines).and_then(|_| f.sync_data()) {
            let _ = f.set_len(*len);
            return Err(e);
        }
        *len += lines.len() as u64;
        set_active(Some((stem.clone(), *len)));
        if *len >= self.segment_size {
            self.seal()?;
        }
        Ok(())
    }

    /// Seals the open segment if a newer one appeared (see [`ROTATE`]).
    pub fn rotate_if_asked(&mut self) -> io::Result<()> {
        if ROTATE.swap(false, std::sync::atomic::Ordering::AcqRel) {
            self.seal()?;
        }
        Ok(())
    }

    fn create(&mut self) -> io::Result<(File, String, u64)> {
        // Serialised across processes (the two of an upgrade): a name is chosen and becomes
        // visible under one lock, so no segment can appear behind a newer one.
        let dir = segments_dir(&self.spool);
        let guard = OpenOptions::new().create(true).append(true).open(self.spool.join("create.lock"))?;
        flock(&guard, false);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros();
        // After every segment there is and every cursor (a clock set back must not name a
        // segment that sorts before where the sinks already are).
        let newest = list(&self.spool)?.last().map_or(0, |s| stem_micros(&s.stem));
        let cursors = fs::read_dir(self.spool.join("cursors"))?
            .flatten()
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .filter_map(|t| Cursor::parse(&t))
            .map(|c| stem_micros(&c.stem))
            .max()
            .unwrap_or(0);
        self.last_stem = now.max(self.last_stem + 1).max(newest + 1).max(cursors + 1);
        let stem = format!("{:020}-{:010}", self.last_stem, std::process::id());
        // Locked under a name no one lists, then renamed: an `.open` file is never visible
        // unlocked, where a janitor would take it for a dead process's and seal it.
        let fresh = dir.join(format!("{stem}.new"));
        let f = OpenOptions::new().create_new(true).append(true).open(&fresh)?;
        if !flock(&f, true) {
            let _ = fs::remove_file(&fresh);
            return Err(io::Error::other(format!("cannot lock {}", fresh.display())));
        }
        set_active(Some((stem.clone(), 0)));
        fs::rename(&fresh, dir.join(format!("{stem}.open")))?;
        sync_dir(&dir);
        drop(guard);
        Ok((f, stem, 0))
    }

    /// Closes the open segment for good: the next line starts a new one.
    pub fn seal(&mut self) -> io::Result<()> {
        let Some((f, stem, _)) = self.open.take() else { return Ok(()) };
        f.sync_all()?;
        let dir = segments_dir(&self.spool);
        fs::rename(dir.join(format!("{stem}.open")), dir.join(format!("{stem}.jsonl")))?;
        sync_dir(&dir);
        set_active(None);
        SEALED.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gh-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn batches_follow_segments_in_order_and_stop_at_the_synced_end() {
        let dir = temp("order");
        let mut w = Writer::new(&dir, 20).expect("writer");
        w.append(b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n").expect("append");
        w.append(b"{\"a\":4}\n").expect("append");
        let b = read_batch(&dir, &Cursor::default(), 2).expect("read");
        assert_eq!(b.lines().collect::<Vec<_>>(), vec![&b"{\"a\":1}"[..], b"{\"a\":2}"]);
        let b = read_batch(&dir, &b.end, 10).expect("read");
        assert_eq!(b.lines().collect::<Vec<_>>(), vec![&b"{\"a\":3}"[..], b"{\"a\":4}"]);
        let again = read_batch(&dir, &b.end, 10).expect("read");
        assert!(again.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_dead_writers_torn_segment_is_cut_to_its_last_line_and_sealed() {
        let dir = temp("torn");
        fs::create_dir_all(segments_dir(&dir)).expect("dir");
        let path = segments_dir(&dir).join("00000000000000000001-0000000001.open");
        fs::write(&path, b"{\"a\":1}\n{\"a\":2").expect("write");
        assert_eq!(recover(&dir).expect("recover"), 1);
        let sealed = path.with_extension("jsonl");
        assert_eq!(fs::read(&sealed).expect("sealed"), b"{\"a\":1}\n");
        let _ = fs::remove_dir_all(&dir);
    }
}
