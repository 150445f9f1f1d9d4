//! The contact and campaign functions on the in-memory data: validation as strict as the
//! documentation allows, imports with their flags, updates, locks, resets, deletes.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

use super::{
    fail, no_endpoint, ok, records, Data, EmuContact, EmulatorConfig, Reply, IMPORT_ONLY,
    REGION_MAX, UPDATE_ONLY,
};
use crate::fields;

pub(super) fn campaign_json(cfg: &EmulatorConfig, id: i64, name: &str) -> Value {
    json!({"ID": id, "Name": name, "ClientsID": cfg.client_id})
}

pub(super) fn users_json(cfg: &EmulatorConfig) -> Value {
    let items: Vec<Value> = cfg
        .users
        .iter()
        .enumerate()
        .map(|(i, uid)| json!({"ID": i + 1, "UID": uid, "ClientsID": cfg.client_id}))
        .collect();
    json!({
        "filter": "", "limitStart": 0, "limitPageSize": -1, "count": items.len(),
        "records": items, "orderBy": "UID", "ascending": true, "status": 200
    })
}

pub(super) fn contact_json(c: &EmuContact) -> Value {
    let mut m = c.fields.clone();
    m.insert("ID".into(), json!(c.id));
    m.insert("DiallerCampaignsID".into(), json!(c.campaign_id));
    for i in 1..=6 {
        m.insert(
            format!("nTriesPhoneNumber{i}"),
            json!(if i == 1 { c.tries } else { 0 }),
        );
    }
    m.insert("dtNextTry".into(), json!(c.next_try));
    m.insert("DiallerCampaignsResultCodesID".into(), json!(c.result_code));
    Value::Object(m)
}

pub(super) fn by_id(d: &mut Data, id: &str, f: impl FnOnce(&mut Data, i64) -> Reply) -> Reply {
    match id.parse::<i64>() {
        Ok(id) if d.contacts.contains_key(&id) => f(d, id),
        Ok(_) => fail(StatusCode::NOT_FOUND, "Dialler contact not found"),
        Err(_) => no_endpoint(),
    }
}

pub(super) fn with_first(
    d: &mut Data,
    user_data: Option<String>,
    f: impl FnOnce(&mut Data, i64) -> Reply,
) -> Reply {
    let Some(u) = user_data else {
        return fail(StatusCode::BAD_REQUEST, "Missing parameter userData");
    };
    match d.by_user_data.get(&u).and_then(|ids| ids.first()).copied() {
        Some(id) => f(d, id),
        None => fail(StatusCode::NOT_FOUND, "Dialler contact not found"),
    }
}

pub(super) fn act(d: &mut Data, id: i64, action: &str) -> Reply {
    let c = d.contacts.get_mut(&id).expect("caller checked");
    match action {
        "lock" => c.locked = true,
        "unlock" => c.locked = false,
        _ => reset(c),
    }
    ok(json!({"status": 200}))
}

/// "Its recorded result code is deleted and its dialling attempts set to 0"; the history
/// stays.
pub(super) fn reset(c: &mut EmuContact) {
    c.tries = 0;
    c.result_code = None;
    c.next_try = None;
    c.reset_count += 1;
}

pub(super) fn delete(d: &mut Data, id: i64) -> Reply {
    if let Some(c) = d.contacts.remove(&id) {
        unindex(d, &c);
    }
    ok(json!({"status": 200}))
}

pub(super) fn user_data_of(c: &EmuContact) -> Option<String> {
    c.fields
        .get("UserData")
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub(super) fn index(d: &mut Data, c: &EmuContact) {
    if let Some(u) = user_data_of(c) {
        let ids = d.by_user_data.entry(u).or_default();
        let pos = ids.partition_point(|x| *x < c.id);
        ids.insert(pos, c.id);
    }
}

pub(super) fn unindex(d: &mut Data, c: &EmuContact) {
    if let Some(u) = user_data_of(c) {
        if let Some(ids) = d.by_user_data.get_mut(&u) {
            ids.retain(|x| *x != c.id);
            if ids.is_empty() {
                d.by_user_data.remove(&u);
            }
        }
    }
}

/// Parses a JSON object body, checking the content type the API requires.
pub(super) fn json_body(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, Reply> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "Content-Type must be application/json",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(fail(
            StatusCode::BAD_REQUEST,
            "The body must be a JSON object",
        )),
        Err(e) => Err(fail(StatusCode::BAD_REQUEST, format!("Invalid JSON: {e}"))),
    }
}

/// Checks the names, types and lengths of contact fields.
pub(super) fn check_fields(m: &Map<String, Value>, extra: &[&str]) -> Result<(), Reply> {
    for (k, v) in m {
        let field = fields::by_name(k);
        if field.is_none() && !extra.contains(&k.as_str()) {
            return Err(fail(StatusCode::BAD_REQUEST, format!("Unknown field {k}")));
        }
        let type_ok = match (k.as_str(), v) {
            (_, Value::Null) => k != "ID" && k != "DiallerCampaignsID",
            ("Amount", Value::Number(_)) => true,
            ("ID" | "DiallerCampaignsID" | "RandomSortOrder", Value::Number(n)) => n.is_i64(),
            ("Amount" | "ID" | "DiallerCampaignsID" | "RandomSortOrder", _) => false,
            (_, Value::String(_)) => true,
            _ => false,
        };
        if !type_ok {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!("Field {k} has the wrong type"),
            ));
        }
        if let Value::String(s) = v {
            let max = field
                .and_then(|f| f.max_len)
                .or((k == "Region").then_some(REGION_MAX));
            if max.is_some_and(|max| s.chars().count() > max) {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    format!("Field {k} is too long"),
                ));
            }
            if field.is_some_and(|f| f.kind == fields::Kind::DateTime)
                && chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").is_err()
            {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    format!("Field {k} is not a date YYYY-MM-DDTHH:MM:SS"),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn bool_param(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Option<bool>, Reply> {
    match params.get(name).map(String::as_str) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(fail(
            StatusCode::BAD_REQUEST,
            format!("Parameter {name} must be true or false, not {other}"),
        )),
    }
}

/// A checked import request: the contact's fields, its campaign and the flags.
pub(super) struct ImportRequest {
    fields: Map<String, Value>,
    campaign_id: i64,
    overwrite: bool,
    reset: Option<bool>,
    unlock: Option<bool>,
}

pub(super) fn import_request(
    cfg: &EmulatorConfig,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<ImportRequest, Reply> {
    let mut m = json_body(headers, body)?;
    check_fields(&m, &IMPORT_ONLY)?;
    let overwrite = bool_param(params, "overwriteDuplicates")?.unwrap_or(false);
    let reset = bool_param(params, "resetContact")?;
    let unlock = bool_param(params, "unlockContact")?;
    let nonempty = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty())
    };
    if !nonempty("Name") {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "Missing mandatory field Name",
        ));
    }
    if !(1..=6).any(|i| nonempty(&format!("PhoneNumber{i}"))) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "At least one of PhoneNumber1 ... PhoneNumber6 is mandatory",
        ));
    }
    let campaign = match (
        m.remove("DiallerCampaignsID"),
        m.remove("DiallerCampaignsName"),
    ) {
        (Some(Value::Number(n)), _) => cfg.campaigns.iter().find(|(id, _)| Some(*id) == n.as_i64()),
        (_, Some(Value::String(name))) => cfg.campaigns.iter().find(|(_, n)| *n == name),
        _ => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "Missing mandatory field DiallerCampaignsID or DiallerCampaignsName",
            ))
        }
    };
    let Some((campaign_id, _)) = campaign else {
        return Err(fail(StatusCode::NOT_FOUND, "Dialler campaign not found"));
    };
    for k in ["ReservedUsersUID", "FollowUpUsersUID"] {
        if let Some(Value::String(uid)) = m.get(k) {
            if !cfg.users.iter().any(|u| u == uid) {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    format!("Field {k}: user not found"),
                ));
            }
        }
    }
    Ok(ImportRequest {
        fields: m,
        campaign_id: *campaign_id,
        overwrite,
        reset,
        unlock,
    })
}

pub(super) fn import(
    cfg: &EmulatorConfig,
    d: &mut Data,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Reply {
    let ImportRequest {
        fields: m,
        campaign_id,
        overwrite,
        reset: reset_flag,
        unlock: unlock_flag,
    } = match import_request(cfg, params, headers, body) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let existing = m
        .get("UserData")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .and_then(|u| d.by_user_data.get(u))
        .and_then(|ids| {
            ids.iter()
                .find(|id| d.contacts[id].campaign_id == campaign_id)
        })
        .copied();
    if let (true, Some(id)) = (overwrite, existing) {
        let c = d.contacts.get_mut(&id).unwrap();
        for (k, v) in m {
            c.fields.insert(k, v);
        }
        if reset_flag == Some(true) {
            reset(c);
        }
        // Absent = the behaviour before 3.39: the contact is unlocked.
        if unlock_flag != Some(false) {
            c.locked = false;
        }
        return ok(records(vec![contact_json(c)]));
    }
    let id = d.next_id;
    d.next_id += 1;
    let c = EmuContact {
        id,
        campaign_id,
        fields: m,
        locked: false,
        reset_count: 0,
        tries: 0,
        result_code: None,
        next_try: None,
        history: Vec::new(),
    };
    index(d, &c);
    let reply = ok(records(vec![contact_json(&c)]));
    d.contacts.insert(id, c);
    reply
}

pub(super) fn update(d: &mut Data, headers: &HeaderMap, body: &Bytes) -> Reply {
    let mut m = match json_body(headers, body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Err(r) = check_fields(&m, &UPDATE_ONLY) {
        return r;
    }
    if let Some(k) = m
        .keys()
        .find(|k| fields::by_name(k).is_some_and(fields::Field::import_only))
    {
        return fail(StatusCode::BAD_REQUEST, format!("Unknown field {k}"));
    }
    let id = match (m.remove("ID"), m.get("UserData").and_then(Value::as_str)) {
        (Some(Value::Number(n)), _) => match n.as_i64().filter(|id| d.contacts.contains_key(id)) {
            Some(id) => id,
            None => return fail(StatusCode::NOT_FOUND, "Dialler contact not found"),
        },
        (_, Some(u)) => match d.by_user_data.get(u).and_then(|ids| ids.first()) {
            Some(id) => *id,
            None => return fail(StatusCode::NOT_FOUND, "Dialler contact not found"),
        },
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                "Missing mandatory field ID or UserData",
            )
        }
    };
    let mut c = d.contacts.remove(&id).unwrap();
    unindex(d, &c);
    for (k, v) in m {
        c.fields.insert(k, v);
    }
    index(d, &c);
    let reply = ok(records(vec![contact_json(&c)]));
    d.contacts.insert(id, c);
    reply
}

/// The batch read of the vendor wiki: contacts by `UserDataList` and/or `IDList`.
pub(super) fn batch_read(d: &Data, body: &Bytes) -> Reply {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return fail(StatusCode::BAD_REQUEST, "The body must be a JSON object");
    };
    let mut ids: Vec<i64> = Vec::new();
    if let Some(Value::Array(list)) = m.get("IDList") {
        ids.extend(
            list.iter()
                .filter_map(Value::as_i64)
                .filter(|id| d.contacts.contains_key(id)),
        );
    }
    if let Some(Value::Array(list)) = m.get("UserDataList") {
        for u in list.iter().filter_map(Value::as_str) {
            ids.extend(d.by_user_data.get(u).into_iter().flatten());
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ok(records(
        ids.iter().map(|id| contact_json(&d.contacts[id])).collect(),
    ))
}
