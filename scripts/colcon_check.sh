#!/usr/bin/env bash
# Builds face_perception and face_perception_msgs with colcon in a scratch
# workspace laid out as a robot integrator has it (this repository cloned
# into src/), against the sourced ROS 2 (here the PyPI prefix of
# scripts/env.sh; on a robot /opt/ros/jazzy), then checks the install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ws="$root/.cache/colcon"
mkdir -p "$ws/src"
ln -sfn "$root" "$ws/src/face_perception"
cd "$ws"
echo "colcon: building in $ws (log: $ws/colcon.log)"
# The interface package lives in a sub-folder of the package at the root,
# which colcon does not crawl into: name both base paths.
# colcon-ros-cargo builds in <build-base>/face_perception (its --target-dir);
# pointing that at the source tree's target/ reuses what `make test` compiled.
mkdir -p "$ws/build"
[ -L "$ws/build/face_perception" ] || { rm -rf "$ws/build/face_perception"; ln -s "$root/target" "$ws/build/face_perception"; }
if ! colcon build \
    --base-paths src/face_perception src/face_perception/interfaces \
    --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$(command -v python)" \
    >"$ws/colcon.log" 2>&1; then
  tail -n 40 "$ws/colcon.log"
  echo "colcon: FAILED"
  exit 1
fi
grep -E "^(Finished|Summary)" "$ws/colcon.log" || true
for f in install/face_perception/lib/face_perception/face_perception_node \
  install/face_perception/share/face_perception/package.xml \
  install/face_perception/share/face_perception/launch/face_perception.launch.py \
  install/face_perception/share/face_perception/config/params.yaml \
  install/face_perception/share/face_perception/models/manifest.toml \
  install/face_perception_msgs/share/face_perception_msgs/msg/FaceArray.msg; do
  [ -e "$f" ] || { echo "colcon: missing from the install: $f"; exit 1; }
done
echo "colcon: OK (both packages built and installed under $ws/install)"
