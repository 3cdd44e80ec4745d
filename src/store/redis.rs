//! The Redis store, for production and any number of replicas. (Skeleton.)
