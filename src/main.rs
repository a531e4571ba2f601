use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pirlkit::cli::{Cli, Command};
use pirlkit::data::ImageCache;
use pirlkit::pipeline;

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
    match run(cli) {
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

fn setup_threads(n: usize) {
    if n > 0 {
        // candle's CPU kernels read RAYON_NUM_THREADS; set before any pool starts.
        // SAFETY: single-threaded here, nothing else reads the environment yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let progress = !cli.no_progress && !cli.quiet;
    match cli.command {
        Command::Pretrain {
            run,
            out,
            force_resume,
        } => {
            let cfg = run.resolve()?;
            setup_threads(cfg.threads);
            let cache = ImageCache::new(
                run.cache_dir
                    .clone()
                    .unwrap_or_else(ImageCache::default_dir),
            );
            let mut ds = pipeline::open_dataset(run.data.as_deref(), &cache, cfg.seed)?;
            pipeline::limit_per_split(&mut ds, cfg.data.limit_per_split);
            let train: Vec<_> = ds
                .split(pirlkit::data::Split::Train)
                .into_iter()
                .cloned()
                .collect();
            let imgs = if run.skip_bad {
                let (imgs, skipped) = cache.load_all_skip_bad(&train, cfg.data.image_size)?;
                for s in &skipped {
                    tracing::warn!("skipped {}: {}", s.path.display(), s.error);
                }
                imgs
            } else {
                cache.load_all(&train, cfg.data.image_size)?
            };
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
        Command::Probe {
            run,
            checkpoint,
            random_init,
            out,
        } => {
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
            let cache = ImageCache::new(
                run.cache_dir
                    .clone()
                    .unwrap_or_else(ImageCache::default_dir),
            );
            let mut ds = pipeline::open_dataset(run.data.as_deref(), &cache, cfg.seed)?;
            pipeline::limit_per_split(&mut ds, cfg.data.limit_per_split);
            let (imgs, _) = pipeline::load_images(&mut ds, &cfg, &cache, run.skip_bad)?;
            ds.check_labeled()?;
            let r = pipeline::probe_checkpoint(&cfg, checkpoint.as_deref(), &ds, &imgs)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            pirlkit::io::write_atomic(&out.join("probe.json"), &serde_json::to_vec_pretty(&r)?)?;
            println!(
                "test AUC {:.4} on {} images ({} positive); val AUC {:.4} at alpha {}",
                r.test_auc, r.n_test, r.n_test_pos, r.val_auc, r.alpha
            );
        }
        Command::Reproduce {
            protocol: Some(protocol),
            run,
            reports,
            force_resume,
            ..
        } => {
            if run.preset.is_some()
                || run.config.is_some()
                || run.epochs.is_some()
                || run.seed.is_some()
            {
                anyhow::bail!(
                    "with a protocol file, settings come from its [config] table: drop --preset/--config/--epochs/--seed"
                );
            }
            if let Some(t) = run.threads {
                setup_threads(t);
            }
            let cache = ImageCache::new(
                run.cache_dir
                    .clone()
                    .unwrap_or_else(ImageCache::default_dir),
            );
            let summary = pipeline::run_protocol(
                &protocol,
                run.data.as_deref(),
                &reports,
                &cache,
                progress,
                force_resume,
                run.skip_bad,
            )?;
            println!("{summary}");
        }
        Command::Finetune {
            run,
            checkpoint,
            random_init,
            weights,
            fraction,
            freeze_up_to,
            ft_epochs,
            out,
        } => {
            use pirlkit::train::finetune::{Init, Labeled, Stage};
            let mut cfg = run.resolve()?;
            if let Some(ck) = &checkpoint {
                // The checkpoint decides the encoder and the views; the
                // fine-tuning recipe comes from the command's config.
                let ft = cfg.finetune.clone();
                cfg = pirlkit::train::checkpoint::read_meta(ck)?.config;
                cfg.finetune = ft;
            }
            if let Some(e) = ft_epochs {
                cfg.finetune.epochs = e;
            }
            if let Some(s) = freeze_up_to {
                cfg.finetune.freeze_up_to = Some(toml::Value::String(s).try_into::<Stage>()?);
            }
            cfg.check().map_err(|e| anyhow::anyhow!("config: {e}"))?;
            setup_threads(cfg.threads);
            let init = match (checkpoint, weights) {
                (Some(c), _) => Init::Checkpoint(c),
                (None, Some(w)) => Init::Torchvision(w),
                (None, None) if random_init => Init::Random,
                _ => anyhow::bail!("give --checkpoint, --weights or --random-init"),
            };
            let cache = ImageCache::new(
                run.cache_dir
                    .clone()
                    .unwrap_or_else(ImageCache::default_dir),
            );
            let mut ds = pipeline::open_dataset(run.data.as_deref(), &cache, cfg.seed)?;
            pipeline::limit_per_split(&mut ds, cfg.data.limit_per_split);
            let (imgs, _) = pipeline::load_images(&mut ds, &cfg, &cache, run.skip_bad)?;
            ds.check_labeled()?;
            let pd = pirlkit::protocol::probe_data(&ds, &imgs);
            let sub = pirlkit::protocol::label_subset(&pd.train.1, fraction, cfg.seed);
            let train = Labeled {
                images: sub.iter().map(|&i| pd.train.0[i]).collect(),
                labels: sub.iter().map(|&i| pd.train.1[i]).collect(),
            };
            let val = Labeled {
                images: pd.val.0.clone(),
                labels: pd.val.1.clone(),
            };
            let test = Labeled {
                images: pd.test.0.clone(),
                labels: pd.test.1.clone(),
            };
            // The saved state is continued only for the same settings, init
            // weights, data and label subset.
            let identity = {
                use sha2::Digest;
                let init_hash = match &init {
                    Init::Random => "random".to_string(),
                    Init::Checkpoint(c) => pirlkit::data::fingerprint::file_sha256(
                        &c.join(pirlkit::train::checkpoint::MODEL_FILE),
                    )?,
                    Init::Torchvision(w) => pirlkit::data::fingerprint::file_sha256(w)?,
                };
                let fp = pirlkit::data::fingerprint::fingerprint(&ds)?;
                hex::encode(sha2::Sha256::digest(serde_json::to_vec(
                    &serde_json::json!({
                        "config": cfg, "init": init_hash, "data": fp.sha256_all, "fraction": fraction,
                    }),
                )?))
            };
            let r = pirlkit::train::finetune::finetune(
                &cfg,
                &init,
                &train,
                &val,
                &test,
                cfg.seed,
                Some((&out.join("checkpoint"), &identity)),
            )?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            pirlkit::io::write_atomic(&out.join("finetune.json"), &serde_json::to_vec_pretty(&r)?)?;
            println!(
                "test AUC {:.4} (best val AUC {:.4} at epoch {} of {})",
                r.test_auc,
                r.val_auc,
                r.best_epoch,
                r.val_curve.len()
            );
        }
        Command::Download {
            dataset,
            dest,
            mirror,
            retries,
        } => {
            use pirlkit::data::download::{DownloadOptions, download};
            use pirlkit::data::isic::Descriptor;
            let desc = if dataset == "isic2017" {
                Descriptor::isic2017()
            } else {
                Descriptor::from_file(std::path::Path::new(&dataset))?
            };
            let dest =
                dest.unwrap_or_else(|| std::path::PathBuf::from("datasets").join(&desc.name));
            let opts = DownloadOptions {
                dest: dest.clone(),
                base_url_override: mirror,
                retries,
            };
            let report = download(&desc, &opts)?;
            for f in &report.files {
                println!(
                    "{} {} ({} bytes, sha256 {}{})",
                    if f.skipped { "present" } else { "fetched" },
                    f.path.display(),
                    f.bytes,
                    f.sha256,
                    if f.checksum_verified {
                        ", verified"
                    } else {
                        ", not pinned"
                    }
                );
            }
            println!("{} ready in {}", desc.name, dest.display());
        }
        Command::Audit {
            data,
            out,
            cache_dir,
            fail_on_leak,
        } => {
            let cache = ImageCache::new(cache_dir.unwrap_or_else(ImageCache::default_dir));
            let ds = pirlkit::data::Dataset::open(&data)?;
            let report = pirlkit::data::audit::audit(&ds, &cache, &out)?;
            println!("{}", report.summary());
            println!("findings: {}", out.display());
            if fail_on_leak && report.has_leaks() {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Selftest { device } => {
            let dev = pirlkit::device::open(&device, false)?;
            let scratch =
                std::env::temp_dir().join(format!("pirlkit-selftest-{}", std::process::id()));
            let checks = pirlkit::selftest::run(&dev, &scratch);
            let _ = std::fs::remove_dir_all(&scratch);
            let checks = checks?;
            let failed = checks.iter().filter(|c| !c.ok).count();
            for c in &checks {
                println!("{}", serde_json::to_string(c)?);
            }
            if failed > 0 {
                anyhow::bail!(
                    "selftest: {failed} of {} checks differ beyond tolerance",
                    checks.len()
                );
            }
            eprintln!(
                "selftest: all {} checks within tolerance on {}",
                checks.len(),
                pirlkit::device::describe(&dev)
            );
        }
        Command::Bench {
            arch,
            width,
            batch,
            size,
            threads,
            steps,
            pirl_preset,
            device,
            tf32,
            profile,
        } => {
            setup_threads(threads);
            pirlkit::ops::profile::enable(profile);
            let dev = pirlkit::device::open(&device, tf32)?;
            let arch: pirlkit::model::Arch = toml::Value::String(arch).try_into()?;
            for &b in &batch {
                for &s in &size {
                    let l = pirlkit::bench::resnet_step(arch, width, b, s, 2, steps, &dev)?;
                    println!("{}", serde_json::to_string(&l)?);
                }
            }
            if let Some(p) = pirl_preset {
                let l = pirlkit::bench::pirl_step(&pirlkit::Config::preset(p), 2, steps, &dev)?;
                println!("{}", serde_json::to_string(&l)?);
            }
        }
        Command::ImportWeights { from, input, out } => {
            let s = pirlkit::import::import(from, &input, &out)?;
            print!("{}", s.report());
        }
        Command::Evaluate {
            scores,
            label_column,
            resamples,
            seed,
            out,
        } => {
            let m = pirlkit::eval::evaluate_file(&scores, &label_column, resamples, seed)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            if let Some(o) = out {
                pirlkit::io::write_atomic(&o, &serde_json::to_vec_pretty(&m)?)?;
            }
        }
        Command::Reproduce {
            protocol: None,
            run,
            run_name,
            reports,
            force_resume,
        } => {
            let cfg = run.resolve()?;
            setup_threads(cfg.threads);
            let cache = ImageCache::new(
                run.cache_dir
                    .clone()
                    .unwrap_or_else(ImageCache::default_dir),
            );
            let mut ds = pipeline::open_dataset(run.data.as_deref(), &cache, cfg.seed)?;
            pipeline::limit_per_split(&mut ds, cfg.data.limit_per_split);
            let name = run_name.unwrap_or_else(|| {
                format!(
                    "{}-seed{}",
                    if run.data.is_some() {
                        ds.name.clone()
                    } else {
                        "synthetic".into()
                    },
                    cfg.seed
                )
            });
            pipeline::check_run_name(&name)?;
            let (imgs, skipped) = pipeline::load_images(&mut ds, &cfg, &cache, run.skip_bad)?;
            let paths = pipeline::RunPaths::new(reports.join(&name));
            let o =
                pipeline::reproduce(&cfg, &ds, &imgs, &paths, progress, force_resume, &skipped)?;
            for r in &o.rows {
                println!(
                    "{:<28} test AUC {:.4}  (n = {}, {} positive)",
                    r.arm, r.test_auc, r.n_test, r.n_test_pos
                );
            }
            println!("report: {}", paths.report.join("summary.md").display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
