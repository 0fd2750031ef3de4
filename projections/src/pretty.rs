//! Pretty JSON written straight from `Serialize`, byte for byte what
//! `serde_json::to_string_pretty(&serde_json::to_value(x)?)` gives, without
//! building the `Value`: object keys sorted as `serde_json::Map` sorts them
//! (byte order, the last of equal keys kept), two-space indentation, and
//! numbers, strings and `null`s written by serde_json itself.
//!
//! The timeline's hot path (issue 4): building a `Value` per entry and its
//! `data` cost more than everything else of a timeline but the store read.
//! Anything this writer does not handle as `to_value` does (map keys that
//! are not strings or integers, 128-bit integers) is an [`Unsupported`]
//! error, and the caller writes the `Value` instead.

use serde::ser::{self, Serialize};

/// What the writer does not write (the caller falls back to `to_value`).
#[derive(Debug)]
pub struct Unsupported(String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not written directly: {}", self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(msg: T) -> Unsupported {
        Unsupported(msg.to_string())
    }
}

fn unsupported<T>(what: &str) -> Result<T, Unsupported> {
    Err(Unsupported(what.to_string()))
}

/// Writes `value` as serde_json's pretty printer writes its `Value`, at
/// nesting `level` (the indentation of its inner lines is `level + 1`
/// steps). On error `out` may hold a partial write: truncate it.
pub fn write<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    level: usize,
    value: &T,
) -> Result<(), Unsupported> {
    value.serialize(Pretty {
        out,
        level,
        only: None,
    })
}

/// Writes only the field `field` of the struct `value` serializes as (the
/// `data` of an adjacently tagged enum), at nesting `level`.
pub fn write_field<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    level: usize,
    value: &T,
    field: &'static str,
) -> Result<(), Unsupported> {
    let start = out.len();
    value.serialize(Pretty {
        out,
        level,
        only: Some(field),
    })?;
    if out.len() == start {
        return unsupported("no such field");
    }
    Ok(())
}

/// Writes `n` in decimal.
pub fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Writes a JSON string, escaped as serde_json escapes it.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_str_content(out, s);
    out.push(b'"');
}

/// Writes what [`write_str`] writes between the quotes: `s` escaped as
/// serde_json escapes it (for a string written in pieces, such as a
/// register mark's summary).
pub fn write_str_content(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes `"`, `\\` and the control characters below 0x20,
    // nothing else: a string without them is written as it is (most of a
    // timeline's strings).
    if !needs_escape(s.as_bytes()) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    write_escaped(out, s.as_bytes());
}

/// Writes `s` (without its quotes) with the escapes serde_json writes: `\"`,
/// `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and `\u00xx` for the other bytes
/// below 0x20 (a register mark's code and summary hold `\`, the DfE code
/// of an afternoon's presence: serde_json's own writer, through its
/// serializer, was a twentieth of a timeline's text). Words of eight bytes
/// without such a byte are passed over whole.
fn write_escaped(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 8);
    // `s[plain..i]` is yet to be written as it is.
    let mut plain = 0;
    let mut i = 0;
    while i < s.len() {
        if let Some(word) = s.get(i..i + 8) {
            if !word_needs_escape(word) {
                i += 8;
                continue;
            }
        }
        let b = s[i];
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&s[plain..i]);
        out.extend_from_slice(short);
        i += 1;
        plain = i;
    }
    out.extend_from_slice(&s[plain..]);
}

/// Whether `bytes` holds a byte serde_json escapes: `"`, `\\` or one
/// below 0x20. Eight bytes at a time (a timeline's strings, narratives
/// most, were a twelfth of its time when tested a byte at a time).
fn needs_escape(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    if words.any(word_needs_escape) {
        return true;
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Whether the eight bytes of `word` hold one serde_json escapes: a word
/// `w` holds a byte below `n` (n <= 128) exactly when `(w - n·ONES) & !w
/// & HIGH` is not zero, and a byte equal to `c` when `w ^ c·ONES` holds a
/// byte below 1.
fn word_needs_escape(word: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH != 0;
    // Callers pass 8 bytes; a zero word (never taken) would only send the
    // string to the byte-by-byte path.
    let w = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
    below(w, 0x20)
        || below(w ^ (ONES * u64::from(b'"')), 1)
        || below(w ^ (ONES * u64::from(b'\\')), 1)
}

/// A newline and the indentation of `level`.
pub fn newline(out: &mut Vec<u8>, level: usize) {
    out.push(b'\n');
    for _ in 0..level {
        out.extend_from_slice(b"  ");
    }
}

struct Pretty<'a> {
    out: &'a mut Vec<u8>,
    level: usize,
    /// Write only this field of the (first) struct.
    only: Option<&'static str>,
}

impl<'a> Pretty<'a> {
    fn scalar<T: Serialize>(self, v: T) -> Result<(), Unsupported> {
        serde_json::to_writer(&mut *self.out, &v).map_err(|e| Unsupported(e.to_string()))
    }

    /// `{"variant": ` opened for a variant of an externally tagged enum.
    fn open_variant(&mut self, variant: &str) {
        self.out.push(b'{');
        newline(self.out, self.level + 1);
        write_str(self.out, variant);
        self.out.extend_from_slice(b": ");
    }
}

fn close_variant(out: &mut Vec<u8>, level: usize) {
    newline(out, level);
    out.push(b'}');
}

/// A key of an object being written.
enum Key {
    Static(&'static str),
    Owned(String),
}

impl Key {
    fn as_str(&self) -> &str {
        match self {
            Key::Static(s) => s,
            Key::Owned(s) => s,
        }
    }
}

/// An object being written: each value is written at the end of `out` as
/// it comes; `end` puts them in key order.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    level: usize,
    start: usize,
    fields: Vec<(Key, usize, usize)>,
    key: Option<Key>,
    /// Close a variant's `{"variant": ...}` after the object.
    variant: bool,
    only: Option<&'static str>,
}

impl<'a> Object<'a> {
    fn new(out: &'a mut Vec<u8>, level: usize, len: Option<usize>, variant: bool) -> Object<'a> {
        let start = out.len();
        Object {
            out,
            level,
            start,
            fields: Vec::with_capacity(len.unwrap_or(8)),
            key: None,
            variant,
            only: None,
        }
    }

    fn value<T: Serialize + ?Sized>(&mut self, key: Key, value: &T) -> Result<(), Unsupported> {
        if let Some(only) = self.only {
            if key.as_str() == only {
                value.serialize(Pretty {
                    out: self.out,
                    level: self.level,
                    only: None,
                })?;
            }
            return Ok(());
        }
        let from = self.out.len();
        value.serialize(Pretty {
            out: self.out,
            level: self.level + 1,
            only: None,
        })?;
        let to = self.out.len();
        self.fields.push((key, from, to));
        Ok(())
    }

    fn finish(mut self) -> Result<(), Unsupported> {
        if self.only.is_some() {
            return Ok(());
        }
        SCRATCH.with(|scratch| {
            let mut written = scratch.borrow_mut();
            written.clear();
            written.extend_from_slice(&self.out[self.start..]);
            self.out.truncate(self.start);
            self.reorder(&written);
        });
        Ok(())
    }

    /// Writes the object's fields (their values in `written`, from
    /// `self.start`) in key order.
    fn reorder(&mut self, written: &[u8]) {
        // Sorted by key; of equal keys the last written wins (a map's
        // insert replaces).
        self.fields
            .sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()).then(a.1.cmp(&b.1)));
        let n = self.fields.len();
        let out = &mut *self.out;
        out.push(b'{');
        let mut first = true;
        for i in 0..n {
            let (key, from, to) = &self.fields[i];
            if i + 1 < n && self.fields[i + 1].0.as_str() == key.as_str() {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            newline(out, self.level + 1);
            write_str(out, key.as_str());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&written[from - self.start..to - self.start]);
        }
        if !first {
            newline(out, self.level);
        }
        out.push(b'}');
        if self.variant {
            close_variant(out, self.level.saturating_sub(1));
        }
    }
}

thread_local! {
    /// The values of the object being put in key order (objects finish one
    /// at a time, innermost first).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An array being written.
struct Array<'a> {
    out: &'a mut Vec<u8>,
    level: usize,
    empty: bool,
    variant: bool,
}

impl<'a> Array<'a> {
    fn new(out: &'a mut Vec<u8>, level: usize, variant: bool) -> Array<'a> {
        out.push(b'[');
        Array {
            out,
            level,
            empty: true,
            variant,
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        newline(self.out, self.level + 1);
        value.serialize(Pretty {
            out: self.out,
            level: self.level + 1,
            only: None,
        })
    }

    fn finish(self) -> Result<(), Unsupported> {
        if !self.empty {
            newline(self.out, self.level);
        }
        self.out.push(b']');
        if self.variant {
            close_variant(self.out, self.level.saturating_sub(1));
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for Pretty<'a> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.out
            .extend_from_slice(if v { b"true" as &[u8] } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        self.scalar(v)
    }
    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        self.scalar(v)
    }
    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        self.scalar(v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        self.scalar(v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        self.scalar(v)
    }
    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        self.scalar(v)
    }
    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        self.scalar(v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        write_u64(self.out, v);
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Result<(), Unsupported> {
        unsupported("i128")
    }
    fn serialize_u128(self, _: u128) -> Result<(), Unsupported> {
        unsupported("u128")
    }
    // `to_value` keeps an f32 as the f64 it converts to.
    fn serialize_f32(self, v: f32) -> Result<(), Unsupported> {
        self.scalar(v as f64)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Unsupported> {
        self.scalar(v)
    }
    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        self.scalar(v)
    }
    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Unsupported> {
        use ser::SerializeSeq;
        let mut a = self.serialize_seq(Some(v.len()))?;
        for b in v {
            a.serialize_element(b)?;
        }
        a.end()
    }
    fn serialize_none(self) -> Result<(), Unsupported> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.open_variant(variant);
        value.serialize(Pretty {
            out: self.out,
            level: self.level + 1,
            only: None,
        })?;
        close_variant(self.out, self.level);
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Array<'a>, Unsupported> {
        Ok(Array::new(self.out, self.level, false))
    }
    fn serialize_tuple(self, len: usize) -> Result<Array<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Array<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Array<'a>, Unsupported> {
        self.open_variant(variant);
        Ok(Array::new(self.out, self.level + 1, true))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Object<'a>, Unsupported> {
        Ok(Object::new(self.out, self.level, len, false))
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Object<'a>, Unsupported> {
        let only = self.only;
        let mut o = Object::new(self.out, self.level, Some(len), false);
        o.only = only;
        Ok(o)
    }
    fn serialize_struct_variant(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Object<'a>, Unsupported> {
        self.open_variant(variant);
        Ok(Object::new(self.out, self.level + 1, Some(len), true))
    }
}

impl ser::SerializeSeq for Array<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeTuple for Array<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Array<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Array<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        self.key = Some(Key::Owned(key.serialize(MapKey)?));
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        match self.key.take() {
            Some(key) => self.value(key, value),
            None => unsupported("a map value without a key"),
        }
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.value(Key::Static(key), value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Object<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.value(Key::Static(key), value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

/// A map key as `to_value` takes it: a string, or an integer as its
/// decimal text; anything else is [`Unsupported`].
struct MapKey;

impl ser::Serializer for MapKey {
    type Ok = String;
    type Error = Unsupported;
    type SerializeSeq = ser::Impossible<String, Unsupported>;
    type SerializeTuple = ser::Impossible<String, Unsupported>;
    type SerializeTupleStruct = ser::Impossible<String, Unsupported>;
    type SerializeTupleVariant = ser::Impossible<String, Unsupported>;
    type SerializeMap = ser::Impossible<String, Unsupported>;
    type SerializeStruct = ser::Impossible<String, Unsupported>;
    type SerializeStructVariant = ser::Impossible<String, Unsupported>;

    fn serialize_str(self, v: &str) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_char(self, v: char) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<String, Unsupported> {
        Ok(variant.to_string())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<String, Unsupported> {
        value.serialize(self)
    }
    fn serialize_i8(self, v: i8) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_bool(self, _: bool) -> Result<String, Unsupported> {
        unsupported("a bool map key")
    }
    fn serialize_i128(self, _: i128) -> Result<String, Unsupported> {
        unsupported("an i128 map key")
    }
    fn serialize_u128(self, _: u128) -> Result<String, Unsupported> {
        unsupported("a u128 map key")
    }
    fn serialize_f32(self, _: f32) -> Result<String, Unsupported> {
        unsupported("a float map key")
    }
    fn serialize_f64(self, _: f64) -> Result<String, Unsupported> {
        unsupported("a float map key")
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<String, Unsupported> {
        unsupported("a bytes map key")
    }
    fn serialize_none(self) -> Result<String, Unsupported> {
        unsupported("a none map key")
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Unsupported> {
        unsupported("an option map key")
    }
    fn serialize_unit(self) -> Result<String, Unsupported> {
        unsupported("a unit map key")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String, Unsupported> {
        unsupported("a unit map key")
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Unsupported> {
        unsupported("a variant map key")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        unsupported("a sequence map key")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        unsupported("a tuple map key")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        unsupported("a tuple map key")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        unsupported("a tuple map key")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        unsupported("a map map key")
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Unsupported> {
        unsupported("a struct map key")
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        unsupported("a struct map key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn same(v: &Value) {
        let mut out = Vec::new();
        write(&mut out, 0, v).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string_pretty(v).unwrap()
        );
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        same(&json!(null));
        same(&json!({}));
        same(&json!([]));
        same(&json!({"b": 1, "a": [1, -2, 3.5, "x\n\"y\u{1}"], "c": {"z": {}, "y": []}}));
        same(
            &json!([[{"k": [true, false, null]}], 18446744073709551615u64, -9223372036854775808i64]),
        );
    }

    #[derive(serde::Serialize)]
    enum E {
        Unit,
        New(u32),
        Tuple(u8, String),
        Struct { z: u8, a: Option<u8> },
    }

    #[derive(serde::Serialize)]
    struct S {
        zeta: Vec<E>,
        alpha: f32,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        middle: std::collections::HashMap<u32, &'static str>,
        data: (char, ()),
    }

    #[test]
    fn structs_and_enums_are_written_as_their_value() {
        let s = S {
            zeta: vec![
                E::Unit,
                E::New(7),
                E::Tuple(1, "t".into()),
                E::Struct { z: 2, a: None },
            ],
            alpha: 0.1,
            skipped: None,
            middle: [(10, "ten"), (2, "two"), (33, "x")].into_iter().collect(),
            data: ('c', ()),
        };
        let mut out = Vec::new();
        write(&mut out, 0, &s).unwrap();
        let want = serde_json::to_string_pretty(&serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let mut out = Vec::new();
        write_field(&mut out, 2, &s, "zeta").unwrap();
        let mut want = Vec::new();
        write(&mut want, 2, &s.zeta).unwrap();
        assert_eq!(out, want);
    }

    /// `needs_escape` agrees with a byte-by-byte test for every byte value
    /// at every place of a word and of the bytes after the last word,
    /// among bytes on either side of the range it tests.
    #[test]
    fn escapes_are_found_at_every_place_of_a_word() {
        let plain = |b: u8| b >= 0x20 && b != b'"' && b != b'\\';
        for filler in [b' ', b'!', b'#', b'[', b']', b'a', 0x7f, 0x80, 0xff] {
            for len in 0..=17 {
                assert!(!needs_escape(&vec![filler; len]));
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut bytes = vec![filler; len];
                        bytes[at] = b;
                        assert_eq!(
                            needs_escape(&bytes),
                            !plain(b),
                            "byte {b:#x} at {at} of {len}"
                        );
                    }
                }
            }
        }
    }

    proptest::proptest! {
        /// `write_str` writes what serde_json writes, escapes or not.
        #[test]
        fn strings_are_written_as_serde_json_writes_them(
            s in proptest::prelude::any::<String>(),
            plain in "[ -~\u{7f}-\u{2fff}]{0,40}",
            special in proptest::sample::select(vec!['"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\0', '\u{1}', '\u{1f}', '\u{10}', ' ', '!', '#', '/', '[', ']', '\u{7f}', '\u{80}', '\u{2028}']),
            at in 0usize..41,
        ) {
            // One byte that is, or is next to, an escaped one, at any
            // place of an eight-byte word or after the last whole word.
            let mut one = plain.chars().collect::<Vec<_>>();
            one.insert(at.min(one.len()), special);
            let one: String = one.into_iter().collect();
            for s in [&s, &plain, &one] {
                let mut out = b"x".to_vec();
                write_str(&mut out, s);
                let mut want = b"x".to_vec();
                serde_json::to_writer(&mut want, s).unwrap();
                proptest::prop_assert_eq!(out, want);
            }
        }
    }
}
