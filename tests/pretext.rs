//! Jigsaw patches map back to their source pixels under the recorded
//! permutation; rotation and crops behave.

use pirlkit::augment::{self, AugmentConfig};
use pirlkit::data::RgbImage;
use pirlkit::pretext::jigsaw;

fn test_image(size: usize) -> RgbImage {
    let mut data = vec![0u8; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                data[(y * size + x) * 3 + c] = ((y * 7 + x * 13 + c * 101) % 251) as u8;
            }
        }
    }
    RgbImage { size, data }
}

#[test]
fn jigsaw_patches_map_back_to_source_pixels() {
    let img = test_image(96);
    for seed in 0..20 {
        let j = jigsaw(&img, 28, None, &mut pirlkit::rng::stream(seed, "t", 0, 0));
        let mut p = j.perm;
        p.sort();
        assert_eq!(p, [0, 1, 2, 3, 4, 5, 6, 7, 8], "not a permutation");
        for (k, patch) in j.patches.iter().enumerate() {
            let cell = j.perm[k];
            let (y0, x0) = j.offsets[cell];
            // The crop lies inside its cell of the 3x3 grid.
            assert!(y0 >= (cell / 3) * 32 && y0 + 28 <= (cell / 3 + 1) * 32);
            assert!(x0 >= (cell % 3) * 32 && x0 + 28 <= (cell % 3 + 1) * 32);
            for c in 0..3 {
                for y in 0..28 {
                    for x in 0..28 {
                        let want = img.px(y0 + y, x0 + x, c) as f32 / 255.0;
                        assert_eq!(
                            patch.data[(c * 28 + y) * 28 + x],
                            want,
                            "seed {seed} patch {k}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn jigsaw_permutations_vary_and_are_seeded() {
    let img = test_image(48);
    let perms: Vec<[usize; 9]> = (0..30)
        .map(|s| jigsaw(&img, 14, None, &mut pirlkit::rng::stream(s, "t", 0, 0)).perm)
        .collect();
    let mut distinct = perms.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() > 25,
        "only {} distinct permutations of 30",
        distinct.len()
    );
    assert_eq!(
        perms[3],
        jigsaw(&img, 14, None, &mut pirlkit::rng::stream(3, "t", 0, 0)).perm
    );
}

#[test]
fn colour_jitter_changes_patches_but_stays_in_range() {
    let img = test_image(48);
    let cfg = AugmentConfig {
        jitter_p: 1.0,
        ..Default::default()
    };
    let j = jigsaw(
        &img,
        14,
        Some(&cfg),
        &mut pirlkit::rng::stream(1, "t", 0, 0),
    );
    let plain = jigsaw(&img, 14, None, &mut pirlkit::rng::stream(1, "t", 0, 0));
    assert!(
        j.patches
            .iter()
            .flat_map(|p| &p.data)
            .all(|v| (0.0..=1.0).contains(v))
    );
    assert_ne!(j.patches[0].data, plain.patches[0].data);
}

#[test]
fn rotation_by_four_quarter_turns_is_identity() {
    let img = test_image(32);
    let v = augment::resize_full(&img, 32);
    let r1 = augment::rotate90(&v, 1);
    assert_ne!(r1.data, v.data);
    // One quarter turn counter-clockwise moves the top-right pixel to the top-left.
    assert_eq!(r1.data[0], v.data[31]);
    let r4 = augment::rotate90(&augment::rotate90(&r1, 2), 1);
    assert_eq!(r4.data, v.data);
}

#[test]
fn full_resize_at_same_size_is_exact() {
    let img = test_image(32);
    let v = augment::resize_full(&img, 32);
    for (i, want) in img.data.iter().enumerate() {
        let (p, c) = (i / 3, i % 3);
        assert!((v.data[c * 1024 + p] - *want as f32 / 255.0).abs() < 1e-6);
    }
}
