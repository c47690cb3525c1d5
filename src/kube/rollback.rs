//! rollback (in progress).
