use std::process::ExitCode;

use clap::Parser;
use pirlkit::cli::Cli;

fn main() -> ExitCode {
    pirlkit::malloc::keep_freed_memory();
    // candle runs its element-wise CPU ops on a pool of its own whose workers
    // spin between ops, beside the rayon threads of pirlkit's kernels (conv,
    // BatchNorm, optimiser) and of candle's matmul. With few cores the two
    // pools fight: measured on 2 cores, the ResNet-18 step at 64 px ran 17 %
    // faster with candle's pool off (its element-wise ops then run on the
    // calling thread). A value set by the user is kept.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: at the start of main, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let cli = Cli::parse();
    let level = if cli.quiet {
        "error"
    } else if cli.verbose > 0 {
        "debug"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PIRLKIT_LOG")
                .unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // Ctrl-C / SIGTERM: finish the step, checkpoint, stop (see train::STOP).
    // A second signal while the first is being handled exits at once.
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(
            sig,
            130,
            &pirlkit::train::pretrain::STOP,
        );
        if let Err(e) = signal_hook::flag::register(sig, &pirlkit::train::pretrain::STOP) {
            eprintln!("warning: cannot install the handler for signal {sig}: {e}");
        }
    }
    match pirlkit::commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(pirlkit::Error::Interrupted { .. } | pirlkit::Error::Stopped(_)) =
                e.downcast_ref::<pirlkit::Error>()
            {
                eprintln!("{e:#}");
                return ExitCode::from(130);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
