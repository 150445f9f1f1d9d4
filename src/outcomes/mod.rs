//! Dialling outcomes back to the CRM: what happened to each contact (its result code,
//! tries, next try and, when asked, its last call), read with one streamed listing of the
//! campaign and its result codes, compared with what was delivered last, and delivered as
//! a file and signed webhook batches. Only changes go out.
//!
//! The order of a run's steps is what makes delivery at-least-once: the changed outcomes
//! are staged in the state; the file is renamed into place and the webhook batches put
//! into the outbox (durably) before the staged outcomes become the delivered ones. A crash
//! in between leaves them undelivered in the state, so the next run finds them changed and
//! delivers them again: twice, never lost. A webhook batch leaves the outbox only when the
//! receiver accepted it.

pub(crate) mod deliver;
pub(crate) mod read;

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::config::{JobConfig, OutcomesConfig};
use crate::dialler::{Dialler, DiallerError, Target};
use crate::engine::execute::campaign_id;
use crate::engine::outcome::error_chain;
use crate::state::{JobState, Outcome, StateError};
use std::path::PathBuf;

use deliver::OutcomeFile;
pub(crate) use read::{Codes, Collector, Delivers, Found, Gathered, Keep};

/// What a run did with the outcomes (in its report as `outcomes`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutcomesReport {
    /// Contacts of the campaign listed.
    pub listed: u64,
    /// Outcomes of the job's contacts that changed since the last delivered one.
    pub changed: u64,
    /// Of those, the ones delivered (all but results not final with `final_only`); in a
    /// dry run, the ones that would be.
    pub delivered: u64,
    /// The file written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// History calls made (one per changed contact, when a history column is asked for).
    pub history_calls: u64,
    /// Webhook batches the receiver accepted in this run.
    pub batches_sent: u64,
    /// Webhook batches kept for the next run (it did not accept them).
    pub batches_waiting: u64,
    /// What went wrong delivering; the outcomes are delivered again by the next run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// In a dry run: the first outcomes that would be delivered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preview: Vec<deliver::Row>,
}

impl OutcomesReport {
    /// Whether something was not delivered.
    pub fn undelivered(&self) -> bool {
        self.error.is_some() || self.batches_waiting > 0
    }
}

/// A read of a job's outcomes in progress: the collector the campaign's listing feeds
/// (its own listing, or the verification's when both read the campaign).
#[derive(Clone)]
pub(crate) struct Reading {
    collector: Arc<Mutex<Option<Collector>>>,
    campaign: i64,
}

impl Reading {
    /// Starts a read of `job`'s outcomes: the campaign's result codes (one call), and the
    /// collector. A run's collector stages the changed outcomes; an earlier run's
    /// leftovers there (it stopped before delivering) go first.
    pub(crate) async fn start(
        dialler: &Dialler,
        job: &JobConfig,
        state: &JobState,
        run_id: &str,
        keep: Keep,
    ) -> Result<Reading, PrepareError> {
        let campaign = campaign_id(dialler, &job.campaign).await?;
        let codes = Codes::from_records(&dialler.result_codes(campaign).await?);
        if let Keep::Stage = keep {
            state.clear_staged()?;
        }
        let collector = Collector {
            state: state.clone(),
            delivered: state.delivered_outcomes()?,
            codes,
            campaign,
            keep,
            lock_done: job.on_done == crate::config::OnDone::Lock,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            run: run_id.to_string(),
            gathered: Gathered::default(),
        };
        Ok(Reading {
            collector: Arc::new(Mutex::new(Some(collector))),
            campaign,
        })
    }

    /// Feeds one listed record to the collector.
    pub(crate) fn feed(&self, r: &crate::dialler::Record) {
        if let Some(c) = crate::locking::lock(&self.collector).as_mut() {
            c.see(r);
        }
    }

    /// Lists the campaign for the outcomes alone (no verification due): one streamed call.
    pub(crate) async fn list(&self, dialler: &Dialler) -> Result<(), DiallerError> {
        let me = self.clone();
        dialler
            .stream_contacts(self.campaign, move |r| me.feed(&r))
            .await
            .map(drop)
    }

    /// What the collector gathered (the listing is over).
    pub(crate) fn finish(&self) -> Gathered {
        crate::locking::lock(&self.collector)
            .take()
            .map(|c| c.gathered)
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    #[error(transparent)]
    Dialler(#[from] DiallerError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The outcomes of `found`, those changed with their history fields when `history` (a
/// call each, up to `concurrency` at a time), in order. The calls made.
pub(crate) async fn with_history(
    dialler: &Dialler,
    found: Vec<Found>,
    history: bool,
    concurrency: usize,
) -> Result<(Vec<Outcome>, u64), DiallerError> {
    let fetches: Vec<(usize, i64)> = found
        .iter()
        .enumerate()
        .filter(|(_, f)| history && f.changed)
        .map(|(i, f)| (i, f.outcome.contact_id))
        .collect();
    let mut out: Vec<Outcome> = found.into_iter().map(|f| f.outcome).collect();
    let calls = fetches.len() as u64;
    let mut results = std::pin::pin!(futures_util::stream::iter(fetches)
        .map(|(i, id)| async move { (i, dialler.history(Target::Id(id)).await) })
        .buffered(concurrency.max(1)));
    while let Some((i, r)) = results.next().await {
        match r {
            Ok(entries) => fill_from_history(&mut out[i], &entries),
            // Gone since the listing: its outcome goes without its last call.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok((out, calls))
}

/// The last call's end and agent, and the connected calls, from a contact's history.
fn fill_from_history(o: &mut Outcome, entries: &[crate::dialler::Record]) {
    let text = |r: &crate::dialler::Record, k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let last = entries
        .iter()
        .filter(|e| text(e, "dtCallEnd").is_some())
        .max_by_key(|e| {
            (
                text(e, "dtCallEnd"),
                e.get("DiallerContactsHistoryID").and_then(Value::as_i64),
            )
        });
    o.last_call_end = last.and_then(|e| text(e, "dtCallEnd"));
    o.agent_id = last.and_then(|e| e.get("UsersID").and_then(Value::as_i64));
    o.connected_calls = Some(
        entries
            .iter()
            .filter(|e| text(e, "dtCallConnect").is_some())
            .count() as u32,
    );
}

/// How many staged outcomes get their history read at a time (and are held in memory).
const CHUNK: usize = 256;

/// After the listing of a run that found changed outcomes (not a dry run): the staged
/// outcomes get their history fields and are written to the outcome file, in chunks;
/// the file is put in place and the webhook batches into the outbox, both durably, and
/// only then the staged outcomes become the delivered ones. What failed is returned, and
/// nothing of it is lost: the next run delivers it again. ([`send_outbox`] follows.)
pub(crate) async fn deliver(
    dialler: &Dialler,
    state: &JobState,
    job: &JobConfig,
    path: Option<PathBuf>,
    run_id: &str,
    concurrency: usize,
    report: &mut OutcomesReport,
) -> Result<(), String> {
    let cfg = job.outcomes.as_ref();
    let delivers = Delivers::of(cfg);
    let history = cfg.is_some_and(OutcomesConfig::needs_history);
    let failed =
        |what: &str, e: &(dyn std::error::Error + 'static)| format!("{what}: {}", error_chain(e));
    let io_failed =
        |path: &std::path::Path, e: std::io::Error| format!("writing {}: {e}", path.display());
    // Dropped unfinished (an error below), it takes its temporary file with it.
    let mut file: Option<OutcomeFile> = None;
    let mut after: Option<String> = None;
    loop {
        let chunk = state
            .staged_after(after.as_deref(), CHUNK)
            .map_err(|e| failed("reading the staged outcomes", &e))?;
        let Some(last) = chunk.last() else { break };
        after = Some(last.user_data.clone());
        let found = chunk
            .into_iter()
            .map(|outcome| Found {
                outcome,
                changed: true,
            })
            .collect();
        let (outcomes, calls) = with_history(dialler, found, history, concurrency)
            .await
            .map_err(|e| failed("reading a contact's history", &e))?;
        report.history_calls += calls;
        for o in &outcomes {
            if history {
                state
                    .stage_outcome(o)
                    .map_err(|e| failed("staging an outcome", &e))?;
            }
            let (true, Some(cfg)) = (delivers.takes(o), cfg) else {
                continue;
            };
            report.delivered += 1;
            let Some(path) = &path else { continue };
            if file.is_none() {
                file =
                    Some(OutcomeFile::create(path.clone(), cfg).map_err(|e| io_failed(path, e))?);
            }
            if let Some(f) = &mut file {
                f.row(o, cfg).map_err(|e| io_failed(path, e))?;
            }
        }
    }
    if let Some(f) = file {
        let path = f.path.clone();
        let put = tokio::task::spawn_blocking(move || f.commit())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        put.map_err(|e| io_failed(&path, e))?;
        report.file = Some(path.display().to_string());
        crate::failpoint::hit("outcomes-file-written");
    }
    if let Some((cfg, w)) = cfg.and_then(|c| c.webhook.as_ref().map(|w| (c, w))) {
        queue_batches(state, cfg, w.batch_size, &job.name, run_id)
            .map_err(|e| failed("storing the webhook's batches", &e))?;
    }
    // The outbox made durable, then the staged outcomes delivered.
    let commit = async {
        state.flush().await?;
        state.commit_staged()?;
        state.flush().await
    };
    commit.await.map_err(|e| failed("storing the outcomes", &e))
}

/// The staged outcomes to deliver, as webhook batches of `size` into the outbox, each
/// under its idempotency key (the run's ID and the batch's number).
fn queue_batches(
    state: &JobState,
    cfg: &OutcomesConfig,
    size: usize,
    job: &str,
    run_id: &str,
) -> Result<(), StateError> {
    let delivers = Delivers::of(Some(cfg));
    let mut after: Option<String> = None;
    let mut n = 0u32;
    loop {
        let chunk = state.staged_after(after.as_deref(), size)?;
        let Some(last) = chunk.last() else { break };
        after = Some(last.user_data.clone());
        let batch: Vec<deliver::Row> = chunk
            .iter()
            .filter(|o| delivers.takes(o))
            .map(|o| deliver::object(o, cfg))
            .collect();
        if batch.is_empty() {
            continue;
        }
        n += 1;
        let id = format!("{run_id}-{n:05}");
        let body = serde_json::json!({
            "job": job,
            "run_id": run_id,
            "batch": id,
            "outcomes": batch,
        });
        state.outbox_put(
            &id,
            &serde_json::to_vec(&body).expect("JSON values serialize"),
        )?;
    }
    Ok(())
}

/// Sends the webhook batches waiting, oldest first, one read from the state at a time;
/// the first one not accepted and those after it stay for the next run.
pub(crate) async fn send_outbox(state: &JobState, job: &JobConfig, report: &mut OutcomesReport) {
    let Some(w) = job.outcomes.as_ref().and_then(|c| c.webhook.as_ref()) else {
        return;
    };
    report.batches_waiting = state.outbox_len() as u64;
    if report.batches_waiting == 0 {
        return;
    }
    let secrets = w
        .url
        .resolve_as("job.outcomes.webhook_url")
        .and_then(|u| Ok((u, w.secret.resolve_as("job.outcomes.webhook_secret")?)));
    let (url, secret) = match secrets {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(format!("the outcome webhook: {}", error_chain(&e)));
            return;
        }
    };
    let http = crate::tls::with_system_roots(reqwest::Client::builder())
        .user_agent(concat!("dialsync/", env!("CARGO_PKG_VERSION")))
        .timeout(w.timeout)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap_or_default();
    let mut after: Option<String> = None;
    loop {
        let (id, json) = match state.outbox_after(after.as_deref()) {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                report.error = Some(format!("reading the webhook's outbox: {}", error_chain(&e)));
                break;
            }
        };
        let body = crate::alerts::Body {
            headers: vec![(
                "X-Dialsync-Signature",
                deliver::signature(secret.expose(), &json),
            )],
            json,
            idempotency_key: id.clone(),
        };
        let sent = crate::alerts::deliver(
            &http,
            reqwest::Method::POST,
            url.expose(),
            Some(&body),
            w.retries,
        )
        .await;
        if let Err(e) = sent {
            tracing::warn!(job = %job.name, batch = %id, waiting = report.batches_waiting, error = %e,
                "the outcome webhook did not take a batch; it is kept and sent again by the next run");
            report.error = Some(format!(
                "the outcome webhook {e}; {} batch(es) kept for the next run",
                report.batches_waiting
            ));
            break;
        }
        report.batches_sent += 1;
        report.batches_waiting -= 1;
        if let Err(e) = state.outbox_remove(&id) {
            report.error = Some(format!("clearing a sent batch: {}", error_chain(&e)));
            break;
        }
        after = Some(id);
    }
    if let Err(e) = state.flush().await {
        tracing::warn!(error = %error_chain(&e), "could not store the webhook's outbox");
    }
}

/// What `dialsync outcomes` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OutcomesQuery {
    pub job: String,
    /// Only outcomes first seen by runs after this one (a run ID as `history` lists it).
    pub since: Option<String>,
    /// Read them from the dialler now instead of from the state.
    pub fetch: bool,
}

/// The outcomes `q` asks for: as the state holds them (no call), or with `fetch` read now
/// from the dialler (every contact of the job with an outcome: the listing, the result
/// codes, and the history of those changed since delivered when a history column is
/// configured). Nothing is written. In UserData order.
pub async fn query(
    config: &crate::config::Config,
    store: &crate::state::Store,
    tenant: &crate::dialler::Tenant,
    q: &OutcomesQuery,
) -> Result<Vec<Outcome>, String> {
    let job = config.job(&q.job)?;
    let state = store.job(&job.name).map_err(|e| error_chain(&e))?;
    if !q.fetch {
        let mut out = Vec::new();
        state
            .for_each_outcome(q.since.as_deref(), &mut |o| out.push(o))
            .map_err(|e| error_chain(&e))?;
        return Ok(out);
    }
    let token = config
        .dialler
        .token
        .resolve()
        .map_err(|e| error_chain(&e))?;
    let dialler =
        Dialler::for_tenant(&config.dialler, &token, tenant).map_err(|e| error_chain(&e))?;
    let reading = Reading::start(&dialler, job, &state, "", Keep::All)
        .await
        .map_err(|e| error_chain(&e))?;
    let listed = reading.list(&dialler).await;
    let g = reading.finish();
    listed.map_err(|e| error_chain(&e))?;
    if let Some(e) = g.error {
        return Err(error_chain(&e));
    }
    let history = job
        .outcomes
        .as_ref()
        .is_some_and(OutcomesConfig::needs_history);
    let (mut outcomes, _) = with_history(&dialler, g.kept, history, config.dialler.max_concurrency)
        .await
        .map_err(|e| error_chain(&e))?;
    // As the state lists them.
    outcomes.sort_by(|a, b| a.user_data.cmp(&b.user_data));
    Ok(outcomes)
}

/// `outcomes` as the job's outcome file would hold them (CSV without the BOM, or NDJSON),
/// or with `json` as one JSON array; in the job's columns (the default ones without
/// `[job.outcomes]`).
pub fn render(job: &JobConfig, outcomes: &[Outcome], json: bool) -> Vec<u8> {
    let default;
    let cfg = match &job.outcomes {
        Some(c) => c,
        None => {
            default = OutcomesConfig::default();
            &default
        }
    };
    if json {
        let rows: Vec<deliver::Row> = outcomes.iter().map(|o| deliver::object(o, cfg)).collect();
        let mut v = serde_json::to_vec_pretty(&rows).expect("rows serialize");
        v.push(b'\n');
        return v;
    }
    let write = || -> std::io::Result<Vec<u8>> {
        let mut w = deliver::RowWriter::new(Vec::new(), cfg, false)?;
        for o in outcomes {
            w.row(o, cfg)?;
        }
        w.finish()
    };
    write().expect("writing to memory does not fail")
}
