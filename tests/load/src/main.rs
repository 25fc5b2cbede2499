//! `ieum-load`: the benchmark load generator. Parses the command line, runs workloads
//! against one homeserver URL (ieum or Synapse), merges results into a JSON file, and
//! prints tables (one server, or two side by side with ratios and the targets).

mod client;
mod machine;
mod peer;
mod poll;
mod report;
mod stats;
mod workloads;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    client::Homeserver,
    report::{Better, Results, Workload},
    workloads::Ctx,
};

/// Load generator for Matrix homeservers: the same workloads, measured the same way, against
/// ieum and Synapse.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Target {
    /// Base URL of the homeserver's client API (loopback), e.g. http://127.0.0.1:8008.
    #[arg(long)]
    url: String,
    /// Name of this server in tables ("ieum", "synapse").
    #[arg(long, default_value = "server")]
    label: String,
    /// Merge results into this JSON file (created if missing).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Timeout of every ordinary request, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Run W1 (send), W2 (fan-out), W3 (warm initial sync), W9 (sliding sync first page),
    /// W8 (appservice import), W5 (federation ingest) and W4 (remote join), in that order.
    Run(RunArgs),
    /// W7: poll /versions until it answers; report ms since --since-unix-ns.
    WaitReady {
        #[command(flatten)]
        target: Target,
        /// Wall-clock launch instant (`date +%s%N` just before starting the server).
        #[arg(long)]
        since_unix_ns: Option<u128>,
        #[arg(long, default_value = "start to /versions")]
        metric: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        limit_secs: u64,
    },
    /// W7: poll an incremental /sync with the saved W3 account until it succeeds.
    FirstSync {
        #[command(flatten)]
        target: Target,
        /// The W3 state file written by `run --state`.
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        since_unix_ns: Option<u128>,
        #[arg(long, default_value = "SIGKILL to first /sync")]
        metric: String,
        #[arg(long, default_value_t = 120)]
        limit_secs: u64,
    },
    /// W3 cold: one complete initial sync with the saved W3 account (after a restart).
    ColdSync {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        state: PathBuf,
    },
    /// Add a number measured elsewhere (e.g. RSS from /proc) to a results file.
    Record {
        /// The results file to merge into.
        #[arg(long)]
        json: PathBuf,
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long, default_value = "")]
        url: String,
        /// Workload id, e.g. W6.
        #[arg(long)]
        workload: String,
        #[arg(long)]
        metric: String,
        #[arg(long)]
        value: f64,
        #[arg(long)]
        unit: String,
        #[arg(long, value_enum, default_value_t = BetterArg::Lower)]
        better: BetterArg,
        /// A note shown under the table.
        #[arg(long)]
        note: Option<String>,
    },
    /// Print the table of one results file.
    Show { json: PathBuf },
    /// Print two results files side by side with ratios and targets.
    Compare {
        /// Results of the server under test (ieum).
        subject: PathBuf,
        /// Results of the reference server (Synapse).
        reference: PathBuf,
        /// Machine description (from `ieum-load machine --json`).
        #[arg(long)]
        machine: Option<PathBuf>,
        /// Write the combined comparison here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Extra facts for the record, `key=value` (repeatable).
        #[arg(long = "note")]
        notes: Vec<String>,
    },
    /// Describe this machine (CPU, memory, kernel).
    Machine {
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BetterArg {
    Higher,
    Lower,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// Tiny sizes (seconds) for CI; explicit size flags still win.
    #[arg(long)]
    smoke: bool,
    /// Exit non-zero when any request failed (implied by --smoke).
    #[arg(long)]
    strict: bool,
    /// Which workloads to run, comma-separated (w1,w2,w3,w9,w4,w5,w8).
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w9,w4,w5,w8")]
    only: Vec<String>,
    /// W1: concurrent senders [default 10; smoke 2].
    #[arg(long)]
    w1_senders: Option<usize>,
    /// W1: messages in total [default 5000; smoke 40].
    #[arg(long)]
    w1_messages: Option<usize>,
    /// W2: long-polling clients [default 1000; smoke 5].
    #[arg(long)]
    w2_clients: Option<usize>,
    /// W2: messages sent, one at a time [default 20; smoke 3].
    #[arg(long)]
    w2_messages: Option<usize>,
    /// W2: how long every long-poll must be in flight before a send, ms.
    #[arg(long, default_value_t = 200)]
    w2_settle_ms: u64,
    /// W2: seconds to wait for all clients to receive one message.
    #[arg(long, default_value_t = 60)]
    w2_message_timeout_secs: u64,
    /// W2: print each message's start (Unix ms) and spread of delivery times (first, p10 ... p99,
    /// last) to stderr.
    #[arg(long)]
    w2_per_message: bool,
    /// W3: rooms of the user [default 500; smoke 5].
    #[arg(long)]
    w3_rooms: Option<usize>,
    /// W3: messages per room [default 20; smoke 3].
    #[arg(long)]
    w3_messages: Option<usize>,
    /// W3: measured warm initial syncs [default 5; smoke 2].
    #[arg(long)]
    w3_repeats: Option<usize>,
    /// W4: members of the room the peer hosts [default 1000; smoke 20].
    #[arg(long)]
    w4_members: Option<usize>,
    /// W9: rooms of the user whose first sliding sync page is timed [default 2000; smoke 25].
    #[arg(long)]
    w9_rooms: Option<usize>,
    /// W9: measured first pages, each from a new device [default 5; smoke 2].
    #[arg(long)]
    w9_repeats: Option<usize>,
    /// W4: joins measured, each into a new room [default 3; smoke 1].
    #[arg(long)]
    w4_repeats: Option<usize>,
    /// W5: transactions sent, one in flight [default 100; smoke 2].
    #[arg(long)]
    w5_transactions: Option<usize>,
    /// W5: PDUs per transaction (the spec's maximum is 50).
    #[arg(long, default_value_t = 50)]
    w5_pdus: usize,
    /// W4, W5: where the federation peer serves HTTPS, e.g. 127.0.0.1:8450; its server name
    /// is this address. The server under test must accept its self-signed certificate.
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// W4, W5: the server under test's federation API, e.g. https://127.0.0.1:8448.
    #[arg(long)]
    federation_url: Option<String>,
    /// W8: messages imported [default 10000; smoke 100].
    #[arg(long)]
    w8_messages: Option<usize>,
    /// W8: ghosts the messages are sent as, in turn [default 10; smoke 3].
    #[arg(long)]
    w8_ghosts: Option<usize>,
    /// W8: sends in flight [default 10; smoke 4].
    #[arg(long)]
    w8_concurrency: Option<usize>,
    /// W8: bytes of each message body.
    #[arg(long, default_value_t = 100)]
    w8_body_bytes: usize,
    /// W8: seconds to wait after the last send for the server to push every message.
    #[arg(long, default_value_t = 120)]
    w8_push_timeout_secs: u64,
    /// W8: the as_token of the appservice registration the server was given (its user
    /// namespace must hold `@w8_.*`).
    #[arg(long)]
    as_token: Option<String>,
    /// W8: where the registration's `url` points: ieum-load answers the server's
    /// transactions there (e.g. 127.0.0.1:9000). Without it the pushes are not measured.
    #[arg(long)]
    as_listen: Option<SocketAddr>,
    /// Save the W3 account here (for `cold-sync` and `first-sync`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Prefix of every user this run creates [default: from the clock].
    #[arg(long)]
    run_id: Option<String>,
    /// Setup requests (register, join, create) in flight at once.
    #[arg(long, default_value_t = 8)]
    setup_concurrency: usize,
    /// No workload, setup included, runs longer than this [default 1800; smoke 90].
    #[arg(long)]
    workload_limit_secs: Option<u64>,
}

fn pick(explicit: Option<usize>, smoke: bool, smoke_value: usize, headline: usize) -> usize {
    explicit.unwrap_or(if smoke { smoke_value } else { headline })
}

fn homeserver(target: &Target) -> Result<Arc<Homeserver>, String> {
    Homeserver::new(&target.url, Duration::from_secs(target.timeout_secs.max(1)))
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Merges `workloads` into `--json` (if given) and returns whether all of them succeeded.
fn store(target: &Target, workloads: Vec<Workload>, strict: bool) -> Result<bool, String> {
    let mut ok = true;
    for w in &workloads {
        if w.failed() {
            eprintln!("ieum-load: {}: {} {}: {}", target.label, w.id, w.name, w.status);
            ok = false;
        }
        if strict && w.error_count() > 0 {
            eprintln!(
                "ieum-load: {}: {} {}: {} failed requests: {:?}",
                target.label,
                w.id,
                w.name,
                w.error_count(),
                w.errors
            );
            ok = false;
        }
    }
    if let Some(path) = &target.json {
        let mut results = Results::load_or_new(Some(path), &target.label, &target.url)?;
        for w in workloads {
            results.merge(w);
        }
        results.save(path)?;
    }
    Ok(ok)
}

fn print_one(label: &str, url: &str, workloads: &[Workload]) {
    let results = Results { label: label.to_owned(), url: url.to_owned(), workloads: workloads.to_vec() };
    print!("{}", report::single_table(&results));
}

async fn run(args: RunArgs) -> Result<bool, String> {
    let hs = homeserver(&args.target)?;
    let smoke = args.smoke;
    let run_id = args.run_id.clone().unwrap_or_else(|| {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        format!("l{secs:x}")
    });
    let ctx = Ctx {
        hs: hs.clone(),
        run_id,
        setup_concurrency: args.setup_concurrency.max(1),
        workload_limit: Duration::from_secs(args.workload_limit_secs.unwrap_or(if smoke { 90 } else { 1800 })),
    };
    hs.versions(Duration::from_secs(10)).await.map_err(|e| format!("{} does not answer /versions: {e}", hs.base()))?;

    let wants = |id: &str| args.only.iter().any(|o| o.eq_ignore_ascii_case(id));
    let mut done = Vec::new();
    let label = &args.target.label;
    if wants("w1") {
        let opts = workloads::send::Opts {
            senders: pick(args.w1_senders, smoke, 2, 10),
            messages: pick(args.w1_messages, smoke, 40, 5000),
        };
        eprintln!("ieum-load: {label}: W1 send: {} senders, {} messages", opts.senders, opts.messages);
        done.push(workloads::send::run(&ctx, &opts).await);
    }
    if wants("w2") {
        let opts = workloads::fanout::Opts {
            clients: pick(args.w2_clients, smoke, 5, 1000),
            messages: pick(args.w2_messages, smoke, 3, 20),
            settle: Duration::from_millis(args.w2_settle_ms),
            poll_timeout: Duration::from_secs(30),
            message_timeout: Duration::from_secs(args.w2_message_timeout_secs.max(1)),
            per_message: args.w2_per_message,
        };
        eprintln!("ieum-load: {label}: W2 fan-out: {} clients, {} messages", opts.clients, opts.messages);
        done.push(workloads::fanout::run(&ctx, &opts).await);
    }
    if wants("w3") {
        let opts = workloads::initial_sync::Opts {
            rooms: pick(args.w3_rooms, smoke, 5, 500),
            messages: pick(args.w3_messages, smoke, 3, 20),
            repeats: pick(args.w3_repeats, smoke, 2, 5).max(1),
        };
        eprintln!(
            "ieum-load: {label}: W3 initial sync: {} rooms x {} messages, {} warm repeats",
            opts.rooms, opts.messages, opts.repeats
        );
        done.push(workloads::initial_sync::run(&ctx, &opts, args.state.as_deref()).await);
    }
    if wants("w9") {
        let opts = workloads::sliding_sync::Opts {
            rooms: pick(args.w9_rooms, smoke, 25, 2000),
            repeats: pick(args.w9_repeats, smoke, 2, 5).max(1),
        };
        eprintln!("ieum-load: {label}: W9 sliding sync first page: {} rooms, {} repeats", opts.rooms, opts.repeats);
        done.push(workloads::sliding_sync::run(&ctx, &opts).await);
    }
    if wants("w8") {
        match &args.as_token {
            None => done.push(Workload::not_run("W8", "needs --as-token (an appservice registration)")),
            Some(as_token) => {
                let listener = match args.as_listen {
                    Some(addr) => {
                        Some(workloads::import::AppserviceListener::start(addr).await.map_err(|e| e.to_string())?)
                    }
                    None => None,
                };
                let opts = workloads::import::Opts {
                    messages: pick(args.w8_messages, smoke, 100, 10_000),
                    ghosts: pick(args.w8_ghosts, smoke, 3, 10),
                    concurrency: pick(args.w8_concurrency, smoke, 4, 10),
                    body_bytes: args.w8_body_bytes,
                    as_token: as_token.clone(),
                    push_timeout: Duration::from_secs(args.w8_push_timeout_secs.max(1)),
                };
                eprintln!(
                    "ieum-load: {label}: W8 appservice import: {} messages as {} ghosts, {} in flight",
                    opts.messages, opts.ghosts, opts.concurrency
                );
                done.push(workloads::import::run(&ctx, &opts, listener.as_ref()).await);
            }
        }
    }
    if wants("w5") || wants("w4") {
        let peer = match (args.peer_listen, &args.federation_url) {
            (Some(addr), Some(_)) => Some(
                peer::Peer::start(addr, Duration::from_secs(args.target.timeout_secs.max(300)))
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        let why = "needs --peer-listen and --federation-url (federation with a peer on loopback)";
        if wants("w5") {
            match (&peer, &args.federation_url) {
                (Some(peer), Some(url)) => {
                    let opts = workloads::ingest::Opts {
                        transactions: pick(args.w5_transactions, smoke, 2, 100),
                        pdus_per_transaction: args.w5_pdus.clamp(1, 50),
                        federation_url: url.trim_end_matches('/').to_owned(),
                    };
                    eprintln!(
                        "ieum-load: {label}: W5 federation ingest: {} transactions of {} PDUs from {}",
                        opts.transactions, opts.pdus_per_transaction, peer.name
                    );
                    done.push(workloads::ingest::run(&ctx, &opts, peer).await);
                }
                _ => done.push(Workload::not_run("W5", why)),
            }
        }
        if wants("w4") {
            match &peer {
                Some(peer) => {
                    let opts = workloads::remote_join::Opts {
                        members: pick(args.w4_members, smoke, 20, 1000),
                        repeats: pick(args.w4_repeats, smoke, 1, 3).max(1),
                    };
                    eprintln!(
                        "ieum-load: {label}: W4 remote join: {} members on {}, {} joins",
                        opts.members, peer.name, opts.repeats
                    );
                    done.push(workloads::remote_join::run(&ctx, &opts, peer).await);
                }
                None => done.push(Workload::not_run("W4", why)),
            }
        }
    }
    for w in done.iter().filter(|w| w.status.starts_with(report::NOT_RUN)) {
        eprintln!("ieum-load: {label}: {} {}: {}", w.id, w.name, w.status);
    }
    print_one(label, hs.base(), &done);
    store(&args.target, done, args.strict || smoke)
}

fn parse_note(note: &str) -> Result<(String, String), String> {
    note.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("--note {note:?}: expected key=value"))
}

fn compare(
    subject: &Path,
    reference: &Path,
    machine: Option<&Path>,
    json: Option<&Path>,
    notes: &[String],
) -> Result<bool, String> {
    let a = Results::read(subject)?;
    let b = Results::read(reference)?;
    let machine = match machine {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(serde_json::from_str::<serde_json::Value>(&text).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let rows = report::compare_rows(&a, &b);
    if let Some(machine) = &machine {
        println!("machine: {}", machine::text(machine));
    }
    let notes: Vec<(String, String)> = notes.iter().map(|n| parse_note(n)).collect::<Result<_, _>>()?;
    for (k, v) in &notes {
        println!("{k}: {v}");
    }
    print!("{}", report::compare_table(&a, &b, &rows));
    if let Some(path) = json {
        let combined = serde_json::json!({
            "machine": machine,
            "notes": notes.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "subject": a,
            "reference": b,
            "rows": rows,
        });
        let text = serde_json::to_string_pretty(&combined).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(true)
}

async fn dispatch(command: Command) -> Result<bool, String> {
    match command {
        Command::Run(args) => run(args).await,
        Command::WaitReady { target, since_unix_ns, metric, limit_secs } => {
            let hs = homeserver(&target)?;
            let w = workloads::start::wait_ready(&hs, since_unix_ns, &metric, Duration::from_secs(limit_secs)).await;
            print_one(&target.label, hs.base(), std::slice::from_ref(&w));
            store(&target, vec![w], false)
        }
        Command::FirstSync { target, state, since_unix_ns, metric, limit_secs } => {
            let hs = homeserver(&target)?;
            let w = workloads::start::first_sync(&hs, &state, since_unix_ns, &metric, Duration::from_secs(limit_secs))
                .await;
            print_one(&target.label, hs.base(), std::slice::from_ref(&w));
            store(&target, vec![w], false)
        }
        Command::ColdSync { target, state } => {
            let hs = homeserver(&target)?;
            let w = workloads::initial_sync::cold(&hs, &state).await;
            print_one(&target.label, hs.base(), std::slice::from_ref(&w));
            store(&target, vec![w], false)
        }
        Command::Record { json, label, url, workload, metric, value, unit, better, note } => {
            let id = workload.to_ascii_uppercase();
            if !report::CATALOGUE.iter().any(|(i, _)| *i == id) {
                return Err(format!("--workload {workload}: not one of W1..W9"));
            }
            let mut w = Workload::new(&id);
            let better = match better {
                BetterArg::Higher => Better::Higher,
                BetterArg::Lower => Better::Lower,
            };
            w.metric(&metric, value, &unit, better);
            w.notes.extend(note);
            let mut results = Results::load_or_new(Some(&json), &label, &url)?;
            results.merge(w);
            results.save(&json)?;
            Ok(true)
        }
        Command::Show { json } => {
            print!("{}", report::single_table(&Results::read(&json)?));
            Ok(true)
        }
        Command::Compare { subject, reference, machine, json, notes } => {
            compare(&subject, &reference, machine.as_deref(), json.as_deref(), &notes)
        }
        Command::Machine { json } => {
            let description = machine::describe();
            println!("{}", machine::text(&description));
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&description).map_err(|e| e.to_string())?;
                std::fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ieum-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ieum-load: {e}");
            ExitCode::from(2)
        }
    }
}
