#!/bin/bash
# The main job: build mkosi and run it on the example configuration in
# examples/debian. (Image building is being implemented; until it lands this
# shows the fully resolved configuration of the example, every image of it.)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
./target/release/mkosi -C examples/debian summary
