#!/usr/bin/env bash
# Mutation testing of the pure core with mutmut (issue 14): each module is mutated in a
# scratch copy of the project and its fast tests are run against every mutant. Not in CI
# (slow: minutes per module); run it before touching the core, and read the survivors:
# none may change who is banned, for how long, or what is counted.
#
#   bench/mutate.sh                 # every module below, one after the other
#   bench/mutate.sh score follow    # only these
#   JOBS=2 MUTATE_TIMEOUT=1800 OUT=/var/tmp/logban-mutate bench/mutate.sh parse
#
# Needs `pip install mutmut` (3.x). Prints, per module, killed/survived/timeout and the
# survival rate; the survivors are listed in $OUT/MODULE/survivors.txt (`mutmut show NAME`
# in $OUT/MODULE shows a mutant's diff). Runs under nice -n 19: it is CPU-heavy.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/logban-mutate}
jobs=${JOBS:-1}
limit=${MUTATE_TIMEOUT:-3600}
python=${PYTHON:-python3}

# module -> source file and the fast tests that guard it (pytest node ids or files)
declare -A SRC=(
    [score]=logban/score.py [allow]=logban/allow.py [parse]=logban/parse.py
    [follow]=logban/follow.py [plan]=logban/firewall/plan.py
)
declare -A TESTS=(
    [score]="tests/test_score.py"
    [allow]="tests/test_allow.py tests/test_score.py"
    [parse]="tests/test_parse.py tests/test_rules.py tests/test_patterns.py tests/test_rules_adversarial.py"
    [follow]="tests/test_follow.py"
    [plan]="tests/test_plan.py"
)
mods=("$@")
((${#mods[@]})) || mods=(score allow parse follow plan)

"$python" -c "import mutmut" 2>/dev/null || { echo "mutate.sh: pip install mutmut" >&2; exit 2; }
summary=()
for m in "${mods[@]}"; do
    src=${SRC[$m]:-}
    [ -n "$src" ] || { echo "mutate.sh: unknown module $m (one of: ${!SRC[*]})" >&2; exit 2; }
    w="$out/$m"
    rm -rf "$w"
    mkdir -p "$w"
    # A scratch copy: mutmut writes mutants/ beside the sources and reads [tool.mutmut].
    (cd "$root" && tar -cf - logban tests rules samples bench pyproject.toml 2>/dev/null) | tar -xf - -C "$w"
    sel=$(printf '"%s", ' ${TESTS[$m]})
    cat >> "$w/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["logban"]
only_mutate = ["$src"]
also_copy = ["tests", "rules", "samples", "bench"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
pytest_add_cli_args_test_selection = [${sel%, }]
use_setproctitle = false
EOF
    echo "== $m ($src): ${TESTS[$m]//$'\n'/ }"
    t0=$(date +%s)
    (cd "$w" && CI= nice -n 19 timeout "$limit" "$python" -m mutmut run --max-children "$jobs" >"$w/run.log" 2>&1) \
        || echo "   mutmut ended with $? (timeout $limit s?): see $w/run.log"
    (cd "$w" && "$python" -m mutmut export-cicd-stats >/dev/null 2>&1 || true
     "$python" -m mutmut results 2>/dev/null | grep -E ': (survived|timeout|suspicious|no tests)' > survivors.txt || true)
    line=$("$python" - "$w/mutants/mutmut-cicd-stats.json" "$m" "$(($(date +%s) - t0))" <<'EOF'
import json, sys
try:
    s = json.load(open(sys.argv[1]))
except OSError:
    print(f"{sys.argv[2]}: no result"); sys.exit()
done = s["killed"] + s["survived"] + s["timeout"] + s["suspicious"] + s["segfault"]
rate = 100 * s["survived"] / done if done else 0
print(f"{sys.argv[2]}: {s['total']} mutants, {s['killed']} killed, {s['survived']} survived, "
      f"{s['timeout']} timeout, {s['no_tests']} no tests, {s['total'] - done - s['no_tests'] - s['skipped']} not run; "
      f"survival {rate:.1f}% ({sys.argv[3]} s)")
EOF
)
    echo "   $line"
    summary+=("$line")
done
echo
printf '%s\n' "${summary[@]}"
