//! `[job.source] type = "postgres"` / `"mysql"`: the rows of a query, from a real
//! PostgreSQL and a real MariaDB that each test starts for itself (see `dbserver`): an
//! import, one update for one changed row, a lock for a deleted row, no API call for an
//! unchanged result; a broken query, a writing query and a connection lost mid-result
//! remove nothing, and the database's message comes without the password.

use serde_json::Value;

use crate::common::{count, field, Env, TOKEN};
use crate::dbserver::{CuttingProxy, DbServer, Flavor, DB_PASSWORD};

fn server(flavor: Flavor, test: &str) -> Option<DbServer> {
    match flavor {
        Flavor::Postgres => DbServer::postgres(test),
        Flavor::Mariadb => DbServer::mariadb(test),
    }
}

/// The CRM's table, `n` people, and a query giving the columns the tests' mapping names.
fn create_contacts(db: &DbServer, n: usize) {
    let (text, ts, boolean) = match db.flavor {
        Flavor::Postgres => ("text", "timestamp", "boolean"),
        Flavor::Mariadb => ("varchar(200)", "datetime", "boolean"),
    };
    db.sql(&format!(
        "CREATE TABLE contacts (id integer PRIMARY KEY, last_name {text} NOT NULL, first_name {text}, \
         phone {text}, city {text}, round numeric(6,2), updated {ts}, active {boolean} NOT NULL)"
    ));
    let rows: Vec<String> = (1..=n)
        .map(|i| {
            format!(
                "({i}, 'Müller{i}', 'First{i}', '0171 {:07}', 'Köln', 1.50, '2026-12-0{} 09:30:00', true)",
                1_000_000 + i,
                1 + i % 9
            )
        })
        .collect();
    db.sql(&format!("INSERT INTO contacts VALUES {}", rows.join(", ")));
}

fn query(flavor: Flavor) -> &'static str {
    match flavor {
        // PostgreSQL folds names without quotes to lower case: the aliases are quoted.
        Flavor::Postgres => {
            r#"SELECT id AS "CustomerNo", last_name AS "LastName", first_name AS "FirstName", phone AS "Phone", city AS "City", round AS "Round" FROM contacts WHERE active ORDER BY id"#
        }
        Flavor::Mariadb => {
            "SELECT id AS CustomerNo, last_name AS LastName, first_name AS FirstName, phone AS Phone, city AS City, round AS Round FROM contacts WHERE active ORDER BY id"
        }
    }
}

fn sql_job(env: &Env, db: &DbServer, url: &str, query: &str) {
    std::fs::write(env.path("db-url"), format!("{url}\n")).unwrap();
    let kind = match db.flavor {
        Flavor::Postgres => "postgres",
        Flavor::Mariadb => "mysql",
    };
    let query = toml::Value::String(query.to_string()).to_string();
    env.write_config(TOKEN, "");
    env.edit_config(
        "type = \"csv\"\npath = \"export.csv\"\nencoding = \"windows-1252\"\n",
        &format!("type = \"{kind}\"\nurl_file = \"db-url\"\nquery = {query}\ntimeout = \"60s\"\n"),
    );
}

/// `sync --output json`: the report and exit code, after checking that no output names
/// the password.
fn sync_checked(env: &Env) -> (Value, i32) {
    let out = env.dialsync(&["sync", "--config", "dialsync.toml", "--output", "json"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(DB_PASSWORD), "the password in:\n{text}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    (v["jobs"][0].clone(), out.status.code().unwrap())
}

/// Since request `before`, the dialler was only read (the token's proof), never written.
fn assert_only_reads(env: &Env, before: usize) {
    let sent = env.requests_since(before);
    assert!(sent.iter().all(|r| r.method == "GET"), "{sent:?}");
}

fn error_of(report: &Value) -> String {
    report.to_string()
}

fn import_change_delete(flavor: Flavor, test: &str) {
    let Some(db) = server(flavor, test) else {
        return;
    };
    create_contacts(&db, 5);
    let env = Env::new();
    sql_job(&env, &db, &db.url(), query(flavor));

    let (report, code) = sync_checked(&env);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "imported"), 5, "{report}");
    assert_eq!(env.contacts().len(), 5);
    let c = env.contact("3");
    assert_eq!(field(&c, "Name"), "Müller3");
    assert_eq!(field(&c, "City"), "Köln");

    // Unchanged: settled by the rows' hashes (none mapped), nothing sent; a manual sync
    // only proves the token with one read.
    let before = env.requests().len();
    let (report, code) = sync_checked(&env);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "unchanged_by_hash"), 5, "{report}");
    assert_only_reads(&env, before);

    // One row changed (and a NULL, which is an empty value): one update.
    db.sql("UPDATE contacts SET city = NULL, first_name = 'Änne' WHERE id = 2");
    let before = env.requests().len();
    let (report, code) = sync_checked(&env);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        (count(&report, "updated"), count(&report, "unchanged")),
        (1, 4),
        "{report}"
    );
    assert_eq!(env.requests_since(before).len(), 1);
    let c = env.contact("2");
    assert_eq!(field(&c, "FirstName"), "Änne");
    assert_eq!(field(&c, "City"), "");

    // One row deleted: one lock.
    db.sql("DELETE FROM contacts WHERE id = 4");
    let before = env.requests().len();
    let (report, code) = sync_checked(&env);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "locked"), 1, "{report}");
    assert_eq!(env.requests_since(before).len(), 1);
    assert!(env.contact("4").locked);
    assert!(!env.contact("3").locked);

    // Other column types, as the mapping gets them: a timestamp as ISO 8601 (with a T),
    // a boolean as the database writes it in words or digits.
    let typed = query(flavor)
        .replace("first_name AS", "active AS")
        .replace("city AS", "updated AS");
    sql_job(&env, &db, &db.url(), &typed);
    let (report, code) = sync_checked(&env);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "updated"), 4, "{report}");
    let c = env.contact("3");
    assert_eq!(field(&c, "City"), "2026-12-04T09:30:00");
    let yes = match flavor {
        Flavor::Postgres => "true",
        Flavor::Mariadb => "1",
    };
    assert_eq!(field(&c, "FirstName"), yes);
}

#[test]
fn postgres_import_update_lock() {
    import_change_delete(Flavor::Postgres, "sql::postgres_import_update_lock");
}

#[test]
fn mariadb_import_update_lock() {
    import_change_delete(Flavor::Mariadb, "sql::mariadb_import_update_lock");
}

/// A query that fails, a query that writes (refused: the transaction is read-only) and a
/// connection lost mid-result each stop the run with the database's message: nothing is
/// locked though no row came, and the table is as it was.
fn faults_remove_nothing(flavor: Flavor, test: &str) {
    let Some(db) = server(flavor, test) else {
        return;
    };
    create_contacts(&db, 3000);
    let env = Env::new();
    sql_job(&env, &db, &db.url(), query(flavor));
    let (report, code) = sync_checked(&env);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "imported"), 3000);

    // A broken query (a column renamed in the CRM).
    db.sql("ALTER TABLE contacts RENAME COLUMN city TO town");
    let before = env.requests().len();
    let (report, code) = sync_checked(&env);
    assert_eq!(code, 3, "{report}");
    let said = error_of(&report);
    assert!(said.contains("city"), "the database's message: {said}");
    assert!(said.contains("127.0.0.1"), "which database: {said}");
    assert_eq!(env.requests_since(before).len(), 0);
    db.sql("ALTER TABLE contacts RENAME COLUMN town TO city");

    // A query that would write: refused by the read-only transaction.
    let writing = query(flavor)
        .replace("SELECT", "DELETE FROM contacts RETURNING")
        .replace(" FROM contacts WHERE active ORDER BY id", "");
    sql_job(&env, &db, &db.url(), &writing);
    let (report, code) = sync_checked(&env);
    assert_eq!(code, 3, "{report}");
    assert!(
        error_of(&report).to_lowercase().contains("read only")
            || error_of(&report).to_lowercase().contains("read-only"),
        "{report}"
    );
    assert_eq!(env.requests_since(before).len(), 0);

    // The connection lost after 64 KiB of the result (of about 300).
    let proxy = CuttingProxy::start(db.port, 64 * 1024);
    sql_job(&env, &db, &db.url_at(proxy.port), query(flavor));
    let (report, code) = sync_checked(&env);
    assert_eq!(code, 3, "{report}");
    let said = report["aborted"].as_str().unwrap_or_default().to_string();
    assert!(
        said.contains("cannot read the CRM's rows from postgres://127.0.0.1:")
            || said.contains("cannot read the CRM's rows from mysql://127.0.0.1:"),
        "{report}"
    );
    assert_eq!(env.requests_since(before).len(), 0, "nothing locked");
    assert!(env.contacts().iter().all(|c| !c.locked));

    // Through the server itself again: nothing was lost, nothing to do.
    sql_job(&env, &db, &db.url(), query(flavor));
    let (report, code) = sync_checked(&env);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "unchanged_by_hash"), 3000, "{report}");
    assert_only_reads(&env, before);
}

#[test]
fn postgres_faults_remove_nothing() {
    faults_remove_nothing(Flavor::Postgres, "sql::postgres_faults_remove_nothing");
}

#[test]
fn mariadb_faults_remove_nothing() {
    faults_remove_nothing(Flavor::Mariadb, "sql::mariadb_faults_remove_nothing");
}

/// `validate` checks the query's columns without reading its rows, and names a column
/// the mapping wants and the query lacks; PostgreSQL's lower-cased names get a hint.
#[test]
fn validate_checks_the_columns_of_a_query() {
    let Some(db) = server(
        Flavor::Postgres,
        "sql::validate_checks_the_columns_of_a_query",
    ) else {
        return;
    };
    create_contacts(&db, 2);
    let env = Env::new();
    sql_job(&env, &db, &db.url(), query(Flavor::Postgres));
    let out = env.dialsync(&["validate", "--config", "dialsync.toml"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("LIMIT 0"), "{text}");
    assert!(!text.contains(DB_PASSWORD), "{text}");

    // Unquoted aliases come back lower-case.
    sql_job(
        &env,
        &db,
        &db.url(),
        &query(Flavor::Postgres).replace("AS \"City\"", "AS City"),
    );
    let out = env.dialsync(&["validate", "--config", "dialsync.toml"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("`City` (there is `city`)"), "{text}");
    assert!(text.contains("AS \"City\""), "{text}");

    // A wrong password: the database's message, without the password.
    sql_job(
        &env,
        &db,
        &db.url().replace(DB_PASSWORD, "wrong-pw-123"),
        query(Flavor::Postgres),
    );
    let out = env.dialsync(&["validate", "--config", "dialsync.toml"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("wrong-pw-123"), "{text}");
}

/// TLS as the URL sets it: `sslmode=verify-full` refuses a server whose certificate no
/// trusted CA signed (nothing read, nothing changed), and takes it with that certificate
/// as `sslrootcert`.
#[test]
fn postgres_over_tls_trusts_its_sslrootcert_only() {
    let Some(db) = DbServer::postgres_tls("sql::postgres_over_tls_trusts_its_sslrootcert_only")
    else {
        return;
    };
    create_contacts(&db, 2);
    let env = Env::new();
    let q = query(Flavor::Postgres);
    sql_job(&env, &db, &format!("{}?sslmode=verify-full", db.url()), q);
    let (report, code) = sync_checked(&env);
    assert_eq!(code, 3, "{report}");
    assert!(
        report["aborted"].as_str().unwrap().contains("certificate"),
        "{report}"
    );
    assert!(env.contacts().is_empty());

    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/untrusted-cert.pem");
    sql_job(
        &env,
        &db,
        &format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            db.url(),
            ca.display()
        ),
        q,
    );
    let (report, code) = sync_checked(&env);
    assert_eq!((code, count(&report, "imported")), (0, 2), "{report}");
}
