//! Saliency rendering: the seed normalisation, the heat-map overlay, and the
//! astronaut photo's saliency through both classifiers (written to
//! `docs/images/` when `SALIENCY_WRITE_DOCS=1`, else to a temporary dir).

mod saliency_common;

use face_perception::manifest::ModelEntry;
use face_perception::saliency::render::{
    jet, map_from_gradient, overlay_heatmaps, overlay_heatmaps_on_chips, ChipPlacement, FaceRegion,
    MapScale, RgbImage, SaliencyMap,
};
use face_perception::saliency::{GradientModel, SaliencyMethod};
use image::imageops::FilterType;
use ndarray::{Array2, Array3, Array4, Axis};
use saliency_common::{model, ort_ready, repo};

#[test]
fn seed_normalisation_standardises_scales_and_clips() {
    // A ramp with one outlier: mean maps to 0.5, one std to 0.6, the outlier clips to 1.
    let mut g = Array3::<f32>::zeros((1, 4, 4));
    for (i, v) in g.iter_mut().enumerate() {
        *v = i as f32;
    }
    g[[0, 3, 3]] = 100.0;
    let map = map_from_gradient(g.view(), SaliencyMethod::Guided);
    assert_eq!(map.scale, MapScale::Signed);
    let values: Vec<f32> = g.iter().copied().collect();
    let mean = values.iter().sum::<f32>() / 16.0;
    let std = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 16.0).sqrt();
    for (&v, &m) in values.iter().zip(map.values.iter()) {
        let expected = ((v - mean) / (std + 1e-5) * 0.1 + 0.5).clamp(0.0, 1.0);
        assert!((m - expected).abs() < 1e-6, "{v}: {m} vs {expected}");
    }
    // One outlier among 100 zeros lies 9.9 standard deviations out: clipped to 1.
    let mut spike = Array3::<f32>::zeros((1, 10, 10));
    spike[[0, 4, 4]] = 1.0;
    let spike_map = map_from_gradient(spike.view(), SaliencyMethod::Guided);
    assert_eq!(spike_map.values[[4, 4]], 1.0);
    assert!((spike_map.values[[0, 0]] - 0.49).abs() < 1e-3);
    // Colour gradients are averaged over channels first.
    let rgb = Array3::from_shape_fn((3, 2, 2), |(c, y, x)| (c + y * 2 + x) as f32);
    let grey = map_from_gradient(rgb.view(), SaliencyMethod::Plain);
    let mono = map_from_gradient(
        rgb.mean_axis(Axis(0))
            .expect("mean")
            .insert_axis(Axis(0))
            .view(),
        SaliencyMethod::Plain,
    );
    assert_eq!(grey, mono);
    // Grad-CAM maps are scaled by their maximum.
    let cam = Array3::from_shape_fn((1, 2, 2), |(_, y, x)| (y * 2 + x) as f32);
    let cam_map = map_from_gradient(cam.view(), SaliencyMethod::GradCam);
    assert_eq!(
        cam_map.values,
        Array2::from_shape_vec((2, 2), vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]).expect("shape")
    );
}

#[test]
fn overlay_dims_the_frame_and_colours_each_face() {
    let (w, h) = (10usize, 8usize);
    let frame = RgbImage::new(w, h, vec![200; w * h * 3]).expect("frame");
    let hot = SaliencyMap {
        values: Array2::from_elem((4, 4), 1.0),
        scale: MapScale::NonNegative,
    };
    let cold = SaliencyMap {
        values: Array2::from_elem((4, 4), 0.5),
        scale: MapScale::Signed,
    };
    // The second face reaches beyond the frame's right and bottom edges.
    let faces = [
        (
            FaceRegion {
                x: 1,
                y: 1,
                width: 3,
                height: 3,
            },
            &hot,
        ),
        (
            FaceRegion {
                x: 7,
                y: 5,
                width: 6,
                height: 6,
            },
            &cold,
        ),
    ];
    let out = overlay_heatmaps(&frame, &faces).expect("overlay");
    assert_eq!((out.width, out.height, out.data.len()), (w, h, w * h * 3));
    let px = |x: usize, y: usize| &out.data[(y * w + x) * 3..(y * w + x) * 3 + 3];
    assert_eq!(px(0, 0), &[70, 70, 70], "outside faces: dimmed to 35 %");
    let blend = |c: u8, alpha: f32| ((1.0 - alpha) * 200.0 + alpha * f32::from(c)).round() as u8;
    let red = jet(1.0);
    assert_eq!(
        px(2, 2),
        &[blend(red[0], 0.8), blend(red[1], 0.8), blend(red[2], 0.8)],
        "hot face: jet red, 80 %"
    );
    let blue = jet(0.0);
    assert_eq!(
        px(9, 7),
        &[
            blend(blue[0], 0.2),
            blend(blue[1], 0.2),
            blend(blue[2], 0.2)
        ],
        "no-gradient face: jet blue, 20 %"
    );
    assert!(RgbImage::new(w, h, vec![0; 5]).is_err());
}

#[test]
fn resized_map_fills_the_face_region() {
    let map = SaliencyMap {
        values: Array2::from_shape_fn((2, 2), |(y, x)| (y * 2 + x) as f32 / 3.0),
        scale: MapScale::Signed,
    };
    let grey = map.grey_for_region(&FaceRegion {
        x: -5,
        y: 3,
        width: 7,
        height: 5,
    });
    assert_eq!((grey.width, grey.height, grey.data.len()), (7, 5, 35));
    assert_eq!(grey.data[0], 0);
    assert_eq!(grey.data[34], 255);
}

/// The astronaut's face box (CenterFace on `photos/astronaut.jpg`, tests/fixtures/models/detector.json).
const ASTRONAUT_FACE: [f32; 4] = [181.76, 58.06, 269.68, 177.97];

/// The astronaut's five landmarks (eyes, nose tip, mouth corners), same source.
const ASTRONAUT_LANDMARKS: [[f32; 2]; 5] = [
    [203.39, 101.64],
    [247.16, 104.76],
    [223.32, 125.18],
    [203.32, 142.39],
    [241.19, 144.72],
];
/// Side of a dlib-style face chip (padding 0.2) in inter-ocular distances:
/// the square crop that best matches the gender fixture's aligned chip of
/// this face (116 px for 43.9 px between the eyes).
const CHIP_SIDE_PER_EYE_DISTANCE: f32 = 2.65;

/// The region a model's crop is taken from: the face box grown by the
/// model's crop padding (emotion, as fer does), or for the dlib gender model
/// a square around the landmarks approximating its aligned chip.
fn face_region(name: &str, entry: &ModelEntry) -> FaceRegion {
    if name == "gender" {
        let n = ASTRONAUT_LANDMARKS.len() as f32;
        let cx = ASTRONAUT_LANDMARKS.iter().map(|p| p[0]).sum::<f32>() / n;
        let cy = ASTRONAUT_LANDMARKS.iter().map(|p| p[1]).sum::<f32>() / n;
        let [l, r] = [ASTRONAUT_LANDMARKS[0], ASTRONAUT_LANDMARKS[1]];
        let side =
            CHIP_SIDE_PER_EYE_DISTANCE * ((r[0] - l[0]).powi(2) + (r[1] - l[1]).powi(2)).sqrt();
        let (x, y) = (
            (cx - side / 2.0).round() as i64,
            (cy - side / 2.0).round() as i64,
        );
        return FaceRegion {
            x,
            y,
            width: side.round() as usize,
            height: side.round() as usize,
        };
    }
    let [x1, y1, x2, y2] = ASTRONAUT_FACE;
    let (bw, bh) = (x2 - x1, y2 - y1);
    let p = entry.preprocess.crop_padding;
    let (x, y) = ((x1 - p * bw).round() as i64, (y1 - p * bh).round() as i64);
    FaceRegion {
        x,
        y,
        width: (bw * (1.0 + 2.0 * p)).round() as usize,
        height: (bh * (1.0 + 2.0 * p)).round() as usize,
    }
}

/// The model input for one face: crop (edge pixels replicated outside the
/// photo), bilinear resize, colour conversion and the manifest's affine map.
fn face_input(photo: &image::RgbImage, region: &FaceRegion, entry: &ModelEntry) -> Array4<f32> {
    let crop = image::RgbImage::from_fn(region.width as u32, region.height as u32, |x, y| {
        let px = (region.x + i64::from(x)).clamp(0, i64::from(photo.width()) - 1) as u32;
        let py = (region.y + i64::from(y)).clamp(0, i64::from(photo.height()) - 1) as u32;
        *photo.get_pixel(px, py)
    });
    let (c, h, w) = (
        entry.input.shape[1] as usize,
        entry.input.shape[2] as u32,
        entry.input.shape[3] as u32,
    );
    let resized = image::imageops::resize(&crop, w, h, FilterType::Triangle);
    Array4::from_shape_fn((1, c, h as usize, w as usize), |(_, ci, y, x)| {
        let p = resized.get_pixel(x as u32, y as u32).0;
        let value = if c == 1 {
            0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
        } else {
            f32::from(p[ci])
        };
        (value - entry.preprocess.mean[ci]) * entry.preprocess.scale[ci]
    })
}

fn output_dir() -> std::path::PathBuf {
    if std::env::var("SALIENCY_WRITE_DOCS").is_ok_and(|v| v == "1") {
        repo().join("docs/images")
    } else {
        std::env::temp_dir().join("face_perception_saliency")
    }
}

#[test]
fn astronaut_saliency_concentrates_on_the_face() {
    if !ort_ready() {
        return;
    }
    let photo_path = repo().join("tests/fixtures/models/photos/astronaut.jpg");
    let Ok(photo) = image::open(&photo_path) else {
        eprintln!("skipping: {} missing", photo_path.display());
        return;
    };
    let photo = photo.to_rgb8();
    let frame = RgbImage::new(
        photo.width() as usize,
        photo.height() as usize,
        photo.as_raw().clone(),
    )
    .expect("frame");
    let dir = output_dir();
    std::fs::create_dir_all(&dir).expect("output dir");
    for name in ["emotion", "gender"] {
        let Some((bytes, entry)) = model(name) else {
            return;
        };
        for method in [SaliencyMethod::Guided, SaliencyMethod::GradCam] {
            let region = face_region(name, &entry);
            let input = face_input(&photo, &region, &entry);
            let mut model = GradientModel::new(&bytes, None, method, 2).expect("gradient model");
            let result = model.run(input.view(), None).expect("saliency");
            let class = result.classes[0];
            let label = entry.labels.get(class).cloned().unwrap_or_default();
            let map = map_from_gradient(result.maps.index_axis(Axis(0), 0), method);
            let energy = map.energy();
            // Energy in the inner half of the crop (eyes, nose, mouth) against the outer ring.
            let (h, w) = energy.dim();
            let (mut inner, mut n_inner, mut outer, mut n_outer) = (0f32, 0usize, 0f32, 0usize);
            for ((y, x), &e) in energy.indexed_iter() {
                if (h / 4..3 * h / 4).contains(&y) && (w / 4..3 * w / 4).contains(&x) {
                    inner += e;
                    n_inner += 1;
                } else {
                    outer += e;
                    n_outer += 1;
                }
            }
            let (inner, outer) = (inner / n_inner as f32, outer / n_outer as f32);
            eprintln!("{name} {method}: class {class} ({label}), mean energy inner {inner:.3}, outer ring {outer:.3}");
            let overlay = overlay_heatmaps(&frame, &[(region, &map)]).expect("overlay");
            let suffix = if method == SaliencyMethod::Guided {
                String::new()
            } else {
                format!("_{method}")
            };
            image::RgbImage::from_raw(overlay.width as u32, overlay.height as u32, overlay.data)
                .expect("overlay image")
                .save(dir.join(format!("saliency_{name}{suffix}_astronaut.png")))
                .expect("write overlay");
            let grey = map.grey_for_region(&region);
            image::GrayImage::from_raw(grey.width as u32, grey.height as u32, grey.data)
                .expect("map image")
                .save(dir.join(format!("saliency_{name}{suffix}_astronaut_face.png")))
                .expect("write face map");
            assert!(energy.iter().any(|&e| e > 0.1), "{name} {method}: flat map");
            assert!(
                inner > outer,
                "{name} {method}: saliency not concentrated on the face centre"
            );
        }
    }
    eprintln!("saliency images written to {}", dir.display());
}

#[test]
fn chip_overlay_follows_the_affine_placement() {
    let (w, h) = (12usize, 12usize);
    let frame = RgbImage::new(w, h, vec![100; w * h * 3]).expect("frame");
    // Energy 1 at chip pixel (0, 0) only.
    let mut values = Array2::<f32>::zeros((4, 4));
    values[[0, 0]] = 1.0;
    let map = SaliencyMap {
        values,
        scale: MapScale::NonNegative,
    };
    let px = |img: &RgbImage, x: usize, y: usize| {
        img.data[(y * w + x) * 3..(y * w + x) * 3 + 3].to_vec()
    };
    let hot = {
        let red = jet(1.0);
        red.iter()
            .map(|&c| (0.2 * 100.0 + 0.8 * f32::from(c)).round() as u8)
            .collect::<Vec<_>>()
    };
    let cold = {
        let blue = jet(0.0);
        blue.iter()
            .map(|&c| (0.8 * 100.0 + 0.2 * f32::from(c)).round() as u8)
            .collect::<Vec<_>>()
    };
    // Translation: chip (x, y) -> frame (x + 2, y + 3).
    let shifted = ChipPlacement {
        chip_to_frame: [[1.0, 0.0, 2.0], [0.0, 1.0, 3.0]],
    };
    let out = overlay_heatmaps_on_chips(&frame, &[(shifted, &map)]).expect("overlay");
    assert_eq!(px(&out, 2, 3), hot);
    assert_eq!(px(&out, 5, 6), cold);
    assert_eq!(px(&out, 6, 6), vec![35, 35, 35], "outside the chip: dimmed");
    // Rotation by 90 degrees: chip (x, y) -> frame (8 - y, 2 + x).
    let rotated = ChipPlacement {
        chip_to_frame: [[0.0, -1.0, 8.0], [1.0, 0.0, 2.0]],
    };
    let out = overlay_heatmaps_on_chips(&frame, &[(rotated, &map)]).expect("overlay");
    assert_eq!(px(&out, 8, 2), hot, "chip (0, 0)");
    assert_eq!(px(&out, 5, 5), cold, "chip (3, 3)");
    assert_eq!(px(&out, 9, 2), vec![35, 35, 35], "outside the chip: dimmed");
    // The raw map of a chip twice the size in frame pixels.
    let doubled = ChipPlacement {
        chip_to_frame: [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]],
    };
    let grey = map.grey_for_chip(&doubled);
    assert_eq!((grey.width, grey.height), (8, 8));
}
