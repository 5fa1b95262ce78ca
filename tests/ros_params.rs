//! Parameters through the real parameter services of `face_perception_node`
//! (`<ns>/face_perception/{set,get,list,describe}_parameters`): valid changes
//! take effect from the next frame, invalid ones are refused with a reason and
//! the old value kept; `--params-file` and `-p` at start-up.

mod ros_common;
use r2r::face_perception_msgs::msg::FaceArray;
use r2r::sensor_msgs::msg::Image;
use r2r::{ParameterValue, QosProfile};
use ros_common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limit for the first answer (node start-up and DDS discovery included).
const FIRST_ANSWER: Duration = Duration::from_secs(20);
/// Limit for the answer to one frame once the node runs.
const ANSWER: Duration = Duration::from_secs(5);
const ASTRONAUT: &str = "tests/fixtures/models/photos/astronaut.jpg";
const GROUP: &str = "tests/fixtures/models/photos/group.jpg";

/// The node under test with a probe node talking to it.
struct Session {
    node: NodeProcess,
    test: TestNode,
    namespace: String,
    faces: Arc<Mutex<Vec<(Instant, FaceArray)>>>,
    publisher: r2r::Publisher<Image>,
}

impl Session {
    fn start(namespace: &str, ros_args: &[&str]) -> Session {
        large_message_transport();
        let node = NodeProcess::start(namespace, ros_args);
        let test = TestNode::new(&format!("{}_probe", namespace.trim_start_matches('/')));
        let faces = collect::<FaceArray>(
            &test,
            &format!("{namespace}/faces"),
            QosProfile::default().reliable(),
        );
        let publisher = test
            .node
            .lock()
            .unwrap()
            .create_publisher::<Image>(
                &format!("{namespace}/image"),
                QosProfile::default().reliable(),
            )
            .expect("publisher");
        let session = Session {
            node,
            test,
            namespace: namespace.to_string(),
            faces,
            publisher,
        };
        session.answer_within(ASTRONAUT, FIRST_ANSWER);
        session
    }

    fn params(&self) -> ParamClient<'_> {
        ParamClient::new(&self.test, &self.namespace)
    }

    /// Publishes `photo` with a fresh stamp (again, with a new stamp, if no
    /// answer came within a second) and returns the FaceArray answering it.
    fn answer_within(&self, photo: &str, limit: Duration) -> FaceArray {
        let started = Instant::now();
        let mut msg = photo_message(photo, "camera_optical", 0, 0);
        while started.elapsed() < limit {
            let (sec, nanosec) = now_stamp();
            msg.header.stamp = r2r::builtin_interfaces::msg::Time { sec, nanosec };
            self.publisher.publish(&msg).expect("publish");
            let key = stamp_key(&msg.header.stamp);
            let mut answer = None;
            wait_for(Duration::from_secs(1), || {
                answer = self
                    .faces
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(_, f)| stamp_key(&f.header.stamp) == key)
                    .map(|(_, f)| f.clone());
                answer.is_some()
            });
            if let Some(answer) = answer {
                return answer;
            }
        }
        panic!(
            "no answer to {photo} within {limit:?}; node log:\n{}",
            self.node.log_text()
        );
    }

    /// The answer to the next frame of `photo`.
    fn answer(&self, photo: &str) -> FaceArray {
        self.answer_within(photo, ANSWER)
    }

    fn get(&self, name: &str) -> ParameterValue {
        self.params().get(&[name]).remove(0)
    }

    fn set_ok(&self, name: &str, value: ParameterValue) {
        let (ok, reason) = self.params().set(name, value.clone());
        assert!(ok, "{name} := {value:?} refused: {reason}");
        assert_eq!(self.get(name), value, "get_parameters after setting {name}");
    }
}

#[test]
fn valid_changes_take_effect_from_the_next_frame() {
    let session = Session::start("/params_live", &[]);

    let baseline = session.answer(GROUP);
    eprintln!(
        "group.jpg at the defaults: {} faces, scores {:?}",
        baseline.faces.len(),
        baseline
            .faces
            .iter()
            .map(|f| f.detection_confidence)
            .collect::<Vec<_>>()
    );
    assert!(
        baseline.faces.len() >= 2,
        "group.jpg shows several faces: {:?}",
        baseline.faces
    );
    assert!(baseline
        .faces
        .iter()
        .all(|f| !f.emotion.label.is_empty() && !f.gender.label.is_empty()));

    // enable_emotion: false -> no emotion in the next frame; gender still there.
    session.set_ok("enable_emotion", ParameterValue::Bool(false));
    let next = session.answer(GROUP);
    assert_eq!(next.faces.len(), baseline.faces.len());
    for face in &next.faces {
        assert!(
            face.emotion.label.is_empty() && face.emotion.probabilities.is_empty(),
            "{:?}",
            face.emotion
        );
        assert!(!face.gender.label.is_empty(), "{:?}", face.gender);
    }
    session.set_ok("enable_emotion", ParameterValue::Bool(true));
    let next = session.answer(GROUP);
    assert!(
        next.faces.iter().all(|f| !f.emotion.label.is_empty()),
        "emotion back on: {:?}",
        next.faces
    );

    // max_faces: 1 -> the highest-scoring face only.
    session.set_ok("max_faces", ParameterValue::Integer(1));
    let next = session.answer(GROUP);
    assert_eq!(next.faces.len(), 1, "{:?}", next.faces);
    let best = baseline
        .faces
        .iter()
        .map(|f| f.detection_confidence)
        .fold(f32::MIN, f32::max);
    assert!(
        (next.faces[0].detection_confidence - best).abs() < 1e-3,
        "kept {:?}, best score {best}",
        next.faces[0]
    );
    session.set_ok("max_faces", ParameterValue::Integer(16));
    assert_eq!(session.answer(GROUP).faces.len(), baseline.faces.len());

    // score_threshold between the lowest and the highest score: fewer faces,
    // all of them above the threshold.
    let worst = baseline
        .faces
        .iter()
        .map(|f| f.detection_confidence)
        .fold(f32::MAX, f32::min);
    assert!(
        best - worst > 0.01,
        "scores too close to split: {worst}..{best}"
    );
    let threshold = f64::from(worst + best) / 2.0;
    session.set_ok("score_threshold", ParameterValue::Double(threshold));
    let next = session.answer(GROUP);
    assert!(
        !next.faces.is_empty() && next.faces.len() < baseline.faces.len(),
        "{:?}",
        next.faces
    );
    assert!(
        next.faces
            .iter()
            .all(|f| f64::from(f.detection_confidence) >= threshold),
        "{:?}",
        next.faces
    );
    session.set_ok("score_threshold", ParameterValue::Double(0.5));
}

#[test]
fn invalid_changes_are_refused_with_a_reason_and_the_old_value_kept() {
    let session = Session::start("/params_invalid", &[]);
    let params = session.params();
    let cases = [
        ("score_threshold", ParameterValue::Double(1.5)),
        ("score_threshold", ParameterValue::Double(0.0)),
        ("max_faces", ParameterValue::String("many".into())),
        ("max_faces", ParameterValue::Integer(0)),
        ("detector", ParameterValue::String("foo".into())),
        (
            "input_transport",
            ParameterValue::String("compressed".into()),
        ),
        ("max_frame_age", ParameterValue::Double(-1.0)),
        ("saliency_method", ParameterValue::String("magic".into())),
        ("saliency_max_rate", ParameterValue::Double(-1.0)),
        ("enable_gender", ParameterValue::String("yes".into())),
        (
            "models_dir",
            ParameterValue::String("/nonexistent/face_perception_models".into()),
        ),
    ];
    for (name, value) in cases {
        let before = session.get(name);
        let (ok, reason) = params.set(name, value.clone());
        eprintln!("{name} := {value:?}: successful {ok}, reason {reason:?}");
        assert!(!ok, "{name} := {value:?} was accepted");
        assert!(
            !reason.trim().is_empty(),
            "{name} := {value:?} refused without a reason"
        );
        assert_eq!(session.get(name), before, "{name} changed although refused");
    }
    // Unknown parameters are refused too.
    let (ok, reason) = params.set("no_such_parameter", ParameterValue::Bool(true));
    assert!(
        !ok && !reason.is_empty(),
        "no_such_parameter: successful {ok}, reason {reason:?}"
    );

    // The node still works with its old settings.
    let answer = session.answer(ASTRONAUT);
    assert_eq!(answer.faces.len(), 1, "{:?}", answer.faces);
    assert!(!answer.faces[0].emotion.label.is_empty());
    assert!(
        session.node.log_text().contains("ready"),
        "{}",
        session.node.log_text()
    );
}

/// `ParameterValue` as written in a parameters file, for comparing with config/params.yaml.
fn equals_file_value(value: &ParameterValue, written: &str) -> bool {
    match value {
        ParameterValue::Bool(b) => written == b.to_string(),
        ParameterValue::Integer(i) => written.parse::<i64>() == Ok(*i),
        ParameterValue::Double(d) => written
            .parse::<f64>()
            .is_ok_and(|w| (w - d).abs() <= 1e-9 * d.abs().max(1.0)),
        ParameterValue::String(s) => written == s,
        _ => false,
    }
}

#[test]
fn every_parameter_is_listed_described_and_at_the_default_of_config_params_yaml() {
    let session = Session::start("/params_list", &[]);
    let params = session.params();
    let mut listed = params.list();
    listed.sort();
    let mut declared = declared_parameter_names();
    declared.sort();
    assert_eq!(
        listed, declared,
        "list_parameters vs DESCRIPTIONS in params.rs"
    );

    for descriptor in params.describe(&listed) {
        assert!(
            !descriptor.description.trim().is_empty(),
            "{} has no description",
            descriptor.name
        );
    }

    let text =
        std::fs::read_to_string(repo_path("config/params.yaml")).expect("config/params.yaml");
    let entries = params_file_entries(&text).expect("config/params.yaml");
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    let values = params.get(&names);
    let mismatches: Vec<String> = entries
        .iter()
        .zip(&values)
        .filter(|((_, written), value)| !equals_file_value(value, written))
        .map(|((name, written), value)| format!("{name}: file {written}, node default {value:?}"))
        .collect();
    assert!(
        mismatches.is_empty(),
        "config/params.yaml differs from the node's defaults: {mismatches:#?}"
    );
}

#[test]
fn params_file_at_start_up() {
    // The shipped file: the node starts, takes every parameter, warns about none.
    let shipped = repo_path("config/params.yaml");
    let session = Session::start(
        "/params_file_shipped",
        &["--params-file", shipped.to_str().expect("utf-8 path")],
    );
    let log = session.node.log_text();
    assert!(
        !log.contains("keeping the default") && !log.contains("unknown parameter"),
        "{log}"
    );
    assert_eq!(session.answer(ASTRONAUT).faces.len(), 1);
    drop(session);

    // A file with other values, addressed to the node by its full name: applied.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("params.yaml");
    std::fs::write(
        &file,
        "/params_file_custom/face_perception:\n  ros__parameters:\n    max_faces: 1\n    enable_emotion: false\n    score_threshold: 0.6\n",
    )
    .expect("params file");
    let session = Session::start(
        "/params_file_custom",
        &["--params-file", file.to_str().expect("utf-8 path")],
    );
    assert_eq!(session.get("max_faces"), ParameterValue::Integer(1));
    assert_eq!(session.get("enable_emotion"), ParameterValue::Bool(false));
    assert_eq!(session.get("score_threshold"), ParameterValue::Double(0.6));
    let answer = session.answer(GROUP);
    assert_eq!(answer.faces.len(), 1, "{:?}", answer.faces);
    assert!(
        answer.faces[0].emotion.label.is_empty(),
        "{:?}",
        answer.faces[0].emotion
    );
}

#[test]
fn invalid_start_up_value_is_refused_with_a_log_line_and_the_default_kept() {
    let session = Session::start("/params_bad_start", &["-p", "score_threshold:=7.0"]);
    assert_eq!(session.get("score_threshold"), ParameterValue::Double(0.5));
    let log = session.node.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("score_threshold"))
        .unwrap_or_else(|| panic!("no log line about score_threshold:\n{log}"));
    eprintln!("refusal logged: {line}");
    assert!(line.contains("ERROR") || line.contains("WARN"), "{line}");
    assert!(node_alive(&session), "node exited:\n{log}");
    assert_eq!(session.answer(ASTRONAUT).faces.len(), 1);
}

fn node_alive(session: &Session) -> bool {
    // `try_wait` needs `&mut`; /proc tells the same without it.
    std::path::Path::new(&format!("/proc/{}", session.node.child.id())).exists()
}

/// Regression test: a double parameter stays a double: an integer for it is
/// either refused or, if accepted, must not change the parameter's type. r2r's set_parameters handler stores the value as
/// sent in the node's parameter map, which describe_parameters and
/// get_parameter_types read, while get_parameters reads `NodeParams`.
#[test]
fn a_double_parameter_set_from_an_integer_stays_a_double() {
    use r2r::rcl_interfaces::msg::ParameterType;
    let session = Session::start("/params_types", &[]);
    let params = session.params();
    let (ok, reason) = params.set("score_threshold", ParameterValue::Integer(1));
    if !ok {
        // Refusing the type change (as rclcpp does) is fine too.
        assert!(!reason.is_empty());
        assert_eq!(session.get("score_threshold"), ParameterValue::Double(0.5));
    } else {
        assert_eq!(session.get("score_threshold"), ParameterValue::Double(1.0));
    }
    let descriptor = params.describe(&["score_threshold".to_string()]).remove(0);
    assert_eq!(
        descriptor.type_,
        ParameterType::PARAMETER_DOUBLE as u8,
        "describe_parameters reports type {} for score_threshold after an integer was accepted",
        descriptor.type_
    );
}
