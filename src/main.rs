use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pirlkit::cli::{Cli, Command};
use pirlkit::data::ImageCache;
use pirlkit::pipeline;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.quiet { "error" } else if cli.verbose > 0 { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PIRLKIT_LOG").unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // Ctrl-C / SIGTERM: finish the step, checkpoint, stop (see train::STOP).
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, &pirlkit::train::pretrain::STOP) {
            eprintln!("warning: cannot install the handler for signal {sig}: {e}");
        }
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(pirlkit::Error::Interrupted { .. }) = e.downcast_ref::<pirlkit::Error>() {
                eprintln!("{e:#}");
                return ExitCode::from(130);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn setup_threads(n: usize) {
    if n > 0 {
        // candle's CPU kernels read RAYON_NUM_THREADS; set before any pool starts.
        // SAFETY: single-threaded here, nothing else reads the environment yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let progress = !cli.no_progress && !cli.quiet;
    match cli.command {
        Command::Pretrain { run, out, force_resume } => {
            let cfg = run.resolve()?;
            setup_threads(cfg.threads);
            let cache = ImageCache::new(run.cache_dir.clone().unwrap_or_else(ImageCache::default_dir));
            let mut ds = pipeline::open_dataset(run.data.as_deref(), &cache, cfg.seed)?;
            pipeline::limit_per_split(&mut ds, cfg.data.limit_per_split);
            let train: Vec<_> = ds.split(pirlkit::data::Split::Train).into_iter().cloned().collect();
            let imgs = cache.load_all(&train, cfg.data.image_size)?;
            let o = pirlkit::train::pretrain(&cfg, &imgs, &out, progress, force_resume)?;
            println!(
                "pretrained {} epochs ({} steps) in {:.1} min, final loss {:.4}; checkpoint {}",
                o.epochs,
                o.steps,
                o.wall_s / 60.0,
                o.epoch_losses.last().copied().unwrap_or(f64::NAN),
                o.checkpoint.display()
            );
        }
        Command::Probe { run, checkpoint, random_init, out } => {
            let mut cfg = run.resolve()?;
            if let Some(ck) = &checkpoint {
                // The checkpoint's own config decides the architecture and views.
                let meta = pirlkit::train::checkpoint::read_meta(ck)?;
                let probe = cfg.probe.clone();
                cfg = meta.config;
                cfg.probe = probe;
            }
            let _ = random_init;
            setup_threads(cfg.threads);
            let cache = ImageCache::new(run.cache_dir.clone().unwrap_or_else(ImageCache::default_dir));
            let mut ds = pipeline::open_dataset(run.data.as_deref(), &cache, cfg.seed)?;
            pipeline::limit_per_split(&mut ds, cfg.data.limit_per_split);
            ds.check_labeled()?;
            let imgs = pipeline::load_images(&ds, &cfg, &cache)?;
            let r = pipeline::probe_checkpoint(&cfg, checkpoint.as_deref(), &ds, &imgs)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            pirlkit::train::checkpoint::write_atomic(&out.join("probe.json"), &serde_json::to_vec_pretty(&r)?)?;
            println!("test AUC {:.4} on {} images ({} positive); val AUC {:.4} at alpha {}", r.test_auc, r.n_test, r.n_test_pos, r.val_auc, r.alpha);
        }
        Command::Reproduce { run, run_name, reports, force_resume } => {
            let cfg = run.resolve()?;
            setup_threads(cfg.threads);
            let cache = ImageCache::new(run.cache_dir.clone().unwrap_or_else(ImageCache::default_dir));
            let mut ds = pipeline::open_dataset(run.data.as_deref(), &cache, cfg.seed)?;
            pipeline::limit_per_split(&mut ds, cfg.data.limit_per_split);
            let name = run_name.unwrap_or_else(|| format!("{}-seed{}", if run.data.is_some() { ds.name.clone() } else { "synthetic".into() }, cfg.seed));
            pipeline::check_run_name(&name)?;
            let imgs = pipeline::load_images(&ds, &cfg, &cache)?;
            let paths = pipeline::RunPaths::new(reports.join(&name));
            let o = pipeline::reproduce(&cfg, &ds, &imgs, &paths, progress, force_resume)?;
            for r in &o.rows {
                println!("{:<28} test AUC {:.4}  (n = {}, {} positive)", r.arm, r.test_auc, r.n_test, r.n_test_pos);
            }
            println!("report: {}", paths.report.join("summary.md").display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
