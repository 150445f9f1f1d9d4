//! Private database servers for the SQL source tests: a PostgreSQL or MariaDB instance
//! started by the test from Debian's packages, with its data in a temporary directory,
//! on a free loopback port, as a non-root user (the packages' `postgres` / `mysql` when
//! the tests run as root), and stopped when dropped. No system service is touched.
//!
//! Readiness is the servers' own signal: `pg_ctl start -w` returns once PostgreSQL takes
//! connections; MariaDB says `READY=1` on a notify socket of the test's (systemd's
//! protocol), so nothing sleeps.
//!
//! Without the packages the tests are skipped, each saying so on stderr; with
//! `DIALSYNC_DB_TESTS=required` (set by `.ci/test`, which installs the packages) a missing
//! server fails the test instead.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The database user's password: it must never show in dialsync's output.
pub(crate) const DB_PASSWORD: &str = "pw-Zq81xV";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Postgres,
    Mariadb,
}

pub(crate) struct DbServer {
    pub flavor: Flavor,
    pub port: u16,
    dir: tempfile::TempDir,
    /// The OS user the server runs as when the tests run as root.
    user: Option<String>,
    /// PostgreSQL: the folder of its programs. MariaDB: the server process.
    bin: PathBuf,
    child: Option<Child>,
}

/// Whether a missing server fails the test rather than skipping it.
fn required() -> bool {
    std::env::var("DIALSYNC_DB_TESTS").is_ok_and(|v| v == "required")
}

fn skip(test: &str, why: &str) -> Option<DbServer> {
    if required() {
        panic!("{test}: {why} (DIALSYNC_DB_TESTS=required)");
    }
    eprintln!(
        "\n*** SKIPPED {test}: {why}. Run .ci/test (it installs postgresql and mariadb-server) to run it. ***\n"
    );
    None
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn which(names: &[&str], dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    for name in names {
        for dir in dirs.iter().copied().chain(path.split(':')) {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The newest PostgreSQL's programs (Debian keeps them out of PATH).
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn run(cmd: &mut Command, what: &str) {
    run_with(cmd, what, "")
}

/// Runs `cmd` with `input` on its stdin (SQL too long for an argument).
fn run_with(cmd: &mut Command, what: &str, input: &str) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl DbServer {
    /// A command run as the server's user.
    fn as_user(&self, program: &Path) -> Command {
        match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// The directory, made the server user's.
    fn prepare(flavor: Flavor, os_user: &str) -> (tempfile::TempDir, Option<String>) {
        let dir = tempfile::Builder::new()
            .prefix("dialsync-db-")
            .tempdir()
            .unwrap();
        let user = is_root().then(|| os_user.to_string());
        if let Some(u) = &user {
            run(
                Command::new("chown").args([&format!("{u}:"), dir.path().to_str().unwrap()]),
                "chown of the database folder",
            );
        }
        let _ = flavor;
        (dir, user)
    }

    pub(crate) fn postgres(test: &str) -> Option<DbServer> {
        DbServer::postgres_with(test, false)
    }

    /// PostgreSQL that also speaks TLS, with the certificate in tests/data (for
    /// `localhost` and 127.0.0.1, signed by no CA the system knows).
    pub(crate) fn postgres_tls(test: &str) -> Option<DbServer> {
        DbServer::postgres_with(test, true)
    }

    fn postgres_with(test: &str, tls: bool) -> Option<DbServer> {
        let Some(bin) = pg_bin() else {
            return skip(
                test,
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)",
            );
        };
        if is_root()
            && !Path::new("/usr/sbin/runuser").exists()
            && which(&["runuser"], &[]).is_none()
        {
            return skip(
                test,
                "runs as root and has no runuser to start PostgreSQL as postgres",
            );
        }
        let (dir, user) = DbServer::prepare(Flavor::Postgres, "postgres");
        let db = DbServer {
            flavor: Flavor::Postgres,
            port: free_port(),
            dir,
            user,
            bin,
            child: None,
        };
        let pw = db.dir.path().join("pw");
        std::fs::write(&pw, DB_PASSWORD).unwrap();
        if let Some(u) = &db.user {
            run(
                Command::new("chown").args([&format!("{u}:"), pw.to_str().unwrap()]),
                "chown",
            );
        }
        let data = db.dir.path().join("data");
        let initdb = db.bin.join("initdb");
        run(
            db.as_user(&initdb)
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "dialsync",
                    "-A",
                    "scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .arg(format!("--pwfile={}", pw.display())),
            "initdb",
        );
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            db.port,
            db.dir.path().display()
        );
        if tls {
            let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
            let (crt, key) = (
                db.dir.path().join("server.crt"),
                db.dir.path().join("server.key"),
            );
            std::fs::copy(certs.join("untrusted-cert.pem"), &crt).unwrap();
            std::fs::copy(certs.join("untrusted-key.pem"), &key).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some(u) = &db.user {
                for f in [&crt, &key] {
                    run(
                        Command::new("chown").args([&format!("{u}:"), f.to_str().unwrap()]),
                        "chown",
                    );
                }
            }
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                crt.display(),
                key.display()
            ));
        }
        let pg_ctl = db.bin.join("pg_ctl");
        run(
            db.as_user(&pg_ctl)
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(db.dir.path().join("log"))
                .args(["-w", "-t", "120", "-o"])
                .arg(options)
                .arg("start"),
            "pg_ctl start",
        );
        db.sql("CREATE DATABASE crm");
        Some(db)
    }

    pub(crate) fn mariadb(test: &str) -> Option<DbServer> {
        let dirs = ["/usr/sbin", "/usr/bin"];
        let (Some(server), Some(install), Some(_)) = (
            which(&["mariadbd", "mysqld"], &dirs),
            which(&["mariadb-install-db", "mysql_install_db"], &dirs),
            which(&["mariadb", "mysql"], &dirs),
        ) else {
            return skip(
                test,
                "MariaDB is not installed (no mariadbd, mariadb-install-db, mariadb)",
            );
        };
        let (dir, user) = DbServer::prepare(Flavor::Mariadb, "mysql");
        let mut db = DbServer {
            flavor: Flavor::Mariadb,
            port: free_port(),
            dir,
            user,
            bin: server,
            child: None,
        };
        let data = db.dir.path().join("data");
        let mut install = Command::new(install);
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if let Some(u) = &db.user {
            install.arg(format!("--user={u}"));
        }
        {
            // Two installs at once fail now and then (seen: "Installation of system tables
            // failed!"); one after the other they do not.
            static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
            run(&mut install, "mariadb-install-db");
        }

        // The server's readiness, by systemd's notify protocol on a socket of ours.
        let notify_path = db.dir.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o666)).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut cmd = Command::new(&db.bin);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={}", db.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", db.socket().display()))
            .arg(format!(
                "--pid-file={}",
                db.dir.path().join("pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                db.dir.path().join("error.log").display()
            ))
            .args([
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                "--character-set-server=utf8mb4",
            ])
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(u) = &db.user {
            cmd.arg(format!("--user={u}"));
        }
        db.child = Some(cmd.spawn().expect("start mariadbd"));
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    break;
                }
            }
            if let Ok(Some(status)) = db.child.as_mut().unwrap().try_wait() {
                panic!("mariadbd ended ({status}): {}", db.error_log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "mariadbd did not say READY=1 within 3 minutes: {}",
                db.error_log()
            );
        }
        db.sql(&format!(
            "CREATE DATABASE crm; CREATE USER 'dialsync'@'%' IDENTIFIED BY '{DB_PASSWORD}'; GRANT ALL ON crm.* TO 'dialsync'@'%'"
        ));
        Some(db)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The URL dialsync is given (a password in it).
    pub(crate) fn url(&self) -> String {
        self.url_at(self.port)
    }

    /// The same, through another port (a proxy's).
    pub(crate) fn url_at(&self, port: u16) -> String {
        match self.flavor {
            Flavor::Postgres => format!("postgres://dialsync:{DB_PASSWORD}@127.0.0.1:{port}/crm"),
            Flavor::Mariadb => format!("mysql://dialsync:{DB_PASSWORD}@127.0.0.1:{port}/crm"),
        }
    }

    /// Runs `sql` (statements separated by `;`) as the admin, in the `crm` database once
    /// it exists.
    pub(crate) fn sql(&self, sql: &str) {
        let text = format!("{sql};\n");
        match self.flavor {
            Flavor::Postgres => {
                let db = if sql.starts_with("CREATE DATABASE") {
                    "postgres"
                } else {
                    "crm"
                };
                run_with(
                    Command::new(self.bin.join("psql"))
                        .args([
                            "-X",
                            "-q",
                            "-v",
                            "ON_ERROR_STOP=1",
                            "-h",
                            "127.0.0.1",
                            "-U",
                            "dialsync",
                        ])
                        .arg(format!("-p{}", self.port))
                        .args(["-d", db, "-f", "-"])
                        .env("PGPASSWORD", DB_PASSWORD),
                    "psql",
                    &text,
                );
            }
            Flavor::Mariadb => {
                let db = if sql.starts_with("CREATE DATABASE") {
                    "mysql"
                } else {
                    "crm"
                };
                let client = which(&["mariadb", "mysql"], &["/usr/bin"]).unwrap();
                run_with(
                    Command::new(client)
                        .arg("--no-defaults")
                        .arg(format!("--socket={}", self.socket().display()))
                        .args(["-u", "root", db]),
                    "mariadb",
                    &text,
                );
            }
        }
    }
}

impl Drop for DbServer {
    fn drop(&mut self) {
        match self.flavor {
            Flavor::Postgres => {
                let pg_ctl = self.bin.join("pg_ctl");
                let _ = self
                    .as_user(&pg_ctl)
                    .arg("-D")
                    .arg(self.dir.path().join("data"))
                    .args(["-m", "immediate", "-w", "stop"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            Flavor::Mariadb => {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

/// A TCP proxy in front of a server that cuts both connections once `cut_after` bytes
/// have come back from the server: a connection lost mid-result, at a byte count, not a
/// moment.
pub(crate) struct CuttingProxy {
    pub port: u16,
}

impl CuttingProxy {
    pub(crate) fn start(upstream: u16, cut_after: usize) -> CuttingProxy {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                // Client to server, as it comes.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                // Server to client, up to the cut.
                std::thread::spawn(move || {
                    let mut sent = 0;
                    let mut buf = [0u8; 8192];
                    while sent < cut_after {
                        let n = match server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n.min(cut_after - sent),
                        };
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy { port }
    }
}
