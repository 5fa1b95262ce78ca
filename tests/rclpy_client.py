"""Cross-client check for face_perception_node (run by tests/ros_rclpy.rs).

An rclpy node publishes a raw image (bytes from a file, no numpy) with fresh
stamps and must receive every output topic of the node: faces, annotated_image,
saliency/emotion, saliency/gender and the node's status on /diagnostics, each
image output carrying the header of a frame it sent. Prints what it got; exits
0 when everything arrived, 1 otherwise.

    rclpy_client.py --namespace /ns --raw image.rgb --width 512 --height 512
"""
import argparse
import sys
import time

import rclpy
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from diagnostic_msgs.msg import DiagnosticArray
from face_perception_msgs.msg import FaceArray
from sensor_msgs.msg import Image

IMAGE_TOPICS = ('annotated_image', 'saliency/emotion', 'saliency/gender')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--namespace', required=True)
    parser.add_argument('--raw', required=True, help='packed rgb8 pixels')
    parser.add_argument('--width', type=int, required=True)
    parser.add_argument('--height', type=int, required=True)
    parser.add_argument('--timeout', type=float, default=30.0)
    parser.add_argument('--rate', type=float, default=5.0, help='frames per second')
    args = parser.parse_args()
    ns = args.namespace.rstrip('/')

    with open(args.raw, 'rb') as f:
        pixels = f.read()
    if len(pixels) != args.width * args.height * 3:
        print(f'{args.raw}: {len(pixels)} bytes, expected {args.width}x{args.height}x3', file=sys.stderr)
        return 2

    rclpy.init()
    node = rclpy.create_node('rclpy_face_perception_client')
    sent = set()
    got = {}

    def stamp_key(header):
        return (header.stamp.sec, header.stamp.nanosec)

    def on_faces(msg):
        if stamp_key(msg.header) in sent and 'faces' not in got:
            got['faces'] = (f'{len(msg.faces)} faces: ' + ', '.join(
                f'{f.gender.label}/{f.emotion.label} {f.detection_confidence:.2f} '
                f'roi ({f.roi.x_offset},{f.roi.y_offset} {f.roi.width}x{f.roi.height})' for f in msg.faces))

    def on_image(topic):
        def callback(msg):
            if stamp_key(msg.header) in sent and topic not in got:
                ok = msg.encoding == 'rgb8' and len(msg.data) == msg.height * msg.step
                got[topic] = (f'{msg.width}x{msg.height} {msg.encoding} step {msg.step}'
                              + ('' if ok else ' (INCONSISTENT)'))
        return callback

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name.startswith(f'{ns}/face_perception:') and '/diagnostics' not in got:
                values = {kv.key: kv.value for kv in status.values}
                got['/diagnostics'] = (f'level {int.from_bytes(status.level, "little") if isinstance(status.level, bytes) else status.level} '
                                       f'"{status.message}", processed {values.get("frames_processed")}, '
                                       f'output {values.get("output_rate_hz")} Hz')

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    subscriptions = [node.create_subscription(FaceArray, f'{ns}/faces', on_faces, reliable)]
    subscriptions += [node.create_subscription(Image, f'{ns}/{t}', on_image(t), reliable) for t in IMAGE_TOPICS]
    subscriptions.append(node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, reliable))
    publisher = node.create_publisher(Image, f'{ns}/image', qos_profile_sensor_data)

    frame = Image()
    frame.header.frame_id = 'camera_optical'
    frame.width, frame.height = args.width, args.height
    frame.encoding, frame.is_bigendian, frame.step = 'rgb8', 0, args.width * 3
    frame.data = pixels

    wanted = ('faces',) + IMAGE_TOPICS + ('/diagnostics',)
    deadline = time.monotonic() + args.timeout
    next_frame = time.monotonic()
    while time.monotonic() < deadline and not all(t in got for t in wanted):
        if time.monotonic() >= next_frame:
            now = time.time_ns()
            frame.header.stamp.sec, frame.header.stamp.nanosec = now // 1_000_000_000, now % 1_000_000_000
            sent.add(stamp_key(frame.header))
            publisher.publish(frame)
            next_frame += 1.0 / args.rate
        rclpy.spin_once(node, timeout_sec=0.02)

    print(f'rclpy client: {len(sent)} frames sent')
    for topic in wanted:
        print(f'  {topic}: {got.get(topic, "NOTHING RECEIVED")}')
    missing = [t for t in wanted if t not in got]
    node.destroy_node()
    rclpy.shutdown()
    if missing:
        print(f'missing within {args.timeout} s: {", ".join(missing)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
