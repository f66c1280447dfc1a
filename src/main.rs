//! The `chat-engine` binary: command line, logging, config, bind, and run until a signal.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::Context;
use futures_util::StreamExt;
use log::LevelFilter;
use structopt::StructOpt;

use chat_engine::backup::Made;
use chat_engine::config::Config;
use chat_engine::protocol::UserId;

#[derive(StructOpt)]
#[structopt(name = "chat-engine", about = "Self-hosted chat engine")]
enum Command {
    /// Runs one node until SIGTERM or SIGINT.
    Serve {
        /// TOML config file; without it, built-in development defaults.
        #[structopt(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides server.listen).
        #[structopt(long)]
        listen: Option<String>,
        /// Data directory (overrides storage.path).
        #[structopt(long)]
        data: Option<PathBuf>,
    },
    /// Writes a consistent copy of the data directory to a new directory: through the
    /// running server if one answers, else from the stopped data directory.
    Backup {
        /// Directory to create; it must not exist. It is a complete data directory.
        #[structopt(long)]
        to: PathBuf,
        #[structopt(long)]
        config: Option<PathBuf>,
        /// Address of the running server (default: server.listen).
        #[structopt(long)]
        server: Option<String>,
        /// Data directory for an offline backup (overrides storage.path).
        #[structopt(long)]
        data: Option<PathBuf>,
    },
    /// Puts a backup in place of the stopped server's data directory, with a new history
    /// epoch (apps drop what they cached). The replaced directory is kept beside it.
    Restore {
        /// The backup: a directory `chat-engine backup` wrote. It is copied, not moved.
        #[structopt(long)]
        from: PathBuf,
        #[structopt(long)]
        config: Option<PathBuf>,
        /// Data directory to replace (overrides storage.path).
        #[structopt(long)]
        data: Option<PathBuf>,
    },
    /// After Redis lost its data: fills the empty Redis from this stopped node's data
    /// directory, with a new history epoch. Then replace the other nodes' data directories
    /// with a backup of this one.
    #[cfg(feature = "redis")]
    Reseed {
        #[structopt(long)]
        config: Option<PathBuf>,
        /// Data directory to seed from (overrides storage.path).
        #[structopt(long)]
        data: Option<PathBuf>,
    },
    /// Prints a token for a user, signed with the configured secret.
    Token {
        user: String,
        /// How long the token is valid: 90s, 30m, 1h, 7d.
        #[structopt(long, default_value = "1h")]
        ttl: String,
        #[structopt(long)]
        config: Option<PathBuf>,
    },
}

fn main() {
    let logger = simple_logger::SimpleLogger::new()
        .with_level(LevelFilter::Info)
        .with_module_level("tide", LevelFilter::Warn)
        .env();
    // Only fails if a logger is already set, which nothing else here does.
    let _ = logger.init();
    if let Err(error) = run(Command::from_args()) {
        eprintln!("chat-engine: {error:#}");
        std::process::exit(1);
    }
}

/// The config file (or the built-in defaults), with secrets from the environment and the
/// `--data` flag on top.
fn load_config(path: Option<&PathBuf>, data: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.apply_env(|name| std::env::var(name).ok());
    if let Some(data) = data {
        config.storage.path = data;
    }
    Ok(config)
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            config,
            listen,
            data,
        } => {
            let mut config = load_config(config.as_ref(), data)?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            config.validate()?;
            serve(config)
        }
        Command::Backup {
            to,
            config,
            server,
            data,
        } => {
            let config = load_config(config.as_ref(), data)?;
            match chat_engine::backup::backup(&config, server.as_deref(), &to)? {
                Made::Online(server) => {
                    println!(
                        "backup written to {} by the server at {server}",
                        to.display()
                    )
                }
                Made::Offline => println!(
                    "backup written to {} from {} (no server was running)",
                    to.display(),
                    config.storage.path.display()
                ),
            }
            Ok(())
        }
        Command::Restore { from, config, data } => {
            let config = load_config(config.as_ref(), data)?;
            let restored = chat_engine::restore::restore(&config, &from)?;
            let data = config.storage.path.display();
            match restored.replaced {
                Some(aside) => println!(
                    "restored {} into {data} (history epoch {}); the data it replaced is in {}",
                    from.display(),
                    restored.epoch,
                    aside.display()
                ),
                None => println!(
                    "restored {} into {data} (history epoch {})",
                    from.display(),
                    restored.epoch
                ),
            }
            Ok(())
        }
        #[cfg(feature = "redis")]
        Command::Reseed { config, data } => {
            let config = load_config(config.as_ref(), data)?;
            let reseeded = chat_engine::reseed::reseed(&config)?;
            println!(
                "reseeded Redis from {} ({} rooms; history epoch {}); replace the other \
                 nodes' data directories with a backup of this one before starting them",
                config.storage.path.display(),
                reseeded.rooms,
                reseeded.epoch
            );
            Ok(())
        }
        Command::Token { user, ttl, config } => {
            let config = load_config(config.as_ref(), None)?;
            config.validate()?;
            let user = UserId::parse(&user)?;
            let ttl = chat_engine::auth::parse_ttl(&ttl).map_err(anyhow::Error::msg)?;
            println!(
                "{}",
                chat_engine::auth::issue_token(&config.auth, &user, ttl)?
            );
            Ok(())
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    // First, so an address that cannot be listened on is the one line on stderr.
    let address = config.listen_addr().context("server.listen")?;
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("cannot listen on {address}"))?;
    for key in config.development_secrets() {
        log::warn!(
            "!!! {key} is the built-in DEVELOPMENT value: anyone can use it. \
             Set your own in the config file before this server faces a network. !!!"
        );
    }
    // smol's executor, which serves every connection, reads its thread count once, when it
    // starts its first task, and otherwise runs on one thread whatever the machine. No
    // thread exists yet that could read the environment meanwhile.
    let threads = config.server.worker_threads();
    std::env::set_var("SMOL_THREADS", threads.to_string());
    log::info!("serving on {threads} thread(s)");
    log::info!("listening on {}", listener.local_addr()?);
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
            .context("cannot install signal handlers")?;
    let stop = async move {
        if let Some(Ok(signal)) = signals.next().await {
            log::info!("received {signal:?}: shutting down");
        }
    };
    smol::block_on(chat_engine::run(listener, config, stop))?;
    log::info!("stopped cleanly");
    Ok(())
}
