//! One kind's objects in one namespace, kept by kube's reflector: the local copy the
//! rollout watch and the switch observer read after every watch event, with a stream that
//! says when the copy changed and when its first full list is in.

use std::fmt::Debug;
use std::hash::Hash;

use ::kube::Resource;
use ::kube::api::Api;
use ::kube::runtime::reflector::{self, ObjectRef, Store};
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::{WatchStreamExt, reflector as reflect};
use futures::{StreamExt, stream::BoxStream};
use serde::de::DeserializeOwned;

/// What a followed watch reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The store changed; `listed` when this change completed a full list (the first
    /// one, or a re-list after the watch lost its place).
    Applied { listed: bool },
    /// The watch failed (it backs off and starts again); the store keeps what it had.
    Error(String),
}

/// A reflector store of `api`'s objects, and the stream that fills it: poll the stream,
/// read the store after each [`Change`].
pub fn follow<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, BoxStream<'static, Change>)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let changes = reflect(writer, watcher::watcher(api, config).default_backoff())
        .map(|result| match result {
            Ok(Event::InitDone) => Change::Applied { listed: true },
            Ok(_) => Change::Applied { listed: false },
            Err(e) => Change::Error(e.to_string()),
        })
        .boxed();
    (reader, changes)
}

/// The object `name` in `namespace` of a store, if it has it.
pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<std::sync::Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    store.get(&ObjectRef::new(name).within(namespace))
}
