//! The result and error types of the store's sled transactions, in one
//! place: every transactional view (`UpsertTx` in `write.rs`, `DigestTx`,
//! `OutboxTx`, the hot overlay's `TxTree`) returns a [`TxResult`] and aborts
//! with [`abort`], so those files share these two names without importing
//! each other.

use sled::transaction::ConflictableTransactionError;

use super::StoreError;

/// What a step inside a store transaction returns: a conflict makes sled
/// retry the transaction, an abort ends it with the [`StoreError`].
pub(crate) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Ends a transaction with `e` (no retry).
pub(crate) fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}
