//! The store conformance suite against the embedded SQLite backend, on real files with fsync.

use std::path::PathBuf;
use std::sync::Arc;

use cadre_actors::store::Store;
use cadre_actors::store::conformance::{Backend, run_all};
use cadre_cluster::store::SqliteStore;

struct Sqlite {
    root: PathBuf,
    n: usize,
}

impl Sqlite {
    fn dir(&self) -> PathBuf {
        self.root.join(self.n.to_string())
    }
}

impl Backend for Sqlite {
    fn fresh(&mut self) -> Arc<dyn Store> {
        self.n += 1;
        Arc::new(SqliteStore::open(&self.dir()).expect("open store"))
    }

    fn reopen(&mut self) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(&self.dir()).expect("reopen store"))
    }
}

#[test]
fn sqlite_store_conforms() {
    let root = std::env::temp_dir().join(format!("cadre-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    run_all(&mut Sqlite {
        root: root.clone(),
        n: 0,
    });
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_second_open_of_a_held_data_dir_is_refused_with_the_holder() {
    let dir = std::env::temp_dir().join(format!("cadre-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = SqliteStore::open(&dir).unwrap();
    let err = SqliteStore::open(&dir)
        .err()
        .expect("second open refused")
        .to_string();
    assert!(err.contains("is in use by another cadre node"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    drop(first);
    SqliteStore::open(&dir).expect("free again once the first is gone");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The same suite against FoundationDB (`scripts/test-foundationdb.sh` runs it, with
/// `$CADRE_TEST_FDB_CLUSTER_FILE` naming its cluster): each fresh store is a directory of its
/// own.
#[cfg(feature = "foundationdb")]
#[test]
fn foundationdb_store_conforms() {
    use cadre_cluster::store::FdbStore;
    struct Fdb {
        file: PathBuf,
        n: usize,
    }
    impl Fdb {
        fn name(&self) -> String {
            format!("conformance-{}-{}", std::process::id(), self.n)
        }
    }
    impl Backend for Fdb {
        fn fresh(&mut self) -> Arc<dyn Store> {
            self.n += 1;
            Arc::new(FdbStore::open(&self.file, "cadre-test", &self.name()).expect("open"))
        }
        fn reopen(&mut self) -> Arc<dyn Store> {
            Arc::new(FdbStore::open(&self.file, "cadre-test", &self.name()).expect("reopen"))
        }
    }
    let Some(file) = std::env::var_os("CADRE_TEST_FDB_CLUSTER_FILE") else {
        panic!("set CADRE_TEST_FDB_CLUSTER_FILE (scripts/test-foundationdb.sh does)");
    };
    run_all(&mut Fdb {
        file: file.into(),
        n: 0,
    });
}
