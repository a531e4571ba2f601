//! Data in: dataset layouts -> a manifest of samples -> decoded, resized,
//! cached uint8 images.

pub mod audit;
pub mod builtin;
pub mod cache;
pub mod dicom;
mod dicom_lengths;
pub mod download;
pub mod external;
pub mod fingerprint;
pub mod isic;
pub mod layouts;
pub mod limits;
pub mod load;
pub mod manifest;
pub mod metadata;
pub mod splits;
pub mod synthetic;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cache::{ImageCache, RgbImage, Skipped, drop_samples};
pub use layouts::OpenOptions;

/// Errors from reading data; each names the file (and line) it is about.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {msg}")]
    Csv {
        path: PathBuf,
        line: u64,
        msg: String,
    },
    #[error("{path}: {msg}")]
    Image { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Layout { path: PathBuf, msg: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, DataError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn parse(s: &str) -> Option<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Split::Train),
            "val" | "valid" | "validation" => Some(Split::Val),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// One image of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Identifier (file stem or the label file's id); never a patient identifier.
    pub id: String,
    pub path: PathBuf,
    /// Binary label (1 = positive class), if known.
    pub label: Option<u8>,
    /// A second binary label, if the data has one (ISIC 2017: seborrheic
    /// keratosis, from the descriptor's `aux_column`): an auxiliary target
    /// for fine-tuning (`finetune.aux_weight`), never scored.
    pub aux: Option<u8>,
    pub split: Split,
    /// Images of the same group (lesion, patient) always share a split.
    pub group: String,
}

/// A dataset as a list of samples.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub root: PathBuf,
    pub samples: Vec<Sample>,
    /// True when pirlkit made the splits (no split in the source); then
    /// near-duplicate images are grouped before splitting (see
    /// [`Dataset::regroup_near_duplicates`]).
    pub splits_assigned: bool,
}

impl Dataset {
    pub fn split(&self, s: Split) -> Vec<&Sample> {
        self.samples.iter().filter(|x| x.split == s).collect()
    }

    /// The auxiliary labels ([`Sample::aux`]) of split `s`, in manifest
    /// order, when every one of its samples has one.
    pub fn aux_labels(&self, s: Split) -> Option<Vec<u8>> {
        self.split(s).iter().map(|x| x.aux).collect()
    }

    /// SHA-256 (hex) of every sample's auxiliary label (id and value, in
    /// manifest order): the data a fine-tune with an auxiliary target also
    /// depends on, which the dataset's fingerprint leaves out.
    pub fn aux_sha256(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for x in &self.samples {
            let v = x.aux.map_or("-".to_string(), |a| a.to_string());
            h.update(format!("{},{v}\n", x.id).as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Indices of the samples in split `s`, in manifest order.
    pub fn indices(&self, s: Split) -> Vec<usize> {
        self.samples
            .iter()
            .enumerate()
            .filter(|(_, x)| x.split == s)
            .map(|(i, _)| i)
            .collect()
    }

    /// Opens `path`: an ISIC challenge folder, a folder with `manifest.csv`,
    /// a HAM10000-style metadata CSV, class folders, or a manifest or
    /// metadata CSV file (see [`Dataset::open_with`]).
    pub fn open(path: &Path) -> Result<Dataset> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Opens `path`, trying in order: the ISIC challenge layout,
    /// `manifest.csv`, a HAM10000-style `*metadata*.csv` (columns
    /// `lesion_id,image_id,dx`), folder per class (`<class>/` or
    /// `{train,val,test}/<class>/`). A CSV file is read as HAM-style metadata
    /// when its header says so, else as a manifest. `opts.positive` names the
    /// positive class folder or dx code; layouts with their own labels refuse it.
    pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<Dataset> {
        let pos = opts.positive.as_deref();
        let no_positive = |what: &str| match pos {
            Some(p) => Err(DataError::Layout {
                path: path.into(),
                msg: format!(
                    "{what} has its own labels; a positive class ({p:?}) applies only to class folders and HAM-style metadata"
                ),
            }),
            None => Ok(()),
        };
        if path.is_file() {
            if layouts::is_ham_csv(path) {
                return layouts::read_ham(path, pos);
            }
            no_positive("a manifest CSV")?;
            return manifest::read_manifest(path);
        }
        if !path.is_dir() {
            return Err(DataError::Layout {
                path: path.into(),
                msg: "no such file or folder".into(),
            });
        }
        if isic::Descriptor::isic2017().detect(path) {
            no_positive("the ISIC challenge layout")?;
            return isic::Descriptor::isic2017().load(path);
        }
        let m = path.join("manifest.csv");
        if m.is_file() {
            no_positive("manifest.csv")?;
            return manifest::read_manifest(&m);
        }
        if let Some(csv) = layouts::find_ham_csv(path)? {
            return layouts::read_ham(&csv, pos);
        }
        if layouts::detect_folder_per_class(path) {
            return layouts::read_folder_per_class(path, pos);
        }
        Err(DataError::Layout {
            path: path.into(),
            msg: "not a dataset: expected the ISIC 2017 challenge layout (ISIC-2017_*_Part3_GroundTruth.csv and image folders), a manifest.csv (path,label[,split][,group]), a HAM10000-style *metadata*.csv (lesion_id,image_id,dx) or class folders (<class>/*.jpg or {train,val,test}/<class>/*.jpg)".into(),
        })
    }

    /// Checks what the probe needs: labels on every image of each split, and
    /// both classes in train, val and test.
    pub fn check_labeled(&self) -> Result<()> {
        for s in [Split::Train, Split::Val, Split::Test] {
            let v = self.split(s);
            if v.is_empty() {
                return Err(DataError::Layout {
                    path: self.root.clone(),
                    msg: format!("the {} split is empty", s.as_str()),
                });
            }
            if let Some(x) = v.iter().find(|x| x.label.is_none()) {
                return Err(DataError::Layout {
                    path: x.path.clone(),
                    msg: format!("image {} has no label", x.id),
                });
            }
            let pos = v.iter().filter(|x| x.label == Some(1)).count();
            if pos == 0 || pos == v.len() {
                return Err(DataError::Layout {
                    path: self.root.clone(),
                    msg: format!(
                        "the {} split has only one class ({pos} positives of {})",
                        s.as_str(),
                        v.len()
                    ),
                });
            }
        }
        Ok(())
    }
}
