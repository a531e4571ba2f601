//! The built-in data set's README, written from the build's own numbers: no
//! dates and no local paths, so the same build gives the same bytes.

use std::collections::BTreeMap;

use super::{
    BuildReport, DUPLICATES_FILE, IMAGES_DIR, JPEG_QUALITY, MANIFEST_FILE, Plan, SHIPPED_DIR,
    SOURCE_PAIRS_FILE, SUMS_FILE, SplitCounts,
};
use crate::data::Split;

const SPLITS: [Split; 3] = [Split::Train, Split::Val, Split::Test];

pub(super) fn readme(plan: &Plan, r: &BuildReport, dims: &str) -> String {
    let mut s = String::new();
    intro(&mut s, plan, r);
    counts(&mut s, plan, r);
    made(&mut s, plan, dims);
    duplicates(&mut s, r);
    audit(&mut s, r);
    files(&mut s, plan, r);
    s
}

fn total(r: &BuildReport) -> usize {
    r.counts.values().map(|c| c.images).sum()
}

fn intro(s: &mut String, plan: &Plan, r: &BuildReport) {
    let n = total(r);
    let size = plan.size;
    *s += &format!(
        "# isic2017-mini: the ISIC 2017 challenge images at {size}x{size}

{n} dermoscopy images of the ISIC 2017 Challenge, Part 3 (lesion
classification), from its training, validation and test splits, each resized
to {size}x{size} pixels, with the challenge's own splits and melanoma labels.
It ships inside the pirlkit repository ({:.2} MB of images) so that pirlkit
runs on real skin-lesion images without a download. The task: melanoma
(label 1) against nevus and seborrheic keratosis (label 0); choose models on
the validation split, score the test split once.

It is a small copy for quick runs, not a stand-in for the full-resolution
data: at {size} px the fine structure of a lesion is lost, and a number
measured on this copy is a number at {size} px.

## Licence and attribution

The images and labels are the ISIC 2017 challenge data of the International
Skin Imaging Collaboration (ISIC), released under CC-0 (no rights reserved);
this resized copy is released under CC-0 too. Please credit the International
Skin Imaging Collaboration and cite:

> N. C. F. Codella, D. Gutman, M. E. Celebi, B. Helba, M. A. Marchetti,
> S. W. Dusza, A. Kalloo, K. Liopyris, N. Mishra, H. Kittler, A. Halpern.
> Skin Lesion Analysis Toward Melanoma Detection: A Challenge at the 2017
> International Symposium on Biomedical Imaging (ISBI), Hosted by the
> International Skin Imaging Collaboration (ISIC). arXiv:1710.05006, 2017.

",
        r.image_bytes as f64 / 1e6
    );
}

fn counts(s: &mut String, plan: &Plan, r: &BuildReport) {
    let mut source: BTreeMap<Split, usize> = BTreeMap::new();
    for row in plan.rows {
        *source.entry(row.split).or_default() += 1;
    }
    *s += "## Counts\n\n";
    *s += "| split | images (of the challenge's) | melanoma | seborrheic keratosis | nevus |\n";
    *s += "|---|---:|---:|---:|---:|\n";
    let empty = SplitCounts::default();
    let mut all = (0, 0);
    for sp in SPLITS {
        let c = r.counts.get(&sp).unwrap_or(&empty);
        all.0 += c.images;
        all.1 += c.melanoma;
        let (sk, nv) = match c.seborrheic_keratosis {
            Some(k) => (
                k.to_string(),
                c.images.saturating_sub(c.melanoma + k).to_string(),
            ),
            None => (
                "not given".to_string(),
                format!(
                    "not given ({} not melanoma)",
                    c.images.saturating_sub(c.melanoma)
                ),
            ),
        };
        *s += &format!(
            "| {} | {} ({}) | {} | {sk} | {nv} |\n",
            sp.as_str(),
            c.images,
            source.get(&sp).copied().unwrap_or(0),
            c.melanoma
        );
    }
    *s += &format!(
        "| all | {} ({}) | {} | | |\n\n",
        all.0,
        plan.rows.len(),
        all.1
    );
    if r.counts.values().any(|c| c.seborrheic_keratosis.is_none()) {
        *s += "Where the table says \"not given\", the source's ground truth for that split\n";
        *s += "has the melanoma column only.\n";
    }
    *s += &format!(
        "{} of the challenge's images are left out as duplicates of images in a\nlater split (see below).\n\n",
        r.left_out.len()
    );
}

fn made(s: &mut String, plan: &Plan, dims: &str) {
    let size = plan.size;
    *s += &format!(
        "## How it was made

    pirlkit make-builtin --from ISIC-2017 --size {size} --out {SHIPPED_DIR}

where `ISIC-2017` is a folder of the challenge's files in the layout the ISIC
archive ships them (`ISIC-2017_{{Training,Validation,Test_v2}}_Part3_GroundTruth.csv`
and the `ISIC-2017_{{Training,Validation,Test_v2}}_Data/` image folders; the
`*_Data_metadata.csv` files and a `{SOURCE_PAIRS_FILE}` are read where present).
The same source and the same pirlkit give the same bytes on every run and
machine:

1. Every image the ground truth lists, in split and then id order, is decoded
   (zune-jpeg, through the `image` crate: integer arithmetic), resized as a
   whole to {size}x{size} by `image`'s Triangle filter (no crop: a non-square
   image is squashed to the square) and encoded as a baseline JPEG at quality
   {JPEG_QUALITY} by `image`'s encoder.
2. pirlkit's audit of the resized images finds the exact and near-duplicate
   pairs; with the pairs the source's `{SOURCE_PAIRS_FILE}` lists, they are
   grouped or resolved as described below, and the audit runs again on the
   result (the build fails if it still finds a leak).
3. `{MANIFEST_FILE}`, `{DUPLICATES_FILE}`, this README and `{SUMS_FILE}` are written
   from sorted data, with no dates and no paths of the machine.

The source of this copy: {} files ({} images, {dims}). The SHA-256 of their
sha256sum list (paths relative to the source folder, sorted by path) is

    {}

and of its tables:

| file | sha256 |
|---|---|
",
        plan.source_files,
        plan.rows.len(),
        plan.source_sha256
    );
    for (f, h) in &plan.tables {
        *s += &format!("| {f} | `{h}` |\n");
    }
    *s += "
A rebuild from files with this fingerprint gives this folder byte for byte
(pirlkit's tests rebuild it and compare). From another copy of the challenge
(the ISIC archive's full-resolution images, say) the images and so the
checksums differ; labels, splits and counts do not.

";
}

fn duplicates(s: &mut String, r: &BuildReport) {
    *s += "## Near-duplicates and the splits\n\n";
    if r.pairs.is_empty() {
        *s += "Neither the audit nor the source names any duplicate pair.\n\n";
        return;
    }
    let cross = r.pairs.iter().filter(|p| p.split_a != p.split_b).count();
    let listed = r.pairs.iter().filter(|p| p.listed).count();
    let list_only = r
        .pairs
        .iter()
        .filter(|p| p.listed && p.audit == "not found")
        .count();
    let audit_only = r.pairs.len() - listed;
    *s += &format!(
        "pirlkit's audit of the resized images and the source's `{SOURCE_PAIRS_FILE}`
name {} pairs of images that show one lesion in the same or nearly the same
picture, {cross} of them across splits. The two images of a pair inside one
split share a `group` in the manifest, so anything that splits by group keeps
them together. A pair across splits would put one picture on both sides of
the split; the challenge's splits are kept, and a group cannot span them (the
manifest reader refuses it as a leak), so the image in the earlier split
(train before val before test) is left out and its duplicate kept: the test
split keeps every image it has in the challenge. Of these pairs, {listed} are in
the source's list, {audit_only} were found by the audit alone and {list_only} are
listed but not found by the audit.

| image a | split | image b | split | audit | listed by the source | resolution |
|---|---|---|---|---|---|---|
",
        r.pairs.len()
    );
    for p in &r.pairs {
        *s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            p.id_a,
            p.split_a.as_str(),
            p.id_b,
            p.split_b.as_str(),
            p.audit,
            if p.listed { "yes" } else { "no" },
            p.resolution
        );
    }
    let left: Vec<String> = r
        .left_out
        .iter()
        .map(|(id, sp)| format!("{id} ({})", sp.as_str()))
        .collect();
    *s += &format!(
        "\nThe audit's score is its mean absolute difference of the two z-scored 32x32\ngrey thumbnails plus 0.01 per bit of perceptual-hash distance; it confirms a\npair at {} or less. Left out ({}): {}.\n\n",
        crate::data::audit::MAX_SCORE,
        left.len(),
        if left.is_empty() {
            "none".to_string()
        } else {
            left.join(", ")
        }
    );
}

fn audit(s: &mut String, r: &BuildReport) {
    let c = &r.audit;
    let within = c.exact_duplicate_pairs + c.near_duplicate_pairs;
    let cross = c.exact_duplicate_pairs_cross_split + c.near_duplicate_pairs_cross_split;
    *s += &format!(
        "## What `pirlkit audit {SHIPPED_DIR}` reports

{} images; {} exact and {} near-duplicate pairs, {cross} of them across
splits; {} groups on both sides of a split; {} unreadable files, {} odd sizes,
{} label rows without an image, {} images without a label, {} image files not
in the manifest. {}

",
        c.images,
        c.exact_duplicate_pairs,
        c.near_duplicate_pairs,
        c.group_leaks,
        c.unreadable,
        c.odd_sizes,
        c.missing_images,
        c.unlabeled,
        c.unlisted_images,
        if within == 0 {
            "It finds no leak.".to_string()
        } else {
            format!(
                "The {within} pairs it reports are pairs grouped above, each inside\none split and one group: they are not leaks, and it reports none."
            )
        }
    );
}

fn files(s: &mut String, plan: &Plan, r: &BuildReport) {
    let size = plan.size;
    let without: Vec<&str> = SPLITS
        .iter()
        .filter(|sp| {
            !plan
                .rows
                .iter()
                .any(|x| x.split == **sp && !(x.age.is_empty() && x.sex.is_empty()))
        })
        .map(|sp| sp.as_str())
        .collect();
    let meta = match without.len() {
        0 => "as the source's metadata gives them, `unknown` included".to_string(),
        3 => "empty: the source has no metadata".to_string(),
        _ => format!(
            "as the source's metadata gives them, `unknown`\n  included; empty for {}, for which the source has none",
            without.join(" and ")
        ),
    };
    *s += &format!(
        "## Files

- `{IMAGES_DIR}/<image_id>.jpg`: {} images, {size}x{size} RGB JPEG. The ids are the ISIC
  archive's image ids; no patient identifiers.
- `{MANIFEST_FILE}`: one row per image: `id`, `path`, `label` (1 = melanoma), `split`
  (the challenge's: train, val, test), `group` (near-duplicates share one, else
  the image's id), `seborrheic_keratosis` (1/0, empty where the source does not
  give it), `age_approximate` and `sex` ({meta}). pirlkit reads it as
  `--data {SHIPPED_DIR}`; its extra columns are ignored there.
- `{DUPLICATES_FILE}`: the pairs of the table above.
- `{SUMS_FILE}`: the SHA-256 of every other file, sorted by path. Check it with
  `sha256sum -c {SUMS_FILE}` in this folder, or `pirlkit::data::builtin::verify`.
",
        total(r)
    );
}
