//! Token Status List (draft-ietf-oauth-status-list): every token gets an
//! index that is never handed out twice, and `GET /statuslists/{n}` serves
//! list `n` signed, rebuilt from the store as soon as the store epoch says
//! anything was revoked (so within one request on every node).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use mandate_jose::statuslist::{self, EncodedList, StatusBits, StatusListClaims};
use mandate_model::claims::{Status, StatusListRef};

use crate::Error;
use crate::service::Mandate;
use crate::store::{Change, Mutation};

/// Indexes a node reserves at a time: one store write per this many tokens.
const STATUS_BLOCK: u64 = 256;

/// A signed list, as served.
#[derive(Debug, Clone)]
pub struct BuiltList {
    /// The `statuslist+jwt`.
    pub token: String,
    /// Seconds a relying party may cache it.
    pub ttl: i64,
    epoch: u64,
    built_at: i64,
}

#[derive(Default)]
pub(crate) struct StatusLists {
    reserved: tokio::sync::Mutex<Range<u64>>,
    built: std::sync::Mutex<HashMap<u64, Arc<BuiltList>>>,
}

impl Mandate {
    /// The next status index: from this node's reserved block, reserving a
    /// new block in the store when it is used up.
    pub(crate) async fn status_index(&self) -> Result<u64, Error> {
        let mut block = self.status.reserved.lock().await;
        if block.is_empty() {
            let mut change = Change::new();
            let reserved = change.push(Mutation::ReserveStatusIndexes { count: STATUS_BLOCK });
            let first = self.store.commit(change).await?.affected(reserved)?;
            *block = first..first + STATUS_BLOCK;
        }
        let idx = block.start;
        block.start += 1;
        Ok(idx)
    }

    /// The `status` claim for a token at global index `idx`.
    pub(crate) fn status_claim(&self, idx: u64) -> Status {
        let size = self.config.status_list_size.max(8);
        Status { status_list: StatusListRef { idx: idx % size, uri: self.config.status_list_uri(idx / size) } }
    }

    /// Status list `n`, signed; `None` when no index of it was handed out.
    /// Served from this node's copy while the store epoch is unchanged and
    /// the copy is younger than the list's `ttl`.
    pub async fn status_list(&self, n: u64) -> Result<Option<Arc<BuiltList>>, Error> {
        let epoch = self.store.epoch().await?;
        let now = self.clock.now().unix_timestamp();
        let ttl = self.config.status_list_ttl.max(1);
        if let Ok(built) = self.status.built.lock()
            && let Some(b) = built.get(&n)
            && b.epoch == epoch
            && now - b.built_at < ttl
        {
            return Ok(Some(b.clone()));
        }
        let size = self.config.status_list_size.max(8);
        let Some(from) = n.checked_mul(size) else { return Ok(None) };
        if from >= self.store.status_indexes_reserved().await? {
            return Ok(None);
        }
        let revoked = self.store.revoked_status_indexes(from, from + size).await?;
        let token = self.sign_status_list(n, size, &revoked, now)?;
        let built = Arc::new(BuiltList { token, ttl, epoch, built_at: now });
        if let Ok(mut lists) = self.status.built.lock() {
            lists.insert(n, built.clone());
        }
        Ok(Some(built))
    }

    /// Builds and signs list `n` of `size` statuses with the given global
    /// indexes revoked.
    pub fn sign_status_list(&self, n: u64, size: u64, revoked: &[u64], now: i64) -> Result<String, Error> {
        let from = n.saturating_mul(size);
        let len = usize::try_from(size).map_err(|_| Error::Unavailable("status list too large".into()))?;
        let bits = StatusBits::with_invalid(
            len,
            revoked.iter().filter_map(|i| i.checked_sub(from).and_then(|i| usize::try_from(i).ok())),
        );
        let ttl = self.config.status_list_ttl.max(1);
        let claims = StatusListClaims {
            sub: self.config.status_list_uri(n),
            iat: now,
            exp: now + (2 * ttl).max(3600),
            ttl,
            status_list: EncodedList {
                bits: 1,
                lst: bits.encode().map_err(|e| Error::Unavailable(format!("status list {n}: {e}")))?,
            },
        };
        statuslist::mint(&self.ring().active, &claims).map_err(|e| Error::Unavailable(e.to_string()))
    }
}
