//! The int8 CenterFace's byte input (`detect::byte_input`): the rewritten
//! graph, fed the frame's bytes in 2 x 2 blocks, gives exactly the outputs of
//! the model file fed float planes (tolerance 0: the int8 products and sums
//! are the same, only their order in memory changes), on real frames at the
//! default detection size and at full size; other graphs are left alone.

use face_perception::detect::byte_input::{fill_blocks, rewrite, BLOCK_CHANNELS};
use face_perception::manifest::Manifest;
use face_perception::parallel::Cores;
use face_perception::runtime::{environment, session_from_memory};
use ndarray::Array4;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_bytes(name: &str) -> (Vec<u8>, String) {
    let manifest = Manifest::load(&repo().join("models")).unwrap_or_else(|e| panic!("{e}"));
    let entry = manifest.entry(name).unwrap_or_else(|e| panic!("{e}"));
    let bytes = manifest
        .read_verified(entry)
        .unwrap_or_else(|e| panic!("{e}"));
    (bytes, entry.input.name.clone())
}

fn session(model: &[u8]) -> Session {
    let env = environment().unwrap_or_else(|e| panic!("{e}"));
    session_from_memory(env, model, 1, &Cores::unpinned()).unwrap_or_else(|e| panic!("{e}"))
}

/// An RGB photo, cropped to `width` x `height` from its top-left corner.
fn photo(file: &str, width: u32, height: u32) -> Vec<u8> {
    let image = image::open(repo().join("tests/fixtures/core").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .to_rgb8();
    assert!(image.width() >= width && image.height() >= height);
    image::imageops::crop_imm(&image, 0, 0, width, height)
        .to_image()
        .into_raw()
}

/// All four outputs (heatmap, scale, offset, landmarks) of one run.
fn outputs(results: ort::Result<ort::session::SessionOutputs<'_>>) -> Vec<Vec<f32>> {
    let results = results.unwrap_or_else(|e| panic!("{e}"));
    results
        .iter()
        .map(|(_, value)| {
            value
                .try_extract_tensor::<f32>()
                .unwrap_or_else(|e| panic!("{e}"))
                .1
                .to_vec()
        })
        .collect()
}

#[test]
fn byte_input_gives_the_float_models_outputs_exactly() {
    let (model, input) = model_bytes("face_detector_centerface_int8");
    let rewritten = rewrite(&model, &input).expect("the int8 CenterFace is rewritten");
    let (mut planes_session, mut blocks_session) = (session(&model), session(&rewritten));
    // Detection size of a 640x480 frame (320x240 in a 320x256 input, the
    // rest black) and a whole 640x480 frame with five faces.
    for (file, width, height, in_w, in_h) in [
        ("frame_640x480_2faces.jpg", 320, 240, 320, 256),
        ("frame_640x480_5faces.jpg", 640, 480, 640, 480),
    ] {
        let rgb = photo(file, width, height);
        let (w, h) = (width as usize, height as usize);
        let mut planes = Array4::<f32>::zeros((1, 3, in_h, in_w));
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    planes[[0, c, y, x]] = f32::from(rgb[(y * w + x) * 3 + c]);
                }
            }
        }
        let mut blocks = Array4::<u8>::zeros((1, in_h / 2, in_w / 2, BLOCK_CHANNELS));
        fill_blocks(
            &rgb,
            w,
            blocks.as_slice_mut().expect("contiguous"),
            in_w / 2,
        );
        let planes = TensorRef::from_array_view(planes.view()).unwrap_or_else(|e| panic!("{e}"));
        let blocks = TensorRef::from_array_view(blocks.view()).unwrap_or_else(|e| panic!("{e}"));
        let name = input.as_str();
        let expected = outputs(planes_session.run(ort::inputs![name => planes]));
        let actual = outputs(blocks_session.run(ort::inputs![name => blocks]));
        assert_eq!(expected.len(), 4, "{file}: four outputs");
        let heat = expected[0].iter().cloned().fold(0.0f32, f32::max);
        assert!(heat > 0.5, "{file}: a face in the heatmap (max {heat})");
        for (k, (e, a)) in expected.iter().zip(&actual).enumerate() {
            assert_eq!(e.len(), a.len(), "{file}: output {k} size");
            let worst = e
                .iter()
                .zip(a)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert_eq!(worst, 0.0, "{file}: output {k} differs by up to {worst}");
        }
    }
}

#[test]
fn only_the_int8_centerface_is_rewritten() {
    for name in [
        "face_detector_centerface",
        "face_detector",
        "gender_int8",
        "emotion_int8",
        "gender",
    ] {
        let (model, input) = model_bytes(name);
        assert!(rewrite(&model, &input).is_none(), "{name} left alone");
    }
    let (model, _) = model_bytes("face_detector_centerface_int8");
    assert!(
        rewrite(&model, "no_such_input").is_none(),
        "only the named input is rewritten"
    );
    assert!(rewrite(b"not a model", "input").is_none());
}
