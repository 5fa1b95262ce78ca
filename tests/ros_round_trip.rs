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
    let diagnostics =
        collect::<r2r::diagnostic_msgs::msg::DiagnosticArray>(&test, "/diagnostics", QosProfile::default());
    let publisher = test
        .node
        .lock()
        .unwrap()
        .create_publisher::<Image>("/rt/image", QosProfile::sensor_data())
        .expect("publisher");

    // Publish until the node answers; every frame has its own stamp.
    let mut sent = Vec::new();
    let answered = wait_for(FIRST_ANSWER, || {
        let msg = photo_message("tests/fixtures/models/photos/astronaut.jpg", "camera_optical", 1000, sent.len() as u32);
        publisher.publish(&msg).expect("publish");
        sent.push(msg.header);
        std::thread::sleep(Duration::from_millis(100));
        !faces.lock().unwrap().is_empty()
    });
    assert!(answered, "no FaceArray within {FIRST_ANSWER:?}; node log:\n{}", node.log_text());

    let received = faces.lock().unwrap();
    let (_, first) = &received[0];
    assert!(sent.contains(&first.header), "header {:?} is not one that was sent", first.header);
    assert_eq!(first.header.frame_id, "camera_optical");
    assert_eq!(first.faces.len(), 1, "{:?}", first.faces);
    let face = &first.faces[0];
    assert_eq!(face.gender.label, "female", "{:?}", face.gender);
    assert_eq!(face.emotion.label, "happy", "{:?}", face.emotion);
    assert_eq!(face.emotion.labels.len(), 7);
    assert!((face.emotion.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-3);
    assert!(face.age_years.is_nan(), "age is off by default");
    // The astronaut's face, from tests/fixtures/models/detector.json: box
    // (181.8, 58.1)-(269.7, 178.0); whole-pixel ROI within 2 px.
    let roi = &face.roi;
    for (got, want) in [(roi.x_offset, 182), (roi.y_offset, 58), (roi.x_offset + roi.width, 270), (roi.y_offset + roi.height, 178)] {
        assert!((got as i64 - want).abs() <= 2, "roi {roi:?}");
    }
    drop(received);

    // Nobody subscribed to images so far: none were made.
    assert!(wait_for(Duration::from_secs(3), || !diagnostics.lock().unwrap().is_empty()), "no /diagnostics");
    let published = |d: &r2r::diagnostic_msgs::msg::DiagnosticArray| -> u64 {
        d.status[0].values.iter().find(|kv| kv.key == "images_published").map(|kv| kv.value.parse().unwrap()).unwrap()
    };
    assert_eq!(published(&diagnostics.lock().unwrap().last().unwrap().1), 0);

    // Subscribe to the image topics: images come, with the input's header and size.
    let annotated = collect::<Image>(&test, "/rt/annotated_image", QosProfile::default());
    let saliency_emotion = collect::<Image>(&test, "/rt/saliency/emotion", QosProfile::default());
    let saliency_gender = collect::<Image>(&test, "/rt/saliency/gender", QosProfile::default());
    let got_all = wait_for(FIRST_ANSWER, || {
        let msg = photo_message("tests/fixtures/models/photos/astronaut.jpg", "camera_optical", 2000, 7);
        publisher.publish(&msg).expect("publish");
        std::thread::sleep(Duration::from_millis(100));
        !annotated.lock().unwrap().is_empty()
            && !saliency_emotion.lock().unwrap().is_empty()
            && !saliency_gender.lock().unwrap().is_empty()
    });
    assert!(got_all, "image topics silent; node log:\n{}", node.log_text());
    for store in [&annotated, &saliency_emotion, &saliency_gender] {
        let images = store.lock().unwrap();
        let (_, img) = images.last().unwrap();
        assert_eq!(img.header.stamp.sec, 2000);
        assert_eq!(img.header.frame_id, "camera_optical");
        assert_eq!((img.width, img.height, img.encoding.as_str()), (512, 512, "rgb8"));
        assert_eq!(img.data.len(), 512 * 512 * 3);
    }
}
