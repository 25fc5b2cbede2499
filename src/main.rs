//! The `ieum` command line: `serve`, `create-user`, `check-config`. Parses arguments and
//! calls into the library; nothing else.

use std::{
    io::{BufRead, IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use ieum::{Config, Server, service::Services, storage};

/// ieum — a Matrix homeserver for one government body.
///
/// Without --config, `ieum serve` starts a development server: server name
/// localhost:8008, data in ./data, plain HTTP on 127.0.0.1:8008, open registration.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the homeserver.
    Serve {
        /// Configuration file (TOML). See config/homeserver.example.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Create a local account directly in the database (the server must be stopped).
    CreateUser {
        /// Configuration file (TOML); the development defaults when omitted.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The localpart of the new user (`alice` for @alice:server).
        username: String,
        /// The password. When omitted it is read from standard input.
        #[arg(long)]
        password: Option<String>,
        /// Make the user a server administrator.
        #[arg(long)]
        admin: bool,
    },
    /// Retire the server's signing key and make a new one (the server must be stopped).
    /// The old key stays published as an old verify key, so events it signed still verify.
    RotateSigningKey {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Read a configuration file, report problems, and print the effective settings.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    Config::load(path.map(PathBuf::as_path), std::env::vars()).map_err(|e| {
        format!("configuration error: {e}\nSee config/homeserver.example.toml for every option and its default.")
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.logging.filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .init();
}

fn read_password() -> Result<String, String> {
    if std::io::stdin().is_terminal() {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("cannot read the password: {e}"))?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err("the password may not be empty".into());
    }
    Ok(password)
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { config } => {
            let dev = config.is_none();
            let config = load(config.as_ref())?;
            init_logging(&config);
            let server_name = config.server_name.clone();
            let registration = config.registration.enabled;
            let server = Server::start(config).await.map_err(|e| e.to_string())?;
            let url = format!("http://{}", server.addr());
            eprintln!("\nieum is serving {server_name} at {url}");
            for address in server.tls_addrs() {
                eprintln!("and over HTTPS (federation and client API) at https://{address}");
            }
            if dev {
                eprintln!("Development server: loopback only, open registration, data in ./data.");
            }
            eprintln!("Connect a Matrix client (Element, nheko, FluffyChat...) with homeserver URL {url}");
            if registration {
                eprintln!("and register an account, or create one with: ieum create-user NAME");
            } else {
                eprintln!("Registration is off: create accounts with `ieum create-user --config FILE NAME`.");
            }
            eprintln!("Stop with Ctrl-C.\n");
            server.run_until_signal().await;
            Ok(())
        }
        Command::CreateUser { config, username, password, admin } => {
            let config = load(config.as_ref())?;
            let password = match password {
                Some(password) => password,
                None => read_password()?,
            };
            let db = open_database(&config)?;
            let services = Services::new(config, db).map_err(|e| e.to_string())?;
            let user_id = services
                .users
                .create(Some(&username), Some(&password), admin, None)
                .await
                .map_err(|e| format!("cannot create {username}: {e}"))?;
            println!("created {user_id}{}", if admin { " (admin)" } else { "" });
            Ok(())
        }
        Command::RotateSigningKey { config } => {
            let config = load(config.as_ref())?;
            let db = open_database(&config)?;
            let (old, new) = ieum::service::rotate_signing_key(&*db, &config.server_name)
                .map_err(|e| format!("cannot rotate the signing key: {e}"))?;
            println!("retired {old} (still published as an old verify key); now signing with {new}");
            Ok(())
        }
        Command::CheckConfig { config } => {
            let config = load(config.as_ref())?;
            println!("configuration is valid");
            println!("server_name      {}", config.server_name);
            println!("listen           {:?}", config.http.listen);
            println!("database         {}", config.storage.path.display());
            println!("registration     {}", if config.registration.enabled { "open" } else { "closed" });
            println!("registration tokens {}", config.registration.tokens.len());
            println!("rate limits      {}", if config.rate_limits.enabled { "on" } else { "off" });
            println!("room version     {}", config.rooms.default_version);
            let memory = &config.memory;
            println!(
                "cache memory     events {} MiB, state {} MiB, blocks {} MiB, write buffers {} MiB",
                memory.event_cache_mb, memory.state_cache_mb, memory.block_cache_mb, memory.write_buffer_mb
            );
            Ok(())
        }
    }
}

/// Opens the database for a command run beside (not inside) the server.
fn open_database(config: &Config) -> Result<std::sync::Arc<dyn storage::Storage>, String> {
    storage::open(&storage::StorageConfig::new(&config.storage.path, true, &config.memory)).map_err(|e| {
        format!("cannot open the database at {}: {e}. Stop the server first.", config.storage.path.display())
    })
}

/// glibc's defaults keep much of what the server frees. Two settings, each unless its
/// environment variable (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) says otherwise, set
/// before any thread starts:
///
/// - Arenas: glibc gives each thread that allocates under contention an arena of its own, up
///   to 8 per core, and keeps what is freed in each. Two arenas (measured: 253 MB PSS after
///   the reduced W1-W3 and W9 load, 132 MB with two arenas, no throughput lost on two cores).
/// - A fixed mmap threshold of 1 MiB: by default glibc raises the threshold to the size of
///   every large block it frees (up to 32 MiB) and its trim threshold to twice that, so after
///   one argon2 hash (19 MiB of scratch) freed memory up to about 40 MiB per arena stays
///   resident. Fixed, blocks of 1 MiB and more are mapped and unmapped, and freed memory at
///   the top of a heap goes back to the system (measured: 197 MB PSS after the headline
///   W1-W3 and W9 load, 155 MB with it).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets an allocator parameter; nothing else runs yet.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        }
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    // Work in hand before new work. A message wakes every long-poll of its room at once, from
    // the thread that syncs the WAL, so the wake-ups go to tokio's shared queue. A worker
    // serves its local queue first, and each I/O poll fills that with the requests that just
    // arrived: the next long-polls of the clients already answered. Polling I/O every 1,024
    // task polls instead of every 61 answers most of a fan-out before reading new long-polls:
    // the last of 1,000 clients got its message after 42-47 ms instead of 55-63 ms (median
    // per message, W2 alone; docs/benchmarks.md, session 14). With nothing left to run, a
    // worker polls I/O at once, as before.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().event_interval(1024).build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
