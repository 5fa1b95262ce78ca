use face_perception::classify::ClassifierTask;
use face_perception::config::{Config, RawConfig};
use face_perception::frame::{Frame, FrameLimits};
use face_perception::pipeline::Pipeline;
use std::time::Instant;

fn main() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(repo.join("tests/fixtures/core/frame_640x480_5faces.jpg")).unwrap();
    let f = Frame::from_compressed("jpeg", &bytes, &FrameLimits::default()).unwrap();
    let precision = std::env::args().nth(1).unwrap_or("int8".into());
    let cfg = Config::from_raw(RawConfig {
        models_dir: repo.join("models").to_string_lossy().into_owned(),
        intra_op_threads: 2,
        precision,
        ..RawConfig::default()
    })
    .unwrap();
    let mut p = Pipeline::new(&cfg).unwrap();
    let faces = p.detect(&f).unwrap();
    for round in 0..8 {
        let mut ts = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            p.classify(&f, &faces).unwrap();
            ts.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "round {round}: median {:.3} p10 {:.3} p90 {:.3} instances g{} e{}",
            ts[250],
            ts[50],
            ts[450],
            p.classifier_instances(ClassifierTask::Gender),
            p.classifier_instances(ClassifierTask::Emotion)
        );
    }
}
