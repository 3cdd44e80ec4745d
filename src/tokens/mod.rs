//! Token-signing keys and JWT minting. (Skeleton: replaced by the tokens work.)
