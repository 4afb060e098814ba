#!/bin/bash
# Copy growing result stores into a checkout, redraw their figures and refresh their paired tables in
# results/README.md, then commit. For stores that a run is still writing: the copy is SQLite's online backup
# (consistent while the runner writes), the predictions are copied after it.
#
#   scripts/paired_results.sh SOURCE_RESULTS_DIR TARGET_CHECKOUT SUITE_NAME...
#   e.g. scripts/paired_results.sh /work/wt/paired-run/results/reference . pathfinder_equal_macs
#
# In TARGET_CHECKOUT/results/README.md the block between `<!-- paired:SUITE -->` and `<!-- /paired:SUITE -->`
# is replaced by the output of `attn-zoo report STORE --markdown --seeds-for 1` (its paired part) and the
# count of finished cells; text outside the markers is left alone. Nothing is committed if nothing changed.
set -euo pipefail
src=$(realpath "$1"); dst=$(realpath "$2"); shift 2
py=${PYTHON:-$(realpath "${ATTN_ZOO_VENV:-.venv}")/bin/python}
cd "$dst"
for suite in "$@"; do
  store="results/reference/$suite.sqlite"
  "$py" - "$src/$suite.sqlite" "$store" <<'EOF'
import sqlite3, sys
src = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
dst = sqlite3.connect(sys.argv[2])
src.backup(dst)
dst.close()
EOF
  if [ -d "$src/$suite/artifacts" ]; then
    mkdir -p "results/reference/$suite"
    cp -r "$src/$suite/artifacts" "results/reference/$suite/"
  fi
  report=$(PYTHONPATH=$dst OMP_NUM_THREADS=1 "$py" -m attn_zoo report "$store" --markdown --seeds-for 1)
  counts=$("$py" - "$store" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = dict(db.execute("SELECT status, count(*) FROM cells GROUP BY status").fetchall())
seeds = db.execute("SELECT seed, count(*) FROM cells WHERE status = 'ok' GROUP BY seed ORDER BY seed").fetchall()
print(f"{rows.get('ok', 0)} cells finished ({', '.join(f'seed {s}: {n}' for s, n in seeds) or 'none'}), "
      f"{sum(rows.values()) - rows.get('ok', 0)} not (pending, running or failed)")
EOF
)
  block=$(printf '%s\n' "$report" | sed -n '/^Paired differences/,/^plot: /p' | grep -v '^plot: ')
  "$py" - results/README.md "$suite" "$counts" "$block" <<'EOF'
import sys
path, suite, counts, block = sys.argv[1:]
text = open(path).read()
start, end = f"<!-- paired:{suite} -->", f"<!-- /paired:{suite} -->"
if start not in text or end not in text:
    sys.exit(f"results/README.md has no {start} ... {end} block")
head, rest = text.split(start, 1)
_, tail = rest.split(end, 1)
body = f"{start}\nStore state: {counts}.\n\n{block.strip()}\n{end}"
open(path, "w").write(head + body + tail)
EOF
  git add -f "$store" "results/reference/$suite" results/README.md
done
git diff --cached --quiet || git commit -qm "Results: paired stores refreshed ($*)"
git log --oneline -1
