//! `ieum-bridge`: imports legacy-channel history (KakaoTalk, Slack, mbox exports) into a Matrix
//! homeserver through the application-service API; `gen-kakaotalk` writes a large synthetic
//! export for throughput measurements; `webhook` serves Slack-compatible incoming webhooks
//! (and `webhook add|list|remove` manages their hooks file).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use ieum_appservices::import::client::{
    Client, ImportOptions, ProgressFile, Registration, import_conversation, parse_mapping,
};
use ieum_appservices::import::model::{Export, Tz};
use ieum_appservices::import::{kakaotalk, mbox, slack};
use ieum_appservices::webhook::hooks::HooksFile;
use ieum_appservices::webhook::server;

#[derive(Parser)]
#[command(
    name = "ieum-bridge",
    version,
    about = "Bridges for ieum: import legacy-channel history into Matrix rooms, serve incoming webhooks",
    after_help = "Examples:\n  \
    ieum-bridge import kakaotalk --dry-run chat.txt\n  \
    ieum-bridge import kakaotalk chat.txt --homeserver http://127.0.0.1:8008 \\\n    \
    --registration bridge.yaml --server-name example.org --mapping names.toml --invite @alice:example.org\n  \
    ieum-bridge import slack export.zip ...   ieum-bridge import mbox archive.mbox ...\n\n\
    Each sender becomes a ghost (@<namespace prefix><kakao|slack|mail>_<hash>) with the source name as\n\
    display name. Progress is kept in <export>.ieum-import.json: re-running the same command resumes\n\
    and duplicates nothing (transaction ids derive from the source)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import an export into a homeserver (a new room per conversation, or --room).
    Import {
        #[command(subcommand)]
        source: Box<Source>,
    },
    /// Write a synthetic Android-Korean KakaoTalk export with N messages to stdout.
    GenKakaotalk { n: usize },
    /// Incoming Slack-compatible webhooks: serve them (no subcommand), or add/list/remove hooks.
    Webhook(Box<Webhook>),
}

#[derive(Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  \
    ieum-bridge webhook add grafana --hooks hooks.toml --room '#alerts:example.org' --listen 127.0.0.1:9000\n  \
    ieum-bridge webhook --registration bridge.yaml --homeserver http://127.0.0.1:8008 \\\n    \
    --listen 127.0.0.1:9000 --hooks hooks.toml\n  \
    curl -H 'Content-Type: application/json' -d '{\"text\": \"*disk* full <!here>\", \"username\": \"Grafana\"}' \\\n    \
    http://127.0.0.1:9000/hooks/<secret>\n\n\
    POST /hooks/<secret> takes Slack incoming-webhook JSON (or a form with payload=<json>): text\n\
    (mrkdwn), username (posts as a ghost with that display name), attachments, blocks. Answers:\n\
    200 ok; 400 invalid_payload | no_text; 404 no_service (unknown secret); 413 request_too_large;\n\
    429 rate_limited (Retry-After); 503 homeserver_unavailable (retry later); 404 channel_not_found\n\
    (the alias does not resolve); 403 action_prohibited (the bot cannot join: invite it to the room,\n\
    or make it public); 502 homeserver_error (any other refusal, logged in full). The hooks file is\n\
    re-read when it changes.\n\
    Logs go to stderr (RUST_LOG, default info): one line per request, never the secret."
)]
struct Webhook {
    #[command(subcommand)]
    action: Option<HookAction>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// The appservice registration YAML (as_token, sender_localpart, namespaces.users for the ghosts).
    #[arg(long, required = true)]
    registration: Option<PathBuf>,
    /// Homeserver client-server base URL, e.g. http://127.0.0.1:8008.
    #[arg(long, required = true)]
    homeserver: Option<String>,
    /// Address to listen on (put a TLS reverse proxy in front to expose it).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// The hooks file (TOML, written by `webhook add`).
    #[arg(long, required = true)]
    hooks: Option<PathBuf>,
    /// The homeserver's server name (default: asked with /account/whoami).
    #[arg(long)]
    server_name: Option<String>,
    /// Largest accepted request body in bytes (413 above).
    #[arg(long, default_value_t = 64 * 1024)]
    max_body: usize,
    /// Sustained messages per second per hook (429 rate_limited above, after the burst).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Messages a hook may send at once before the rate applies.
    #[arg(long, default_value_t = 20)]
    burst: u32,
    /// Seconds to retry a homeserver that is down before answering 503.
    #[arg(long, default_value_t = 10)]
    retry_for: u64,
}

#[derive(Subcommand)]
enum HookAction {
    /// Add a hook: generates its secret and prints its URL (once: only a hash is stored).
    Add {
        /// A name for logs, `list` and `remove` (letters, digits, - _ .).
        name: String,
        /// The hooks file (created if missing).
        #[arg(long)]
        hooks: PathBuf,
        /// The room: an id (!id:server) or an alias (#alerts:server).
        #[arg(long)]
        room: String,
        /// Who posts when a payload has no `username` (default: the bridge bot).
        #[arg(long)]
        display_name: Option<String>,
        /// An mxc:// avatar for the ghosts this hook posts as.
        #[arg(long)]
        avatar_url: Option<String>,
        /// Post m.notice (no notification by default push rules) instead of m.text.
        #[arg(long)]
        notice: bool,
        /// The address the server listens on, for the printed URL.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// The public base URL instead (behind a reverse proxy), e.g. https://hooks.example.org.
        #[arg(long)]
        public_url: Option<String>,
    },
    /// List the hooks (names, rooms, display names; never secrets).
    List {
        #[arg(long)]
        hooks: PathBuf,
    },
    /// Remove a hook: its URL stops working (a running server re-reads the file).
    Remove {
        name: String,
        #[arg(long)]
        hooks: PathBuf,
    },
}

#[derive(Subcommand)]
enum Source {
    /// KakaoTalk text exports (Android/iOS/Windows, Korean/English) or macOS CSV; one room per file.
    Kakaotalk {
        /// Export files (any of UTF-8, UTF-8 with BOM, UTF-16 with BOM, EUC-KR/CP949).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// A Slack workspace export zip: one room per channel, private group and DM.
    Slack {
        export: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// An mbox mailbox: one room, threads from References/In-Reply-To, attachments uploaded.
    Mbox {
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// Homeserver client-server base URL, e.g. http://127.0.0.1:8008.
    #[arg(long, required_unless_present = "dry_run")]
    homeserver: Option<String>,
    /// The appservice registration YAML (as_token, sender_localpart, namespaces.users).
    #[arg(long, required_unless_present = "dry_run")]
    registration: Option<PathBuf>,
    /// The homeserver's server name (the part after ':' in user ids).
    #[arg(long, required_unless_present = "dry_run")]
    server_name: Option<String>,
    /// Source name (or Slack user id / e-mail) -> Matrix user id: a JSON object or `"name" = "@u:hs"` lines.
    /// Users inside the namespace are sent as directly; others are invited to the room.
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// Append to this existing room (the bridge bot must be able to invite) instead of creating one.
    #[arg(long)]
    room: Option<String>,
    /// Also invite this user to created rooms (repeatable).
    #[arg(long)]
    invite: Vec<String>,
    /// Time zone of sources without one (KakaoTalk), a fixed offset.
    #[arg(long, default_value = "+09:00")]
    tz: String,
    /// Parse only: print a summary per conversation and every problem; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Give up after the homeserver has been unreachable this many seconds.
    #[arg(long, default_value_t = 120)]
    retry_for: u64,
    /// Stop after sending this many messages (the rest is sent by a re-run).
    #[arg(long)]
    limit: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn fmt_ts(ms: i64, tz: Tz) -> String {
    let secs = ms.div_euclid(1000) + tz.0 as i64 * 60;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    let sign = if tz.0 < 0 { '-' } else { '+' };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} {sign}{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000),
        tz.0.abs() / 60,
        tz.0.abs() % 60
    )
}

fn summary(export: &Export, tz: Tz) {
    for c in &export.conversations {
        let senders = c.senders();
        println!("conversation {:?} ({}, key {})", c.title, c.kind.tag(), c.key);
        println!("  messages: {}", c.messages.len());
        println!(
            "  senders: {} ({})",
            senders.len(),
            senders
                .iter()
                .map(|s| if s.name.is_empty() { "<system>" } else { s.name.as_str() })
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let (Some(first), Some(last)) = (c.messages.first(), c.messages.last()) {
            println!("  first: {}", fmt_ts(first.ts, tz));
            println!("  last:  {}", fmt_ts(last.ts, tz));
        }
        let threads = c.messages.iter().filter(|m| m.thread_root.is_some()).count();
        let reactions: usize =
            c.messages.iter().map(|m| m.reactions.iter().map(|r| r.senders.len()).sum::<usize>()).sum();
        let attachments: usize = c.messages.iter().map(|m| m.attachments.len()).sum();
        println!("  thread replies: {threads}, reactions: {reactions}, attachments: {attachments}");
    }
    println!("problems: {}", export.problems.len());
    for p in &export.problems {
        println!("  {p}");
    }
}

async fn run(source: Source) -> Result<(), String> {
    let (export, path, common) = match source {
        Source::Kakaotalk { files, common } => {
            let tz = Tz::parse(&common.tz).map_err(|e| format!("--tz: {e}"))?;
            let mut all = Export::default();
            for f in &files {
                let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
                let e = kakaotalk::read(&f.display().to_string(), &bytes, tz).map_err(|e| e.to_string())?;
                all.conversations.extend(e.conversations);
                all.problems.extend(e.problems);
            }
            (all, files[0].clone(), common)
        }
        Source::Slack { export, common } => {
            let f = std::fs::File::open(&export).map_err(|e| format!("{}: {e}", export.display()))?;
            let e =
                slack::read(&export.display().to_string(), std::io::BufReader::new(f)).map_err(|e| e.to_string())?;
            (e, export, common)
        }
        Source::Mbox { file, common } => {
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let e = mbox::read(&file.display().to_string(), &bytes).map_err(|e| e.to_string())?;
            (e, file, common)
        }
    };
    let tz = Tz::parse(&common.tz).map_err(|e| format!("--tz: {e}"))?;
    if common.dry_run {
        summary(&export, tz);
        return Ok(());
    }
    for p in &export.problems {
        eprintln!("warning: {p}");
    }
    let registration_path = common.registration.as_ref().expect("clap requires it");
    let yaml =
        std::fs::read_to_string(registration_path).map_err(|e| format!("{}: {e}", registration_path.display()))?;
    let reg = Registration::parse(&registration_path.display().to_string(), &yaml)?;
    let mapping = match &common.mapping {
        Some(p) => parse_mapping(
            &p.display().to_string(),
            &std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )?,
        None => Default::default(),
    };
    let opts = ImportOptions {
        server_name: common.server_name.clone().expect("clap requires it"),
        room: common.room.clone(),
        mapping,
        invite: common.invite.clone(),
        progress_bar: !common.quiet,
        limit: common.limit,
    };
    let mut client = Client::new(common.homeserver.as_deref().expect("clap requires it"), &reg.as_token);
    client.retry_for = std::time::Duration::from_secs(common.retry_for);
    let progress_path = ProgressFile::path_for(Path::new(&path));
    let mut progress = ProgressFile::load(&progress_path)?;
    let started = Instant::now();
    let mut total_sent = 0;
    for conv in &export.conversations {
        if conv.messages.is_empty() {
            eprintln!("{:?}: no messages, skipped", conv.title);
            continue;
        }
        if !common.quiet {
            eprintln!("importing {:?} ({} messages)", conv.title, conv.messages.len());
        }
        let stats = import_conversation(&mut client, &reg, conv, &opts, &mut progress, &progress_path).await?;
        total_sent += stats.sent;
        println!(
            "{}: {} messages sent, {} already imported, room {} ({:.1}s)",
            conv.title,
            stats.sent,
            stats.skipped,
            stats.room_id,
            stats.elapsed.as_secs_f64()
        );
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "done: {total_sent} messages in {secs:.1}s ({:.0} messages/s, {} requests), {} problems",
        total_sent as f64 / secs.max(0.001),
        client.requests,
        export.problems.len()
    );
    Ok(())
}

fn hook_action(action: HookAction) -> Result<(), String> {
    match action {
        HookAction::Add { name, hooks, room, display_name, avatar_url, notice, listen, public_url } => {
            let mut file = HooksFile::load(&hooks)?;
            let secret = file.add(&name, &room, display_name, avatar_url, notice)?;
            file.save(&hooks)?;
            let base = public_url.unwrap_or_else(|| format!("http://{listen}"));
            println!("{}/hooks/{secret}", base.trim_end_matches('/'));
            eprintln!("hook {name:?} added for {room}: keep this URL secret, it is shown only once");
            Ok(())
        }
        HookAction::List { hooks } => {
            let file = HooksFile::load(&hooks)?;
            for hook in &file.hooks {
                let mut line = format!("{}\t{}", hook.name, hook.room);
                if let Some(display_name) = &hook.display_name {
                    line.push_str(&format!("\tdisplay name {display_name:?}"));
                }
                if let Some(avatar) = &hook.avatar_url {
                    line.push_str(&format!("\tavatar {avatar}"));
                }
                if hook.notice {
                    line.push_str("\tm.notice");
                }
                println!("{line}");
            }
            eprintln!("{} hook(s) in {}", file.hooks.len(), hooks.display());
            Ok(())
        }
        HookAction::Remove { name, hooks } => {
            let mut file = HooksFile::load(&hooks)?;
            let removed = file.remove(&name)?;
            file.save(&hooks)?;
            eprintln!("hook {name:?} for {} removed", removed.room);
            Ok(())
        }
    }
}

async fn serve_webhooks(args: ServeArgs) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .init();
    let registration_path = args.registration.expect("clap requires it");
    let yaml =
        std::fs::read_to_string(&registration_path).map_err(|e| format!("{}: {e}", registration_path.display()))?;
    let registration = Registration::parse(&registration_path.display().to_string(), &yaml)?;
    let hooks_path = args.hooks.expect("clap requires it");
    let hooks = HooksFile::load(&hooks_path)?;
    if !(args.rate > 0.0 && args.rate.is_finite()) || args.burst == 0 {
        return Err("--rate must be above 0 and --burst at least 1".into());
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("--listen {}: cannot listen: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        listen = %local,
        hooks = hooks.hooks.len(),
        file = %hooks_path.display(),
        "ieum-bridge webhook: accepting POST /hooks/<secret>"
    );
    let config = server::Config {
        homeserver: args.homeserver.expect("clap requires it"),
        registration,
        server_name: args.server_name,
        hooks_path,
        max_body: args.max_body,
        rate_per_sec: args.rate,
        burst: f64::from(args.burst),
        retry_for: std::time::Duration::from_secs(args.retry_for),
    };
    // SIGINT or SIGTERM (systemd): stop accepting, finish the requests in flight.
    let shutdown = async {
        #[cfg(unix)]
        {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    server::serve(listener, config, shutdown).await.map_err(|e| format!("serving: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::GenKakaotalk { n } => {
            print!("{}", kakaotalk::generate(n));
            Ok(())
        }
        Command::Webhook(webhook) => match webhook.action {
            Some(action) => hook_action(action),
            None => {
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
                rt.block_on(serve_webhooks(webhook.serve))
            }
        },
        Command::Import { source } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(run(*source))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nieum-bridge: error: {e}");
            ExitCode::FAILURE
        }
    }
}
