#!/usr/bin/env bash
# Proves each requirements file is enough on its own, the way a new user meets
# it: a throwaway venv per file (built in parallel; pip's own cache keeps the
# downloads), `pip check`, then the program it is for is started from it.
#
#   requirements.txt        python main.py: /readyz answers 200, SIGTERM exits 0
#   requirements-agent.txt  python -m agent --help
#   requirements-fake.txt   python -m fakevllm --help
#
# PYTHON (default python3) builds the venvs. Run from anywhere; it works in the
# checkout that holds it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
READY_SECONDS="${READY_SECONDS:-120}"
work="$(mktemp -d)"
pid=""
cleanup() {
    status=$?
    if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    if [[ $status -ne 0 && -f "$work/server.log" ]]; then echo "--- server log:"; tail -n 40 "$work/server.log"; fi
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT

build() {  # build NAME REQUIREMENTS: a venv at $work/NAME from that file alone
    local name=$1 reqs=$2
    "$PYTHON" -m venv "$work/$name"
    "$work/$name/bin/python" -m pip install --disable-pip-version-check --no-input --quiet -r "$reqs" \
        >"$work/$name.log" 2>&1 || { echo "install-check: pip install -r $reqs failed:"; cat "$work/$name.log"; return 1; }
    "$work/$name/bin/python" -m pip check --disable-pip-version-check >"$work/$name.check" 2>&1 \
        || { echo "install-check: pip check failed for $reqs:"; cat "$work/$name.check"; return 1; }
}

started=$SECONDS
build run requirements.txt & run_job=$!
build agent requirements-agent.txt & agent_job=$!
build fake requirements-fake.txt & fake_job=$!
failed=0
for job in $run_job $agent_job $fake_job; do wait "$job" || failed=1; done
[[ $failed -eq 0 ]] || exit 1
echo "install-check: three venvs built and pip-checked in $((SECONDS - started)) s"

"$work/agent/bin/python" -m agent --help >/dev/null \
    || { echo "install-check: python -m agent --help failed in a venv from requirements-agent.txt"; exit 1; }
"$work/fake/bin/python" -m fakevllm --help >/dev/null \
    || { echo "install-check: python -m fakevllm --help failed in a venv from requirements-fake.txt"; exit 1; }
echo "install-check: python -m agent --help and python -m fakevllm --help run from their own venvs"

port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
env -u REDIS_URL -u NVLLM_JWT_SECRET -u NVLLM_ADMIN_PASSWORD NVLLM_DATA_DIR="$work/data" \
    "$work/run/bin/python" main.py --host 127.0.0.1 --port "$port" >"$work/server.log" 2>&1 &
pid=$!
ready=0
for _ in $(seq $((READY_SECONDS * 10))); do
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" 2>/dev/null || true)"
    [[ "$code" == 200 ]] && { ready=1; break; }
    kill -0 "$pid" 2>/dev/null || { echo "install-check: python main.py exited before /readyz answered 200"; exit 1; }
    sleep 0.1
done
[[ $ready -eq 1 ]] || { echo "install-check: /readyz did not answer 200 within $READY_SECONDS s"; exit 1; }
kill -TERM "$pid"
code=0; wait "$pid" || code=$?
pid=""
[[ $code -eq 0 ]] || { echo "install-check: python main.py exited with $code on SIGTERM, expected 0"; exit 1; }
echo "install-check: python main.py from requirements.txt alone: /readyz 200, exit 0 on SIGTERM"
