//! The maps the layers look up on every call (buckets, breaker entries, latency keys,
//! learned orders), hashed with `foldhash` instead of SipHash: a fifth of what the rate
//! limiter added per call was hashing its keys. Seeded per map at random, as std's are, so
//! keys a caller chooses (model ids, tenants) cannot be aimed at one bucket of the table.
//!
//! ```
//! use llm_layers_core::hash::HashMap;
//! let mut m: HashMap<&str, u32> = HashMap::default();
//! m.insert("openai/gpt-4o", 1);
//! assert_eq!(m.get("openai/gpt-4o"), Some(&1));
//! ```

/// A `HashMap` with a fast, randomly seeded hasher; make one with `HashMap::default()`.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with a fast, randomly seeded hasher; make one with `HashSet::default()`.
pub type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
