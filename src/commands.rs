//! What each subcommand does, once `main` has parsed the arguments: one
//! function per command, each turning the validated arguments into calls of
//! the library and printing the outcome.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command, RunArgs};
use crate::data::ImageCache;
use crate::data::load::{apply_config, load_images, open_dataset};
use crate::protocol::Protocol;
use crate::runner::{self, Shard, Stage};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let progress = !cli.no_progress && !cli.quiet;
    match cli.command {
        Command::Pretrain {
            run,
            out,
            force_resume,
        } => pretrain(&run, &out, progress, force_resume)?,
        Command::Probe {
            run,
            checkpoint,
            random_init: _,
            val_only,
            out,
        } => {
            let ck = checkpoint
                .as_deref()
                .map(crate::train::checkpoint::resolve)
                .transpose()?;
            probe(&run, ck.as_deref(), val_only, &out)?
        }
        Command::Reproduce {
            protocol,
            run,
            run_name,
            reports,
            force_resume,
            stage,
            shard,
        } => reproduce(
            protocol.as_deref(),
            &run,
            run_name,
            reports,
            progress,
            force_resume,
            stage,
            shard.as_deref(),
        )?,
        Command::Report { target, reports } => {
            let dir = if target.is_file() {
                reports.join(Protocol::from_file(&target)?.0.name)
            } else {
                target
            };
            for l in runner::report(&dir)? {
                println!("{l}");
            }
            println!("report: {}", dir.join("report.html").display());
        }
        Command::Finetune(a) => finetune_command(a)?,
        Command::Download(a) => download_command(a)?,
        Command::Audit {
            data,
            out,
            cache_dir,
            fail_on_leak,
        } => {
            let cache = ImageCache::new(cache_dir.unwrap_or_else(ImageCache::default_dir));
            let ds = crate::data::Dataset::open(&data)?;
            let report = crate::data::audit::audit(&ds, &cache, &out)?;
            println!("{}", report.summary());
            println!("findings: {}", out.display());
            if fail_on_leak && report.has_leaks() {
                return Ok(ExitCode::from(3));
            }
        }
        Command::MakeBuiltin { from, size, out } => make_builtin(&from, size, &out)?,
        Command::Selftest { device } => {
            let dev = crate::device::open(&device, false)?;
            let scratch =
                std::env::temp_dir().join(format!("pirlkit-selftest-{}", std::process::id()));
            let checks = crate::selftest::run(&dev, &scratch);
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
                crate::device::describe(&dev)
            );
        }
        Command::Bench(a) => bench_command(a)?,
        Command::ImportWeights { from, input, out } => {
            let s = crate::import::import(from, &input, &out)?;
            print!("{}", s.report());
        }
        Command::Evaluate {
            scores,
            label_column,
            resamples,
            seed,
            out,
        } => {
            let m = crate::eval::evaluate_file(&scores, &label_column, resamples, seed)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            if let Some(o) = out {
                crate::io::write_atomic(&o, &serde_json::to_vec_pretty(&m)?)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the built-in data set and says what it holds.
fn make_builtin(from: &Path, size: u32, out: &Path) -> anyhow::Result<()> {
    use crate::data::builtin;
    let r = builtin::build(from, out, size)?;
    for (s, c) in &r.counts {
        println!(
            "{}: {} images, {} melanoma",
            s.as_str(),
            c.images,
            c.melanoma
        );
    }
    println!(
        "{} duplicate pairs ({} across splits, {} images left out); audit of the result: {} exact and {} near-duplicate pairs, none across splits",
        r.pairs.len(),
        r.pairs.iter().filter(|p| p.split_a != p.split_b).count(),
        r.left_out.len(),
        r.audit.exact_duplicate_pairs,
        r.audit.near_duplicate_pairs
    );
    println!(
        "{}: {:.2} MB ({:.2} MB of images), {size}x{size} px",
        out.display(),
        r.bytes as f64 / 1e6,
        r.image_bytes as f64 / 1e6
    );
    if r.bytes > builtin::MAX_BYTES {
        tracing::warn!(
            "{} is over the {:.0} MB the repository allows for it; use a smaller --size",
            out.display(),
            builtin::MAX_BYTES as f64 / 1e6
        );
    }
    Ok(())
}

/// Sets the worker threads (0 = all cores) before any pool starts.
pub fn setup_threads(n: usize) {
    if n > 0 {
        // candle's CPU kernels read RAYON_NUM_THREADS; set before any pool starts.
        // SAFETY: called before other threads read the environment.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}

/// The command's config with the encoder and views of the pretraining
/// checkpoint `ck` (model, pretext, cached image size); the rest (seed,
/// probe, fine-tuning, data cuts, threads) stays the command's.
fn with_encoder_of(cfg: crate::Config, ck: &Path) -> anyhow::Result<crate::Config> {
    let pre = crate::train::checkpoint::read_meta(ck)?.config;
    let cfg = crate::Config {
        model: pre.model,
        pretext: pre.pretext,
        data: crate::config::DataConfig {
            image_size: pre.data.image_size,
            ..cfg.data
        },
        ..cfg
    };
    cfg.check().map_err(|e| anyhow::anyhow!("config: {e}"))?;
    Ok(cfg)
}

fn cache_of(run: &RunArgs) -> ImageCache {
    ImageCache::new(
        run.cache_dir
            .clone()
            .unwrap_or_else(ImageCache::default_dir),
    )
}

fn pretrain(run: &RunArgs, out: &Path, progress: bool, force_resume: bool) -> anyhow::Result<()> {
    let cfg = run.resolve()?;
    setup_threads(cfg.threads);
    let cache = cache_of(run);
    let mut ds = open_dataset(run.data.as_deref(), &cache, cfg.seed)?;
    apply_config(&mut ds, &cfg);
    ds.samples.retain(|s| s.split == crate::data::Split::Train);
    let (imgs, _) = load_images(&mut ds, &cfg, &cache, run.skip_bad)?;
    let o = crate::train::pretrain(&cfg, &imgs, out, progress, force_resume)?;
    println!(
        "pretrained {} epochs ({} steps) in {:.1} min, final loss {:.4}; checkpoint {}",
        o.epochs,
        o.steps,
        o.wall_s / 60.0,
        o.epoch_losses.last().copied().unwrap_or(f64::NAN),
        o.checkpoint.display()
    );
    Ok(())
}

fn probe(
    run: &RunArgs,
    checkpoint: Option<&Path>,
    val_only: bool,
    out: &Path,
) -> anyhow::Result<()> {
    let mut cfg = run.resolve()?;
    if let Some(ck) = checkpoint {
        cfg = with_encoder_of(cfg, ck)?;
    }
    setup_threads(cfg.threads);
    let cache = cache_of(run);
    let mut ds = open_dataset(run.data.as_deref(), &cache, cfg.seed)?;
    apply_config(&mut ds, &cfg);
    let (imgs, _) = load_images(&mut ds, &cfg, &cache, run.skip_bad)?;
    ds.check_labeled()?;
    let mut data = crate::protocol::probe_data(&ds, &imgs);
    if val_only {
        // Tuning: the test split is never scored.
        data.test = (Vec::new(), Vec::new());
    }
    use crate::train::finetune::{Init, encoder_from};
    let init = checkpoint.map_or(Init::Random, |c| Init::Checkpoint(c.to_path_buf()));
    let (vm, enc) = encoder_from(&cfg, &init)?;
    let r = crate::eval::probe::run_probe(&vm, &enc, "encoder", &cfg, &data)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::io::write_atomic(&out.join("probe.json"), &serde_json::to_vec_pretty(&r)?)?;
    let choice = crate::eval::probe::describe_choice(&r, &cfg.probe);
    if val_only {
        println!(
            "val AUC {:.4} at {choice} (val only: the test split was not scored)",
            r.val_auc
        );
    } else {
        println!(
            "test AUC {:.4} on {} images ({} positive); val AUC {:.4} at {choice}",
            r.test_auc, r.n_test, r.n_test_pos, r.val_auc
        );
    }
    Ok(())
}

/// `reproduce`: a protocol file, or the built-in protocol on the config of
/// the flags; through the one runner.
#[allow(clippy::too_many_arguments)]
fn reproduce(
    protocol: Option<&Path>,
    run: &RunArgs,
    run_name: Option<String>,
    reports: PathBuf,
    progress: bool,
    force_resume: bool,
    stage: Stage,
    shard: Option<&str>,
) -> anyhow::Result<()> {
    let shard = match shard {
        Some(s) => Some(Shard::parse(s).map_err(anyhow::Error::msg)?),
        None => Shard::from_slurm_env().map_err(anyhow::Error::msg)?,
    };
    if shard.is_some() && stage == Stage::All {
        anyhow::bail!(
            "a shard runs the arms stage: give --stage arms (the pretraining is its own step, and `pirlkit report` merges the shards)"
        );
    }
    let (p, cfg, dir) = match protocol {
        Some(path) => {
            if run.preset.is_some()
                || run.config.is_some()
                || run.epochs.is_some()
                || run.seed.is_some()
            {
                anyhow::bail!(
                    "with a protocol file, settings come from its [config] table: drop --preset/--config/--epochs/--seed"
                );
            }
            if run_name.is_some() {
                anyhow::bail!(
                    "with a protocol file, the report folder is the protocol's name: drop --run-name"
                );
            }
            let (p, mut cfg) = Protocol::from_file(path)?;
            if let Some(t) = run.threads {
                cfg.threads = t;
            }
            if let Some(d) = &run.device {
                cfg.device = d.clone();
            }
            if let Some(l) = run.limit_per_split {
                cfg.data.limit_per_split = l;
            }
            (
                p,
                cfg,
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            )
        }
        None => {
            let cfg = run.resolve()?;
            let name = run_name.unwrap_or_else(|| {
                let data = match &run.data {
                    Some(d) => crate::data::Dataset::open(d)
                        .map(|ds| ds.name)
                        .unwrap_or_else(|_| "data".into()),
                    None => crate::data::load::BUILTIN_NAME.to_string(),
                };
                format!("{data}-seed{}", cfg.seed)
            });
            (Protocol::builtin(name, &cfg), cfg, PathBuf::from("."))
        }
    };
    setup_threads(cfg.threads);
    let opts = runner::Options {
        reports,
        cache: cache_of(run),
        progress,
        force_resume,
        skip_bad: run.skip_bad,
        stage,
        shard,
    };
    let o = runner::run(&p, &cfg, &dir, run.data.as_deref(), &opts)?;
    match &o.headline {
        Some(lines) => {
            for l in lines {
                println!("{l}");
            }
            println!("report: {}", o.dir.join("report.html").display());
        }
        None => println!(
            "{}: {} runs computed, {} reused, {} held by another process; `pirlkit report {}` builds the report once every shard is done",
            o.dir.display(),
            o.computed,
            o.reused,
            o.held_elsewhere,
            o.dir.display()
        ),
    }
    Ok(())
}

fn finetune_command(a: crate::cli::FinetuneArgs) -> anyhow::Result<()> {
    let crate::cli::FinetuneArgs {
        run,
        checkpoint,
        random_init,
        weights,
        fraction,
        freeze_up_to,
        ft_epochs,
        val_only,
        out,
    } = a;
    use crate::train::finetune::{Init, Labeled, Stage};
    let checkpoint = checkpoint
        .as_deref()
        .map(crate::train::checkpoint::resolve)
        .transpose()?;
    let mut cfg = run.resolve()?;
    if let Some(ck) = &checkpoint {
        cfg = with_encoder_of(cfg, ck)?;
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
    let cache = cache_of(&run);
    let mut ds = open_dataset(run.data.as_deref(), &cache, cfg.seed)?;
    apply_config(&mut ds, &cfg);
    let (imgs, _) = load_images(&mut ds, &cfg, &cache, run.skip_bad)?;
    ds.check_labeled()?;
    let pd = crate::protocol::probe_data(&ds, &imgs);
    let sub = crate::protocol::label_subset(&pd.train.1, fraction, cfg.seed);
    let train = Labeled {
        images: sub.iter().map(|&i| pd.train.0[i]).collect(),
        labels: sub.iter().map(|&i| pd.train.1[i]).collect(),
        aux: ds
            .aux_labels(crate::data::Split::Train)
            .map(|a| sub.iter().map(|&i| a[i]).collect()),
    };
    let val = Labeled {
        images: pd.val.0.clone(),
        labels: pd.val.1.clone(),
        aux: None,
    };
    let test = Labeled {
        images: pd.test.0.clone(),
        labels: pd.test.1.clone(),
        aux: None,
    };
    // The saved state is continued only for the same settings, init
    // weights, data and label subset.
    let identity = {
        use sha2::Digest;
        let init_hash = match &init {
            Init::Random => "random".to_string(),
            Init::Checkpoint(c) => crate::data::fingerprint::file_sha256(
                &c.join(crate::train::checkpoint::MODEL_FILE),
            )?,
            Init::Torchvision(w) => crate::data::fingerprint::file_sha256(w)?,
        };
        let fp = crate::data::fingerprint::fingerprint(&ds)?;
        let mut id = serde_json::json!({
            "config": cfg, "init": init_hash, "data": fp.sha256_all, "fraction": fraction, "val_only": val_only,
        });
        // The auxiliary labels, which the fingerprint leaves out, only when
        // they are read (so other runs keep their identities).
        if cfg.finetune.aux_weight > 0.0 {
            id["aux"] = ds.aux_sha256().into();
        }
        hex::encode(sha2::Sha256::digest(serde_json::to_vec(&id)?))
    };
    let data = crate::train::finetune::Splits::new(&train, &val, (!val_only).then_some(&test));
    let r = crate::train::finetune::finetune(
        &cfg,
        &init,
        data,
        cfg.seed,
        Some((&out.join("checkpoint"), &identity)),
    )?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    crate::io::write_atomic(&out.join("finetune.json"), &serde_json::to_vec_pretty(&r)?)?;
    let selected = format!("val AUC {:.4}, {}", r.val_auc, r.selection_summary());
    if val_only {
        println!("{selected} (val only: the test split was not scored)");
    } else {
        println!("test AUC {:.4} ({selected})", r.test_auc);
    }
    Ok(())
}

fn download_command(a: crate::cli::DownloadArgs) -> anyhow::Result<()> {
    let crate::cli::DownloadArgs {
        dataset,
        dest,
        mirror,
        retries,
    } = a;
    use crate::data::download::{DownloadOptions, download};
    use crate::data::isic::Descriptor;
    let desc = if dataset == "isic2017" {
        Descriptor::isic2017()
    } else {
        Descriptor::from_file(std::path::Path::new(&dataset))?
    };
    let dest = dest.unwrap_or_else(|| std::path::PathBuf::from("datasets").join(&desc.name));
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
    Ok(())
}

fn bench_command(a: crate::cli::BenchArgs) -> anyhow::Result<()> {
    let crate::cli::BenchArgs {
        arch,
        width,
        batch,
        size,
        what,
        threads,
        steps,
        pirl_preset,
        device,
        tf32,
        profile,
    } = a;
    setup_threads(threads);
    crate::ops::profile::enable(profile);
    let dev = crate::device::open(&device, tf32)?;
    let arch: crate::model::Arch = toml::Value::String(arch).try_into()?;
    use crate::bench::What;
    for &w in &what {
        for &b in &batch {
            for &s in &size {
                let l = match w {
                    What::Train => crate::bench::resnet_step(arch, width, b, s, 2, steps, &dev)?,
                    What::Finetune => {
                        crate::bench::finetune_step(arch, width, b, s, 2, steps, &dev)?
                    }
                    What::Features => {
                        crate::bench::features_pass(arch, width, b, s, 2, steps, &dev)?
                    }
                };
                println!("{}", serde_json::to_string(&l)?);
            }
        }
    }
    if let Some(p) = pirl_preset {
        let l = crate::bench::pirl_step(&crate::Config::preset(p), 2, steps, &dev)?;
        println!("{}", serde_json::to_string(&l)?);
    }
    Ok(())
}
