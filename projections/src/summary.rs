//! One human line per event: what the chronology, the audit trail and the
//! CLI show in a list, before anyone opens the entry's `data`.
//!
//! A summary is always one line: prose fields (descriptions, rationales)
//! may hold many paragraphs, so they are flattened to one line and cut at
//! [`MAX_PROSE_IN_SUMMARY`] characters. The full text stays in `data`.

use casebook_engine::codes::attendance_code;
use casebook_engine::event::{AttendanceMarked, CaseEvent, IncidentRole, SanctionKind, Session};

/// Longest piece of prose quoted in a summary, in characters: enough to
/// recognise an entry in a list, short enough to keep a chronology
/// scannable at a strategy meeting.
pub const MAX_PROSE_IN_SUMMARY: usize = 120;

/// A register mark's summary, appended to `out` (what [`summary`] gives
/// for it): `Register 2026-09-15 am: / (Present (am))`. Written piece by
/// piece, the date from its digits: the timeline writes one per mark, most
/// of a record.
pub(crate) fn attendance_summary(a: &AttendanceMarked, out: &mut String) {
    out.push_str("Register ");
    match casebook_engine::event::date_ascii(&a.date) {
        Some(date) => out.extend(date.iter().map(|&b| char::from(b))),
        None => {
            use std::fmt::Write;
            let _ = write!(out, "{}", a.date);
        }
    }
    session_and_code(a.session, &a.code, out);
}

/// What a register mark's summary says after its date, appended to `out`:
/// ` am: / (Present (am))`.
fn session_and_code(session: Session, code: &str, out: &mut String) {
    out.push_str(match session {
        Session::Am => " am: ",
        Session::Pm => " pm: ",
    });
    out.push_str(code);
    match attendance_code(code) {
        Some(c) => {
            out.push_str(" (");
            out.push_str(c.description);
            out.push(')');
        }
        None => out.push_str(" (unknown code)"),
    }
}

/// A register mark's summary as a JSON string (quotes and escapes as
/// `pretty::write_str` of [`attendance_summary`]'s text), written straight
/// into `out`: the date's digits and the rest of it escaped once a code.
/// `false` (and nothing written) for a date not written as `YYYY-MM-DD` or
/// a code not in the DfE's table (the caller writes [`attendance_summary`]'s
/// text then).
pub(crate) fn write_attendance_summary_json(a: &AttendanceMarked, out: &mut Vec<u8>) -> bool {
    let (Some(date), Some(tail)) = (
        casebook_engine::event::date_ascii(&a.date),
        mark_summary_tail(a.session, &a.code),
    ) else {
        return false;
    };
    out.extend_from_slice(b"\"Register ");
    out.extend_from_slice(&date);
    out.extend_from_slice(tail);
    true
}

/// What [`write_attendance_summary_json`] writes after the date for a mark
/// of a code of the DfE's table in `session` ([`session_and_code`]'s text
/// escaped, and the closing quote), built the first time the code is
/// written: a mark's summary is three copies. `None` for a code not in the
/// table (or past the first [`TAILS`]).
fn mark_summary_tail(session: Session, code: &str) -> Option<&'static [u8]> {
    static BUILT: [std::sync::OnceLock<[Vec<u8>; 2]>; TAILS] =
        [const { std::sync::OnceLock::new() }; TAILS];
    let i = casebook_engine::codes::attendance_code_index(code)?;
    let [am, pm] = BUILT.get(i)?.get_or_init(|| {
        [Session::Am, Session::Pm].map(|session| {
            let mut text = String::new();
            session_and_code(session, code, &mut text);
            let mut tail = Vec::with_capacity(text.len() + 8);
            crate::pretty::write_str_content(&mut tail, &text);
            tail.push(b'"');
            tail
        })
    });
    Some(match session {
        Session::Am => am,
        Session::Pm => pm,
    })
}

/// Codes whose summary tails are kept (the DfE's table holds fewer; a code
/// past them is written as any code outside the table).
const TAILS: usize = 64;

/// The summary of the most frequent entries after the register marks
/// (rewards, incidents, absence follow-ups, parent contacts, sanctions),
/// appended to `out` piece by piece: what [`summary`] gives for them,
/// without its `format!`s. `false` (and `out` untouched) for any other
/// event.
pub(crate) fn frequent_summary(event: &CaseEvent, out: &mut String) -> bool {
    use std::fmt::Write;
    match event {
        CaseEvent::RewardIssued(r) => {
            out.push_str("Reward (");
            out.push_str(&r.kind);
            match r.points {
                Some(1) => out.push_str(", 1 point"),
                Some(n) => {
                    let _ = write!(out, ", {n} points");
                }
                None => {}
            }
            out.push_str("): ");
            prose_into(&r.reason, out);
        }
        CaseEvent::IncidentRecorded(i) => {
            out.push_str("Incident (");
            out.push_str(&i.category);
            let _ = write!(out, ", severity {}) in ", i.severity);
            out.push_str(&i.location);
            out.push_str(" — ");
            out.push_str(incident_role(i.role));
            match i.participants.len() {
                0 => {}
                1 => out.push_str("; 1 other pupil"),
                n => {
                    let _ = write!(out, "; {n} other pupils");
                }
            }
        }
        CaseEvent::AbsenceFollowedUp(a) => {
            out.push_str("Absence on ");
            match casebook_engine::event::date_ascii(&a.date) {
                Some(date) => out.extend(date.iter().map(|&b| char::from(b))),
                None => {
                    let _ = write!(out, "{}", a.date);
                }
            }
            out.push_str(" followed up by ");
            out.push_str(&a.method);
            out.push_str(": ");
            prose_into(&a.outcome, out);
        }
        CaseEvent::ParentContacted(p) => {
            out.push_str("Parent contacted (");
            out.push_str(&p.method);
            out.push_str("): ");
            prose_into(&p.summary, out);
        }
        CaseEvent::SanctionIssued(s) => {
            out.push_str("Sanction (");
            out.push_str(sanction_kind(s.kind));
            out.push_str("): ");
            prose_into(&s.reason, out);
        }
        _ => return false,
    }
    true
}

/// The snake_case name serde gives an incident role (what [`snake`] gives).
pub(crate) fn incident_role(role: IncidentRole) -> &'static str {
    match role {
        IncidentRole::Perpetrator => "perpetrator",
        IncidentRole::Target => "target",
        IncidentRole::Witness => "witness",
        IncidentRole::Involved => "involved",
    }
}

/// The snake_case name serde gives a sanction kind (what [`snake`] gives).
pub(crate) fn sanction_kind(kind: SanctionKind) -> &'static str {
    match kind {
        SanctionKind::Detention => "detention",
        SanctionKind::Isolation => "isolation",
        SanctionKind::InternalExclusion => "internal_exclusion",
        SanctionKind::ReportCard => "report_card",
    }
}

/// One human line describing `event`, for every event type.
pub fn summary(event: &CaseEvent) -> String {
    match event {
        CaseEvent::PupilRegistered(p) => {
            let mut s = format!(
                "Registered: {} ({})",
                one_line(&p.name),
                year_group(p.year_group)
            );
            if let Some(class) = &p.class {
                s.push_str(&format!(", class {class}"));
            }
            if let Some(site) = &p.site {
                s.push_str(&format!(", site {site}"));
            }
            s
        }
        CaseEvent::ReferralReceived(r) => {
            format!("Referral from {}: {}", r.source, prose(&r.reason))
        }
        CaseEvent::CaseOpened(c) => {
            format!(
                "Case opened ({}): {}",
                c.case_type.as_str(),
                prose(&c.summary)
            )
        }
        CaseEvent::KeyworkerAssigned(k) => format!("Keyworker assigned: {}", k.staff),
        CaseEvent::ConcernRaised(c) => {
            format!("Concern ({}): {}", c.category, prose(&c.summary))
        }
        CaseEvent::ConcernEscalated(c) => {
            format!("Concern escalated to {}: {}", c.to, prose(&c.reason))
        }
        CaseEvent::SafeguardingDecisionMade(d) => format!(
            "Safeguarding decision: {} — {}",
            snake(&d.decision),
            prose(&d.rationale)
        ),
        CaseEvent::ExternalReferralMade(r) => {
            let reference = r
                .reference
                .as_deref()
                .map(|x| format!(" (ref {x})"))
                .unwrap_or_default();
            format!("Referral to {}{reference}: {}", r.agency, prose(&r.reason))
        }
        CaseEvent::IncidentRecorded(i) => {
            let mut s = format!(
                "Incident ({}, severity {}) in {} — {}",
                i.category,
                i.severity,
                i.location,
                snake(&i.role)
            );
            match i.participants.len() {
                0 => {}
                1 => s.push_str("; 1 other pupil"),
                n => s.push_str(&format!("; {n} other pupils")),
            }
            s
        }
        CaseEvent::ReasonableForceUsed(f) => format!(
            "Reasonable force ({}, {} min) by {}; injuries: {}; parent informed: {}",
            f.hold,
            f.duration_minutes,
            f.staff,
            prose(&f.injuries),
            if f.parent_informed { "yes" } else { "NO" }
        ),
        CaseEvent::SanctionIssued(s) => {
            format!("Sanction ({}): {}", snake(&s.kind), prose(&s.reason))
        }
        CaseEvent::SuspensionIssued(s) => {
            let mut codes = vec![s.reason_code.as_str()];
            codes.extend(s.additional_reason_codes.iter().map(String::as_str));
            format!(
                "Suspension: {} from {} ({})",
                days(s.days),
                s.start_date,
                codes.join(", ")
            )
        }
        CaseEvent::PermanentExclusionIssued(p) => {
            let mut codes = vec![p.reason_code.as_str()];
            codes.extend(p.additional_reason_codes.iter().map(String::as_str));
            format!(
                "Permanent exclusion from {} ({})",
                p.effective_date,
                codes.join(", ")
            )
        }
        CaseEvent::InterventionStarted(i) => format!(
            "Intervention {} started ({}): {}",
            i.intervention,
            i.kind,
            prose(&i.goal)
        ),
        CaseEvent::InterventionSessionDelivered(s) => format!(
            "Intervention {} session: {}",
            s.intervention,
            if s.attended { "attended" } else { "missed" }
        ),
        CaseEvent::InterventionEnded(e) => format!(
            "Intervention {} ended: {}",
            e.intervention,
            snake(&e.outcome)
        ),
        CaseEvent::PlanAgreed(p) => format!(
            "Plan {} agreed ({}); review due {}",
            p.plan,
            snake(&p.kind),
            p.review_due
        ),
        CaseEvent::PlanReviewed(r) => {
            let next = match r.next_review_due {
                Some(d) => format!("next review {d}"),
                None => "plan ended".to_string(),
            };
            format!("Plan {} reviewed: {}; {next}", r.plan, prose(&r.outcome))
        }
        CaseEvent::RestorativeMeetingHeld(m) => format!(
            "Restorative meeting with {}: {}",
            m.participants.join(", "),
            prose(&m.agreement)
        ),
        CaseEvent::ReintegrationMeetingHeld(m) => format!(
            "Reintegration meeting ({}): {}",
            m.attendees.join(", "),
            prose(&m.agreed_support)
        ),
        CaseEvent::ReintegrationCompleted(r) => {
            format!("Reintegration completed: {}", prose(&r.outcome))
        }
        CaseEvent::AttendanceMarked(a) => {
            let mut s = String::new();
            attendance_summary(a, &mut s);
            s
        }
        CaseEvent::RewardIssued(r) => {
            let points = match r.points {
                Some(1) => ", 1 point".to_string(),
                Some(n) => format!(", {n} points"),
                None => String::new(),
            };
            format!("Reward ({}{points}): {}", r.kind, prose(&r.reason))
        }
        CaseEvent::AbsenceFollowedUp(a) => format!(
            "Absence on {} followed up by {}: {}",
            a.date,
            a.method,
            prose(&a.outcome)
        ),
        CaseEvent::AlternativeProvisionArranged(a) => format!(
            "Alternative provision at {} from {}: {}",
            a.provider,
            a.start_date,
            prose(&a.reason)
        ),
        CaseEvent::ParentContacted(p) => {
            format!("Parent contacted ({}): {}", p.method, prose(&p.summary))
        }
        CaseEvent::AgencyLiaison(a) => {
            format!("Liaison with {}: {}", a.agency, prose(&a.summary))
        }
        CaseEvent::EntryCorrected(c) => {
            let fields: Vec<&str> = c.changes.keys().map(String::as_str).collect();
            format!(
                "Correction of entry {} ({}): {}",
                c.event,
                fields.join(", "),
                prose(&c.reason)
            )
        }
        CaseEvent::CaseClosed(c) => format!("Case closed: {}", prose(&c.outcome)),
        CaseEvent::RecordViewed(v) => match &v.purpose {
            Some(p) => format!("Viewed {} of {}: {}", v.view, v.pupil, prose(p)),
            None => format!("Viewed {} of {}", v.view, v.pupil),
        },
        CaseEvent::StaffRegistered(s) => format!(
            "Staff {} registered as {}",
            s.staff,
            s.roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CaseEvent::RoleGranted(g) => format!("Role {} granted to {}", g.role, g.staff),
        CaseEvent::RoleRevoked(r) => format!("Role {} revoked from {}", r.role, r.staff),
        CaseEvent::AccessRefused(a) => format!(
            "Refused: {} may not {}: {}",
            a.staff,
            a.action,
            prose(&a.reason)
        ),
        CaseEvent::PupilErased(e) => format!("Personal data erased: {}", prose(&e.reason)),
        CaseEvent::LegalHoldApplied(h) => format!("Legal hold applied: {}", prose(&h.reason)),
        CaseEvent::LegalHoldLifted(h) => format!("Legal hold lifted: {}", prose(&h.reason)),
        CaseEvent::TransferredOut(t) => format!("Record transferred to school {}", t.to),
        CaseEvent::TransferredIn(t) => format!(
            "Record received from school {} ({} events, signer {})",
            t.from, t.events, t.signer
        ),
        // `CaseEvent` is non-exhaustive: a type added to the engine shows by
        // name until it is given its own line here.
        other => other.type_name().to_string(),
    }
}

/// `Reception` or `Year 7`.
fn year_group(year: u8) -> String {
    if year == 0 {
        "Reception".to_string()
    } else {
        format!("Year {year}")
    }
}

/// `1 day`, `2.5 days`.
pub fn days(days: f64) -> String {
    if days == 1.0 {
        "1 day".to_string()
    } else {
        format!("{days} days")
    }
}

/// The snake_case name serde gives a unit enum value (`refer_social_care`),
/// so summaries use the words of the JSON.
pub fn snake<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_string(),
    }
}

/// A label or name on one line (labels are validated, but a log may be
/// older than the validation).
fn one_line(text: &str) -> String {
    // The words joined by single spaces, in one pass (no vector of words).
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// [`prose`] of `text`, appended to `out` (no `String` of its own).
fn prose_into(text: &str, out: &mut String) {
    // ASCII already on one line, single spaces between its words (most
    // prose): itself, or its first characters, without splitting it.
    if is_flat_ascii(text.as_bytes()) {
        match text.get(..MAX_PROSE_IN_SUMMARY - 1) {
            Some(head) if text.len() > MAX_PROSE_IN_SUMMARY => {
                out.push_str(head);
                out.push('…');
            }
            _ => out.push_str(text),
        }
        return;
    }
    let start = out.len();
    // The words joined by single spaces, as `one_line` joins them.
    let mut first = true;
    for word in text.split_whitespace() {
        if !first {
            out.push(' ');
        }
        first = false;
        out.push_str(word);
    }
    // At most one character a byte: a short text is not counted.
    let flat = &out[start..];
    if flat.len() <= MAX_PROSE_IN_SUMMARY || flat.chars().count() <= MAX_PROSE_IN_SUMMARY {
        return;
    }
    // Cut after MAX_PROSE_IN_SUMMARY - 1 characters, then the ellipsis.
    let cut = out[start..]
        .char_indices()
        .nth(MAX_PROSE_IN_SUMMARY - 1)
        .map_or(out.len(), |(i, _)| start + i);
    out.truncate(cut);
    out.push('…');
}

/// Whether `text` is ASCII that [`one_line`] leaves as it is: no
/// whitespace but single spaces between words (`char::is_whitespace` of
/// ASCII is the space and 0x09 to 0x0d).
fn is_flat_ascii(text: &[u8]) -> bool {
    if text.first() == Some(&b' ') || text.last() == Some(&b' ') {
        return false;
    }
    let mut space = false;
    for &b in text {
        match b {
            0x80.. | 0x09..=0x0d => return false,
            b' ' if space => return false,
            _ => space = b == b' ',
        }
    }
    true
}

/// Prose flattened to one line and cut at [`MAX_PROSE_IN_SUMMARY`]
/// characters.
fn prose(text: &str) -> String {
    let mut out = String::new();
    prose_into(text, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every code of the DfE's table has its summary tails kept (none is
    /// past [`TAILS`]), and a code outside it has none.
    #[test]
    fn every_register_code_has_its_summary_tails() {
        for c in casebook_engine::codes::ATTENDANCE_CODES {
            for session in [Session::Am, Session::Pm] {
                let tail = mark_summary_tail(session, c.code).expect("kept");
                let text = std::str::from_utf8(tail).unwrap();
                assert!(text.contains(c.description), "{text}");
            }
        }
        assert_eq!(mark_summary_tail(Session::Am, "!"), None);
        assert_eq!(mark_summary_tail(Session::Am, "Q9"), None);
        assert_eq!(mark_summary_tail(Session::Pm, ""), None);
    }

    /// Flat ASCII prose of 119, 120 and 121 characters: the first two
    /// whole, the third cut to 119 and an ellipsis, as `prose` gives them.
    #[test]
    fn flat_prose_is_cut_after_120_characters() {
        for (n, want) in [(119, 119), (120, 120), (121, 119)] {
            // `ab ab ab …`, ending on a letter.
            let mut text: String = "ab ".repeat(50).chars().take(n).collect();
            if text.ends_with(' ') {
                text.pop();
                text.push('c');
            }
            assert!(is_flat_ascii(text.as_bytes()) && text.len() == n);
            let mut into = String::new();
            prose_into(&text, &mut into);
            assert_eq!(into, prose(&text), "{n}");
            assert_eq!(into.trim_end_matches('…').len(), want, "{n}");
            assert_eq!(into.ends_with('…'), n > MAX_PROSE_IN_SUMMARY, "{n}");
        }
    }

    proptest! {
        /// `one_line` and `prose` give what the word split and join (and
        /// the character cut) give, for any text.
        #[test]
        fn prose_is_the_joined_words_cut(
            text in prop_oneof![
                "(\\PC|[ \t\n\r\u{a0}\u{2003}]){0,200}",
                // ASCII, most of it already on one line (`prose_into`'s
                // own path), some of it not.
                "[ -~]{0,200}",
                "[a-z]{1,9}( [a-z]{1,9}){0,30}",
                "[a-z ]{0,130}[\t\n\x0b\x0c\r]?[a-z ]{0,10}",
            ],
        ) {
            let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
            prop_assert_eq!(one_line(&text), joined.clone());
            let want = if joined.chars().count() <= MAX_PROSE_IN_SUMMARY {
                joined
            } else {
                let mut cut: String = joined.chars().take(MAX_PROSE_IN_SUMMARY - 1).collect();
                cut.push('…');
                cut
            };
            prop_assert_eq!(prose(&text), want.clone());
            let mut into = "before ".to_string();
            prose_into(&text, &mut into);
            prop_assert_eq!(into, format!("before {want}"));
        }
    }

    use casebook_engine::event::{IncidentRecorded, IncidentRole, Participant};

    #[test]
    fn incident_summary_names_category_severity_place_and_role() {
        let e = CaseEvent::IncidentRecorded(IncidentRecorded {
            category: "verbal_abuse_adult".into(),
            severity: 3,
            location: "corridor".into(),
            description: "Shouted at a member of staff".into(),
            role: IncidentRole::Perpetrator,
            participants: vec![],
            class: None,
            site: None,
        });
        assert_eq!(
            summary(&e),
            "Incident (verbal_abuse_adult, severity 3) in corridor — perpetrator"
        );
        let mut shared = e.clone();
        if let CaseEvent::IncidentRecorded(i) = &mut shared {
            i.participants.push(Participant {
                pupil: "P2".into(),
                role: IncidentRole::Target,
            });
        }
        assert!(summary(&shared).ends_with("; 1 other pupil"));
    }

    #[test]
    fn long_prose_is_one_cut_line() {
        let text = format!("first line\nsecond {}", "word ".repeat(100));
        let line = prose(&text);
        assert!(!line.contains('\n'));
        assert_eq!(line.chars().count(), MAX_PROSE_IN_SUMMARY);
        assert!(line.ends_with('…'));
    }

    #[test]
    fn half_days_print_as_written() {
        assert_eq!(days(2.5), "2.5 days");
        assert_eq!(days(3.0), "3 days");
        assert_eq!(days(1.0), "1 day");
    }
}
