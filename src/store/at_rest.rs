//! Bodies and headers sealed at rest (`seal`): the sweep that seals what
//! is stored in clear and moves rows of an older key to the first one, and
//! the start-up check that every sealed row has its key configured.

use futures_util::future::join_all;

use super::backend::Backend;
use super::rows::{self, Param, FORMAT, FORMAT_SEALED};
use super::{ForwardHeaders, HeldKey, Store, StoreError};
use crate::event::Environment;
use crate::seal::{self, KeyId, StoreKeys};
use crate::verify::Credentials;

/// Rows read per statement of a sweep.
const PAGE: i64 = 500;

/// Clear rows (formats 0 and 1) through `deliveries_clear`, `$1` after this id, `$2` how many.
const CLEAR_PAGE: &str = "SELECT id, environment, event_id, body, headers FROM deliveries \
     WHERE sealed_by IS NULL AND format <= 1 AND id > $1 ORDER BY id LIMIT $2";
/// Rows sealed with key `$3`, through `deliveries_sealed_by`.
const KEY_PAGE: &str = "SELECT id, environment, event_id, body, headers FROM deliveries \
     WHERE sealed_by = $3 AND id > $1 ORDER BY id LIMIT $2";
/// Only while the headers are what was read (clear or sealed, they change
/// with every rewrite): a concurrent sweep or conversion wins.
static RESEAL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE deliveries SET body = $3, headers = $4, format = {FORMAT_SEALED}, sealed_by = $5 \
         WHERE id = $1 AND headers = $2 AND format <= {FORMAT}"
    )
});
/// The next key id in use after `$1`: one index seek per key, however many rows.
const NEXT_KEY: &str = "SELECT id, sealed_by FROM deliveries WHERE sealed_by > $1 \
     ORDER BY sealed_by LIMIT 1";
const COUNT_CLEAR: &str = "SELECT COUNT(*) FROM deliveries WHERE sealed_by IS NULL";
const COUNT_KEY: &str = "SELECT COUNT(*) FROM deliveries WHERE sealed_by = $1";

/// A stored row as a sweep reads it.
#[derive(sqlx::FromRow)]
pub struct StoredRow {
    pub(super) id: i64,
    pub(super) environment: String,
    pub(super) event_id: String,
    pub(super) body: Vec<u8>,
    pub(super) headers: Vec<u8>,
}

/// What one sealing round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sealing {
    /// Rows sealed (from clear) or moved to the first key in this round.
    pub sealed: u64,
    /// Rows not yet sealed with the first key, after the round.
    pub left: u64,
    /// Of those, clear rows holding an Authorization value of an
    /// environment with no keys configured now: not sealed until it has.
    pub waiting_for_credentials: u64,
}

impl Store {
    /// Seals at most `budget` rows: clear rows first (an Authorization value
    /// still held in clear becomes a key reference on the way, as
    /// `convert_old_formats` does), then rows sealed with a key after the
    /// first. Resumable by construction: each row leaves its index when it
    /// is rewritten, so a round (or a restart) starts from what is left.
    pub async fn seal_round<'c>(
        &self,
        keys: &StoreKeys,
        credentials: impl Fn(Environment) -> Option<&'c Credentials>,
        budget: u64,
    ) -> Result<Sealing, StoreError> {
        let mut round = Sealing::default();
        let mut spent = 0;
        let new_key = keys.current().to_string();
        let sources: Vec<Option<String>> = std::iter::once(None)
            .chain(keys.ids().skip(1).map(|id| Some(id.to_string())))
            .collect();
        'sources: for source in &sources {
            let mut after = 0;
            loop {
                if spent >= budget {
                    break 'sources;
                }
                let page: Vec<StoredRow> = match source {
                    None => {
                        let params = vec![Param::Int(after), Param::Int(PAGE)];
                        self.engine
                            .operator_rows(CLEAR_PAGE.to_owned(), params)
                            .await?
                    }
                    Some(key) => {
                        let params = vec![
                            Param::Int(after),
                            Param::Int(PAGE),
                            Param::Text(key.clone()),
                        ];
                        self.engine
                            .operator_rows(KEY_PAGE.to_owned(), params)
                            .await?
                    }
                };
                let Some(last) = page.last() else { break };
                after = last.id;
                let mut rewrites = Vec::with_capacity(page.len());
                for row in page {
                    let environment = rows::stored_environment(row.id, &row.environment)?;
                    let clear = match source {
                        None => match clear_headers(&row, environment, &credentials)? {
                            Some(headers) => (row.body.clone(), headers),
                            None => {
                                round.waiting_for_credentials += 1;
                                continue;
                            }
                        },
                        Some(_) => {
                            match seal::open_row(
                                Some(keys),
                                environment,
                                &row.event_id,
                                &row.body,
                                &row.headers,
                            ) {
                                Ok(opened) => opened,
                                Err(e) => {
                                    // Left as it is: the claim refuses it
                                    // and says why, never a guess.
                                    tracing::error!(delivery_id = row.id, error = %e,
                                        "a stored delivery did not open during the store key rotation");
                                    continue;
                                }
                            }
                        }
                    };
                    let (body, headers) =
                        keys.seal_row(environment, &row.event_id, &clear.0, &clear.1);
                    let params = vec![
                        Param::Int(row.id),
                        Param::Blob(row.headers),
                        Param::Blob(body),
                        Param::Blob(headers),
                        Param::Text(new_key.clone()),
                    ];
                    rewrites.push(params);
                }
                spent += rewrites.len() as u64;
                // Sent together: the SQLite writer commits them as one batch.
                for done in join_all(
                    rewrites
                        .into_iter()
                        .map(|p| self.engine.exec(RESEAL.as_str(), p)),
                )
                .await
                {
                    round.sealed += done?;
                }
            }
        }
        round.left = if spent >= budget {
            self.rows_to_seal(&sources).await?
        } else {
            round.waiting_for_credentials
        };
        if round.sealed > 0 {
            self.engine.scrub_wal();
        }
        Ok(round)
    }

    /// Rows in clear or sealed with a key other than the first.
    async fn rows_to_seal(&self, sources: &[Option<String>]) -> Result<u64, StoreError> {
        let mut left = 0;
        for source in sources {
            let (sql, params) = match source {
                None => (COUNT_CLEAR, vec![]),
                Some(key) => (COUNT_KEY, vec![Param::Text(key.clone())]),
            };
            left += self.count(sql, params).await?;
        }
        Ok(left)
    }

    /// The key ids sealed rows name that `keys` does not hold, with how
    /// many rows each: the relay refuses to start on them.
    pub async fn keys_missing(
        &self,
        keys: Option<&StoreKeys>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut missing = Vec::new();
        let mut after = String::new();
        loop {
            let next: Vec<(i64, String)> = self
                .engine
                .operator_rows(NEXT_KEY.to_owned(), vec![Param::Text(after.clone())])
                .await?;
            let Some((_, key)) = next.into_iter().next() else {
                break;
            };
            let known = keys.is_some_and(|keys| {
                KeyId::parse(&key).is_some_and(|id| keys.ids().any(|k| k == id))
            });
            if !known {
                let rows = self
                    .count(COUNT_KEY, vec![Param::Text(key.clone())])
                    .await?;
                missing.push((key.clone(), rows));
            }
            after = key;
        }
        Ok(missing)
    }
}

/// A clear row's headers as they are sealed: with an Authorization value
/// still held in clear (a release before 0005 wrote those) replaced by a
/// reference to the configured key. `None` when that needs keys the row's
/// environment does not have now.
fn clear_headers<'c>(
    row: &StoredRow,
    environment: Environment,
    credentials: &impl Fn(Environment) -> Option<&'c Credentials>,
) -> Result<Option<Vec<u8>>, StoreError> {
    match ForwardHeaders::replace_held_key(&row.headers, credentials(environment)) {
        Some(HeldKey::Nothing) => Ok(Some(row.headers.clone())),
        Some(HeldKey::Replaced(headers)) => Ok(Some(headers)),
        Some(HeldKey::NoKeys) => Ok(None),
        None => Err(StoreError::Corrupt(row.id, "headers".to_owned())),
    }
}
