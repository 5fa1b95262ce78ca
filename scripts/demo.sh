#!/usr/bin/env bash
# make demo: starts face_perception_node, plays the bundled 30 Hz image
# sequence into it, prints the faces of each frame, writes the last annotated
# and saliency images to demo_output/, and stops the node with SIGINT.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/demo_output"
seconds="${DEMO_SECONDS:-10}"
mkdir -p "$out"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( 100 + $$ % 100 ))}"
node_log="$out/node.log"
"$root/target/release/face_perception_node" --ros-args -r __ns:=/demo \
  --params-file "$root/config/params.yaml" >"$node_log" 2>&1 &
node_pid=$!
trap 'kill -INT $node_pid 2>/dev/null || true' EXIT
echo "demo: face_perception_node started (pid $node_pid, ROS_DOMAIN_ID $ROS_DOMAIN_ID, log $node_log)"
"$root/target/release/examples/demo_player" /demo "$out" "$seconds"
kill -INT "$node_pid"
wait "$node_pid" && echo "demo: node stopped cleanly (exit 0)" || echo "demo: node exited with $?"
trap - EXIT
echo "demo: last lines of the node log:"; tail -n 3 "$node_log"
echo "demo: images of the last frames are in $out"
