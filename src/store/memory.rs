//! The in-memory store: the embedded default for one process. (Skeleton.)
