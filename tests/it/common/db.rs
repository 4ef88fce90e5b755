//! A fresh database per test: an SQLite file in a temp folder, or a PostgreSQL
//! database created for the test and dropped after it (even when it panics).

use sqlx::Connection;

/// Where PostgreSQL tests create their databases; every machine here has it.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestDb {
    pub backend: Backend,
    url: String,
    postgres_name: Option<String>,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn create(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => TestDb {
                backend,
                url: format!("sqlite://{}", dir.path().join("relay.db").display()),
                postgres_name: None,
                dir,
            },
            Backend::Postgres => {
                let name = format!("relay_test_{:016x}", rand::random::<u64>());
                let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
                    .await
                    .expect("PostgreSQL must be reachable at TEST_POSTGRES_URL or 127.0.0.1:5432");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("create the test database");
                let mut url = reqwest::Url::parse(&postgres_admin_url()).expect("admin URL");
                url.set_path(&name);
                TestDb {
                    backend,
                    url: url.to_string(),
                    postgres_name: Some(name),
                    dir,
                }
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A delivery's status as committed, read over a connection of the test's own.
    pub async fn status(&self, event_id: &str) -> Option<String> {
        self.column(event_id, "status").await.flatten()
    }

    /// One text column of a delivery (`None`: no such delivery).
    pub async fn column(&self, event_id: &str, column: &str) -> Option<Option<String>> {
        let sql = format!("SELECT {column} FROM deliveries WHERE event_id = $1");
        match self.backend {
            Backend::Sqlite => {
                use rusqlite::OptionalExtension;
                self.sqlite()
                    .query_row(&sql, [event_id], |row| row.get(0))
                    .optional()
                    .expect("read deliveries")
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.expect("open");
                sqlx::query_scalar(&sql)
                    .bind(event_id)
                    .fetch_optional(&mut conn)
                    .await
                    .expect("read deliveries")
            }
        }
    }

    pub async fn count(&self) -> i64 {
        self.count_rows("deliveries").await
    }

    pub async fn count_rows(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}")).await
    }

    /// The one integer `sql` answers, read over a connection of the test's own.
    pub async fn scalar(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::Sqlite => self
                .sqlite()
                .query_row(sql, [], |row| row.get(0))
                .expect(sql),
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.expect("open");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut conn)
                    .await
                    .expect(sql)
            }
        }
    }

    /// Makes every insert fail, as a full disk or a broken database would.
    pub async fn refuse_inserts(&self) {
        match self.backend {
            Backend::Sqlite => {
                self.execute_sqlite("CREATE TRIGGER refuse BEFORE INSERT ON deliveries BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
                    .await
            }
            Backend::Postgres => {
                self.execute_postgres("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql").await;
                self.execute_postgres("CREATE TRIGGER refuse BEFORE INSERT ON deliveries FOR EACH ROW EXECUTE FUNCTION refuse()").await;
            }
        }
    }

    /// Makes the database refuse the one event `event_id`, as PostgreSQL
    /// refuses a value it cannot store (SQLSTATE 22P05, like a NUL).
    pub async fn refuse_event(&self, event_id: &str) {
        match self.backend {
            Backend::Sqlite => {
                self.execute_sqlite(&format!("CREATE TRIGGER refuse_one BEFORE INSERT ON deliveries WHEN NEW.event_id = '{event_id}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")).await
            }
            Backend::Postgres => {
                self.execute_postgres(&format!("CREATE FUNCTION refuse_one() RETURNS trigger AS $$ BEGIN IF NEW.event_id = '{event_id}' THEN RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22P05'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql")).await;
                self.execute_postgres("CREATE TRIGGER refuse_one BEFORE INSERT ON deliveries FOR EACH ROW EXECUTE FUNCTION refuse_one()").await;
            }
        }
    }

    /// Makes every claim fail: a claim is the one write that counts an
    /// attempt (`attempts = attempts + 1`); inserts and outcomes do not.
    pub async fn refuse_claims(&self) {
        match self.backend {
            Backend::Sqlite => {
                self.execute_sqlite("CREATE TRIGGER refuse_claims BEFORE UPDATE OF attempts ON deliveries BEGIN SELECT RAISE(ABORT, 'claims refused by the test'); END")
                    .await
            }
            Backend::Postgres => {
                self.execute_postgres("CREATE FUNCTION refuse_claims() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'claims refused by the test'; END $$ LANGUAGE plpgsql").await;
                self.execute_postgres("CREATE TRIGGER refuse_claims BEFORE UPDATE OF attempts ON deliveries FOR EACH ROW EXECUTE FUNCTION refuse_claims()").await;
            }
        }
    }

    pub async fn allow_inserts(&self) {
        match self.backend {
            Backend::Sqlite => self.execute_sqlite("DROP TRIGGER refuse").await,
            Backend::Postgres => {
                self.execute_postgres("DROP TRIGGER refuse ON deliveries")
                    .await
            }
        }
    }

    /// Runs SQL of the test's own on the relay's database.
    pub async fn execute(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => self.execute_sqlite(sql).await,
            Backend::Postgres => self.execute_postgres(sql).await,
        }
    }

    /// `n` delivered sandbox and production events, received over the last
    /// six days, written straight into the relay's database (as history is).
    pub async fn fill_delivered(&self, n: u64) {
        // Six days, inside the default retention (a week), so that the
        // relay's purge does not take them away while a test reads them.
        let span_ms: u64 = 6 * 24 * 3600 * 1000;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let select = format!(
            "SELECT CASE WHEN x % 4 = 0 THEN 'production' ELSE 'sandbox' END, 'evt_hist_' || x, \
             'payment_approved', 'tok_acc_hist_' || x || '_0123456789', 'pay_hist_' || x, \
             CAST('{{}}' AS {blob}), CAST('content-type:application/json' AS {blob}), 'delivered', 1, 0, \
             {start} + CAST(x AS BIGINT) * {step}, {start} + CAST(x AS BIGINT) * {step}, 200, 1",
            blob = if self.backend == Backend::Sqlite { "BLOB" } else { "BYTEA" },
            start = now_ms - span_ms,
            step = span_ms / n.max(1),
        );
        let insert = "INSERT INTO deliveries (environment, event_id, event_type, accelerate_token, \
             payment_id, body, headers, status, attempts, next_attempt_at, received_at, delivered_at, \
             last_status, format)";
        match self.backend {
            Backend::Sqlite => {
                self.execute_sqlite(&format!(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) \
                 {insert} {select} FROM c"
            ))
                .await
            }
            Backend::Postgres => {
                self.execute_postgres(&format!(
                    "{insert} {select} FROM generate_series(1, {n}) AS x"
                ))
                .await;
                self.execute_postgres("ANALYZE deliveries").await;
            }
        }
    }

    /// A delivery's stored headers, as the store wrote them.
    pub async fn headers(&self, event_id: &str) -> Vec<u8> {
        let sql = "SELECT headers FROM deliveries WHERE event_id = $1";
        match self.backend {
            Backend::Sqlite => self
                .sqlite()
                .query_row(sql, [event_id], |row| row.get(0))
                .expect("read headers"),
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.expect("open");
                sqlx::query_scalar(sql)
                    .bind(event_id)
                    .fetch_one(&mut conn)
                    .await
                    .expect("read headers")
            }
        }
    }

    /// One stored value of a delivery (`body`, `headers`), as the store wrote it.
    pub async fn blob(&self, event_id: &str, column: &str) -> Vec<u8> {
        let sql = format!("SELECT {column} FROM deliveries WHERE event_id = $1");
        match self.backend {
            Backend::Sqlite => self
                .sqlite()
                .query_row(&sql, [event_id], |row| row.get(0))
                .expect("read a stored value"),
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.expect("open");
                sqlx::query_scalar(&sql)
                    .bind(event_id)
                    .fetch_one(&mut conn)
                    .await
                    .expect("read a stored value")
            }
        }
    }

    /// Overwrites one stored value, as someone with access to the database could.
    pub async fn set_blob(&self, event_id: &str, column: &str, value: &[u8]) {
        let sql = format!("UPDATE deliveries SET {column} = $1 WHERE event_id = $2");
        match self.backend {
            Backend::Sqlite => {
                self.sqlite()
                    .execute(&sql, rusqlite::params![value, event_id])
                    .expect("write a stored value");
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.expect("open");
                sqlx::query(&sql)
                    .bind(value)
                    .bind(event_id)
                    .execute(&mut conn)
                    .await
                    .expect("write a stored value");
            }
        }
    }

    /// What the store leaves at rest: every byte of the SQLite files, or a
    /// `pg_dump` of the PostgreSQL database.
    pub fn at_rest_bytes(&self) -> Vec<u8> {
        match self.backend {
            Backend::Sqlite => self.sqlite_files(),
            Backend::Postgres => {
                let out = std::process::Command::new("pg_dump")
                    .arg(format!("--dbname={}", self.url))
                    .output()
                    .expect("pg_dump (PostgreSQL's client) must be installed");
                assert!(
                    out.status.success(),
                    "pg_dump: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            }
        }
    }

    /// Every byte of the SQLite files (none for PostgreSQL).
    pub fn sqlite_files(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let path = self.dir.path().join(format!("relay.db{suffix}"));
            all.extend(std::fs::read(path).unwrap_or_default());
        }
        all
    }

    async fn execute_sqlite(&self, sql: &str) {
        self.sqlite().execute_batch(sql).expect(sql);
    }

    /// A connection of the test's own to the relay's SQLite file.
    fn sqlite(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self.dir.path().join("relay.db"))
            .expect("open the relay's database");
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .expect("busy timeout");
        conn
    }

    async fn execute_postgres(&self, sql: &str) {
        let mut conn = sqlx::PgConnection::connect(&self.url).await.expect("open");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop runs outside any async context we can block on: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}
