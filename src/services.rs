//! The services every layer above `store` and `search` shares: the store and
//! the search-parameter registry (built once at start from the definitions).

use crate::search::Registry;
use crate::store::Store;
use std::sync::Arc;

#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
}
