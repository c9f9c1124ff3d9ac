#!/usr/bin/env bash
# The Python 3.12 wheels the GPU machine lacks, into .whl/ (git-ignored), for
# benchmarks/accelerator_check.py there; then the exact device `run` command.
#
#   bash benchmarks/device_wheels.sh            # download / build, check the size, print
#   PYTHON=/path/to/python3 bash benchmarks/device_wheels.sh
#
# The GPU machine lent to this project's sessions (Python 3.12, jax 0.11.2 + CUDA 13,
# flax, optax, orbax, numpy, opencv, pillow, matplotlib, absl, tensorboard, etils,
# protobuf, ...) has no grain, tensorflow-datasets, array_record, ml-collections or clu,
# and reaches no registry. fcam_jax needs them; their own needs it also lacks follow.
# Versions: constraints.txt's (what CI tests); promise has no wheel on PyPI, so one is
# built here (pure Python). benchmarks/README.md ("Accelerator check") has the procedure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.whl
LIMIT_MIB=64          # what may travel to the device per call: working tree + carried paths
MARGIN_MIB=16         # keep this much below it

PACKAGES=(grain tensorflow-datasets array_record ml_collections clu
          portpicker dm-tree immutabledict simple-parsing docstring_parser
          tensorflow-metadata googleapis-common-protos termcolor toml
          importlib_resources)  # tfds imports it for builders in packages (the synthetic set)
BUILT=(promise)       # sdist only on PyPI: `pip wheel`

QUIET="is ignored: it is neither a file nor a directory"  # this VM's pip config: noise
norm() { echo "$1" | tr 'A-Z_.' 'a-z--'; }
version_of() {        # NAME -> its constraints.txt version (names compared normalised)
  local want; want=$(norm "$1")
  while IFS='=' read -r name _ version; do
    [[ "$(norm "$name")" == "$want" ]] && { echo "$version"; return; }
  done < <(grep -E '^[A-Za-z0-9_.-]+==' constraints.txt)
  echo "error: $1 is not pinned in constraints.txt" >&2; exit 1
}

rm -rf "$DEST"; mkdir -p "$DEST"
for pkg in "${PACKAGES[@]}"; do
  spec="$pkg==$(version_of "$pkg")"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" "$spec" 2> >(grep -v "$QUIET" >&2)
done
for pkg in "${BUILT[@]}"; do
  "$PY" -m pip wheel -q --no-deps -w "$DEST" "$pkg==$(version_of "$pkg")" \
    2> >(grep -v "$QUIET" >&2)
done

# One file per package (two versions of one stop the whole install there).
dups=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z.' 'a-z_' | sort | uniq -d)
[[ -z "$dups" ]] || { echo "error: several wheels of: $dups" >&2; exit 1; }

echo "wheels in $DEST:"
stat -c '%s %n' "$DEST"/*.whl | sort -rn | awk '{printf "  %8.1f KiB  %s\n", $1 / 1024, $2}'
wheels_b=$(stat -c %s "$DEST"/*.whl | awk '{s += $1} END {print s}')
# What travels: tracked + untracked-not-ignored files, plus the carried .whl.
tree_b=$( (git ls-files -z; git ls-files -z --others --exclude-standard) |
          xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
total_mib=$(( (wheels_b + tree_b + 1048575) / 1048576 ))
awk -v w="$wheels_b" -v t="$tree_b" -v n="$total_mib" -v l="$LIMIT_MIB" -v m="$MARGIN_MIB" \
  'BEGIN {printf "wheels %.1f MiB + working tree %.1f MiB = %d MiB (limit %d MiB, keep under %d)\n",
          w / 1048576, t / 1048576, n, l, l - m}'
if (( total_mib > LIMIT_MIB - MARGIN_MIB )); then
  echo "error: too close to the ${LIMIT_MIB} MiB a device call may carry" >&2; exit 1
fi

cat <<'EOF'

Device run (the `run` tool; carry [".whl"]; timeout_s 540):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit; nvidia-smi -L; timeout 480 python3 benchmarks/accelerator_check.py --out=$OUT/accelerator_check.json --profile_dir=/tmp/prof 2>&1 | tee $OUT/accelerator_check.log; rc=${PIPESTATUS[0]}; tar czf $OUT/profile.tgz -C /tmp prof 2>/dev/null; exit $rc
EOF
