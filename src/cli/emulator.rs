//! `dialsync emulator`: the in-memory dialler as a process, with its faults from flags.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use dialsync::Exit;
use dialsync::{Emulator, EmulatorConfig, Faults, ResultCode, ResultKind};

use super::Failure;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The ClientsID the emulated tenant answers to.
    #[arg(long, default_value_t = 7)]
    client_id: u32,
    /// The bearer token it accepts.
    #[arg(long, default_value = "emulator-token")]
    token: String,
    /// A campaign as ID:NAME, e.g. 538:"My Campaign" (repeatable; default 538:My Campaign).
    #[arg(long = "campaign", value_parser = parse_campaign)]
    campaigns: Vec<(i64, String)>,
    /// A user's login (UID) that GET /users lists and imports may name in ReservedUsersUID
    /// or FollowUpUsersUID (repeatable; default agent1, agent2, supervisor).
    #[arg(long = "user", value_name = "UID")]
    users: Vec<String>,
    /// A result code beyond each campaign's ABG (done), Aufleger (aborted), WV (delay,
    /// call back) and Termin (appointment), as CAMPAIGN:ID:EXPORTKEY:TYPE with TYPE done,
    /// aborted, delay or appointment, e.g. 538:2701:NI:aborted (repeatable).
    #[arg(long = "result-code", value_name = "CAMPAIGN:ID:EXPORTKEY:TYPE", value_parser = parse_result_code)]
    result_codes: Vec<ResultCode>,
    /// Simulate calls, N a second (e.g. 5/s): each the next contact still to be called
    /// (not locked, no done or aborted result), with a result drawn from its campaign's
    /// codes (following --seed). Without it, calls come only from POST /_emulator/calls.
    #[arg(long, value_name = "N/s", value_parser = parse_dial_rate)]
    dial_rate: Option<f64>,
    /// How many API calls GET /_emulator/requests keeps: the last N; older ones are
    /// dropped, so a long-running emulator does not grow.
    #[arg(long, default_value_t = dialsync::KEEP_REQUESTS)]
    keep_requests: usize,
    #[command(flatten)]
    faults: FaultFlags,
}

/// The emulator's fault injection flags (see [`Faults`]).
#[derive(Debug, Clone, clap::Args)]
struct FaultFlags {
    /// Fault injection: added to every API answer, e.g. 20ms.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    latency: Duration,
    /// Fraction of API calls answered 500/502/503/504 (not carried out).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    error_rate: f64,
    /// Fraction of API calls answered 429 with Retry-After (not carried out).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    throttle_rate: f64,
    /// The Retry-After of those 429 answers, in seconds.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Fraction of API calls whose connection is dropped (not carried out).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    drop_rate: f64,
    /// Fraction of API calls carried out but never answered (the client times out): the
    /// worst case for a client that must not duplicate on retry.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    timeout_rate: f64,
    /// Seed of the fault draws (same seed, same requests: same faults) and of the
    /// simulated calls' results.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl From<FaultFlags> for Faults {
    fn from(f: FaultFlags) -> Faults {
        Faults {
            latency: f.latency,
            error_rate: f.error_rate,
            throttle_rate: f.throttle_rate,
            retry_after: f.retry_after,
            drop_rate: f.drop_rate,
            timeout_rate: f.timeout_rate,
            seed: f.seed,
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "`{s}` is not a fraction between 0 and 1 (e.g. 0.1 for 10%)"
        )),
    }
}

fn parse_campaign(s: &str) -> Result<(i64, String), String> {
    let (id, name) = s
        .split_once(':')
        .ok_or("write a campaign as ID:NAME, e.g. 538:\"My Campaign\"")?;
    let id = id
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("`{id}` is not a campaign ID"))?;
    let name = name.trim().trim_matches('"').to_string();
    if name.is_empty() {
        return Err("the campaign name is empty".into());
    }
    Ok((id, name))
}

fn parse_dial_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 100_000.0 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a call rate: calls a second, more than 0 and at most 100000 (e.g. 5/s)"
        )),
    }
}

fn parse_result_code(s: &str) -> Result<ResultCode, String> {
    let parts: Vec<&str> = s.split(':').map(str::trim).collect();
    let [campaign, id, key, kind] = parts[..] else {
        return Err(
            "write a result code as CAMPAIGN:ID:EXPORTKEY:TYPE, e.g. 538:2701:NI:aborted".into(),
        );
    };
    let number = |what: &str, v: &str| {
        v.parse::<i64>()
            .map_err(|_| format!("`{v}` is not a {what} ID"))
    };
    if key.is_empty() {
        return Err("the ExportKey is empty".into());
    }
    Ok(ResultCode {
        campaign_id: number("campaign", campaign)?,
        id: number("result code", id)?,
        export_key: key.to_string(),
        content: key.to_string(),
        kind: ResultKind::parse(kind)?,
    })
}

/// The extra result codes' campaigns exist, and their IDs (in the tenant) and ExportKeys
/// (in the campaign) are each one code's.
fn check_result_codes(cfg: &EmulatorConfig) -> Result<(), String> {
    let defaults = dialsync::default_result_codes(&cfg.campaigns);
    let mut seen: Vec<&ResultCode> = defaults.iter().collect();
    for code in &cfg.result_codes {
        if !cfg.campaigns.iter().any(|(id, _)| *id == code.campaign_id) {
            return Err(format!(
                "--result-code {}: there is no campaign {} (add it with --campaign)",
                code.export_key, code.campaign_id
            ));
        }
        if let Some(other) = seen.iter().find(|c| {
            c.id == code.id
                || (c.campaign_id == code.campaign_id && c.export_key == code.export_key)
        }) {
            return Err(format!(
                "--result-code {}:{}:{}: campaign {} has result code {} ({}) already",
                code.campaign_id,
                code.id,
                code.export_key,
                other.campaign_id,
                other.id,
                other.export_key
            ));
        }
        seen.push(code);
    }
    Ok(())
}

/// Serves the emulator until SIGINT or SIGTERM.
pub(super) async fn run(args: Args) -> Result<Exit, Failure> {
    let Args {
        listen,
        client_id,
        token,
        campaigns,
        users,
        result_codes,
        dial_rate,
        keep_requests,
        faults,
    } = args;
    let faults = Faults::from(faults);
    faults
        .check()
        .map_err(|e| Failure::new(Exit::Config, anyhow::anyhow!(e)))?;
    let mut cfg = EmulatorConfig {
        client_id,
        token,
        faults,
        keep_requests,
        ..EmulatorConfig::default()
    };
    if !campaigns.is_empty() {
        cfg.campaigns = campaigns;
    }
    if !users.is_empty() {
        cfg.users = users;
    }
    cfg.result_codes = result_codes;
    check_result_codes(&cfg).map_err(|e| Failure::new(Exit::Config, anyhow::anyhow!(e)))?;
    let emulator = Emulator::new(cfg.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
        .map_err(|e| Failure::new(Exit::Aborted, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::new(Exit::Aborted, e))?;
    // One line on stdout, flushed, so scripts and tests can wait for it.
    outln!(
        "dialsync emulator listening on http://{addr}/rest/v1.0/{}",
        cfg.client_id
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let campaigns: Vec<i64> = cfg.campaigns.iter().map(|(id, _)| *id).collect();
    tracing::info!(%addr, client_id = cfg.client_id, campaigns = ?campaigns, faults = ?cfg.faults, dial_rate, "emulator ready");
    if let Some(rate) = dial_rate {
        let dialler = emulator.clone();
        tokio::spawn(async move { dialler.dial(rate, cfg.faults.seed).await });
    }
    let shutdown = shutdown_signal().map_err(|e| Failure::new(Exit::Aborted, e))?;
    emulator
        .serve(listener, shutdown)
        .await
        .map_err(|e| Failure::new(Exit::Aborted, e))?;
    Ok(Exit::Ok)
}

/// Completes on SIGINT or SIGTERM (the handlers are installed now).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
