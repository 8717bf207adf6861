#!/usr/bin/env bash
# Compares two commits with the end-to-end benchmark, the way docs/benchmarks.md
# does: the shared machine's speed drifts by tens of percent within an hour, so
# one run of each version says little. This runs the two versions in turn,
# ROUNDS times each, and prints every run's figures with their medians.
#
#   scripts/bench-ab.sh BEFORE [AFTER] [-- e2e bench options]
#   scripts/bench-ab.sh fcdec1b HEAD -- -n 100000 --fanout 1000 --runtime-threads 1 --no-allocs
#
# BEFORE and AFTER are git revisions (AFTER defaults to HEAD). Each is checked
# out in a worktree of its own under target/ab/ with its own target directory,
# and both are measured with this checkout's benches/ (the measuring tool is
# the same for both; if these benches no longer compile against an old
# revision's library, compare with a nearer revision). Options after --
# go to the bench (default: 50,000 single-token jobs on one runtime thread,
# without the allocation count). ROUNDS (environment, default 3) sets the runs
# per version. Logs are kept in target/ab/logs/. The first run of each
# worktree builds it from nothing (a few minutes on two cores); later runs
# reuse the build.
#
# Nothing else should run on the machine meanwhile: a build next to a run
# changes its figures more than most changes to the code do.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
before=${1:?usage: scripts/bench-ab.sh BEFORE [AFTER] [-- bench options]}
shift
after=HEAD
if [[ $# -gt 0 && $1 != -- ]]; then
  after=$1
  shift
fi
[[ ${1:-} == -- ]] && shift
bench_args=("$@")
if [[ ${#bench_args[@]} -eq 0 ]]; then
  bench_args=(-n 50000 --steady-secs 5 --runtime-threads 1 --no-allocs)
fi
rounds=${ROUNDS:-3}
ab="$root/target/ab"
logs="$ab/logs"
mkdir -p "$logs"

# A worktree per revision, with this checkout's benches.
checkout() {
  local rev sha dir
  rev=$1
  sha=$(git rev-parse --verify "$rev^{commit}")
  dir="$ab/${sha:0:12}"
  if [[ ! -d $dir ]]; then
    git worktree add --detach "$dir" "$sha" >&2
  fi
  rm -rf "$dir/benches"
  cp -r "$root/benches" "$dir/benches"
  echo "$dir"
}
before_dir=$(checkout "$before")
after_dir=$(checkout "$after")

stamp=$(date +%Y%m%d-%H%M%S)
for round in $(seq 1 "$rounds"); do
  for side in before after; do
    if [[ $side == before ]]; then dir=$before_dir; else dir=$after_dir; fi
    log="$logs/$stamp-$side-$round.log"
    echo "== $side ($(basename "$dir")), round $round of $rounds, $(date +%T)" >&2
    (cd "$dir" && CARGO_TARGET_DIR="$dir/target" cargo bench --locked --bench e2e -- "${bench_args[@]}") >"$log" 2>&1 ||
      { echo "bench failed; see $log" >&2; exit 1; }
    # Each worktree has its own node on the bench's port: stop it, so that the
    # other version's run starts its own (a node left running would serve it).
    (cd "$dir" && MISIVA_BROKER_PORT=5695 scripts/broker.sh stop >/dev/null 2>&1) || true
  done
done

python3 - "$logs" "$stamp" "$rounds" "$before" "$after" <<'EOF'
import re, statistics, sys
logs, stamp, rounds, before, after = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]

def table(side, round_):
    rows = {}
    for line in open(f"{logs}/{stamp}-{side}-{round_}.log"):
        m = re.match(r"\| (.+?) \| (.+?) \|$", line.strip())
        if m and m.group(1) != "measure" and not m.group(1).startswith("---"):
            # The label names the run's settings and rates (the ceiling's
            # channels, the steady rate): drop them, so that runs line up.
            label = re.sub(r"\s*\((?:[^()]|\([^()]*\))*\)", "", m.group(1))
            label = re.sub(r"\s*\d+/s", "", label).strip()
            rows[label] = m.group(2)
    return rows

def numbers(cell):
    """The figures of a cell ("8.47 / 23.99" holds two), or None."""
    values = []
    for part in cell.split(" / "):
        m = re.fullmatch(r"\s*(-?[\d.]+)(?:\s.*)?", part)
        if not m:
            return None
        values.append(m.group(1))
    return values

def median(cells):
    split = [numbers(c) for c in cells]
    if any(v is None for v in split) or len({len(v) for v in split}) != 1:
        return ""
    out = []
    for column in zip(*split):
        decimals = max(len(v.split(".")[1]) if "." in v else 0 for v in column)
        out.append(f"{statistics.median(float(v) for v in column):.{decimals}f}")
    return " / ".join(out)

runs = {side: [table(side, r) for r in range(1, rounds + 1)] for side in ("before", "after")}
print(f"| measure | {before}: each run | median | {after}: each run | median |")
print("|---|---|---:|---|---:|")
for label in runs["before"][0]:
    cells = []
    for side in ("before", "after"):
        values = [t.get(label, "-") for t in runs[side]]
        cells += [" ; ".join(values), median(values)]
    print(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
EOF
