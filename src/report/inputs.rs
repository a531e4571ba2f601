//! What a report is built from besides the saved runs: the protocol's
//! title, labels, test images' identifiers and metadata, the list of runs
//! and the external sets, as every stage of a run writes it
//! (`report_inputs.json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One run as the report finds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRef {
    pub arm: String,
    pub init: String,
    pub fraction: f64,
    pub seed: u64,
    pub key: String,
    /// File under `runs/`.
    pub file: String,
}

/// What the report needs besides the saved runs; written by every stage
/// that knows it (the same content from every shard).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportInputs {
    pub title: String,
    /// Plain lines: data, settings, machine.
    pub lines: Vec<String>,
    pub pretrain_losses: Vec<f64>,
    pub manifest: serde_json::Value,
    pub val_labels: Vec<u8>,
    pub test_labels: Vec<u8>,
    pub test_ids: Vec<String>,
    pub resamples: usize,
    /// Every run of the protocol, in protocol order.
    pub runs: Vec<RunRef>,
    /// The invocation that wrote this file (`host:pid:unix-ms`): runs it
    /// computed are "computed", the others "reused".
    pub invocation: String,
    /// Per test image (test-split order), its metadata, e.g. `sex` ->
    /// `female`, `age_approximate` -> `55` (empty: none); the report gives
    /// AUCs per group (categorical columns, age in bands).
    #[serde(default)]
    pub test_meta: Vec<std::collections::BTreeMap<String, String>>,
    /// External test sets the runs were scored on (each run's scores by set
    /// name); they appear beside the internal test split in the report.
    #[serde(default)]
    pub external: Vec<ExternalSet>,
}

pub const REPORT_INPUTS: &str = "report_inputs.json";

/// An external test set, as the runner describes it in `report_inputs.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExternalSet {
    /// Its name in the report and in each run's `external_scores`.
    pub name: String,
    /// Image ids, in the order of the scores.
    pub ids: Vec<String>,
    /// 1 = positive, 0 = negative, per image.
    pub labels: Vec<u8>,
    /// Per-image metadata (empty: none), as `ReportInputs::test_meta`.
    #[serde(default)]
    pub meta: Vec<Meta>,
    /// Images left out because they duplicate a training or internal image:
    /// (external image id, the image it duplicates).
    #[serde(default)]
    pub duplicates_dropped: Vec<(String, String)>,
}

/// Per-image metadata: column -> value (e.g. `sex` -> `female`,
/// `age_approximate` -> `55`).
pub type Meta = BTreeMap<String, String>;
