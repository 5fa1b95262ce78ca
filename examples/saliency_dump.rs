//! Writes the generated saliency graphs of the shipped classifiers to a
//! directory, to inspect or profile them (e.g. with ONNX Runtime's profiler).
//!
//! Usage: saliency_dump OUT_DIR [METHOD...]   (methods: guided, plain, gradcam;
//! default guided and plain). Writes `<model>_<method>.onnx` for the emotion
//! and gender classifiers, and `<model>_forward.onnx` (the classifier itself).

use face_perception::manifest::Manifest;
use face_perception::saliency::{gradient_model_bytes, SaliencyMethod};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: saliency_dump OUT_DIR [METHOD...]")?,
    );
    let mut methods: Vec<SaliencyMethod> = args.map(|m| m.parse()).collect::<Result<_, _>>()?;
    if methods.is_empty() {
        methods = vec![SaliencyMethod::Guided, SaliencyMethod::Plain];
    }
    std::fs::create_dir_all(&out)?;
    let models = std::env::var_os("FACE_PERCEPTION_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    let manifest = Manifest::load(&models)?;
    for name in ["emotion", "gender"] {
        let bytes = manifest.read_verified(manifest.entry(name)?)?;
        std::fs::write(out.join(format!("{name}_forward.onnx")), &bytes)?;
        for &method in &methods {
            let graph = gradient_model_bytes(&bytes, None, method)?;
            let path = out.join(format!("{name}_{method}.onnx"));
            std::fs::write(&path, &graph)?;
            println!("{}: {} bytes", path.display(), graph.len());
        }
    }
    Ok(())
}
