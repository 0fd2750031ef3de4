//! DfE reference data: census reason codes for suspensions and permanent
//! exclusions, and the attendance register codes with their categories.
//!
//! The tables are versioned reference data: every code carries the date it
//! became valid and the date it was retired (when known), and a `legacy`
//! flag. Imports accept every code in the tables, legacy ones included,
//! because a school's history holds marks and reasons recorded under the
//! rules of their day; reports use the category, never the raw code.
//! `docs/events.md` prints both tables; keep them in step.
//!
//! Sources: DfE "Suspension and permanent exclusion" statutory guidance and
//! the school census guides (reason codes); the School Attendance (Pupil
//! Registration) (England) Regulations 2024 and "Working together to improve
//! school attendance" (attendance codes, from 19 August 2024).

use chrono::NaiveDate;

/// Builds a table date at compile time. An impossible date is a typo in the
/// table and stops the build, so no lookup can ever meet one at run time.
const fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    match NaiveDate::from_ymd_opt(year, month, day) {
        Some(d) => d,
        None => panic!("impossible date in a reference table"),
    }
}

/// Start of the 2020/21 census year, when `OT` (other) was withdrawn and the
/// more specific `OW`, `LG`, `DS`, `MT` and `PH` reasons were added.
pub const REASON_CODES_REVISED_2020: NaiveDate = date(2020, 9, 1);

/// The School Attendance (Pupil Registration) (England) Regulations 2024
/// came into force on 19 August 2024, the start of the 2024/25 registers.
pub const ATTENDANCE_CODES_REVISED_2024: NaiveDate = date(2024, 8, 19);

/// Where a census reason code comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReasonSource {
    /// Named in DfE guidance or a school census guide.
    DfeCensus,
    /// Seen in a management information system's reason table but not (yet)
    /// in a DfE document; accepted because schools' exports contain them.
    MisReferenceData,
}

/// A suspension / permanent-exclusion reason code of the school census.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReasonCode {
    /// Two capital letters, as the census and MIS exports write it.
    pub code: &'static str,
    pub description: &'static str,
    /// When the code became valid; `None` for long-standing codes and for
    /// codes whose start date no source gives.
    pub valid_from: Option<NaiveDate>,
    /// When the code stopped being valid for new returns, if it has.
    pub retired: Option<NaiveDate>,
    /// Retired code, accepted only so that old records import.
    pub legacy: bool,
    pub source: ReasonSource,
}

impl ReasonCode {
    /// Whether the code was valid for a suspension or exclusion starting on
    /// `date` (reports may flag a code used outside its validity; imports
    /// still accept it).
    pub fn valid_on(&self, date: NaiveDate) -> bool {
        !matches!(self.valid_from, Some(from) if date < from)
            && !matches!(self.retired, Some(retired) if date >= retired)
    }
}

const fn standing(code: &'static str, description: &'static str) -> ReasonCode {
    ReasonCode {
        code,
        description,
        valid_from: None,
        retired: None,
        legacy: false,
        source: ReasonSource::DfeCensus,
    }
}

const fn added_2020(code: &'static str, description: &'static str) -> ReasonCode {
    ReasonCode {
        code,
        description,
        valid_from: Some(REASON_CODES_REVISED_2020),
        retired: None,
        legacy: false,
        source: ReasonSource::DfeCensus,
    }
}

const fn from_mis(code: &'static str, description: &'static str) -> ReasonCode {
    ReasonCode {
        code,
        description,
        valid_from: None,
        retired: None,
        legacy: false,
        source: ReasonSource::MisReferenceData,
    }
}

/// Every census reason code casebook accepts, in the order DOMAIN.md lists
/// them: long-standing codes, the 2020 additions, the newer MIS codes, then
/// legacy codes.
pub static REASON_CODES: &[ReasonCode] = &[
    standing("PP", "Physical assault against a pupil"),
    standing("PA", "Physical assault against an adult"),
    standing(
        "VP",
        "Verbal abuse or threatening behaviour against a pupil",
    ),
    standing(
        "VA",
        "Verbal abuse or threatening behaviour against an adult",
    ),
    added_2020(
        "OW",
        "Use or threat of use of an offensive weapon or prohibited item",
    ),
    standing("BU", "Bullying"),
    standing("RA", "Racist abuse"),
    added_2020("LG", "Abuse against sexual orientation and gender identity"),
    added_2020("DS", "Abuse relating to disability"),
    standing("SM", "Sexual misconduct"),
    standing("DA", "Drug and alcohol related"),
    standing("DM", "Damage to property"),
    standing("TH", "Theft"),
    standing("PD", "Persistent or general disruptive behaviour"),
    added_2020(
        "MT",
        "Inappropriate use of social media or online technology",
    ),
    added_2020(
        "PH",
        "Wilful and repeated transgression of public-health protective measures",
    ),
    from_mis("BW", "Brought a weapon or prohibited item into school"),
    from_mis("TB", "Cyber-bullying or threatening behaviour online"),
    from_mis("SB", "Harmful sexual behaviour"),
    from_mis("MB", "Misogynistic behaviour"),
    from_mis("AB", "Misandrist behaviour"),
    from_mis("DR", "Drug related"),
    from_mis("AR", "Alcohol related"),
    from_mis("SR", "Smoking related"),
    from_mis("VR", "Vape related"),
    from_mis(
        "LD",
        "Persistent disruptive behaviour: low-level disruption",
    ),
    from_mis(
        "CB",
        "Persistent disruptive behaviour: challenging behaviour",
    ),
    from_mis("DB", "Persistent or general disruptive behaviour"),
    from_mis("MP", "Use of mobile phone"),
    from_mis("OS", "Misbehaviour outside school"),
    ReasonCode {
        code: "OT",
        description: "Other (withdrawn in 2020)",
        valid_from: None,
        retired: Some(REASON_CODES_REVISED_2020),
        legacy: true,
        source: ReasonSource::DfeCensus,
    },
];

/// Looks up a census reason code. Codes are matched exactly (capitals), as
/// the census writes them, so that reports never see two spellings.
pub fn reason_code(code: &str) -> Option<&'static ReasonCode> {
    REASON_CODES.iter().find(|r| r.code == code)
}

/// How a register mark counts in attendance statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttendanceCategory {
    /// In school for the session.
    Present,
    /// Attending approved education off site; counts as present.
    ApprovedOffsite,
    /// Absent with the school's permission (or for a reason the law allows).
    Authorised,
    /// Absent without permission.
    Unauthorised,
    /// Not a possible session: the pupil was not expected or was unable to
    /// attend (left out of attendance percentages altogether).
    NotPossible,
}

impl AttendanceCategory {
    /// Counts towards the sessions a pupil could have attended (the
    /// denominator of attendance and persistent-absence figures).
    pub fn is_possible(self) -> bool {
        self != AttendanceCategory::NotPossible
    }

    /// A missed possible session (authorised or unauthorised absence).
    pub fn is_absence(self) -> bool {
        matches!(
            self,
            AttendanceCategory::Authorised | AttendanceCategory::Unauthorised
        )
    }

    /// Counts as attending (present, or approved education off site).
    pub fn is_attendance(self) -> bool {
        matches!(
            self,
            AttendanceCategory::Present | AttendanceCategory::ApprovedOffsite
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttendanceCategory::Present => "present",
            AttendanceCategory::ApprovedOffsite => "approved_offsite",
            AttendanceCategory::Authorised => "authorised",
            AttendanceCategory::Unauthorised => "unauthorised",
            AttendanceCategory::NotPossible => "not_possible",
        }
    }
}

/// One DfE attendance register code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttendanceCode {
    /// As written in the register: `/`, `\`, a capital letter, or a letter
    /// and a digit (`C1`, `J1`, `Y1`..`Y7`).
    pub code: &'static str,
    pub description: &'static str,
    pub category: AttendanceCategory,
    /// When the code came in; `None` for codes in use before 2024/25.
    pub valid_from: Option<NaiveDate>,
    /// When the code was withdrawn, if it was.
    pub retired: Option<NaiveDate>,
    /// Withdrawn code, accepted for registers of older years.
    pub legacy: bool,
}

impl AttendanceCode {
    /// Whether the code was in use on `date` (the register's date).
    pub fn valid_on(&self, date: NaiveDate) -> bool {
        !matches!(self.valid_from, Some(from) if date < from)
            && !matches!(self.retired, Some(retired) if date >= retired)
    }
}

const fn mark(
    code: &'static str,
    description: &'static str,
    category: AttendanceCategory,
) -> AttendanceCode {
    AttendanceCode {
        code,
        description,
        category,
        valid_from: None,
        retired: None,
        legacy: false,
    }
}

const fn mark_2024(
    code: &'static str,
    description: &'static str,
    category: AttendanceCategory,
) -> AttendanceCode {
    AttendanceCode {
        code,
        description,
        category,
        valid_from: Some(ATTENDANCE_CODES_REVISED_2024),
        retired: None,
        legacy: false,
    }
}

const fn retired_2024(
    code: &'static str,
    description: &'static str,
    category: AttendanceCategory,
) -> AttendanceCode {
    AttendanceCode {
        code,
        description,
        category,
        valid_from: None,
        retired: Some(ATTENDANCE_CODES_REVISED_2024),
        legacy: true,
    }
}

use AttendanceCategory::{ApprovedOffsite, Authorised, NotPossible, Present, Unauthorised};

/// Every attendance code casebook accepts, grouped by category as the 2024
/// guidance lists them, legacy codes last.
pub static ATTENDANCE_CODES: &[AttendanceCode] = &[
    mark("/", "Present (morning session)", Present),
    mark("\\", "Present (afternoon session)", Present),
    mark("L", "Late, arrived before the register closed", Present),
    mark_2024(
        "K",
        "Attending education provision arranged by the local authority",
        ApprovedOffsite,
    ),
    mark(
        "V",
        "Attending an educational visit or trip",
        ApprovedOffsite,
    ),
    mark(
        "P",
        "Participating in an approved sporting activity",
        ApprovedOffsite,
    ),
    mark("W", "Attending work experience", ApprovedOffsite),
    mark(
        "B",
        "Attending any other approved educational activity",
        ApprovedOffsite,
    ),
    mark(
        "C",
        "Leave of absence for exceptional circumstances",
        Authorised,
    ),
    mark_2024(
        "C1",
        "Leave for a regulated performance or regulated employment abroad",
        Authorised,
    ),
    mark_2024("C2", "Leave for a part-time timetable", Authorised),
    mark(
        "E",
        "Suspended or permanently excluded, no alternative provision made",
        Authorised,
    ),
    mark(
        "I",
        "Illness (not medical or dental appointment)",
        Authorised,
    ),
    mark_2024("J1", "Leave to attend an interview", Authorised),
    mark("M", "Medical or dental appointment", Authorised),
    mark("R", "Religious observance", Authorised),
    mark("S", "Study leave", Authorised),
    mark(
        "T",
        "Parent travelling for occupational purposes",
        Authorised,
    ),
    mark("G", "Holiday not granted by the school", Unauthorised),
    mark("N", "Reason for absence not yet provided", Unauthorised),
    mark(
        "O",
        "Absent in other or unknown circumstances",
        Unauthorised,
    ),
    mark(
        "U",
        "Arrived in school after registration closed",
        Unauthorised,
    ),
    mark(
        "D",
        "Dual registered, attending the other school",
        NotPossible,
    ),
    mark_2024(
        "Q",
        "Unable to attend because of a lack of access arrangements",
        NotPossible,
    ),
    mark(
        "X",
        "Not required to be in school (non-compulsory school age)",
        NotPossible,
    ),
    mark_2024(
        "Y1",
        "Unable to attend: transport normally provided not available",
        NotPossible,
    ),
    mark_2024(
        "Y2",
        "Unable to attend: widespread disruption to travel",
        NotPossible,
    ),
    mark_2024(
        "Y3",
        "Unable to attend: part of the school premises closed",
        NotPossible,
    ),
    mark_2024(
        "Y4",
        "Unable to attend: whole school site unexpectedly closed",
        NotPossible,
    ),
    mark_2024(
        "Y5",
        "Unable to attend: in criminal justice detention",
        NotPossible,
    ),
    mark_2024(
        "Y6",
        "Unable to attend: public health guidance or law",
        NotPossible,
    ),
    mark_2024(
        "Y7",
        "Unable to attend: any other unavoidable cause",
        NotPossible,
    ),
    mark("Z", "Pupil not yet on roll", NotPossible),
    mark("#", "Planned whole-school closure", NotPossible),
    retired_2024(
        "H",
        "Holiday authorised by the school (withdrawn 2024/25)",
        Authorised,
    ),
    retired_2024("J", "Interview (withdrawn 2024/25; now J1)", Authorised),
    retired_2024(
        "Y",
        "Unable to attend due to exceptional circumstances (withdrawn 2024/25; now Y1-Y7)",
        NotPossible,
    ),
];

/// Looks up an attendance code, matched exactly as the register writes it.
pub fn attendance_code(code: &str) -> Option<&'static AttendanceCode> {
    attendance_code_index(code).and_then(|i| ATTENDANCE_CODES.get(i))
}

/// Where `code` is in [`ATTENDANCE_CODES`]: what
/// `ATTENDANCE_CODES.iter().position(|a| a.code == code)` gives, by one
/// table look-up for a one-byte code (all but `C1`, `C2`, `J1` and
/// `Y1`..`Y7`; each register mark is looked up twice on import) instead of
/// a scan of string compares. A property test holds the two equal.
pub fn attendance_code_index(code: &str) -> Option<usize> {
    static BY_BYTE: std::sync::OnceLock<[u16; 256]> = std::sync::OnceLock::new();
    let scan = || ATTENDANCE_CODES.iter().position(|a| a.code == code);
    let &[byte] = code.as_bytes() else {
        return scan();
    };
    let table = BY_BYTE.get_or_init(|| {
        let mut table = [u16::MAX; 256];
        // Backwards, so the first of any repeated code is the one kept.
        for (i, a) in ATTENDANCE_CODES.iter().enumerate().rev() {
            if let (&[b], Ok(i)) = (a.code.as_bytes(), u16::try_from(i)) {
                table[usize::from(b)] = i;
            }
        }
        table
    });
    match table[usize::from(byte)] {
        // Not a one-byte code (or beyond the table): the scan decides.
        u16::MAX => scan(),
        i => Some(usize::from(i)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    proptest::proptest! {
        /// The table look-up finds what the scan of the codes finds, for
        /// every code and any other text.
        #[test]
        fn attendance_code_index_is_the_scan(
            text in "(.|[/\\\\A-Z#@]){0,3}",
            pick in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let code = ATTENDANCE_CODES[pick.index(ATTENDANCE_CODES.len())].code;
            for code in [text.as_str(), code] {
                let scan = ATTENDANCE_CODES.iter().position(|a| a.code == code);
                proptest::prop_assert_eq!(attendance_code_index(code), scan);
                proptest::prop_assert_eq!(
                    attendance_code(code).map(|a| a.code),
                    scan.map(|i| ATTENDANCE_CODES[i].code)
                );
            }
        }
    }

    #[test]
    fn every_one_byte_text_finds_its_code_by_the_table() {
        for b in 0u8..=127 {
            let text = (b as char).to_string();
            let scan = ATTENDANCE_CODES.iter().position(|a| a.code == text);
            assert_eq!(attendance_code_index(&text), scan, "{text:?}");
        }
    }

    #[test]
    fn each_code_appears_once_in_its_table() {
        let reasons: HashSet<_> = REASON_CODES.iter().map(|r| r.code).collect();
        assert_eq!(reasons.len(), REASON_CODES.len());
        let marks: HashSet<_> = ATTENDANCE_CODES.iter().map(|a| a.code).collect();
        assert_eq!(marks.len(), ATTENDANCE_CODES.len());
    }

    #[test]
    fn legacy_codes_are_exactly_the_retired_ones() {
        for r in REASON_CODES {
            assert_eq!(r.legacy, r.retired.is_some(), "{}", r.code);
        }
        for a in ATTENDANCE_CODES {
            assert_eq!(a.legacy, a.retired.is_some(), "{}", a.code);
        }
        let legacy: Vec<_> = ATTENDANCE_CODES
            .iter()
            .filter(|a| a.legacy)
            .map(|a| a.code)
            .collect();
        assert_eq!(legacy, ["H", "J", "Y"]);
    }

    #[test]
    fn lookups_find_codes_exactly_as_written() {
        assert_eq!(reason_code("PD").map(|r| r.legacy), Some(false));
        assert_eq!(reason_code("OT").map(|r| r.legacy), Some(true));
        assert!(reason_code("pd").is_none());
        assert!(reason_code("ZZ").is_none());
        assert_eq!(attendance_code("\\").map(|a| a.category), Some(Present));
        assert_eq!(attendance_code("Y3").map(|a| a.category), Some(NotPossible));
        assert_eq!(attendance_code("H").map(|a| a.legacy), Some(true));
        assert!(attendance_code("Y8").is_none());
        assert!(attendance_code("").is_none());
    }

    #[test]
    fn approved_offsite_counts_as_attending_and_not_possible_is_left_out() {
        assert!(ApprovedOffsite.is_attendance() && ApprovedOffsite.is_possible());
        assert!(!ApprovedOffsite.is_absence());
        assert!(Authorised.is_absence() && Unauthorised.is_absence());
        assert!(!NotPossible.is_possible() && !NotPossible.is_absence());
    }

    #[test]
    fn validity_dates_follow_the_2024_and_2020_revisions() {
        let before = date(2024, 7, 1);
        let after = date(2024, 9, 2);
        let h = attendance_code("H").map(|a| (a.valid_on(before), a.valid_on(after)));
        assert_eq!(h, Some((true, false)));
        let y1 = attendance_code("Y1").map(|a| (a.valid_on(before), a.valid_on(after)));
        assert_eq!(y1, Some((false, true)));
        let ot = reason_code("OT")
            .map(|r| (r.valid_on(date(2019, 10, 1)), r.valid_on(date(2021, 1, 5))));
        assert_eq!(ot, Some((true, false)));
    }
}
