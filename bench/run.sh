#!/usr/bin/env bash
# Run the throughput suite and write the report:  bash bench/run.sh [--quick|--full] [-o DIR] [--name N] [-- PYTEST ARGS]
#   bash bench/run.sh                                   # quick (CI) mode -> bench/out/quick.{json,md,csv,png}
#   bash bench/run.sh --full -o bench/results --name cpu-report
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m bench.run "$@"
