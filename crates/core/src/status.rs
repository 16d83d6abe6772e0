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
    blocks: std::sync::Mutex<Blocks>,
    /// Held by the one request reserving a block in the store.
    reserving: tokio::sync::Mutex<()>,
    built: std::sync::Mutex<HashMap<u64, Arc<BuiltList>>>,
}

/// The indexes this node has reserved and not handed out: the block in use,
/// and the one reserved ahead of it.
#[derive(Default)]
struct Blocks {
    current: Range<u64>,
    next: Option<Range<u64>>,
}

/// What a request found in [`Blocks`].
enum Take {
    /// An index, and whether this request should reserve the next block.
    Index(u64, bool),
    /// Nothing reserved: this request waits for a block.
    Empty,
}

impl Blocks {
    /// The next index; `block` is the size of a reserved block.
    fn take(&mut self, block: u64) -> Take {
        if self.current.is_empty()
            && let Some(next) = self.next.take()
        {
            self.current = next;
        }
        if self.current.is_empty() {
            return Take::Empty;
        }
        let idx = self.current.start;
        self.current.start += 1;
        // Half the block handed out and none reserved ahead: the next block
        // is reserved now, so that no request waits when this one runs out.
        Take::Index(idx, self.next.is_none() && self.current.end - self.current.start < block / 2)
    }
}

impl Mandate {
    /// The next status index, from this node's reserved block. The next
    /// block is reserved in the store by the request that hands out the
    /// block's middle index, while the other requests go on taking indexes;
    /// a request waits for a reservation only when both blocks are used up
    /// (the node's first token, or a store slower than half a block of
    /// tokens). The indexes of reserved blocks never handed out (a node that
    /// stops) are never used.
    pub(crate) async fn status_index(&self) -> Result<u64, Error> {
        let blocks = || self.status.blocks.lock().map_err(|_| Error::Unavailable("status index lock".into()));
        let block = self.status_block();
        loop {
            let take = blocks()?.take(block);
            match take {
                Take::Index(idx, false) => return Ok(idx),
                Take::Index(idx, true) => {
                    // One request reserves; another that gets here meanwhile
                    // goes on.
                    if let Ok(_reserving) = self.status.reserving.try_lock() {
                        let wanted = blocks()?.next.is_none();
                        if wanted {
                            let block = self.reserve_status_block().await?;
                            blocks()?.next = Some(block);
                        }
                    }
                    return Ok(idx);
                }
                Take::Empty => {
                    let _reserving = self.status.reserving.lock().await;
                    let wanted = {
                        let b = blocks()?;
                        b.current.is_empty() && b.next.is_none()
                    };
                    if wanted {
                        let block = self.reserve_status_block().await?;
                        blocks()?.next = Some(block);
                    }
                }
            }
        }
    }

    /// Indexes reserved at a time (`Config::status_block`, at least 2).
    fn status_block(&self) -> u64 {
        self.config.status_block.max(2)
    }

    /// Reserves a block of status indexes in the store.
    async fn reserve_status_block(&self) -> Result<Range<u64>, Error> {
        let block = self.status_block();
        let mut change = Change::new();
        let reserved = change.push(Mutation::ReserveStatusIndexes { count: block });
        let first = self.store.commit(change).await?.affected(reserved)?;
        let end = first.checked_add(block).ok_or_else(|| Error::Unavailable("status indexes run out".into()))?;
        Ok(first..end)
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

#[cfg(test)]
mod block_tests {
    use super::*;

    fn index(t: Take) -> Option<(u64, bool)> {
        match t {
            Take::Index(i, refill) => Some((i, refill)),
            Take::Empty => None,
        }
    }

    const STATUS_BLOCK: u64 = 256;

    #[test]
    fn nothing_reserved_makes_a_request_wait() {
        assert!(index(Blocks::default().take(STATUS_BLOCK)).is_none());
    }

    #[test]
    fn the_next_block_is_asked_for_at_half_and_taken_when_the_first_runs_out() {
        let mut b = Blocks { current: 0..STATUS_BLOCK, next: None };
        let half = STATUS_BLOCK / 2;
        // Indexes in order; no refill until fewer than half are left.
        for i in 0..half {
            assert_eq!(index(b.take(STATUS_BLOCK)), Some((i, false)), "index {i}");
        }
        // Fewer than half left and none ahead: each request is told to
        // reserve (one of them does, the others find it reserving).
        assert_eq!(index(b.take(STATUS_BLOCK)), Some((half, true)));
        b.next = Some(1000..1000 + STATUS_BLOCK);
        // With a block ahead, nobody is told to reserve.
        for i in half + 1..STATUS_BLOCK {
            assert_eq!(index(b.take(STATUS_BLOCK)), Some((i, false)), "index {i}");
        }
        // The block in use ran out: the next one takes over at once.
        assert_eq!(index(b.take(STATUS_BLOCK)), Some((1000, false)));
        assert!(b.next.is_none());
    }
}
