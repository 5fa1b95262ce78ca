//! Placeholder while the node is written: answers every image with an empty FaceArray.
use futures::StreamExt;
use r2r::QosProfile;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = r2r::Context::create()?;
    let mut node = r2r::Node::create(ctx, "face_perception", "")?;
    let mut sub = node.subscribe::<r2r::sensor_msgs::msg::Image>("image", QosProfile::sensor_data().keep_last(1))?;
    let publisher = node.create_publisher::<r2r::face_perception_msgs::msg::FaceArray>("faces", QosProfile::default())?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.spawn(async move {
        while let Some(img) = sub.next().await {
            let _ = publisher.publish(&r2r::face_perception_msgs::msg::FaceArray { header: img.header, faces: vec![] });
        }
    });
    loop {
        node.spin_once(std::time::Duration::from_millis(50));
    }
}
