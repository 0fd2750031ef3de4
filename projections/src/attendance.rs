//! Attendance and persistent absence, per pupil per academic year.
//!
//! Every register mark counts by its code's category
//! ([`casebook_engine::codes`]): present and approved education off site
//! count as attending; authorised and unauthorised absences as missed; a
//! "not possible" mark counts for nothing. Possible sessions are the
//! attending plus the missed ones. A pupil is **persistently absent** when
//! they missed 10 % or more of their possible sessions, **severely absent**
//! at 50 % or more (DfE definitions; DOMAIN.md). The academic year is the
//! year of the mark's `date`, 1 September to 31 August.
//!
//! Marks are the one fact a school holds in bulk (two a day per pupil), so
//! this view keeps them packed: per pupil, the marks in `(date, session)`
//! order as varints, about 5 bytes a mark ([`MarkList`]), each the session
//! key, the mark's position in the log and the code as an index into
//! [`casebook_engine::codes::ATTENDANCE_CODES`] (a code casebook does not
//! know is kept as written, in the pupil's own small table). A correction
//! names its entry by event id; the runner looks up where that entry is in
//! the log ([`crate::Targets`]), so the view need not keep a 16-byte id per
//! mark beside the one the store's index already holds. The key makes a
//! session count once even if a log holds two marks for it (the later one
//! stands, as a re-taken register would). Marks arrive in date order, so a
//! new one is almost always pushed at the end. Each pupil's marks are also
//! counted by academic year and category as they change ([`Tally`]): the
//! report reads the counts, not the marks.

use std::sync::OnceLock;

use casebook_engine::codes::{AttendanceCategory, ATTENDANCE_CODES};
use casebook_engine::domain::academic_year;
use casebook_engine::event::{AttendanceMarked, CaseEvent, EntryCorrected, Session};
use casebook_engine::RecordedEvent;
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::facts::{academic_year_label, corrected, percent, PupilCard};
use crate::pupil_map::PupilMap;
use crate::Projection;

/// The attendance projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Attendance {
    pupils: PupilMap<Register>,
}

/// One pupil's register marks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Register {
    card: PupilCard,
    #[serde(with = "packed")]
    marks: Marks,
}

/// A session as a sortable number: `day number * 2 + (1 for pm)`, the day
/// number being [`Datelike::num_days_from_ce`]. Orders as `(date, session)`
/// does; every `NaiveDate` fits (its day numbers are within ±2^28).
type Key = i32;

fn key(date: NaiveDate, session: Session) -> Key {
    date.num_days_from_ce() * 2 + i32::from(session == Session::Pm)
}

/// The keys of sessions of dates chrono can hold: the day numbers of
/// `NaiveDate::MIN` to `NaiveDate::MAX` run without a gap, so a key is a
/// session of a date exactly when it lies here. (Checking a checkpoint's
/// every mark with `NaiveDate::from_num_days_from_ce_opt` was a tenth of
/// `casebook report attendance` on a large school.)
fn date_keys() -> std::ops::RangeInclusive<i64> {
    let first = key(NaiveDate::MIN, Session::Am);
    let last = key(NaiveDate::MAX, Session::Pm);
    i64::from(first)..=i64::from(last)
}

fn unkey(key: Key) -> (NaiveDate, Session) {
    let session = if key & 1 == 1 {
        Session::Pm
    } else {
        Session::Am
    };
    // `key` was made by `key()` from a valid date, so the day is valid.
    let date = NaiveDate::from_num_days_from_ce_opt(key >> 1).unwrap_or(NaiveDate::MIN);
    (date, session)
}

/// One mark: 12 bytes, no heap.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Mark {
    key: Key,
    /// `< ATTENDANCE_CODES.len()`: that code; else `other[code - len]` of
    /// the pupil's marks; [`NO_CODE`]: the empty code.
    code: u16,
    /// The mark's position in the log, its high 16 bits and low 32 (see
    /// [`Mark::position`]).
    position_high: u16,
    position_low: u32,
}

/// The code of a mark whose code could not be given an index: more than
/// 65,000 distinct codes casebook does not know on one pupil's register.
/// It reads as the empty code, which counts as unrecognised, as such a code
/// would.
const NO_CODE: u16 = u16::MAX;

/// Positions a mark holds: below 2^48. A log that long (280 trillion
/// events, about 60 PB at casebook's ~220 bytes an event) cannot be stored
/// by any backend casebook has; a larger position is held as the largest
/// one, which no correction can name.
const POSITION_LIMIT: u64 = (1 << 48) - 1;

impl Mark {
    fn new(key: Key, position: u64, code: u16) -> Mark {
        let position = position.min(POSITION_LIMIT);
        Mark {
            key,
            code,
            // Below 2^48: the high part fits 16 bits, the low part 32.
            position_high: (position >> 32) as u16,
            position_low: position as u32,
        }
    }

    fn position(&self) -> u64 {
        (u64::from(self.position_high) << 32) | u64::from(self.position_low)
    }
}

/// A pupil's marks in key order, packed in [`Block`]s of at most
/// [`BLOCK_MARKS`] marks each: per mark, its key and its position less the
/// previous mark's of the block (the first: less 0) as zigzag varints,
/// then its code as a varint (LEB128, as the checkpoint's `bin` of
/// [`packed`], but for the code, an index here into [`ATTENDANCE_CODES`]
/// and the pupil's own codes). About 5 bytes a mark in a school year's
/// register (1 for the key, 2 to 3 for the position, 1 for the code),
/// where a mark unpacked is 12 and was 8 in the narrowest form before;
/// any key, position below 2^48 and code fits. Marks are most of a
/// school's log and arrive in session order, so a mark after the last one
/// is written at the end of the last block; any other change (a session
/// marked again, a mark that comes out of order, a correction) unpacks
/// the one block it falls in, changes it and packs it again (split in two
/// when it grows past [`BLOCK_MARKS`]), a few microseconds whatever the
/// length of the pupil's history.
#[derive(Clone, Debug, Default)]
struct MarkList {
    blocks: Vec<Block>,
}

/// Consecutive marks of a [`MarkList`], packed. 48 bytes and the marks'.
#[derive(Clone, Debug, Default)]
struct Block {
    bytes: Vec<u8>,
    /// Marks in it, at most [`BLOCK_MARKS`].
    len: u32,
    /// Where the last mark's bytes start: a session marked again while it
    /// is the pupil's last (a register taken again) is rewritten there.
    tail: u32,
    /// The first mark's key, by which a mark finds its block.
    first: Key,
    /// The last mark's key and position: what the next one is written
    /// against.
    last_key: Key,
    last_position: u64,
}

/// Marks a block holds at most (about 640 bytes): a block is unpacked and
/// packed again whenever a mark comes into it out of order (about a
/// microsecond at this size, measured, 2 at 256).
const BLOCK_MARKS: usize = 128;

impl Block {
    fn iter(&self) -> MarkIter<'_> {
        MarkIter {
            bytes: &self.bytes,
            at: 0,
            left: self.len as usize,
            last: (0, 0),
        }
    }

    /// Holds `marks` (in key order, one a key, at most [`BLOCK_MARKS`])
    /// instead of its own, in the room it has, grown by steps if they need
    /// more.
    fn rewrite(&mut self, marks: &[Mark]) {
        self.bytes.clear();
        (self.len, self.last_key, self.last_position) = (0, 0, 0);
        for &m in marks {
            self.push(m);
        }
    }

    /// Takes off the last mark (of two or more: the one before it is read
    /// again, to write the next against).
    fn drop_last(&mut self) {
        let before = match self.len {
            0 | 1 => (0, 0),
            n => self
                .iter()
                .nth(n as usize - 2)
                .map_or((0, 0), |m| (m.key, m.position())),
        };
        self.bytes.truncate(self.tail as usize);
        self.len = self.len.saturating_sub(1);
        (self.last_key, self.last_position) = before;
    }

    /// Empty again, keeping the room of its bytes.
    fn clear(&mut self) {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        *self = Block {
            bytes,
            ..Block::default()
        };
    }

    /// Writes `m` after the last mark (whose key must be below its own),
    /// growing the bytes by [`BYTES_STEP`] when they are full.
    fn push(&mut self, m: Mark) {
        let room = self.bytes.capacity() - self.bytes.len();
        if room < MAX_PACKED_MARK {
            // The capacity grows by a step.
            self.bytes.reserve_exact(room + BYTES_STEP);
        }
        let position = m.position();
        if self.len == 0 {
            self.first = m.key;
        }
        // Below BLOCK_MARKS * MAX_PACKED_MARK: fits.
        self.tail = self.bytes.len() as u32;
        let last = (i64::from(self.last_key), self.last_position);
        put_mark(
            &mut self.bytes,
            last,
            (i64::from(m.key), position),
            m.code.into(),
        );
        (self.last_key, self.last_position) = (m.key, position);
        self.len += 1;
    }
}

impl MarkList {
    fn len(&self) -> usize {
        self.blocks.iter().map(|b| b.len as usize).sum()
    }

    fn iter(&self) -> impl Iterator<Item = Mark> + '_ {
        self.blocks.iter().flat_map(Block::iter)
    }

    #[cfg(test)]
    fn get(&self, i: usize) -> Option<Mark> {
        self.iter().nth(i)
    }

    /// Writes `m` after the last mark (whose key must be below its own).
    fn push(&mut self, m: Mark) {
        match self.blocks.last_mut() {
            Some(last) if (last.len as usize) < BLOCK_MARKS => last.push(m),
            _ => {
                let mut block = Block::default();
                block.push(m);
                // One block more, not room for a few (48 bytes each).
                self.blocks.reserve_exact(1);
                self.blocks.push(block);
            }
        }
    }

    /// Puts `m` in its key's place: in place of the mark of that key if
    /// there is one (which it returns), else before the first of a higher
    /// key.
    fn put(&mut self, m: Mark) -> Option<Mark> {
        let after_last = self.blocks.last().is_none_or(|b| m.key > b.last_key);
        if after_last {
            self.push(m);
            return None;
        }
        if let Some(last) = self.blocks.last_mut() {
            if m.key == last.last_key {
                // The last session again: its mark rewritten in place.
                let replaced = last.iter().last();
                last.drop_last();
                last.push(m);
                return replaced;
            }
        }
        // The last block starting at or before the key (the first if none
        // does).
        let b = self
            .blocks
            .partition_point(|b| b.first <= m.key)
            .saturating_sub(1);
        let mut replaced = None;
        self.change(b, |marks| {
            let i = marks.partition_point(|k| k.key < m.key);
            match marks.get_mut(i) {
                Some(slot) if slot.key == m.key => replaced = Some(std::mem::replace(slot, m)),
                _ => marks.insert(i, m),
            }
        });
        replaced
    }

    /// Removes the mark at index `i`, if there is one, and returns it.
    fn remove(&mut self, mut i: usize) -> Option<Mark> {
        for b in 0..self.blocks.len() {
            let len = self.blocks[b].len as usize;
            if i < len {
                let mut removed = None;
                self.change(b, |marks| {
                    removed = Some(marks.remove(i));
                });
                return removed;
            }
            i -= len;
        }
        None
    }

    /// Block `b`'s marks unpacked, changed by `f` (in key order still, one
    /// a key) and packed again in place: in none if none are left, in two
    /// halves if more than a block holds.
    fn change(&mut self, b: usize, f: impl FnOnce(&mut Vec<Mark>)) {
        UNPACKED.with(|unpacked| {
            let mut marks = unpacked.borrow_mut();
            marks.clear();
            marks.extend(self.blocks[b].iter());
            f(&mut marks);
            if marks.is_empty() {
                self.blocks.remove(b);
            } else if marks.len() > BLOCK_MARKS {
                let (low, high) = marks.split_at(marks.len() / 2);
                self.blocks[b].rewrite(low);
                let mut next = Block::default();
                next.rewrite(high);
                self.blocks.insert(b + 1, next);
            } else {
                self.blocks[b].rewrite(&marks);
            }
        });
    }
}

thread_local! {
    /// The marks of the block a [`MarkList::change`] unpacks, kept for the
    /// next one on this thread.
    static UNPACKED: std::cell::RefCell<Vec<Mark>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The most bytes a packed mark takes: 10 and 10 for the key and position
/// deltas (at most 64 bits each), 3 for the code.
const MAX_PACKED_MARK: usize = 23;

/// A block's bytes grow by [`BYTES_STEP`] (a school year is about 380
/// sessions, some 2 KB, three blocks): growing from nothing by doubling,
/// about a quarter of the lists' memory was room never used (a heap
/// profile of a 9.9M-event rebuild, when the marks were 12 bytes); a block
/// keeps less than a step unused. Steps of 256, with each full block
/// shrunk to its bytes, held 7 MB more for 7.6M marks (`casebook rebuild
/// attendance` of the 8.2M-event store: 136 MB against 129).
const BYTES_STEP: usize = 64;

/// Writes a packed mark after the mark `last` (its key and position): the
/// key and position of `mark` less `last`'s as zigzag varints, then `code`
/// as a varint. The blocks of [`MarkList`] and the checkpoint's `bin`
/// ([`packed`]) hold marks so.
fn put_mark(out: &mut Vec<u8>, last: (i64, u64), mark: (i64, u64), code: u64) {
    put_varint(out, zigzag(mark.0.wrapping_sub(last.0)));
    put_varint(out, zigzag(mark.1.wrapping_sub(last.1) as i64));
    put_varint(out, code);
}

/// The packed mark at the start of `bytes`, written after `last`
/// ([`put_mark`]): its key and position, its code, and its length in
/// bytes; `None` if the bytes end first or hold a number longer than 10
/// bytes.
fn read_mark(bytes: &[u8], last: (i64, u64)) -> Option<((i64, u64), u64, usize)> {
    let (key, a) = read_varint(bytes)?;
    let (position, b) = read_varint(bytes.get(a..)?)?;
    let (code, c) = read_varint(bytes.get(a + b..)?)?;
    let key = last.0.wrapping_add(unzigzag(key));
    let position = last.1.wrapping_add(unzigzag(position) as u64);
    Some(((key, position), code, a + b + c))
}

/// The marks of a [`Block`], in order.
struct MarkIter<'a> {
    bytes: &'a [u8],
    at: usize,
    left: usize,
    last: (i64, u64),
}

impl Iterator for MarkIter<'_> {
    type Item = Mark;

    fn next(&mut self) -> Option<Mark> {
        // The bytes were written by `MarkList::push`: they always read.
        self.left = self.left.checked_sub(1)?;
        let ((key, position), code, len) = read_mark(self.bytes.get(self.at..)?, self.last)?;
        let code = u16::try_from(code).ok()?;
        (self.at, self.last) = (self.at + len, (key, position));
        Some(Mark::new(Key::try_from(key).ok()?, position, code))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The varint at the start of `bytes` and its length; `None` if they end
/// first or it is longer than 10 bytes.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    for (i, &b) in bytes.iter().take(10).enumerate() {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

/// A pupil's marks in `(date, session)` order, one per session.
#[derive(Clone, Debug, Default)]
struct Marks {
    list: MarkList,
    /// Codes casebook does not know, as written (rare: only a log older
    /// than the code rules, or a foreign import, holds them).
    other: Vec<String>,
    /// The marks counted by academic year and category, kept as they
    /// change (not checkpointed: counted again as a checkpoint is read).
    tally: Tally,
}

/// A pupil's marks counted by academic year and category: what
/// [`Attendance::report`] reads, so that a report does not read every
/// mark of every pupil (it did: 16% of `casebook report attendance` on a
/// 24,000-pupil store of 9.9M events).
#[derive(Clone, Debug, Default)]
struct Tally {
    /// By academic year (named by its September), in year order. A year
    /// whose marks are all gone (moved by corrections) stays, counting
    /// nothing.
    years: Vec<(i32, Counts)>,
}

/// Marks of one year by category: present, approved education off site,
/// authorised, unauthorised, not possible, and codes casebook does not
/// know ([`Counts::slot`]). A pupil holds at most one mark a session, so
/// at most 732 a year.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts([u32; 6]);

impl Counts {
    /// Where a mark of `code` is counted.
    fn slot(code: u16) -> usize {
        match Marks::category(code) {
            Some(AttendanceCategory::Present) => 0,
            Some(AttendanceCategory::ApprovedOffsite) => 1,
            Some(AttendanceCategory::Authorised) => 2,
            Some(AttendanceCategory::Unauthorised) => 3,
            Some(AttendanceCategory::NotPossible) => 4,
            None => 5,
        }
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }
}

/// The academic year of a session key's date.
fn year_of_key(key: Key) -> i32 {
    academic_year(unkey(key).0)
}

/// The academic year of a session key, with the keys of the last year
/// found kept, so that marks read in key order (a checkpoint's) find
/// their year without a date each.
#[derive(Clone, Copy, Debug, Default)]
struct YearOfKey {
    /// The keys of `year`'s first and last sessions; empty at first.
    keys: Option<(Key, Key, i32)>,
}

impl YearOfKey {
    /// The key of the last session of the year last found (`None` at the
    /// ends of chrono's dates, where a year's end is no date).
    fn last_key(&self) -> Option<Key> {
        self.keys.map(|(_, last, _)| last)
    }

    fn of(&mut self, key: Key) -> i32 {
        if let Some((first, last, year)) = self.keys {
            if (first..=last).contains(&key) {
                return year;
            }
        }
        let year = year_of_key(key);
        let first = NaiveDate::from_ymd_opt(year, 9, 1).map(|d| self::key(d, Session::Am));
        let last = NaiveDate::from_ymd_opt(year.saturating_add(1), 8, 31)
            .map(|d| self::key(d, Session::Pm));
        // A year at the ends of chrono's dates is found again each time.
        self.keys = first.zip(last).map(|(f, l)| (f, l, year));
        year
    }
}

impl Tally {
    /// Counts `m` (one more of its code in its year), or with `by` -1,
    /// counts it out.
    fn count(&mut self, m: Mark, year: i32, by: i32) {
        let n = &mut self.counts(year).0[Counts::slot(m.code)];
        *n = n.saturating_add_signed(by);
    }

    /// `year`'s counts, made if it has none.
    fn counts(&mut self, year: i32) -> &mut Counts {
        let i = match self.years.iter().rposition(|(y, _)| *y <= year) {
            Some(i) if self.years[i].0 == year => i,
            at => {
                let i = at.map_or(0, |i| i + 1);
                // One year more, not room for four (most pupils' marks
                // are of a year or two).
                self.years.reserve_exact(1);
                self.years.insert(i, (year, Counts::default()));
                i
            }
        };
        &mut self.years[i].1
    }

    /// Counts `by_code[c]` marks of each code `codes[c]` in `year`, and
    /// sets `by_code` to 0 (a checkpoint's marks, counted a year at a time).
    fn count_year(&mut self, year: i32, codes: &[u16], by_code: &mut [u32]) {
        if by_code.iter().all(|&n| n == 0) {
            return;
        }
        let counts = self.counts(year);
        for (&code, n) in codes.iter().zip(by_code.iter_mut()) {
            let slot = &mut counts.0[Counts::slot(code)];
            *slot = slot.saturating_add(std::mem::take(n));
        }
    }

    fn year(&self, year: i32) -> Option<&Counts> {
        self.years.iter().find(|(y, _)| *y == year).map(|(_, c)| c)
    }
}

/// Index of each one-character code in [`ATTENDANCE_CODES`] plus one (0:
/// none), by its byte; built once.
fn one_char_codes() -> &'static [u8; 128] {
    static TABLE: OnceLock<[u8; 128]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [0u8; 128];
        for (i, c) in ATTENDANCE_CODES.iter().enumerate().rev() {
            if let ([b], Ok(index)) = (c.code.as_bytes(), u8::try_from(i + 1)) {
                if let Some(slot) = table.get_mut(usize::from(*b)) {
                    *slot = index;
                }
            }
        }
        table
    })
}

/// The index of `code` in [`ATTENDANCE_CODES`] (its first entry, as
/// [`casebook_engine::codes::attendance_code`] finds it).
fn known_code(code: &str) -> Option<usize> {
    if let [b] = code.as_bytes() {
        return match one_char_codes().get(usize::from(*b)) {
            Some(&i) if i > 0 => Some(usize::from(i) - 1),
            _ => None,
        };
    }
    ATTENDANCE_CODES.iter().position(|a| a.code == code)
}

impl Marks {
    fn code(&self, code: u16) -> &str {
        let i = usize::from(code);
        match ATTENDANCE_CODES.get(i) {
            Some(a) => a.code,
            None => self
                .other
                .get(i - ATTENDANCE_CODES.len())
                .map_or("", String::as_str),
        }
    }

    /// The category of a mark's code; `None` for a code casebook does not
    /// know.
    fn category(code: u16) -> Option<AttendanceCategory> {
        ATTENDANCE_CODES.get(usize::from(code)).map(|a| a.category)
    }

    fn intern(&mut self, code: &str) -> u16 {
        let known = ATTENDANCE_CODES.len();
        let index = match known_code(code) {
            Some(i) => i,
            None => match self.other.iter().position(|c| c == code) {
                Some(i) => known + i,
                None if known + self.other.len() < usize::from(NO_CODE) => {
                    self.other.push(code.to_string());
                    known + self.other.len() - 1
                }
                None => return NO_CODE,
            },
        };
        u16::try_from(index).unwrap_or(NO_CODE)
    }

    /// [`Marks::intern`] of a code not interned before (a checkpoint's
    /// list of codes, each once): no search of the pupil's own codes.
    fn intern_new(&mut self, code: &str) -> u16 {
        let known = ATTENDANCE_CODES.len();
        let index = match known_code(code) {
            Some(i) => i,
            None if known + self.other.len() < usize::from(NO_CODE) => {
                self.other.push(code.to_string());
                known + self.other.len() - 1
            }
            None => return NO_CODE,
        };
        u16::try_from(index).unwrap_or(NO_CODE)
    }

    /// Sets the mark of `key`'s session, replacing one already there.
    #[cfg(test)]
    fn insert(&mut self, key: Key, position: u64, code: &str) {
        self.insert_in(key, year_of_key(key), position, code);
    }

    /// [`Marks::insert`] of a session in academic year `year` (a fold
    /// has the mark's date, whose year is cheaper found than a key's).
    fn insert_in(&mut self, key: Key, year: i32, position: u64, code: &str) {
        let code = self.intern(code);
        let mark = Mark::new(key, position, code);
        if let Some(replaced) = self.list.put(mark) {
            // The same session: the same year.
            self.tally.count(replaced, year, -1);
        }
        self.tally.count(mark, year, 1);
    }

    /// Removes the mark at index `i`, if there is one.
    fn remove(&mut self, i: usize) {
        if let Some(removed) = self.list.remove(i) {
            self.tally.count(removed, year_of_key(removed.key), -1);
        }
    }

    /// `(key, position, code)` of every mark, in order.
    fn iter(&self) -> impl Iterator<Item = (Key, u64, &str)> + '_ {
        self.list
            .iter()
            .map(|m| (m.key, m.position(), self.code(m.code)))
    }
}

/// Equal when they hold the same marks, whatever their code tables hold.
impl PartialEq for Marks {
    fn eq(&self, other: &Marks) -> bool {
        self.list.len() == other.list.len() && self.iter().eq(other.iter())
    }
}

/// The checkpoint form of a pupil's marks: the codes they use, then the
/// marks as one MessagePack `bin` of varints, so that loading a
/// checkpoint reads a pupil's register without a call through serde (and
/// an allocated code) for every mark. Register marks are most of a
/// school's log: in the form before (VERSION 2, a `(day number, pm,
/// position, code)` tuple a mark) they were most of a checkpoint's bytes
/// and of the time `casebook report attendance` took to load it.
///
/// The `bin` holds the number of marks, then for each mark, in key order:
/// its key less the previous mark's (the first: less 0) and its position
/// less the previous mark's (zigzag varints: a correction can move a mark
/// to a session before another whose position is higher), and the index
/// of its code in the list of codes (an unsigned varint). Varints are
/// LEB128, at most 10 bytes. A school year's marks take about 5 bytes
/// each (1 for the key, 3 for the position, 1 for the code).
mod packed {
    use std::fmt;

    use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    use super::{
        date_keys, put_mark, put_varint, read_mark, read_varint, Block, Key, Mark, Marks,
        YearOfKey, BLOCK_MARKS, MAX_PACKED_MARK, POSITION_LIMIT,
    };
    use crate::facts::Bin;

    pub fn serialize<S: Serializer>(marks: &Marks, serializer: S) -> Result<S::Ok, S::Error> {
        let (codes, blob) = encode(marks);
        let mut pair = serializer.serialize_tuple(2)?;
        pair.serialize_element(&codes)?;
        pair.serialize_element(&Bin(&blob))?;
        pair.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Marks, D::Error> {
        deserializer.deserialize_tuple(2, PairVisitor)
    }

    /// The codes `marks` use, each once, in order of first use, and the
    /// `bin` of its marks.
    pub(super) fn encode(marks: &Marks) -> (Vec<&str>, Vec<u8>) {
        let mut codes: Vec<&str> = Vec::new();
        // The list index of each code index met so far, plus one.
        let mut index_of: Vec<u32> = Vec::new();
        let mut blob = Vec::with_capacity(10 + marks.list.len() * 5);
        put_varint(&mut blob, marks.list.len() as u64);
        let mut last = (0i64, 0u64);
        for m in marks.list.iter() {
            let slot = usize::from(m.code);
            if index_of.len() <= slot {
                index_of.resize(slot + 1, 0);
            }
            if index_of[slot] == 0 {
                codes.push(marks.code(m.code));
                index_of[slot] = codes.len() as u32;
            }
            let mark = (i64::from(m.key), m.position());
            put_mark(&mut blob, last, mark, u64::from(index_of[slot] - 1));
            last = mark;
        }
        (codes, blob)
    }

    /// The marks of `blob`, whose codes are `codes`; what is wrong with the
    /// bytes otherwise (never a panic, whatever they are).
    pub(super) fn decode(codes: &[String], blob: &[u8]) -> Result<Marks, String> {
        let mut marks = Marks::default();
        let (count, mut at) = read_varint(blob).ok_or("the number of marks cut short")?;
        // Each mark takes 3 bytes at least.
        if count > (blob.len() / 3) as u64 {
            return Err(format!("{count} marks in {} bytes", blob.len()));
        }
        // `encode` lists each code once, and only those the marks use.
        if codes.len() as u64 > count {
            return Err(format!("{} codes for {count} marks", codes.len()));
        }
        let mut seen = std::collections::HashSet::with_capacity(codes.len());
        let mut interned = Vec::with_capacity(codes.len());
        for code in codes {
            if !seen.insert(code.as_str()) {
                return Err(format!("the code {code:?} listed twice"));
            }
            interned.push(marks.intern_new(code));
        }
        let mut last = (0i64, 0u64);
        let keys = date_keys();
        // Marks come in key order, so a year's are together: counted by
        // code in `by_code` until the year ends, then put in the tally.
        let mut years = YearOfKey::default();
        let mut year: Option<(i32, Option<Key>)> = None;
        let mut by_code = vec![0u32; interned.len()];
        // Each block is written in `scratch`, which has room for a whole
        // one, and kept as a copy at its size: no block grown a step at a
        // time (a tenth of loading the checkpoint of a large school).
        let mut scratch = Block {
            bytes: Vec::with_capacity(BLOCK_MARKS * MAX_PACKED_MARK),
            ..Block::default()
        };
        // `count` is at most a third of the bytes (checked above).
        marks
            .list
            .blocks
            .reserve_exact((count as usize).div_ceil(BLOCK_MARKS));
        for i in 0..count {
            let rest = blob.get(at..).unwrap_or(&[]);
            let ((next_key, position), code, len) = read_mark(rest, last).ok_or_else(|| {
                format!("a number cut short or longer than 10 bytes, in the mark at byte {at}")
            })?;
            // A session of a date (the key's day number), after the last.
            if !keys.contains(&next_key) || (i > 0 && next_key <= last.0) {
                return Err(format!(
                    "mark {i}: session key {next_key} out of order or range"
                ));
            }
            if position > POSITION_LIMIT {
                return Err(format!("mark {i}: position {position} out of range"));
            }
            let (c, code) = usize::try_from(code)
                .ok()
                .and_then(|c| Some((c, *interned.get(c)?)))
                .ok_or_else(|| format!("mark {i}: code {code} of {} codes", codes.len()))?;
            (at, last) = (at + len, (next_key, position));
            // In key order (checked above): written at the end.
            let mark = Mark::new(next_key as Key, position, code);
            scratch.push(mark);
            if scratch.len as usize == BLOCK_MARKS {
                marks.list.blocks.push(scratch.clone());
                scratch.clear();
            }
            let in_year = year.is_some_and(|(_, end)| end.is_some_and(|end| mark.key <= end));
            if !in_year {
                if let Some((y, _)) = year {
                    marks.tally.count_year(y, &interned, &mut by_code);
                }
                let y = years.of(mark.key);
                year = Some((y, years.last_key()));
            }
            by_code[c] += 1;
        }
        if at != blob.len() {
            return Err(format!("{} bytes after the marks", blob.len() - at));
        }
        if scratch.len > 0 {
            marks.list.blocks.push(scratch.clone());
        }
        if let Some((y, _)) = year {
            marks.tally.count_year(y, &interned, &mut by_code);
        }
        Ok(marks)
    }

    struct PairVisitor;

    impl<'de> Visitor<'de> for PairVisitor {
        type Value = Marks;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a pupil's codes and marks")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Marks, A::Error> {
            let codes: Vec<String> = seq
                .next_element()?
                .ok_or_else(|| A::Error::invalid_length(0, &self))?;
            seq.next_element_seed(MarksOf(&codes))?
                .ok_or_else(|| A::Error::invalid_length(1, &self))
        }
    }

    /// The marks of a `bin`, read where the deserializer holds it, with
    /// the codes read before it.
    struct MarksOf<'c>(&'c [String]);

    impl<'de> DeserializeSeed<'de> for MarksOf<'_> {
        type Value = Marks;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Marks, D::Error> {
            deserializer.deserialize_bytes(self)
        }
    }

    impl<'de> Visitor<'de> for MarksOf<'_> {
        type Value = Marks;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("the marks' bytes")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Marks, E> {
            decode(self.0, v).map_err(E::custom)
        }
    }
}

impl Register {
    /// Applies `c`, which names the entry at `position`, if that entry is
    /// one of these marks.
    fn correct(&mut self, c: &EntryCorrected, position: u64) {
        let Some((i, mark)) = self
            .marks
            .list
            .iter()
            .enumerate()
            .find(|(_, m)| m.position() == position)
        else {
            return;
        };
        let (date, session) = unkey(mark.key);
        let original = CaseEvent::AttendanceMarked(AttendanceMarked {
            date,
            session,
            code: self.marks.code(mark.code).to_string(),
        });
        if let Some(CaseEvent::AttendanceMarked(new)) = corrected(&original, &c.changes) {
            self.marks.remove(i);
            self.marks.insert_in(
                key(new.date, new.session),
                academic_year(new.date),
                position,
                &new.code,
            );
        }
    }

    /// Bytes of this register's checkpoint form, roughly (a mark is 3 to
    /// 21, about 5 in a school year's register).
    fn checkpoint_size_hint(&self) -> usize {
        256 + self.marks.list.len() * 6
    }
}

impl Projection for Attendance {
    const NAME: &'static str = "attendance";
    /// 2: marks keep their position in the log instead of their event id.
    /// 3: a pupil's marks are checkpointed as one `bin` of varints
    /// (`packed`).
    const VERSION: u32 = 3;

    fn apply(&mut self, event: &RecordedEvent, corrected_at: Option<u64>) {
        match &event.event {
            CaseEvent::PupilRegistered(_) => {
                self.pupils.or_default(event.stream).card.register(event)
            }
            CaseEvent::AttendanceMarked(a) => {
                self.pupils.or_default(event.stream).marks.insert_in(
                    key(a.date, a.session),
                    academic_year(a.date),
                    event.position,
                    &a.code,
                );
            }
            CaseEvent::EntryCorrected(c) => {
                if let Some(register) = self.pupils.get_mut(&event.stream) {
                    if !register.card.correct(c) {
                        if let Some(position) = corrected_at {
                            register.correct(c, position);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn checkpoint_size_hint(&self) -> usize {
        // The wrapper and the empty map, then each pupil.
        64 + self
            .pupils
            .values()
            .map(Register::checkpoint_size_hint)
            .sum::<usize>()
    }
}

/// `report attendance --format json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttendanceReport {
    /// The academic year, named by its September (2025 = 2025/26).
    pub academic_year: i32,
    /// `2025/26`.
    pub label: String,
    /// Only persistently (or severely) absent pupils were listed.
    pub persistent_only: bool,
    /// Pupils with marks in the year, most absent first.
    pub pupils: Vec<PupilAttendance>,
    /// The whole school's figures, whatever the filter.
    pub summary: AttendanceSummary,
}

/// One pupil's year.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PupilAttendance {
    pub pupil: String,
    pub class: Option<String>,
    pub year_group: Option<u8>,
    pub possible_sessions: u64,
    /// Sessions attended: present, or at approved education off site.
    pub present: u64,
    /// Of `present`, sessions at approved education off site.
    pub approved_offsite: u64,
    pub authorised: u64,
    pub unauthorised: u64,
    /// Marks that are not possible sessions (not counted).
    pub not_possible: u64,
    /// Marks whose code casebook does not know (not counted).
    pub unrecognised: u64,
    /// `present / possible` in %, one decimal; `null` with no possible session.
    pub attendance_pct: Option<f64>,
    /// `(authorised + unauthorised) / possible` in %.
    pub absence_pct: Option<f64>,
    /// Missed 10 % or more of possible sessions.
    pub persistent: bool,
    /// Missed 50 % or more of possible sessions.
    pub severe: bool,
}

/// The school's year at a glance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AttendanceSummary {
    pub pupils: u64,
    pub possible_sessions: u64,
    pub present: u64,
    pub attendance_pct: Option<f64>,
    pub persistent: u64,
    pub severe: u64,
}

impl PupilAttendance {
    fn finish(&mut self) {
        let missed = self.authorised + self.unauthorised;
        self.possible_sessions = self.present + missed;
        self.attendance_pct = percent(self.present, self.possible_sessions);
        self.absence_pct = percent(missed, self.possible_sessions);
        // Whole numbers, so 10 % is 10 % exactly, not a float near it.
        self.persistent = self.possible_sessions > 0 && missed * 10 >= self.possible_sessions;
        self.severe = self.possible_sessions > 0 && missed * 2 >= self.possible_sessions;
    }
}

impl Attendance {
    /// Each pupil's attendance in `academic_year`; with `persistent_only`,
    /// only pupils missing 10 % or more.
    pub fn report(&self, academic_year: i32, persistent_only: bool) -> AttendanceReport {
        let first = NaiveDate::from_ymd_opt(academic_year, 9, 1);
        let last = NaiveDate::from_ymd_opt(academic_year.saturating_add(1), 8, 31);
        let mut pupils = Vec::new();
        let mut summary = AttendanceSummary::default();
        if first.is_some() && last.is_some() {
            for (stream, register) in &self.pupils {
                let Some(Counts(counts)) = register
                    .marks
                    .tally
                    .year(academic_year)
                    .filter(|c| !c.is_empty())
                else {
                    continue;
                };
                let [present, offsite, authorised, unauthorised, not_possible, unrecognised] =
                    counts.map(u64::from);
                let mut p = PupilAttendance {
                    pupil: register.card.pupil(*stream),
                    class: register.card.class().map(str::to_string),
                    year_group: register.card.year_group(),
                    present: present + offsite,
                    approved_offsite: offsite,
                    authorised,
                    unauthorised,
                    not_possible,
                    unrecognised,
                    ..PupilAttendance::default()
                };
                p.finish();
                summary.pupils += 1;
                summary.possible_sessions += p.possible_sessions;
                summary.present += p.present;
                summary.persistent += u64::from(p.persistent);
                summary.severe += u64::from(p.severe);
                if !persistent_only || p.persistent {
                    pupils.push(p);
                }
            }
        }
        summary.attendance_pct = percent(summary.present, summary.possible_sessions);
        pupils.sort_by(|a, b| {
            let missed = |p: &PupilAttendance| p.absence_pct.unwrap_or(0.0);
            missed(b)
                .total_cmp(&missed(a))
                .then_with(|| a.pupil.cmp(&b.pupil))
        });
        AttendanceReport {
            academic_year,
            label: academic_year_label(academic_year),
            persistent_only,
            pupils,
            summary,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The packed marks against the map of marks they replaced (kept here
    //! as the reference, verbatim but for names; it keeps each mark's event
    //! id where the packed marks keep its position): the same marks and
    //! the same reports, byte for byte, on any sequence of marks,
    //! duplicates, unknown codes and corrections.

    use super::*;
    use casebook_engine::codes::attendance_code;
    use casebook_engine::envelope::StreamId;
    use chrono::{Duration, TimeZone, Utc};
    use proptest::prelude::*;
    use serde_json::json;
    use uuid::Uuid;

    mod reference {
        use super::super::{academic_year_label, corrected, percent, PupilCard};
        use super::super::{AttendanceReport, AttendanceSummary, PupilAttendance};
        use super::attendance_code;
        use casebook_engine::codes::AttendanceCategory;
        use casebook_engine::event::{AttendanceMarked, CaseEvent, EntryCorrected, Session};
        use casebook_engine::{RecordedEvent, StreamId};
        use chrono::NaiveDate;
        use serde::{Deserialize, Serialize};
        use std::collections::BTreeMap;
        use uuid::Uuid;

        /// The attendance projection.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        pub struct OldAttendance {
            pupils: BTreeMap<StreamId, OldRegister>,
        }

        /// One pupil's register marks.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        struct OldRegister {
            card: PupilCard,
            #[serde(with = "packed")]
            marks: BTreeMap<(NaiveDate, Session), Mark>,
        }

        /// A mark's event id and code.
        #[derive(Clone, Debug, PartialEq)]
        struct Mark(Uuid, String);

        /// The checkpoint form of a pupil's marks: a list of `(day number, pm,
        /// event id, code)` tuples. Register marks are most of a school's log, so
        /// their checkpoint form matters: no field names, and a day number instead
        /// of a date string to parse (about 27 bytes a mark instead of 50).
        mod packed {
            use std::collections::BTreeMap;

            use casebook_engine::event::Session;
            use chrono::{Datelike, NaiveDate};
            use serde::de::Error as _;
            use serde::{Deserialize, Deserializer, Serializer};
            use uuid::Uuid;

            use super::Mark;

            type Packed = (i32, bool, Uuid, String);

            pub fn serialize<S: Serializer>(
                marks: &BTreeMap<(NaiveDate, Session), Mark>,
                serializer: S,
            ) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(marks.iter().map(|((date, session), Mark(id, code))| {
                    (date.num_days_from_ce(), *session == Session::Pm, id, code)
                }))
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(
                deserializer: D,
            ) -> Result<BTreeMap<(NaiveDate, Session), Mark>, D::Error> {
                let packed: Vec<Packed> = Vec::deserialize(deserializer)?;
                packed
                    .into_iter()
                    .map(|(day, pm, id, code)| {
                        let date = NaiveDate::from_num_days_from_ce_opt(day).ok_or_else(|| {
                            D::Error::custom(format!("day number {day} out of range"))
                        })?;
                        let session = if pm { Session::Pm } else { Session::Am };
                        Ok(((date, session), Mark(id, code)))
                    })
                    .collect()
            }
        }

        impl OldRegister {
            fn correct(&mut self, c: &EntryCorrected) {
                let Some((&key, mark)) = self.marks.iter().find(|(_, m)| m.0 == c.event) else {
                    return;
                };
                let original = CaseEvent::AttendanceMarked(AttendanceMarked {
                    date: key.0,
                    session: key.1,
                    code: mark.1.clone(),
                });
                if let Some(CaseEvent::AttendanceMarked(new)) = corrected(&original, &c.changes) {
                    let id = mark.0;
                    self.marks.remove(&key);
                    self.marks
                        .insert((new.date, new.session), Mark(id, new.code));
                }
            }
        }

        impl OldAttendance {
            /// Every pupil's card, by stream.
            pub(super) fn cards(&self) -> Vec<&PupilCard> {
                self.pupils.values().map(|r| &r.card).collect()
            }

            /// Every mark: `(pupil, day number, pm, event id, code)`.
            pub(super) fn marks(&self) -> Vec<(StreamId, i32, bool, Uuid, String)> {
                use chrono::Datelike;
                let mut out = Vec::new();
                for (stream, register) in &self.pupils {
                    for ((date, session), Mark(id, code)) in &register.marks {
                        out.push((
                            *stream,
                            date.num_days_from_ce(),
                            *session == Session::Pm,
                            *id,
                            code.clone(),
                        ));
                    }
                }
                out
            }

            pub(super) fn apply(&mut self, event: &RecordedEvent) {
                match &event.event {
                    CaseEvent::PupilRegistered(_) => self
                        .pupils
                        .entry(event.stream)
                        .or_default()
                        .card
                        .register(event),
                    CaseEvent::AttendanceMarked(a) => {
                        self.pupils
                            .entry(event.stream)
                            .or_default()
                            .marks
                            .insert((a.date, a.session), Mark(event.event_id, a.code.clone()));
                    }
                    CaseEvent::EntryCorrected(c) => {
                        if let Some(register) = self.pupils.get_mut(&event.stream) {
                            if !register.card.correct(c) {
                                register.correct(c);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }

        trait OldCount {
            fn old_count(&mut self, code: &str);
            fn old_finish(&mut self);
        }

        impl OldCount for PupilAttendance {
            fn old_count(&mut self, code: &str) {
                match attendance_code(code).map(|c| c.category) {
                    Some(AttendanceCategory::Present) => self.present += 1,
                    Some(AttendanceCategory::ApprovedOffsite) => {
                        self.present += 1;
                        self.approved_offsite += 1;
                    }
                    Some(AttendanceCategory::Authorised) => self.authorised += 1,
                    Some(AttendanceCategory::Unauthorised) => self.unauthorised += 1,
                    Some(AttendanceCategory::NotPossible) => self.not_possible += 1,
                    None => self.unrecognised += 1,
                }
            }

            fn old_finish(&mut self) {
                let missed = self.authorised + self.unauthorised;
                self.possible_sessions = self.present + missed;
                self.attendance_pct = percent(self.present, self.possible_sessions);
                self.absence_pct = percent(missed, self.possible_sessions);
                // Whole numbers, so 10 % is 10 % exactly, not a float near it.
                self.persistent =
                    self.possible_sessions > 0 && missed * 10 >= self.possible_sessions;
                self.severe = self.possible_sessions > 0 && missed * 2 >= self.possible_sessions;
            }
        }

        impl OldAttendance {
            /// Each pupil's attendance in `academic_year`; with `persistent_only`,
            /// only pupils missing 10 % or more.
            pub(super) fn report(
                &self,
                academic_year: i32,
                persistent_only: bool,
            ) -> AttendanceReport {
                let first = NaiveDate::from_ymd_opt(academic_year, 9, 1);
                let last = NaiveDate::from_ymd_opt(academic_year.saturating_add(1), 8, 31);
                let mut pupils = Vec::new();
                let mut summary = AttendanceSummary::default();
                if let (Some(first), Some(last)) = (first, last) {
                    for (stream, register) in &self.pupils {
                        let mut year = register
                            .marks
                            .range((first, Session::Am)..=(last, Session::Pm))
                            .peekable();
                        if year.peek().is_none() {
                            continue;
                        }
                        let mut p = PupilAttendance {
                            pupil: register.card.pupil(*stream),
                            class: register.card.class().map(str::to_string),
                            year_group: register.card.year_group(),
                            ..PupilAttendance::default()
                        };
                        for (_, Mark(_, code)) in year {
                            p.old_count(code);
                        }
                        p.old_finish();
                        summary.pupils += 1;
                        summary.possible_sessions += p.possible_sessions;
                        summary.present += p.present;
                        summary.persistent += u64::from(p.persistent);
                        summary.severe += u64::from(p.severe);
                        if !persistent_only || p.persistent {
                            pupils.push(p);
                        }
                    }
                }
                summary.attendance_pct = percent(summary.present, summary.possible_sessions);
                pupils.sort_by(|a, b| {
                    let missed = |p: &PupilAttendance| p.absence_pct.unwrap_or(0.0);
                    missed(b)
                        .total_cmp(&missed(a))
                        .then_with(|| a.pupil.cmp(&b.pupil))
                });
                AttendanceReport {
                    academic_year,
                    label: academic_year_label(academic_year),
                    persistent_only,
                    pupils,
                    summary,
                }
            }
        }
    }

    const CODES: &[&str] = &[
        "/", "\\", "L", "V", "I", "M", "O", "N", "G", "X", "#", "Y3", "C1", "H", "Z9", "", "bad",
    ];

    #[derive(Clone, Debug)]
    enum Step {
        Register {
            pupil: u8,
            class: u8,
        },
        Mark {
            pupil: u8,
            day: u16,
            pm: bool,
            code: u8,
        },
        Correct {
            pupil: u8,
            target: usize,
            day: Option<u16>,
            pm: Option<bool>,
            code: Option<u8>,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => (0u8..3, 0u8..3).prop_map(|(pupil, class)| Step::Register { pupil, class }),
            8 => (0u8..3, 0u16..800, any::<bool>(), any::<u8>())
                .prop_map(|(pupil, day, pm, code)| Step::Mark { pupil, day, pm, code }),
            2 => (0u8..3, any::<usize>(), proptest::option::of(0u16..800),
                  proptest::option::of(any::<bool>()), proptest::option::of(any::<u8>()))
                .prop_map(|(pupil, target, day, pm, code)| Step::Correct { pupil, target, day, pm, code }),
        ]
    }

    fn events(steps: &[Step]) -> Vec<RecordedEvent> {
        let base = Utc.with_ymd_and_hms(2024, 9, 1, 8, 0, 0).unwrap();
        let first_day = NaiveDate::from_ymd_opt(2024, 8, 20).unwrap();
        let mut out: Vec<RecordedEvent> = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            let (pupil, (event_type, data)) = match s {
                Step::Register { pupil, class } => (
                    *pupil,
                    (
                        "PupilRegistered",
                        json!({"pupil": format!("P{pupil}"), "name": "N",
                        "date_of_birth": "2012-05-01", "year_group": 8,
                        "class": format!("C{class}")}),
                    ),
                ),
                Step::Mark {
                    pupil,
                    day,
                    pm,
                    code,
                } => (
                    *pupil,
                    (
                        "AttendanceMarked",
                        json!({
                        "date": first_day + Duration::days(i64::from(*day)),
                        "session": if *pm { "pm" } else { "am" },
                        "code": CODES[usize::from(*code) % CODES.len()]}),
                    ),
                ),
                Step::Correct {
                    pupil,
                    target,
                    day,
                    pm,
                    code,
                } => {
                    let Some(t) = (!out.is_empty()).then(|| &out[target % out.len()]) else {
                        continue;
                    };
                    let mut changes = serde_json::Map::new();
                    if let Some(day) = day {
                        changes.insert(
                            "date".into(),
                            json!(first_day + Duration::days(i64::from(*day))),
                        );
                    }
                    if let Some(pm) = pm {
                        changes.insert("session".into(), json!(if *pm { "pm" } else { "am" }));
                    }
                    if let Some(code) = code {
                        changes.insert(
                            "code".into(),
                            json!(CODES[usize::from(*code) % CODES.len()]),
                        );
                    }
                    if changes.is_empty() {
                        changes.insert("class".into(), json!("C9"));
                    }
                    (
                        *pupil,
                        (
                            "EntryCorrected",
                            json!({"event": t.event_id, "changes": changes, "reason": "r"}),
                        ),
                    )
                }
            };
            let position = out.len() as u64 + 1;
            out.push(RecordedEvent {
                position,
                stream: StreamId::for_pupil("s", &format!("P{pupil}")),
                version: position,
                event_id: Uuid::from_u128(u128::from(position) * 7919),
                occurred_at: base + Duration::minutes(i as i64),
                recorded_at: base + Duration::minutes(i as i64),
                actor: "S1".into(),
                correlation_id: None,
                causation_id: None,
                schema: casebook_engine::event::CURRENT_SCHEMA,
                hash: [0; 32],
                event: CaseEvent::from_type_and_data(event_type, data).expect("a valid event"),
            });
        }
        out
    }

    fn same(
        new: &Attendance,
        old: &reference::OldAttendance,
        log: &[RecordedEvent],
    ) -> Result<(), TestCaseError> {
        let position_of = |id: Uuid| log.iter().find(|e| e.event_id == id).map(|e| e.position);
        let old_marks: Vec<_> = old
            .marks()
            .into_iter()
            .map(|(stream, day, pm, id, code)| (stream, day, pm, position_of(id), code))
            .collect();
        let new_marks: Vec<_> = new
            .pupils
            .iter()
            .flat_map(|(stream, r)| {
                r.marks.iter().map(|(key, position, code)| {
                    (
                        *stream,
                        key >> 1,
                        key & 1 == 1,
                        Some(position),
                        code.to_string(),
                    )
                })
            })
            .collect();
        prop_assert_eq!(new_marks, old_marks, "marks");
        for register in new.pupils.values() {
            let mut counted = Tally::default();
            for m in register.marks.list.iter() {
                counted.count(m, year_of_key(m.key), 1);
            }
            let kept = |t: &Tally| -> Vec<(i32, Counts)> {
                t.years
                    .iter()
                    .copied()
                    .filter(|(_, c)| !c.is_empty())
                    .collect()
            };
            prop_assert_eq!(kept(&register.marks.tally), kept(&counted), "the tally");
        }
        prop_assert_eq!(
            &new.pupils.values().map(|r| &r.card).collect::<Vec<_>>(),
            &old.cards()
        );
        for year in 2023..=2026 {
            for persistent in [false, true] {
                prop_assert_eq!(
                    serde_json::to_string(&new.report(year, persistent)).unwrap(),
                    serde_json::to_string(&old.report(year, persistent)).unwrap()
                );
            }
        }
        Ok(())
    }

    /// What a checkpoint's mark key was checked with before
    /// [`date_keys`]: a session of a date chrono can hold.
    fn is_date_key(k: i64) -> bool {
        Key::try_from(k).is_ok_and(|k| NaiveDate::from_num_days_from_ce_opt(k >> 1).is_some())
    }

    #[test]
    fn date_keys_are_the_keys_of_dates_at_their_ends() {
        let keys = date_keys();
        for end in [*keys.start(), *keys.end()] {
            for k in end - 3..=end + 3 {
                assert_eq!(keys.contains(&k), is_date_key(k), "key {k}");
            }
        }
        for k in [
            0,
            -1,
            1,
            i64::MIN,
            i64::MAX,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
        ] {
            assert_eq!(keys.contains(&k), is_date_key(k), "key {k}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn date_keys_are_the_keys_of_dates(k in any::<i64>(), near in -200_000_000i64..200_000_000) {
            prop_assert_eq!(date_keys().contains(&k), is_date_key(k));
            prop_assert_eq!(date_keys().contains(&near), is_date_key(near));
        }

        #[test]
        fn packed_marks_give_the_reference_marks_and_reports(
            steps in proptest::collection::vec(step(), 0..200),
        ) {
            let events = events(&steps);
            let log = crate::Targets::of(&events);
            let mut new = Attendance::default();
            let mut old = reference::OldAttendance::default();
            for e in &events {
                new.apply(e, log.corrected_by(e));
                old.apply(e);
            }
            same(&new, &old, &events)?;
            // The checkpoint reads back as the same state.
            let bytes = rmp_serde::to_vec_named(&new).unwrap();
            let back: Attendance = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &new);
            same(&back, &old, &events)?;
            prop_assert!(new.checkpoint_size_hint() >= bytes.len() / 2);
            // Without the corrections' targets, no mark is corrected: the
            // view is as if the corrections of marks were not in the log.
            let mut blind = Attendance::default();
            let mut without = Attendance::default();
            for e in &events {
                blind.apply(e, None);
                let names_a_mark = matches!(&e.event, CaseEvent::EntryCorrected(c)
                    if events.iter().any(|t| t.event_id == c.event
                        && matches!(t.event, CaseEvent::AttendanceMarked(_))));
                if !names_a_mark {
                    without.apply(e, None);
                }
            }
            prop_assert_eq!(&blind, &without);
        }
    }

    #[test]
    fn one_char_codes_find_what_attendance_code_finds() {
        for b in 0u8..128 {
            let code = (b as char).to_string();
            let by_table = known_code(&code).map(|i| ATTENDANCE_CODES[i].code);
            assert_eq!(by_table, attendance_code(&code).map(|a| a.code), "{code:?}");
        }
        for a in ATTENDANCE_CODES {
            assert_eq!(
                known_code(a.code).map(|i| ATTENDANCE_CODES[i].code),
                Some(a.code)
            );
        }
        assert_eq!(std::mem::size_of::<Mark>(), 12);
    }

    #[test]
    fn a_list_of_marks_is_packed_in_blocks_that_keep_little_room() {
        let mut marks = Marks::default();
        let day = key(NaiveDate::from_ymd_opt(2020, 9, 1).unwrap(), Session::Am);
        for i in 0..9_000i32 {
            // Positions as a school of 1,000 pupils spaces them.
            marks.insert(day + i, 1_000 * i as u64 + 1, "/");
        }
        let list = &marks.list;
        assert_eq!(list.len(), 9_000);
        assert_eq!(list.blocks.len(), 9_000usize.div_ceil(BLOCK_MARKS));
        let (full, _) = list.blocks.split_at(list.blocks.len() - 1);
        assert!(full.iter().all(|b| b.len as usize == BLOCK_MARKS));
        for b in &list.blocks {
            assert!(b.bytes.capacity() - b.bytes.len() < BYTES_STEP + MAX_PACKED_MARK);
        }
        // 4 bytes a mark (a key, two of position and a code), and a few
        // more for each block's first, taken from 0.
        let bytes: usize = list.blocks.iter().map(|b| b.bytes.len()).sum();
        assert!(
            (36_000..36_000 + 8 * list.blocks.len()).contains(&bytes),
            "{bytes}"
        );
        // A mark put between others takes its place.
        let mut marks = Marks::default();
        for i in 0..64 {
            marks.insert(day + 2 * i, 1, "/");
        }
        marks.insert(day + 1, 2, "L");
        assert_eq!(marks.list.len(), 65);
        assert_eq!(
            marks.list.get(1).unwrap().code,
            known_code("L").unwrap() as u16
        );
    }

    /// Marks that come out of order, or again for a session, change only
    /// the block they fall in: blocks stay in key order, none past
    /// [`BLOCK_MARKS`] or empty, whatever the order (here: newest first,
    /// then every session again, then every other mark removed).
    #[test]
    fn marks_out_of_order_keep_the_blocks_in_order_and_bounded() {
        let day = key(NaiveDate::from_ymd_opt(2020, 9, 1).unwrap(), Session::Am);
        let mut marks = Marks::default();
        for i in (0..3_000i32).rev() {
            marks.insert(day + i, i as u64 + 1, "/");
        }
        for i in 0..3_000i32 {
            marks.insert(day + i, 10_000 + i as u64, "L");
        }
        let check = |marks: &Marks, n: usize| {
            let keys: Vec<Key> = marks.list.iter().map(|m| m.key).collect();
            assert_eq!(keys.len(), n);
            assert!(keys.windows(2).all(|w| w[0] < w[1]));
            for b in &marks.list.blocks {
                assert!((1..=BLOCK_MARKS).contains(&(b.len as usize)));
                assert_eq!(b.first, b.iter().next().unwrap().key);
            }
        };
        check(&marks, 3_000);
        assert!(marks.iter().all(|(_, p, c)| p >= 10_000 && c == "L"));
        for i in (0..1_500).rev() {
            marks.list.remove(2 * i);
        }
        check(&marks, 1_500);
        let positions: Vec<u64> = marks.iter().map(|(_, p, _)| p).collect();
        assert_eq!(
            positions,
            (0..1_500).map(|i| 10_001 + 2 * i).collect::<Vec<u64>>()
        );
        // Each session marked again at once (the last mark rewritten in
        // place) packs as if marked once, with the later mark.
        let (mut twice, mut once) = (Marks::default(), Marks::default());
        for i in 0..300i32 {
            twice.insert(day + i, 2 * i as u64 + 1, "/");
            twice.insert(day + i, 2 * i as u64 + 2, "L");
            once.insert(day + i, 2 * i as u64 + 2, "L");
        }
        check(&twice, 300);
        let bytes =
            |m: &Marks| -> Vec<Vec<u8>> { m.list.blocks.iter().map(|b| b.bytes.clone()).collect() };
        assert_eq!(bytes(&twice), bytes(&once));
        assert_eq!(twice, once);
    }

    /// A checkpoint's marks are refused when a session key is not a
    /// date's, when a code is listed twice, or when there are more codes
    /// than marks (`encode` lists each code once, and only those used).
    #[test]
    fn checkpoint_marks_of_no_date_or_codes_listed_twice_are_refused() {
        let codes = |list: &[&str]| list.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let mut blob = vec![1];
        packed_put(&mut blob, &[4_000_000_000, 0, 0]);
        let err = packed::decode(&codes(&["/"]), &blob).unwrap_err();
        assert!(err.contains("out of order or range"), "{err}");
        let day = key(NaiveDate::from_ymd_opt(2025, 9, 1).unwrap(), Session::Am);
        let mut blob = vec![2];
        packed_put(&mut blob, &[2 * i64::from(day), 2, 0, 2, 2, 1]);
        assert_eq!(
            packed::decode(&codes(&["/", "L"]), &blob)
                .unwrap()
                .list
                .len(),
            2
        );
        let err = packed::decode(&codes(&["/", "/"]), &blob).unwrap_err();
        assert!(err.contains("listed twice"), "{err}");
        let err = packed::decode(&codes(&["/", "L", "N"]), &blob).unwrap_err();
        assert!(err.contains("3 codes for 2 marks"), "{err}");
    }

    /// Varints of `numbers` (already zigzagged where the form wants it).
    fn packed_put(out: &mut Vec<u8>, numbers: &[i64]) {
        for &n in numbers {
            put_varint(out, n as u64);
        }
    }

    /// Marks of any session key (a date before the year 1, or past the
    /// narrow form there was), any position (below the limit) and any code
    /// of the pupil's table are packed and read back as they were, in any
    /// order they come; a session marked again keeps one mark.
    #[test]
    fn marks_of_any_size_are_packed_and_read_back() {
        let day = key(NaiveDate::from_ymd_opt(2025, 9, 1).unwrap(), Session::Am);
        let ancient = key(NaiveDate::from_ymd_opt(-5, 1, 1).unwrap(), Session::Pm);
        let far = key(NaiveDate::from_ymd_opt(9_000, 1, 1).unwrap(), Session::Am);
        let odd = "odd1023".to_string();
        for (k, position, code) in [
            (day + 5, 1u64 << 40, "/"),
            (ancient, 4, "L"),
            (far, POSITION_LIMIT, "L"),
            (day + 5, 4, odd.as_str()),
            (day + 7, 0, "N"),
        ] {
            let mut marks = Marks {
                other: (0..=1_023).map(|i| format!("odd{i}")).collect(),
                ..Marks::default()
            };
            for (i, c) in ["/", "N", "odd7"].into_iter().enumerate() {
                marks.insert(day + 2 * i as Key, i as u64 + 1, c);
            }
            marks.insert(k, position, code);
            let mut want = vec![(day, 1, "/"), (day + 2, 2, "N"), (day + 4, 3, "odd7")];
            want.push((k, position, code));
            want.sort_by_key(|w| w.0);
            let got: Vec<(Key, u64, &str)> = marks.iter().collect();
            assert_eq!(got, want);
            // Still one mark a session, in order: the same session again
            // replaces its mark.
            marks.insert(day + 2, 9, "/");
            assert_eq!(marks.list.len(), 4);
            let second_day = key(NaiveDate::from_ymd_opt(2025, 9, 2).unwrap(), Session::Am);
            let that_day: Vec<u64> = marks
                .iter()
                .filter(|(k, _, _)| (second_day..=second_day + 1).contains(k))
                .map(|(_, p, _)| p)
                .collect();
            assert_eq!(that_day, [9]);
        }
        let mut marks = Marks::default();
        for i in [5, 1, 3, 2, 4] {
            marks.insert(day + i, (1 << 33) + i as u64, "/");
        }
        let positions: Vec<u64> = marks.iter().map(|(_, p, _)| p).collect();
        assert_eq!(
            positions,
            (1..=5).map(|i| (1 << 33) + i).collect::<Vec<u64>>()
        );
        marks.list.remove(0);
        marks.list.remove(9);
        let keys: Vec<Key> = marks.iter().map(|(k, _, _)| k).collect();
        assert_eq!(keys, (2..=5).map(|i| day + i).collect::<Vec<Key>>());
    }

    #[test]
    fn positions_past_the_limit_and_codes_past_the_table_are_held_without_panic() {
        for position in [0, 1, u64::from(u32::MAX), 1 << 40, POSITION_LIMIT] {
            assert_eq!(Mark::new(7, position, 3).position(), position);
        }
        assert_eq!(Mark::new(7, u64::MAX, 3).position(), POSITION_LIMIT);
        let mut marks = Marks::default();
        let day = key(NaiveDate::from_ymd_opt(2025, 9, 1).unwrap(), Session::Am);
        // The pupil's table of codes casebook does not know, full.
        let room = usize::from(NO_CODE) - ATTENDANCE_CODES.len();
        marks.other = (0..room).map(|i| format!("odd{i}")).collect();
        marks.insert(day, 1, "odd0");
        marks.insert(day + 1, 2, &format!("odd{}", room - 1));
        marks.insert(day + 2, 3, "one more");
        marks.insert(day + 3, 4, "/");
        assert_eq!(marks.other.len(), room);
        let codes: Vec<&str> = marks.iter().map(|(_, _, code)| code).collect();
        let last = format!("odd{}", room - 1);
        // Past the table, a code reads as the empty code: unrecognised, as
        // it would have counted.
        assert_eq!(codes, ["odd0", last.as_str(), "", "/"]);
        assert_eq!(Marks::category(NO_CODE), None);
        // And read back from the checkpoint form as they were: the codes
        // the marks use, each once.
        let (codes, blob) = packed::encode(&marks);
        assert_eq!(codes, ["odd0", last.as_str(), "", "/"]);
        let codes: Vec<String> = codes.into_iter().map(String::from).collect();
        assert_eq!(packed::decode(&codes, &blob).unwrap(), marks);
    }

    /// The codes the codec tests draw from: known ones (one character and
    /// longer), unknown ones and the empty code.
    const SOME_CODES: [&str; 7] = ["/", "\\", "L", "#", "odd", "", "zz"];

    fn marks_of(list: &[(i32, u64, usize)]) -> Marks {
        let mut marks = Marks::default();
        for &(key, position, code) in list {
            marks.insert(key, position, SOME_CODES[code % SOME_CODES.len()]);
        }
        marks
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any marks (sessions of any date, positions of any size,
        /// corrections that moved a mark before one with a later position),
        /// read back from their checkpoint form as they were.
        #[test]
        fn marks_read_back_from_their_checkpoint_form(
            list in proptest::collection::vec(
                (prop_oneof![0i32..2_000_000, key(NaiveDate::MIN, Session::Am)..=key(NaiveDate::MAX, Session::Pm)],
                 prop_oneof![0u64..1 << 40, any::<u64>()],
                 0usize..7),
                0..300),
        ) {
            let marks = marks_of(&list);
            let (codes, blob) = packed::encode(&marks);
            let codes: Vec<String> = codes.into_iter().map(String::from).collect();
            let back = packed::decode(&codes, &blob).unwrap();
            prop_assert_eq!(&back, &marks);
        }

        /// No bytes make reading marks panic, whether random or a good
        /// form with a byte changed, cut or added; what is read is a list
        /// in key order, one mark a session.
        #[test]
        fn any_bytes_are_read_as_marks_or_refused_without_panic(
            list in proptest::collection::vec((0i32..1_000, 0u64..1_000_000, 0usize..7), 0..40),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
            at in any::<usize>(),
            byte in any::<u8>(),
            codes in proptest::collection::vec("[A-Z/]{0,2}", 0..4),
        ) {
            let marks = marks_of(&list);
            let (good_codes, good) = packed::encode(&marks);
            let good_codes: Vec<String> = good_codes.into_iter().map(String::from).collect();
            let mut changed = good.clone();
            if !changed.is_empty() {
                let i = at % changed.len();
                changed[i] = byte;
            }
            let mut longer = good.clone();
            longer.extend_from_slice(&noise);
            let cut = &good[..at % (good.len() + 1)];
            for (codes, blob) in [
                (&codes, noise.as_slice()),
                (&good_codes, changed.as_slice()),
                (&good_codes, longer.as_slice()),
                (&good_codes, cut),
                (&codes, good.as_slice()),
            ] {
                if let Ok(marks) = packed::decode(codes, blob) {
                    let keys: Vec<Key> = marks.list.iter().map(|m| m.key).collect();
                    prop_assert!(keys.windows(2).all(|w| w[0] < w[1]));
                }
            }
            prop_assert!(packed::decode(&good_codes, &longer).is_err() || noise.is_empty());
        }
    }
}
