//! The embedded node's commit log: append-only segment files in `DATA_DIR/log/`.
//!
//! A group commit is one record appended with one `pwrite` and made durable with one
//! `fdatasync`: no B-tree, no WAL frames, no checkpoint copying it a second time. Segments are
//! written full of zeros before use, so an append never changes the file's size or allocates
//! blocks and `fdatasync` has no metadata to flush. Segments whose records are all released
//! (materialized) are recycled as spares.
//!
//! Layout: a segment `{base:020}.seg` starts with a 32-byte header (magic, version, base lsn,
//! CRC) followed by records `len: u32 | crc: u32 | lsn: u64 | payload`, little-endian, the CRC
//! covering length, lsn and payload. Records in a segment have consecutive lsns starting at
//! its base, and each segment starts where the previous one ended. Reading stops at the first
//! record that is zero, torn (bad CRC) or out of sequence — left over from the segment's
//! previous life, or an append that never completed (and so was never acknowledged).
//!
//! `released` holds the release point: replay skips records below it, so a conversation
//! deleted after its events were materialized cannot come back from the log. It has two
//! 32-byte slots in separate sectors, written in turn, each with a sequence number and a CRC;
//! the valid slot with the higher sequence number wins, so a torn write loses nothing.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cadre_actors::controller::{CommitLog, MAX_RECORD_BYTES, RecordFn};
use cadre_actors::store::StoreError;

use super::DataDirLock;

/// The commit log directory inside a data dir.
pub const LOG_DIR: &str = "log";
/// Bytes per segment.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Released segments kept for reuse; more are deleted.
const MAX_SPARES: usize = 2;
const MAGIC: &[u8; 8] = b"CADRELOG";
const VERSION: u32 = 1;
const HEADER: u64 = 32;
const RECORD_HEADER: usize = 16;
const RELEASED_FILE: &str = "released";
const RELEASED_MAGIC: &[u8; 8] = b"CADRERLS";
/// Bytes between the two slots of `released` (one sector each).
const SLOT: u64 = 512;

/// Append-only segment files implementing [`CommitLog`].
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    spares: Arc<Spares>,
    released: Mutex<Released>,
    _lock: Option<Arc<DataDirLock>>,
}

/// The durable release point.
struct Released {
    file: File,
    /// Writes so far; the next goes to slot `seq % 2`.
    seq: u64,
    lsn: u64,
}

struct State {
    /// Oldest first; the last one is appended to.
    segments: VecDeque<Segment>,
    active: File,
    /// Where the next record goes in the active segment.
    end: u64,
    next: u64,
    /// Set when a failed append could not be undone: nothing more is appended until a restart
    /// reads back what is really on disk.
    broken: Option<String>,
    buffer: Vec<u8>,
}

struct Segment {
    base: u64,
    path: PathBuf,
}

/// Zero-filled files ready to become segments.
#[derive(Default)]
struct Spares {
    files: Mutex<Vec<PathBuf>>,
    preparing: std::sync::atomic::AtomicBool,
}

impl SegmentLog {
    /// Opens (creating if needed) the log in `dir`, checking every segment. A torn last record
    /// (an append cut short by a crash) is discarded; a missing segment is an error.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, SEGMENT_BYTES, None)
    }

    /// Like [`SegmentLog::open`] with a segment size, holding `lock` while open.
    pub fn open_with(
        dir: &Path,
        segment_bytes: u64,
        lock: Option<Arc<DataDirLock>>,
    ) -> Result<Self, StoreError> {
        let fail = |what: &str, e: std::io::Error| {
            StoreError::Io(format!("commit log {}: {what}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| fail("cannot create", e))?;
        let mut bases = Vec::new();
        let mut spares = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| fail("cannot list", e))? {
            let path = entry.map_err(|e| fail("cannot list", e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(base) = name
                .strip_suffix(".seg")
                .and_then(|b| b.parse::<u64>().ok())
            {
                bases.push(base);
            } else if name.starts_with("spare-") && !name.ends_with(".tmp") {
                spares.push(path);
            } else if name.ends_with(".tmp") {
                // A spare whose preparation was interrupted.
                let _ = std::fs::remove_file(&path);
            }
        }
        bases.sort_unstable();
        let mut segments = VecDeque::new();
        let mut next = None;
        let mut end = HEADER;
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment_name(base));
            let bytes = std::fs::read(&path).map_err(|e| fail("cannot read a segment", e))?;
            check_header(&bytes, base).map_err(|why| corrupt(&path, &why))?;
            if let Some(next) = next
                && next != base
            {
                return Err(corrupt(
                    &path,
                    &format!("starts at lsn {base}, but the previous segment ends before {next}"),
                ));
            }
            let (at, after) = scan(&bytes, base);
            // Zeroes whatever a cut-short append may have left after the last good record
            // (pages of a record reach the disk in any order), so no fragment of it can pass
            // for a record later. Older bytes beyond hold lsns below the base.
            let reach = (at + RECORD_HEADER + MAX_RECORD_BYTES).min(bytes.len());
            if i + 1 == bases.len() && bytes[at..reach].iter().any(|&b| b != 0) {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| fail("cannot open a segment", e))?;
                file.write_all_at(&vec![0; reach - at], at as u64)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| fail("cannot clear a torn record", e))?;
            }
            next = Some(after);
            end = at as u64;
            segments.push_back(Segment { base, path });
        }
        let spares = Arc::new(Spares {
            files: Mutex::new(spares),
            ..Spares::default()
        });
        let (active, next) = match (segments.back(), next) {
            (Some(last), Some(next)) => (
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&last.path)
                    .map_err(|e| fail("cannot open a segment", e))?,
                next,
            ),
            _ => {
                let (file, path) = new_segment(dir, &spares, segment_bytes, 1)?;
                segments.push_back(Segment { base: 1, path });
                end = HEADER;
                (file, 1)
            }
        };
        let released = Mutex::new(Released::open(&dir.join(RELEASED_FILE))?);
        let log = Self {
            released,
            dir: dir.to_path_buf(),
            segment_bytes,
            state: Mutex::new(State {
                segments,
                active,
                end,
                next,
                broken: None,
                buffer: Vec::new(),
            }),
            spares,
            _lock: lock,
        };
        log.prepare_spare();
        Ok(log)
    }

    /// How many segment files hold records not yet released (the active one included).
    pub fn segments(&self) -> usize {
        self.state.lock().map_or(0, |s| s.segments.len())
    }

    /// Starts a new segment for `lsn`, from a spare if there is one.
    fn roll_over(&self, state: &mut State, lsn: u64) -> Result<(), StoreError> {
        let (file, path) = new_segment(&self.dir, &self.spares, self.segment_bytes, lsn)?;
        state.segments.push_back(Segment { base: lsn, path });
        state.active = file;
        state.end = HEADER;
        self.prepare_spare();
        Ok(())
    }

    /// Unless a spare is ready, fills one with zeros on a background thread, so the next
    /// roll-over finds one.
    fn prepare_spare(&self) {
        use std::sync::atomic::Ordering;
        if !self.spares.files.lock().expect("spares").is_empty()
            || self.spares.preparing.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let spares = self.spares.clone();
        let dir = self.dir.clone();
        let bytes = self.segment_bytes;
        let started = std::thread::Builder::new()
            .name("cadre-log-spare".into())
            .spawn(move || {
                cadre_actors::store::background_priority();
                let path = dir.join(format!("spare-{}", uuid::Uuid::new_v4().simple()));
                match write_zeros(&path, bytes).and_then(|()| sync_dir(&dir)) {
                    Ok(()) => spares.files.lock().expect("spares").push(path),
                    Err(e) => tracing::warn!(error = %e, "cannot prepare a commit log segment"),
                }
                spares.preparing.store(false, Ordering::SeqCst);
            });
        if started.is_err() {
            self.spares.preparing.store(false, Ordering::SeqCst);
        }
    }

    /// Undoes a failed append by zeroing its bytes; if even that fails the log stops taking
    /// appends, since a record whose callers were told it failed must not come back.
    fn undo(state: &mut State, at: u64, len: usize, error: &std::io::Error) {
        let zeros = vec![0; len];
        if let Err(e) = state
            .active
            .write_all_at(&zeros, at)
            .and_then(|()| state.active.sync_data())
        {
            state.broken = Some(format!(
                "an append failed ({error}) and could not be undone ({e}); restart the node"
            ));
        }
    }
}

impl CommitLog for SegmentLog {
    fn next_lsn(&self) -> Result<u64, StoreError> {
        Ok(self.state.lock().map_err(|_| poisoned())?.next)
    }

    fn append(&self, lsn: u64, record: &[u8]) -> Result<(), StoreError> {
        if record.len() > MAX_RECORD_BYTES {
            return Err(StoreError::TooLarge {
                bytes: record.len(),
            });
        }
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        if let Some(why) = &state.broken {
            return Err(StoreError::Io(format!("commit log unusable: {why}")));
        }
        if lsn != state.next {
            return Err(StoreError::Io(format!(
                "commit log append out of order: lsn {lsn}, expected {}",
                state.next
            )));
        }
        let len = RECORD_HEADER + record.len();
        if state.end > HEADER && state.end + len as u64 > self.segment_bytes {
            self.roll_over(&mut state, lsn)?;
        }
        let state = &mut *state;
        state.buffer.clear();
        state
            .buffer
            .extend_from_slice(&(record.len() as u32).to_le_bytes());
        state
            .buffer
            .extend_from_slice(&record_crc(lsn, record).to_le_bytes());
        state.buffer.extend_from_slice(&lsn.to_le_bytes());
        state.buffer.extend_from_slice(record);
        let at = state.end;
        if let Err(e) = state
            .active
            .write_all_at(&state.buffer, at)
            .and_then(|()| state.active.sync_data())
        {
            Self::undo(state, at, len, &e);
            return Err(StoreError::Io(format!("commit log append failed: {e}")));
        }
        state.end += len as u64;
        state.next = lsn + 1;
        Ok(())
    }

    fn replay(&self, f: &mut RecordFn<'_>) -> Result<(), StoreError> {
        let paths: Vec<(u64, PathBuf)> = {
            let state = self.state.lock().map_err(|_| poisoned())?;
            state
                .segments
                .iter()
                .map(|s| (s.base, s.path.clone()))
                .collect()
        };
        let released = self.released.lock().map_err(|_| poisoned())?.lsn;
        for (base, path) in paths {
            let bytes = std::fs::read(&path).map_err(|e| {
                StoreError::Io(format!("cannot read commit log {}: {e}", path.display()))
            })?;
            let mut at = HEADER as usize;
            let mut lsn = base;
            while let Some((payload, next)) = record_at(&bytes, at, lsn) {
                if lsn >= released {
                    f(lsn, payload)?;
                }
                at = next;
                lsn += 1;
            }
        }
        Ok(())
    }

    fn release(&self, lsn: u64) -> Result<(), StoreError> {
        self.released.lock().map_err(|_| poisoned())?.advance(lsn)?;
        let released: Vec<Segment> = {
            let mut state = self.state.lock().map_err(|_| poisoned())?;
            let mut released = Vec::new();
            // A segment is released once the next one starts at or below `lsn`; the active
            // segment never is.
            while state.segments.len() > 1 && state.segments[1].base <= lsn {
                released.extend(state.segments.pop_front());
            }
            released
        };
        if released.is_empty() {
            return Ok(());
        }
        let io = |e: std::io::Error| StoreError::Io(format!("cannot release a segment: {e}"));
        for segment in released {
            let mut spares = self.spares.files.lock().expect("spares");
            if spares.len() < MAX_SPARES {
                let spare = self
                    .dir
                    .join(format!("spare-{}", uuid::Uuid::new_v4().simple()));
                std::fs::rename(&segment.path, &spare).map_err(io)?;
                spares.push(spare);
            } else {
                std::fs::remove_file(&segment.path).map_err(io)?;
            }
        }
        // A released segment that came back after a crash would be skipped, but one that
        // reappeared after later ones were deleted would look like a gap.
        sync_dir(&self.dir).map_err(io)
    }
}

impl Released {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let io = |e: std::io::Error| {
            StoreError::Io(format!("commit log release point {}: {e}", path.display()))
        };
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            write_zeros(&tmp, 2 * SLOT).map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
            sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let mut best = (0, 0);
        for slot in 0..2 {
            let mut bytes = [0; 32];
            if file.read_exact_at(&mut bytes, slot * SLOT).is_ok()
                && &bytes[0..8] == RELEASED_MAGIC
                && crc32fast::hash(&bytes[0..24]).to_le_bytes() == bytes[24..28]
            {
                let seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
                let lsn = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
                if seq >= best.0 {
                    best = (seq, lsn);
                }
            }
        }
        Ok(Self {
            file,
            seq: best.0,
            lsn: best.1,
        })
    }

    /// Moves the release point forward (never back) and makes it durable.
    fn advance(&mut self, lsn: u64) -> Result<(), StoreError> {
        if lsn <= self.lsn {
            return Ok(());
        }
        let seq = self.seq + 1;
        let mut bytes = [0; 32];
        bytes[0..8].copy_from_slice(RELEASED_MAGIC);
        bytes[8..16].copy_from_slice(&seq.to_le_bytes());
        bytes[16..24].copy_from_slice(&lsn.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..24]);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&bytes, (seq % 2) * SLOT)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| StoreError::Io(format!("cannot record the commit log release: {e}")))?;
        self.seq = seq;
        self.lsn = lsn;
        Ok(())
    }
}

/// The offset and the lsn after the last good record of a segment.
fn scan(bytes: &[u8], base: u64) -> (usize, u64) {
    let mut at = HEADER as usize;
    let mut lsn = base;
    while let Some((_, next)) = record_at(bytes, at, lsn) {
        at = next;
        lsn += 1;
    }
    (at, lsn)
}

/// The record `lsn` at `at`, and the offset after it; `None` at the end of the good records.
fn record_at(bytes: &[u8], at: usize, lsn: u64) -> Option<(&[u8], usize)> {
    let header = bytes.get(at..at + RECORD_HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let at_lsn = u64::from_le_bytes(header[8..16].try_into().ok()?);
    if len == 0 || at_lsn != lsn {
        return None;
    }
    let payload = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len)?;
    (record_crc(lsn, payload) == crc).then_some((payload, at + RECORD_HEADER + len))
}

fn record_crc(lsn: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(&lsn.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn header(base: u64) -> [u8; HEADER as usize] {
    let mut h = [0; HEADER as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

fn check_header(bytes: &[u8], base: u64) -> Result<(), String> {
    let h = bytes
        .get(..HEADER as usize)
        .ok_or("shorter than its header")?;
    if &h[0..8] != MAGIC {
        return Err("not a cadre commit log segment".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!(
            "format version {version}, this cadre reads {VERSION}"
        ));
    }
    if crc32fast::hash(&h[0..24]).to_le_bytes() != h[24..28] {
        return Err("header checksum mismatch".into());
    }
    let at = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    if at != base {
        return Err(format!("header says lsn {at}, name says {base}"));
    }
    Ok(())
}

/// A segment for records from `base`: a spare given a header, or else a new file written full
/// of zeros (appends into holes would allocate blocks: half again as slow).
fn new_segment(
    dir: &Path,
    spares: &Spares,
    bytes: u64,
    base: u64,
) -> Result<(File, PathBuf), StoreError> {
    let io = |e: std::io::Error| StoreError::Io(format!("cannot start a commit log segment: {e}"));
    let path = dir.join(segment_name(base));
    let spare = spares.files.lock().expect("spares").pop();
    let from = match spare {
        Some(spare) => spare,
        None => {
            let tmp = dir.join(format!("spare-{}.tmp", uuid::Uuid::new_v4().simple()));
            write_zeros(&tmp, bytes).map_err(io)?;
            tmp
        }
    };
    // The header is durable before the name is, so a named segment always has its header.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&from)
        .map_err(io)?;
    file.write_all_at(&header(base), 0)
        .and_then(|()| file.sync_data())
        .map_err(io)?;
    std::fs::rename(&from, &path).map_err(io)?;
    sync_dir(dir).map_err(io)?;
    Ok((file, path))
}

fn write_zeros(path: &Path, bytes: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp)?;
    let chunk = vec![0; 1 << 20];
    let mut written = 0;
    while written < bytes {
        let n = chunk.len().min((bytes - written) as usize);
        file.write_all_at(&chunk[..n], written)?;
        written += n as u64;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn segment_name(base: u64) -> String {
    format!("{base:020}.seg")
}

fn corrupt(path: &Path, why: &str) -> StoreError {
    StoreError::Io(format!(
        "corrupt commit log segment {}: {why}",
        path.display()
    ))
}

fn poisoned() -> StoreError {
    StoreError::Io("commit log lock poisoned by a panic".into())
}
