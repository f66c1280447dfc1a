//! Load benchmark: a real chat-engine (release binary, durable storage) on loopback, driven by
//! real WebSocket clients speaking PROTOCOL.md, beside a bare broadcast baseline measured in
//! the same run. Prints one results table.
//!
//! `cargo bench --bench load`; `LOAD_SECONDS` sets each measurement's length (default 5).
//! `LOAD_SCALE=1` runs the scale scenario instead (see `scale.rs`).
//! The servers run on CPU 0 and the load generator on CPU 1 where taskset exists.

// The same allocator as chat-engine, for the baseline server and the load generator alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod baseline;
mod fanout;
mod history;
mod idle;
mod resume;
mod scale;
mod target;
mod webhooks;

use std::time::Duration;

use fanout::{Load, Outcome, Shape};
use target::Target;

struct Row {
    scenario: String,
    outcome: Outcome,
    commits: Option<Commits>,
}

/// chat-engine's group-commit counters (from `/metrics`).
struct Commits {
    count: f64,
    seconds: f64,
    writes: f64,
}

impl Commits {
    fn read(engine: &Target) -> Commits {
        let agent = ureq::Agent::new_with_defaults();
        Commits {
            count: engine.metric(&agent, "chat_engine_commit_seconds_count"),
            seconds: engine.metric(&agent, "chat_engine_commit_seconds_sum"),
            writes: engine.metric(&agent, "chat_engine_commit_batch_writes_sum"),
        }
    }

    fn since(&self, before: &Commits) -> Commits {
        Commits {
            count: self.count - before.count,
            seconds: self.seconds - before.seconds,
            writes: self.writes - before.writes,
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--baseline-server") {
        baseline::serve();
        return;
    }
    target::pin_load_generator();
    let seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let measure = Duration::from_secs(seconds);
    println!(
        "load benchmark: {seconds} s per measurement; {}",
        if target::can_pin() {
            "server pinned to CPU 0, load generator to CPU 1 (taskset)"
        } else {
            "not pinned (no taskset or one CPU)"
        }
    );
    // LOAD_SCALE=1 runs only the scale scenario, on 1,000,000 rooms; any other number is the
    // number of rooms (LOAD_SCALE=20000 for a quick run).
    if let Ok(value) = std::env::var("LOAD_SCALE") {
        let rooms = match value.parse().expect("LOAD_SCALE=1 or a number of rooms") {
            1 => 1_000_000,
            rooms => rooms,
        };
        scale::run(rooms, measure);
        return;
    }
    // LOAD_CLUSTER_READY=N starts a one-node and a two-node cluster N times (default 5)
    // and reports each node's spawn-to-ready time on a new, empty Redis.
    if let Ok(times) = std::env::var("LOAD_CLUSTER_READY") {
        let times: usize = times.parse().unwrap_or(5).max(1);
        let mut first = Vec::new();
        let mut second = Vec::new();
        for _ in 0..times {
            let target = Target::chat_engine_cluster(2).expect("redis-server");
            first.push(target.ready[0].as_secs_f64() * 1000.0);
            second.push(target.ready[1].as_secs_f64() * 1000.0);
        }
        first.sort_by(f64::total_cmp);
        second.sort_by(f64::total_cmp);
        println!(
            "cluster: spawn to ready on an empty Redis, median of {times}: first node {:.0} ms, \
             second node {:.0} ms (sorted: {first:.0?}, {second:.0?})",
            first[times / 2],
            second[times / 2],
        );
        return;
    }
    // LOAD_IDLE=1 measures only the idle connections (scenario 3).
    if std::env::var_os("LOAD_IDLE").is_some() {
        let engine = idle::rss_per_connection(&Target::chat_engine(), 5_000);
        println!("3: RSS per idle connection (5000 connections): chat-engine {engine:.1} KiB");
        return;
    }
    // LOAD_WEBHOOKS=1 measures only durable writes with webhooks on and off, and the
    // events' delivery lag at 1,000 msgs/s (scenario 7).
    if std::env::var_os("LOAD_WEBHOOKS").is_some() {
        for results in webhooks::run(measure) {
            print_webhooks(&results);
        }
        return;
    }
    // LOAD_RESUME=N measures only the app's start-up after time away (scenario 6), with N
    // messages missed per room (any value that is not a number: 10).
    if let Ok(missed) = std::env::var("LOAD_RESUME") {
        let missed = missed.parse().unwrap_or(resume::MISSED);
        print_resume(&resume::run(&Target::chat_engine(), 100, missed));
        return;
    }
    // LOAD_READS=1 measures only reads (cached sync, resume) on one node and on a one-node
    // cluster (needs the `redis` feature).
    if std::env::var_os("LOAD_READS").is_some() {
        reads(measure);
        return;
    }
    // LOAD_ONE=target,rooms,members,rate (rate 0: saturation) runs one measurement, for
    // profiling or a quick look: LOAD_ONE=chat-engine,100,10,10000
    if let Ok(one) = std::env::var("LOAD_ONE") {
        let parts: Vec<&str> = one.split(',').collect();
        let number = |i: usize| {
            parts
                .get(i)
                .and_then(|p| p.parse().ok())
                .expect("LOAD_ONE=target,rooms,members,rate")
        };
        let target = match parts[0] {
            "baseline" => Target::baseline(),
            "cluster1" => Target::chat_engine_cluster(1).expect("redis-server"),
            "cluster2" => Target::chat_engine_cluster(2).expect("redis-server"),
            _ => Target::chat_engine(),
        };
        let shape = Shape {
            rooms: number(1) as usize,
            members: number(2) as usize,
            client_msg_ids: std::env::var_os("LOAD_CLIENT_MSG_ID").is_some(),
        };
        let load = match number(3) {
            0 => Load::Saturation { window: 32 },
            rate => Load::Rate(rate),
        };
        let before = (target.kind == target::Kind::ChatEngine).then(|| Commits::read(&target));
        let outcome = fanout::run(&target, shape, load, measure);
        let row = Row {
            scenario: one.clone(),
            outcome,
            commits: before.map(|before| Commits::read(&target).since(&before)),
        };
        print_table(&[row], f64::NAN);
        return;
    }
    let wide = Shape {
        rooms: 100,
        members: 10,
        client_msg_ids: false,
    };
    let wide_with_ids = Shape {
        client_msg_ids: true,
        ..wide
    };
    let tall = Shape {
        rooms: 10,
        members: 100,
        client_msg_ids: false,
    };
    let saturate = Load::Saturation { window: 32 };
    let mut rows = Vec::new();

    const IDLE: usize = 5_000;
    let baseline = Target::baseline();
    let bare = fanout::run(&baseline, wide, saturate, measure);
    let bare_10k = fanout::run(&baseline, wide, Load::Rate(10_000), measure);
    drop(baseline);
    let bare_idle = idle::rss_per_connection(&Target::baseline(), IDLE);
    let bare_rate = bare.deliveries_per_s;
    rows.push(Row {
        scenario: "baseline: 100 rooms x 10, saturation".into(),
        outcome: bare,
        commits: None,
    });
    rows.push(Row {
        scenario: "baseline: 100 rooms x 10, 10k msg/s offered".into(),
        outcome: bare_10k,
        commits: None,
    });

    let engine = Target::chat_engine();
    for (name, shape, load) in [
        (
            "1: 100 rooms x 10, 2k msg/s offered",
            wide,
            Load::Rate(2_000),
        ),
        (
            "1: 100 rooms x 10, 10k msg/s offered",
            wide,
            Load::Rate(10_000),
        ),
        ("1: 100 rooms x 10, saturation", wide, saturate),
        (
            "1: 100 rooms x 10, saturation, with client_msg_ids",
            wide_with_ids,
            saturate,
        ),
        (
            "2: 10 rooms x 100, 1k msg/s offered",
            tall,
            Load::Rate(1_000),
        ),
        ("2: 10 rooms x 100, saturation", tall, saturate),
        (
            "5: 100 rooms x 1 (durable writes), saturation",
            Shape {
                rooms: 100,
                members: 1,
                client_msg_ids: false,
            },
            saturate,
        ),
    ] {
        let before = Commits::read(&engine);
        let outcome = fanout::run(&engine, shape, load, measure);
        let commits = Commits::read(&engine).since(&before);
        rows.push(Row {
            scenario: name.into(),
            outcome,
            commits: Some(commits),
        });
    }
    history::fill(&engine);
    let cached = history::run(&engine, measure, history::cached);
    let mut engine = engine;
    engine.restart();
    let from_disk = history::run(&engine, measure, history::from_disk);
    let slow_closes = engine.metric(
        &ureq::Agent::new_with_defaults(),
        "chat_engine_ws_closes_total{code=\"1013\"}",
    );
    let resumed = resume::run(&engine, 100, resume::MISSED);
    let single_node = rows
        .iter()
        .find(|row| row.scenario == "1: 100 rooms x 10, saturation")
        .map_or(f64::NAN, |row| row.outcome.deliveries_per_s);
    drop(engine);
    let engine_idle = idle::rss_per_connection(&Target::chat_engine(), IDLE);
    let cluster_rows = cluster_runs(wide, saturate, measure);
    print_table(&rows, bare_rate);
    println!();
    println!("slow-consumer closes (1013) during the chat-engine runs: {slow_closes}");
    print_sync("4: sync, no cursor (cache)", &cached);
    print_sync("4: sync, since_seq from disk after a restart", &from_disk);
    println!(
        "3: RSS per idle connection ({IDLE} connections): chat-engine {engine_idle:.1} KiB, \
         baseline {bare_idle:.1} KiB"
    );
    print_resume(&resumed);
    print_cluster_table(&cluster_rows, single_node);
}

/// Cluster mode on one Redis: 1 and 2 nodes, members spread over the nodes in turn (every
/// room's sender on the first), at saturation and at a moderate rate, and one node at
/// saturation with a `client_msg_id` on every send. Needs the `redis` feature and
/// redis-server; `None` explains what is missing.
fn cluster_runs(shape: Shape, saturate: Load, measure: Duration) -> Result<Vec<Row>, String> {
    if !cfg!(feature = "redis") {
        return Err("run `cargo bench --features redis --bench load` to include them".into());
    }
    let with_ids = Shape {
        client_msg_ids: true,
        ..shape
    };
    let mut rows = Vec::new();
    for nodes in [1, 2] {
        let target = Target::chat_engine_cluster(nodes).ok_or("redis-server is not installed")?;
        let mut runs = vec![
            (shape, Load::Rate(2_000), "2k msg/s offered"),
            (shape, saturate, "saturation"),
        ];
        if nodes == 1 {
            runs.push((with_ids, saturate, "saturation, with client_msg_ids"));
        }
        for (shape, load, name) in runs {
            rows.push(Row {
                scenario: format!("{nodes} node(s), 100 rooms x 10, {name}"),
                outcome: fanout::run(&target, shape, load, measure),
                commits: None,
            });
        }
    }
    Ok(rows)
}

fn print_cluster_table(rows: &Result<Vec<Row>, String>, single_node: f64) {
    println!();
    let rows = match rows {
        Ok(rows) => rows,
        Err(why) => {
            println!("cluster rows skipped: {why}");
            return;
        }
    };
    println!("cluster mode, one Redis (AOF, fsync always), nodes and Redis pinned to CPU 0:");
    println!();
    println!(
        "| scenario | msgs/s sent | deliveries/s | x single node | p50 ms | p99 ms | cross-node p99 ms | nodes CPU % | Redis CPU % | Redis CPU us per msg | lost | dup |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in rows {
        let o = &row.outcome;
        let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let cross = if o.cross_node_latency_us.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1}", ms(&o.cross_node_latency_us, 0.99))
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {cross} | {:.0} | {:.0} | {:.1} | {} | {} |",
            row.scenario,
            o.sent_per_s,
            o.deliveries_per_s,
            o.deliveries_per_s / single_node,
            ms(&o.latency_us, 0.5),
            ms(&o.latency_us, 0.99),
            100.0 * o.server_cpu,
            100.0 * o.redis_cpu,
            1e6 * o.redis_cpu / o.sent_per_s,
            o.lost,
            o.duplicated
        );
    }
}

fn print_table(rows: &[Row], bare_rate: f64) {
    println!();
    println!(
        "| scenario | msgs/s sent | deliveries/s | x baseline | p50 ms | p90 ms | p99 ms | max ms | server CPU % | lost | dup |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let o = &row.outcome;
        let ms = |q: f64| o.latency_us.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} |",
            row.scenario,
            o.sent_per_s,
            o.deliveries_per_s,
            o.deliveries_per_s / bare_rate,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            o.latency_us.max() as f64 / 1000.0,
            100.0 * o.server_cpu,
            o.lost,
            o.duplicated
        );
    }
    println!();
    println!("| scenario | group commits | mean writes per commit | mean commit ms |");
    println!("| --- | ---: | ---: | ---: |");
    for row in rows {
        if let Some(c) = &row.commits {
            println!(
                "| {} | {:.0} | {:.1} | {:.2} |",
                row.scenario,
                c.count,
                c.writes / c.count.max(1.0),
                1000.0 * c.seconds / c.count.max(1.0)
            );
        }
    }
    for row in rows {
        if let Some(error) = &row.outcome.first_error {
            println!(
                "{}: {} errors, first: {error}",
                row.scenario, row.outcome.errors
            );
        }
    }
}

/// Scenario 6: `resume` against the v1 start-up on the same missed messages.
fn print_sync(name: &str, outcome: &history::Outcome) {
    println!(
        "{name}: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms ({} clients, one request in flight each)",
        outcome.per_s,
        outcome.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
        outcome.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        history::CLIENTS
    );
}

/// Cached `sync` and `resume` on one node and on a one-node cluster, where every read first
/// catches up with the Redis logs it depends on: what that costs.
fn reads(measure: Duration) {
    if !cfg!(feature = "redis") {
        println!("reads: run `cargo bench --features redis --bench load` for the cluster's");
        return;
    }
    let one = Target::chat_engine();
    let cluster = Target::chat_engine_cluster(1).expect("redis-server");
    for (name, target) in [("one node", &one), ("cluster, one node", &cluster)] {
        history::fill(target);
        print_sync(
            &format!("{name}: sync, no cursor (cache)"),
            &history::run(target, measure, history::cached),
        );
        print!("{name}: ");
        print_resume(&resume::run(target, 100, resume::MISSED));
    }
}

fn print_resume(outcome: &resume::Outcome) {
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let (resume, v1) = (&outcome.resume_us, &outcome.v1_us);
    println!(
        "6: back after time away ({} rooms x {} missed messages, {} times): resume p50 {:.2} ms \
         p99 {:.2} ms; v1 flow (rooms + {} pipelined syncs) p50 {:.2} ms p99 {:.2} ms; \
         resume {:.1}x faster at p99",
        resume::ROOMS,
        outcome.missed,
        resume.len(),
        ms(resume, 0.5),
        ms(resume, 0.99),
        resume::ROOMS,
        ms(v1, 0.5),
        ms(v1, 0.99),
        ms(v1, 0.99) / ms(resume, 0.99)
    );
}

/// Scenario 7: webhooks on against off, and how late events arrive.
fn print_webhooks(results: &webhooks::Results) {
    let (without, with) = (results.without.sent_per_s, results.with.sent_per_s);
    println!(
        "{}: 7: durable writes (100 rooms x 1, saturation): {without:.0} msgs/s without \
         webhooks, {with:.0} msgs/s with them ({:.2}x); at {} msgs/s, {} events delivered, \
         lag p50 {:.1} ms, p99 {:.1} ms",
        results.served_by,
        with / without,
        results.rate,
        results.delivered,
        results.lag_us.value_at_quantile(0.5) as f64 / 1000.0,
        results.lag_us.value_at_quantile(0.99) as f64 / 1000.0,
    );
}
