//! Borrowing building blocks for the wire structs: strings that borrow from the frame when they
//! can, timestamps sent as strings, and a macro that writes a `Deserialize` which counts unknown
//! keys (serde's derive silently drops them) and treats `null` like an absent key.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A string field: borrowed from the frame unless it contained JSON escapes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'a> Text<'a> {
    pub fn borrowed(s: &'a str) -> Self {
        Text(Cow::Borrowed(s))
    }
}

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A venue timestamp: unix milliseconds sent as a decimal string (a bare number is accepted).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub struct Millis(pub u64);

/// Prefix of every custom serde error we raise for a bad number, so decode errors can be typed.
pub(crate) const BAD_NUMBER: &str = "bad number";

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a millisecond timestamp string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::custom(format_args!("{BAD_NUMBER}: timestamp {v:?}")));
                }
                v.parse::<u64>()
                    .map(Millis)
                    .map_err(|_| E::custom(format_args!("{BAD_NUMBER}: timestamp {v:?}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                Ok(Millis(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A map key, borrowed where possible; only compared, never kept.
pub(crate) struct Key<'a>(pub Text<'a>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Text::deserialize(d).map(Key)
    }
}

/// Declares a wire struct and its `Deserialize`. Each field is `req` (absent or null is a
/// "missing field" error) or `opt` (becomes `Option`). Unknown keys are skipped and counted in
/// `unknown_fields`.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident<$lt:lifetime> {
            $( $(#[$fmeta:meta])* $kind:ident $key:literal => $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name<$lt> {
            $( $(#[$fmeta])* pub $field: wire_struct!(@ty $kind $ty), )*
            /// Keys present on the wire that this version does not know (tolerated).
            pub unknown_fields: u16,
            #[doc(hidden)]
            pub _life: std::marker::PhantomData<&$lt ()>,
        }

        impl<$lt> serde::Deserialize<$lt> for $name<$lt> {
            fn deserialize<D: serde::Deserializer<$lt>>(d: D) -> Result<Self, D::Error> {
                struct V<$lt>(std::marker::PhantomData<&$lt ()>);
                impl<$lt> serde::de::Visitor<$lt> for V<$lt> {
                    type Value = $name<$lt>;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " object"))
                    }
                    fn visit_map<A: serde::de::MapAccess<$lt>>(
                        self,
                        mut map: A,
                    ) -> Result<Self::Value, A::Error> {
                        $( let mut $field: Option<$ty> = None; )*
                        let mut unknown_fields: u16 = 0;
                        while let Some(key) = map.next_key::<$crate::protocol::wire::Key<$lt>>()? {
                            match &*key.0 {
                                $( $key => { $field = map.next_value::<Option<$ty>>()?; } )*
                                _ => {
                                    unknown_fields = unknown_fields.saturating_add(1);
                                    map.next_value::<serde::de::IgnoredAny>()?;
                                }
                            }
                        }
                        Ok($name {
                            $( $field: wire_struct!(@take $kind $field $key), )*
                            unknown_fields,
                            _life: std::marker::PhantomData,
                        })
                    }
                }
                d.deserialize_map(V(std::marker::PhantomData))
            }
        }
    };
    (@ty req $ty:ty) => { $ty };
    (@ty opt $ty:ty) => { Option<$ty> };
    (@take req $field:ident $key:literal) => {
        match $field {
            Some(v) => v,
            None => return Err(<A::Error as serde::de::Error>::missing_field($key)),
        }
    };
    (@take opt $field:ident $key:literal) => { $field };
}

pub(crate) use wire_struct;
