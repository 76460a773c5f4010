//! The store's tests run on both backends: SQLite in a temporary folder,
//! PostgreSQL in a private cluster of the test's own
//! (`cyphonic_cloud::pg_cluster`). Without PostgreSQL's binaries the
//! PostgreSQL half fails and says what to install.

use cyphonic_cloud::pg_cluster::PgCluster;
use cyphonic_cloud::{Database, Store};

/// A fresh, empty database; gone when dropped.
pub struct TestDb {
    pub database: Database,
    _tmp: Option<tempfile::TempDir>,
    _pg: Option<PgCluster>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let tmp = tempfile::tempdir().unwrap();
        TestDb {
            database: Database::Sqlite(tmp.path().join("cloud.db")),
            _tmp: Some(tmp),
            _pg: None,
        }
    }

    pub fn postgres() -> TestDb {
        let pg = PgCluster::start().unwrap_or_else(|e| panic!("{e}"));
        let url = pg.create_database("cloud").unwrap();
        TestDb {
            database: Database::Postgres(url),
            _tmp: None,
            _pg: Some(pg),
        }
    }

    /// Opens the database (again): each call is another instance, with a
    /// pool of its own, as another process would have.
    pub async fn open(&self) -> Store {
        Store::open(&self.database).await.unwrap()
    }
}

/// For each `case` (an `async fn case(db: &TestDb)` beside it), a module
/// `case` with the tests `sqlite` and `postgres`, so `case::postgres`
/// names one.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case(&$crate::backends::TestDb::sqlite()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$case(&$crate::backends::TestDb::postgres()).await
            }
        }
    )*};
}
