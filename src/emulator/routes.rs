//! The HTTP side: authentication, injected faults, the request log, and routing each
//! documented endpoint to its function.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::dialling::{all_codes, code_json, history_json};
use super::{
    act, batch_read, by_id, campaign_json, contact_json, delete, import, update, users_json,
    with_first, Call, Data, EmuContact, Emulator, EmulatorConfig, Fault, RequestLog, Shared,
};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub(super) type Reply = (StatusCode, Option<Value>);

pub(super) fn ok(v: Value) -> Reply {
    (StatusCode::OK, Some(v))
}

pub(super) fn fail(status: StatusCode, msg: impl Into<String>) -> Reply {
    (
        status,
        Some(json!({"status": status.as_u16(), "error": msg.into()})),
    )
}

pub(super) fn no_endpoint() -> Reply {
    (StatusCode::NOT_FOUND, None)
}

pub(super) fn records(items: Vec<Value>) -> Value {
    json!({"count": items.len(), "records": items, "status": 200})
}

pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = shared.started.elapsed().as_micros() as u64;
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let params: HashMap<String, String> =
        serde_urlencoded::from_str::<Vec<(String, String)>>(&query)
            .unwrap_or_default()
            .into_iter()
            .collect();

    if let Some(rest) = path.strip_prefix("/_emulator/") {
        let emulator = Emulator {
            shared: Arc::clone(&shared),
        };
        match (&method, rest) {
            (&Method::POST, "reset") => {
                emulator.reset();
                return respond(ok(json!({"status": 200})));
            }
            (&Method::POST, "renumber") => {
                let n = emulator.renumber();
                return respond(ok(json!({"status": 200, "renumbered": n})));
            }
            (&Method::POST, "calls") => {
                let reply = match serde_json::from_slice::<Call>(&body) {
                    Err(e) => fail(StatusCode::BAD_REQUEST, format!("not a call: {e}")),
                    Ok(call) => match emulator.record_call(&call) {
                        Ok(record) => ok(json!({"status": 200, "record": record})),
                        Err((status, message)) => {
                            fail(StatusCode::from_u16(status).expect("a status"), message)
                        }
                    },
                };
                return respond(reply);
            }
            _ => {}
        }
        let data = crate::locking::lock(&shared.data);
        let reply = match (&method, rest) {
            (&Method::GET, "state") => ok(json!({
                "contacts": data.contacts.values().collect::<Vec<_>>(),
                "campaigns": shared.cfg.campaigns.iter().map(|(id, n)| json!({"ID": id, "Name": n})).collect::<Vec<_>>(),
            })),
            (&Method::GET, "requests") => ok(json!(data.requests)),
            _ => no_endpoint(),
        };
        return respond(reply);
    }

    let faults = &shared.cfg.faults;
    let fault = if faults.any() {
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        faults.draw(shared.draws.fetch_add(1, Ordering::Relaxed))
    } else {
        Fault::None
    };
    let log = |data: &mut Data, status: u16| {
        tracing::debug!(%method, %path, status, "request");
        if data.requests.len() >= shared.cfg.keep_requests.max(1) {
            data.requests.pop_front();
        }
        data.requests.push_back(RequestLog {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            status,
            body: serde_json::from_slice(&body).ok(),
            at_us: arrived,
        })
    };
    match fault {
        Fault::None | Fault::Timeout => {}
        Fault::Throttle => {
            log(&mut crate::locking::lock(&shared.data), 429);
            let mut r = respond(fail(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests (injected)",
            ));
            r.headers_mut().insert(
                "retry-after",
                faults.retry_after.to_string().parse().expect("a number"),
            );
            return r;
        }
        Fault::Error(code) => {
            log(&mut crate::locking::lock(&shared.data), code.as_u16());
            return respond(fail(code, "server error (injected)"));
        }
        Fault::Drop => {
            // Logged as status 0: no answer. Headers go out, then a body that fails, so
            // the server closes the connection mid-answer.
            log(&mut crate::locking::lock(&shared.data), 0);
            return Response::new(Body::from_stream(futures_util::stream::once(async {
                Err::<Bytes, _>(std::io::Error::other("connection dropped (injected)"))
            })));
        }
    }

    // One lock per request: the call and its log entry are one step.
    let reply = {
        let mut data = crate::locking::lock(&shared.data);
        let rejected = data
            .reject
            .iter_mut()
            .find(|(fragment, n, _)| *n > 0 && path.contains(fragment.as_str()));
        let reply = match rejected {
            Some((_, n, message)) => {
                *n -= 1;
                fail(StatusCode::BAD_REQUEST, message.clone())
            }
            None => api(
                &shared.cfg,
                &mut data,
                &method,
                &path,
                &params,
                &headers,
                &body,
            ),
        };
        log(&mut data, reply.0.as_u16());
        reply
    };
    if fault == Fault::Timeout {
        // Carried out, never answered; the connection ends when the client gives up.
        std::future::pending::<()>().await;
    }
    respond(reply)
}

pub(super) fn respond((status, body): Reply) -> Response {
    match body {
        Some(v) => (
            status,
            [("content-type", "application/json")],
            Body::from(serde_json::to_vec(&v).unwrap()),
        )
            .into_response(),
        None => status.into_response(),
    }
}

pub(super) fn api(
    cfg: &EmulatorConfig,
    d: &mut Data,
    method: &Method,
    path: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Reply {
    let Some(rest) = path.strip_prefix("/rest/v1.0/") else {
        return no_endpoint();
    };
    let mut segs: Vec<&str> = rest.split('/').collect();
    if segs.last() == Some(&"") {
        segs.pop();
    }
    let Some((client, segs)) = segs.split_first() else {
        return no_endpoint();
    };
    let expected = format!("Bearer {}", cfg.token);
    let auth_ok =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
    if !auth_ok || client.parse::<u32>().ok() != Some(cfg.client_id) {
        return fail(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let ud = || params.get("userData").cloned();
    let id_of = |s: &str| s.parse::<i64>().ok();
    use Method as M;
    match (method, segs) {
        (&M::GET, ["dialler", "contacts"]) => {
            let campaign = params
                .get("diallerCampaignsID")
                .and_then(|c| c.parse::<i64>().ok());
            let items: Vec<Value> = d
                .contacts
                .values()
                .filter(|c| campaign.is_none_or(|id| c.campaign_id == id))
                .map(contact_json)
                .collect();
            ok(json!({
                "filter": "", "limitStart": 0, "limitPageSize": -1, "count": items.len(),
                "records": items, "orderBy": "ID", "ascending": true, "status": 200
            }))
        }
        (&M::POST, ["dialler", "contacts"]) => batch_read(d, body),
        (&M::POST, ["dialler", "contacts", "import"]) => import(cfg, d, params, headers, body),
        (&M::POST, ["dialler", "contacts", "update"]) => update(d, headers, body),
        (&M::GET, ["dialler", "contacts", "contact"]) => {
            of_every(d, ud(), |c| vec![contact_json(c)])
        }
        (&M::DELETE, ["dialler", "contacts", "contact"]) => with_first(d, ud(), delete),
        (&M::PATCH, ["dialler", "contacts", "contact", action @ ("lock" | "unlock" | "reset")]) => {
            with_first(d, ud(), |d, id| act(d, id, action))
        }
        (&M::GET, ["dialler", "contacts", "contact", "history"]) => {
            of_every(d, ud(), |c| history_of(cfg, c))
        }
        (&M::GET, ["dialler", "contacts", id]) => {
            match id_of(id).and_then(|id| d.contacts.get(&id)) {
                Some(c) => ok(records(vec![contact_json(c)])),
                None => fail(StatusCode::NOT_FOUND, "Dialler contact not found"),
            }
        }
        (&M::DELETE, ["dialler", "contacts", "contact", id]) => by_id(d, id, delete),
        (
            &M::PATCH,
            ["dialler", "contacts", "contact", id, action @ ("lock" | "unlock" | "reset")],
        ) => by_id(d, id, |d, id| act(d, id, action)),
        (&M::GET, ["dialler", "contacts", "contact", id, "history"]) => by_id(d, id, |d, id| {
            ok(records(history_of(cfg, &d.contacts[&id])))
        }),
        (&M::GET, ["users"]) => ok(users_json(cfg)),
        (&M::GET, ["dialler", "campaigns"]) => ok(records(
            cfg.campaigns
                .iter()
                .map(|(id, n)| campaign_json(cfg, *id, n))
                .collect(),
        )),
        (&M::GET, ["dialler", "campaigns", "campaign"]) => {
            let name = params
                .get("name")
                .map(|n| n.to_lowercase())
                .unwrap_or_default();
            let items: Vec<Value> = cfg
                .campaigns
                .iter()
                .filter(|(_, n)| n.to_lowercase().contains(&name))
                .map(|(id, n)| campaign_json(cfg, *id, n))
                .collect();
            if items.is_empty() {
                fail(StatusCode::NOT_FOUND, "Dialler campaign not found")
            } else {
                ok(records(items))
            }
        }
        (&M::GET, ["dialler", "campaigns", "campaign", id, "resultCodes"]) => {
            let german =
                match params.get("languagesID").map(String::as_str) {
                    Some("1") => false,
                    Some("2") => true,
                    _ => return fail(
                        StatusCode::BAD_REQUEST,
                        "Missing or unsupported parameter languagesID (1 = English, 2 = German)",
                    ),
                };
            match cfg.campaigns.iter().find(|(c, _)| Some(*c) == id_of(id)) {
                Some((campaign, _)) => ok(records(
                    all_codes(cfg)
                        .filter(|r| r.campaign_id == *campaign)
                        .map(|r| code_json(&r, german))
                        .collect(),
                )),
                None => fail(StatusCode::NOT_FOUND, "Dialler campaign not found"),
            }
        }
        (&M::GET, ["dialler", "campaigns", id]) => {
            match cfg.campaigns.iter().find(|(c, _)| Some(*c) == id_of(id)) {
                Some((id, n)) => ok(records(vec![campaign_json(cfg, *id, n)])),
                None => fail(StatusCode::NOT_FOUND, "Dialler campaign not found"),
            }
        }
        _ => no_endpoint(),
    }
}

/// A contact's calls as the history functions return them, oldest first.
fn history_of(cfg: &EmulatorConfig, c: &EmuContact) -> Vec<Value> {
    c.history
        .iter()
        .map(|call| history_json(cfg, c, call))
        .collect()
}

/// What `each` makes of every contact with the query's `userData` (the by-UserData reads
/// return all of them, not the first one found), or the error of a missing parameter or
/// an unknown UserData.
fn of_every(
    d: &Data,
    user_data: Option<String>,
    each: impl Fn(&EmuContact) -> Vec<Value>,
) -> Reply {
    let Some(u) = user_data else {
        return fail(StatusCode::BAD_REQUEST, "Missing parameter userData");
    };
    match d.by_user_data.get(&u) {
        // The index holds no empty lists (unindex removes them).
        Some(ids) => ok(records(
            ids.iter().flat_map(|id| each(&d.contacts[id])).collect(),
        )),
        None => fail(StatusCode::NOT_FOUND, "Dialler contact not found"),
    }
}
