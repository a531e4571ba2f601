//! Splits that hold no duplicate across them: when pirlkit makes the splits,
//! the audit's exact and near-duplicate pairs are merged into one group
//! before splitting.

use crate::data::{Dataset, ImageCache};
use crate::error::Result;

/// When pirlkit made the splits, merges the groups of exact and near-duplicate
/// images (found by the audit) and splits again, so no duplicate straddles a
/// split. Returns the number of duplicate pairs merged.
pub fn group_near_duplicates(ds: &mut Dataset, cache: &ImageCache) -> Result<usize> {
    if !ds.splits_assigned {
        return Ok(0);
    }
    let csv = cache.dir.join(format!(
        "audit-{}.csv",
        ds.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    let report = crate::data::audit::audit(ds, cache, &csv)?;
    let index: std::collections::HashMap<String, usize> = ds
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), i))
        .collect();
    // Union-find over sample indices, seeded with the existing groups.
    let mut parent: Vec<usize> = (0..ds.samples.len()).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    let mut first_of_group: std::collections::HashMap<String, usize> =
        std::collections::HashMap::new();
    for i in 0..ds.samples.len() {
        let g = ds.samples[i].group.clone();
        let r = *first_of_group.entry(g).or_insert(i);
        let (a, b) = (find(&mut parent, i), find(&mut parent, r));
        parent[a.max(b)] = a.min(b);
    }
    let mut merged = 0;
    for pair in report
        .exact_duplicates
        .iter()
        .chain(&report.near_duplicates)
    {
        if let (Some(&a), Some(&b)) = (index.get(&pair.id_a), index.get(&pair.id_b)) {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                parent[ra.max(rb)] = ra.min(rb);
                merged += 1;
            }
        }
    }
    if merged > 0 {
        let roots: Vec<usize> = (0..ds.samples.len())
            .map(|i| find(&mut parent, i))
            .collect();
        let names: Vec<String> = roots.iter().map(|&r| ds.samples[r].group.clone()).collect();
        for (s, g) in ds.samples.iter_mut().zip(names) {
            s.group = g;
        }
        crate::data::manifest::assign_splits(&mut ds.samples);
        tracing::info!(
            "grouped {merged} duplicate pairs before splitting (audit: {})",
            csv.display()
        );
    }
    Ok(merged)
}

/// Moves a stratified `fraction` of the training split's groups (by label,
/// drawn from `seed`) into the validation split: a larger validation set for
/// tuning settings (`data.val_from_train`), the test split untouched.
/// Returns the number of images moved.
pub fn move_train_to_val(ds: &mut Dataset, fraction: f64, seed: u64) -> usize {
    use crate::data::Split;
    if fraction <= 0.0 {
        return 0;
    }
    let mut groups: std::collections::BTreeMap<String, bool> = std::collections::BTreeMap::new();
    for s in ds.samples.iter().filter(|s| s.split == Split::Train) {
        let pos = groups.entry(s.group.clone()).or_insert(false);
        *pos |= s.label == Some(1);
    }
    let mut moved = std::collections::HashSet::new();
    for class in [false, true] {
        let mut g: Vec<&String> = groups
            .iter()
            .filter(|(_, p)| **p == class)
            .map(|(g, _)| g)
            .collect();
        crate::rng::shuffle(
            &mut g,
            &mut crate::rng::stream(seed, "val-from-train", class as u64, 0),
        );
        let take = (g.len() as f64 * fraction).round() as usize;
        moved.extend(g[..take.min(g.len())].iter().map(|s| (*s).clone()));
    }
    let mut n = 0;
    for s in ds.samples.iter_mut() {
        if s.split == Split::Train && moved.contains(&s.group) {
            s.split = Split::Val;
            n += 1;
        }
    }
    n
}
