//! The generator behind `casebook demo`: a synthetic but realistic academic
//! year of one secondary school in England (Years 7–11), as the case events
//! the school's staff would have recorded.
//!
//! It owns the school calendar ([`school_days`]), the pupils and their
//! year, and nothing else: it does no I/O and reads no clock. `demo_cmd`
//! writes what it yields through the same validated path as an import, so
//! every pupil's event list must pass `domain::decide` in order.
//!
//! **Determinism.** The same `seed` and `school` give the same events, byte
//! for byte, on every machine and for ever. Hence:
//! - a PRNG of our own (SplitMix64 seeding xoshiro256**), not `rand`, whose
//!   algorithms may change between versions;
//! - floats only through `+ - * /`, `sqrt`, comparisons and `floor`/`round`,
//!   which IEEE 754 fixes exactly; never `ln`, `exp`, `powf` or `powi`, which
//!   come from the platform's libm (or LLVM's lowering) and may differ in the
//!   last bit. Skewed distributions are quantile tables with linear
//!   interpolation instead;
//! - every pupil has its own random stream derived from (seed, school,
//!   pupil number), so pupils are generated lazily, one at a time, and a
//!   change to one process does not reshuffle every other pupil.
//!
//! **Two passes.** Things that tie pupils together or must not collide are
//! planned for the whole school first (`School::plan`): suspensions and
//! permanent exclusions (with their dates), alternative provision, shared
//! incidents with a role per pupil, restorative meetings, trips. Then each
//! pupil is simulated alone (`School::pupil`): the register, absence
//! follow-up, incidents and sanctions, rewards, safeguarding, cases, plans,
//! interventions, corrections.
//!
//! The rates, their sources and which are assumptions are in
//! `docs/demo-data.md`. Names are invented (see `FIRST_NAMES_F`); any
//! resemblance to a real person is chance.

use std::collections::BTreeMap;

use casebook_engine::codes;
use casebook_engine::domain::academic_year;
use casebook_engine::event::{
    AbsenceFollowedUp, AgencyLiaison, AlternativeProvisionArranged, AttendanceMarked, CaseClosed,
    CaseEvent, CaseOpened, CaseType, ConcernEscalated, ConcernRaised, EntryCorrected,
    ExternalReferralMade, IncidentRecorded, IncidentRole, InterventionEnded, InterventionOutcome,
    InterventionSessionDelivered, InterventionStarted, KeyworkerAssigned, ParentContacted,
    Participant, PermanentExclusionIssued, PlanAgreed, PlanKind, PlanReviewed, PupilRegistered,
    ReasonableForceUsed, ReferralReceived, ReintegrationCompleted, ReintegrationMeetingHeld,
    RestorativeMeetingHeld, RewardIssued, SafeguardingDecision, SafeguardingDecisionMade,
    SanctionIssued, SanctionKind, Session, SuspensionIssued,
};
use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveTime, Utc, Weekday};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoOptions {
    /// Number of pupils on roll (a secondary has about 1,000).
    pub pupils: usize,
    /// Seed of the generator: with `school`, it fixes every event.
    pub seed: u64,
    /// The academic year, by the calendar year of its September
    /// (2025 = September 2025 to July 2026).
    pub academic_year: i32,
    /// The school (log) id. Mixed into the seed so that two schools of one
    /// trust filled with the same seed are not copies of each other.
    pub school: String,
}

/// One generated event of a pupil's case record.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoEvent {
    /// The event's id (a UUID v7 over `occurred_at`, random bits from the
    /// seed). The store keeps it, and `EntryCorrected` names it.
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    /// Staff reference of who recorded it, "S001" to "S080".
    pub actor: String,
    pub event: CaseEvent,
}

/// One pupil and their year, in the order it happened.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoPupil {
    /// The school's reference, "P00001" upwards.
    pub reference: String,
    /// Chronological (by `occurred_at`, ties in recording order); the first
    /// is the pupil's `PupilRegistered`.
    pub events: Vec<DemoEvent>,
}

/// The last academic year that had finished (its last school day is before
/// `today`): the year a demo should fill by default. For 2026-11-23 it is
/// 2025 (September 2025 to July 2026).
pub fn default_academic_year(today: NaiveDate) -> i32 {
    let current = academic_year(today);
    match school_days(current).last() {
        Some(last) if *last < today => current,
        _ => current.saturating_sub(1),
    }
}

/// The pupil days of a typical English school year: 190 weekdays.
///
/// Autumn term from the third weekday of September (two INSET days before
/// it) to the last Friday on or before 20 December, with the week of the
/// last Friday of October off; spring term from the day after an INSET day
/// on the first working day from 3 January, with the week of the third Monday
/// of February off and two weeks around Easter; summer term with the early
/// May bank holiday, the week of the spring bank holiday and one INSET day
/// after it off, running until the 190th day (mid to late July). Real
/// schools follow their local authority's dates; this is the common shape.
/// Empty when the year is outside the calendar's range.
pub fn school_days(academic_year: i32) -> Vec<NaiveDate> {
    term_dates(academic_year).unwrap_or_default()
}

/// A lazily generated school: pupils one at a time, so a 1,000-pupil year
/// (about 420,000 events) never sits in memory whole. Only the school-level
/// plan is kept: each pupil's day flags, planned suspensions and shared
/// incidents, packed once the plan is made ([`School::pack`]; about 650
/// bytes a pupil, 15 MB for 24,250, before session az packed the flags
/// and incident lists, which took about 216 of them off); a pupil's
/// profile is made again when the pupil is generated.
pub fn generate(opts: &DemoOptions) -> impl Iterator<Item = DemoPupil> {
    let school = School::plan(opts);
    (0..school.n()).map(move |i| school.pupil(i))
}

// ---------------------------------------------------------------------------
// Calibration: the rates the demo aims at (sources in docs/demo-data.md)
// ---------------------------------------------------------------------------

/// Suspensions per pupil per year at a secondary (DfE 2023/24: about 20-25
/// per 100 at secondary, 11.31 across all schools).
const SUSPENSIONS_PER_PUPIL: f64 = 0.22;
/// Chance that a suspended pupil is suspended once more (repeat
/// suspensions): a geometric tail with mean 1 / (1 - p), about 3.1.
const REPEAT_SUSPENSION: f64 = 0.68;
/// At most this many suspensions for one pupil in a year.
const MAX_SUSPENSIONS_PER_PUPIL: u32 = 9;
/// Statutory limit of suspension days in one school year.
const SUSPENSION_DAY_LIMIT: f64 = 45.0;
/// Permanent exclusions per pupil per year (DfE 2023/24: 0.13 per 100).
const PERMANENT_EXCLUSIONS_PER_PUPIL: f64 = 0.0013;
/// Share of pupils placed in part-time alternative provision (assumption).
const PROVISION_SHARE: f64 = 0.008;
/// Shared (several-pupil) incidents per pupil per year (assumption).
const SHARED_INCIDENTS_PER_PUPIL: f64 = 0.45;
/// Share of pupils with at least one safeguarding concern in the year.
/// No public source counts concerns per pupil: an assumption (see docs).
const SAFEGUARDING_SHARE: f64 = 0.10;
/// Free school meals eligibility (DfE "Schools, pupils and their
/// characteristics": about a quarter of secondary pupils).
const FSM_SHARE: f64 = 0.25;
/// SEN (support or EHCP), same release: about 15 %.
const SEN_SHARE: f64 = 0.15;
/// Of SEN pupils, those with an EHCP (about 2.5 % of all pupils).
const EHCP_SHARE_OF_SEN: f64 = 0.17;

/// A pupil's absence propensity: the share of possible sessions they miss
/// (illness, appointments, unauthorised), as a quantile table
/// (cumulative share of pupils, share of sessions missed). Tuned so that
/// about 8 % of sessions are missed, about 20 % of pupils miss 10 % or more
/// and 1-2 % miss half (DfE autumn 2023/24, secondary). FSM pupils draw the
/// larger of two quantiles, which puts about 30 % of them over 10 %.
const ABSENCE_QUANTILES: &[(f64, f64)] = &[
    (0.0, 0.0),
    (0.10, 0.008),
    (0.30, 0.026),
    (0.50, 0.045),
    (0.70, 0.068),
    (0.855, 0.1),
    (0.90, 0.13),
    (0.95, 0.19),
    (0.975, 0.29),
    (0.99, 0.5),
    (1.0, 0.85),
];
/// Chance of arriving late (code L) on a morning the pupil attends.
const LATE_QUANTILES: &[(f64, f64)] = &[
    (0.0, 0.0),
    (0.5, 0.01),
    (0.8, 0.03),
    (0.95, 0.08),
    (1.0, 0.2),
];
/// Behaviour incidents a pupil causes alone in a year, before the factors
/// for sex, FSM, SEN and year group: most pupils few, a small tail many.
const BEHAVIOUR_QUANTILES: &[(f64, f64)] = &[
    (0.0, 0.0),
    (0.3, 0.2),
    (0.5, 0.8),
    (0.7, 2.0),
    (0.85, 5.0),
    (0.95, 12.0),
    (0.99, 30.0),
    (1.0, 60.0),
];

// ---------------------------------------------------------------------------
// Staff
// ---------------------------------------------------------------------------

/// Designated safeguarding lead.
const DSL: &str = "S001";
const DEPUTY_DSLS: [&str; 2] = ["S002", "S003"];
/// Only the headteacher suspends or excludes.
const HEADTEACHER: &str = "S004";
// S005-S009: heads of Year 7-11 (see `head_of_year`).
/// Behaviour and inclusion leads (trained in positive handling).
const BEHAVIOUR_LEADS: [&str; 3] = ["S010", "S011", "S012"];
/// Pastoral keyworkers and learning mentors.
const KEYWORKERS: [&str; 8] = [
    "S013", "S014", "S015", "S016", "S017", "S018", "S019", "S020",
];
const ATTENDANCE_OFFICER: &str = "S021";
const SENCO: &str = "S022";
/// Teachers and form tutors are S023 to S080.
const FIRST_TEACHER: u32 = 23;
const LAST_STAFF: u32 = 80;

fn staff(n: u32) -> String {
    format!("S{n:03}")
}

fn head_of_year(year_group: u8) -> String {
    staff(5 + u32::from(year_group.clamp(7, 11) - 7))
}

// ---------------------------------------------------------------------------
// Times of the school day (minutes after midnight, UTC)
// ---------------------------------------------------------------------------

const DAY_START: u32 = 8 * 60 + 30;
const DAY_END: u32 = 15 * 60 + 30;
/// Reintegration meetings happen before the morning register.
const BEFORE_REGISTER: u32 = 8 * 60 + 35;
const AM_REGISTER: u32 = 8 * 60 + 50;
const PM_REGISTER: u32 = 13 * 60 + 10;
const AM_LESSONS: (u32, u32) = (9 * 60 + 5, 12 * 60 + 25);
const BREAK: (u32, u32) = (10 * 60 + 40, 10 * 60 + 58);
const LUNCH: (u32, u32) = (12 * 60 + 30, 13 * 60 + 5);
const PM_LESSONS: (u32, u32) = (13 * 60 + 15, 15 * 60 + 10);
/// A lunchtime (half-day) suspension is issued before this.
const HALF_DAY_ISSUED_BY: u32 = 12 * 60 + 40;

/// The length a school calendar needs before a year can be simulated on it.
const MIN_SCHOOL_DAYS: usize = 60;
const SCHOOL_DAYS_PER_YEAR: usize = 190;

// ---------------------------------------------------------------------------
// PRNG: SplitMix64 (seeding) and xoshiro256** (Blackman and Vigna)
// ---------------------------------------------------------------------------

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Independent random streams, one per purpose and pupil.
const TAG_SCHOOL: u64 = 1;
const TAG_PROFILE: u64 = 2;
const TAG_PUPIL: u64 = 3;
const TAG_IDS: u64 = 4;

#[derive(Clone, Debug)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn seeded(seed: u64) -> Rng {
        let mut sm = seed;
        // Four consecutive SplitMix64 outputs are never all zero, the one
        // state xoshiro cannot leave.
        Rng {
            s: [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ],
        }
    }

    /// The stream for (`tag`, `index`) under `root`.
    fn stream(root: u64, tag: u64, index: u64) -> Rng {
        let mut a = root ^ tag.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut b = splitmix64(&mut a) ^ index.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
        Rng::seeded(splitmix64(&mut b))
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi` (`lo` when the range is empty).
    fn between(&mut self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo + 1) as usize) as u32
    }

    /// Uniform day index in `lo..hi` (`lo` when empty).
    fn day_in(&mut self, lo: usize, hi: usize) -> usize {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo)
    }

    /// One of `items`, which must not be empty (all callers pass constants).
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        debug_assert!(!items.is_empty());
        items[self.below(items.len())]
    }

    /// One of `items` by integer weight (constants, total > 0).
    fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        debug_assert!(!items.is_empty());
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut x = self.below(total as usize) as u32;
        for (item, w) in items {
            if x < *w {
                return *item;
            }
            x -= w;
        }
        items[items.len() - 1].0
    }

    /// A value from a quantile table (see `ABSENCE_QUANTILES`) at `u`.
    fn quantile(table: &[(f64, f64)], u: f64) -> f64 {
        for pair in table.windows(2) {
            let ((u0, v0), (u1, v1)) = (pair[0], pair[1]);
            if u <= u1 {
                let span = u1 - u0;
                return if span > 0.0 {
                    v0 + (v1 - v0) * (u - u0) / span
                } else {
                    v1
                };
            }
        }
        table.last().map(|&(_, v)| v).unwrap_or(0.0)
    }

    /// 1 + the number of successes in a row at chance `p`, at most `max`.
    fn run_length(&mut self, p: f64, max: u32) -> u32 {
        let mut n = 1;
        while n < max && self.chance(p) {
            n += 1;
        }
        n
    }
}

/// Weights (none negative) in a binary tree of their sums, for drawing an
/// index with probability proportional to its weight while the weights
/// change: a draw and a change each take O(log n), and a draw that leaves
/// m weights out ([`WeightTree::pick_but`]) O(m + log n · log m). A scan
/// of every weight a draw (`tests::pick_weighted`, the plan's way until
/// session az) made planning a school quadratic in its pupils: 8.7 s of a
/// 30M-event bench's plan, and minutes of a 100M one's.
///
/// A draw takes one [`Rng::unit`] (none when no weight is positive) and
/// returns the index the scan returns: the first whose weights up to and
/// including it sum past `unit × total`, or the last positive one when
/// rounding leaves the draw past every weight. The tree adds the weights
/// in another order than the scan, so a draw within rounding of a boundary
/// could fall on the other side of it: the demo's pinned output, and the
/// same output as before at 300, 2,425, 24,250 and 72,750 pupils, show
/// none did.
struct WeightTree {
    /// Leaves: the weights' number rounded up to a power of two.
    leaves: usize,
    /// Node `k`'s sum at `k` (1 is the root, `leaves + i` weight `i`).
    sums: Vec<f64>,
    /// Positive weights under node `k`: a node with none has no weight,
    /// however its sum was rounded.
    counts: Vec<u32>,
}

impl WeightTree {
    fn new(weights: impl IntoIterator<Item = f64>) -> WeightTree {
        let weights: Vec<f64> = weights.into_iter().collect();
        let leaves = weights.len().next_power_of_two();
        let mut tree = WeightTree {
            leaves,
            sums: vec![0.0; 2 * leaves],
            counts: vec![0; 2 * leaves],
        };
        for (i, w) in weights.into_iter().enumerate() {
            tree.sums[leaves + i] = w;
            tree.counts[leaves + i] = u32::from(w > 0.0);
        }
        for k in (1..leaves).rev() {
            tree.sum_up(k);
        }
        tree
    }

    fn sum_up(&mut self, k: usize) {
        self.sums[k] = self.sums[2 * k] + self.sums[2 * k + 1];
        self.counts[k] = self.counts[2 * k] + self.counts[2 * k + 1];
    }

    fn get(&self, i: usize) -> f64 {
        self.sums[self.leaves + i]
    }

    fn set(&mut self, i: usize, w: f64) {
        let mut k = self.leaves + i;
        self.sums[k] = w;
        self.counts[k] = u32::from(w > 0.0);
        while k > 1 {
            k /= 2;
            self.sum_up(k);
        }
    }

    /// An index drawn by weight (see [`WeightTree`]).
    fn pick(&self, rng: &mut Rng) -> Option<usize> {
        self.pick_but(&[], rng)
    }

    /// An index drawn by weight as if the weights at `left_out` (in
    /// order, each once, each below the number of weights) were 0.
    fn pick_but(&self, left_out: &[usize], rng: &mut Rng) -> Option<usize> {
        debug_assert!(left_out.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(left_out.last().is_none_or(|&i| i < self.leaves));
        // The left-out weights and how many are positive, summed in order:
        // the part of node (lo..hi)'s sum that is left out is a difference
        // of two of these.
        let mut left_sums = Vec::with_capacity(left_out.len() + 1);
        let mut left_counts = Vec::with_capacity(left_out.len() + 1);
        let (mut sum, mut count) = (0.0, 0u32);
        left_sums.push(sum);
        left_counts.push(count);
        for &i in left_out {
            let w = self.get(i);
            sum += w;
            count += u32::from(w > 0.0);
            left_sums.push(sum);
            left_counts.push(count);
        }
        // Node k's (lo..hi) positive weights not left out, and their sum.
        // Which way a draw goes is decided by the count, never by the
        // sign of a rounded difference: a node with none weighs nothing.
        let weight = |k: usize, lo: usize, hi: usize| {
            let a = left_out.partition_point(|&i| i < lo);
            let b = left_out.partition_point(|&i| i < hi);
            match self.counts[k] - (left_counts[b] - left_counts[a]) {
                0 => (0, 0.0),
                count => (count, self.sums[k] - (left_sums[b] - left_sums[a])),
            }
        };
        let (count, total) = weight(1, 0, self.leaves);
        if count == 0 {
            return None;
        }
        let mut x = rng.unit() * total;
        let (mut k, mut lo, mut width) = (1, 0, self.leaves);
        while k < self.leaves {
            width /= 2;
            let (left_count, left) = weight(2 * k, lo, lo + width);
            if left_count > 0 && x < left {
                k *= 2;
            } else if weight(2 * k + 1, lo + width, lo + 2 * width).0 > 0 {
                x -= left;
                (k, lo) = (2 * k + 1, lo + width);
            } else {
                // Past every weight by rounding: the last positive one.
                k *= 2;
            }
        }
        Some(k - self.leaves)
    }
}

/// FNV-1a: a stable hash of the school id for the seed (std's hashers may
/// change between Rust releases).
fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

// ---------------------------------------------------------------------------
// Calendar
// ---------------------------------------------------------------------------

fn add_days(date: NaiveDate, days: i64) -> Option<NaiveDate> {
    if days >= 0 {
        date.checked_add_days(Days::new(days.unsigned_abs()))
    } else {
        date.checked_sub_days(Days::new(days.unsigned_abs()))
    }
}

/// The `n`th (1-based) Monday of a month.
fn nth_monday(year: i32, month: u32, n: u32) -> Option<NaiveDate> {
    NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Mon, u8::try_from(n).ok()?)
}

fn last_monday(year: i32, month: u32) -> Option<NaiveDate> {
    nth_monday(year, month, 5).or_else(|| nth_monday(year, month, 4))
}

/// Easter Sunday (anonymous Gregorian algorithm; integers only).
fn easter_sunday(year: i32) -> Option<NaiveDate> {
    let a = year.rem_euclid(19);
    let b = year.div_euclid(100);
    let c = year.rem_euclid(100);
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15).rem_euclid(30);
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k).rem_euclid(7);
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    NaiveDate::from_ymd_opt(year, u32::try_from(month).ok()?, u32::try_from(day).ok()?)
}

fn term_dates(year: i32) -> Option<Vec<NaiveDate>> {
    let next = year.checked_add(1)?;
    // Pupils start on the third weekday of September, after two INSET days.
    let mut first = NaiveDate::from_ymd_opt(year, 9, 1)?;
    let mut weekdays = 0;
    loop {
        if first.weekday().num_days_from_monday() < 5 {
            weekdays += 1;
            if weekdays == 3 {
                break;
            }
        }
        first = first.succ_opt()?;
    }

    let mut closed: Vec<(NaiveDate, NaiveDate)> = Vec::new();
    let week = |monday: NaiveDate| -> Option<(NaiveDate, NaiveDate)> {
        Some((monday, add_days(monday, 4)?))
    };
    // October half-term: the week of the last Friday of October.
    let oct31 = NaiveDate::from_ymd_opt(year, 10, 31)?;
    let back = (i64::from(oct31.weekday().num_days_from_monday()) - 4).rem_euclid(7);
    closed.push(week(add_days(oct31, -back - 4)?)?);
    // Autumn term ends on the last Friday on or before 20 December.
    let dec20 = NaiveDate::from_ymd_opt(year, 12, 20)?;
    let back = (i64::from(dec20.weekday().num_days_from_monday()) - 4).rem_euclid(7);
    let autumn_end = add_days(dec20, -back)?;
    // Spring term: an INSET day on the first working day from 3 January
    // (skipping the New Year bank holiday, moved to a Monday at a weekend).
    let jan1 = NaiveDate::from_ymd_opt(next, 1, 1)?;
    let new_year = match jan1.weekday() {
        Weekday::Sat => add_days(jan1, 2)?,
        Weekday::Sun => add_days(jan1, 1)?,
        _ => jan1,
    };
    let mut spring_inset = NaiveDate::from_ymd_opt(next, 1, 3)?;
    while spring_inset.weekday().num_days_from_monday() >= 5 || spring_inset == new_year {
        spring_inset = spring_inset.succ_opt()?;
    }
    // Christmas holiday and the spring INSET day.
    closed.push((add_days(autumn_end, 1)?, spring_inset));
    closed.push(week(nth_monday(next, 2, 3)?)?);
    let easter = easter_sunday(next)?;
    closed.push((add_days(easter, -6)?, add_days(easter, 5)?));
    let may_day = nth_monday(next, 5, 1)?;
    closed.push((may_day, may_day));
    let whitsun = last_monday(next, 5)?;
    // Half-term, then one INSET day on the Monday after it.
    closed.push((whitsun, add_days(whitsun, 7)?));

    let last_possible = NaiveDate::from_ymd_opt(next, 7, 31)?;
    let mut days = Vec::with_capacity(SCHOOL_DAYS_PER_YEAR);
    let mut d = first;
    while days.len() < SCHOOL_DAYS_PER_YEAR && d <= last_possible {
        let weekday = d.weekday().num_days_from_monday() < 5;
        if weekday && !closed.iter().any(|(a, b)| *a <= d && d <= *b) {
            days.push(d);
        }
        d = d.succ_opt()?;
    }
    Some(days)
}

/// Indices of the last school day before each holiday (gaps of more than
/// a weekend), and of the last day of the year.
fn break_ends(days: &[NaiveDate]) -> Vec<usize> {
    let mut ends: Vec<usize> = days
        .windows(2)
        .enumerate()
        .filter(|(_, w)| (w[1] - w[0]).num_days() > 3)
        .map(|(i, _)| i)
        .collect();
    if !days.is_empty() {
        ends.push(days.len() - 1);
    }
    ends
}

// ---------------------------------------------------------------------------
// Pupils
// ---------------------------------------------------------------------------

/// Invented first names (for girls) ...
const FIRST_NAMES_F: &[&str] = &[
    "Amarisa", "Briony", "Calla", "Delphie", "Elowen", "Fenna", "Greer", "Halia", "Ilsabet",
    "Juno", "Kestra", "Linnea", "Marisol", "Nerys", "Orla", "Perrine", "Quilla", "Rosalind",
    "Saffie", "Tamsin", "Ulla", "Verity", "Wrenna", "Xanthe", "Yarrow", "Zinnia", "Avelle",
    "Brisa", "Cressa", "Darcey", "Emberly", "Fliss", "Ginevra", "Hestia", "Isolde", "Jessamy",
];
/// ... and for boys ...
const FIRST_NAMES_M: &[&str] = &[
    "Alaric", "Bram", "Caspian", "Dorran", "Emrys", "Fabian", "Gideon", "Hollis", "Idris", "Jory",
    "Kit", "Lorcan", "Milo", "Nico", "Osric", "Pip", "Quill", "Rafferty", "Soren", "Tobin",
    "Ulric", "Vaughn", "Wilder", "Xander", "Yannick", "Zeb", "Arlo", "Bastian", "Cormac",
    "Dashiell", "Evander", "Fergal", "Gus", "Hamish", "Ivo", "Jarrah",
];
/// ... and surnames assembled from two parts, so none is a real family.
const SURNAME_HEADS: &[&str] = &[
    "Ash", "Bram", "Cald", "Dun", "Elder", "Fen", "Gar", "Hollin", "Ing", "Kes", "Lark", "Mor",
    "Nether", "Oak", "Pen", "Quen", "Rook", "Sedge", "Thorn", "Wil", "Yar", "Brack", "Cor", "Hask",
];
const SURNAME_TAILS: &[&str] = &[
    "bridge", "by", "combe", "dale", "field", "ford", "holt", "hurst", "mere", "ridge", "stead",
    "thwaite", "wick", "wood", "well", "cott",
];
const FORM_LETTERS: &[char] = &['A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'J', 'K', 'L', 'M'];
/// Pupils per form group.
const FORM_SIZE: usize = 28;

struct Profile {
    reference: String,
    name: String,
    female: bool,
    date_of_birth: NaiveDate,
    year_group: u8,
    class: String,
    site: &'static str,
    tutor: String,
    head_of_year: String,
    keyworker: &'static str,
    fsm: bool,
    sen: bool,
    ehcp: bool,
    /// Has a positive handling plan this year (SEN with a high behaviour
    /// need).
    php: bool,
    /// Share of possible sessions missed (before suspensions).
    absence: f64,
    late: f64,
    /// Expected incidents the pupil causes alone in a year.
    behaviour: f64,
    /// Relative chance of being suspended (year, sex, FSM, SEN, behaviour).
    suspension_weight: f64,
    /// Pupils per year group with this pupil's year, for choosing peers.
    peers: (usize, usize),
}

/// Pupil `i`'s year group of `n` pupils, counted from [`FIRST_YEAR_GROUP`]:
/// the year groups are equal shares of the pupils, in order.
fn year_index(i: usize, n: usize) -> usize {
    i * YEAR_GROUPS / n.max(1)
}

/// First pupil index of year group `year` (7..=12) when `n` pupils are
/// split into [`YEAR_GROUPS`] equal year groups: the first `i` whose
/// [`year_index`] is `year`'s.
fn year_start(n: usize, year: u8) -> usize {
    (usize::from(year - FIRST_YEAR_GROUP) * n).div_ceil(YEAR_GROUPS)
}

/// Pupil `i`'s reference: "P00001" upwards.
fn reference(i: usize) -> String {
    format!("P{:05}", i + 1)
}

fn make_profile(root: u64, academic_year: i32, n: usize, i: usize) -> Profile {
    let mut rng = Rng::stream(root, TAG_PROFILE, i as u64);
    let year_group = FIRST_YEAR_GROUP + year_index(i, n) as u8;
    let peers = (year_start(n, year_group), year_start(n, year_group + 1));
    let in_year = i - peers.0;
    let forms = (peers.1 - peers.0).div_ceil(FORM_SIZE).max(1);
    let form = in_year % forms;
    let mut class = format!("{year_group}{}", FORM_LETTERS[form % FORM_LETTERS.len()]);
    if form >= FORM_LETTERS.len() {
        class.push_str(&(form / FORM_LETTERS.len() + 1).to_string());
    }
    // Years 7-8 are taught on the North site, 9-11 on the Main site.
    let site = if year_group <= 8 { "North" } else { "Main" };
    let teachers = LAST_STAFF - FIRST_TEACHER + 1;
    let form_number = usize::from(year_group - 7) * 40 + form;
    let tutor = staff(FIRST_TEACHER + (form_number % teachers as usize) as u32);

    let female = rng.chance(0.5);
    let first = if female {
        rng.pick(FIRST_NAMES_F)
    } else {
        rng.pick(FIRST_NAMES_M)
    };
    let name = format!(
        "{first} {}{}",
        rng.pick(SURNAME_HEADS),
        rng.pick(SURNAME_TAILS)
    );
    // Year 7 in 2025/26 were 11 on 31 August 2025: born September 2013 to
    // August 2014.
    let born_from = NaiveDate::from_ymd_opt(academic_year - i32::from(year_group) - 5, 9, 1);
    let date_of_birth = born_from
        .and_then(|d| add_days(d, i64::from(rng.between(0, 364))))
        .unwrap_or(NaiveDate::MIN);

    let fsm = rng.chance(FSM_SHARE);
    let sen = rng.chance(SEN_SHARE);
    let ehcp = sen && rng.chance(EHCP_SHARE_OF_SEN);

    let u = if fsm {
        rng.unit().max(rng.unit())
    } else {
        rng.unit()
    };
    let absence = Rng::quantile(ABSENCE_QUANTILES, u);
    let late = Rng::quantile(LATE_QUANTILES, rng.unit());

    let raw = Rng::quantile(BEHAVIOUR_QUANTILES, rng.unit());
    let year_b = match year_group {
        7 => 0.7,
        8 => 1.0,
        9 => 1.3,
        10 => 1.15,
        _ => 0.85,
    };
    let behaviour = raw
        * year_b
        * if female { 0.6 } else { 1.4 }
        * if fsm { 1.8 } else { 0.75 }
        * if sen { 1.5 } else { 0.92 };
    // Suspension rates peak in Year 9; boys are suspended over twice as
    // often as girls and FSM pupils about four times as often as others.
    let year_s = match year_group {
        7 => 0.45,
        8 => 0.95,
        9 => 1.7,
        10 => 1.3,
        _ => 0.75,
    };
    // The square root (exact in IEEE 754) damps the behaviour tail so the
    // year, sex and FSM factors still show in who is suspended.
    let suspension_weight = (raw + 0.5).sqrt()
        * year_s
        * if female { 0.55 } else { 1.45 }
        * if fsm { 3.0 } else { 0.6 }
        * if sen { 1.7 } else { 0.88 };
    let php = sen && raw >= 5.0 && rng.chance(0.3);
    let keyworker = rng.pick(&KEYWORKERS);

    Profile {
        reference: reference(i),
        name,
        female,
        date_of_birth,
        year_group,
        class,
        site,
        tutor,
        head_of_year: head_of_year(year_group),
        keyworker,
        fsm,
        sen,
        ehcp,
        php,
        absence,
        late,
        behaviour,
        suspension_weight,
        peers,
    }
}

// ---------------------------------------------------------------------------
// The school-level plan
// ---------------------------------------------------------------------------

// Day flags of one pupil in the school plan (`School::flags`).
/// Suspended for the morning / afternoon session (code E).
const SUSP_AM: u8 = 1;
const SUSP_PM: u8 = 2;
/// At alternative provision that day (code B).
const AT_PROVISION: u8 = 4;
/// Excluded or off roll (after a permanent exclusion).
const OFF_ROLL: u8 = 8;
/// In a shared incident that day (at most one a day).
const ENGAGED: u8 = 16;
/// Must be in school (incident, meeting): no illness placed there.
const ATTEND: u8 = 32;

/// Days a pupil cannot be drawn into another shared incident.
const UNAVAILABLE: u8 = SUSP_AM | SUSP_PM | AT_PROVISION | OFF_ROLL | ENGAGED;

/// A moment of the school year: school-day index and minute after midnight
/// (UTC). Ordered, so a pupil's events sort by it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct At {
    day: usize,
    minute: u32,
}

struct PlannedSuspension {
    /// The day of the incident and of the decision.
    trigger: usize,
    /// Minute of the decision on the trigger day.
    issued: u32,
    /// Starts at lunchtime on the trigger day (a half day).
    half: bool,
    full_days: u32,
    reason: &'static str,
    extra: Option<&'static str>,
    /// Index into `School::incidents` (set in `plan_trigger_incidents`).
    incident: usize,
    /// First school day back (the reintegration meeting).
    back: usize,
}

impl PlannedSuspension {
    fn days(&self) -> f64 {
        f64::from(self.full_days) + if self.half { 0.5 } else { 0.0 }
    }

    fn start(&self) -> usize {
        if self.half {
            self.trigger
        } else {
            self.trigger + 1
        }
    }
}

struct PlannedExclusion {
    trigger: usize,
    issued: u32,
    reason: &'static str,
    incident: usize,
    /// Last school day on roll: the governing board has met and upheld it.
    last_on_roll: usize,
}

struct PlannedProvision {
    arranged: At,
    start: usize,
    /// First school day after the placement (the reintegration meeting).
    back: usize,
    weekdays: [Weekday; 2],
    provider: &'static str,
    reason: &'static str,
}

struct SharedIncident {
    at: At,
    category: &'static str,
    severity: u8,
    location: &'static str,
    /// Its text, made when each pupil's copy is recorded.
    description: Description,
    /// The staff member who recorded it, by number ([`staff`]).
    staff: u32,
    participants: Vec<(usize, IncidentRole)>,
    /// A restorative meeting between the pupils, when one was held.
    restorative: Option<At>,
    /// The pupil suspended or excluded for it (their chain replaces the
    /// usual sanction).
    escalated: Option<usize>,
}

/// Every pupil's day flags: while the school is planned, one byte a
/// pupil a day; once the plan is made ([`DayFlags::pack`]), only the days
/// with a flag set, which are a few a pupil (190 bytes a pupil were the
/// largest part of the plan held while the pupils are generated).
struct DayFlags {
    days: usize,
    /// While the school is planned: `flags[pupil * days + day]`.
    flags: Vec<u8>,
    /// Once the plan is made: each pupil's days with a flag set, in order,
    /// and their flags at the same places of `set_flags`.
    set_days: Rows<u16>,
    set_flags: Vec<u8>,
    /// While the school is planned: per day, then per year group (at
    /// `day * YEAR_GROUPS + year`), the pupils unavailable on it
    /// (`UNAVAILABLE`), in order, for drawing peers without looking at
    /// every pupil of a year ([`School::peer`]). Empty once the plan is
    /// made.
    unavailable: Vec<Vec<u32>>,
}

impl DayFlags {
    /// Sets `bits` in `pupil`'s flags of `day`.
    fn set(&mut self, pupil: usize, day: usize, bits: u8) {
        let pupils = self.flags.len() / self.days;
        let f = &mut self.flags[pupil * self.days..(pupil + 1) * self.days][day];
        if *f & UNAVAILABLE == 0 && bits & UNAVAILABLE != 0 {
            let year = year_index(pupil, pupils);
            if let Some(list) = self.unavailable.get_mut(day * YEAR_GROUPS + year) {
                if let Err(at) = list.binary_search(&(pupil as u32)) {
                    list.insert(at, pupil as u32);
                }
            }
        }
        *f |= bits;
    }

    /// `pupil`'s flags of every day, while the school is planned.
    fn row(&self, pupil: usize) -> &[u8] {
        &self.flags[pupil * self.days..(pupil + 1) * self.days]
    }

    /// `pupil`'s flags of `day` (none past the calendar).
    fn get(&self, pupil: usize, day: usize) -> Option<u8> {
        if day >= self.days {
            return None;
        }
        if !self.flags.is_empty() {
            return self.row(pupil).get(day).copied();
        }
        Some(
            match self.set_days.row(pupil).binary_search(&(day as u16)) {
                Ok(i) => self.set_flags[self.set_days.span(pupil).start + i],
                Err(_) => 0,
            },
        )
    }

    /// Keeps only the days with a flag set (the plan is made: nothing is
    /// set after).
    fn pack(&mut self) {
        // A school year's days fit a u16.
        debug_assert!(self.days <= usize::from(u16::MAX));
        let pupils = self.flags.len() / self.days.max(1);
        let set = self.flags.iter().filter(|&&f| f != 0).count();
        self.set_days = Rows::with_capacity(pupils, set);
        self.set_flags = Vec::with_capacity(set);
        let dense = std::mem::take(&mut self.flags);
        for row in dense.chunks(self.days.max(1)).take(pupils) {
            let set = row.iter().enumerate().filter(|(_, &f)| f != 0);
            self.set_days
                .push_row(set.clone().map(|(day, _)| day as u16));
            self.set_flags.extend(set.map(|(_, &f)| f));
        }
    }
}

/// Lists, one a pupil, in one allocation: pupil `i`'s is
/// `items[starts[i]..starts[i + 1]]` (what the plan keeps once made,
/// instead of a `Vec` a pupil).
#[derive(Default)]
struct Rows<T> {
    starts: Vec<u32>,
    items: Vec<T>,
}

impl<T> Rows<T> {
    fn with_capacity(rows: usize, items: usize) -> Rows<T> {
        let mut starts = Vec::with_capacity(rows + 1);
        starts.push(0);
        Rows {
            starts,
            items: Vec::with_capacity(items),
        }
    }

    /// Adds the next pupil's list.
    fn push_row(&mut self, row: impl IntoIterator<Item = T>) {
        self.items.extend(row);
        debug_assert!(u32::try_from(self.items.len()).is_ok());
        self.starts.push(self.items.len() as u32);
    }

    /// Where pupil `i`'s list is in `items`.
    fn span(&self, i: usize) -> std::ops::Range<usize> {
        self.starts[i] as usize..self.starts[i + 1] as usize
    }

    fn row(&self, i: usize) -> &[T] {
        &self.items[self.span(i)]
    }
}

/// The year groups of the demo school: 7 to 11.
const FIRST_YEAR_GROUP: u8 = 7;
const YEAR_GROUPS: usize = 5;

/// What a peer is drawn by ([`School::peer`]).
#[derive(Clone, Copy)]
enum PeerWeight {
    /// Their behaviour (`Profile::behaviour` + 0.2): who joins a group
    /// incident.
    Behaviour,
    /// Any pupil alike.
    One,
    /// Pupils with SEN twice as likely: a bullying target.
    SenTwice,
}

impl PeerWeight {
    const ALL: [PeerWeight; 3] = [PeerWeight::Behaviour, PeerWeight::One, PeerWeight::SenTwice];

    fn of(self, p: &Profile) -> f64 {
        match self {
            PeerWeight::Behaviour => p.behaviour + 0.2,
            PeerWeight::One => 1.0,
            PeerWeight::SenTwice if p.sen => 2.0,
            PeerWeight::SenTwice => 1.0,
        }
    }
}

struct School {
    root: u64,
    /// Whether code K (provision arranged by the local authority, 2024/25
    /// on) exists this year; B before.
    la_provision_code: bool,
    days: Vec<NaiveDate>,
    /// See `break_ends`.
    breaks: Vec<usize>,
    /// The academic year and the pupils on roll: with `root`, each pupil's
    /// [`Profile`] ([`make_profile`]).
    academic_year: i32,
    pupils: usize,
    /// Per pupil, per school day: `SUSP_AM` ... `ATTEND`.
    flags: DayFlags,
    suspensions: Vec<Vec<PlannedSuspension>>,
    /// Boxed: a few pupils in a thousand have one.
    exclusions: Vec<Option<Box<PlannedExclusion>>>,
    provisions: Vec<Option<Box<PlannedProvision>>>,
    incidents: Vec<SharedIncident>,
    /// While the school is planned: each pupil's incidents (indices into
    /// `incidents`), in order. Empty once the plan is made, when they are
    /// in `incident_rows` ([`School::incidents_of`]).
    pupil_incidents: Vec<Vec<usize>>,
    incident_rows: Rows<u32>,
    /// Pupils staff raise a safeguarding concern about this year.
    concerned: Vec<bool>,
    /// Trip days per year group (7..=11 at 0..=4).
    trips: [Vec<usize>; 5],
    /// While the school is planned: per [`PeerWeight`], then per year
    /// group, its pupils' weights ([`School::peer`]). Empty once the plan
    /// is made.
    peer_weights: Vec<WeightTree>,
}

/// Census reason codes for suspensions, by share: persistent disruptive
/// behaviour is about half (DfE 2023/24); the rest is an assumption shaped
/// on the same release's order.
const SUSPENSION_REASONS: &[(&str, u32)] = &[
    ("PD", 500),
    ("VA", 120),
    ("PP", 100),
    ("VP", 80),
    ("PA", 30),
    ("DA", 40),
    ("DM", 30),
    ("BU", 20),
    ("OW", 20),
    ("MT", 20),
    ("RA", 10),
    ("SM", 10),
    ("TH", 10),
    ("LG", 5),
    ("DS", 5),
];
/// Permanent exclusions: persistent disruption a third or more.
const EXCLUSION_REASONS: &[(&str, u32)] = &[
    ("PD", 35),
    ("PA", 15),
    ("PP", 15),
    ("OW", 10),
    ("DA", 10),
    ("VA", 10),
    ("SM", 5),
];
/// Lengths in days: (lunchtime half day?, whole days, weight). Mostly 1-3.
const SUSPENSION_LENGTHS: &[((bool, u32), u32)] = &[
    ((true, 0), 8),
    ((false, 1), 34),
    ((true, 1), 3),
    ((false, 2), 20),
    ((false, 3), 20),
    ((false, 4), 5),
    ((false, 5), 10),
];

/// The incident behind a reason code: category and whether another pupil
/// is its target.
fn reason_incident(code: &str, rng: &mut Rng) -> (&'static str, bool) {
    match code {
        "PD" => (
            if rng.chance(0.6) {
                "disruption"
            } else {
                "defiance"
            },
            false,
        ),
        "VA" => ("verbal_abuse_adult", false),
        "VP" => ("verbal_abuse_pupil", true),
        "PP" => ("physical_assault_pupil", true),
        "PA" => ("physical_assault_adult", false),
        "DA" => ("drugs_alcohol", false),
        "DM" => ("damage", false),
        "BU" => ("bullying", true),
        "OW" => ("prohibited_item", false),
        "MT" => ("online_misconduct", true),
        "RA" | "LG" | "DS" => ("discriminatory_abuse", true),
        "SM" => ("sexual_misconduct", true),
        _ => ("theft", false),
    }
}

fn location_for(category: &str, rng: &mut Rng) -> &'static str {
    let table: &[(&str, u32)] = match category {
        "disruption" => &[("classroom", 85), ("corridor", 10), ("canteen", 5)],
        "defiance" => &[
            ("classroom", 60),
            ("corridor", 20),
            ("playground", 10),
            ("canteen", 10),
        ],
        "mobile_phone" => &[
            ("classroom", 70),
            ("corridor", 15),
            ("canteen", 10),
            ("toilets", 5),
        ],
        "truancy" => &[("toilets", 40), ("field", 25), ("corridor", 35)],
        "verbal_abuse_adult" => &[
            ("classroom", 50),
            ("corridor", 30),
            ("playground", 10),
            ("canteen", 10),
        ],
        "verbal_abuse_pupil" => &[
            ("classroom", 30),
            ("corridor", 25),
            ("playground", 25),
            ("canteen", 20),
        ],
        "physical_assault_pupil" => &[
            ("playground", 35),
            ("corridor", 25),
            ("field", 20),
            ("canteen", 10),
            ("classroom", 10),
        ],
        "physical_assault_adult" => &[("classroom", 50), ("corridor", 40), ("playground", 10)],
        "bullying" => &[
            ("playground", 30),
            ("corridor", 25),
            ("canteen", 15),
            ("classroom", 15),
            ("toilets", 15),
        ],
        "damage" => &[("toilets", 40), ("classroom", 30), ("corridor", 30)],
        "vaping" | "drugs_alcohol" => &[("toilets", 70), ("field", 30)],
        "online_misconduct" => &[("online", 100)],
        "sexual_misconduct" | "discriminatory_abuse" => &[
            ("corridor", 30),
            ("classroom", 30),
            ("playground", 25),
            ("online", 15),
        ],
        "prohibited_item" => &[("classroom", 40), ("corridor", 30), ("playground", 30)],
        _ => &[("classroom", 40), ("corridor", 30), ("canteen", 30)],
    };
    rng.weighted(table)
}

/// Minute of an incident at `location` in the morning or afternoon session.
fn incident_minute(location: &str, pm: bool, rng: &mut Rng) -> u32 {
    let outdoors = matches!(location, "playground" | "field" | "canteen");
    let (lo, hi) = match (outdoors, pm) {
        (true, false) => BREAK,
        (true, true) => LUNCH,
        (false, false) => AM_LESSONS,
        (false, true) => PM_LESSONS,
    };
    rng.between(lo, hi)
}

fn severity_for(category: &str, rng: &mut Rng) -> u8 {
    let table: &[(u8, u32)] = match category {
        "disruption" | "truancy_group" => &[(1, 60), (2, 30), (3, 10)],
        "defiance" => &[(1, 35), (2, 40), (3, 20), (4, 5)],
        "mobile_phone" => &[(1, 70), (2, 25), (3, 5)],
        "truancy" => &[(1, 20), (2, 50), (3, 30)],
        "verbal_abuse_adult" => &[(2, 20), (3, 50), (4, 25), (5, 5)],
        "verbal_abuse_pupil" => &[(1, 20), (2, 45), (3, 30), (4, 5)],
        "physical_assault_pupil" => &[(3, 40), (4, 45), (5, 15)],
        "bullying" => &[(2, 30), (3, 50), (4, 20)],
        "damage" => &[(2, 30), (3, 45), (4, 20), (5, 5)],
        "vaping" => &[(2, 40), (3, 50), (4, 10)],
        "online_misconduct" => &[(2, 40), (3, 40), (4, 20)],
        _ => &[(2, 50), (3, 50)],
    };
    rng.weighted(table)
}

/// A planned incident's description: its words, kept as the static
/// strings they are made of until each pupil's copy is recorded.
enum Description {
    /// What happened, and where (`"{text} ({place})."`).
    Text {
        text: &'static str,
        place: &'static str,
    },
    Whole(&'static str),
}

impl Description {
    fn render(&self) -> String {
        match self {
            Description::Text { text, place } => format!("{text} ({place})."),
            Description::Whole(text) => (*text).to_string(),
        }
    }
}

fn incident_description(category: &str, location: &str, several: bool, rng: &mut Rng) -> String {
    incident_text(category, location, several, rng).render()
}

fn incident_text(category: &str, location: &str, several: bool, rng: &mut Rng) -> Description {
    let place = match location {
        "online" => "online, reported to staff by a parent",
        "classroom" => "in a lesson",
        "corridor" => "in the corridor between lessons",
        "playground" => "on the playground",
        "canteen" => "in the canteen at lunchtime",
        "toilets" => "in the toilets",
        "field" => "on the field",
        _ => "on site",
    };
    let text: &str = match (category, several) {
        ("disruption", false) => rng.pick(&[
            "Repeated talking over the teacher and distracting others after two warnings",
            "Threw equipment across the room and would not settle to work",
            "Left seat repeatedly and disrupted the start of the lesson",
        ]),
        ("disruption", true) => "A group kept up noise and silly behaviour that stopped the lesson",
        ("defiance", _) => rng.pick(&[
            "Refused to follow a reasonable instruction from staff and walked away",
            "Refused to move seats and argued with the teacher",
            "Would not hand over items when asked and refused to go to the reflection room",
        ]),
        ("mobile_phone", _) => "Used a mobile phone against the school policy; phone confiscated until the end of the day",
        ("truancy", false) => "Out of lesson without permission; found by the on-call member of staff",
        ("truancy", true) => "Pupils left the lesson together without permission and were found by on-call staff",
        ("verbal_abuse_adult", _) => rng.pick(&[
            "Swore at a member of staff when challenged about behaviour",
            "Shouted abuse at a member of staff and slammed the door",
        ]),
        ("verbal_abuse_pupil", _) => rng.pick(&[
            "Name-calling and threats between pupils; staff intervened",
            "Abusive comments made to another pupil, who reported it to the form tutor",
        ]),
        ("physical_assault_pupil", _) => rng.pick(&[
            "Fight between pupils; staff separated them and both were taken to the pastoral office",
            "A pupil pushed and punched another pupil; first aid given",
        ]),
        ("physical_assault_adult", _) => "Pushed past and struck a member of staff who was blocking the exit to keep others safe",
        ("bullying", _) => rng.pick(&[
            "Repeated unkind comments and exclusion from a friendship group over several weeks, reported by the target's parent",
            "Belongings taken and hidden repeatedly; the target reported it to the head of year",
        ]),
        ("damage", _) => rng.pick(&[
            "Deliberate damage to school property (a broken door handle and graffiti)",
            "Damaged a classroom display and a chair",
        ]),
        ("vaping", _) => "Found vaping; the vape was confiscated",
        ("drugs_alcohol", _) => "Found in possession of a substance believed to be cannabis; police informed",
        ("online_misconduct", _) => rng.pick(&[
            "Shared an unkind edited photo of another pupil in a group chat",
            "Threatening messages sent to another pupil on a social media app",
        ]),
        ("prohibited_item", _) => "A knife was found in the pupil's bag during a search; police informed",
        ("discriminatory_abuse", _) => "Used discriminatory language towards another pupil, who reported it",
        ("sexual_misconduct", _) => "Inappropriate sexualised comments and touching reported by another pupil",
        ("theft", _) => "Took money from another pupil's bag in the changing rooms",
        _ => "Behaviour incident",
    };
    Description::Text { text, place }
}

/// An incident category as a phrase for letters and notes.
fn category_label(category: &str) -> &'static str {
    match category {
        "disruption" => "disruption",
        "defiance" => "defiance",
        "mobile_phone" => "mobile phone use",
        "truancy" => "truancy from lessons",
        "verbal_abuse_adult" => "verbal abuse of a member of staff",
        "verbal_abuse_pupil" => "verbal abuse of another pupil",
        "physical_assault_pupil" => "physical aggression towards another pupil",
        "physical_assault_adult" => "physical aggression towards a member of staff",
        "bullying" => "bullying",
        "damage" => "damage to property",
        "vaping" => "vaping",
        "drugs_alcohol" => "drugs or alcohol",
        "online_misconduct" => "online misconduct",
        "prohibited_item" => "bringing a prohibited item",
        "discriminatory_abuse" => "discriminatory abuse",
        "sexual_misconduct" => "sexual misconduct",
        "theft" => "theft",
        _ => "poor behaviour",
    }
}

/// What a suspension for persistent disruptive behaviour follows: not one
/// incident but a run of them.
fn persistent_disruption(rng: &mut Rng) -> &'static str {
    rng.pick(&[
        "Persistent disruption: removed from three lessons this week after warnings, detentions and a report card; refused to go to the reflection room today.",
        "Continued to disrupt lessons after a behaviour support meeting; today walked out of two lessons and shouted across the classroom.",
        "Repeated refusal to follow instructions over several weeks despite a report card and parent meetings; today's lesson had to stop twice.",
    ])
}

impl School {
    fn plan(opts: &DemoOptions) -> School {
        let root = {
            let mut s = opts.seed ^ fnv1a(&opts.school);
            splitmix64(&mut s)
        };
        let days = school_days(opts.academic_year);
        // A calendar too short for a year (a year outside chrono's range)
        // gives an empty school rather than a panic.
        let n = if days.len() < MIN_SCHOOL_DAYS {
            0
        } else {
            opts.pupils
        };
        // Every pupil's profile, for the plan's steps only: dropped when
        // the plan is made (5 MB of RSS at 24,250 pupils, measured), each
        // made again as its pupil is generated ([`School::profile`]).
        let profiles: Vec<Profile> = (0..n)
            .map(|i| make_profile(root, opts.academic_year, n, i))
            .collect();
        let d = days.len();
        let mut school = School {
            root,
            la_provision_code: days
                .first()
                .is_some_and(|d| codes::attendance_code("K").is_some_and(|k| k.valid_on(*d))),
            breaks: break_ends(&days),
            days,
            flags: DayFlags {
                days: d,
                flags: vec![0; n * d],
                set_days: Rows::default(),
                set_flags: Vec::new(),
                unavailable: Vec::new(),
            },
            suspensions: (0..n).map(|_| Vec::new()).collect(),
            exclusions: (0..n).map(|_| None).collect(),
            provisions: (0..n).map(|_| None).collect(),
            incidents: Vec::new(),
            pupil_incidents: vec![Vec::new(); n],
            incident_rows: Rows::default(),
            concerned: vec![false; n],
            trips: Default::default(),
            peer_weights: Vec::new(),
            academic_year: opts.academic_year,
            pupils: n,
        };
        if n == 0 {
            school.pack();
            return school;
        }
        let mut rng = Rng::stream(root, TAG_SCHOOL, 0);
        let p = &profiles;
        school.flags.unavailable = vec![Vec::new(); d * YEAR_GROUPS];
        school.peer_weights = PeerWeight::ALL
            .iter()
            .flat_map(|w| {
                (0..YEAR_GROUPS as u8).map(|y| {
                    let year = FIRST_YEAR_GROUP + y;
                    let (a, b) = (year_start(n, year), year_start(n, year + 1));
                    WeightTree::new(p[a..b].iter().map(|profile| w.of(profile)))
                })
            })
            .collect();
        let mut counts = school.allocate_suspensions(p, &mut rng);
        school.plan_exclusions(p, &mut counts, &mut rng);
        school.lay_out_suspensions(&counts, &mut rng);
        school.plan_trigger_incidents(p, &mut rng);
        school.plan_provision(p, &mut rng);
        school.plan_shared_incidents(p, &mut rng);
        school.plan_concerns(p, &mut rng);
        for year in school.trips.iter_mut() {
            for _ in 0..2 {
                year.push(rng.day_in(10, d - 10));
            }
        }
        school.peer_weights = Vec::new();
        school.flags.unavailable = Vec::new();
        school.pack();
        school
    }

    /// Keeps of the plan only what generating the pupils reads, packed:
    /// the days with a flag set, and the incidents of each pupil in one
    /// list.
    fn pack(&mut self) {
        debug_assert!(u32::try_from(self.incidents.len()).is_ok());
        self.flags.pack();
        let listed = self.pupil_incidents.iter().map(Vec::len).sum();
        self.incident_rows = Rows::with_capacity(self.pupil_incidents.len(), listed);
        for list in std::mem::take(&mut self.pupil_incidents) {
            self.incident_rows
                .push_row(list.into_iter().map(|k| k as u32));
        }
    }

    /// Pupil `pupil`'s shared incidents (indices into `incidents`), in
    /// order.
    fn incidents_of(&self, pupil: usize) -> impl Iterator<Item = usize> + '_ {
        self.incident_rows.row(pupil).iter().map(|&k| k as usize)
    }

    fn n(&self) -> usize {
        self.pupils
    }

    /// Pupil `i`'s profile, as planned.
    fn profile(&self, i: usize) -> Profile {
        make_profile(self.root, self.academic_year, self.pupils, i)
    }

    fn available(&self, pupil: usize, day: usize) -> bool {
        self.flags
            .get(pupil, day)
            .is_some_and(|f| f & UNAVAILABLE == 0)
    }

    /// How many suspensions each pupil gets: the school total is fixed by
    /// the rate; pupils are drawn by weight without replacement and each
    /// drawn pupil gets a run of repeat suspensions.
    fn allocate_suspensions(&self, profiles: &[Profile], rng: &mut Rng) -> Vec<u32> {
        let n = self.n();
        let target = (n as f64 * SUSPENSIONS_PER_PUPIL).round() as u32;
        let mut counts = vec![0u32; n];
        let mut weights = WeightTree::new(profiles.iter().map(|p| p.suspension_weight));
        let mut total = 0;
        while total < target {
            let Some(i) = weights.pick(rng) else {
                break;
            };
            weights.set(i, 0.0);
            let c = rng
                .run_length(REPEAT_SUSPENSION, MAX_SUSPENSIONS_PER_PUPIL)
                .min(target - total);
            counts[i] = c;
            total += c;
        }
        counts
    }

    /// Permanent exclusions: about 0.13 per 100 pupils, most likely Year 10,
    /// boys and FSM pupils more, usually after earlier suspensions.
    fn plan_exclusions(&mut self, profiles: &[Profile], counts: &mut [u32], rng: &mut Rng) {
        let d = self.days.len();
        let wanted =
            (self.n() as f64 * PERMANENT_EXCLUSIONS_PER_PUPIL + rng.unit()).floor() as usize;
        let mut weights = WeightTree::new(profiles.iter().zip(counts.iter()).map(|(p, c)| {
            let year = match p.year_group {
                10 => 4.0,
                9 => 1.5,
                11 => 1.0,
                8 => 0.6,
                _ => 0.3,
            };
            year * if p.female { 1.0 } else { 2.2 }
                * if p.fsm { 3.0 } else { 1.0 }
                * (0.1 + f64::from(*c))
                * (0.1 + f64::from(*c))
        }));
        for _ in 0..wanted {
            let Some(i) = weights.pick(rng) else {
                break;
            };
            weights.set(i, 0.0);
            // Most permanent exclusions follow earlier suspensions.
            counts[i] = counts[i].max(2);
            let trigger = rng.day_in(d / 2, d - 20);
            let reason = self.valid_reason(rng.weighted(EXCLUSION_REASONS));
            // Excluded from the next day: E for five days, then the local
            // authority's provision until the governing board upholds it
            // (within 15 school days) and the pupil leaves the roll.
            let last_on_roll = (trigger + 15).min(d - 1);
            for day in trigger + 1..d {
                self.flags.set(i, day, OFF_ROLL);
            }
            self.flags.set(i, trigger, ENGAGED | ATTEND);
            let issued = rng.between(14 * 60, 15 * 60);
            self.exclusions[i] = Some(Box::new(PlannedExclusion {
                trigger,
                issued,
                reason,
                incident: usize::MAX,
                last_on_roll,
            }));
        }
    }

    /// `code` if the census took it in this year, else persistent
    /// disruption (for years before the 2020 codes).
    fn valid_reason(&self, code: &'static str) -> &'static str {
        let first = self.days.first().copied().unwrap_or(NaiveDate::MIN);
        if codes::reason_code(code).is_some_and(|r| r.valid_on(first)) {
            code
        } else {
            "PD"
        }
    }

    /// Dates for each pupil's suspensions: one in each of `count` equal
    /// stretches of the year (before any permanent exclusion), never past
    /// the 45-day limit.
    fn lay_out_suspensions(&mut self, counts: &[u32], rng: &mut Rng) {
        let d = self.days.len();
        for (i, &count) in counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            // Not in the first weeks: a suspension follows a history.
            let lo = 12;
            let hi = match &self.exclusions[i] {
                Some(x) => x.trigger.saturating_sub(6),
                None => d - 8,
            };
            let span = hi.saturating_sub(lo);
            let count = (count as usize).min(span / 12);
            if count == 0 {
                continue;
            }
            let stretch = span / count;
            let mut total_days = 0.0;
            for k in 0..count {
                let (half, full_days) = rng.weighted(SUSPENSION_LENGTHS);
                let days = f64::from(full_days) + if half { 0.5 } else { 0.0 };
                if total_days + days > SUSPENSION_DAY_LIMIT {
                    continue;
                }
                total_days += days;
                let a = lo + k * stretch;
                let trigger = rng.day_in(a, a + stretch - full_days as usize - 4);
                let flags = &mut self.flags;
                flags.set(i, trigger, ENGAGED | ATTEND);
                if half {
                    flags.set(i, trigger, SUSP_PM);
                }
                for day in trigger + 1..=trigger + full_days as usize {
                    flags.set(i, day, SUSP_AM | SUSP_PM);
                }
                let back = trigger + full_days as usize + 1;
                flags.set(i, back, ATTEND);
                let reason = self.valid_reason(rng.weighted(SUSPENSION_REASONS));
                let extra = if rng.chance(0.12) {
                    let e = self.valid_reason(rng.weighted(SUSPENSION_REASONS));
                    (e != reason).then_some(e)
                } else {
                    None
                };
                self.suspensions[i].push(PlannedSuspension {
                    trigger,
                    // Set with the incident, in `plan_trigger_incidents`.
                    issued: 0,
                    half,
                    full_days,
                    reason,
                    extra,
                    incident: usize::MAX,
                    back,
                });
            }
        }
    }

    /// A peer in pupil `p`'s year free on `day`, chosen by `weight`: one
    /// not `p`, not `taken` and not unavailable that day.
    fn peer(
        &self,
        profiles: &[Profile],
        p: usize,
        day: usize,
        taken: &[usize],
        rng: &mut Rng,
        weight: PeerWeight,
    ) -> Option<usize> {
        let (a, b) = profiles[p].peers;
        if day >= self.days.len() {
            // No pupil is available on a day past the calendar.
            return None;
        }
        let year = usize::from(profiles[p].year_group - FIRST_YEAR_GROUP);
        let unavailable = &self.flags.unavailable[day * YEAR_GROUPS + year];
        let mut left_out = Vec::with_capacity(unavailable.len() + 1 + taken.len());
        left_out.extend(unavailable.iter().map(|&j| j as usize - a));
        for j in std::iter::once(p).chain(taken.iter().copied()) {
            if (a..b).contains(&j) {
                if let Err(at) = left_out.binary_search(&(j - a)) {
                    left_out.insert(at, j - a);
                }
            }
        }
        self.peer_weights[weight as usize * YEAR_GROUPS + year]
            .pick_but(&left_out, rng)
            .map(|k| a + k)
    }

    fn add_incident(&mut self, incident: SharedIncident) -> usize {
        let k = self.incidents.len();
        for (p, _) in &incident.participants {
            self.flags.set(*p, incident.at.day, ENGAGED | ATTEND);
            self.pupil_incidents[*p].push(k);
        }
        if let Some(meeting) = incident.restorative {
            for (p, role) in &incident.participants {
                if *role != IncidentRole::Witness {
                    self.flags.set(*p, meeting.day, ATTEND);
                }
            }
        }
        self.incidents.push(incident);
        k
    }

    /// The incident behind each suspension and exclusion, with its target
    /// (and sometimes a witness) when the reason is about another pupil.
    fn plan_trigger_incidents(&mut self, profiles: &[Profile], rng: &mut Rng) {
        let mut work: Vec<(usize, usize, &'static str, bool, bool)> = Vec::new();
        for (i, list) in self.suspensions.iter().enumerate() {
            for (k, s) in list.iter().enumerate() {
                work.push((i, k, s.reason, s.half, false));
            }
            if let Some(x) = &self.exclusions[i] {
                work.push((i, 0, x.reason, false, true));
            }
        }
        for (i, k, reason, half, exclusion) in work {
            let day = if exclusion {
                self.exclusions[i].as_ref().map(|x| x.trigger)
            } else {
                self.suspensions[i].get(k).map(|s| s.trigger)
            };
            let Some(day) = day else { continue };
            let (category, targeted) = reason_incident(reason, rng);
            let location = location_for(category, rng);
            // A lunchtime suspension follows a morning incident.
            let minute = if half {
                incident_minute(location, false, rng)
            } else {
                incident_minute(location, rng.chance(0.4), rng)
            };
            let severity = match reason {
                "PA" | "OW" => 5,
                "PP" | "DA" | "SM" => rng.between(4, 5) as u8,
                "RA" | "LG" | "DS" => 4,
                _ => rng.between(3, 4) as u8,
            };
            let severity = if exclusion { severity.max(4) } else { severity };
            let mut participants = vec![(i, IncidentRole::Perpetrator)];
            if targeted {
                let bullying = category == "bullying";
                let mut taken = Vec::new();
                let weight = if bullying {
                    PeerWeight::SenTwice
                } else {
                    PeerWeight::One
                };
                if let Some(t) = self.peer(profiles, i, day, &taken, rng, weight) {
                    participants.push((t, IncidentRole::Target));
                    taken.push(t);
                }
                if rng.chance(0.3) {
                    if let Some(w) = self.peer(profiles, i, day, &taken, rng, PeerWeight::One) {
                        participants.push((w, IncidentRole::Witness));
                    }
                }
            }
            let several = participants.len() > 1;
            let incident = SharedIncident {
                at: At { day, minute },
                category,
                severity,
                location,
                description: if reason == "PD" {
                    Description::Whole(persistent_disruption(rng))
                } else {
                    incident_text(category, location, several, rng)
                },
                staff: rng.between(FIRST_TEACHER, LAST_STAFF),
                participants,
                restorative: None,
                escalated: Some(i),
            };
            let idx = self.add_incident(incident);
            if exclusion {
                if let Some(x) = self.exclusions[i].as_mut() {
                    x.incident = idx;
                    x.issued = x.issued.max(minute + 30);
                }
            } else if let Some(s) = self.suspensions[i].get_mut(k) {
                s.incident = idx;
                s.issued = if half {
                    (minute + rng.between(15, 40)).min(HALF_DAY_ISSUED_BY)
                } else {
                    (minute + rng.between(30, 90)).min(DAY_END - 10)
                };
            }
        }
    }

    /// Part-time alternative provision for a few pupils with high needs:
    /// two days a week for 6-12 weeks, then back to a full timetable.
    fn plan_provision(&mut self, profiles: &[Profile], rng: &mut Rng) {
        let d = self.days.len();
        let wanted = (self.n() as f64 * PROVISION_SHARE).round() as usize;
        let mut weights = WeightTree::new(profiles.iter().enumerate().map(|(i, p)| {
            if self.exclusions[i].is_some() {
                0.0
            } else {
                p.suspension_weight * p.behaviour
            }
        }));
        const PAIRS: [[Weekday; 2]; 3] = [
            [Weekday::Tue, Weekday::Thu],
            [Weekday::Mon, Weekday::Wed],
            [Weekday::Wed, Weekday::Fri],
        ];
        const PROVIDERS: [&str; 3] = [
            "Riverside Learning Centre (synthetic)",
            "Northgate Vocational Hub (synthetic)",
            "Pathways Farm School (synthetic)",
        ];
        for _ in 0..wanted {
            let Some(i) = weights.pick(rng) else {
                break;
            };
            weights.set(i, 0.0);
            for _attempt in 0..6 {
                let start = rng.day_in(15, d.saturating_sub(70));
                let back = (start + 5 * rng.between(6, 12) as usize).min(d - 2);
                let weekdays = rng.pick(&PAIRS);
                let placement: Vec<usize> = (start..back)
                    .filter(|&day| weekdays.contains(&self.days[day].weekday()))
                    .collect();
                let clash = placement
                    .iter()
                    .any(|&day| self.flags.row(i)[day] & (UNAVAILABLE | ATTEND) != 0)
                    || self.flags.row(i)[back] & UNAVAILABLE != 0;
                if clash || start < 3 {
                    continue;
                }
                for day in placement {
                    self.flags.set(i, day, AT_PROVISION);
                }
                self.flags.set(i, back, ATTEND);
                let arranged = At {
                    day: start - rng.between(1, 3) as usize,
                    minute: rng.between(10 * 60, 15 * 60),
                };
                self.provisions[i] = Some(Box::new(PlannedProvision {
                    arranged,
                    start,
                    back,
                    weekdays,
                    provider: rng.pick(&PROVIDERS),
                    reason: if self.suspensions[i].len() >= 2 {
                        rng.pick(&[
                            "Repeated suspensions; a vocational placement two days a week to re-engage with learning",
                            "At risk of permanent exclusion; part-time placement agreed with parents as a preventative measure",
                        ])
                    } else {
                        rng.pick(&[
                            "Disengaged from most lessons despite a behaviour support plan; vocational placement two days a week",
                            "Small-group provision to address social, emotional and mental health needs",
                        ])
                    },
                }));
                break;
            }
        }
    }

    /// Incidents between pupils that nobody is suspended for: fights,
    /// name-calling, bullying, online unkindness, group disruption.
    fn plan_shared_incidents(&mut self, profiles: &[Profile], rng: &mut Rng) {
        let d = self.days.len();
        let wanted = (self.n() as f64 * SHARED_INCIDENTS_PER_PUPIL).round() as usize;
        const KINDS: &[(&str, u32)] = &[
            ("verbal_abuse_pupil", 30),
            ("physical_assault_pupil", 18),
            ("bullying", 14),
            ("online_misconduct", 10),
            ("disruption", 16),
            ("damage", 5),
            ("truancy", 7),
        ];
        let mut weights = WeightTree::new(profiles.iter().map(|p| p.behaviour + 0.2));
        let mut made = 0;
        let mut attempts = 0;
        while made < wanted && attempts < wanted * 4 {
            attempts += 1;
            let day = rng.day_in(1, d);
            let Some(lead) = weights.pick(rng) else {
                break;
            };
            if !self.available(lead, day) {
                continue;
            }
            let category = rng.weighted(KINDS);
            let location = location_for(category, rng);
            let group = matches!(category, "disruption" | "damage" | "truancy");
            let mut participants = vec![];
            let mut taken = vec![lead];
            if group {
                participants.push((lead, IncidentRole::Involved));
                for _ in 0..if rng.chance(0.4) { 2 } else { 1 } {
                    if let Some(o) =
                        self.peer(profiles, lead, day, &taken, rng, PeerWeight::Behaviour)
                    {
                        participants.push((o, IncidentRole::Involved));
                        taken.push(o);
                    }
                }
            } else {
                let fight = category == "physical_assault_pupil" && rng.chance(0.4);
                participants.push((
                    lead,
                    if fight {
                        IncidentRole::Involved
                    } else {
                        IncidentRole::Perpetrator
                    },
                ));
                let bullying = category == "bullying";
                let weight = if bullying {
                    PeerWeight::SenTwice
                } else {
                    PeerWeight::One
                };
                if let Some(t) = self.peer(profiles, lead, day, &taken, rng, weight) {
                    participants.push((
                        t,
                        if fight {
                            IncidentRole::Involved
                        } else {
                            IncidentRole::Target
                        },
                    ));
                    taken.push(t);
                }
                if category != "online_misconduct" {
                    for _ in 0..rng.between(0, 2) {
                        if let Some(w) =
                            self.peer(profiles, lead, day, &taken, rng, PeerWeight::One)
                        {
                            participants.push((w, IncidentRole::Witness));
                            taken.push(w);
                        }
                    }
                }
            }
            if participants.len() < 2 {
                continue;
            }
            let minute = incident_minute(location, rng.chance(0.45), rng);
            let restorative = if !group && rng.chance(0.45) {
                let parties: Vec<usize> = participants
                    .iter()
                    .filter(|(_, r)| *r != IncidentRole::Witness)
                    .map(|(p, _)| *p)
                    .collect();
                (day + 1..(day + 5).min(d))
                    .find(|&m| {
                        parties.iter().all(|&p| {
                            self.flags.row(p)[m] & (SUSP_AM | SUSP_PM | AT_PROVISION | OFF_ROLL)
                                == 0
                        })
                    })
                    .map(|m| At {
                        day: m,
                        minute: rng.pick(&[BREAK.0 + 2, LUNCH.0 + 5, PM_LESSONS.1 - 20]),
                    })
            } else {
                None
            };
            weights.set(lead, weights.get(lead) * 0.8);
            let incident = SharedIncident {
                at: At { day, minute },
                category,
                severity: severity_for(
                    if category == "truancy" {
                        "truancy_group"
                    } else {
                        category
                    },
                    rng,
                ),
                location,
                description: incident_text(category, location, true, rng),
                staff: rng.between(FIRST_TEACHER, LAST_STAFF),
                participants,
                restorative,
                escalated: None,
            };
            self.add_incident(incident);
            made += 1;
        }
    }

    /// Who has safeguarding concerns raised this year: a fixed share of the
    /// school (an assumption, see the constant), FSM and SEN pupils more
    /// often, as children in need are.
    fn plan_concerns(&mut self, profiles: &[Profile], rng: &mut Rng) {
        let wanted = (self.n() as f64 * SAFEGUARDING_SHARE).round() as usize;
        let mut weights = WeightTree::new(
            profiles
                .iter()
                .map(|p| if p.fsm { 2.7 } else { 1.0 } * if p.sen { 1.6 } else { 1.0 }),
        );
        for _ in 0..wanted {
            let Some(i) = weights.pick(rng) else {
                break;
            };
            weights.set(i, 0.0);
            self.concerned[i] = true;
        }
    }

    /// Simulates pupil `i`'s year.
    fn pupil(&self, i: usize) -> DemoPupil {
        let profile = self.profile(i);
        let mut sim = PupilSim::new(self, i, &profile);
        sim.run();
        sim.finish()
    }
}

// ---------------------------------------------------------------------------
// One pupil's year
// ---------------------------------------------------------------------------

/// Incidents between head of year report cards.
const REPORT_CARD_EVERY: u32 = 8;

const PRESENT_AM: &str = "/";
const PRESENT_PM: &str = "\\";
const LATE: &str = "L";

fn is_in_school(code: &str) -> bool {
    matches!(code, "/" | "\\" | "L")
}

/// A missed possible session, by the engine's attendance code table.
fn is_absence(code: &str) -> bool {
    codes::attendance_code(code).is_some_and(|c| c.category.is_absence())
}

struct Timed {
    at: At,
    seq: u32,
    event: DemoEvent,
}

struct PlanState {
    id: String,
    open: bool,
}

struct InterventionState {
    id: String,
    running: bool,
}

struct PupilSim<'s> {
    school: &'s School,
    i: usize,
    p: &'s Profile,
    rng: Rng,
    ids: Rng,
    out: Vec<Timed>,
    seq: u32,
    /// Register codes per school day on roll (am, pm).
    codes: Vec<[&'static str; 2]>,
    /// Days before which everyday processes (incidents, plans, rewards,
    /// concerns) run: the whole year, or up to a permanent exclusion.
    horizon: usize,
    cases: BTreeMap<CaseType, At>,
    /// Activity that keeps a case open (latest plan, concern or session).
    case_activity: Option<At>,
    /// Pastoral or safeguarding work that has wound down, and when.
    closable: Option<(At, &'static str)>,
    plans: Vec<PlanState>,
    interventions: Vec<InterventionState>,
    has_bsp: bool,
    has_psp: bool,
    has_early_help: bool,
    solo_incidents: u32,
    next_report_card: u32,
    concerns: u32,
}

impl<'s> PupilSim<'s> {
    fn new(school: &'s School, i: usize, p: &'s Profile) -> PupilSim<'s> {
        let d = school.days.len();
        let on_roll = school.exclusions[i]
            .as_ref()
            .map_or(d, |x| x.last_on_roll + 1);
        let horizon = school.exclusions[i].as_ref().map_or(d, |x| x.trigger);
        PupilSim {
            school,
            i,
            p,
            rng: Rng::stream(school.root, TAG_PUPIL, i as u64),
            ids: Rng::stream(school.root, TAG_IDS, i as u64),
            out: Vec::with_capacity(2 * on_roll + 64),
            seq: 0,
            codes: vec![["", ""]; on_roll],
            horizon,
            cases: BTreeMap::new(),
            case_activity: None,
            closable: None,
            plans: Vec::new(),
            interventions: Vec::new(),
            has_bsp: false,
            has_psp: false,
            has_early_help: false,
            solo_incidents: 0,
            next_report_card: REPORT_CARD_EVERY,
            concerns: 0,
        }
    }

    fn day_count(&self) -> usize {
        self.school.days.len()
    }

    fn date(&self, day: usize) -> NaiveDate {
        self.school.days[day]
    }

    fn flags(&self, day: usize) -> u8 {
        self.school.flags.get(self.i, day).unwrap_or(0)
    }

    fn time(&self, at: At) -> DateTime<Utc> {
        let t =
            NaiveTime::from_hms_opt(at.minute / 60, at.minute % 60, 0).unwrap_or(NaiveTime::MIN);
        self.date(at.day).and_time(t).and_utc()
    }

    fn push(&mut self, at: At, actor: &str, event: CaseEvent) -> Uuid {
        debug_assert!(
            at.day < self.codes.len().max(1),
            "event after the pupil left the roll"
        );
        debug_assert!((DAY_START..=DAY_END).contains(&at.minute));
        let occurred_at = self.time(at);
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&self.ids.next_u64().to_le_bytes());
        random[8..].copy_from_slice(&self.ids.next_u64().to_le_bytes()[..2]);
        let millis = u64::try_from(occurred_at.timestamp_millis()).unwrap_or(0);
        let event_id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        self.seq += 1;
        self.out.push(Timed {
            at,
            seq: self.seq,
            event: DemoEvent {
                event_id,
                occurred_at,
                actor: actor.to_string(),
                event,
            },
        });
        event_id
    }

    /// `minutes` after `at`, rolling over to the next school day's morning;
    /// None past the pupil's horizon.
    fn later(&self, at: At, minutes: u32) -> Option<At> {
        self.later_within(at, minutes, self.horizon)
    }

    /// A random minute in `lo..=hi` of `day`.
    fn at_rand(&mut self, day: usize, lo: u32, hi: u32) -> At {
        At {
            day,
            minute: self.rng.between(lo, hi),
        }
    }

    /// `later` by a random number of minutes in `lo..=hi`.
    fn later_rand(&mut self, at: At, lo: u32, hi: u32) -> Option<At> {
        let minutes = self.rng.between(lo, hi);
        self.later(at, minutes)
    }

    fn later_within(&self, at: At, minutes: u32, limit: usize) -> Option<At> {
        let m = at.minute + minutes;
        if m <= DAY_END {
            return (at.day < limit).then_some(At {
                day: at.day,
                minute: m,
            });
        }
        let day = at.day + 1;
        (day < limit).then_some(At {
            day,
            minute: DAY_START + 10 + (m - DAY_END) % 60,
        })
    }

    /// The first school day on or after `date`, if the pupil is still on
    /// the everyday horizon then.
    fn day_on_or_after(&self, date: NaiveDate) -> Option<usize> {
        let day = self.school.days.partition_point(|d| *d < date);
        (day < self.horizon).then_some(day)
    }

    fn in_school(&self, day: usize, pm: bool) -> bool {
        self.codes
            .get(day)
            .is_some_and(|c| is_in_school(c[usize::from(pm)]))
    }

    fn teacher(&mut self) -> String {
        staff(self.rng.between(FIRST_TEACHER, LAST_STAFF))
    }

    fn note_case_activity(&mut self, at: At) {
        if !matches!(self.case_activity, Some(a) if a >= at) {
            self.case_activity = Some(at);
        }
    }

    fn run(&mut self) {
        let p = self.p;
        let registered = At {
            day: 0,
            minute: DAY_START,
        };
        let hoy = p.head_of_year.clone();
        self.push(
            registered,
            &hoy,
            CaseEvent::PupilRegistered(PupilRegistered {
                pupil: p.reference.clone(),
                name: p.name.clone(),
                date_of_birth: p.date_of_birth,
                year_group: p.year_group,
                class: Some(p.class.clone()),
                site: Some(p.site.to_string()),
                upn: None,
                sex: Some(if p.female { "female" } else { "male" }.to_string()),
                fsm: Some(p.fsm),
                sen: Some(p.sen),
            }),
        );
        self.fill_register();
        self.mark_register();
        self.follow_up_absence();
        self.suspensions();
        self.provision();
        self.shared_incidents();
        self.solo_incidents();
        self.send_needs();
        self.safeguarding();
        self.interventions();
        self.rewards();
        self.attendance_case();
        self.exclusion();
        self.close_cases();
    }

    fn finish(mut self) -> DemoPupil {
        self.out.sort_by_key(|t| (t.at, t.seq));
        DemoPupil {
            reference: self.p.reference.clone(),
            events: self.out.into_iter().map(|t| t.event).collect(),
        }
    }

    // --- the register -----------------------------------------------------

    /// Codes for every session on roll: fixed ones from the school plan
    /// (suspension, exclusion, provision), trips and fixtures, then absence
    /// episodes until the pupil's share of missed sessions is reached.
    fn fill_register(&mut self) {
        let school = self.school;
        let on_roll = self.codes.len();
        if let Some(x) = &school.exclusions[self.i] {
            let provision = if school.la_provision_code { "K" } else { "B" };
            for day in x.trigger + 1..on_roll {
                let code = if day <= x.trigger + 5 { "E" } else { provision };
                self.codes[day] = [code, code];
            }
        }
        for day in 0..on_roll {
            let f = self.flags(day);
            if f & SUSP_AM != 0 {
                self.codes[day][0] = "E";
            }
            if f & SUSP_PM != 0 {
                self.codes[day][1] = "E";
            }
            if f & AT_PROVISION != 0 {
                self.codes[day] = ["B", "B"];
            }
        }
        let free = |codes: &[[&str; 2]], flags: u8, day: usize, s: usize| {
            codes[day][s].is_empty() && flags & (ATTEND | ENGAGED) == 0
        };
        // Year-group trips (V) and sports fixtures (P).
        let year = usize::from(self.p.year_group - 7).min(4);
        for &day in &school.trips[year] {
            if day < on_roll
                && self.rng.chance(0.35)
                && free(&self.codes, self.flags(day), day, 0)
                && free(&self.codes, self.flags(day), day, 1)
            {
                self.codes[day] = ["V", "V"];
            }
        }
        if self.rng.chance(0.12) {
            for _ in 0..self.rng.between(1, 4) {
                let day = self.rng.day_in(0, on_roll);
                if free(&self.codes, self.flags(day), day, 1) {
                    self.codes[day][1] = "P";
                }
            }
        }
        self.place_absence(free);
        for day in 0..on_roll {
            if self.codes[day][0].is_empty() {
                self.codes[day][0] = if self.rng.chance(self.p.late) {
                    LATE
                } else {
                    PRESENT_AM
                };
            }
            if self.codes[day][1].is_empty() {
                self.codes[day][1] = PRESENT_PM;
            }
        }
    }

    fn place_absence(&mut self, free: impl Fn(&[[&str; 2]], u8, usize, usize) -> bool) {
        let on_roll = self.codes.len();
        let possible = 2 * on_roll;
        let target = (self.p.absence * possible as f64).round() as usize;
        let mut missed = 0usize;
        let r = self.p.absence;
        // A term-time holiday next to a school holiday (G), for some.
        if target >= 6 && self.rng.chance(0.07) {
            let len = self.rng.between(3, 5) as usize;
            let k = self.rng.pick(&self.school.breaks);
            let start = if self.rng.chance(0.5) {
                (k + 1).saturating_sub(len)
            } else {
                k + 1
            };
            let block = start..(start + len).min(on_roll);
            let clear = block.clone().all(|day| {
                free(&self.codes, self.flags(day), day, 0)
                    && free(&self.codes, self.flags(day), day, 1)
            });
            if clear {
                for day in block {
                    self.codes[day] = ["G", "G"];
                    missed += 2;
                }
            }
        }
        // Episode kinds by the pupil's level of absence: illness dominates
        // for most; long unexplained absence for the persistent few.
        let kinds: &[(&str, u32)] = if r < 0.15 {
            &[
                ("I", 44),
                ("Ipm", 8),
                ("M", 16),
                ("C", 3),
                ("O", 12),
                ("N", 7),
                ("U", 8),
                ("R", 2),
            ]
        } else if r < 0.35 {
            &[
                ("I", 34),
                ("Ipm", 6),
                ("M", 8),
                ("C", 3),
                ("O", 26),
                ("N", 12),
                ("U", 9),
                ("R", 2),
            ]
        } else {
            &[
                ("I", 25),
                ("Ipm", 2),
                ("M", 3),
                ("C", 2),
                ("O", 45),
                ("N", 18),
                ("U", 5),
            ]
        };
        let mut attempts = 0;
        while missed < target && attempts < 40 + 6 * target {
            attempts += 1;
            let kind = self.rng.weighted(kinds);
            let day = self.rng.day_in(0, on_roll);
            if kind == "I" {
                // More illness in winter.
                let w = match self.date(day).month() {
                    12 | 1 => 1.0,
                    11 | 2 => 0.85,
                    10 | 3 => 0.7,
                    _ => 0.5,
                };
                if !self.rng.chance(w) {
                    continue;
                }
            }
            let (code, first, sessions) = match kind {
                "I" => {
                    let days = self
                        .rng
                        .weighted(&[(1u32, 45), (2, 25), (3, 15), (4, 8), (5, 7)]);
                    let pm_start = self.rng.chance(0.15);
                    (
                        "I",
                        usize::from(pm_start),
                        2 * days as usize - usize::from(pm_start),
                    )
                }
                "Ipm" => ("I", 1, 1),
                "M" => ("M", self.rng.below(2), 1),
                "C" => ("C", 0, 2 * self.rng.between(1, 2) as usize),
                "U" => ("U", 0, 1),
                "R" => ("R", 0, 2),
                "N" => {
                    let max = if r < 0.15 {
                        1
                    } else if r < 0.35 {
                        2
                    } else {
                        4
                    };
                    ("N", 0, 2 * self.rng.between(1, max) as usize)
                }
                _ => {
                    let (lo, hi) = if r < 0.15 {
                        (1, 1)
                    } else if r < 0.35 {
                        (1, 3)
                    } else {
                        (2, 10)
                    };
                    ("O", 0, 2 * self.rng.between(lo, hi) as usize)
                }
            };
            let mut at = (day, first);
            for _ in 0..sessions {
                if missed >= target
                    || at.0 >= on_roll
                    || !free(&self.codes, self.flags(at.0), at.0, at.1)
                {
                    break;
                }
                self.codes[at.0][at.1] = code;
                missed += 1;
                at = if at.1 == 0 { (at.0, 1) } else { (at.0 + 1, 0) };
            }
        }
    }

    fn mark_register(&mut self) {
        let tutor = self.p.tutor.clone();
        for day in 0..self.codes.len() {
            for (s, session, base) in [(0, Session::Am, AM_REGISTER), (1, Session::Pm, PM_REGISTER)]
            {
                let code = self.codes[day][s];
                let minute = base + self.rng.between(0, 9);
                let date = self.date(day);
                self.push(
                    At { day, minute },
                    &tutor,
                    CaseEvent::AttendanceMarked(AttendanceMarked {
                        date,
                        session,
                        code: code.to_string(),
                    }),
                );
            }
        }
    }

    /// First-day calls for unexplained absence, home visits when it runs
    /// on, welfare calls for long illness, letters after term-time holidays.
    fn follow_up_absence(&mut self) {
        let on_roll = self.codes.len();
        let mut day = 0;
        while day < on_roll {
            let code = self.codes[day][0];
            let pm_code = self.codes[day][1];
            let (code, pm_start) = if matches!(code, "N" | "O" | "I" | "G") {
                (code, false)
            } else if matches!(pm_code, "N" | "O") {
                (pm_code, true)
            } else {
                day += 1;
                continue;
            };
            let mut end = day;
            while end + 1 < on_roll && self.codes[end + 1][0] == code {
                end += 1;
            }
            let len = end - day + 1;
            let date = self.date(day);
            match code {
                "N" | "O" => {
                    if self.rng.chance(0.85) {
                        let minute = if pm_start {
                            13 * 60 + 40
                        } else {
                            self.rng.between(9 * 60 + 20, 10 * 60 + 30)
                        };
                        let (method, outcome) = self.rng.pick(&[
                            ("phone", "No answer; voicemail and text message left asking for the reason for absence"),
                            ("phone", "Parent said the pupil overslept and would not come in; absence unauthorised"),
                            ("text", "First-day text sent; no reply by the end of the day"),
                            ("phone", "Parent gave no reason; reminded of the attendance policy"),
                        ]);
                        self.push(
                            At { day, minute },
                            ATTENDANCE_OFFICER,
                            CaseEvent::AbsenceFollowedUp(AbsenceFollowedUp {
                                date,
                                method: method.into(),
                                outcome: outcome.into(),
                            }),
                        );
                    }
                    if len >= 3 {
                        let visit = self.at_rand(day + 2, 11 * 60, 14 * 60);
                        let outcome = self.rng.pick(&[
                            "Home visit: pupil seen and safe; anxious about returning; return plan agreed with parent",
                            "Home visit: no answer; card left and the DSL informed under the children missing education procedure",
                            "Home visit: parent and pupil seen; pupil agreed to return tomorrow with keyworker meeting at the gate",
                        ]);
                        self.push(
                            visit,
                            ATTENDANCE_OFFICER,
                            CaseEvent::AbsenceFollowedUp(AbsenceFollowedUp {
                                date,
                                method: "home_visit".into(),
                                outcome: outcome.into(),
                            }),
                        );
                    }
                }
                "I" if len >= 3 && self.rng.chance(0.6) => {
                    let tutor = self.p.tutor.clone();
                    let when = self.at_rand(day + 2, 10 * 60, 12 * 60);
                    self.push(
                        when,
                        &tutor,
                        CaseEvent::AbsenceFollowedUp(AbsenceFollowedUp {
                            date,
                            method: "phone".into(),
                            outcome:
                                "Welfare call: parent says the pupil is recovering; work sent home"
                                    .into(),
                        }),
                    );
                }
                "G" if end + 1 < on_roll => {
                    let when = self.at_rand(end + 1, 9 * 60 + 30, 11 * 60);
                    self.push(
                        when,
                        ATTENDANCE_OFFICER,
                        CaseEvent::AbsenceFollowedUp(AbsenceFollowedUp {
                            date,
                            method: "letter".into(),
                            outcome: "Leave in term time was not authorised; letter sent explaining that a penalty notice may follow".into(),
                        }),
                    );
                }
                _ => {}
            }
            day = end + 1;
        }
    }

    // --- behaviour --------------------------------------------------------

    fn record_incident(&mut self, at: At, actor: &str, incident: IncidentRecorded) -> Uuid {
        self.push(at, actor, CaseEvent::IncidentRecorded(incident))
    }

    /// Sometimes an incident is corrected later: location or severity with
    /// the reason; the original stays in the log.
    fn maybe_correct(&mut self, at: At, id: Uuid, location: &str, severity: u8, chance: f64) {
        if !self.rng.chance(chance) {
            return;
        }
        let Some(when) = self.later_rand(at, 30, 200) else {
            return;
        };
        let mut changes = serde_json::Map::new();
        let reason = if location != "online" && self.rng.chance(0.5) {
            let new_location = self
                .rng
                .pick(&["corridor", "classroom", "playground", "canteen"]);
            let new_location = if new_location == location {
                "corridor"
            } else {
                new_location
            };
            let new_location = if new_location == location {
                "classroom"
            } else {
                new_location
            };
            changes.insert("location".into(), serde_json::Value::from(new_location));
            format!(
                "Location entered as {location} in error; witnesses place it in the {new_location}"
            )
        } else {
            let new_severity = if severity >= 3 {
                severity - 1
            } else {
                severity + 1
            };
            changes.insert("severity".into(), serde_json::Value::from(new_severity));
            format!("Severity reviewed by the head of year after statements were taken: {severity} to {new_severity}")
        };
        let actor = self.p.head_of_year.clone();
        self.push(
            when,
            &actor,
            CaseEvent::EntryCorrected(EntryCorrected {
                event: id,
                changes,
                reason,
            }),
        );
    }

    /// What usually follows an incident the pupil caused: a sanction by
    /// severity, a call home for the more serious, a report card for
    /// repeated ones.
    fn incident_consequences(&mut self, at: At, severity: u8, category: &str) {
        let kinds: &[(Option<SanctionKind>, u32)] = match severity {
            1 => &[(None, 80), (Some(SanctionKind::Detention), 20)],
            2 => &[
                (None, 40),
                (Some(SanctionKind::Detention), 55),
                (Some(SanctionKind::ReportCard), 5),
            ],
            3 => &[
                (None, 20),
                (Some(SanctionKind::Detention), 30),
                (Some(SanctionKind::Isolation), 30),
                (Some(SanctionKind::InternalExclusion), 10),
                (Some(SanctionKind::ReportCard), 10),
            ],
            _ => &[
                (None, 10),
                (Some(SanctionKind::Isolation), 45),
                (Some(SanctionKind::InternalExclusion), 45),
            ],
        };
        if let Some(kind) = self.rng.weighted(kinds) {
            if let Some(when) = self.later_rand(at, 10, 45) {
                let reason = match kind {
                    SanctionKind::Detention => {
                        format!("After-school detention for {}", category_label(category))
                    }
                    SanctionKind::Isolation => format!(
                        "Day in the isolation room following {}",
                        category_label(category)
                    ),
                    SanctionKind::InternalExclusion => {
                        format!(
                            "Internal exclusion in the inclusion room following {}",
                            category_label(category)
                        )
                    }
                    SanctionKind::ReportCard => {
                        "Placed on a tutor report card for two weeks".to_string()
                    }
                };
                let actor = if kind == SanctionKind::Detention {
                    self.teacher()
                } else {
                    self.p.head_of_year.clone()
                };
                self.push(
                    when,
                    &actor,
                    CaseEvent::SanctionIssued(SanctionIssued { kind, reason }),
                );
            }
        }
        let call = match severity {
            0..=1 => 0.03,
            2 => 0.15,
            _ => 0.7,
        };
        if self.rng.chance(call) {
            if let Some(when) = self.later_rand(at, 40, 150) {
                let actor = self.p.head_of_year.clone();
                let summary = format!(
                    "Phoned parent about an incident of {}; parent supportive of the school's response",
                    category_label(category)
                );
                self.push(
                    when,
                    &actor,
                    CaseEvent::ParentContacted(ParentContacted {
                        method: "phone".into(),
                        summary,
                    }),
                );
            }
        }
    }

    fn suspensions(&mut self) {
        let school = self.school;
        let list = &school.suspensions[self.i];
        for (k, s) in list.iter().enumerate() {
            let Some(incident) = school.incidents.get(s.incident) else {
                continue;
            };
            let issued = At {
                day: s.trigger,
                minute: s.issued.max(incident.at.minute + 5),
            };
            let start_date = self.date(s.start());
            self.push(
                issued,
                HEADTEACHER,
                CaseEvent::SuspensionIssued(SuspensionIssued {
                    days: s.days(),
                    reason_code: s.reason.to_string(),
                    additional_reason_codes: s.extra.iter().map(|c| c.to_string()).collect(),
                    start_date,
                    override_reason: None,
                }),
            );
            let hoy = self.p.head_of_year.clone();
            let length = match (s.half, s.full_days) {
                (true, 0) => "the afternoon (half a day)".to_string(),
                (false, 1) => "1 school day".to_string(),
                _ => format!("{} school days", s.days()),
            };
            let back_date = self.date(s.back);
            if let Some(at) = self.later_within(issued, 5, s.back) {
                self.push(
                    at,
                    &hoy,
                    CaseEvent::ParentContacted(ParentContacted {
                        method: "phone".into(),
                        summary: format!(
                            "Told parent of a suspension for {length} ({}) from {start_date}; work will be set; reintegration meeting on {back_date}",
                            s.reason
                        ),
                    }),
                );
            }
            if let Some(at) = self.later_within(issued, 30, s.back) {
                self.push(
                    at,
                    HEADTEACHER,
                    CaseEvent::ParentContacted(ParentContacted {
                        method: "letter".into(),
                        summary: "Suspension letter: reasons, length, the right to make representations to the governing board, and the reintegration meeting".into(),
                    }),
                );
            }
            if let Some(at) = self.later_within(issued, 40, s.back) {
                self.push(
                    at,
                    HEADTEACHER,
                    CaseEvent::AgencyLiaison(AgencyLiaison {
                        agency: "Local authority (exclusions team)".into(),
                        summary: format!(
                            "Notified of a suspension of {length} ({}) starting {start_date}",
                            s.reason
                        ),
                    }),
                );
            }
            let meeting = At {
                day: s.back,
                minute: BEFORE_REGISTER,
            };
            let support = match k {
                0 => "Apology and a fresh start; head of year check-in for two weeks",
                1 => "Report card to the head of year for three weeks; behaviour support plan agreed",
                2 => "Pastoral support plan with weekly keyworker meetings; timetable reviewed",
                _ => "Keyworker mentoring and a part-time reduced-lesson plan for one week, then review",
            };
            let attendees = vec!["pupil".to_string(), "parent/carer".to_string(), hoy.clone()];
            self.push(
                meeting,
                &hoy,
                CaseEvent::ReintegrationMeetingHeld(ReintegrationMeetingHeld {
                    attendees,
                    agreed_support: support.into(),
                }),
            );
            self.note_case_activity(meeting);
            if self.rng.chance(0.4) {
                if let Some(at) = self.later(meeting, 20) {
                    self.push(
                        at,
                        &hoy,
                        CaseEvent::SanctionIssued(SanctionIssued {
                            kind: SanctionKind::ReportCard,
                            reason: "Report card after the reintegration meeting".into(),
                        }),
                    );
                }
            }
            let next_trigger = list.get(k + 1).map_or(self.horizon, |n| n.trigger);
            let done = s.back + self.rng.between(3, 8) as usize;
            if done < next_trigger.min(self.horizon) && self.rng.chance(0.85) {
                let outcome = self.rng.pick(&[
                    "Back on full timetable; report targets met",
                    "Returned well; no further incidents in the review period",
                    "Settled back in with keyworker support",
                ]);
                let when = self.at_rand(done, 14 * 60, 15 * 60);
                self.push(
                    when,
                    &hoy,
                    CaseEvent::ReintegrationCompleted(ReintegrationCompleted {
                        outcome: outcome.into(),
                    }),
                );
            }
            // Repeat suspensions bring a behaviour case, a support plan, and
            // then a pastoral support plan for pupils at risk of exclusion.
            if k == 1 {
                let at = At {
                    day: s.back,
                    minute: BEFORE_REGISTER + 15,
                };
                self.open_case(
                    CaseType::Behaviour,
                    at,
                    "Second suspension this year; behaviour support needed",
                    None,
                );
                self.behaviour_support_plan(At {
                    day: s.back,
                    minute: BEFORE_REGISTER + 20,
                });
            }
            if k == 2 && !self.has_psp {
                self.has_psp = true;
                let at = At {
                    day: s.back,
                    minute: BEFORE_REGISTER + 25,
                };
                let first_due = add_days(self.date(s.back), 42).unwrap_or(self.date(s.back));
                self.run_plan(
                    PlanKind::PastoralSupport,
                    at,
                    first_due,
                    (35, 49),
                    2,
                    0.3,
                    &hoy,
                );
            }
        }
    }

    fn exclusion(&mut self) {
        let school = self.school;
        let Some(x) = &school.exclusions[self.i] else {
            return;
        };
        let Some(incident) = school.incidents.get(x.incident) else {
            return;
        };
        let on_roll = self.codes.len();
        let issued = At {
            day: x.trigger,
            minute: x.issued.max(incident.at.minute + 20).min(DAY_END - 20),
        };
        let effective = x.trigger + 1;
        if effective >= on_roll {
            return;
        }
        let effective_date = self.date(effective);
        self.push(
            issued,
            HEADTEACHER,
            CaseEvent::PermanentExclusionIssued(PermanentExclusionIssued {
                reason_code: x.reason.to_string(),
                additional_reason_codes: Vec::new(),
                effective_date,
            }),
        );
        let hoy = self.p.head_of_year.clone();
        self.push(
            At {
                day: issued.day,
                minute: issued.minute + 5,
            },
            HEADTEACHER,
            CaseEvent::ParentContacted(ParentContacted {
                method: "in_person".into(),
                summary: format!(
                    "Parent told in person of the permanent exclusion ({}) from {effective_date}",
                    x.reason
                ),
            }),
        );
        self.push(
            At { day: issued.day, minute: issued.minute + 15 },
            HEADTEACHER,
            CaseEvent::AgencyLiaison(AgencyLiaison {
                agency: "Local authority (exclusions team)".into(),
                summary: "Notified of a permanent exclusion; the local authority arranges full-time education from the sixth school day".into(),
            }),
        );
        self.push(
            At { day: effective, minute: 10 * 60 },
            HEADTEACHER,
            CaseEvent::ParentContacted(ParentContacted {
                method: "letter".into(),
                summary: "Exclusion letter: reasons, permanence, the right to make representations and to attend the governing board meeting".into(),
            }),
        );
        let last = x.last_on_roll.min(on_roll - 1);
        let board = At {
            day: last,
            minute: 14 * 60,
        };
        self.push(
            board,
            HEADTEACHER,
            CaseEvent::AgencyLiaison(AgencyLiaison {
                agency: "Local authority (exclusions team)".into(),
                summary: "Governing board considered reinstatement and upheld the exclusion; parents told of the right to an independent review panel; pupil removed from roll".into(),
            }),
        );
        // Leaving the roll ends what was open.
        let end = At {
            day: last,
            minute: 14 * 60 + 30,
        };
        let open_plans: Vec<String> = self
            .plans
            .iter()
            .filter(|p| p.open)
            .map(|p| p.id.clone())
            .collect();
        for plan in open_plans {
            self.push(
                end,
                &hoy,
                CaseEvent::PlanReviewed(PlanReviewed {
                    plan,
                    outcome: "Plan ended: the pupil left the school's roll".into(),
                    next_review_due: None,
                }),
            );
        }
        let running: Vec<String> = self
            .interventions
            .iter()
            .filter(|v| v.running)
            .map(|v| v.id.clone())
            .collect();
        for intervention in running {
            self.push(
                end,
                &hoy,
                CaseEvent::InterventionEnded(InterventionEnded {
                    intervention,
                    outcome: InterventionOutcome::Withdrawn,
                }),
            );
        }
        for p in &mut self.plans {
            p.open = false;
        }
        for v in &mut self.interventions {
            v.running = false;
        }
        if !self.cases.is_empty() {
            self.push(
                At { day: last, minute: 14 * 60 + 45 },
                &hoy,
                CaseEvent::CaseClosed(CaseClosed { outcome: "Left the school after a permanent exclusion; records passed to the new provision".into() }),
            );
            self.cases.clear();
            self.closable = None;
        }
    }

    fn provision(&mut self) {
        let school = self.school;
        let Some(ap) = &school.provisions[self.i] else {
            return;
        };
        let start_date = self.date(ap.start);
        let hoy = self.p.head_of_year.clone();
        self.push(
            ap.arranged,
            &hoy,
            CaseEvent::AlternativeProvisionArranged(AlternativeProvisionArranged {
                provider: ap.provider.to_string(),
                start_date,
                reason: ap.reason.to_string(),
                sessions_per_week: Some(4),
            }),
        );
        self.push(
            At { day: ap.arranged.day, minute: ap.arranged.minute.min(DAY_END - 5) + 5 },
            &hoy,
            CaseEvent::ParentContacted(ParentContacted {
                method: "meeting".into(),
                summary: format!(
                    "Met parent to agree the placement on {} and {} each week and how the school keeps in touch",
                    ap.weekdays[0], ap.weekdays[1]
                ),
            }),
        );
        let meeting = At {
            day: ap.back,
            minute: BEFORE_REGISTER,
        };
        if ap.back < self.horizon {
            self.push(
                meeting,
                &hoy,
                CaseEvent::ReintegrationMeetingHeld(ReintegrationMeetingHeld {
                    attendees: vec!["pupil".into(), "parent/carer".into(), hoy.clone(), "provider's key worker".into()],
                    agreed_support: "Back to a full timetable at school; keyworker check-ins twice a week for a month".into(),
                }),
            );
            let done = ap.back + 10;
            if done < self.horizon && self.rng.chance(0.8) {
                self.push(
                    At {
                        day: done,
                        minute: 14 * 60 + 30,
                    },
                    &hoy,
                    CaseEvent::ReintegrationCompleted(ReintegrationCompleted {
                        outcome: "Full timetable sustained for two weeks after the placement"
                            .into(),
                    }),
                );
            }
        }
    }

    fn shared_incidents(&mut self) {
        let school = self.school;
        let me = self.i;
        for k in school.incidents_of(me) {
            let Some(inc) = school.incidents.get(k) else {
                continue;
            };
            let Some(role) = inc
                .participants
                .iter()
                .find(|(p, _)| *p == me)
                .map(|(_, r)| *r)
            else {
                continue;
            };
            let participants = inc
                .participants
                .iter()
                .filter(|(p, _)| *p != me)
                .map(|(p, r)| Participant {
                    pupil: reference(*p),
                    role: *r,
                })
                .collect();
            let id = self.record_incident(
                inc.at,
                &staff(inc.staff),
                IncidentRecorded {
                    category: inc.category.to_string(),
                    severity: inc.severity,
                    location: inc.location.to_string(),
                    description: inc.description.render(),
                    role,
                    participants,
                    class: Some(self.p.class.clone()),
                    site: Some(self.p.site.to_string()),
                },
            );
            let escalated_for_me = inc.escalated == Some(me);
            match role {
                IncidentRole::Perpetrator | IncidentRole::Involved if !escalated_for_me => {
                    self.incident_consequences(inc.at, inc.severity, inc.category);
                    // A serious fight: staff sometimes have to hold a pupil.
                    if inc.category == "physical_assault_pupil"
                        && inc.severity >= 4
                        && self.rng.chance(0.04)
                    {
                        self.reasonable_force(
                            inc.at,
                            "to stop a fight in which pupils were being hurt",
                        );
                    }
                }
                IncidentRole::Target if inc.severity >= 3 && self.rng.chance(0.7) => {
                    if let Some(at) = self.later_rand(inc.at, 45, 150) {
                        let hoy = self.p.head_of_year.clone();
                        self.push(
                            at,
                            &hoy,
                            CaseEvent::ParentContacted(ParentContacted {
                                method: "phone".into(),
                                summary: "Told parent what happened to their child, what the school is doing, and the support offered".into(),
                            }),
                        );
                    }
                }
                _ => {}
            }
            if let (Some(meeting), true) = (inc.restorative, role != IncidentRole::Witness) {
                if meeting.day < self.horizon {
                    let mut people: Vec<String> = inc
                        .participants
                        .iter()
                        .filter(|(_, r)| *r != IncidentRole::Witness)
                        .map(|(p, _)| reference(*p))
                        .collect();
                    let facilitator = BEHAVIOUR_LEADS[k % BEHAVIOUR_LEADS.len()];
                    people.push(facilitator.to_string());
                    let agreement = [
                        "Both pupils said how it affected them; agreed to keep apart at break and to speak to a member of staff if it starts again",
                        "Apology given and accepted; agreed ground rules for the group chat and lessons",
                        "Agreed to stop the name-calling; check-in with the head of year in a week",
                    ][k % 3];
                    self.push(
                        meeting,
                        facilitator,
                        CaseEvent::RestorativeMeetingHeld(RestorativeMeetingHeld {
                            participants: people,
                            agreement: agreement.into(),
                        }),
                    );
                }
            }
            self.maybe_correct(inc.at, id, inc.location, inc.severity, 0.01);
        }
    }

    /// Incidents the pupil causes alone, on days they are in school.
    fn solo_incidents(&mut self) {
        const KINDS: &[(&str, u32)] = &[
            ("disruption", 30),
            ("defiance", 18),
            ("mobile_phone", 14),
            ("truancy", 8),
            ("verbal_abuse_adult", 8),
            ("damage", 4),
            ("vaping", 3),
            ("online_misconduct", 3),
        ];
        let d = self.day_count() as f64;
        // Suspended pupils have the history that led there: at least a few
        // incidents around each suspension.
        let school = self.school;
        let removals =
            school.suspensions[self.i].len() + usize::from(school.exclusions[self.i].is_some());
        let expected = self.p.behaviour.max(5.0 * removals as f64);
        let chance = (expected / d).min(0.5);
        for day in 0..self.horizon {
            if self.flags(day) & ENGAGED != 0 || !self.rng.chance(chance) {
                continue;
            }
            let pm = self.rng.chance(0.45);
            let pm = if self.in_school(day, pm) { pm } else { !pm };
            if !self.in_school(day, pm) {
                continue;
            }
            let category = self.rng.weighted(KINDS);
            let location = location_for(category, &mut self.rng);
            let severity = severity_for(category, &mut self.rng);
            let at = At {
                day,
                minute: incident_minute(location, pm, &mut self.rng),
            };
            let description = incident_description(category, location, false, &mut self.rng);
            let actor = self.teacher();
            let id = self.record_incident(
                at,
                &actor,
                IncidentRecorded {
                    category: category.to_string(),
                    severity,
                    location: location.to_string(),
                    description,
                    role: IncidentRole::Perpetrator,
                    participants: Vec::new(),
                    class: Some(self.p.class.clone()),
                    site: Some(self.p.site.to_string()),
                },
            );
            self.solo_incidents += 1;
            self.incident_consequences(at, severity, category);
            if category == "verbal_abuse_adult" && self.rng.chance(0.3) {
                let next = (day + 1..self.horizon.min(day + 4)).find(|&m| self.in_school(m, false));
                if let Some(m) = next {
                    let people = vec![self.p.reference.clone(), actor.clone()];
                    let lead = self.rng.pick(&BEHAVIOUR_LEADS);
                    self.push(
                        At { day: m, minute: BREAK.0 + 2 },
                        lead,
                        CaseEvent::RestorativeMeetingHeld(RestorativeMeetingHeld {
                            participants: people,
                            agreement: "Restorative conversation with the member of staff; apology made and a fresh start agreed".into(),
                        }),
                    );
                }
            }
            // Every eighth incident brings a head of year's report card.
            if self.solo_incidents == self.next_report_card {
                self.next_report_card += REPORT_CARD_EVERY;
                if let Some(at) = self.later(at, 60) {
                    let hoy = self.p.head_of_year.clone();
                    self.push(
                        at,
                        &hoy,
                        CaseEvent::SanctionIssued(SanctionIssued {
                            kind: SanctionKind::ReportCard,
                            reason: format!(
                                "Head of year report card after {} behaviour incidents",
                                self.solo_incidents
                            ),
                        }),
                    );
                }
            }
            if self.solo_incidents == 10 {
                if let Some(at) = self.later(at, 90) {
                    self.open_case(
                        CaseType::Behaviour,
                        at,
                        "Ten behaviour incidents this year; keyworker support",
                        None,
                    );
                    if let Some(plan_at) = self.later(at, 10) {
                        self.behaviour_support_plan(plan_at);
                    }
                }
            }
            if severity == 5 && self.rng.chance(0.5) {
                if let Some(at) = self.later(at, 120) {
                    let first_due = add_days(self.date(at.day), 28).unwrap_or(self.date(at.day));
                    let lead = self.rng.pick(&BEHAVIOUR_LEADS);
                    self.run_plan(
                        PlanKind::RiskAssessment,
                        at,
                        first_due,
                        (28, 42),
                        1,
                        0.6,
                        lead,
                    );
                }
            }
            self.maybe_correct(at, id, location, severity, 0.015);
        }
    }

    /// A use of force on a pupil: recorded the same day with what happened,
    /// the hold, its length, injuries and whether the parents were told.
    fn reasonable_force(&mut self, at: At, why: &str) {
        let Some(when) = self.later_rand(at, 10, 30) else {
            return;
        };
        let lead = self.rng.pick(&BEHAVIOUR_LEADS);
        let informed = self.rng.chance(0.9);
        let hold = self.rng.pick(&[
            "single-person guide to a quiet room",
            "two-person standing hold",
            "two-person seated hold",
        ]);
        let duration_minutes = self.rng.between(1, 8);
        let injuries = self.rng.pick(&[
            "None",
            "None",
            "None",
            "Red mark on the pupil's forearm; first aid checked",
        ]);
        self.push(
            when,
            lead,
            CaseEvent::ReasonableForceUsed(ReasonableForceUsed {
                staff: lead.to_string(),
                reason: format!("Force used {why}, after verbal de-escalation, space and the offer of the calm room did not work"),
                hold: hold.to_string(),
                duration_minutes,
                injuries: injuries.to_string(),
                parent_informed: informed,
            }),
        );
        if informed {
            if let Some(at) = self.later(when, 30) {
                self.push(
                    at,
                    lead,
                    CaseEvent::ParentContacted(ParentContacted {
                        method: "phone".into(),
                        summary: "Told parent the same day about the use of reasonable force, why it was needed, and the support given afterwards".into(),
                    }),
                );
            }
        }
    }

    // --- cases and plans ------------------------------------------------------

    /// Opens a case (once per type a year) and assigns a keyworker.
    fn open_case(
        &mut self,
        case_type: CaseType,
        at: At,
        summary: &str,
        keyworker: Option<&str>,
    ) -> bool {
        if self.cases.contains_key(&case_type) || at.day >= self.horizon {
            return false;
        }
        let actor = match case_type {
            CaseType::Safeguarding => DSL.to_string(),
            CaseType::Attendance => ATTENDANCE_OFFICER.to_string(),
            CaseType::Send => SENCO.to_string(),
            _ => self.p.head_of_year.clone(),
        };
        self.push(
            at,
            &actor,
            CaseEvent::CaseOpened(CaseOpened {
                case_type,
                summary: summary.to_string(),
            }),
        );
        let worker = keyworker.unwrap_or(self.p.keyworker);
        let Some(then) = self.later(at, 5) else {
            self.cases.insert(case_type, at);
            return true;
        };
        self.push(
            then,
            &actor,
            CaseEvent::KeyworkerAssigned(KeyworkerAssigned {
                staff: worker.to_string(),
            }),
        );
        self.cases.insert(case_type, then);
        self.note_case_activity(then);
        true
    }

    fn behaviour_support_plan(&mut self, at: At) {
        if self.has_bsp {
            return;
        }
        self.has_bsp = true;
        let first_due = add_days(self.date(at.day), 56).unwrap_or(self.date(at.day));
        let hoy = self.p.head_of_year.clone();
        self.run_plan(
            PlanKind::BehaviourSupport,
            at,
            first_due,
            (42, 70),
            2,
            0.25,
            &hoy,
        );
    }

    /// Agrees a plan and reviews it on its cycle. Reviews due in the last
    /// eight weeks of the year are sometimes missed, and now and then one
    /// is forgotten, so a caseload viewed at the end of the year shows
    /// overdue reviews.
    #[allow(clippy::too_many_arguments)]
    fn run_plan(
        &mut self,
        kind: PlanKind,
        agreed: At,
        first_due: NaiveDate,
        cadence_days: (u32, u32),
        min_reviews: u32,
        end_chance: f64,
        actor: &str,
    ) {
        if agreed.day >= self.horizon {
            return;
        }
        let short = match kind {
            PlanKind::BehaviourSupport => "bsp",
            PlanKind::PositiveHandling => "php",
            PlanKind::RiskAssessment => "ra",
            PlanKind::EarlyHelp => "eh",
            PlanKind::PastoralSupport => "psp",
            PlanKind::Ehcp => "ehcp",
        };
        let prefix = format!("{short}-");
        let same_kind = self
            .plans
            .iter()
            .filter(|p| p.id.starts_with(&prefix))
            .count();
        let id = format!("{prefix}{}", same_kind + 1);
        self.push(
            agreed,
            actor,
            CaseEvent::PlanAgreed(PlanAgreed {
                plan: id.clone(),
                kind,
                review_due: first_due,
            }),
        );
        self.note_case_activity(agreed);
        let last_date = self.date(self.day_count() - 1);
        let mut due = first_due;
        let mut reviews = 0;
        let mut open = true;
        loop {
            let late = i64::from(self.rng.between(0, 5));
            let Some(day) = add_days(due, late).and_then(|d| self.day_on_or_after(d)) else {
                break;
            };
            if day <= agreed.day {
                break;
            }
            let near_end = (last_date - due).num_days() <= 56;
            if (near_end && self.rng.chance(0.35)) || self.rng.chance(0.03) {
                break;
            }
            reviews += 1;
            let ends = reviews >= min_reviews && self.rng.chance(end_chance);
            let review_date = self.date(day);
            let next = if ends {
                None
            } else {
                add_days(
                    review_date,
                    i64::from(self.rng.between(cadence_days.0, cadence_days.1)),
                )
            };
            let outcome = match (kind, ends) {
                (PlanKind::Ehcp, _) => "Annual review held with parents and the local authority; outcomes updated, provision continues",
                (PlanKind::EarlyHelp, false) => "Team around the family met; actions mostly done; plan continues",
                (PlanKind::EarlyHelp, true) => "Early Help outcomes met; stepped down to universal services",
                (PlanKind::RiskAssessment, true) => "No further incidents; risk assessment closed",
                (_, true) => "Targets met; plan ended with the family's agreement",
                (_, false) => {
                    self.rng.pick(&["Some progress; targets updated", "Good progress; continue as agreed", "Little progress; extra support added"])
                }
            };
            let at = At {
                day,
                minute: self.rng.between(14 * 60, 15 * 60 + 15),
            };
            self.push(
                at,
                actor,
                CaseEvent::PlanReviewed(PlanReviewed {
                    plan: id.clone(),
                    outcome: outcome.into(),
                    next_review_due: next,
                }),
            );
            self.note_case_activity(at);
            match next {
                Some(n) => due = n,
                None => {
                    open = false;
                    break;
                }
            }
        }
        self.plans.push(PlanState { id, open });
    }

    /// SEND: EHCP annual reviews, and positive handling plans with the
    /// rare uses of force they anticipate.
    fn send_needs(&mut self) {
        let p = self.p;
        let d = self.day_count();
        if p.ehcp {
            let at = At {
                day: 0,
                minute: DAY_START + 20,
            };
            self.open_case(
                CaseType::Send,
                at,
                "EHCP in place; SENCo oversees provision and the annual review",
                Some(SENCO),
            );
            let year = self.date(0).year();
            let start = NaiveDate::from_ymd_opt(year, 10, 1).unwrap_or(self.date(0));
            let first_due = add_days(start, i64::from(self.rng.between(0, 280))).unwrap_or(start);
            self.run_plan(
                PlanKind::Ehcp,
                At {
                    day: 0,
                    minute: DAY_START + 30,
                },
                first_due,
                (364, 364),
                1,
                0.0,
                SENCO,
            );
        }
        if p.php {
            let day = self.rng.day_in(5, 40.min(d));
            let summary =
                "SEN support: social, emotional and mental health needs; positive handling plan";
            self.open_case(
                CaseType::Send,
                At {
                    day,
                    minute: 14 * 60 + 50,
                },
                summary,
                Some(SENCO),
            );
            let at = At {
                day,
                minute: 15 * 60,
            };
            let first_due = add_days(self.date(day), 84).unwrap_or(self.date(day));
            self.run_plan(
                PlanKind::PositiveHandling,
                at,
                first_due,
                (70, 98),
                2,
                0.1,
                SENCO,
            );
            let uses = self.rng.between(1, 3);
            for _ in 0..uses {
                let day = self.rng.day_in(day + 5, self.horizon);
                if day >= self.horizon
                    || !self.in_school(day, false)
                    || self.flags(day) & ENGAGED != 0
                {
                    continue;
                }
                let at = At {
                    day,
                    minute: incident_minute("classroom", false, &mut self.rng),
                };
                let actor = self.teacher();
                self.record_incident(
                    at,
                    &actor,
                    IncidentRecorded {
                        category: "physical_assault_adult".into(),
                        severity: 4,
                        location: "classroom".into(),
                        description: "Became highly distressed, threw furniture and tried to hit staff; the class was moved out (in a lesson).".into(),
                        role: IncidentRole::Perpetrator,
                        participants: Vec::new(),
                        class: Some(p.class.clone()),
                        site: Some(p.site.to_string()),
                    },
                );
                self.reasonable_force(at, "as set out in the pupil's positive handling plan, to prevent injury to staff and other pupils");
            }
        }
    }

    // --- safeguarding ---------------------------------------------------------

    fn safeguarding(&mut self) {
        let d = self.horizon;
        if d < 20 {
            return;
        }
        let concerned = self.school.concerned[self.i];
        // Referrals from outside, for a few.
        if self.rng.chance(0.035) {
            self.referral(concerned);
        }
        if !concerned {
            return;
        }
        let count = (self.rng.run_length(0.4, 5) as usize).saturating_sub(self.concerns as usize);
        if count == 0 {
            return;
        }
        let stretch = (d - 4) / count;
        for k in 0..count {
            let day = self.rng.day_in(2 + k * stretch, 2 + (k + 1) * stretch - 2);
            self.concern(day, None);
        }
    }

    /// A referral from outside; those that raise a concern only for the
    /// pupils the school plan gave concerns.
    fn referral(&mut self, concerned: bool) {
        let d = self.horizon;
        let sources: &[(&str, u32)] = if concerned {
            &[
                ("encompass", 35),
                ("social_care", 20),
                ("parent", 25),
                ("nurse", 10),
                ("transition", 10),
            ]
        } else {
            &[("social_care", 20), ("parent", 25), ("transition", 10)]
        };
        let source = self.rng.weighted(sources);
        let source = if source == "transition" && self.p.year_group != 7 {
            "parent"
        } else {
            source
        };
        let day = if source == "transition" {
            self.rng.day_in(1, 8)
        } else {
            self.rng.day_in(3, d - 10)
        };
        let at = At {
            day,
            minute: DAY_START + 5,
        };
        let (from, reason) = match source {
            "encompass" => ("Police (Operation Encompass notification)", "Police attended a domestic abuse incident at the pupil's home last night; the pupil was present"),
            "social_care" => ("Children's social care", "The pupil is open to children's social care as a child in need; school invited to the CIN meetings"),
            "nurse" => ("School nurse", "Concern about weight loss and low mood seen at a health check"),
            "transition" => ("Primary school (transition)", "Transition information: the family had Early Help support in Year 6 and the pupil is anxious about secondary school"),
            _ => ("Parent/carer", "Parent asks for support: the pupil is anxious, sleeping badly and reluctant to come to school"),
        };
        let actor = if source == "parent" {
            self.p.head_of_year.clone()
        } else {
            DSL.to_string()
        };
        self.push(
            at,
            &actor,
            CaseEvent::ReferralReceived(ReferralReceived {
                source: from.into(),
                reason: reason.into(),
            }),
        );
        self.note_case_activity(at);
        let Some(next) = self.later(at, 15) else {
            return;
        };
        match source {
            "encompass" => self.concern(next.day, Some((next.minute, "domestic_abuse"))),
            "nurse" => self.concern(next.day, Some((next.minute, "mental_health"))),
            "social_care" => {
                self.open_case(
                    CaseType::Safeguarding,
                    next,
                    "Child in need plan led by children's social care; school attends CIN meetings",
                    Some(DSL),
                );
                let mut day = next.day;
                loop {
                    let m = day + self.rng.between(25, 35) as usize;
                    if m >= self.horizon {
                        break;
                    }
                    let at = self.at_rand(m, 10 * 60, 15 * 60);
                    let summary = self.rng.pick(&[
                        "CIN review meeting attended; attendance and wellbeing reported; plan continues",
                        "Social worker visited school and saw the pupil; school to keep sharing attendance weekly",
                        "Core group meeting: actions for school are keyworker check-ins and a homework club place",
                    ]);
                    self.push(
                        at,
                        DSL,
                        CaseEvent::AgencyLiaison(AgencyLiaison {
                            agency: "Children's social care".into(),
                            summary: summary.into(),
                        }),
                    );
                    self.note_case_activity(at);
                    day = m;
                }
            }
            "transition" => {
                self.open_case(
                    CaseType::Pastoral,
                    next,
                    "Transition support from primary school information",
                    None,
                );
                self.start_intervention(next.day + 5, "self_esteem");
            }
            _ => {
                self.open_case(
                    CaseType::Pastoral,
                    next,
                    "Parent-requested support for anxiety and attendance",
                    None,
                );
                self.start_intervention(next.day + 3, "emotional_regulation");
                self.closable = Some((
                    At {
                        day: (next.day + 60).min(self.horizon.saturating_sub(1)),
                        minute: 15 * 60 + 10,
                    },
                    "Anxiety support completed; pupil attending and settled",
                ));
            }
        }
    }

    /// One safeguarding concern: raised, escalated to the DSL (or a deputy),
    /// decided with a rationale, and followed up by what was decided.
    fn concern(&mut self, day: usize, given: Option<(u32, &'static str)>) {
        if day >= self.horizon {
            return;
        }
        const CATEGORIES: &[(&str, u32)] = &[
            ("mental_health", 18),
            ("self_harm", 8),
            ("neglect", 12),
            ("emotional_abuse", 8),
            ("domestic_abuse", 10),
            ("physical_abuse", 5),
            ("sexual_abuse", 2),
            ("child_on_child", 8),
            ("online_safety", 8),
            ("criminal_exploitation", 3),
            ("attendance_welfare", 6),
            ("substance_misuse", 3),
            ("young_carer", 4),
            ("radicalisation", 1),
        ];
        let (minute, category) = match given {
            Some(g) => g,
            None => (
                self.rng.between(9 * 60, 15 * 60),
                self.rng.weighted(CATEGORIES),
            ),
        };
        self.concerns += 1;
        let summary = match category {
            "mental_health" => "Pupil tearful in lessons and said they feel low most days; not eating lunch",
            "self_harm" => "Fresh marks seen on the pupil's arm in PE; pupil said it helps when things get too much",
            "neglect" => "Pupil often hungry, in unwashed uniform, and says there is little food at home",
            "emotional_abuse" => "Pupil says they are shouted at and belittled at home and is frightened to take a report home",
            "domestic_abuse" => "Pupil disclosed arguments and violence between adults at home last weekend",
            "physical_abuse" => "Bruising on the pupil's upper arm; account of how it happened was inconsistent",
            "sexual_abuse" => "Pupil disclosed to a trusted adult something that may indicate sexual abuse; exact words recorded",
            "child_on_child" => "Pupil reports being pressured by older pupils to share images",
            "online_safety" => "Pupil is talking online to an adult they have not met who asks them to keep it secret",
            "criminal_exploitation" => "Pupil seen with new expensive items and missing from lessons; older youths waiting at the gate",
            "attendance_welfare" => "Absent several days with no contact from home; siblings at other schools also absent",
            "substance_misuse" => "Pupil came to school smelling of alcohol and says they drink at weekends",
            "young_carer" => "Pupil is caring for a parent with a long-term illness and is tired and late most days",
            _ => "Pupil shared extremist material in a group chat and repeated views from it in class",
        };
        let raiser = if given.is_some() {
            DEPUTY_DSLS[0].to_string()
        } else {
            self.teacher()
        };
        let raised = At { day, minute };
        self.push(
            raised,
            &raiser,
            CaseEvent::ConcernRaised(ConcernRaised {
                category: category.into(),
                summary: summary.into(),
            }),
        );
        self.note_case_activity(raised);
        let Some(escalated) = self.later_rand(raised, 5, 30) else {
            return;
        };
        let to = if self.rng.chance(0.8) {
            DSL
        } else {
            self.rng.pick(&DEPUTY_DSLS)
        };
        self.push(
            escalated,
            &raiser,
            CaseEvent::ConcernEscalated(ConcernEscalated {
                to: to.into(),
                reason: "Passed to the DSL the same day as the school's procedure requires".into(),
            }),
        );
        let Some(decided) = self.later_rand(escalated, 30, 180) else {
            return;
        };
        use SafeguardingDecision as D;
        let choices: &[(SafeguardingDecision, u32)] = match category {
            "sexual_abuse" => &[(D::ReferSocialCare, 60), (D::ReferPolice, 40)],
            "criminal_exploitation" => &[
                (D::ReferSocialCare, 50),
                (D::ReferPolice, 40),
                (D::Monitor, 10),
            ],
            "physical_abuse" | "domestic_abuse" => &[
                (D::ReferSocialCare, 35),
                (D::Monitor, 40),
                (D::EarlyHelp, 20),
                (D::ReferPolice, 5),
            ],
            "neglect" | "emotional_abuse" => &[
                (D::ReferSocialCare, 30),
                (D::EarlyHelp, 35),
                (D::Monitor, 35),
            ],
            "online_safety" | "child_on_child" => &[
                (D::Monitor, 50),
                (D::NoFurtherAction, 25),
                (D::ReferPolice, 10),
                (D::EarlyHelp, 5),
                (D::ReferSocialCare, 10),
            ],
            "young_carer" | "attendance_welfare" => &[
                (D::EarlyHelp, 50),
                (D::Monitor, 40),
                (D::NoFurtherAction, 10),
            ],
            "radicalisation" => &[(D::ReferPolice, 60), (D::Monitor, 40)],
            _ => &[
                (D::Monitor, 45),
                (D::NoFurtherAction, 20),
                (D::EarlyHelp, 20),
                (D::ReferSocialCare, 15),
            ],
        };
        let decision = self.rng.weighted(choices);
        let rationale = match decision {
            D::Monitor => "Indicators present but no disclosure of harm and parents engaging; below the threshold for Early Help. Keyworker to check in weekly; staff to log any further concern; review in four weeks",
            D::EarlyHelp => "Family needs support across more than one area but the child is not at risk of significant harm; parent consents to an Early Help assessment led by school",
            D::ReferSocialCare => "Reasonable cause to suspect the child is suffering or likely to suffer significant harm; referral to children's social care through the MASH the same day, as the threshold guidance requires",
            D::ReferPolice => "A crime may have been committed and the child may be at risk; reported to the police and the MASH informed",
            D::NoFurtherAction => "Explained by the pupil and parent; no indicator of harm on follow-up; no further action beyond usual pastoral care",
        };
        self.push(
            decided,
            to,
            CaseEvent::SafeguardingDecisionMade(SafeguardingDecisionMade {
                decision,
                rationale: rationale.into(),
            }),
        );
        self.note_case_activity(decided);
        let Some(after) = self.later(decided, 20) else {
            return;
        };
        let n = self.concerns;
        let school_year = self.date(0).year();
        match decision {
            D::ReferSocialCare | D::ReferPolice => {
                let (agency, reference) = if decision == D::ReferSocialCare {
                    (
                        "Children's social care (MASH)",
                        format!("MASH/{school_year}/{:05}", self.rng.between(1, 99_999)),
                    )
                } else {
                    (
                        "Police",
                        format!("CAD {:04}-{:02}", self.rng.between(1, 9_999), n),
                    )
                };
                self.push(
                    after,
                    to,
                    CaseEvent::ExternalReferralMade(ExternalReferralMade {
                        agency: agency.into(),
                        reason: format!("{} ({})", summary, category.replace('_', " ")),
                        reference: Some(reference),
                    }),
                );
                self.open_case(
                    CaseType::Safeguarding,
                    At {
                        day: after.day,
                        minute: after.minute.min(DAY_END - 10) + 5,
                    },
                    "Safeguarding case after a referral to an outside agency",
                    Some(to),
                );
                let mut day = after.day;
                for _ in 0..self.rng.between(1, 3) {
                    day += self.rng.between(3, 15) as usize;
                    if day >= self.horizon {
                        break;
                    }
                    let at = At {
                        day,
                        minute: self.rng.between(10 * 60, 15 * 60),
                    };
                    let summary = self.rng.pick(&[
                        "MASH outcome: threshold met; single assessment started and a social worker allocated",
                        "Strategy discussion held; school shared attendance and chronology",
                        "Social worker updated the DSL; the family is engaging with the assessment",
                        "MASH outcome: below the threshold for social care; Early Help offered",
                    ]);
                    self.push(
                        at,
                        to,
                        CaseEvent::AgencyLiaison(AgencyLiaison {
                            agency: "Children's social care".into(),
                            summary: summary.into(),
                        }),
                    );
                    self.note_case_activity(at);
                }
            }
            D::EarlyHelp => {
                self.open_case(
                    CaseType::Safeguarding,
                    after,
                    "Early Help assessment led by school",
                    None,
                );
                if !self.has_early_help {
                    self.has_early_help = true;
                    if let Some(day) = Some(after.day + self.rng.between(5, 15) as usize)
                        .filter(|&d| d < self.horizon)
                    {
                        let first_due =
                            add_days(self.date(day), i64::from(self.rng.between(42, 84)))
                                .unwrap_or(self.date(day));
                        self.run_plan(
                            PlanKind::EarlyHelp,
                            At {
                                day,
                                minute: 15 * 60,
                            },
                            first_due,
                            (42, 84),
                            2,
                            0.35,
                            to,
                        );
                    }
                }
            }
            D::Monitor if self.rng.chance(0.4) => {
                let summary = "Monitoring after a safeguarding concern";
                if self.open_case(CaseType::Safeguarding, after, summary, None) {
                    let day = (after.day + self.rng.between(30, 60) as usize)
                        .min(self.horizon.saturating_sub(1));
                    self.closable = Some((
                        At {
                            day,
                            minute: 15 * 60 + 10,
                        },
                        "Monitoring ended: no further concerns over the review period",
                    ));
                }
            }
            _ => {}
        }
        // CAMHS for mental health and self-harm concerns.
        let camhs = matches!(decision, D::Monitor | D::EarlyHelp);
        if camhs && matches!(category, "mental_health" | "self_harm") && self.rng.chance(0.5) {
            if let Some(at) = self.later(after, 30) {
                self.push(
                    at,
                    to,
                    CaseEvent::ExternalReferralMade(ExternalReferralMade {
                        agency: "CAMHS".into(),
                        reason: "Low mood and self-reported distress affecting daily life; parent consents".into(),
                        reference: None,
                    }),
                );
                let day = at.day + self.rng.between(15, 40) as usize;
                if day < self.horizon {
                    let at = At {
                        day,
                        minute: self.rng.between(10 * 60, 15 * 60),
                    };
                    self.push(
                        at,
                        to,
                        CaseEvent::AgencyLiaison(AgencyLiaison {
                            agency: "CAMHS".into(),
                            summary: "CAMHS accepted the referral; initial assessment booked; school to continue weekly check-ins".into(),
                        }),
                    );
                    self.note_case_activity(at);
                }
            }
        }
        // Parents are told unless that could put the child at risk.
        let tell = !matches!(
            category,
            "sexual_abuse"
                | "physical_abuse"
                | "domestic_abuse"
                | "emotional_abuse"
                | "criminal_exploitation"
        );
        if tell && self.rng.chance(0.7) {
            if let Some(at) = self.later(decided, 45) {
                self.push(
                    at,
                    to,
                    CaseEvent::ParentContacted(ParentContacted {
                        method: "phone".into(),
                        summary: "Shared the school's concern with the parent and agreed how school and home will support the pupil".into(),
                    }),
                );
            }
        }
    }

    // --- interventions ----------------------------------------------------------

    fn interventions(&mut self) {
        let p = self.p;
        let mut chance: f64 = 0.05;
        if p.sen {
            chance += 0.10;
        }
        if p.behaviour >= 5.0 {
            chance += 0.12;
        }
        if self.concerns > 0 {
            chance += 0.15;
        }
        if p.absence >= 0.1 {
            chance += 0.05;
        }
        if !self.rng.chance(chance.min(0.7)) {
            return;
        }
        let kinds: &[(&str, u32)] = if p.behaviour >= 5.0 {
            &[
                ("anger_management", 30),
                ("emotional_regulation", 30),
                ("mentoring", 30),
                ("social_skills", 10),
            ]
        } else if self.concerns > 0 {
            &[
                ("self_esteem", 35),
                ("emotional_regulation", 35),
                ("mentoring", 30),
            ]
        } else if p.sen {
            &[
                ("social_skills", 35),
                ("literacy_catch_up", 40),
                ("self_esteem", 25),
            ]
        } else {
            &[
                ("mentoring", 40),
                ("literacy_catch_up", 35),
                ("self_esteem", 25),
            ]
        };
        let h = self.horizon;
        let count = if self.rng.chance(0.2) { 2 } else { 1 };
        let mut from = 10;
        for _ in 0..count {
            if from + 10 >= h {
                break;
            }
            let day = self.rng.day_in(from, h - 5);
            let kind = self.rng.weighted(kinds);
            // Pastoral interventions usually sit in a pastoral case.
            let opened = kind != "literacy_catch_up"
                && self.rng.chance(0.5)
                && self.open_case(
                    CaseType::Pastoral,
                    At {
                        day,
                        minute: 15 * 60,
                    },
                    &format!("Pastoral support: {} intervention", kind.replace('_', " ")),
                    None,
                );
            match self.start_intervention(day, kind) {
                Some((end, outcome)) => {
                    from = end + 5;
                    if opened && outcome == InterventionOutcome::Achieved {
                        let at = At {
                            day: (end + 10).min(h - 1),
                            minute: 15 * 60 + 10,
                        };
                        self.closable = Some((
                            at,
                            "Intervention goals achieved; pastoral support no longer needed",
                        ));
                    }
                }
                None => break,
            }
        }
    }

    /// Starts an intervention on `day` with weekly sessions; returns the
    /// day it ended and its outcome, or None when it is still running at the
    /// horizon.
    fn start_intervention(
        &mut self,
        day: usize,
        kind: &str,
    ) -> Option<(usize, InterventionOutcome)> {
        if day >= self.horizon || self.interventions.iter().any(|v| v.running) {
            return None;
        }
        let goal = match kind {
            "mentoring" => "Improve engagement in lessons and meet weekly targets",
            "social_skills" => "Build skills for group work and friendships",
            "emotional_regulation" => {
                "Recognise early signs of distress and use calming strategies"
            }
            "self_esteem" => "Feel more confident to take part in lessons and ask for help",
            "anger_management" => "Manage anger without aggression; use the agreed time-out card",
            _ => "Raise reading age by at least one year",
        };
        let planned = self.rng.between(6, 12);
        let staff_ref = if kind == "literacy_catch_up" {
            self.teacher()
        } else {
            self.p.keyworker.to_string()
        };
        let id = format!("{kind}-{}", self.interventions.len() + 1);
        let start = At {
            day,
            minute: 15 * 60 + 15,
        };
        self.push(
            start,
            &staff_ref,
            CaseEvent::InterventionStarted(InterventionStarted {
                intervention: id.clone(),
                kind: kind.to_string(),
                goal: goal.into(),
                sessions_planned: Some(planned),
                staff: Some(staff_ref.clone()),
            }),
        );
        self.note_case_activity(start);
        self.interventions.push(InterventionState {
            id: id.clone(),
            running: true,
        });
        let weekday = self.date(day).weekday();
        let minute = self.rng.pick(&[11 * 60 + 10, 13 * 60 + 30, 14 * 60 + 20]);
        let withdraw_after = if self.rng.chance(0.06) {
            Some(self.rng.between(2, 4))
        } else {
            None
        };
        let mut held = 0;
        let mut attended = 0;
        let mut last = start;
        let mut d = day + 1;
        while d < self.horizon && held < planned {
            if self.date(d).weekday() == weekday {
                let came = self.in_school(d, minute >= PM_REGISTER) && self.rng.chance(0.92);
                let notes = if came {
                    None
                } else {
                    Some(
                        if self.in_school(d, minute >= PM_REGISTER) {
                            "Did not come to the session"
                        } else {
                            "Absent from school"
                        }
                        .to_string(),
                    )
                };
                last = At { day: d, minute };
                self.push(
                    last,
                    &staff_ref,
                    CaseEvent::InterventionSessionDelivered(InterventionSessionDelivered {
                        intervention: id.clone(),
                        attended: came,
                        notes,
                    }),
                );
                held += 1;
                attended += u32::from(came);
                if withdraw_after == Some(held) {
                    break;
                }
            }
            d += 1;
        }
        self.note_case_activity(last);
        let finished = held == planned || withdraw_after == Some(held);
        if !finished {
            return None;
        }
        let outcome = if withdraw_after.is_some() {
            InterventionOutcome::Withdrawn
        } else if attended * 10 >= planned * 8 {
            self.rng.weighted(&[
                (InterventionOutcome::Achieved, 50),
                (InterventionOutcome::PartlyAchieved, 40),
                (InterventionOutcome::NotAchieved, 10),
            ])
        } else {
            self.rng.weighted(&[
                (InterventionOutcome::PartlyAchieved, 50),
                (InterventionOutcome::NotAchieved, 50),
            ])
        };
        let end = At {
            day: last.day,
            minute: last.minute + 40,
        };
        self.push(
            end,
            &staff_ref,
            CaseEvent::InterventionEnded(InterventionEnded {
                intervention: id,
                outcome,
            }),
        );
        self.note_case_activity(end);
        if let Some(v) = self.interventions.last_mut() {
            v.running = false;
        }
        Some((end.day, outcome))
    }

    // --- rewards and attendance ----------------------------------------------------

    fn rewards(&mut self) {
        const KINDS: &[(&str, u32)] = &[
            ("achievement_point", 70),
            ("praise_postcard", 10),
            ("positive_phone_call", 8),
            ("subject_award", 5),
            ("star_of_the_week", 5),
            ("headteacher_award", 2),
        ];
        const REASONS: &[&str] = &[
            "Excellent effort in class",
            "Outstanding homework",
            "Helping another pupil",
            "Great contribution to the lesson",
            "Consistent effort over the week",
            "Representing the school",
            "Kindness to a new pupil",
        ];
        let d = self.day_count() as f64;
        let per_year = 6.0 + 14.0 * self.rng.unit();
        let chance = per_year / d;
        for day in 0..self.horizon {
            if !self.rng.chance(chance) {
                continue;
            }
            let pm = self.rng.chance(0.5);
            if !self.in_school(day, pm) {
                continue;
            }
            let at = At {
                day,
                minute: if pm {
                    self.rng.between(PM_LESSONS.0, PM_LESSONS.1)
                } else {
                    self.rng.between(AM_LESSONS.0, AM_LESSONS.1)
                },
            };
            let kind = self.rng.weighted(KINDS);
            let points = match kind {
                "achievement_point" => Some(self.rng.between(1, 3)),
                "headteacher_award" => Some(10),
                "subject_award" | "star_of_the_week" => Some(5),
                _ => None,
            };
            let actor = self.teacher();
            let reason = self.rng.pick(REASONS);
            self.push(
                at,
                &actor,
                CaseEvent::RewardIssued(RewardIssued {
                    kind: kind.into(),
                    reason: reason.into(),
                    points,
                }),
            );
            if kind == "positive_phone_call" {
                self.push(
                    At {
                        day,
                        minute: at.minute + 5,
                    },
                    &actor,
                    CaseEvent::ParentContacted(ParentContacted {
                        method: "phone".into(),
                        summary: format!("Positive call home: {}", reason.to_lowercase()),
                    }),
                );
            }
        }
        // Full attendance over a term earns an award on its last day.
        let school = self.school;
        let mut from = 0;
        for &end in &school.breaks {
            if end >= self.horizon || end >= self.codes.len() {
                break;
            }
            let full = (from..=end)
                .all(|day| !is_absence(self.codes[day][0]) && !is_absence(self.codes[day][1]));
            // Half-terms are a week (10 days Friday to Monday); the end of
            // a term is two weeks or more.
            let term_end = match school.days.get(end + 1) {
                Some(next) => (*next - self.date(end)).num_days() > 12,
                None => true,
            };
            if term_end {
                if full && self.in_school(end, true) {
                    let tutor = self.p.tutor.clone();
                    self.push(
                        At {
                            day: end,
                            minute: 14 * 60 + 50,
                        },
                        &tutor,
                        CaseEvent::RewardIssued(RewardIssued {
                            kind: "attendance_award".into(),
                            reason: "100% attendance this term".into(),
                            points: Some(10),
                        }),
                    );
                }
                from = end + 1;
            }
        }
    }

    /// Pupils whose absence crosses 10 % get an attendance case: a letter,
    /// a meeting, the attendance officer as keyworker, and for the worst a
    /// support plan.
    fn attendance_case(&mut self) {
        let on_roll = self.codes.len().min(self.horizon);
        let mut missed = 0usize;
        for day in 0..on_roll {
            missed += usize::from(is_absence(self.codes[day][0]))
                + usize::from(is_absence(self.codes[day][1]));
            let possible = 2 * (day + 1);
            // Flagged once half a term's data shows 12 % missed, so that a
            // bout of illness in September does not open a case.
            if day >= 40 && missed >= 12 && missed * 100 >= possible * 12 {
                if !self.rng.chance(0.6) || day + 3 >= on_roll {
                    return;
                }
                let at = At {
                    day: day + 1,
                    minute: 12 * 60,
                };
                let rate = 100.0 * (1.0 - missed as f64 / possible as f64);
                let summary = format!(
                    "Attendance {rate:.1}% after {} school days: below 90% (persistent absence)",
                    day + 1
                );
                self.open_case(CaseType::Attendance, at, &summary, Some(ATTENDANCE_OFFICER));
                self.push(
                    At { day: day + 1, minute: 12 * 60 + 30 },
                    ATTENDANCE_OFFICER,
                    CaseEvent::ParentContacted(ParentContacted { method: "letter".into(), summary: "Attendance concern letter with the attendance record and an invitation to a meeting".into() }),
                );
                let meet = (day + 6).min(on_roll - 1);
                self.push(
                    At { day: meet, minute: 15 * 60 + 20 },
                    ATTENDANCE_OFFICER,
                    CaseEvent::ParentContacted(ParentContacted { method: "meeting".into(), summary: "Attendance support meeting: barriers discussed and an improvement target agreed".into() }),
                );
                if missed * 4 >= possible && !self.has_psp {
                    self.has_psp = true;
                    let first_due = add_days(self.date(meet), 42).unwrap_or(self.date(meet));
                    self.run_plan(
                        PlanKind::PastoralSupport,
                        At {
                            day: meet,
                            minute: 15 * 60 + 25,
                        },
                        first_due,
                        (35, 49),
                        2,
                        0.2,
                        ATTENDANCE_OFFICER,
                    );
                }
                return;
            }
        }
    }

    /// Closes a pastoral or safeguarding case whose work has wound down,
    /// when it is the pupil's only case and nothing case-related follows.
    fn close_cases(&mut self) {
        let Some((at, outcome)) = self.closable else {
            return;
        };
        if self.cases.len() != 1
            || self.plans.iter().any(|p| p.open)
            || self.interventions.iter().any(|v| v.running)
        {
            return;
        }
        if self.case_activity.is_some_and(|a| a >= at) || at.day >= self.horizon {
            return;
        }
        let actor = match self.cases.keys().next() {
            Some(CaseType::Safeguarding) => DSL.to_string(),
            _ => self.p.head_of_year.clone(),
        };
        self.push(
            at,
            &actor,
            CaseEvent::CaseClosed(CaseClosed {
                outcome: outcome.into(),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casebook_engine::domain::{decide, CaseState, Command, Record};
    use std::collections::{HashMap, HashSet};

    fn opts(pupils: usize, seed: u64) -> DemoOptions {
        DemoOptions {
            pupils,
            seed,
            academic_year: 2025,
            school: "default".into(),
        }
    }

    #[test]
    fn the_school_year_has_190_days_in_term_time() {
        for year in 2015..2035 {
            let days = school_days(year);
            println!("{year}: {} to {}", days[0], days[days.len() - 1]);
            assert_eq!(days.len(), 190, "{year}");
            let first = days[0];
            let last = days[days.len() - 1];
            assert_eq!(first.month(), 9, "{year}: {first}");
            assert!(first.day() <= 7);
            assert_eq!(last.month(), 7, "{year}: {last}");
            assert!((14..=24).contains(&last.day()), "{year}: ends {last}");
            assert!(days.iter().all(|d| d.weekday().num_days_from_monday() < 5));
            assert!(days.windows(2).all(|w| w[0] < w[1]));
            // Christmas Day and Good Friday are never school days.
            assert!(!days.iter().any(|d| d.month() == 12 && d.day() == 25));
            let good_friday = easter_sunday(year + 1).and_then(|e| add_days(e, -2));
            assert!(!days.iter().any(|d| Some(*d) == good_friday));
        }
        let y = school_days(2025);
        assert_eq!(y[0], NaiveDate::from_ymd_opt(2025, 9, 3).unwrap());
        assert!(school_days(i32::MAX).is_empty());
        assert_eq!(easter_sunday(2026), NaiveDate::from_ymd_opt(2026, 4, 5));
    }

    #[test]
    fn default_year_is_the_last_finished_one() {
        let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap();
        assert_eq!(default_academic_year(d(2026, 11, 23)), 2025);
        assert_eq!(default_academic_year(d(2026, 8, 1)), 2025);
        assert_eq!(default_academic_year(d(2026, 7, 1)), 2024);
        assert_eq!(default_academic_year(d(2026, 1, 10)), 2024);
    }

    /// First output of `Rng::seeded(42)`.
    const XOSHIRO_42: u64 = 1_546_998_764_402_558_742;

    #[test]
    fn prng_is_fixed_for_ever() {
        // Pinned outputs: if these change, every demo changes.
        let mut r = Rng::seeded(42);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let mut again = Rng::seeded(42);
        assert_eq!(got, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
        let mut sm = 0u64;
        assert_eq!(splitmix64(&mut sm), 0xE220_A839_7B1D_CDAF);
        assert_eq!(got[0], XOSHIRO_42);
        // The reference implementation's first outputs from state 1, 2, 3, 4.
        let mut reference = Rng { s: [1, 2, 3, 4] };
        assert_eq!(reference.next_u64(), 11_520);
        assert_eq!(reference.next_u64(), 0);
        assert_eq!(reference.next_u64(), 1_509_978_240);
        assert!((0..1000).all(|_| (0.0..1.0).contains(&r.unit())));
    }

    #[test]
    fn tiny_schools_and_other_years_generate_without_panicking() {
        for pupils in [0, 1, 2, 3, 7] {
            for year in [1990, 2019, 2024, 2060] {
                let o = DemoOptions {
                    pupils,
                    seed: 3,
                    academic_year: year,
                    school: "x".into(),
                };
                let made: Vec<DemoPupil> = generate(&o).collect();
                assert_eq!(made.len(), pupils);
                assert!(made.iter().all(|p| p.events.len() > 300));
            }
        }
        // A year the calendar cannot hold gives an empty school, not a panic.
        let o = DemoOptions {
            pupils: 5,
            seed: 1,
            academic_year: i32::MAX,
            school: "x".into(),
        };
        assert_eq!(generate(&o).count(), 0);
    }

    /// A fingerprint of what the generator alone decides (ids, times,
    /// actors, types) for a small school. If it changes, every demo of every
    /// seed has changed: update it only on purpose, and say so in the
    /// changelog.
    #[test]
    fn output_for_a_seed_is_pinned() {
        assert_pinned(25, PINNED);
    }

    /// (events, FNV-1a) of `output_for_a_seed_is_pinned`.
    const PINNED: (usize, u64) = (10_343, 0x05c6_fc13_8031_e14d);

    /// The same for a school of 300 pupils, whose plan draws hundreds of
    /// pupils by weight and peers among them ([`WeightTree`]): the
    /// fingerprint of the plan's draws by a scan of every weight, which
    /// the tree's draws must keep.
    #[test]
    fn output_for_a_larger_school_is_pinned() {
        assert_pinned(300, PINNED_300);
    }

    const PINNED_300: (usize, u64) = (123_945, 0x1754_04c9_f481_b2d3);

    fn assert_pinned(pupils: usize, pinned: (usize, u64)) {
        let (events, h) = fingerprint(pupils);
        println!("fingerprint {h:#018x} over {events} events of {pupils} pupils");
        assert_eq!((events, h), pinned);
    }

    /// The events of a school of `pupils` (seed 42) and the FNV-1a of
    /// each one's id, time, actor and type.
    fn fingerprint(pupils: usize) -> (usize, u64) {
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        let mut events = 0;
        for pupil in generate(&opts(pupils, 42)) {
            for e in &pupil.events {
                let line = format!(
                    "{} {} {} {}",
                    e.event_id,
                    e.occurred_at,
                    e.actor,
                    e.event.type_name()
                );
                for b in line.bytes() {
                    h ^= u64::from(b);
                    h = h.wrapping_mul(0x0000_0100_0000_01B3);
                }
                events += 1;
            }
        }
        (events, h)
    }

    /// The plan's draw until session az: a scan of every weight. What
    /// [`WeightTree`] must draw.
    fn pick_weighted(weights: &[f64], rng: &mut Rng) -> Option<usize> {
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let mut x = rng.unit() * total;
        let mut last = None;
        for (i, w) in weights.iter().enumerate() {
            if *w > 0.0 {
                if x < *w {
                    return Some(i);
                }
                x -= w;
                last = Some(i);
            }
        }
        last
    }

    /// Once packed, the day flags read as they did before: every day of
    /// every pupil, and past the calendar.
    #[test]
    fn packed_day_flags_read_as_before() {
        let (pupils, days) = (37, 190);
        let mut flags = DayFlags {
            days,
            flags: vec![0; pupils * days],
            set_days: Rows::default(),
            set_flags: Vec::new(),
            unavailable: vec![Vec::new(); days * YEAR_GROUPS],
        };
        let mut rng = Rng::seeded(7);
        for _ in 0..500 {
            flags.set(rng.below(pupils), rng.below(days), 1 << rng.below(6));
        }
        let read = |f: &DayFlags| -> Vec<Option<u8>> {
            (0..pupils)
                .flat_map(|p| (0..days + 2).map(move |d| (p, d)))
                .map(|(p, d)| f.get(p, d))
                .collect()
        };
        let before = read(&flags);
        assert!(before.iter().filter(|f| f.is_some_and(|f| f != 0)).count() > 300);
        flags.pack();
        assert!(flags.flags.is_empty());
        assert_eq!(read(&flags), before);
    }

    mod draws {
        use super::{pick_weighted, Rng, WeightTree};
        use proptest::prelude::{any, prop_assert_eq, prop_oneof, proptest, Just, Strategy};

        proptest! {
            /// A tree of any weights (zeros among them), changed anyhow,
            /// draws what a scan of its weights draws, with any of them left
            /// out, and takes from the generator what the scan takes.
            #[test]
            fn a_weight_tree_draws_what_a_scan_of_every_weight_draws(
                weights in proptest::collection::vec(
                    prop_oneof![Just(0.0), 0.0f64..10.0, 1e-3f64..1e3], 0..70),
                changes in proptest::collection::vec(
                    (0usize..70, prop_oneof![Just(0.0), 0.0f64..5.0]), 0..20),
                left_out in prop_oneof![
                    proptest::collection::btree_set(0usize..70, 0..12),
                    // Whole subtrees, or everything, left out.
                    (0usize..70, 0usize..70)
                        .prop_map(|(a, b)| (a.min(b)..a.max(b)).collect()),
                ],
                seed in any::<u64>(),
            ) {
                let mut weights = weights;
                let mut tree = WeightTree::new(weights.iter().copied());
                for (i, w) in changes {
                    if i < weights.len() {
                        weights[i] = w;
                        tree.set(i, w);
                    }
                }
                for (i, w) in weights.iter().enumerate() {
                    prop_assert_eq!(tree.get(i), *w);
                }
                let left_out: Vec<usize> = left_out.into_iter().filter(|&i| i < weights.len()).collect();
                let mut scanned = weights.clone();
                for &i in &left_out {
                    scanned[i] = 0.0;
                }
                let (mut a, mut b) = (Rng::seeded(seed), Rng::seeded(seed));
                for _ in 0..20 {
                    prop_assert_eq!(tree.pick_but(&left_out, &mut a), pick_weighted(&scanned, &mut b));
                    prop_assert_eq!(a.next_u64(), b.next_u64());
                }
                let (mut a, mut b) = (Rng::seeded(seed), Rng::seeded(seed));
                prop_assert_eq!(tree.pick(&mut a), pick_weighted(&weights, &mut b));
                prop_assert_eq!(a.next_u64(), b.next_u64());
            }
        }
    }

    fn first_pupils(o: &DemoOptions, n: usize) -> Vec<DemoPupil> {
        generate(o).take(n).collect()
    }

    #[test]
    fn same_seed_same_school_different_seed_different_school() {
        let a = first_pupils(&opts(60, 7), 60);
        let b = first_pupils(&opts(60, 7), 60);
        assert_eq!(a, b);
        let c = first_pupils(&opts(60, 8), 60);
        assert_ne!(a, c);
        let mut other_school = opts(60, 7);
        other_school.school = "north-academy".into();
        assert_ne!(a, first_pupils(&other_school, 60));
    }

    /// Every event of a 100-pupil demo is accepted by the engine's rules,
    /// in order, with the state folded after each.
    #[test]
    fn every_demo_event_passes_decide() {
        let o = opts(100, 42);
        let last = *school_days(o.academic_year).last().unwrap();
        let now = (last + chrono::Days::new(1))
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        let mut total = 0;
        for pupil in generate(&o) {
            let mut state = CaseState::new();
            for e in &pupil.events {
                let command = Command::Record(Record {
                    event: e.event.clone(),
                    occurred_at: e.occurred_at,
                    now,
                });
                match decide(&state, &command) {
                    Ok(events) => {
                        for ev in &events {
                            state.apply(e.event_id, ev);
                        }
                    }
                    Err(err) => panic!(
                        "{} {:?} at {}: {err}",
                        pupil.reference,
                        e.event.type_name(),
                        e.occurred_at
                    ),
                }
                total += 1;
            }
        }
        assert!(total > 100 * 380);
    }

    /// The promises the rules rely on, checked here too so a broken
    /// generator is caught even before the engine enforces them.
    #[test]
    fn streams_are_well_formed() {
        let o = opts(100, 42);
        let days = school_days(o.academic_year);
        let end = (*days.last().unwrap() + chrono::Days::new(1))
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        let refs: HashSet<String> = (1..=100).map(|i| format!("P{i:05}")).collect();
        let mut all_ids = HashSet::new();
        for pupil in generate(&o) {
            let evs = &pupil.events;
            assert!(
                matches!(evs[0].event, CaseEvent::PupilRegistered(_)),
                "{}",
                pupil.reference
            );
            assert!(
                evs.windows(2).all(|w| w[0].occurred_at <= w[1].occurred_at),
                "{} not chronological",
                pupil.reference
            );
            let mut marks = HashSet::new();
            let mut ids = HashSet::new();
            let mut interventions: HashMap<String, bool> = HashMap::new();
            let mut plans: HashMap<String, bool> = HashMap::new();
            let mut suspension_days = 0.0;
            let mut removals = 0;
            let mut open_cases = HashSet::new();
            for e in evs {
                assert!(e.occurred_at < end);
                assert!(days.contains(&e.occurred_at.date_naive()));
                assert!(all_ids.insert(e.event_id), "duplicate event id");
                assert!(e.actor.len() == 4 && e.actor.starts_with('S'));
                match &e.event {
                    CaseEvent::AttendanceMarked(a) => {
                        assert!(
                            marks.insert((a.date, a.session)),
                            "{} marked twice",
                            pupil.reference
                        );
                        assert_eq!(a.date, e.occurred_at.date_naive());
                    }
                    CaseEvent::EntryCorrected(c) => {
                        assert!(ids.contains(&c.event), "correction of an unknown event")
                    }
                    CaseEvent::IncidentRecorded(i) => {
                        assert!((1..=5).contains(&i.severity));
                        assert!(i
                            .participants
                            .iter()
                            .all(|p| refs.contains(&p.pupil) && p.pupil != pupil.reference));
                    }
                    CaseEvent::InterventionStarted(s) => {
                        assert!(interventions.insert(s.intervention.clone(), true).is_none())
                    }
                    CaseEvent::InterventionSessionDelivered(s) => {
                        assert_eq!(interventions.get(&s.intervention), Some(&true))
                    }
                    CaseEvent::InterventionEnded(s) => assert_eq!(
                        interventions.insert(s.intervention.clone(), false),
                        Some(true)
                    ),
                    CaseEvent::PlanAgreed(p) => {
                        assert!(p.review_due > e.occurred_at.date_naive());
                        assert!(plans.insert(p.plan.clone(), true).is_none());
                    }
                    CaseEvent::PlanReviewed(p) => {
                        assert_eq!(plans.get(&p.plan), Some(&true));
                        plans.insert(p.plan.clone(), p.next_review_due.is_some());
                    }
                    CaseEvent::SuspensionIssued(s) => {
                        suspension_days += s.days;
                        assert!(s.start_date >= e.occurred_at.date_naive());
                        removals += 1;
                    }
                    CaseEvent::PermanentExclusionIssued(_)
                    | CaseEvent::AlternativeProvisionArranged(_) => removals += 1,
                    CaseEvent::ReintegrationMeetingHeld(_) => {
                        assert!(
                            removals > 0,
                            "{} reintegration with nothing to return from",
                            pupil.reference
                        );
                        removals -= 1;
                    }
                    CaseEvent::CaseOpened(c) => assert!(open_cases.insert(c.case_type)),
                    CaseEvent::KeyworkerAssigned(_) => assert!(!open_cases.is_empty()),
                    _ => {}
                }
                ids.insert(e.event_id);
            }
            assert!(suspension_days <= SUSPENSION_DAY_LIMIT);
        }
    }

    #[derive(Default)]
    struct Figures {
        pupils: usize,
        events: usize,
        sessions: usize,
        absent: usize,
        unauthorised: usize,
        illness: usize,
        persistent: usize,
        severe: usize,
        fsm: usize,
        fsm_persistent: usize,
        suspensions: usize,
        suspended: usize,
        suspension_days: f64,
        pd: usize,
        by_year: [usize; 5],
        boys_suspended: usize,
        boys: usize,
        fsm_suspended: usize,
        fsm_suspensions: usize,
        exclusions: usize,
        exclusion_years: Vec<u8>,
        incidents: usize,
        shared: usize,
        concern_pupils: usize,
        referrals_out: usize,
        force: usize,
        corrections: usize,
        open_plans_overdue: usize,
        running_interventions: usize,
        rewards: usize,
        cases: usize,
        closed: usize,
        types: BTreeMap<&'static str, usize>,
        case_types: BTreeMap<&'static str, usize>,
        plan_kinds: BTreeMap<String, usize>,
        codes: BTreeMap<String, usize>,
        decisions: BTreeMap<String, usize>,
    }

    fn measure(o: &DemoOptions) -> Figures {
        let last = *school_days(o.academic_year).last().unwrap();
        let mut f = Figures::default();
        for pupil in generate(o) {
            f.pupils += 1;
            f.events += pupil.events.len();
            let (mut sessions, mut absent) = (0, 0);
            let mut reg = None;
            let mut suspensions = 0;
            let mut concern = false;
            let mut plans: HashMap<String, Option<NaiveDate>> = HashMap::new();
            let mut running: HashSet<String> = HashSet::new();
            for e in &pupil.events {
                *f.types.entry(e.event.type_name()).or_default() += 1;
                match &e.event {
                    CaseEvent::PupilRegistered(p) => reg = Some(p.clone()),
                    CaseEvent::AttendanceMarked(a) => {
                        sessions += 1;
                        *f.codes.entry(a.code.clone()).or_default() += 1;
                        if is_absence(&a.code) {
                            absent += 1;
                            if matches!(a.code.as_str(), "G" | "N" | "O" | "U") {
                                f.unauthorised += 1;
                            }
                            if a.code == "I" {
                                f.illness += 1;
                            }
                        }
                    }
                    CaseEvent::SuspensionIssued(s) => {
                        suspensions += 1;
                        f.suspension_days += s.days;
                        f.pd += usize::from(s.reason_code == "PD");
                    }
                    CaseEvent::PermanentExclusionIssued(_) => {
                        f.exclusions += 1;
                        f.exclusion_years
                            .push(reg.as_ref().map_or(0, |r| r.year_group));
                    }
                    CaseEvent::IncidentRecorded(i) => {
                        f.incidents += 1;
                        f.shared += usize::from(!i.participants.is_empty());
                    }
                    CaseEvent::ConcernRaised(_) => concern = true,
                    CaseEvent::ExternalReferralMade(_) => f.referrals_out += 1,
                    CaseEvent::ReasonableForceUsed(_) => f.force += 1,
                    CaseEvent::EntryCorrected(_) => f.corrections += 1,
                    CaseEvent::RewardIssued(_) => f.rewards += 1,
                    CaseEvent::CaseOpened(c) => {
                        f.cases += 1;
                        *f.case_types.entry(c.case_type.as_str()).or_default() += 1;
                    }
                    CaseEvent::SafeguardingDecisionMade(d) => {
                        *f.decisions.entry(format!("{:?}", d.decision)).or_default() += 1;
                    }
                    CaseEvent::CaseClosed(_) => f.closed += 1,
                    CaseEvent::PlanAgreed(p) => {
                        *f.plan_kinds.entry(format!("{:?}", p.kind)).or_default() += 1;
                        plans.insert(p.plan.clone(), Some(p.review_due));
                    }
                    CaseEvent::PlanReviewed(p) => {
                        plans.insert(p.plan.clone(), p.next_review_due);
                    }
                    CaseEvent::InterventionStarted(s) => {
                        running.insert(s.intervention.clone());
                    }
                    CaseEvent::InterventionEnded(s) => {
                        running.remove(&s.intervention);
                    }
                    _ => {}
                }
            }
            let reg = reg.unwrap();
            f.sessions += sessions;
            f.absent += absent;
            let persistent = absent * 10 >= sessions;
            f.persistent += usize::from(persistent);
            f.severe += usize::from(absent * 2 >= sessions);
            if reg.fsm == Some(true) {
                f.fsm += 1;
                f.fsm_persistent += usize::from(persistent);
                f.fsm_suspended += usize::from(suspensions > 0);
                f.fsm_suspensions += suspensions;
            }
            if reg.sex.as_deref() == Some("male") {
                f.boys += 1;
                f.boys_suspended += usize::from(suspensions > 0);
            }
            f.suspensions += suspensions;
            f.suspended += usize::from(suspensions > 0);
            f.by_year[usize::from(reg.year_group - 7)] += suspensions;
            f.concern_pupils += usize::from(concern);
            f.open_plans_overdue += plans
                .values()
                .filter(|d| d.is_some_and(|d| d < last))
                .count();
            f.running_interventions += running.len();
        }
        f
    }

    /// The calibration figures for 1,000 pupils, seed 42 (docs/demo-data.md
    /// quotes them): run with `--nocapture` to see them.
    #[test]
    fn demo_calibration_lands_in_range() {
        let o = opts(1000, 42);
        let f = measure(&o);
        let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
        let absence = pct(f.absent, f.sessions);
        let persistent = pct(f.persistent, f.pupils);
        let severe = pct(f.severe, f.pupils);
        let per100 = pct(f.suspensions, f.pupils);
        let girls = f.pupils - f.boys;
        let non_fsm = f.pupils - f.fsm;
        println!(
            "demo calibration, seed {} school {:?}, {} pupils, {} events",
            o.seed, o.school, f.pupils, f.events
        );
        println!(
            "  absence: {absence:.2}% of {} sessions (unauthorised {:.2}%, illness {:.2}%)",
            f.sessions,
            pct(f.unauthorised, f.sessions),
            pct(f.illness, f.sessions)
        );
        println!(
            "  persistent absence: {persistent:.1}% of pupils (FSM {:.1}%), severe {severe:.1}%",
            pct(f.fsm_persistent, f.fsm)
        );
        println!(
            "  suspensions: {} = {per100:.1} per 100 pupils, {} pupils ({:.1}%), {:.1} days, PD {:.0}%",
            f.suspensions,
            f.suspended,
            pct(f.suspended, f.pupils),
            f.suspension_days,
            pct(f.pd, f.suspensions)
        );
        println!("  suspensions by year 7-11: {:?}", f.by_year);
        println!(
            "  suspensions per 100: FSM {:.1}, non-FSM {:.1}",
            pct(f.fsm_suspensions, f.fsm),
            pct(f.suspensions - f.fsm_suspensions, non_fsm)
        );
        println!(
            "  pupils suspended: boys {:.1}% girls {:.1}%; FSM {:.1}% non-FSM {:.1}%",
            pct(f.boys_suspended, f.boys),
            pct(f.suspended - f.boys_suspended, girls),
            pct(f.fsm_suspended, f.fsm),
            pct(f.suspended - f.fsm_suspended, non_fsm)
        );
        println!(
            "  permanent exclusions: {} (years {:?})",
            f.exclusions, f.exclusion_years
        );
        println!("  incidents: {} pupil records ({} in shared incidents); reasonable force: {}; corrections: {}", f.incidents, f.shared, f.force, f.corrections);
        println!(
            "  safeguarding: {} pupils with a concern ({:.1}%), {} external referrals; cases opened {}, closed {}",
            f.concern_pupils,
            pct(f.concern_pupils, f.pupils),
            f.referrals_out,
            f.cases,
            f.closed
        );
        println!(
            "  rewards: {}; open plans overdue at the last day: {}; interventions running at year end: {}; FSM pupils {}",
            f.rewards, f.open_plans_overdue, f.running_interventions, f.fsm
        );
        println!("  case types opened: {:?}", f.case_types);
        println!("  plans agreed: {:?}", f.plan_kinds);
        println!("  safeguarding decisions: {:?}", f.decisions);
        println!("  register codes: {:?}", f.codes);
        println!("  events by type: {:?}", f.types);
        assert_eq!(f.pupils, 1000);
        assert!((7.0..=9.5).contains(&absence), "absence {absence}");
        assert!(
            (16.0..=24.0).contains(&persistent),
            "persistent {persistent}"
        );
        assert!((0.5..=3.0).contains(&severe), "severe {severe}");
        assert!(
            (18.0..=27.0).contains(&per100),
            "suspensions per 100 {per100}"
        );
        assert!(
            (1..=3).contains(&f.exclusions),
            "permanent exclusions {}",
            f.exclusions
        );
        let sg = pct(f.concern_pupils, f.pupils);
        assert!((8.0..=12.0).contains(&sg), "safeguarding {sg}");
        assert!(
            f.open_plans_overdue > 0
                && f.running_interventions > 0
                && f.corrections > 0
                && f.force > 0
        );
        assert!(
            (300_000..=520_000).contains(&f.events),
            "events {}",
            f.events
        );
    }
}
