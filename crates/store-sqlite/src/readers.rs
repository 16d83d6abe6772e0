//! Reads: a small pool of read-only connections, used on Tokio's blocking
//! pool, never on the async workers.

use std::path::PathBuf;
use std::sync::Mutex;

use mandate_core::store::StoreError;
use rusqlite::{Connection, OpenFlags};

use crate::{configure, unavailable};

/// Read connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// The read-only connections, kept between reads.
pub(crate) struct Readers {
    pub(crate) path: PathBuf,
    pub(crate) idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Runs `f` on an idle connection (or a new one), then keeps it.
    pub(crate) fn run<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let pooled = self.idle.lock().map_err(|_| unavailable("reader pool poisoned"))?.pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(unavailable)?;
                configure(&c).map_err(unavailable)?;
                c
            }
        };
        let result = f(&conn).map_err(|e| match e {
            rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
                StoreError::Corrupt(e.to_string())
            }
            other => unavailable(other),
        });
        if let Ok(mut pool) = self.idle.lock()
            && pool.len() < MAX_IDLE_READERS
        {
            pool.push(conn);
        }
        result
    }
}

pub(crate) type Mapped<T> = rusqlite::Result<Result<T, StoreError>>;
