//! Where each position's frame is: [`Locations`], 4 bytes a position.
//!
//! Frames follow one another from byte 0 of each segment (the writer
//! appends whole groups at the segment's end, and a torn tail is cut
//! back before anything is written after it), so a frame's length is where
//! the next one starts, and a segment's frames need only their offsets.
//! The positions are kept in runs, each of frames one after another in one
//! segment; a run holds its segment, its first position, where it starts
//! and where its last frame ends, and each position its offset from the
//! start of its run as a `u32` (a new run starts in the same segment
//! before an offset would pass 4 GiB). A log has about one run a segment.
//! This was 16 bytes a position (offset, length, segment).

use super::dense::Chunked;
use super::snapshot::SnapSegment;
use super::Loc;

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
    /// `offsets[p - 1]`: position p's offset from its run's `base`.
    offsets: Chunked<u32>,
    /// In position order; `runs[0].first` is 1.
    runs: Vec<Run>,
}

impl Locations {
    /// Positions held: 1..=len.
    pub(super) fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Where position `p`'s frame is.
    #[inline]
    pub(super) fn at(&self, p: u64) -> Option<Loc> {
        let i = usize::try_from(p.checked_sub(1)?).ok()?;
        let (rel, next) = self.offsets.get_pair(i)?;
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
        let run = self.runs.get(r)?;
        let next_first = self.after_run(r);
        let offset = run.base + u64::from(*rel);
        let end = match next {
            Some(next) if p + 1 < next_first => run.base + u64::from(*next),
            _ => run.end,
        };
        Some(Loc {
            offset,
            len: u32::try_from(end.checked_sub(offset)?).ok()?,
            seg: run.seg,
        })
    }

    /// The first position after run `r`.
    fn after_run(&self, r: usize) -> u64 {
        self.runs
            .get(r + 1)
            .map_or(self.len() as u64 + 1, |n| n.first)
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
                self.offsets.push((loc.offset - run.base) as u32);
                run.end = end;
            }
            _ => {
                self.runs.push(Run {
                    first: self.offsets.len() as u64 + 1,
                    seg: loc.seg,
                    base: loc.offset,
                    end,
                });
                self.offsets.push(0);
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
        let Ok(rel) = u32::try_from(run.end - run.base) else {
            return false;
        };
        self.offsets.push(rel);
        run.end += u64::from(len);
        true
    }

    /// Checks and adds the next position's frame.
    pub(super) fn push_checked(&mut self, loc: Loc) -> Result<(), String> {
        let step = self.check(loc)?;
        self.push(loc, step);
        Ok(())
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

    /// Every position's frame length, in position order.
    pub(super) fn lens(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.runs.len()).flat_map(move |r| {
            let run = self.runs[r];
            let next_first = self.after_run(r);
            (run.first..next_first).map(move |p| {
                let i = (p - 1) as usize;
                let end = if p + 1 < next_first {
                    u64::from(self.offsets[i + 1])
                } else {
                    run.end - run.base
                };
                (end - u64::from(self.offsets[i])) as u32
            })
        })
    }

    /// Bytes allocated for the offsets and the runs.
    pub(super) fn allocated_bytes(&self) -> usize {
        self.offsets.allocated_bytes() + self.runs.capacity() * std::mem::size_of::<Run>()
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
        let bytes = l.allocated_bytes();
        assert!(bytes >= 6 * 4 + 3 * std::mem::size_of::<Run>(), "{bytes}");
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
}
