//! A `tower_sessions::SessionStore` on top of [`super::Store`], so browser
//! sessions use the same Redis client as everything else. (Skeleton.)
