//! Round trips through `face_perception_node` over the real middleware:
//! a real photo in, its FaceArray (header unchanged, expected labels) out;
//! annotated and saliency images only while somebody subscribes.

mod ros_common;
use r2r::face_perception_msgs::msg::FaceArray;
use r2r::sensor_msgs::msg::Image;
use r2r::QosProfile;
use ros_common::*;
use std::time::Duration;

/// Limit for the first answer (node start-up and DDS discovery included).
const FIRST_ANSWER: Duration = Duration::from_secs(20);

#[test]
fn astronaut_photo_round_trip() {
    let node = NodeProcess::start("/rt", &[]);
    let test = TestNode::new("round_trip_probe");
    let faces = collect::<FaceArray>(&test, "/rt/faces", QosProfile::default().reliable());
    let diagnostics = collect::<r2r::diagnostic_msgs::msg::DiagnosticArray>(
        &test,
        "/diagnostics",
        QosProfile::default(),
    );
    let publisher = test
        .node
        .lock()
        .unwrap()
        .create_publisher::<Image>("/rt/image", QosProfile::sensor_data())
        .expect("publisher");

    // Publish until the node answers; every frame has its own stamp.
    let mut sent = Vec::new();
    let answered = wait_for(FIRST_ANSWER, || {
        let msg = astronaut_now();
        publisher.publish(&msg).expect("publish");
        sent.push(msg.header);
        std::thread::sleep(Duration::from_millis(100));
        !faces.lock().unwrap().is_empty()
    });
    assert!(
        answered,
        "no FaceArray within {FIRST_ANSWER:?}; node log:\n{}",
        node.log_text()
    );

    let received = faces.lock().unwrap();
    let (_, first) = &received[0];
    assert!(
        sent.contains(&first.header),
        "header {:?} is not one that was sent",
        first.header
    );
    assert_eq!(first.header.frame_id, "camera_optical");
    assert_eq!(first.faces.len(), 1, "{:?}", first.faces);
    let face = &first.faces[0];
    assert_eq!(face.gender.label, "female", "{:?}", face.gender);
    assert_eq!(face.emotion.label, "happy", "{:?}", face.emotion);
    assert_eq!(face.emotion.labels.len(), 7);
    assert!((face.emotion.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-3);
    assert!(face.age_years.is_nan(), "age is off by default");
    // The astronaut's face, from tests/fixtures/models/detector.json (found at
    // full resolution): (181.8, 58.1)-(269.7, 178.0). The node detects on a
    // 320 px downscale by default, so the whole-pixel ROI must overlap it with
    // IoU >= 0.85.
    let roi = &face.roi;
    let expected = [181.76f32, 58.06, 269.68, 177.97];
    let got = [
        roi.x_offset as f32,
        roi.y_offset as f32,
        (roi.x_offset + roi.width) as f32,
        (roi.y_offset + roi.height) as f32,
    ];
    let inter = (got[2].min(expected[2]) - got[0].max(expected[0])).max(0.0)
        * (got[3].min(expected[3]) - got[1].max(expected[1])).max(0.0);
    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let iou = inter / (area(&got) + area(&expected) - inter);
    assert!(
        iou >= 0.85,
        "roi {roi:?}: IoU {iou:.3} with the expected box"
    );
    // CenterFace's five landmarks, named, inside the box, the subject's
    // right eye nearer the image's left edge and above the mouth.
    assert_eq!(
        face.landmark_names,
        [
            "right_eye",
            "left_eye",
            "nose_tip",
            "mouth_right",
            "mouth_left"
        ],
    );
    assert_eq!(face.landmarks.len(), 5);
    for (name, p) in face.landmark_names.iter().zip(&face.landmarks) {
        assert!(
            (got[0]..=got[2]).contains(&p.x) && (got[1]..=got[3]).contains(&p.y) && p.z == 0.0,
            "{name} at {p:?} outside the box {got:?}"
        );
    }
    let (right_eye, left_eye, mouth_right) =
        (&face.landmarks[0], &face.landmarks[1], &face.landmarks[3]);
    assert!(right_eye.x < left_eye.x, "{right_eye:?} {left_eye:?}");
    assert!(right_eye.y < mouth_right.y, "{right_eye:?} {mouth_right:?}");
    drop(received);

    // Nobody subscribed to images so far: none were made.
    assert!(
        wait_for(Duration::from_secs(3), || !diagnostics
            .lock()
            .unwrap()
            .is_empty()),
        "no /diagnostics"
    );
    let published = |d: &r2r::diagnostic_msgs::msg::DiagnosticArray| -> u64 {
        d.status[0]
            .values
            .iter()
            .find(|kv| kv.key == "images_published")
            .map(|kv| kv.value.parse().unwrap())
            .unwrap()
    };
    assert_eq!(published(&diagnostics.lock().unwrap().last().unwrap().1), 0);

    // Subscribe to the image topics: images come, with the input's header and size.
    let annotated = collect::<Image>(&test, "/rt/annotated_image", QosProfile::default());
    let saliency_emotion = collect::<Image>(&test, "/rt/saliency/emotion", QosProfile::default());
    let saliency_gender = collect::<Image>(&test, "/rt/saliency/gender", QosProfile::default());
    let mut image_stamps = Vec::new();
    let got_all = wait_for(FIRST_ANSWER, || {
        let msg = astronaut_now();
        image_stamps.push(msg.header.stamp.clone());
        publisher.publish(&msg).expect("publish");
        std::thread::sleep(Duration::from_millis(100));
        !annotated.lock().unwrap().is_empty()
            && !saliency_emotion.lock().unwrap().is_empty()
            && !saliency_gender.lock().unwrap().is_empty()
    });
    assert!(
        got_all,
        "image topics silent; node log:\n{}",
        node.log_text()
    );
    for store in [&annotated, &saliency_emotion, &saliency_gender] {
        let images = store.lock().unwrap();
        let (_, img) = images.last().unwrap();
        assert!(
            image_stamps.contains(&img.header.stamp),
            "stamp {:?} was not sent",
            img.header.stamp
        );
        assert_eq!(img.header.frame_id, "camera_optical");
        assert_eq!(
            (img.width, img.height, img.encoding.as_str()),
            (512, 512, "rgb8")
        );
        assert_eq!(img.data.len(), 512 * 512 * 3);
    }
}
