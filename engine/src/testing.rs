//! Property-test strategies shared by the engine's tests and the crates
//! built on it (`--features test-support`; never in a release build).

use proptest::prelude::*;

use crate::store::{AppendRequest, IdsChecked, Seen};

use crate::event::{
    AbsenceFollowedUp, CaseEvent, IncidentRecorded, IncidentRole, ParentContacted, Participant,
    RewardIssued, SanctionIssued, SanctionKind,
};

/// Text of every kind a log may hold: words, quotes and backslashes,
/// control characters, unusual whitespace, prose longer than a summary's
/// cut (multi-byte characters too), and the names of keys and enums.
pub fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,12}",
        Just("class".to_string()),
        Just("site".to_string()),
        Just("detention".to_string()),
        "(\\PC|[ \t\n\r\"\\\\\u{0}\u{1f}\u{a0}\u{2003}é€]){0,40}",
        "([a-zé€]{1,9}[ \n\t]{1,3}){10,40}",
        ".{0,300}",
    ]
}

/// Any role in an incident.
pub fn any_role() -> impl Strategy<Value = IncidentRole> {
    prop_oneof![
        Just(IncidentRole::Perpetrator),
        Just(IncidentRole::Target),
        Just(IncidentRole::Witness),
        Just(IncidentRole::Involved),
    ]
}

/// A reward, incident, absence follow-up, parent contact or sanction: the
/// five most frequent non-register events, which have direct decoders and
/// timeline writers held equal to the general path by property tests.
pub fn frequent_event() -> impl Strategy<Value = CaseEvent> {
    let reward = (
        any_text(),
        any_text(),
        prop_oneof![Just(None), Just(Some(1u32)), any::<Option<u32>>()],
    )
        .prop_map(|(kind, reason, points)| {
            CaseEvent::RewardIssued(RewardIssued {
                kind,
                reason,
                points,
            })
        });
    let incident = (
        (any_text(), any::<u8>(), any_text(), any_text(), any_role()),
        prop::collection::vec((any_text(), any_role()), 0..4),
        prop::option::of(any_text()),
        prop::option::of(any_text()),
    )
        .prop_map(
            |((category, severity, location, description, role), ps, class, site)| {
                CaseEvent::IncidentRecorded(IncidentRecorded {
                    category,
                    severity,
                    location,
                    description,
                    role,
                    participants: ps
                        .into_iter()
                        .map(|(pupil, role)| Participant { pupil, role })
                        .collect(),
                    class,
                    site,
                })
            },
        );
    let absence = (-1_000i32..4_000_000, any_text(), any_text()).prop_filter_map(
        "a date",
        |(days, method, outcome)| {
            let date = chrono::NaiveDate::from_num_days_from_ce_opt(days)?;
            Some(CaseEvent::AbsenceFollowedUp(AbsenceFollowedUp {
                date,
                method,
                outcome,
            }))
        },
    );
    let contact = (any_text(), any_text()).prop_map(|(method, summary)| {
        CaseEvent::ParentContacted(ParentContacted { method, summary })
    });
    let sanction = (
        prop_oneof![
            Just(SanctionKind::Detention),
            Just(SanctionKind::Isolation),
            Just(SanctionKind::InternalExclusion),
            Just(SanctionKind::ReportCard),
        ],
        any_text(),
    )
        .prop_map(|(kind, reason)| CaseEvent::SanctionIssued(SanctionIssued { kind, reason }));
    prop_oneof![reward, incident, absence, contact, sanction]
}

/// What an import planner hands a writer with a batch whose ids it looked
/// up ([`IdsChecked`]): for backends' tests of
/// [`crate::store::EventStore::append_atomic_checked`] outside this crate.
/// `unchecked`: the indices, among the requests' events, of the ids not
/// looked up, in increasing order.
pub fn ids_checked(seen: Seen, unchecked: Vec<u32>, requests: &[AppendRequest]) -> IdsChecked {
    IdsChecked::new(seen, unchecked, requests)
}

/// What a look-up of the same log as `seen` would say had it seen the log
/// through `through`: for tests of a writer given a look-up that saw more
/// than the log now holds (a log restored behind its back).
pub fn seen_through(seen: Seen, through: u64) -> Seen {
    Seen::new(seen.log(), through)
}

/// A file with room for `room` more bytes, then failing as a full disk
/// does (`StorageFull`): for tests of what is written as it is encoded.
pub struct Full {
    pub room: usize,
}

impl std::io::Write for Full {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
