//! [`StoreLayer`]: a store that wraps another and changes only some of its
//! operations, writing only those.
//!
//! A wrapper that holds a write until a test lets it go, races a read or
//! counts one kind of call implements [`StoreLayer`]: [`StoreLayer::inner`]
//! and the methods it changes. Every other method forwards to the inner
//! store by default, and one blanket impl makes every layer a [`Store`].
//! So a method added to [`Store`] is added here once (a forwarding default
//! and one line of the blanket impl), not to every such wrapper.
//!
//! Two wrappers implement [`Store`] themselves, on purpose:
//! [`super::metered::MeteredStore`] changes every method (it measures each
//! one over a concrete inner store), and
//! [`crate::secrets::sealed::SealedStore`] is the boundary where secrets
//! are sealed: a method added to [`Store`] that carries values must seal
//! them, so the compiler makes whoever adds one decide there, rather than
//! a default forwarding it unsealed.

use super::{
    exists_by_get, fingerprint_by_get, rate_limit_chain_in_steps, rate_limit_guarded_in_steps, IfChanged, Key, Probe,
    Probed, RateDecision, Read, Rotate, Store, StoreError, StreamEntry, Taken, Write,
};
use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A store that wraps another ([`StoreLayer::inner`]) and changes only the
/// methods it overrides; every method not overridden forwards to the inner
/// store. Each method is the [`Store`] method of the same name, with the
/// same contract; the blanket `impl<L: StoreLayer> Store for L` calls it.
///
/// The methods [`Store`] gives a default body (`exists`, `fingerprint`,
/// `rate_limit_chain`, `rate_limit_guarded`) are the one choice a layer
/// makes beyond its overrides, with [`StoreLayer::FORWARD_DEFAULTED`]:
/// forwarded to the inner store (the default, as [`Store`] asks of
/// wrappers: the backend answers them its own way, `EXISTS` or a script,
/// without transferring the value), or computed by [`Store`]'s default
/// body over this layer (through its own `get`, `fingerprint` and
/// `rate_limit`, overridden or not), for a test wrapper that must see
/// those calls as the reads and counts they are made of. A layer that
/// changes one of them overrides it, as any other method.
///
/// A wrapper names the trait by its path (`impl
/// crate::store::StoreLayer for Held`) rather than importing it: with
/// both traits in scope, a call such as `held.get(key)` would be
/// ambiguous between [`Store::get`] and [`StoreLayer::get`].
#[async_trait]
pub trait StoreLayer: Send + Sync + Sized + 'static {
    /// Whether the methods with a default body in [`Store`] (`exists`,
    /// `fingerprint`, `rate_limit_chain`, `rate_limit_guarded`) forward to
    /// the inner store (`true`, the default) or run [`Store`]'s default
    /// body over this layer (`false`). See the trait's documentation.
    const FORWARD_DEFAULTED: bool = true;

    /// The wrapped store, to which every method not overridden forwards.
    fn inner(&self) -> &dyn Store;

    /// [`Store::get`].
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner().get(key).await
    }

    /// [`Store::exists`]; as [`StoreLayer::FORWARD_DEFAULTED`] says.
    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        if Self::FORWARD_DEFAULTED {
            self.inner().exists(key).await
        } else {
            exists_by_get(self, key).await
        }
    }

    /// [`Store::fingerprint`]; as [`StoreLayer::FORWARD_DEFAULTED`] says.
    async fn fingerprint(&self, key: &Key) -> Result<Option<String>, StoreError> {
        if Self::FORWARD_DEFAULTED {
            self.inner().fingerprint(key).await
        } else {
            fingerprint_by_get(self, key).await
        }
    }

    /// [`Store::get_if_changed`].
    async fn get_if_changed(&self, key: &Key, known: Option<&str>) -> Result<IfChanged, StoreError> {
        self.inner().get_if_changed(key, known).await
    }

    /// [`Store::read_many`].
    async fn read_many(&self, keys: &[(&Key, Read)]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.inner().read_many(keys).await
    }

    /// [`Store::put_then_get`].
    async fn put_then_get(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
        read: &Key,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner().put_then_get(key, value, ttl, read).await
    }

    /// [`Store::put`].
    async fn put(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        self.inner().put(key, value, ttl).await
    }

    /// [`Store::put_if_absent`].
    async fn put_if_absent(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError> {
        self.inner().put_if_absent(key, value, ttl).await
    }

    /// [`Store::compare_and_put`].
    async fn compare_and_put(
        &self,
        key: &Key,
        expected: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.inner().compare_and_put(key, expected, value, ttl).await
    }

    /// [`Store::take`].
    async fn take(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner().take(key).await
    }

    /// [`Store::take_and_mark`].
    async fn take_and_mark(
        &self,
        key: &Key,
        marker_key: &Key,
        marker_value: &[u8],
        marker_ttl: Duration,
    ) -> Result<Taken, StoreError> {
        self.inner()
            .take_and_mark(key, marker_key, marker_value, marker_ttl)
            .await
    }

    /// [`Store::delete`].
    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        self.inner().delete(key).await
    }

    /// [`Store::set_add`].
    async fn set_add(&self, key: &Key, member: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
        self.inner().set_add(key, member, ttl).await
    }

    /// [`Store::set_remove`].
    async fn set_remove(&self, key: &Key, member: &str) -> Result<(), StoreError> {
        self.inner().set_remove(key, member).await
    }

    /// [`Store::set_members`].
    async fn set_members(&self, key: &Key) -> Result<Vec<String>, StoreError> {
        self.inner().set_members(key).await
    }

    /// [`Store::set_sample`].
    async fn set_sample(&self, key: &Key, count: usize) -> Result<Vec<String>, StoreError> {
        self.inner().set_sample(key, count).await
    }

    /// [`Store::incr`].
    async fn incr(&self, key: &Key, ttl: Duration) -> Result<i64, StoreError> {
        self.inner().incr(key, ttl).await
    }

    /// [`Store::list_push_capped`].
    async fn list_push_capped(&self, key: &Key, value: &[u8], max_len: usize) -> Result<(), StoreError> {
        self.inner().list_push_capped(key, value, max_len).await
    }

    /// [`Store::list_range`].
    async fn list_range(&self, key: &Key, start: usize, count: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner().list_range(key, start, count).await
    }

    /// [`Store::stream_add`].
    async fn stream_add(&self, key: &Key, value: &[u8], max_len: usize) -> Result<String, StoreError> {
        self.inner().stream_add(key, value, max_len).await
    }

    /// [`Store::stream_add_classed`].
    async fn stream_add_classed(
        &self,
        key: &Key,
        class: &Key,
        value: &[u8],
        class_max: usize,
        max_len: usize,
    ) -> Result<String, StoreError> {
        self.inner()
            .stream_add_classed(key, class, value, class_max, max_len)
            .await
    }

    /// [`Store::stream_range`].
    async fn stream_range(&self, key: &Key, after: Option<&str>, count: usize) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner().stream_range(key, after, count).await
    }

    /// [`Store::stream_rev_range`].
    async fn stream_rev_range(
        &self,
        key: &Key,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner().stream_rev_range(key, before, count).await
    }

    /// [`Store::stream_len`].
    async fn stream_len(&self, key: &Key) -> Result<usize, StoreError> {
        self.inner().stream_len(key).await
    }

    /// [`Store::stream_group_create`].
    async fn stream_group_create(&self, key: &Key, group: &str) -> Result<(), StoreError> {
        self.inner().stream_group_create(key, group).await
    }

    /// [`Store::stream_group_read`].
    async fn stream_group_read(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner().stream_group_read(key, group, consumer, count).await
    }

    /// [`Store::stream_ack`].
    async fn stream_ack(&self, key: &Key, group: &str, id: &str) -> Result<bool, StoreError> {
        self.inner().stream_ack(key, group, id).await
    }

    /// [`Store::stream_autoclaim`].
    async fn stream_autoclaim(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner()
            .stream_autoclaim(key, group, consumer, min_idle, count)
            .await
    }

    /// [`Store::rate_limit`].
    async fn rate_limit(&self, key: &Key, limit: u64, window: Duration) -> Result<RateDecision, StoreError> {
        self.inner().rate_limit(key, limit, window).await
    }

    /// [`Store::rate_limit_chain`]; as [`StoreLayer::FORWARD_DEFAULTED`] says.
    async fn rate_limit_chain(
        &self,
        first: (&Key, u64),
        second: (&Key, u64),
        window: Duration,
    ) -> Result<(RateDecision, Option<RateDecision>), StoreError> {
        if Self::FORWARD_DEFAULTED {
            self.inner().rate_limit_chain(first, second, window).await
        } else {
            rate_limit_chain_in_steps(self, first, second, window).await
        }
    }

    /// [`Store::rate_limit_guarded`]; as [`StoreLayer::FORWARD_DEFAULTED`]
    /// says.
    async fn rate_limit_guarded(
        &self,
        guard: (&Key, &str),
        limits: &[(&Key, u64)],
        window: Duration,
    ) -> Result<Option<Vec<RateDecision>>, StoreError> {
        if Self::FORWARD_DEFAULTED {
            self.inner().rate_limit_guarded(guard, limits, window).await
        } else {
            rate_limit_guarded_in_steps(self, guard, limits, window).await
        }
    }

    /// [`Store::ping`].
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner().ping().await
    }

    /// [`Store::read_many_if_changed`].
    async fn read_many_if_changed(&self, keys: &[(&Key, Probe<'_>)]) -> Result<Vec<Probed>, StoreError> {
        self.inner().read_many_if_changed(keys).await
    }

    /// [`Store::write_many`].
    async fn write_many(&self, writes: &[Write<'_>]) -> Result<bool, StoreError> {
        self.inner().write_many(writes).await
    }

    /// [`Store::rotate`].
    async fn rotate(&self, r: &Rotate<'_>) -> Result<Taken, StoreError> {
        self.inner().rotate(r).await
    }

    /// [`Store::read_through`].
    async fn read_through(
        &self,
        pointer: &Key,
        reads: &[(&str, Read)],
    ) -> Result<Option<(Vec<u8>, Vec<Option<Vec<u8>>>)>, StoreError> {
        self.inner().read_through(pointer, reads).await
    }
}

/// The future a [`Store`] method returns (as `async_trait` writes it).
type Answer<'f, T> = Pin<Box<dyn Future<Output = T> + Send + 'f>>;

/// One [`Store`] method of the blanket impl: the [`StoreLayer`] method of
/// the same name, whose future is handed on as it is. Written out rather
/// than with `#[async_trait]`, which would box a second future around the
/// layer's on every call. The signature is `async_trait`'s: one named lifetime per
/// reference of the parameters, in order (`$lt`), each outliving the
/// future; the compiler refuses any other.
macro_rules! forward {
    ($name:ident <$($lt:lifetime),*> ($($arg:ident: $ty:ty),*) -> $out:ty) => {
        fn $name<'s, $($lt,)* 'f>(&'s self, $($arg: $ty),*) -> Answer<'f, Result<$out, StoreError>>
        where
            's: 'f,
            $($lt: 'f,)*
            Self: 'f,
        {
            StoreLayer::$name(self, $($arg),*)
        }
    };
}

/// Every layer is a store: each method is the layer's own.
impl<L: StoreLayer> Store for L {
    forward!(get<'k>(key: &'k Key) -> Option<Vec<u8>>);
    forward!(exists<'k>(key: &'k Key) -> bool);
    forward!(fingerprint<'k>(key: &'k Key) -> Option<String>);
    forward!(get_if_changed<'k, 'n>(key: &'k Key, known: Option<&'n str>) -> IfChanged);
    forward!(read_many<'a, 'k>(keys: &'a [(&'k Key, Read)]) -> Vec<Option<Vec<u8>>>);
    forward!(put_then_get<'k, 'v, 'r>(key: &'k Key, value: &'v [u8], ttl: Option<Duration>, read: &'r Key) -> Option<Vec<u8>>);
    forward!(put<'k, 'v>(key: &'k Key, value: &'v [u8], ttl: Option<Duration>) -> ());
    forward!(put_if_absent<'k, 'v>(key: &'k Key, value: &'v [u8], ttl: Option<Duration>) -> bool);
    forward!(compare_and_put<'k, 'e, 'v>(key: &'k Key, expected: &'e [u8], value: &'v [u8], ttl: Option<Duration>) -> bool);
    forward!(take<'k>(key: &'k Key) -> Option<Vec<u8>>);
    forward!(take_and_mark<'k, 'm, 'v>(key: &'k Key, marker_key: &'m Key, marker_value: &'v [u8], marker_ttl: Duration) -> Taken);
    forward!(delete<'k>(key: &'k Key) -> bool);
    forward!(set_add<'k, 'm>(key: &'k Key, member: &'m str, ttl: Option<Duration>) -> ());
    forward!(set_remove<'k, 'm>(key: &'k Key, member: &'m str) -> ());
    forward!(set_members<'k>(key: &'k Key) -> Vec<String>);
    forward!(set_sample<'k>(key: &'k Key, count: usize) -> Vec<String>);
    forward!(incr<'k>(key: &'k Key, ttl: Duration) -> i64);
    forward!(list_push_capped<'k, 'v>(key: &'k Key, value: &'v [u8], max_len: usize) -> ());
    forward!(list_range<'k>(key: &'k Key, start: usize, count: usize) -> Vec<Vec<u8>>);
    forward!(stream_add<'k, 'v>(key: &'k Key, value: &'v [u8], max_len: usize) -> String);
    forward!(stream_add_classed<'k, 'c, 'v>(key: &'k Key, class: &'c Key, value: &'v [u8], class_max: usize, max_len: usize) -> String);
    forward!(stream_range<'k, 'a>(key: &'k Key, after: Option<&'a str>, count: usize) -> Vec<StreamEntry>);
    forward!(stream_rev_range<'k, 'b>(key: &'k Key, before: Option<&'b str>, count: usize) -> Vec<StreamEntry>);
    forward!(stream_len<'k>(key: &'k Key) -> usize);
    forward!(stream_group_create<'k, 'g>(key: &'k Key, group: &'g str) -> ());
    forward!(stream_group_read<'k, 'g, 'c>(key: &'k Key, group: &'g str, consumer: &'c str, count: usize) -> Vec<StreamEntry>);
    forward!(stream_ack<'k, 'g, 'i>(key: &'k Key, group: &'g str, id: &'i str) -> bool);
    forward!(stream_autoclaim<'k, 'g, 'c>(key: &'k Key, group: &'g str, consumer: &'c str, min_idle: Duration, count: usize) -> Vec<StreamEntry>);
    forward!(rate_limit<'k>(key: &'k Key, limit: u64, window: Duration) -> RateDecision);
    forward!(rate_limit_chain<'a, 'b>(first: (&'a Key, u64), second: (&'b Key, u64), window: Duration) -> (RateDecision, Option<RateDecision>));
    forward!(rate_limit_guarded<'g, 'p, 'l, 'k>(guard: (&'g Key, &'p str), limits: &'l [(&'k Key, u64)], window: Duration) -> Option<Vec<RateDecision>>);
    forward!(ping<>() -> ());
    forward!(read_many_if_changed<'a, 'k, 'p>(keys: &'a [(&'k Key, Probe<'p>)]) -> Vec<Probed>);
    forward!(write_many<'a, 'w>(writes: &'a [Write<'w>]) -> bool);
    forward!(rotate<'a, 'r>(r: &'a Rotate<'r>) -> Taken);
    forward!(read_through<'p, 'a, 'n>(pointer: &'p Key, reads: &'a [(&'n str, Read)]) -> Option<(Vec<u8>, Vec<Option<Vec<u8>>>)>);
}
