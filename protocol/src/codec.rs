//! Primitive encodings: integers, bools, strings, byte strings, options, lists and fixed arrays.
//!
//! Every frame body is a fixed sequence of fields, each written with one of the primitives here (the
//! spec's "Primitive encodings" chapter is this file in prose). [`Reader`] checks each field's limit
//! *before* it looks at, copies or allocates the field's bytes, so a hostile length costs nothing.
//! Nothing here recurses on input: the nesting depth of every type is fixed by the type itself.
//!
//! Types implement [`Wire`]; the [`wire_struct!`](crate::wire_struct) macro writes that impl for a
//! struct from a list of fields, each naming the primitive that encodes it and that primitive's limit.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// A value with a wire encoding.
pub trait Wire: Sized {
    /// Appends the value's encoding. On error the writer may hold a partial encoding; the frame
    /// encoder rolls the buffer back, so callers of [`crate::Frame::encode`] never see one.
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError>;

    /// Reads one value. `field` names the field being read, for errors.
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError>;
}

/// Reads fields from one frame body, front to back.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over a whole frame body.
    pub fn new(body: &'a [u8]) -> Self {
        Reader { rest: body }
    }

    /// The bytes not read yet. After the last known field these are a newer version's extension
    /// fields, which a reader ignores.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    /// Reads a value of a type that implements [`Wire`].
    pub fn wire<T: Wire>(&mut self, field: &'static str) -> Result<T, DecodeError> {
        T::decode(self, field)
    }

    /// Reads a `u32` byte length and checks it against `max` before reading the bytes.
    fn length_prefixed(&mut self, field: &'static str, max: u32) -> Result<&'a [u8], DecodeError> {
        let len = u32::decode(self, field)?;
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len as usize, field)
    }

    /// Reads a string of at most `max_bytes` bytes of UTF-8.
    pub fn str(&mut self, field: &'static str, max_bytes: u32) -> Result<String, DecodeError> {
        let raw = self.length_prefixed(field, max_bytes)?;
        match core::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::InvalidUtf8 { field }),
        }
    }

    /// Reads a string of at most `max_chars` characters (Unicode scalar values). Its byte length
    /// may be at most four times that, which is checked first.
    pub fn text(&mut self, field: &'static str, max_chars: u32) -> Result<String, DecodeError> {
        let len = u32::decode(self, field)?;
        if u64::from(len) > u64::from(max_chars) * 4 {
            return Err(DecodeError::TooManyChars {
                field,
                max: max_chars,
            });
        }
        let raw = self.take(len as usize, field)?;
        let s = core::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 { field })?;
        if s.chars().count() > max_chars as usize {
            return Err(DecodeError::TooManyChars {
                field,
                max: max_chars,
            });
        }
        Ok(s.to_owned())
    }

    /// Reads a byte string of at most `max` bytes without copying it.
    pub fn bytes_borrowed(
        &mut self,
        field: &'static str,
        max: u32,
    ) -> Result<&'a [u8], DecodeError> {
        self.length_prefixed(field, max)
    }

    /// Reads a byte string of at most `max` bytes.
    pub fn bytes(&mut self, field: &'static str, max: u32) -> Result<Vec<u8>, DecodeError> {
        Ok(self.length_prefixed(field, max)?.to_vec())
    }

    /// Reads a list of at most `max` items.
    ///
    /// Every item of every list type takes at least one byte, so a count above the bytes left is
    /// rejected as truncated before anything is allocated.
    pub fn list<T: Wire>(&mut self, field: &'static str, max: u32) -> Result<Vec<T>, DecodeError> {
        let count = u32::decode(self, field)?;
        if count > max {
            return Err(DecodeError::TooManyItems { field, count, max });
        }
        if count as usize > self.rest.len() {
            return Err(DecodeError::Truncated { field });
        }
        let mut items = Vec::with_capacity(count as usize);
        for _ in 0..count {
            items.push(T::decode(self, field)?);
        }
        Ok(items)
    }

    /// Reads a flag appended to a version-1 body: `false` when the body ends before it, so a
    /// writer that leaves it out (it writes it only when true) reads back the same.
    pub fn tail_flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        if self.rest.is_empty() {
            return Ok(false);
        }
        bool::decode(self, field)
    }

    /// Reads an option that a revision appended as the last field of a version-1 body (spec §3.7,
    /// §4.1): absent when the body ends before it, as every body an older sender writes does.
    /// Otherwise it reads as any option, so a body that ends inside it is truncated.
    pub fn appended_opt<T: Wire>(&mut self, field: &'static str) -> Result<Option<T>, DecodeError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        self.opt(field)
    }

    /// Reads an option: a tag byte (0 absent, 1 present) and, when present, the value.
    pub fn opt<T: Wire>(&mut self, field: &'static str) -> Result<Option<T>, DecodeError> {
        match u8::decode(self, field)? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(self, field)?)),
            value => Err(DecodeError::InvalidOptionTag { field, value }),
        }
    }
}

/// Appends fields to a frame being encoded.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut BytesMut,
}

impl<'a> Writer<'a> {
    /// A writer appending to `buf`.
    pub fn new(buf: &'a mut BytesMut) -> Self {
        Writer { buf }
    }

    /// Writes a value of a type that implements [`Wire`].
    pub fn wire<T: Wire>(&mut self, _field: &'static str, value: &T) -> Result<(), EncodeError> {
        value.encode(self)
    }

    fn length(&mut self, field: &'static str, len: usize, max: u32) -> Result<(), EncodeError> {
        if len > max as usize {
            return Err(EncodeError::FieldTooLong { field, len, max });
        }
        // `max` is a u32, so the check above makes the cast lossless.
        self.buf.put_u32(len as u32);
        Ok(())
    }

    /// Writes a string of at most `max_bytes` bytes.
    pub fn str(
        &mut self,
        field: &'static str,
        value: &str,
        max_bytes: u32,
    ) -> Result<(), EncodeError> {
        self.bytes(field, value.as_bytes(), max_bytes)
    }

    /// Writes a string of at most `max_chars` characters.
    pub fn text(
        &mut self,
        field: &'static str,
        value: &str,
        max_chars: u32,
    ) -> Result<(), EncodeError> {
        let chars = value.chars().count();
        if chars > max_chars as usize {
            return Err(EncodeError::FieldTooLong {
                field,
                len: chars,
                max: max_chars,
            });
        }
        self.bytes(field, value.as_bytes(), u32::MAX)
    }

    /// Writes a byte string of at most `max` bytes.
    pub fn bytes(
        &mut self,
        field: &'static str,
        value: &[u8],
        max: u32,
    ) -> Result<(), EncodeError> {
        self.length(field, value.len(), max)?;
        self.buf.put_slice(value);
        Ok(())
    }

    /// Writes a byte string of at most `max` bytes that `write` produces in place: the length is
    /// reserved, then patched once the bytes are written, so nothing is encoded twice. On an
    /// error nothing of it stays in the buffer.
    pub fn length_prefixed(
        &mut self,
        field: &'static str,
        max: u32,
        write: impl FnOnce(&mut Writer<'_>) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let start = self.buf.len();
        self.buf.put_u32(0);
        let result = write(&mut Writer::new(self.buf)).and_then(|()| {
            let len = self.buf.len() - start - 4;
            if len > max as usize {
                return Err(EncodeError::FieldTooLong { field, len, max });
            }
            Ok(len)
        });
        match result {
            Ok(len) => {
                // `len <= max`, a u32, so the cast is lossless.
                self.buf[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
                Ok(())
            }
            Err(e) => {
                self.buf.truncate(start);
                Err(e)
            }
        }
    }

    /// Writes a list of at most `max` items.
    pub fn list<T: Wire>(
        &mut self,
        field: &'static str,
        items: &[T],
        max: u32,
    ) -> Result<(), EncodeError> {
        self.length(field, items.len(), max)?;
        items.iter().try_for_each(|item| item.encode(self))
    }

    /// Writes a flag appended to a version-1 body: the byte `01` when true, nothing when false
    /// (so the frames of conversations without the feature stay byte for byte the same).
    pub fn tail_flag(&mut self, _field: &'static str, value: &bool) -> Result<(), EncodeError> {
        if *value {
            self.buf.put_u8(1);
        }
        Ok(())
    }

    /// Writes an option that a revision appended as the last field of a version-1 body (spec
    /// §3.7, §4.1): nothing at all when absent, so a frame that does not use it is byte for byte
    /// the older revision's; the tag and the value when present. Only the last field of a body
    /// may be written this way: an absent option with fields after it needs its tag.
    pub fn appended_opt<T: Wire>(
        &mut self,
        field: &'static str,
        value: &Option<T>,
    ) -> Result<(), EncodeError> {
        match value {
            None => Ok(()),
            Some(_) => self.opt(field, value),
        }
    }

    /// Writes an option.
    pub fn opt<T: Wire>(
        &mut self,
        _field: &'static str,
        value: &Option<T>,
    ) -> Result<(), EncodeError> {
        match value {
            None => {
                self.buf.put_u8(0);
                Ok(())
            }
            Some(v) => {
                self.buf.put_u8(1);
                v.encode(self)
            }
        }
    }

    /// Writes raw bytes with no prefix (fixed-size fields and frame headers).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.put_slice(bytes);
    }
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
                w.raw(&self.to_be_bytes());
                Ok(())
            }
            fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
                Ok(<$t>::from_be_bytes(r.array(field)?))
            }
        }
    )*};
}

wire_int!(u8, u16, u32, u64);

impl Wire for bool {
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        u8::from(*self).encode(w)
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        match u8::decode(r, field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::InvalidBool { field, value }),
        }
    }
}

/// A boxed value is encoded as the value: boxes only keep large, rare fields (a device's keys in
/// `PublishKeys`) from making every frame value as large as they are.
impl<T: Wire> Wire for Box<T> {
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        T::encode(self, w)
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        T::decode(r, field).map(Box::new)
    }
}

impl<const N: usize> Wire for [u8; N] {
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.raw(self);
        Ok(())
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.array(field)
    }
}

/// Whether a flag is false, for serde's `skip_serializing_if` on appended flags.
pub fn is_false(value: &bool) -> bool {
    !*value
}

/// Defines a struct whose wire encoding is its fields in order, each with its primitive and limit.
///
/// ```ignore
/// wire_struct! {
///     /// Doc.
///     pub struct Login {
///         /// Doc.
///         pub username: String => str(USERNAME_BYTES_MAX),
///         pub device_id: u32 => wire,
///     }
/// }
/// ```
#[macro_export]
#[doc(hidden)]
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty => $codec:ident $( ( $($arg:expr),* ) )? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Default)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $crate::codec::Wire for $name {
            #[allow(unused_variables)]
            fn encode(&self, w: &mut $crate::codec::Writer<'_>) -> Result<(), $crate::EncodeError> {
                $( w.$codec(stringify!($field), &self.$field $( $(, $arg)* )? )?; )*
                Ok(())
            }
            #[allow(unused_variables)]
            fn decode(
                r: &mut $crate::codec::Reader<'_>,
                _field: &'static str,
            ) -> Result<Self, $crate::DecodeError> {
                Ok(Self { $( $field: r.$codec(stringify!($field) $( $(, $arg)* )? )?, )* })
            }
        }
    };
}

/// Defines a `u8`-coded enum; a byte with no variant decodes as [`DecodeError::InvalidEnum`].
#[macro_export]
#[doc(hidden)]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )*
        }

        impl $name {
            /// The variant with this wire value, if any.
            pub fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $( $value => Some($name::$variant), )*
                    _ => None,
                }
            }
        }

        impl $crate::codec::Wire for $name {
            fn encode(&self, w: &mut $crate::codec::Writer<'_>) -> Result<(), $crate::EncodeError> {
                (*self as u8).encode(w)
            }
            fn decode(
                r: &mut $crate::codec::Reader<'_>,
                field: &'static str,
            ) -> Result<Self, $crate::DecodeError> {
                let value = u8::decode(r, field)?;
                $name::from_u8(value).ok_or($crate::DecodeError::InvalidEnum { field, value })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves limits are checked before availability: a huge declared length fails as TooLong even
    // though the bytes are absent, so nothing is ever sized from a hostile length.
    #[test]
    fn string_limit_checked_before_bytes() {
        let body = [0xff, 0xff, 0xff, 0xff];
        let err = Reader::new(&body).str("name", 32).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLong {
                field: "name",
                len: u32::MAX,
                max: 32
            }
        );
    }

    // Proves a list count larger than the remaining bytes is refused without allocating.
    #[test]
    fn list_count_above_remaining_is_truncated() {
        let body = [0, 0, 0, 10, 1, 2];
        let err = Reader::new(&body).list::<u8>("members", 100).unwrap_err();
        assert_eq!(err, DecodeError::Truncated { field: "members" });
    }

    // Proves text limits count characters, not bytes: 3 four-byte characters pass a 3-char limit.
    #[test]
    fn text_counts_characters() {
        let mut buf = BytesMut::new();
        Writer::new(&mut buf).text("body", "😀😀😀", 3).unwrap();
        assert_eq!(Reader::new(&buf).text("body", 3).unwrap(), "😀😀😀");
        let err = Reader::new(&buf).text("body", 2).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooManyChars {
                field: "body",
                max: 2
            }
        );
    }

    // Proves an appended option is absent when the body ends before it, written only when
    // present, and still strict about its tag and its bytes when they are there.
    #[test]
    fn appended_options() {
        assert_eq!(Reader::new(&[]).appended_opt::<u64>("after").unwrap(), None);
        assert_eq!(
            Reader::new(&[0]).appended_opt::<u64>("after").unwrap(),
            None
        );
        let mut buf = BytesMut::new();
        Writer::new(&mut buf)
            .appended_opt::<u64>("after", &None)
            .unwrap();
        assert!(buf.is_empty());
        Writer::new(&mut buf)
            .appended_opt("after", &Some(7u64))
            .unwrap();
        assert_eq!(&buf[..], &[1, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(
            Reader::new(&buf).appended_opt::<u64>("after").unwrap(),
            Some(7)
        );
        assert_eq!(
            Reader::new(&buf[..4])
                .appended_opt::<u64>("after")
                .unwrap_err(),
            DecodeError::Truncated { field: "after" }
        );
        assert_eq!(
            Reader::new(&[2]).appended_opt::<u64>("after").unwrap_err(),
            DecodeError::InvalidOptionTag {
                field: "after",
                value: 2
            }
        );
    }

    // Proves the bool and option tags accept only 0 and 1.
    #[test]
    fn tags_are_strict() {
        assert_eq!(
            Reader::new(&[2]).wire::<bool>("f").unwrap_err(),
            DecodeError::InvalidBool {
                field: "f",
                value: 2
            }
        );
        assert_eq!(
            Reader::new(&[7]).opt::<u8>("f").unwrap_err(),
            DecodeError::InvalidOptionTag {
                field: "f",
                value: 7
            }
        );
    }
}
