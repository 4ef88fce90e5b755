//! Console sessions as the server keeps them: a sign-in is a row, and
//! signing out or revoking ends it for every replica of the database.
//!
//! Only hashes of the secrets are stored (the cookie's secret, the admin
//! token signed in with): a copy of the database signs nobody in.

use super::backend::Backend;
use super::rows::{Param, SessionRow};
use super::{Store, StoreError, Timestamp};

/// Most sessions one listing shows (a fleet's operators, not thousands).
pub const LIST_LIMIT: i64 = 500;

const COLUMNS: &str =
    "SELECT id, secret_hash, token_hash, peer, created_at, expires_at, ended_at, ended_by \
     FROM console_sessions";
const INSERT: &str = "INSERT INTO console_sessions \
     (id, secret_hash, token_hash, peer, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)";
/// `$2` now: an expired or already ended session is not ended again.
const END: &str = "UPDATE console_sessions SET ended_at = $2, ended_by = $3 \
     WHERE id = $1 AND ended_at IS NULL AND expires_at > $2";
const PURGE: &str = "DELETE FROM console_sessions WHERE expires_at < $1";

/// A console sign-in as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    pub id: String,
    pub secret_hash: String,
    pub token_hash: String,
    pub peer: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub ended_by: Option<String>,
}

impl StoredSession {
    /// Neither ended nor expired at `now`.
    pub fn active(&self, now: Timestamp) -> bool {
        self.ended_at.is_none() && self.expires_at > now
    }
}

impl From<SessionRow> for StoredSession {
    fn from(row: SessionRow) -> Self {
        Self {
            id: row.id,
            secret_hash: row.secret_hash,
            token_hash: row.token_hash,
            peer: row.peer,
            created_at: Timestamp(row.created_at),
            expires_at: Timestamp(row.expires_at),
            ended_at: row.ended_at.map(Timestamp),
            ended_by: row.ended_by,
        }
    }
}

/// Why a session ended before it expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedBy {
    SignedOut,
    Revoked,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::SignedOut => "signed-out",
            EndedBy::Revoked => "revoked",
        }
    }
}

impl Store {
    /// Records a sign-in; `Ok` once committed.
    pub async fn create_session(&self, session: &StoredSession) -> Result<(), StoreError> {
        let params = vec![
            Param::Text(session.id.clone()),
            Param::Text(session.secret_hash.clone()),
            Param::Text(session.token_hash.clone()),
            Param::from(session.peer.clone()),
            Param::Int(session.created_at.0),
            Param::Int(session.expires_at.0),
        ];
        self.engine.exec(INSERT, params).await.map(|_| ())
    }

    pub async fn session(&self, id: &str) -> Result<Option<StoredSession>, StoreError> {
        let sql = format!("{COLUMNS} WHERE id = $1");
        let found = self.sessions_where(sql, vec![Param::Text(id.to_owned())]);
        Ok(found.await?.into_iter().next())
    }

    /// Sessions neither ended nor expired, newest first.
    pub async fn active_sessions(&self, now: Timestamp) -> Result<Vec<StoredSession>, StoreError> {
        let sql = format!(
            "{COLUMNS} WHERE ended_at IS NULL AND expires_at > $1 \
             ORDER BY created_at DESC LIMIT {LIST_LIMIT}"
        );
        self.sessions_where(sql, vec![Param::Int(now.0)]).await
    }

    /// Ends a session; `false` when there is no such active session.
    pub async fn end_session(
        &self,
        id: &str,
        now: Timestamp,
        by: EndedBy,
    ) -> Result<bool, StoreError> {
        let params = vec![
            Param::Text(id.to_owned()),
            Param::Int(now.0),
            Param::Text(by.as_str().to_owned()),
        ];
        Ok(self.engine.exec(END, params).await? > 0)
    }

    /// Forgets sessions that expired before `before` (ended ones included).
    pub async fn purge_sessions(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.engine.exec(PURGE, vec![Param::Int(before.0)]).await
    }

    async fn sessions_where(
        &self,
        sql: String,
        params: Vec<Param>,
    ) -> Result<Vec<StoredSession>, StoreError> {
        let rows = self.engine.operator_rows::<SessionRow>(sql, params).await?;
        Ok(rows.into_iter().map(StoredSession::from).collect())
    }
}
