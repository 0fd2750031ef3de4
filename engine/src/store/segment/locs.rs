//! Where each position's frame is: [`Locations`], about 2 bytes a position.
//!
//! Frames follow one another from byte 0 of each segment (the writer
//! appends whole groups at the segment's end, and a torn tail is cut
//! back before anything is written after it), so a frame's length is where
//! the next one starts, and a segment's frames need only their offsets.
//! The positions are kept in runs, each of frames one after another in one
//! segment; a run holds its segment, its first position, where it starts
//! and where its last frame ends (a new run starts in the same segment
//! before an offset from its start would pass 4 GiB). A log has about one
//! run a segment.
//!
//! A run's positions are taken 64 at a time, in groups that never straddle
//! two runs: a group keeps its first frame's offset from the start of its
//! run as a `u32`, and each position its frame's offset from its group's
//! first frame as a `u16`: 2 bytes a position and 4 a group, about 2.06
//! bytes a position (the tables are in chunks of 4,096 entries, so that
//! their slack stays small beside a small log's). 64 frames of events of a
//! few hundred bytes span far less than 64 KiB. A group whose frames span
//! more is **wide**: its offsets take 32 bits, the high 16 bits of each in
//! a table of their own, in blocks of 64, one a wide group, found by
//! counting the wide groups before it in a bitmap of the groups; a log of
//! events of a kilobyte or more takes about 4 bytes a position. A group
//! is narrow until a frame starts more than 65,535 bytes after its first
//! one, and turns wide then.
//!
//! This was 4 bytes a position (each its offset from the start of its run
//! as a `u32`, 40 MB of the index at 10M events), and before that 16
//! (offset, length, segment).
//!
//! A **sparse** table ([`Locations::sparse`], session al) keeps the runs
//! and the groups' bases only, about 0.07 bytes a position: a position's
//! frame is then found by reading its group's frames from the group's
//! start and walking them by their lengths ([`Locations::spans`]).

use super::dense::Chunked;
use super::snapshot::SnapSegment;
use super::Loc;

/// Positions a group holds (its run's last group may hold fewer).
pub(super) const GROUP: u64 = 64;

/// Entries per chunk of the tables: 8 KiB of `u16`s, so that the slack of
/// a small log's table is small beside it (chunks of 65,536 entries would
/// leave up to 128 KiB, a third more than 100,000 positions need).
const CHUNK: usize = 1 << 12;

/// Frames one after another in one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    /// The position of its first frame.
    first: u64,
    /// The segment's number (index into the log's segments).
    seg: u32,
    /// The offset of its first frame in the segment.
    base: u64,
    /// The offset just past its last frame.
    end: u64,
    /// Its first group's index in `Locations::bases` (its groups follow
    /// one another from there).
    group: usize,
}

/// Which of 64 groups are wide (bit `g % 64` of word `g / 64` for group
/// `g`), and how many groups before them are: where a wide group's high
/// halves are is a count of bits, whatever the number of wide groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Wide {
    bits: u64,
    before: usize,
}

/// How [`Locations::push`] adds a frame, as [`Locations::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// After the last frame of the last run.
    Extend,
    /// As the first frame of a new run.
    NewRun,
}

/// Every position's frame: segment, offset and length.
#[derive(Clone, Debug, Default)]
pub(super) struct Locations {
    /// `low[p - 1]`: how far position p's frame starts after its group's
    /// first frame (the low 16 bits of that in a wide group).
    low: Chunked<u16, CHUNK>,
    /// Per group, its first frame's offset from its run's `base`.
    bases: Chunked<u32, CHUNK>,
    /// Per 64 groups, which are wide.
    wide: Vec<Wide>,
    /// The high 16 bits of those distances in the wide groups: the n-th
    /// wide group's (from 0) at `64 n` on, one a position (a wide group
    /// that ended its run short keeps its 64 places).
    high: Chunked<u16, CHUNK>,
    /// In position order; `runs[0].first` is 1.
    runs: Vec<Run>,
    /// `Some(positions held)` when the table keeps only where each group
    /// starts ([`Locations::sparse`]): `low` and `high` stay empty.
    sparse: Option<usize>,
}

/// A run as an index snapshot records it in its group table (format 5):
/// with the groups' starts, what a sparse table holds
/// ([`Locations::group_table`], [`Locations::sparse_from`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SnapRun {
    pub first: u64,
    pub seg: u32,
    pub base: u64,
    pub end: u64,
}

/// Frames one after another in one segment, from the start of a group
/// ([`Locations::spans`]): read from `start` to `end` and walked by their
/// lengths, they hold the positions asked for, from `first` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub seg: u32,
    /// The offset of the frame of position `first`.
    pub start: u64,
    /// Where the span's last frame ends.
    pub end: u64,
    pub first: u64,
}

impl Locations {
    /// A table that keeps only where each group of 64 positions starts
    /// (about 0.07 bytes a position instead of 2): [`Locations::at`]
    /// answers `None`, and a frame is found by reading its group's frames
    /// from the group's start ([`Locations::spans`]). For an open that
    /// reads the log in order, or not at all (the caseload, the reports).
    pub(super) fn sparse() -> Locations {
        Locations {
            sparse: Some(0),
            ..Locations::default()
        }
    }

    /// The runs, and each group's first frame's offset from its run's
    /// start: what a sparse table holds of `self`, as an index snapshot
    /// records it so that an open keeping only that reads nothing else
    /// ([`Locations::sparse_from`]).
    pub(super) fn group_table(&self) -> (Vec<SnapRun>, Vec<u32>) {
        let runs = self
            .runs
            .iter()
            .map(|r| SnapRun {
                first: r.first,
                seg: r.seg,
                base: r.base,
                end: r.end,
            })
            .collect();
        (runs, self.bases.to_vec())
    }

    /// A sparse table ([`Locations::sparse`]) of `held` positions from
    /// the runs and groups' starts of [`Locations::group_table`], checked
    /// for what can be without the frames: the runs follow one another
    /// from position 1 to `held`, each after the one before in its segment
    /// or in a later segment, and hold the groups their positions fill
    /// (64 a group), each group starting after the one before and before
    /// its run ends. The caller checks the segments they span
    /// ([`Locations::segments`]); a frame found at a group's start is
    /// checked as any read checks it (its length, its CRC-32, the
    /// position it says).
    pub(super) fn sparse_from(
        runs: &[SnapRun],
        bases: &[u32],
        held: u64,
    ) -> Result<Locations, String> {
        let mut l = Locations::sparse();
        let mut group = 0usize;
        let mut before: Option<&SnapRun> = None;
        for (i, r) in runs.iter().enumerate() {
            let next_first = runs.get(i + 1).map_or(held.saturating_add(1), |n| n.first);
            let first_ok = match before {
                None => r.first == 1,
                Some(b) => r.seg > b.seg || (r.seg == b.seg && r.base == b.end),
            };
            if !first_ok {
                return Err(format!("run {i} does not follow the one before it"));
            }
            if next_first <= r.first || r.end <= r.base {
                return Err(format!("run {i} holds no frame"));
            }
            let groups = usize::try_from((next_first - r.first).div_ceil(GROUP))
                .map_err(|_| format!("run {i} holds too many groups"))?;
            let Some(own) = group
                .checked_add(groups)
                .and_then(|to| bases.get(group..to))
            else {
                return Err(format!("the groups end inside run {i}"));
            };
            let in_order = own.first() == Some(&0) && own.windows(2).all(|w| w[0] < w[1]);
            let last = own.last().map_or(0, |&b| u64::from(b));
            if !in_order || r.base.checked_add(last).is_none_or(|at| at >= r.end) {
                return Err(format!("run {i}'s groups do not start in order inside it"));
            }
            l.runs.push(Run {
                first: r.first,
                seg: r.seg,
                base: r.base,
                end: r.end,
                group,
            });
            for &b in own {
                l.bases.push(b);
            }
            group += groups;
            before = Some(r);
        }
        if group != bases.len() || (runs.is_empty() && held != 0) {
            return Err("the groups are not those the runs hold".into());
        }
        l.sparse = Some(usize::try_from(held).map_err(|_| "too many positions".to_string())?);
        Ok(l)
    }

    /// Whether only the groups' starts are kept ([`Locations::sparse`]).
    pub(super) fn is_sparse(&self) -> bool {
        self.sparse.is_some()
    }

    /// Groups of positions held, each where its frames start.
    pub(super) fn groups(&self) -> usize {
        self.bases.len()
    }

    /// Positions held: 1..=len.
    pub(super) fn len(&self) -> usize {
        match self.sparse {
            Some(held) => held,
            None => self.low.len(),
        }
    }

    /// Where position `p`'s frame is (`None` in a sparse table).
    #[inline]
    pub(super) fn at(&self, p: u64) -> Option<Loc> {
        if p == 0 || p > self.len() as u64 || self.sparse.is_some() {
            return None;
        }
        // Most reads are of the last segment's run; else a binary search
        // of the runs (about one a segment).
        let last = self.runs.len().checked_sub(1)?;
        let r = match self.runs.get(last) {
            Some(run) if run.first <= p => last,
            _ => self
                .runs
                .partition_point(|run| run.first <= p)
                .checked_sub(1)?,
        };
        self.loc_in(self.runs.get(r)?, self.after_run(r), p)
    }

    /// Where position `p`'s frame is, `run` holding p and `next_first`
    /// the first position after it. The frame ends where the next
    /// position's starts: in the same group (63 times in 64) found with
    /// the group's base and wide rank already at hand.
    #[inline]
    fn loc_in(&self, run: &Run, next_first: u64, p: u64) -> Option<Loc> {
        let (base, rank, i, j) = self.place(run, p)?;
        let offset = base + self.group_offset(rank, i, j)?;
        let end = if p + 1 >= next_first {
            run.end
        } else if j + 1 < GROUP as usize {
            base + self.group_offset(rank, i + 1, j + 1)?
        } else {
            let (base, rank, i, j) = self.place(run, p + 1)?;
            base + self.group_offset(rank, i, j)?
        };
        Some(Loc {
            offset,
            len: u32::try_from(end.checked_sub(offset)?).ok()?,
            seg: run.seg,
        })
    }

    /// Position `p`'s place in `run`, which holds it: its group's first
    /// frame's offset in the segment, the group's wide rank (if wide),
    /// p's entry and its place in the group.
    #[inline]
    fn place(&self, run: &Run, p: u64) -> Option<(u64, Option<usize>, usize, usize)> {
        let k = p.checked_sub(run.first)?;
        let g = run.group.checked_add(usize::try_from(k / GROUP).ok()?)?;
        let base = run.base + u64::from(*self.bases.get(g)?);
        let i = usize::try_from(p.checked_sub(1)?).ok()?;
        Some((base, self.wide_rank(g), i, (k % GROUP) as usize))
    }

    /// How far entry `i` (the `j`th of its group) starts after its group's
    /// first frame, the group being the `rank`th wide one if wide.
    #[inline]
    fn group_offset(&self, rank: Option<usize>, i: usize, j: usize) -> Option<u64> {
        let low = u64::from(*self.low.get(i)?);
        match rank {
            None => Some(low),
            Some(n) => {
                let at = n.checked_mul(GROUP as usize)?.checked_add(j)?;
                Some(u64::from(*self.high.get(at)?) << 16 | low)
            }
        }
    }

    /// How many groups before group `g` are wide, if `g` is.
    #[inline]
    fn wide_rank(&self, g: usize) -> Option<usize> {
        let word = self.wide.get(g / 64)?;
        let bit = 1u64 << (g % 64);
        (word.bits & bit != 0).then(|| word.before + (word.bits & (bit - 1)).count_ones() as usize)
    }

    /// The first position after run `r`.
    fn after_run(&self, r: usize) -> u64 {
        self.runs
            .get(r + 1)
            .map_or(self.len() as u64 + 1, |n| n.first)
    }

    /// Where the frames of positions `from..=last` (held ones) are, a
    /// span a run they lie in, each from the start of the group that holds
    /// its first position to the end of the group that holds its last
    /// (so a span's frames may begin up to 63 positions before `from` and
    /// end up to 63 after `last`). Answers the same from a sparse table
    /// and a full one.
    pub(super) fn spans(&self, from: u64, last: u64) -> Vec<Span> {
        let from = from.max(1);
        let last = last.min(self.len() as u64);
        let mut out = Vec::new();
        if from > last {
            return out;
        }
        let mut r = self
            .runs
            .partition_point(|run| run.first <= from)
            .saturating_sub(1);
        while let Some(run) = self.runs.get(r) {
            if run.first > last {
                break;
            }
            let next_first = self.after_run(r);
            let (lo, hi) = (from.max(run.first), last.min(next_first - 1));
            if lo <= hi {
                let (g_lo, g_hi) = ((lo - run.first) / GROUP, (hi - run.first) / GROUP);
                let base = |g: u64| {
                    usize::try_from(g)
                        .ok()
                        .and_then(|g| self.bases.get(run.group.checked_add(g)?))
                        .map(|&b| run.base + u64::from(b))
                };
                let after = run.first + (g_hi + 1) * GROUP;
                let end = match after < next_first {
                    true => base(g_hi + 1),
                    false => Some(run.end),
                };
                if let (Some(start), Some(end)) = (base(g_lo), end) {
                    out.push(Span {
                        seg: run.seg,
                        start,
                        end,
                        first: run.first + g_lo * GROUP,
                    });
                }
            }
            r += 1;
        }
        out
    }

    /// Whether `self` and `other` hold the same positions in the same
    /// runs and groups, whether each is sparse or not (the locations a
    /// sparse index reads again are checked so against it).
    pub(super) fn same_groups(&self, other: &Locations) -> bool {
        self.len() == other.len()
            && self.runs == other.runs
            && self.bases.len() == other.bases.len()
            && (0..self.bases.len()).all(|g| self.bases.get(g) == other.bases.get(g))
    }

    /// Whether `loc` can be the next position's frame, and how it is
    /// added; `Err` says why not (it is not right after the frame before
    /// it in its segment, or its segment comes before that frame's).
    /// Changes nothing.
    pub(super) fn check(&self, loc: Loc) -> Result<Step, String> {
        match self.runs.last() {
            Some(run) if loc.seg == run.seg => {
                if loc.offset != run.end {
                    return Err(format!(
                        "a frame at offset {} of segment {} where the frames before it end at {}",
                        loc.offset, loc.seg, run.end
                    ));
                }
                if loc.offset - run.base > u64::from(u32::MAX) {
                    Ok(Step::NewRun)
                } else {
                    Ok(Step::Extend)
                }
            }
            Some(run) if loc.seg < run.seg => Err(format!(
                "a frame in segment {} after frames of segment {}",
                loc.seg, run.seg
            )),
            _ if loc.offset != 0 => Err(format!(
                "the first frame of segment {} is at offset {}, not 0",
                loc.seg, loc.offset
            )),
            _ => Ok(Step::NewRun),
        }
    }

    /// Adds the next position's frame, as [`Locations::check`] said.
    pub(super) fn push(&mut self, loc: Loc, step: Step) {
        let end = loc.offset + u64::from(loc.len);
        match (step, self.runs.last_mut()) {
            (Step::Extend, Some(run)) => {
                let from_base = (loc.offset - run.base) as u32;
                run.end = end;
                let first = run.first;
                self.push_from_base(first, from_base);
            }
            _ => {
                let first = self.len() as u64 + 1;
                self.runs.push(Run {
                    first,
                    seg: loc.seg,
                    base: loc.offset,
                    end,
                    group: self.bases.len(),
                });
                self.push_from_base(first, 0);
            }
        }
    }

    /// Adds the next position's frame, `len` bytes right after the last
    /// frame in its run's segment, as [`Locations::push_checked`] adds
    /// such a frame; `false` (nothing added) when there is no run yet or
    /// the frame needs a new one (its offset past 4 GiB of the run's start).
    #[inline]
    pub(super) fn push_next(&mut self, len: u32) -> bool {
        let Some(run) = self.runs.last_mut() else {
            return false;
        };
        let Ok(from_base) = u32::try_from(run.end - run.base) else {
            return false;
        };
        run.end += u64::from(len);
        let first = run.first;
        self.push_from_base(first, from_base);
        true
    }

    /// Checks and adds frames of lengths `lens`, the first at `offset` of
    /// segment `seg` and each right after the one before it, as
    /// [`Locations::push_checked`] adds each: where they continue the last
    /// run, each group's offsets at once while the groups stay narrow
    /// ([`Locations::push_next_narrow`]), else one by one (a group turning
    /// wide by [`Locations::push_next`], a segment's first frame or a new
    /// run by `push_checked`). `Err` (the frames from the refused one on
    /// not added) where `push_checked` refuses one.
    pub(super) fn push_frames(
        &mut self,
        seg: u32,
        mut lens: &[u32],
        mut offset: u64,
    ) -> Result<(), String> {
        while !lens.is_empty() {
            let continues = self
                .runs
                .last()
                .is_some_and(|run| run.seg == seg && run.end == offset);
            if continues {
                let n = self.push_next_narrow(lens);
                lens = &lens[n..];
                // The frames added end where the run now does.
                offset = self.runs.last().map_or(offset, |run| run.end);
            }
            let Some((&len, rest)) = lens.split_first() else {
                break;
            };
            if !(continues && self.push_next(len)) {
                self.push_checked(Loc { offset, len, seg })?;
            }
            offset += u64::from(len);
            lens = rest;
        }
        Ok(())
    }

    /// Adds the frames of `lens` in turn, each right after the one before
    /// it at the end of the last run, as [`Locations::push_next`] adds
    /// each, for as long as each stays in a narrow group of that run;
    /// returns how many it added. It stops before a frame that would turn
    /// its group wide or need a new run (past 4 GiB of the run's start),
    /// and adds nothing without a run or when the last group is wide
    /// already: `push_next` (or `push_checked`) adds that frame, and this
    /// can go on after it. A snapshot's open adds its frames so, a group's
    /// offsets at once (`push_from_base` finds a group's base and wide
    /// flag again for each frame).
    pub(super) fn push_next_narrow(&mut self, lens: &[u32]) -> usize {
        let len = self.len() as u64;
        let Some(run) = self.runs.last() else {
            return 0;
        };
        // The next position's place in its run, and, inside a group, that
        // group's base (the group must be narrow).
        let first_k = len + 1 - run.first;
        let mut group_base = 0u64;
        if !first_k.is_multiple_of(GROUP) {
            let g = self.bases.len().saturating_sub(1);
            match self.bases.last() {
                Some(&base) if self.wide_rank(g).is_none() => group_base = u64::from(base),
                _ => return 0,
            }
        }
        let (run_base, mut end) = (run.base, run.end);
        // A sparse table keeps the groups' starts only: no group turns wide.
        let keep = self.sparse.is_none();
        let mut low = Vec::with_capacity(if keep { lens.len() } else { 0 });
        let mut added = lens.len();
        for (i, &frame) in lens.iter().enumerate() {
            let from_base = end - run_base;
            if from_base > u64::from(u32::MAX) {
                added = i;
                break;
            }
            if (first_k + i as u64).is_multiple_of(GROUP) {
                self.bases.push(from_base as u32);
                group_base = from_base;
                if keep {
                    low.push(0);
                }
            } else if keep {
                match u16::try_from(from_base - group_base) {
                    Ok(from_group) => low.push(from_group),
                    Err(_) => {
                        added = i;
                        break;
                    }
                }
            }
            end += u64::from(frame);
        }
        match &mut self.sparse {
            Some(held) => *held += added,
            None => self.low.extend_from_slice(&low),
        }
        if let Some(run) = self.runs.last_mut() {
            run.end = end;
        }
        added
    }

    /// Adds the next position to the last run (whose first position is
    /// `first`), its frame `from_base` bytes from the start of the run.
    #[inline]
    fn push_from_base(&mut self, first: u64, from_base: u32) {
        // Its place in its run: every 64th starts a group.
        let k = self.len() as u64 + 1 - first;
        if let Some(held) = &mut self.sparse {
            *held += 1;
            if k.is_multiple_of(GROUP) {
                self.bases.push(from_base);
            }
            return;
        }
        let base = match self.bases.last() {
            Some(&base) if !k.is_multiple_of(GROUP) => base,
            _ => return self.start_group(from_base),
        };
        // Never below: offsets only grow along a run.
        let from_group = from_base - base;
        let g = self.bases.len() - 1;
        if self.wide_rank(g).is_none() {
            match u16::try_from(from_group) {
                Ok(low) => return self.low.push(low),
                Err(_) => self.widen(g, k % GROUP),
            }
        }
        self.low.push(from_group as u16);
        self.high.push((from_group >> 16) as u16);
    }

    /// Starts a group with the next position, its frame `from_base` bytes
    /// from the start of its run.
    fn start_group(&mut self, from_base: u32) {
        // No word of wide flags yet: a missing word is all narrow, and
        // `widen` adds the words up to a group that turns wide.
        self.bases.push(from_base);
        self.low.push(0);
    }

    /// Makes group `g`, the last, wide, `held` positions in: their high
    /// halves are 0 (their offsets fit 16 bits), and its block of high
    /// halves starts after the last wide group's 64 places.
    #[cold]
    fn widen(&mut self, g: usize, held: u64) {
        let bit = 1u64 << (g % 64);
        let word = self.wide_word(g);
        word.bits |= bit;
        let n = word.before + (word.bits & (bit - 1)).count_ones() as usize;
        let start = n * GROUP as usize + held as usize;
        while self.high.len() < start {
            self.high.push(0);
        }
    }

    /// The word of wide flags that holds group `g`'s, added (with the
    /// words before it) if there is none yet.
    fn wide_word(&mut self, g: usize) -> &mut Wide {
        while self.wide.len() <= g / 64 {
            let before = self
                .wide
                .last()
                .map_or(0, |w| w.before + w.bits.count_ones() as usize);
            self.wide.push(Wide { bits: 0, before });
        }
        &mut self.wide[g / 64]
    }

    /// Checks and adds the next position's frame.
    pub(super) fn push_checked(&mut self, loc: Loc) -> Result<(), String> {
        let step = self.check(loc)?;
        self.push(loc, step);
        Ok(())
    }

    /// Where the frames the index holds of each of `n` segments end (0
    /// for a segment it holds none of), in one pass over the runs (in
    /// segment order; a segment's last run ends its frames).
    pub(super) fn segment_ends(&self, n: usize) -> Vec<u64> {
        let mut ends = vec![0; n];
        for run in &self.runs {
            if let Some(end) = ends.get_mut(run.seg as usize) {
                *end = run.end;
            }
        }
        ends
    }

    /// Per segment, from segment 0 on, its first position and where its
    /// last frame ends (what an index snapshot records of it); `None` when
    /// some segment holds no frame (no snapshot is written then).
    pub(super) fn segments(&self) -> Option<Vec<SnapSegment>> {
        let mut out: Vec<SnapSegment> = Vec::new();
        for run in &self.runs {
            let n = out.len();
            match out.last_mut() {
                Some(s) if n == run.seg as usize + 1 && s.len == run.base => s.len = run.end,
                _ if n == run.seg as usize && run.base == 0 => out.push(SnapSegment {
                    first: run.first,
                    len: run.end,
                }),
                _ => return None,
            }
        }
        Some(out)
    }

    /// Every position's frame length, in position order (of a full table:
    /// a sparse one has none to give, and the writer writes no snapshot
    /// from it).
    pub(super) fn lens(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs.iter().enumerate().flat_map(move |(r, run)| {
            let next_first = self.after_run(r);
            // Every position held has its frame: a 0 (never given) would
            // only make a snapshot that its reader refuses.
            (run.first..next_first)
                .map(move |p| self.loc_in(run, next_first, p).map_or(0, |loc| loc.len))
        })
    }

    /// Bytes allocated for the offsets, the groups and the runs.
    pub(super) fn allocated_bytes(&self) -> usize {
        self.low.allocated_bytes()
            + self.bases.allocated_bytes()
            + self.high.allocated_bytes()
            + self.wide.capacity() * std::mem::size_of::<Wide>()
            + self.runs.capacity() * std::mem::size_of::<Run>()
    }

    /// Every position's frame, in order (tests).
    #[cfg(test)]
    pub(super) fn to_vec(&self) -> Vec<Loc> {
        (1..=self.len() as u64).filter_map(|p| self.at(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn loc(seg: u32, offset: u64, len: u32) -> Loc {
        Loc { offset, len, seg }
    }

    /// [`Locations::segments`] as (first position, length) pairs.
    fn spans(l: &Locations) -> Option<Vec<(u64, u64)>> {
        Some(l.segments()?.iter().map(|s| (s.first, s.len)).collect())
    }

    #[test]
    fn frames_are_found_across_segments_and_runs() {
        let mut l = Locations::default();
        let frames = [
            loc(0, 0, 100),
            loc(0, 100, 50),
            loc(0, 150, 70),
            loc(2, 0, 30), // segment 1 holds no frame
            loc(2, 30, 40),
            loc(3, 0, 10),
        ];
        for f in frames {
            l.push_checked(f).unwrap();
        }
        assert_eq!(l.len(), 6);
        assert_eq!(l.to_vec(), frames.to_vec());
        assert_eq!(l.at(0), None);
        assert_eq!(l.at(7), None);
        assert_eq!(
            l.lens().collect::<Vec<_>>(),
            frames.iter().map(|f| f.len).collect::<Vec<_>>()
        );
        // Segment 1 holds no frame: no segment list for a snapshot.
        assert_eq!(spans(&l), None);
        assert_eq!(l.segment_ends(5), [220, 0, 70, 10, 0]);
        // 2 bytes a position, and a group of 4 bytes in each run.
        let bytes = l.allocated_bytes();
        assert!(
            bytes >= 6 * 2 + 3 * 4 + 3 * std::mem::size_of::<Run>(),
            "{bytes}"
        );
    }

    #[test]
    fn frames_out_of_place_are_refused_and_change_nothing() {
        let mut l = Locations::default();
        assert!(l.check(loc(0, 5, 10)).unwrap_err().contains("not 0"));
        l.push_checked(loc(0, 0, 10)).unwrap();
        l.push_checked(loc(1, 0, 10)).unwrap();
        let before = l.to_vec();
        for bad in [loc(1, 11, 10), loc(1, 9, 10), loc(0, 10, 10), loc(2, 3, 10)] {
            assert!(l.check(bad).is_err(), "{bad:?}");
        }
        assert_eq!(l.to_vec(), before);
        assert_eq!(spans(&l), Some(vec![(1, 10), (2, 10)]));
    }

    /// A segment past 4 GiB is held in more than one run, and its frames
    /// and its length for a snapshot are as they were pushed.
    #[test]
    fn offsets_past_four_gib_start_a_new_run() {
        let mut l = Locations::default();
        let big = 1u32 << 31;
        let frames = [
            loc(0, 0, big),
            loc(0, u64::from(big), big),
            loc(0, 2 * u64::from(big), 100), // offset 4 GiB: a new run
            loc(0, 2 * u64::from(big) + 100, 7),
            loc(1, 0, 9),
        ];
        for f in frames {
            l.push_checked(f).unwrap();
        }
        assert_eq!(l.runs.len(), 3);
        assert_eq!(l.to_vec(), frames.to_vec());
        assert_eq!(
            spans(&l),
            Some(vec![(1, 4 * u64::from(big) / 2 + 107), (5, 9)])
        );
        assert_eq!(l.lens().collect::<Vec<_>>(), vec![big, big, 100, 7, 9]);
    }

    /// `push_next` adds a frame after the last one as `push_checked` does,
    /// and declines where that would start a run (none yet, or past 4 GiB
    /// of the run's start), so that a snapshot's reader that falls back to
    /// `push_checked` then builds the same locations.
    #[test]
    fn push_next_adds_what_push_checked_adds() {
        let big = 1u32 << 31;
        let frames = [
            loc(0, 0, big),
            loc(0, u64::from(big), big),
            loc(0, 2 * u64::from(big), 100),
            loc(0, 2 * u64::from(big) + 100, 7),
            loc(1, 0, 9),
            loc(1, 9, 11),
        ];
        let mut checked = Locations::default();
        let mut next = Locations::default();
        assert!(!next.push_next(5), "no run yet");
        let mut declined = 0;
        for (i, f) in frames.iter().enumerate() {
            checked.push_checked(*f).unwrap();
            let first_of_segment = i == 0 || frames[i - 1].seg != f.seg;
            if first_of_segment || !next.push_next(f.len) {
                declined += usize::from(!first_of_segment);
                next.push_checked(*f).unwrap();
            }
        }
        assert_eq!(declined, 1, "the frame at 4 GiB starts a run");
        assert_eq!(next.runs, checked.runs);
        assert_eq!(next.to_vec(), checked.to_vec());
    }

    /// Frames pushed as the positions `Locations` should hold, with what
    /// it should make of them, kept the plain way.
    #[derive(Default)]
    struct Reference {
        locs: Vec<Loc>,
        /// Per position, its run's number.
        run_of: Vec<usize>,
        /// The start of the last run.
        run_base: u64,
    }

    impl Reference {
        fn runs(&self) -> usize {
            self.run_of.last().map_or(0, |r| r + 1)
        }

        /// How `loc`, a frame right after the last in its segment (or the
        /// first of a later one), is to be added.
        fn step(&self, loc: Loc) -> Step {
            match self.locs.last() {
                Some(last) if last.seg == loc.seg && loc.offset - self.run_base <= 0xFFFF_FFFF => {
                    Step::Extend
                }
                _ => Step::NewRun,
            }
        }

        fn push(&mut self, loc: Loc) {
            let run = match self.step(loc) {
                Step::Extend => self.runs() - 1,
                Step::NewRun => {
                    self.run_base = loc.offset;
                    self.runs()
                }
            };
            self.locs.push(loc);
            self.run_of.push(run);
        }

        /// Groups of 64 positions of a run (from its first) whose frames
        /// start more than 65,535 bytes apart.
        fn wide_groups(&self) -> usize {
            let mut wide = 0;
            let mut i = 0;
            while i < self.locs.len() {
                let run = self.run_of[i];
                let end = (i..self.locs.len())
                    .take(64)
                    .take_while(|&j| self.run_of[j] == run)
                    .last()
                    .unwrap_or(i);
                wide += usize::from(self.locs[end].offset - self.locs[i].offset > 0xFFFF);
                i = end + 1;
            }
            wide
        }

        /// Per segment, its first position and length, if every segment
        /// up to the last holds a frame.
        fn spans(&self) -> Option<Vec<(u64, u64)>> {
            let mut out: Vec<(u64, u64)> = Vec::new();
            for (i, f) in self.locs.iter().enumerate() {
                let end = f.offset + u64::from(f.len);
                match out.len() {
                    n if n == f.seg as usize + 1 => out[n - 1].1 = end,
                    n if n == f.seg as usize => out.push((i as u64 + 1, end)),
                    _ => return None,
                }
            }
            Some(out)
        }
    }

    /// Checks all that `l` answers against `r`.
    fn agrees(l: &Locations, r: &Reference) {
        let n = r.locs.len() as u64;
        assert_eq!(l.len() as u64, n);
        assert_eq!(l.to_vec(), r.locs);
        for p in 1..=n {
            assert_eq!(l.at(p), Some(r.locs[p as usize - 1]), "position {p}");
        }
        assert_eq!(l.at(0), None);
        assert_eq!(l.at(n + 1), None);
        assert_eq!(
            l.lens().collect::<Vec<_>>(),
            r.locs.iter().map(|f| f.len).collect::<Vec<_>>()
        );
        assert_eq!(spans(l), r.spans());
        assert_eq!(l.runs.len(), r.runs());
        let wide: u32 = l.wide.iter().map(|w| w.bits.count_ones()).sum();
        assert_eq!(wide as usize, r.wide_groups(), "wide groups");
    }

    /// What the property test does next.
    #[derive(Clone, Debug)]
    enum Op {
        /// `count` frames of `len` bytes after the last, each by
        /// `push_next` if `next` and it is in the last frame's segment
        /// (`push_checked` where `push_next` declines), else by
        /// `push_checked`.
        Frames { count: usize, len: u32, next: bool },
        /// Frames of these lengths after the last, by `push_frames`.
        Batch { lens: Vec<u32> },
        /// The next frames go to the segment `skip` after the current one
        /// (2 leaves one without frames), from offset 0.
        Segment { skip: u32 },
        /// A frame out of place, refused (`kind` picks how, and by how
        /// much).
        Bad { kind: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        let len = || {
            prop_oneof![
                // Small frames: groups stay narrow (a frame is never
                // empty: a span is walked by the frames' lengths).
                12 => 1..=400u32,
                // Around 64 KiB: a group turns wide at its next frame.
                3 => 60_000..=70_000u32,
                1 => 70_000..=(1u32 << 20),
                // A few of these pass 4 GiB from a run's start.
                1 => (1u32 << 30)..=u32::MAX,
            ]
        };
        let batch = prop_oneof![
            // Mostly small, now and then a large one anywhere in a group.
            20 => 1..=400u32,
            1 => len(),
        ];
        prop_oneof![
            12 => (len(), any::<bool>()).prop_map(|(len, next)| Op::Frames { count: 1, len, next }),
            4 => proptest::collection::vec(batch, 0..300).prop_map(|lens| Op::Batch { lens }),
            // Runs of small frames, so that the large one after them
            // turns a group wide anywhere from its first entry to its last.
            3 => (0..130usize, 1..=400u32, any::<bool>())
                .prop_map(|(count, len, next)| Op::Frames { count, len, next }),
            1 => (1..=2u32).prop_map(|skip| Op::Segment { skip }),
            2 => any::<u64>().prop_map(|kind| Op::Bad { kind }),
        ]
    }

    proptest! {
        /// Whatever the frames (narrow groups and wide ones, turned wide
        /// at any entry, runs past 4 GiB, segments next or skipped) and
        /// however they are pushed, every position's frame, length and
        /// segment span are as pushed, and refused frames change nothing.
        #[test]
        fn locations_hold_what_was_pushed(
            ops in proptest::collection::vec(op(), 0..300),
            ranges in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..8),
        ) {
            let mut l = Locations::default();
            let mut r = Reference::default();
            // The same frames, each by `push_checked`: the same tables.
            let mut m = Locations::default();
            // The same frames pushed as into `l`, keeping the groups only.
            let mut s = Locations::sparse();
            prop_assert!(!l.push_next(5), "no run yet");
            prop_assert_eq!(l.push_next_narrow(&[5, 6]), 0, "no run yet");
            let (mut seg, mut offset) = (0u32, 0u64);
            for op in ops {
                match op {
                    Op::Frames { count, len, next } => {
                        for _ in 0..count {
                            let f = loc(seg, offset, len);
                            let step = r.step(f);
                            prop_assert_eq!(l.check(f), Ok(step));
                            let same_segment = r.locs.last().is_some_and(|last| last.seg == seg);
                            if next && same_segment {
                                let added = l.push_next(len);
                                prop_assert_eq!(added, step == Step::Extend);
                                if !added {
                                    l.push_checked(f).unwrap();
                                }
                                if !s.push_next(len) {
                                    s.push_checked(f).unwrap();
                                }
                            } else {
                                l.push_checked(f).unwrap();
                                s.push_checked(f).unwrap();
                            }
                            m.push_checked(f).unwrap();
                            r.push(f);
                            offset += u64::from(len);
                        }
                    }
                    Op::Batch { lens } => {
                        l.push_frames(seg, &lens, offset).unwrap();
                        s.push_frames(seg, &lens, offset).unwrap();
                        for len in lens {
                            let f = loc(seg, offset, len);
                            m.push_checked(f).unwrap();
                            r.push(f);
                            offset += u64::from(len);
                        }
                    }
                    Op::Segment { skip } => {
                        seg += skip;
                        offset = 0;
                    }
                    Op::Bad { kind } => {
                        let by = kind / 3 % 1000;
                        let last_seg = r.locs.last().map(|f| f.seg);
                        let bad = match kind % 3 {
                            // A gap after the last frame (or a segment's
                            // first frame past 0).
                            0 => loc(seg, offset + 1 + by, 10),
                            // Over the last frame.
                            1 if offset > 0 => loc(seg, offset - 1 - by.min(offset - 1), 10),
                            // In a segment before the last frame's.
                            _ => match last_seg {
                                Some(s) if s > 0 => loc(s - 1 - (by as u32).min(s - 1), 0, 10),
                                _ => loc(seg, offset + 1, 10),
                            },
                        };
                        let (before, runs) = (l.to_vec(), l.runs.clone());
                        prop_assert!(l.check(bad).is_err(), "{:?}", bad);
                        prop_assert!(l.push_checked(bad).is_err(), "{:?}", bad);
                        prop_assert!(s.push_checked(bad).is_err(), "{:?}", bad);
                        prop_assert_eq!(l.to_vec(), before);
                        prop_assert_eq!(&l.runs, &runs);
                        // A batch whose first frame is out of place:
                        // refused, nothing added.
                        if !l.runs.is_empty() {
                            let before = l.len();
                            prop_assert!(l.push_frames(bad.seg, &[10, 10], bad.offset).is_err());
                            prop_assert_eq!(l.len(), before);
                        }
                    }
                }
            }
            agrees(&l, &r);
            agrees(&m, &r);
            prop_assert_eq!(l.low.to_vec(), m.low.to_vec());
            prop_assert_eq!(l.bases.to_vec(), m.bases.to_vec());
            prop_assert_eq!(l.high.to_vec(), m.high.to_vec());
            prop_assert_eq!(&l.wide, &m.wide);
            prop_assert_eq!(&l.runs, &m.runs);
            // The sparse table: the same groups and runs, no offsets.
            prop_assert_eq!(s.len(), l.len());
            prop_assert_eq!(s.bases.to_vec(), l.bases.to_vec());
            prop_assert_eq!(&s.runs, &l.runs);
            prop_assert_eq!(s.low.len() + s.high.len() + s.wide.len(), 0);
            prop_assert_eq!(s.at(1), None);
            // The group table of either gives the sparse table back.
            let (runs, bases) = l.group_table();
            let back = Locations::sparse_from(&runs, &bases, l.len() as u64).unwrap();
            prop_assert!(back.same_groups(&s) && back.is_sparse());
            prop_assert_eq!(s.group_table(), (runs, bases));
            prop_assert_eq!(back.segments(), l.segments());
            let n = r.locs.len() as u64;
            let mut asked = vec![(1, n), (n, n), (n / 3, n / 2), (0, 0), (n + 1, n + 5)];
            asked.extend(ranges.iter().map(|&(a, b)| {
                let (a, b) = (a % (n + 2), b % (n + 2));
                (a.min(b), a.max(b))
            }));
            for (from, last) in asked {
                let spans = s.spans(from, last);
                prop_assert_eq!(&spans, &l.spans(from, last));
                spans_hold(&spans, &r, from, last)?;
            }
        }
    }

    /// Each span starts at a frame of `r` and walks, frame after frame,
    /// to its end; together they hold `from..=last` (the held ones).
    fn spans_hold(
        spans: &[Span],
        r: &Reference,
        from: u64,
        last: u64,
    ) -> Result<(), TestCaseError> {
        let n = r.locs.len() as u64;
        let mut covered = Vec::new();
        for span in spans {
            let (mut q, mut at) = (span.first, span.start);
            while at < span.end {
                let f = r.locs.get(q as usize - 1).copied();
                prop_assert_eq!(
                    f.map(|f| (f.seg, f.offset)),
                    Some((span.seg, at)),
                    "position {}",
                    q
                );
                at += u64::from(f.map_or(0, |f| f.len));
                covered.push(q);
                q += 1;
            }
            prop_assert_eq!(at, span.end);
        }
        let want: Vec<u64> = (from.max(1)..=last.min(n)).collect();
        for p in &want {
            prop_assert!(
                covered.binary_search(p).is_ok(),
                "position {} not in {:?}",
                p,
                spans
            );
        }
        // No more than a group either side.
        if let (Some(lo), Some(hi)) = (covered.first(), covered.last()) {
            prop_assert!(want.first().is_some_and(|w| w - lo < GROUP));
            prop_assert!(want.last().is_some_and(|w| hi - w < GROUP));
        }
        Ok(())
    }

    /// A group turns wide at whichever entry its frames first pass 64 KiB
    /// of its first, or not at all when only its last frame is large; a
    /// wide group that ends its run short is followed by another wide
    /// group at its place.
    #[test]
    fn a_group_turns_wide_at_any_entry() {
        for large in [0, 1, 2, 8, 9, 30, 62, 63] {
            let mut l = Locations::default();
            let mut r = Reference::default();
            // Segment 0 holds 65 groups of 64 frames and one of 10 (past
            // the first 64 groups' word of wide flags), segment 1 one of
            // 64 and one of 5; the frame `large` of each group is 70,000
            // to 490,000 bytes (so that the wide groups' high halves
            // differ), the others 100.
            for (seg, count) in [(0u32, 65 * 64 + 10u64), (1, 69)] {
                let mut offset = 0;
                for i in 0..count {
                    let len = match i % 64 == large {
                        true => 70_000 * (1 + (i / 64 % 7) as u32),
                        false => 100,
                    };
                    let f = loc(seg, offset, len);
                    if i % 2 == 1 && l.push_next(len) {
                        r.push(f);
                    } else {
                        l.push_checked(f).unwrap();
                        r.push(f);
                    }
                    offset += u64::from(len);
                }
            }
            agrees(&l, &r);
            // A group turns wide at the entry after its large frame.
            let wide_in = |held: u64| usize::from(large + 1 < held);
            let wide = 65 * wide_in(64) + wide_in(10) + wide_in(64) + wide_in(5);
            assert_eq!(r.wide_groups(), wide, "large frame at entry {large}");
        }
    }

    /// A group table that does not hold together is refused, whichever
    /// of its parts is out of place; the sound one gives the sparse table
    /// back.
    #[test]
    fn a_group_table_that_does_not_hold_together_is_refused() {
        let mut l = Locations::default();
        // Segment 0: 130 frames (three groups); segment 2: 70 (two).
        for (seg, count) in [(0u32, 130u64), (2, 70)] {
            let mut offset = 0;
            for i in 0..count {
                let len = 100 + (i % 7) as u32;
                l.push_checked(loc(seg, offset, len)).unwrap();
                offset += u64::from(len);
            }
        }
        let (runs, bases) = l.group_table();
        assert_eq!((runs.len(), bases.len()), (2, 5));
        let back = Locations::sparse_from(&runs, &bases, 200).unwrap();
        assert!(back.same_groups(&l));
        type Change = fn(&mut Vec<SnapRun>, &mut Vec<u32>, &mut u64);
        let changes: [(&str, Change); 10] = [
            ("first run not at 1", |r, _, _| r[0].first = 2),
            ("a run before the one before", |r, _, _| r[1].first = 1),
            ("a run in an earlier segment", |r, _, _| r[1].seg = 0),
            ("a run with no bytes", |r, _, _| r[1].end = r[1].base),
            ("a group too many", |_, b, _| b.push(9_000)),
            ("a group too few", |_, b, _| {
                b.pop();
            }),
            ("a run's first group not at its start", |_, b, _| b[3] = 5),
            ("groups out of order", |_, b, _| b[2] = b[1]),
            ("a group past its run's end", |r, b, _| {
                b[4] = (r[1].end - r[1].base) as u32
            }),
            ("more positions than the groups", |_, _, h| *h = 300),
        ];
        for (what, change) in changes {
            let (mut r, mut b, mut h) = (runs.clone(), bases.clone(), 200);
            change(&mut r, &mut b, &mut h);
            assert!(Locations::sparse_from(&r, &b, h).is_err(), "{what}");
        }
        assert!(Locations::sparse_from(&[], &[], 0).is_ok_and(|l| l.len() == 0));
        assert!(Locations::sparse_from(&[], &[], 1).is_err());
    }

    /// Frames of a few hundred bytes take about 2 bytes a position, all
    /// that is allocated for them counted.
    #[test]
    fn a_position_takes_about_two_bytes() {
        let mut l = Locations::default();
        let n = 100_000u64;
        let mut offset = 0;
        for i in 0..n {
            let len = 280 + (i * 7 % 41) as u32;
            l.push_checked(loc(0, offset, len)).unwrap();
            offset += u64::from(len);
        }
        assert_eq!(l.at(n).map(|f| f.offset + u64::from(f.len)), Some(offset));
        let per_position = l.allocated_bytes() as f64 / n as f64;
        eprintln!("{per_position:.3} bytes a position");
        assert!(per_position >= 2.0, "{per_position}");
        assert!(per_position < 2.2, "{per_position}");
    }
}
