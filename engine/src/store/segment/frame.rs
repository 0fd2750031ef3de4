//! The segment backend's frame: one stored event in a segment file, and the
//! sequential reader recovery, `verify` and the raw scan share.
//!
//! Byte for byte (docs/storage.md, "The segment backend"):
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | `len`: `u32` LE, the number of bytes after `crc` |
//! | 4 | `crc`: `u32` LE, CRC-32 (IEEE, `crc32fast`) of those `len` bytes |
//! | 1 | flags: bit 0 = last frame of its commit group; other bits zero |
//! | 8 | position, `u64` LE |
//! | 16 | stream id |
//! | 8 | version, `u64` LE |
//! | 16 | event id |
//! | len − 49 | value: the stored event exactly as sled stores it (body `||` hash) |
//!
//! Never panics on any bytes: every length is checked before it is used,
//! and a length larger than [`MAX_FRAME`] is damage, never an allocation.

use std::fs::File;
use std::os::unix::fs::FileExt;

use uuid::Uuid;

use crate::envelope::{StreamId, HASH_LEN};

/// `len` and `crc`.
pub const PREFIX_LEN: usize = 8;
/// flags, position, stream, version, event id.
pub const META_LEN: usize = 1 + 8 + 16 + 8 + 16;
/// Bytes a frame adds to its value.
pub const FRAME_OVERHEAD: usize = PREFIX_LEN + META_LEN;
/// Smallest `len`: the metadata and a value of at least one body byte and
/// the hash.
pub const MIN_LEN: usize = META_LEN + HASH_LEN + 1;
/// Largest `len`. A payload is at most 64 KiB (`MAX_PAYLOAD_BYTES`); the
/// rest of an envelope is small. Appends whose frame would be larger are
/// refused; on disk a larger `len` is damage.
pub const MAX_FRAME: usize = 1024 * 1024;

/// The lengths a whole frame can have, prefix included.
pub const FRAME_LENS: std::ops::RangeInclusive<usize> =
    PREFIX_LEN + MIN_LEN..=PREFIX_LEN + MAX_FRAME;

/// Flag bit: this frame ends its commit group (one write + one fdatasync).
pub const GROUP_END: u8 = 1;

/// The fixed fields of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMeta {
    pub group_end: bool,
    pub position: u64,
    pub stream: StreamId,
    pub version: u64,
    pub event_id: Uuid,
}

/// Why bytes are not a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the prefix or `len` needs (the file ends).
    Short,
    /// `len` outside `MIN_LEN..=MAX_FRAME`.
    Length(u32),
    /// The checksum does not match.
    Checksum,
    /// Unknown flag bits.
    Flags(u8),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Short => f.write_str("the file ends inside the frame"),
            FrameError::Length(n) => write!(
                f,
                "frame length {n} is outside {MIN_LEN}..={MAX_FRAME} bytes"
            ),
            FrameError::Checksum => f.write_str("frame checksum does not match its bytes"),
            FrameError::Flags(b) => write!(f, "unknown frame flags {b:#04x}"),
        }
    }
}

/// Appends one frame to `out`; returns its length in bytes.
pub fn encode_frame(out: &mut Vec<u8>, meta: &FrameMeta, value: &[u8]) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; PREFIX_LEN]);
    out.push(if meta.group_end { GROUP_END } else { 0 });
    out.extend_from_slice(&meta.position.to_le_bytes());
    out.extend_from_slice(meta.stream.0.as_bytes());
    out.extend_from_slice(&meta.version.to_le_bytes());
    out.extend_from_slice(meta.event_id.as_bytes());
    out.extend_from_slice(value);
    seal_prefix(&mut out[start..]);
    out.len() - start
}

/// Writes `len` and `crc` of a frame whose other bytes are in place.
fn seal_prefix(frame: &mut [u8]) {
    let len = (frame.len() - PREFIX_LEN) as u32;
    let crc = crc32fast::hash(&frame[PREFIX_LEN..]);
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// The little-endian `u64` that `b` starts with.
pub(super) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The little-endian `u32` that `b` starts with.
pub(super) fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn uuid_at(b: &[u8]) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Uuid::from_bytes(a)
}

/// The `len` field of a frame starting at `bytes`, if the prefix is there.
pub fn frame_len(bytes: &[u8]) -> Option<u32> {
    let b: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// Decodes the frame at the start of `bytes` (which may hold more after it).
/// Returns its fields, its value and its total length.
pub fn decode_frame(bytes: &[u8]) -> Result<(FrameMeta, &[u8], usize), FrameError> {
    let len = frame_len(bytes).ok_or(FrameError::Short)?;
    let n = len as usize;
    if !(MIN_LEN..=MAX_FRAME).contains(&n) {
        return Err(FrameError::Length(len));
    }
    let total = PREFIX_LEN + n;
    let Some(frame) = bytes.get(..total) else {
        return Err(FrameError::Short);
    };
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let body = &frame[PREFIX_LEN..];
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Checksum);
    }
    let flags = body[0];
    if flags & !GROUP_END != 0 {
        return Err(FrameError::Flags(flags));
    }
    let meta = FrameMeta {
        group_end: flags & GROUP_END != 0,
        position: le_u64(&body[1..9]),
        stream: StreamId(uuid_at(&body[9..25])),
        version: le_u64(&body[25..33]),
        event_id: uuid_at(&body[33..49]),
    };
    Ok((meta, &body[META_LEN..], total))
}

/// Cheap test of whether a valid frame with a position in `positions`
/// could start at `bytes` (prefix checks before the checksum).
pub fn plausible_frame(bytes: &[u8], positions: std::ops::Range<u64>) -> bool {
    let Some(len) = frame_len(bytes) else {
        return false;
    };
    let n = len as usize;
    if !(MIN_LEN..=MAX_FRAME).contains(&n) || bytes.len() < PREFIX_LEN + n {
        return false;
    }
    if bytes[PREFIX_LEN] & !GROUP_END != 0 {
        return false;
    }
    let position = le_u64(&bytes[PREFIX_LEN + 1..]);
    positions.contains(&position) && decode_frame(bytes).is_ok()
}

/// Reads a file front to back in large windows, handing out byte ranges
/// at given offsets. Memory: one window (a few MiB), whatever the file.
pub struct SeqReader<'a> {
    file: &'a File,
    file_len: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

/// Bytes read at once.
const WINDOW: usize = 8 * 1024 * 1024;

impl<'a> SeqReader<'a> {
    pub fn new(file: &'a File, file_len: u64) -> SeqReader<'a> {
        SeqReader {
            file,
            file_len,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The bytes from `offset`: at least `need` of them unless the file
    /// ends first (then all that is left).
    pub fn at(&mut self, offset: u64, need: usize) -> std::io::Result<&[u8]> {
        let end = self.buf_start + self.buf.len() as u64;
        let want_end = (offset + need as u64).min(self.file_len);
        if offset < self.buf_start || want_end > end {
            let len = (self.file_len.saturating_sub(offset)).min(need.max(WINDOW) as u64) as usize;
            self.buf.resize(len, 0);
            self.file.read_exact_at(&mut self.buf, offset)?;
            self.buf_start = offset;
        }
        let from = (offset - self.buf_start) as usize;
        Ok(&self.buf[from.min(self.buf.len())..])
    }
}
