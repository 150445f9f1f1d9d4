//! The emulator dials: each campaign has result codes (`GET
//! dialler/campaigns/campaign/{ID}/resultCodes`, seed 003), and a call recorded on demand
//! (`POST /_emulator/calls`, [`super::Emulator::record_call`]) does to a contact what an
//! agent's call does on the real dialler: a history entry (`.../contact/{ID}/history`,
//! seed 001's fields), one more try, the call's result code on the contact and, for a
//! call-back code, the time of its next try.

use chrono::{Duration as ChronoDuration, NaiveDateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::{Data, EmuContact, EmulatorConfig};

/// What a result code records (the dialler's DiallerResultCodesTypes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultKind {
    /// Finished with success (type 1, "Abschluss"): `bDone`.
    Done,
    /// Finished without (type 2, "Abbruch"): `bAborted`.
    Aborted,
    /// Call again later (type 3, "Wiedervorlage"): `bDelay`, sets `dtNextTry`.
    Delay,
    /// An appointment was made (type 4, "Termin"): `bAppointment`.
    Appointment,
}

impl ResultKind {
    fn type_id(self) -> i64 {
        match self {
            ResultKind::Done => 1,
            ResultKind::Aborted => 2,
            ResultKind::Delay => 3,
            ResultKind::Appointment => 4,
        }
    }

    /// The type's name in `languagesID` 1 (English) or 2 (German).
    fn content(self, german: bool) -> &'static str {
        match (self, german) {
            (ResultKind::Done, false) => "Done",
            (ResultKind::Aborted, false) => "Aborted",
            (ResultKind::Delay, false) => "Call back",
            (ResultKind::Appointment, false) => "Appointment",
            (ResultKind::Done, true) => "Abschluss",
            (ResultKind::Aborted, true) => "Abbruch",
            (ResultKind::Delay, true) => "Wiedervorlage",
            (ResultKind::Appointment, true) => "Termin",
        }
    }

    /// `done`, `aborted`, `delay` or `appointment`.
    pub fn parse(s: &str) -> Result<ResultKind, String> {
        match s.to_ascii_lowercase().as_str() {
            "done" => Ok(ResultKind::Done),
            "aborted" => Ok(ResultKind::Aborted),
            "delay" => Ok(ResultKind::Delay),
            "appointment" => Ok(ResultKind::Appointment),
            other => Err(format!(
                "`{other}` is no result type: done, aborted, delay or appointment"
            )),
        }
    }
}

/// One result code of a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResultCode {
    pub campaign_id: i64,
    pub id: i64,
    /// What a CRM import keys on (`ABG`, `Aufleger`).
    pub export_key: String,
    /// What agents see.
    pub content: String,
    pub kind: ResultKind,
}

/// Each campaign's four codes, modelled on seed 003's example: a done code (`ABG`), an
/// aborted one (`Aufleger`), a call-back one (`WV`) and an appointment (`Termin`). The
/// first campaign's IDs start at 2695 as in the example, each further campaign's 10 on.
pub fn default_result_codes(campaigns: &[(i64, String)]) -> Vec<ResultCode> {
    let defaults = [
        ("ABG", "Abgeschlossen", ResultKind::Done),
        ("Aufleger", "Aufleger", ResultKind::Aborted),
        ("WV", "Wiedervorlage", ResultKind::Delay),
        ("Termin", "Termin vereinbart", ResultKind::Appointment),
    ];
    let mut codes = Vec::new();
    for (i, (campaign_id, _)) in campaigns.iter().enumerate() {
        for (j, (key, content, kind)) in defaults.iter().enumerate() {
            codes.push(ResultCode {
                campaign_id: *campaign_id,
                id: 2695 + 10 * i as i64 + j as i64,
                export_key: (*key).to_string(),
                content: (*content).to_string(),
                kind: *kind,
            });
        }
    }
    codes
}

/// Every code of the tenant: the campaigns' defaults, then the configured extras.
pub(super) fn all_codes(cfg: &EmulatorConfig) -> impl Iterator<Item = ResultCode> + '_ {
    default_result_codes(&cfg.campaigns)
        .into_iter()
        .chain(cfg.result_codes.iter().cloned())
}

/// A code as `GET .../resultCodes` lists it (seed 003's fields).
pub(super) fn code_json(code: &ResultCode, german: bool) -> Value {
    json!({
        "ID": code.id,
        "DiallerCampaignsID": code.campaign_id,
        "ExportKey": code.export_key,
        "Content": code.content,
        "ShortText": format!("DiallerCampaignsResultCodes.{}", code.id),
        "bDone": code.kind == ResultKind::Done,
        "bAborted": code.kind == ResultKind::Aborted,
        "bDelay": code.kind == ResultKind::Delay,
        "bAppointment": code.kind == ResultKind::Appointment,
        "bAllowDelete": true,
        "bAgentBound": null,
        "TimeOffset": null,
        "DiallerResultCodesTypesID": code.kind.type_id(),
        "DiallerResultCodesTypesContent": code.kind.content(german),
        "DiallerResultCodesTypesShortText": format!("DiallerResultCodesTypes.{}", code.kind.type_id()),
    })
}

/// One call in a contact's history.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub history_id: i64,
    pub result_code: i64,
    pub kind: ResultKind,
    pub users_id: i64,
    pub connected: bool,
    /// The number dialled, digits with country code (as the history example shows it).
    pub phone: String,
    pub ended: NaiveDateTime,
}

/// The time format of the dialler's answers (`2020-11-11T15:31:47.070`).
fn stamp(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// A history entry as `GET .../history` returns it (seed 001's fields).
pub(super) fn history_json(cfg: &EmulatorConfig, c: &EmuContact, call: &CallRecord) -> Value {
    let ms = ChronoDuration::milliseconds;
    let start = call.ended - ms(5_421);
    let alert = start + ms(1_541);
    let connect = alert + ms(927);
    json!({
        "DiallerContactsHistoryID": call.history_id,
        "DiallerContactsID": c.id,
        "DiallerCampaignsID": c.campaign_id,
        "UserData": c.fields.get("UserData").cloned().unwrap_or(Value::Null),
        "UserData2": c.fields.get("UserData2").cloned().unwrap_or(Value::Null),
        "UserData3": c.fields.get("UserData3").cloned().unwrap_or(Value::Null),
        "ClientsID": cfg.client_id,
        "bOutbound": true,
        "bTestCall": false,
        "bCallerHangup": call.connected,
        "CONNRES": if call.connected { 1 } else { 0 },
        "CauseCodesID": if call.connected { 31 } else { 19 },
        "PhoneNumber": call.phone,
        "PhoneNumberOffset": 1,
        "BNumber": call.phone,
        "ANumber": "49894614950665",
        "UsersID": call.users_id,
        "DiallerCampaignsResultCodesID": call.result_code,
        "DiallerResultCodesTypesID": call.kind.type_id(),
        "dtCallStart": stamp(start),
        "dtCallAlert": stamp(alert),
        "dtCallConnect": if call.connected { Value::from(stamp(connect)) } else { Value::Null },
        "dtCallEnd": stamp(call.ended),
        "dtCreatedDiallerContactsHistory": stamp(call.ended + ms(20_000)),
    })
}

/// A call to record: the contact by `ID` or (the first one found) by `UserData`, and
/// the `ExportKey` of the result the agent chose.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    #[serde(rename = "ID", default)]
    pub id: Option<i64>,
    #[serde(rename = "UserData", default)]
    pub user_data: Option<String>,
    #[serde(rename = "ExportKey")]
    pub export_key: String,
    /// The agent (default 1).
    #[serde(rename = "UsersID", default)]
    pub users_id: Option<i64>,
    /// Whether someone answered (default true).
    #[serde(rename = "Connected", default)]
    pub connected: Option<bool>,
}

/// Why a call could not be recorded: an HTTP status and a message.
pub type CallError = (u16, String);

/// Records `call` now: a history entry, one more try, the contact's result code, and
/// `dtNextTry` an hour on for a call-back code (none otherwise). A locked contact is not
/// dialled (409).
pub(super) fn record_call(
    cfg: &EmulatorConfig,
    d: &mut Data,
    call: &Call,
) -> Result<Value, CallError> {
    let id = match (call.id, &call.user_data) {
        (Some(id), _) => id,
        (None, Some(u)) => match d.by_user_data.get(u).and_then(|ids| ids.first()) {
            Some(id) => *id,
            None => return Err((404, format!("no contact with UserData {u:?}"))),
        },
        (None, None) => return Err((400, "name the contact: \"ID\" or \"UserData\"".into())),
    };
    let history_id = d.next_history_id;
    let Some(c) = d.contacts.get_mut(&id) else {
        return Err((404, format!("no contact with ID {id}")));
    };
    if c.locked {
        return Err((
            409,
            format!("contact {id} is locked; the dialler does not dial it"),
        ));
    }
    let codes: Vec<ResultCode> = all_codes(cfg)
        .filter(|r| r.campaign_id == c.campaign_id)
        .collect();
    let Some(code) = codes.iter().find(|r| r.export_key == call.export_key) else {
        let keys: Vec<&str> = codes.iter().map(|r| r.export_key.as_str()).collect();
        return Err((
            400,
            format!(
                "campaign {} has no result code {:?}; it has {}",
                c.campaign_id,
                call.export_key,
                keys.join(", ")
            ),
        ));
    };
    let now = Utc::now().naive_utc();
    let phone = c
        .fields
        .get("PhoneNumber1")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim_start_matches('+')
        .to_string();
    let record = CallRecord {
        history_id,
        result_code: code.id,
        kind: code.kind,
        users_id: call.users_id.unwrap_or(1),
        connected: call.connected.unwrap_or(true),
        phone,
        ended: now,
    };
    c.tries += 1;
    c.result_code = Some(code.id);
    c.next_try = (code.kind == ResultKind::Delay).then(|| stamp(now + ChronoDuration::hours(1)));
    c.history.push(record);
    let json = history_json(cfg, c, c.history.last().expect("just pushed"));
    d.next_history_id += 1;
    Ok(json)
}

/// Dials once on its own, as `--dial-rate` does per tick: the first contact after ID
/// `after` (round-robin) that the dialler would still call (unlocked, no done or aborted
/// result), with a result drawn from its campaign's codes. The history entry, or `None`
/// when no contact is left to call.
pub(super) fn dial_next(
    cfg: &EmulatorConfig,
    d: &mut Data,
    after: &mut i64,
    rng: &mut fastrand::Rng,
) -> Option<Value> {
    let codes: Vec<ResultCode> = all_codes(cfg).collect();
    let is_final = |id: Option<i64>| {
        id.and_then(|id| codes.iter().find(|c| c.id == id))
            .is_some_and(|c| matches!(c.kind, ResultKind::Done | ResultKind::Aborted))
    };
    let start = *after;
    let callable = |c: &&EmuContact| !c.locked && !is_final(c.result_code);
    let next = d
        .contacts
        .range(start + 1..)
        .map(|(_, c)| c)
        .find(callable)
        .or_else(|| d.contacts.range(..=start).map(|(_, c)| c).find(callable))?;
    let campaign: Vec<&ResultCode> = codes
        .iter()
        .filter(|c| c.campaign_id == next.campaign_id)
        .collect();
    let code = campaign.get(rng.usize(..campaign.len().max(1)))?;
    let call = Call {
        id: Some(next.id),
        export_key: code.export_key.clone(),
        users_id: Some(rng.i64(1..=cfg.users.len().max(1) as i64)),
        connected: Some(rng.u8(..10) < 8),
        ..Call::default()
    };
    *after = next.id;
    record_call(cfg, d, &call).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_campaign_gets_four_codes_of_each_kind() {
        let codes = default_result_codes(&[(538, "A".into()), (539, "B".into())]);
        assert_eq!(codes.len(), 8);
        assert_eq!(codes[0].id, 2695);
        assert_eq!(codes[0].export_key, "ABG");
        assert_eq!(codes[4].id, 2705);
        assert_eq!(codes[4].campaign_id, 539);
        let kinds: Vec<ResultKind> = codes[..4].iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                ResultKind::Done,
                ResultKind::Aborted,
                ResultKind::Delay,
                ResultKind::Appointment
            ]
        );
        let json = code_json(&codes[1], true);
        assert_eq!(json["bAborted"], true);
        assert_eq!(json["bDone"], false);
        assert_eq!(json["DiallerResultCodesTypesContent"], "Abbruch");
        assert_eq!(ResultKind::parse("Delay"), Ok(ResultKind::Delay));
        assert!(ResultKind::parse("won").is_err());
    }
}
