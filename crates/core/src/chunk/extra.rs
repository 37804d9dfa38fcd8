//! Deserializing a struct whose unknown fields go to an `extra` map, without
//! `#[serde(flatten)]`.
//!
//! serde's `flatten` buffers every field of the object into an intermediate `Content` tree
//! (each key an owned string) before the struct sees it: on a stream's hot path that made
//! decoding a 220-byte chunk cost about 8,000 instructions. These impls read the object
//! once, field by field: a known key goes straight into its field, any other into `extra`
//! as a [`Value`]. Same result as the derive with `flatten` (later duplicates win, as in
//! `extra`), a quarter of the work.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};

/// An object key, borrowed from the input when it has no escapes.
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Implements `Deserialize` for `$ty` (which is `Default`): each listed field is read from
/// its JSON key, every other key into `$ty.$extra` (a `serde_json::Map`).
macro_rules! deserialize_with_extra {
    ($ty:ident { $($field:ident: $key:literal),* $(,)? } + $extra:ident) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct FieldsVisitor;
                impl<'de> serde::de::Visitor<'de> for FieldsVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("a ", stringify!($ty), " object"))
                    }

                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$ty, A::Error> {
                        let mut out = $ty::default();
                        $crate::chunk::extra::read_fields(map, |key, map| {
                            match key {
                                $($key => out.$field = map.next_value()?,)*
                                _ => return Ok(false),
                            }
                            Ok(true)
                        }, &mut out.$extra)?;
                        Ok(out)
                    }
                }
                d.deserialize_map(FieldsVisitor)
            }
        }
    };
}
pub(crate) use deserialize_with_extra;

/// Reads every entry of `map`: `known(key, map)` reads the value of a key it knows and
/// says `true`; any other key's value goes into `extra`.
pub(crate) fn read_fields<'de, A: MapAccess<'de>>(
    mut map: A,
    mut known: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), A::Error> {
    while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
        if !known(&key, &mut map)? {
            let v: serde_json::Value = map.next_value()?;
            extra.insert(key.into_owned(), v);
        }
    }
    Ok(())
}
