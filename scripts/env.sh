# Source this file to get face_perception's build and run environment:
#     source scripts/env.sh
# It is what `make` uses too. Run `make setup` once first.
#
# Two cases:
# - a ROS 2 is already sourced (ROS_DISTRO set, e.g. /opt/ros/jazzy/setup.bash):
#   it is used as it is; only the interface package and ONNX Runtime are added;
# - no ROS 2 is sourced: the project-local ROS 2 Jazzy made of PyPI wheels in
#   .cache/venv is used, with its quirks handled here (library paths) and in
#   build.rs (link flags).
# Nothing here is needed by hand beyond sourcing this one file.

_fp_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export FACE_PERCEPTION_ROOT="$_fp_root"
_fp_venv="$_fp_root/.cache/venv"
_fp_msgs="$_fp_root/.cache/msgs/install"

_fp_prepend() { # var value
  local cur="${!1:-}"
  case ":$cur:" in *":$2:"*) ;; *) export "$1=$2${cur:+:$cur}" ;; esac
}

if [ -n "${ROS_DISTRO:-}" ] && [ -z "${FACE_PERCEPTION_PYPI_ROS:-}" ]; then
  export FACE_PERCEPTION_ROS_MODE=system
else
  export FACE_PERCEPTION_ROS_MODE=pypi
  export FACE_PERCEPTION_PYPI_ROS="$_fp_venv"
  export ROS_DISTRO=jazzy ROS_VERSION=2 ROS_PYTHON_VERSION=3
  export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
  _fp_prepend AMENT_PREFIX_PATH "$_fp_venv"
  _fp_prepend CMAKE_PREFIX_PATH "$_fp_venv"
  # Quirk 2: vendored libraries of the wheels live in site-packages/*.libs.
  for _d in "$_fp_venv"/lib/python3.*/site-packages/*.libs; do
    [ -d "$_d" ] && _fp_prepend LD_LIBRARY_PATH "$_d"
  done
  _fp_prepend LD_LIBRARY_PATH "$_fp_venv/lib"
  # Quirk 1: librmw_implementation.so is a link setup.sh puts in .cache/venv/lib.
  # Quirk 3: libpython for the *__rosidl_generator_py.so that librcl pulls in (build.rs links it).
  FACE_PERCEPTION_LIBPYTHON_DIR="$("$_fp_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))' 2>/dev/null)"
  export FACE_PERCEPTION_LIBPYTHON_DIR
  _fp_prepend PATH "$_fp_venv/bin"
fi

# The interface package, built by `make setup`.
if [ -d "$_fp_msgs" ]; then
  _fp_prepend AMENT_PREFIX_PATH "$_fp_msgs"
  _fp_prepend CMAKE_PREFIX_PATH "$_fp_msgs"
  _fp_prepend LD_LIBRARY_PATH "$_fp_msgs/lib"
  for _d in "$_fp_msgs"/lib/python3.*/site-packages; do
    [ -d "$_d" ] && _fp_prepend PYTHONPATH "$_d"
  done
fi

# r2r: generate bindings only for the interface packages the node uses.
export IDL_PACKAGE_FILTER="std_msgs;sensor_msgs;geometry_msgs;builtin_interfaces;diagnostic_msgs;rcl_interfaces;face_perception_msgs;action_msgs;unique_identifier_msgs;lifecycle_msgs;rosgraph_msgs"

# ONNX Runtime 1.31 from the onnxruntime wheel (ort's load-dynamic feature).
for _f in "$_fp_venv"/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*; do
  if [ -f "$_f" ]; then
    export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$_f}"
    export FACE_PERCEPTION_ORT_DYLIB="$_f"
  fi
done

export FACE_PERCEPTION_MODELS="${FACE_PERCEPTION_MODELS:-$_fp_root/models}"
unset _d _f _fp_venv _fp_msgs

# Fast DDS: camera-sized frames whole over shared memory (config/fastdds.xml).
if [ -z "${FASTRTPS_DEFAULT_PROFILES_FILE:-}" ]; then
  export FASTRTPS_DEFAULT_PROFILES_FILE="$_fp_root/config/fastdds.xml"
fi

# Keep DDS discovery on this machine unless the caller chose otherwise
# (on a robot with several hosts, export ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET first).
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
