//! `pgrepl up --dump` on the local runtime: a stock pg_dump restored natively into the new
//! primary reaches both standbys; a dump that fails names its line, and `down --purge` cleans up.

use std::fs;
use std::net::TcpListener;
use std::process::{Command, Output};

use crate::support::cluster::TestCluster;
use crate::support::harness::{PgInstall, PgServer, ServerOptions};
use crate::support::{capability, stderr};

/// Awkward values, a `$$` body, a SQL-standard body, a sequence, a quoted table name.
const FIXTURE: &str = r#"
CREATE SEQUENCE order_no START 1000;
CREATE TABLE items (
    id serial PRIMARY KEY,
    name text NOT NULL,
    note text,
    data bytea,
    tags text[],
    doc jsonb
);
INSERT INTO items (name, note, data, tags, doc) VALUES
    (E'tab\tand;semicolon', E'line1\nline2\r\nwith \\ backslash', '\x00ff5c2e0a', ARRAY['a;b', '"q"'], '{"k": "v;\\n"}'),
    ('\.', 'the COPY end marker as a value', NULL, NULL, NULL),
    ('quote''s $$ dollar', NULL, '', '{}', 'null'),
    ('ünïcødé ✓', '-- not a comment /* nor this */', NULL, NULL, '[]');
SELECT setval('order_no', 1234);
CREATE FUNCTION next_order() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    n := nextval('order_no'); -- a comment; with a semicolon
    RETURN 'order;' || n;
END;
$$;
CREATE FUNCTION twice(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT x * 2; END;
CREATE TABLE "Weird;Name" ("col""q" int);
INSERT INTO "Weird;Name" VALUES (1), (2);
"#;

/// One line that differs if any restored value, body or sequence differs.
const FINGERPRINT: &str = r#"
SELECT concat_ws(' ',
    (SELECT md5(string_agg(i::text, '|' ORDER BY id)) FROM items i),
    (SELECT last_value FROM order_no),
    (SELECT string_agg("col""q"::text, ',' ORDER BY 1) FROM "Weird;Name"),
    twice(21),
    md5(pg_get_functiondef('next_order'::regproc)))
"#;

/// `pgrepl COMMAND --cluster FILE EXTRA...` to the end, unbounded.
fn run(cluster: &TestCluster, command: &str, extra: &[&str]) -> Output {
    cluster
        .command(command, extra)
        .output()
        .expect("run pgrepl")
}

fn primary_log(cluster: &TestCluster) -> String {
    fs::read_to_string(cluster.state_dir().join("pg_master/postgres.log")).unwrap_or_default()
}

/// The node's fingerprint of database `shop`, as superuser over the cluster's socket.
fn fingerprint(cluster: &TestCluster, rt: &tokio::runtime::Runtime, port: u16) -> String {
    let conninfo = format!(
        "host={} port={port} user=postgres dbname=shop",
        cluster.state_dir().join("run").display()
    );
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"));
        tokio::spawn(connection);
        client.query_one(FINGERPRINT, &[]).await.unwrap().get(0)
    })
}

fn down_purge(cluster: &TestCluster) {
    let output = run(cluster, "down", &["--purge"]);
    assert!(output.status.success(), "down --purge: {}", stderr(&output));
    assert!(
        !cluster.state_dir().exists(),
        "down --purge left the state directory"
    );
    for &port in &cluster.ports {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still in use after down --purge"
        );
    }
}

/// Database `shop` with the fixture, dumped by the stock pg_dump (`-C`: with `\connect`).
fn stock_dump(install: &PgInstall, rt: &tokio::runtime::Runtime) -> (PgServer, Vec<u8>) {
    let source = PgServer::start(install, ServerOptions::default());
    source.psql("CREATE DATABASE shop");
    let shop = source
        .superuser_conninfo()
        .replace("dbname=postgres", "dbname=shop");
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&shop, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client.batch_execute(FIXTURE).await.unwrap();
    });
    let output = Command::new(install.bin("pg_dump"))
        .args(["-C", "-d", &shop])
        .output()
        .expect("run pg_dump");
    assert!(output.status.success(), "pg_dump: {}", stderr(&output));
    (source, output.stdout)
}

#[test]
fn up_restores_a_stock_pg_dump_that_reaches_both_standbys() {
    let install = PgInstall::default_install();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (source, dump) = stock_dump(&install, &rt);
    let text = String::from_utf8_lossy(&dump);
    assert!(
        text.contains("\\connect shop") && text.contains("FROM stdin;"),
        "{text}"
    );
    let expected = {
        let shop = source
            .superuser_conninfo()
            .replace("dbname=postgres", "dbname=shop");
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&shop, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .query_one(FINGERPRINT, &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        })
    };

    let cluster = TestCluster::new();
    let dump_file = cluster.dir.path().join("shop.sql");
    fs::write(&dump_file, &dump).unwrap();
    let dump_arg = dump_file.to_str().unwrap();
    let output = run(&cluster, "up", &["--dump", dump_arg]);
    let log = stderr(&output);
    assert!(
        output.status.success(),
        "up --dump: {log}\n{}",
        primary_log(&cluster)
    );
    assert!(
        log.contains("restore `") && log.contains("\\connect `shop`"),
        "{log}"
    );
    assert!(
        log.contains("2 COPY blocks (6 rows"),
        "the three tables' rows are counted: {log}"
    );

    for (node, &port) in ["pg_master", "pg_slave", "pg_asyncslave"]
        .iter()
        .zip(&cluster.ports)
    {
        assert_eq!(
            fingerprint(&cluster, &rt, port),
            expected,
            "`{node}` differs from the source"
        );
    }

    // The primary exists now: a second `up` leaves it alone and says why.
    let output = run(&cluster, "up", &["--dump", dump_arg]);
    assert!(output.status.success(), "second up: {}", stderr(&output));
    assert!(
        stderr(&output).contains("not applied"),
        "{}",
        stderr(&output)
    );

    down_purge(&cluster);
}

#[test]
fn a_failing_dump_names_its_line_and_down_purge_cleans_up() {
    let cluster = TestCluster::new();
    let dump_file = cluster.dir.path().join("broken.sql");
    fs::write(
        &dump_file,
        "-- a handwritten dump that fails\n\
         CREATE TABLE ok (id int);\n\
         INSERT INTO ok VALUES (1);\n\
         \\set ON_ERROR_STOP on\n\
         \n\
         INSERT INTO missing_table\n    VALUES (1);\n\
         INSERT INTO ok VALUES (2);\n",
    )
    .unwrap();
    let output = run(&cluster, "up", &["--dump", dump_file.to_str().unwrap()]);
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{log}");
    assert!(
        log.contains(
            "broken.sql` failed at line 6: ERROR: relation \"missing_table\" does not exist"
        ),
        "{log}"
    );
    assert!(
        log.contains("; statement: INSERT INTO missing_table VALUES (1)\n"),
        "{log}"
    );
    down_purge(&cluster);

    // A dump that is not there stops `up` before anything is created.
    let output = run(&cluster, "up", &["--dump", "/nonexistent/dump.sql"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("open dump `/nonexistent/dump.sql`"),
        "{}",
        stderr(&output)
    );
    assert!(!cluster.state_dir().exists());
}

/// `down --purge` with a node pgrepl cannot stop: its postmaster.pid names a live process the
/// server user may not signal (root's), as when a server of another user runs over that data
/// directory. pg_ctl's stop is refused by the kernel, so the "server" stays: purge deletes
/// nothing and names the node; once the process is gone, purge works.
#[test]
fn down_purge_deletes_nothing_while_a_node_it_cannot_stop_runs() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        capability::skip(
            "down_purge_deletes_nothing_while_a_node_it_cannot_stop_runs",
            "root",
            "needs a process the server user cannot signal",
        );
        return;
    }
    let cluster = TestCluster::new();
    let output = run(&cluster, "up", &[]);
    assert!(output.status.success(), "up: {}", stderr(&output));
    let output = run(&cluster, "stop", &["pg_asyncslave"]);
    assert!(output.status.success(), "stop: {}", stderr(&output));
    let mut stranger = Command::new("sleep").arg("600").spawn().unwrap();
    let data = cluster.state_dir().join("pg_asyncslave/data");
    fs::write(data.join("postmaster.pid"), format!("{}\n", stranger.id())).unwrap();

    let output = run(&cluster, "down", &["--purge"]);
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{log}");
    assert!(
        log.contains("nothing deleted") && log.contains("could not stop `pg_asyncslave`"),
        "{log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.starts_with("pgrepl: ")).count(),
        1,
        "{log}"
    );
    for node in ["pg_master", "pg_slave", "pg_asyncslave"] {
        let pg_version = cluster.state_dir().join(node).join("data/PG_VERSION");
        assert!(
            pg_version.exists(),
            "`{}` was deleted",
            pg_version.display()
        );
    }
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger was stopped after all"
    );

    stranger.kill().unwrap();
    stranger.wait().unwrap();
    down_purge(&cluster);
}
