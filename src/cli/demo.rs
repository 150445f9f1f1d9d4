//! `dialsync demo`: the whole sync cycle against a built-in emulator, with nothing to set
//! up. It uses the example config and sample exports from `config/` (compiled in, so the
//! demo works from any directory), pointed at an emulator on a free loopback port and a
//! state database in a temporary directory.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use dialsync::{sync_with, SyncOptions};
use dialsync::{Config, Secret, TokenSource};
use dialsync::{Emulator, EmulatorConfig};

const EXAMPLE: &str = include_str!("../../config/dialsync.example.toml");
const EXPORT: &[u8] = include_bytes!("../../config/sample-export.csv");
const EXPORT_CHANGED: &[u8] = include_bytes!("../../config/sample-export-changed.csv");

pub(super) async fn run() -> anyhow::Result<dialsync::Exit> {
    let emulator = Emulator::new(EmulatorConfig::default());
    let addr = emulator
        .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the emulator")?;
    let dir = std::env::temp_dir().join(format!("dialsync-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = cycle(&emulator, addr, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn cycle(
    emulator: &Emulator,
    addr: SocketAddr,
    dir: &Path,
) -> anyhow::Result<dialsync::Exit> {
    // The example's outcome section, switched on, writing into the demo's directory.
    let outcomes_file = dir.join("outcomes.csv");
    let text = format!(
        "{EXAMPLE}\n[job.outcomes]\npath = {}\n",
        toml::Value::String(outcomes_file.display().to_string())
    );
    let mut config = Config::from_str(&text, Path::new("config/dialsync.example.toml"))?;
    let export = dir.join("leads.csv");
    config.dialler.base_url = format!("http://{addr}/rest/v1.0");
    config.dialler.client_id = emulator.config().client_id;
    config.dialler.token = TokenSource::Inline(Secret::new(emulator.config().token.clone()));
    config.state.path = dir.join("state");
    config.jobs[0].source.path = export.clone();

    outln!("dialsync demo: an emulated jtel dialler is listening on http://{addr}");
    outln!(
        "config: config/dialsync.example.toml (job `leads`, campaign 538), state in {}\n",
        dir.display()
    );

    let steps: [(&str, &[u8]); 3] = [
        ("1. First sync of config/sample-export.csv (Windows-1252, `;`-separated): every valid row is imported", EXPORT),
        (
            "2. Sync of config/sample-export-changed.csv: K-1002's phone changed (update), K-1005's Round \
             changed (reset), K-1006 left the export (lock), K-1011 is new (import)",
            EXPORT_CHANGED,
        ),
        (
            "3. The same export again: nothing changed, so nothing is sent (the two read-only calls that read \
             the outcomes, the campaign listing and its result codes, prove the token too)",
            EXPORT_CHANGED,
        ),
    ];
    let mut exit = dialsync::Exit::Ok;
    // One state for the whole demo: reopening it in the same process races sled's
    // background threads for its lock.
    let store = dialsync::Store::open_sized(&config.state.path, config.state.cache_mb)?;
    for (title, bytes) in steps {
        std::fs::write(&export, bytes)?;
        outln!("{title}");
        let dry = sync_with(
            &config,
            &SyncOptions {
                mode: dialsync::RunMode {
                    dry_run: true,
                    ..Default::default()
                },
                ..SyncOptions::default()
            },
            dialsync::Against::Store(&store),
        )
        .await?;
        if dry
            .iter()
            .any(|r| r.imported + r.updated + r.reset + r.locked + r.unlocked + r.deleted > 0)
        {
            outln!("   dry run first (`dialsync sync --dry-run`):");
            for r in &dry {
                out!("{}", indent(&r.human()));
            }
        }
        let reports = sync_with(
            &config,
            &SyncOptions::default(),
            dialsync::Against::Store(&store),
        )
        .await?;
        outln!("   sync:");
        for r in &reports {
            out!("{}", indent(&r.human()));
        }
        exit = dialsync::exit_of(&reports);
        outln!();
    }

    outln!(
        "4. Agents call two contacts (POST /_emulator/calls): K-1001 closes (ABG, done), K-1003 \
         wants a call back (WV); the next sync writes their outcomes for the CRM"
    );
    for (user_data, export_key) in [("K-1001", "ABG"), ("K-1003", "WV")] {
        emulator
            .record_call(&dialsync::Call {
                id: None,
                user_data: Some(user_data.into()),
                export_key: export_key.into(),
                users_id: Some(1),
                connected: Some(true),
            })
            .map_err(|(status, why)| {
                anyhow::anyhow!("the emulator did not take the call ({status}): {why}")
            })?;
    }
    let reports = sync_with(
        &config,
        &SyncOptions::default(),
        dialsync::Against::Store(&store),
    )
    .await?;
    outln!("   sync:");
    for r in &reports {
        out!("{}", indent(&r.human()));
    }
    let written = std::fs::read(&outcomes_file)
        .with_context(|| format!("the sync wrote no {}", outcomes_file.display()))?;
    outln!("   outcomes.csv (what a CRM import picks up):");
    out!(
        "{}",
        indent(String::from_utf8_lossy(&written).trim_start_matches('\u{feff}'))
    );
    outln!();

    outln!("What the emulated dialler holds now (GET /_emulator/state):");
    outln!(
        "   {:<8} {:<7} {:<12} {:<16} {:<8} {:<6}",
        "ID",
        "User",
        "Name",
        "PhoneNumber1",
        "locked",
        "resets"
    );
    for c in emulator.contacts() {
        let f = |k: &str| {
            c.fields
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        outln!(
            "   {:<8} {:<7} {:<12} {:<16} {:<8} {:<6}",
            c.id,
            f("UserData"),
            f("Name"),
            f("PhoneNumber1"),
            c.locked,
            c.reset_count
        );
    }
    outln!(
        "\nK-1007 is never sent (its phone number is not a number) and never locked. Exit code of the last \
         sync: {} ({:?}: the invalid row is reported every run until the CRM fixes it).",
        exit as u8, exit
    );
    Ok(dialsync::Exit::Ok)
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}
