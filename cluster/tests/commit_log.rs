//! The commit log backends on real files: the same behaviour from the segment files and from a
//! SQLite store, then what only segments have (torn appends, recycling, a missing segment) and
//! the move from the older `log.db`.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cadre_actors::controller::{CommitLog, StoreLog};
use cadre_actors::store::StoreError;
use cadre_cluster::store::{LOG_DIR, SegmentLog, SqliteStore, open_embedded};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "cadre-commit-log-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Small segments, so a few dozen records span several.
const SMALL: u64 = 64 << 10;

fn segments(dir: &Path) -> SegmentLog {
    SegmentLog::open_with(dir, SMALL, None).expect("open the segment log")
}

/// Record `lsn`'s content: its lsn repeated, of a length that varies (up to a third of a
/// small segment).
fn record(lsn: u64) -> Vec<u8> {
    let len = 1 + (lsn as usize * 7919) % (SMALL as usize / 3);
    (0..len).map(|i| (lsn as usize + i) as u8).collect()
}

fn replayed(log: &dyn CommitLog) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    log.replay(&mut |lsn, r| {
        out.push((lsn, r.to_vec()));
        Ok(())
    })
    .unwrap();
    out
}

fn append_through(log: &dyn CommitLog, last: u64) {
    let first = log.next_lsn().unwrap();
    for lsn in first..=last {
        log.append(lsn, &record(lsn)).unwrap();
    }
}

/// Replay returns whole records, in order, exactly from `from` (nothing released comes back)
/// to the last one appended.
fn check_replay(log: &dyn CommitLog, from: u64, last: u64) {
    let records = replayed(log);
    let first = records.first().map_or(last + 1, |r| r.0);
    assert_eq!(
        first,
        from.min(last + 1),
        "replay starts at the release point"
    );
    for (i, (lsn, content)) in records.iter().enumerate() {
        assert_eq!(*lsn, first + i as u64, "lsns are contiguous");
        assert_eq!(*content, record(*lsn), "record {lsn} intact");
    }
    if let Some((end, _)) = records.last() {
        assert_eq!(*end, last, "ends at the last append");
    } else {
        assert!(from > last, "records from {from} on are missing");
    }
}

/// The contract every backend keeps.
fn conforms(open: &dyn Fn() -> Box<dyn CommitLog>) {
    let log = open();
    assert_eq!(log.next_lsn().unwrap(), 1);
    append_through(log.as_ref(), 40);
    check_replay(log.as_ref(), 1, 40);
    assert_eq!(log.next_lsn().unwrap(), 41);
    drop(log);

    let log = open();
    assert_eq!(log.next_lsn().unwrap(), 41, "numbering survives a reopen");
    check_replay(log.as_ref(), 1, 40);
    log.release(30).unwrap();
    check_replay(log.as_ref(), 30, 40);
    append_through(log.as_ref(), 60);
    drop(log);

    let log = open();
    check_replay(log.as_ref(), 30, 60);
    log.release(61).unwrap();
    check_replay(log.as_ref(), 61, 60);
    drop(log);
    // With nothing left to replay, numbering may start over; appends work either way.
    let log = open();
    let next = log.next_lsn().unwrap();
    append_through(log.as_ref(), next + 1);
    check_replay(log.as_ref(), next, next + 1);
}

#[test]
fn segment_files_conform() {
    let dir = Dir::new("conform");
    let path = dir.0.clone();
    conforms(&move || Box::new(segments(&path)));
}

#[test]
fn a_sqlite_store_conforms() {
    let dir = Dir::new("conform-sqlite");
    let path = dir.0.clone();
    conforms(&move || Box::new(StoreLog(Arc::new(SqliteStore::open(&path).unwrap()))));
}

#[test]
fn appends_out_of_order_or_too_large_are_refused_and_write_nothing() {
    let dir = Dir::new("refuse");
    let log = segments(&dir.0);
    append_through(&log, 3);
    assert!(matches!(log.append(7, b"x"), Err(StoreError::Io(m)) if m.contains("expected 4")));
    let huge = vec![1; cadre_actors::controller::MAX_RECORD_BYTES + 1];
    assert!(matches!(
        log.append(4, &huge),
        Err(StoreError::TooLarge { .. })
    ));
    check_replay(&log, 1, 3);
    assert_eq!(log.next_lsn().unwrap(), 4);
}

/// The offset after the last record of a fresh log's only segment.
fn end_of(records: std::ops::RangeInclusive<u64>) -> u64 {
    32 + records.map(|l| 16 + record(l).len() as u64).sum::<u64>()
}

fn raw_record(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(&lsn.to_le_bytes());
    h.update(payload);
    let mut out = Vec::new();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn a_torn_append_is_discarded_and_nothing_after_it_can_pass_for_a_record() {
    let dir = Dir::new("torn");
    let log = SegmentLog::open_with(&dir.0, 1 << 20, None).unwrap();
    append_through(&log, 5);
    drop(log);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.0.join(format!("{:020}.seg", 1)))
        .unwrap();
    // A crash mid-append: record 6's header landed but not all of its payload, while a later
    // page of it holds bytes that form a valid record 7 right where the next record 6 (5
    // bytes) will end.
    let end = end_of(1..=5);
    let mut torn = raw_record(6, &[9; 100]);
    torn.truncate(40);
    file.write_all_at(&torn, end).unwrap();
    file.write_all_at(&raw_record(7, b"forged"), end + 16 + 5)
        .unwrap();
    drop(file);

    let log = SegmentLog::open_with(&dir.0, 1 << 20, None).unwrap();
    assert_eq!(log.next_lsn().unwrap(), 6, "the torn record is not there");
    check_replay(&log, 1, 5);
    log.append(6, b"sixth").unwrap();
    drop(log);
    let log = SegmentLog::open_with(&dir.0, 1 << 20, None).unwrap();
    let records = replayed(&log);
    assert_eq!(
        records.len(),
        6,
        "nothing forged after record 6: {:?}",
        records.last()
    );
    assert_eq!(records[5], (6, b"sixth".to_vec()));
}

#[test]
fn released_segments_are_recycled() {
    let dir = Dir::new("recycle");
    let log = segments(&dir.0);
    append_through(&log, 200);
    let before = log.segments();
    assert!(before > 10, "200 records span many segments ({before})");
    log.release(201).unwrap();
    assert_eq!(log.segments(), 1, "only the active segment is kept");
    let files: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let spares = files.iter().filter(|f| f.starts_with("spare-")).count();
    assert!(
        spares <= 3,
        "a few spares are kept, the rest deleted: {files:?}"
    );
    // Recycled segments are used again; what they held before never reappears.
    append_through(&log, 260);
    drop(log);
    let log = segments(&dir.0);
    check_replay(&log, 201, 260);
}

#[test]
fn a_missing_segment_is_an_error_naming_it() {
    let dir = Dir::new("missing");
    let log = segments(&dir.0);
    append_through(&log, 60);
    drop(log);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    names.sort();
    assert!(names.len() >= 3);
    std::fs::remove_file(&names[1]).unwrap();
    let Err(StoreError::Io(message)) = SegmentLog::open_with(&dir.0, SMALL, None) else {
        panic!("a gap must not open");
    };
    let next = names[2].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        message.contains(&next) && message.contains("previous segment ends"),
        "{message}"
    );
}

#[test]
fn a_commit_log_in_an_older_log_db_is_moved_into_segments() {
    let old = Dir::new("legacy-src");
    {
        let legacy = StoreLog(Arc::new(SqliteStore::open(&old.0).unwrap()));
        legacy.append(1, b"first").unwrap();
        legacy.append(2, b"second").unwrap();
    }
    let data = Dir::new("legacy");
    for suffix in ["", "-wal"] {
        let from = old.0.join(format!("cadre.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, data.0.join(format!("log.db{suffix}"))).unwrap();
        }
    }
    let (_store, log) = open_embedded(&data.0).unwrap();
    let records: Vec<Vec<u8>> = replayed(&log).into_iter().map(|r| r.1).collect();
    assert_eq!(records, [b"first".to_vec(), b"second".to_vec()]);
    assert!(!data.0.join("log.db").exists(), "log.db is gone");
    assert!(data.0.join(LOG_DIR).is_dir());
}

#[test]
fn a_torn_release_point_falls_back_to_the_one_before() {
    let dir = Dir::new("released");
    let log = segments(&dir.0);
    append_through(&log, 30);
    log.release(10).unwrap();
    log.release(20).unwrap();
    drop(log);
    // The second write went to slot 0 (bytes 0..32); tear it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.0.join("released"))
        .unwrap();
    file.write_all_at(&[0xff; 4], 20).unwrap();
    drop(file);
    // Back to 10, as far as segments still hold records (release 20 recycled some).
    let log = segments(&dir.0);
    let records = replayed(&log);
    let first = records[0].0;
    assert!((10..20).contains(&first), "replay starts at {first}");
    check_replay(&log, first, 30);
    log.release(25).unwrap();
    drop(log);
    check_replay(&segments(&dir.0), 25, 30);
}
