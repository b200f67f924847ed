use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use indicatif::{ProgressBar, ProgressStyle};

use kvserve::cli::{Cli, Command, GenArgs, ServeArgs, TokenArgs, VerifyArgs};
use kvserve::{dataset, http, settings, telemetry, App};

fn main() -> ExitCode {
    // jsonwebtoken 11 has no implicit crypto backend; without this the first token
    // check would panic.
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let telemetry = match telemetry::init(
        &cli.log_level,
        cli.log_format,
        cli.log_buffer,
        cli.trace_buffer,
    ) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        None => serve(cli.serve, &matches),
        Some(Command::Serve(args)) => serve(*args, &matches),
        Some(Command::Verify(args)) => verify(&args),
        Some(Command::Gen(args)) => generate(&args),
        Some(Command::Openapi) => {
            println!("{}", http::openapi_json());
            Ok(())
        }
        Some(Command::Token(args)) => mint_token(&args),
    };
    // Writes the buffered log lines, so the error below is the last line.
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs, matches: &clap::ArgMatches) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "starting kvserve with this configuration"
    );
    // One event per setting, each value a field of its own: readable in a terminal,
    // and a JSON log collector can filter on `name` without parsing a Debug dump.
    for setting in settings::effective(matches, &args) {
        tracing::info!(
            target: "kvserve::config",
            name = %setting.name,
            value = %setting.value,
            source = %setting.source,
            "setting"
        );
    }
    runtime.block_on(async {
        // Registered before binding and loading, so a SIGTERM at any point from here
        // is a graceful shutdown, not the default action's abrupt end.
        let shutdown = shutdown_signal();
        let app = App::bind(&args).await?;
        app.run(shutdown).await
    })?;
    Ok(())
}

/// Registers the SIGTERM (what orchestrators send) and SIGINT (Ctrl-C) handlers at
/// once, not on first poll, and returns a future that resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &'static str| {
        let registered = signal(kind);
        if let Err(err) = &registered {
            tracing::error!(error = %err, "cannot listen for {name}");
        }
        async move {
            match registered {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        }
    };
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    async move {
        tokio::select! {
            () = interrupt => tracing::info!("SIGINT received"),
            () = terminate => tracing::info!("SIGTERM received"),
        }
    }
}

fn verify(args: &VerifyArgs) -> Result<(), Box<dyn std::error::Error>> {
    let dataset = dataset::load(&args.file, &args.load.options())?;
    let info = dataset.info();
    println!("ok: {}", info.path.display());
    println!("  keys:            {}", info.keys);
    println!("  bytes:           {}", info.bytes);
    println!("  version:         {}", info.version);
    println!(
        "  sha256:          {}",
        info.sha256.as_deref().unwrap_or("(no checksum given)")
    );
    println!("  skipped lines:   {}", info.skipped_lines);
    println!("  duplicate lines: {}", info.duplicate_lines);
    println!("  load time:       {:.3}s", info.load_seconds);
    Ok(())
}

fn generate(args: &GenArgs) -> Result<(), Box<dyn std::error::Error>> {
    let bar = ProgressBar::new(args.lines).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} lines ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    dataset::gen::generate(&args.out, args.lines, args.seed, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    if args.checksum {
        let bytes = std::fs::read(&args.out)?;
        let name = args
            .out
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        let sidecar = dataset::integrity::sidecar_path(&args.out);
        std::fs::write(
            &sidecar,
            dataset::integrity::sidecar_line(&dataset::integrity::sha256_hex(&bytes), name),
        )?;
    }
    eprintln!("wrote {} lines to {}", args.lines, args.out.display());
    Ok(())
}

/// Prints an HS256 token signed with the secret file `serve` verifies with.
fn mint_token(args: &TokenArgs) -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::fs::read(&args.secret_file)
        .map_err(|err| format!("cannot read {}: {err}", args.secret_file.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut claims = serde_json::json!({
        "sub": args.sub,
        "scope": args.scope,
        "iat": now,
        "nbf": now,
        "exp": now + args.ttl.as_secs(),
    });
    if let Some(issuer) = &args.issuer {
        claims["iss"] = issuer.clone().into();
    }
    if let Some(audience) = &args.audience {
        claims["aud"] = audience.clone().into();
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret.trim_ascii_end());
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )?;
    println!("{token}");
    Ok(())
}
