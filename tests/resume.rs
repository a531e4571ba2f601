//! Long runs that survive: SIGKILL at arbitrary steps and resume ends
//! bit-identical to an uninterrupted run; SIGINT checkpoints and stops; a
//! NaN stops the run with the last good checkpoint intact; a changed config
//! is refused with the differing keys named.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

const EPOCHS: &str = "4";

/// A small synthetic data set (80 images at 48 px; 48 of them train).
fn data_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    pirlkit::data::synthetic::generate(d.path(), 80, 48, 5).unwrap();
    d
}

fn pretrain_cmd(data: &Path, out: &Path, cache: &Path, cfg: &Path) -> Command {
    tiny_cmd(&["pretrain", "--epochs", EPOCHS], data, out, cache, cfg)
}

/// `pirlkit <args> --preset tiny --threads 2` on `data` into `out`.
fn tiny_cmd(args: &[&str], data: &Path, out: &Path, cache: &Path, cfg: &Path) -> Command {
    let mut c = Command::new(common::bin());
    c.args(args)
        .args(["--preset", "tiny", "--threads", "2", "--no-progress"])
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--config")
        .arg(cfg);
    c
}

fn every_step_config(dir: &Path) -> PathBuf {
    let p = dir.join("every-step.toml");
    std::fs::write(
        &p,
        "[train]\ncheckpoint_every_steps = 1\nkeep_checkpoints = 3\n",
    )
    .unwrap();
    p
}

fn latest_step(out: &Path) -> Option<usize> {
    let s = std::fs::read_to_string(out.join("checkpoints/latest")).ok()?;
    s.trim().strip_prefix("step-")?.parse().ok()
}

fn final_tensors(out: &Path) -> HashMap<String, Vec<f32>> {
    let ck = out.join(format!(
        "checkpoints/{}",
        std::fs::read_to_string(out.join("checkpoints/latest"))
            .unwrap()
            .trim()
    ));
    let mut all = HashMap::new();
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "bank.safetensors",
    ] {
        for (k, t) in candle_core::safetensors::load(ck.join(f), &Device::Cpu).unwrap() {
            let t: Tensor = t.to_dtype(candle_core::DType::F32).unwrap();
            all.insert(
                format!("{f}/{k}"),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
        }
    }
    all
}

fn assert_same(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) {
    assert_eq!(a.len(), b.len());
    for (k, v) in a {
        let w = b.get(k).unwrap_or_else(|| panic!("missing {k}"));
        assert!(
            v.iter().zip(w).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{k} differs"
        );
    }
}

/// Starts the run and kills it (SIGKILL or SIGINT) once a checkpoint at or
/// past `step` exists, after `delay_ms` more. Returns the exit status.
fn run_until(
    cmd: &mut Command,
    out: &Path,
    step: usize,
    delay_ms: u64,
    signal: &str,
) -> std::process::ExitStatus {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if latest_step(out).is_some_and(|s| s >= step) {
            std::thread::sleep(Duration::from_millis(delay_ms));
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap();
            return child.wait().unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "run did not reach step {step}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigkill_at_arbitrary_steps_then_resume_is_bit_identical() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = every_step_config(tmp.path());
    let cache = tmp.path().join("cache");
    let reference = tmp.path().join("ref");
    let st = pretrain_cmd(data.path(), &reference, &cache, &cfg)
        .status()
        .unwrap();
    assert!(st.success());
    let want = final_tensors(&reference);
    assert_eq!(latest_step(&reference), Some(12)); // 48 images / batch 16 x 4 epochs

    // Kill points: step thresholds and extra delays (ms) chosen to land
    // inside a step, inside a checkpoint write, and at an epoch boundary.
    let out = tmp.path().join("killed");
    let mut kills = 0;
    for (step, delay) in [(1, 0), (3, 7), (5, 1), (8, 13)] {
        let st = run_until(
            &mut pretrain_cmd(data.path(), &out, &cache, &cfg),
            &out,
            step,
            delay,
            "-KILL",
        );
        if !st.success() {
            kills += 1;
        }
    }
    assert!(kills >= 3, "only {kills} of 4 runs were actually killed");
    let st = pretrain_cmd(data.path(), &out, &cache, &cfg)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(latest_step(&out), Some(12));
    assert_same(&want, &final_tensors(&out));
}

#[test]
fn sigint_writes_a_checkpoint_and_says_how_to_continue() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("plain.toml");
    std::fs::write(&cfg, "seed = 3\n").unwrap();
    let cache = tmp.path().join("cache");
    let reference = tmp.path().join("ref");
    assert!(
        pretrain_cmd(data.path(), &reference, &cache, &cfg)
            .status()
            .unwrap()
            .success()
    );

    let out = tmp.path().join("int");
    // Checkpoints only at epoch ends here: the one after SIGINT is mid-epoch.
    let mut child = pretrain_cmd(data.path(), &out, &cache, &cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while latest_step(&out).is_none() {
        assert!(t0.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(5));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let output = std::mem::take(&mut child.stderr);
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut output.unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("Run the same command again"),
        "{err}"
    );
    let at = latest_step(&out).unwrap();
    assert!(at < 12);
    assert!(
        pretrain_cmd(data.path(), &out, &cache, &cfg)
            .status()
            .unwrap()
            .success()
    );
    assert_same(&final_tensors(&reference), &final_tensors(&out));
}

#[test]
fn nan_loss_stops_with_last_good_checkpoint_intact() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = every_step_config(tmp.path());
    let out = tmp.path().join("nan");
    let o = pretrain_cmd(data.path(), &out, &tmp.path().join("cache"), &cfg)
        .env("PIRLKIT_INJECT_NAN_AT_STEP", "5")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("non-finite loss") && err.contains("step 5") && err.contains("step-00000005"),
        "{err}"
    );
    // The last good checkpoint loads and is the one before the bad step.
    assert_eq!(latest_step(&out), Some(5));
    let t = final_tensors(&out);
    assert!(t.values().all(|v| v.iter().all(|x| x.is_finite())));
    // Nothing half-written is left behind.
    let names: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
}

#[test]
fn resume_with_changed_config_is_refused_naming_keys() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("a.toml");
    std::fs::write(&cfg, "seed = 1\n").unwrap();
    let out = tmp.path().join("run");
    let cache = tmp.path().join("cache");
    assert!(
        pretrain_cmd(data.path(), &out, &cache, &cfg)
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(&cfg, "seed = 2\n[pirl]\ntau = 0.2\n").unwrap();
    let o = pretrain_cmd(data.path(), &out, &cache, &cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pirl.tau") && err.contains("seed") && err.contains("--force-resume"),
        "{err}"
    );
    assert!(!err.contains("probe") && !err.contains("finetune"), "{err}");

    // Settings pretraining does not read (the probe's, fine-tuning's, the
    // thread count) do not block a resume: a protocol's downstream recipe
    // can change without a new pretraining.
    std::fs::write(
        &cfg,
        "seed = 1\nthreads = 1\n[probe]\nviews = [{ crop = 24 }]\n[finetune]\nlr = 1e-3\nepochs = 3\n",
    )
    .unwrap();
    let o = pretrain_cmd(data.path(), &out, &cache, &cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The meta.json of the run's latest checkpoint.
fn latest_meta(out: &Path) -> (PathBuf, serde_json::Value) {
    let ck = pirlkit::train::checkpoint::latest(out).unwrap().unwrap();
    let path = ck.join(pirlkit::train::checkpoint::META_FILE);
    let meta = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (path, meta)
}

/// Sets (or with `None` removes) `result_version` in the meta.json of the
/// run's latest checkpoint.
fn set_result_version(out: &Path, v: Option<u32>) {
    let (path, mut meta) = latest_meta(out);
    let m = meta.as_object_mut().unwrap();
    match v {
        Some(v) => m.insert("result_version".into(), v.into()),
        None => m.remove("result_version"),
    };
    std::fs::write(&path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
}

#[test]
fn resume_from_a_build_with_other_numbers_is_refused() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("a.toml");
    std::fs::write(&cfg, "seed = 1\n").unwrap();
    let (out, cache) = (tmp.path().join("run"), tmp.path().join("cache"));
    let run = |force: bool| {
        let mut c = pretrain_cmd(data.path(), &out, &cache, &cfg);
        if force {
            c.arg("--force-resume");
        }
        c.output().unwrap()
    };
    assert!(run(false).status.success());
    let now = pirlkit::train::checkpoint::RESULT_VERSION;
    assert_eq!(latest_meta(&out).1["result_version"], now, "recorded");

    // A checkpoint from a build whose kernels give other numbers is neither
    // continued nor reused as finished, and the error says why and how.
    set_result_version(&out, Some(now + 1));
    let o = run(false);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("result version {}, this build's {now}", now + 1))
            && err.contains("--force-resume"),
        "{err}"
    );
    let o = run(true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A checkpoint saved before checkpoints recorded the version counts as
    // the current one.
    set_result_version(&out, None);
    let o = run(false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn skip_nonfinite_skips_the_batch_and_lowers_the_learning_rate() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("skip.toml");
    std::fs::write(
        &cfg,
        "[train]\nskip_nonfinite = true\nnonfinite_lr_factor = 0.5\n",
    )
    .unwrap();
    let out = tmp.path().join("skip");
    let o = pretrain_cmd(data.path(), &out, &tmp.path().join("cache"), &cfg)
        .env("PIRLKIT_INJECT_NAN_AT_STEP", "5")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("step 5: batch skipped"), "{err}");
    let ck = out.join("checkpoints").join(
        std::fs::read_to_string(out.join("checkpoints/latest"))
            .unwrap()
            .trim(),
    );
    let meta = pirlkit::train::checkpoint::read_meta(&ck).unwrap();
    assert_eq!((meta.step, meta.skipped_steps, meta.lr_scale), (12, 1, 0.5));
    assert!(meta.epoch_losses.iter().all(|l| l.is_finite()));
}

#[test]
fn disk_full_leaves_the_previous_checkpoint_loadable() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = every_step_config(tmp.path());
    let mnt = tmp.path().join("small-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    // A 4 MiB tmpfs holds two or so of these checkpoints (~1.5 MiB each),
    // not the four that keep_checkpoints = 3 needs while writing the next.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a small tmpfs here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let out = mnt.join("run");
    let o = pretrain_cmd(data.path(), &out, &tmp.path().join("cache"), &cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "expected a disk-full failure");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("No space left on device") || err.contains("os error 28"),
        "{err}"
    );
    // The checkpoint `latest` names is complete and loads; nothing half-written is left.
    let at = latest_step(&out).expect("at least one checkpoint fitted");
    let t = final_tensors(&out);
    assert!(!t.is_empty());
    let names: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    // With room again, the same command resumes from it and finishes.
    let out2 = tmp.path().join("moved");
    Command::new("cp")
        .arg("-r")
        .arg(&out)
        .arg(&out2)
        .status()
        .unwrap();
    let o = pretrain_cmd(data.path(), &out2, &tmp.path().join("cache"), &cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("step {at}")));
    assert_eq!(latest_step(&out2), Some(12));
}

#[test]
fn same_seed_same_tensors_with_one_or_two_threads() {
    // Data loading, augmentation and the kernels split work over the rayon
    // pool; every random stream is keyed by (seed, epoch, image), and the
    // reductions have a fixed order, so the thread count changes nothing.
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("plain.toml");
    std::fs::write(&cfg, "seed = 11\n").unwrap();
    let mut outs = Vec::new();
    for threads in ["1", "2"] {
        let out = tmp.path().join(format!("t{threads}"));
        let st = Command::new(common::bin())
            .args([
                "pretrain",
                "--preset",
                "tiny",
                "--epochs",
                "2",
                "--no-progress",
                "-q",
                "--threads",
                threads,
            ])
            .arg("--data")
            .arg(data.path())
            .arg("--out")
            .arg(&out)
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .arg("--config")
            .arg(&cfg)
            .status()
            .unwrap();
        assert!(st.success());
        outs.push(final_tensors(&out));
    }
    assert_same(&outs[0], &outs[1]);
}

#[test]
fn unwritable_folder_is_a_clear_error() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = every_step_config(tmp.path());
    let mnt = tmp.path().join("ro");
    std::fs::create_dir_all(&mnt).unwrap();
    // Root ignores permission bits, so use a read-only file system.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,ro", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a read-only tmpfs here (needs root)");
        return;
    }
    let o = pretrain_cmd(
        data.path(),
        &mnt.join("run"),
        &tmp.path().join("cache"),
        &cfg,
    )
    .output()
    .unwrap();
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Read-only file system") && err.contains("/ro/run"),
        "{err}"
    );
}

#[test]
fn best_checkpoint_by_epoch_loss_survives_pruning() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("keep1.toml");
    std::fs::write(
        &cfg,
        "[train]\ncheckpoint_every_steps = 1\nkeep_checkpoints = 1\n",
    )
    .unwrap();
    let out = tmp.path().join("run");
    assert!(
        pretrain_cmd(data.path(), &out, &tmp.path().join("cache"), &cfg)
            .output()
            .unwrap()
            .status
            .success()
    );
    let best = std::fs::read_to_string(out.join("checkpoints/best")).unwrap();
    let best_dir = out.join("checkpoints").join(best.trim());
    let meta = pirlkit::train::checkpoint::read_meta(&best_dir).unwrap();
    // The best is an epoch end with the lowest mean loss so far.
    assert_eq!(meta.step % 3, 0);
    let last =
        pirlkit::train::checkpoint::read_meta(&out.join("checkpoints/step-00000012")).unwrap();
    let min = last
        .epoch_losses
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    assert_eq!(*meta.epoch_losses.last().unwrap(), min);
    let kept: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert!(
        kept.len() <= 2 && kept.contains(&best.trim().to_string()),
        "{kept:?}"
    );
}

fn finetune_cmd(data: &Path, out: &Path, cache: &Path, cfg: &Path) -> Command {
    tiny_cmd(&["finetune", "--random-init"], data, out, cache, cfg)
}

/// Epochs done by the fine-tuning state in `out/checkpoint`.
fn finetune_epochs_done(out: &Path) -> Option<usize> {
    let s = std::fs::read_to_string(out.join("checkpoint/latest")).ok()?;
    s.trim().strip_prefix("epoch-")?.parse().ok()
}

/// The fine-tuning's scores and curves, as written (floats round-trip exactly).
fn finetune_numbers(out: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("finetune.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().retain(|k, _| {
        [
            "test_scores",
            "val_scores",
            "val_curve",
            "train_losses",
            "best_epoch",
        ]
        .contains(&k.as_str())
    });
    v
}

#[test]
fn finetune_sigkill_at_any_point_then_rerun_gives_the_same_scores() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("ft.toml");
    std::fs::write(&cfg, "[finetune]\nepochs = 6\nbatch_size = 8\n").unwrap();
    let cache = tmp.path().join("cache");
    let reference = tmp.path().join("ref");
    let st = finetune_cmd(data.path(), &reference, &cache, &cfg)
        .status()
        .unwrap();
    assert!(st.success());
    let want = finetune_numbers(&reference);
    assert_eq!(want["val_curve"].as_array().unwrap().len(), 6);

    // Kill points: after an epoch's state appears, plus delays landing in
    // the next epoch's steps, its validation pass and its state write.
    let out = tmp.path().join("killed");
    let mut kills = 0;
    for (epoch, delay) in [(0, 0), (1, 3), (2, 9), (4, 1)] {
        let mut child = finetune_cmd(data.path(), &out, &cache, &cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let st = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if finetune_epochs_done(&out).unwrap_or(0) >= epoch {
                std::thread::sleep(Duration::from_millis(delay));
                child.kill().unwrap(); // SIGKILL
                break child.wait().unwrap();
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "no epoch {epoch}");
            std::thread::sleep(Duration::from_millis(2));
        };
        if !st.success() {
            kills += 1;
        }
    }
    assert!(kills >= 3, "only {kills} of 4 runs were actually killed");
    assert!(
        finetune_epochs_done(&out).is_some_and(|e| e < 6),
        "the killed runs should not have finished"
    );
    let st = finetune_cmd(data.path(), &out, &cache, &cfg)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(want, finetune_numbers(&out));

    // A state saved under other settings is refused, not continued.
    std::fs::write(&cfg, "[finetune]\nepochs = 6\nbatch_size = 8\nlr = 1e-3\n").unwrap();
    let o = finetune_cmd(data.path(), &out, &cache, &cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("other settings") && err.contains("checkpoint"),
        "{err}"
    );
}
