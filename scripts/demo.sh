#!/usr/bin/env bash
# The whole story on the embedded defaults: a local 5-node fleet with its relay, a sample
# chat-history folder backed up with a password, restored on a "new device", the guess
# limit at work, and a recovery-code backup. Everything lives in demo-run/ and is stopped
# at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BV=".venv/bin/backupvault"
RUN="demo-run"
DEPLOY="$RUN/deployment"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf "$RUN"
mkdir -p "$RUN"
trap '$BV local down --dir "$DEPLOY" >/dev/null 2>&1 || true' EXIT

say "Start a local vault: 5 nodes (each with its own SoftHSM2 token) and the relay"
$BV local up --dir "$DEPLOY" --nodes 5
$BV local status --dir "$DEPLOY"

say "Make a sample folder: a chat database and photos"
.venv/bin/python scripts/make_sample.py "$RUN/phone/chats"
ls -la "$RUN/phone/chats" | head -5

say "Back up with a password (the first backup registers a new key in the vault)"
echo "correct horse battery staple" |
    $BV --config "$DEPLOY/client.toml" backup create "$RUN/phone/chats" \
        --storage "$RUN/cloud" --password-stdin
echo "correct horse battery staple" |
    $BV --config "$DEPLOY/client.toml" backup list --storage "$RUN/cloud" --password-stdin

say "New device: nothing but the client config and the password"
mkdir -p "$RUN/new-phone"
cp "$DEPLOY/client.toml" "$RUN/new-phone/client.toml"
echo "correct horse battery staple" |
    $BV --config "$RUN/new-phone/client.toml" backup restore \
        --storage "$RUN/cloud" --to "$RUN/new-phone/chats" --password-stdin
diff -r "$RUN/phone/chats" "$RUN/new-phone/chats" && echo "restored copy is identical"

say "A thief guesses passwords: each wrong guess counts, the vault says how many are left"
for guess in 123456 password qwerty; do
    echo "$guess" | $BV --config "$RUN/new-phone/client.toml" backup restore \
        --storage "$RUN/cloud" --to "$RUN/thief-$guess" --password-stdin || echo "(exit code $?)"
done
$BV --config "$DEPLOY/client.toml" vault status
echo "The right password resets the count:"
echo "correct horse battery staple" |
    $BV --config "$RUN/new-phone/client.toml" backup restore \
        --storage "$RUN/cloud" --to "$RUN/new-phone/again" --password-stdin
$BV --config "$DEPLOY/client.toml" vault status

say "Without a vault: a backup opened by a recovery code"
$BV --json backup create "$RUN/phone/chats" --storage "$RUN/offline" --recovery-code > "$RUN/code.json"
CODE=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["recovery_code"])' "$RUN/code.json")
echo "recovery code: $CODE"
echo "$CODE" | $BV backup restore --storage "$RUN/offline" --to "$RUN/from-code" --recovery-code -
diff -r "$RUN/phone/chats" "$RUN/from-code" && echo "restored copy is identical"
echo "A mistyped code is caught before it is used:"
# One digit changed (to another digit: the code's 6th character may already be a 0).
if [ "${CODE:5:1}" = 0 ]; then TYPO=1; else TYPO=0; fi
echo "${CODE:0:5}${TYPO}${CODE:6}" | $BV backup restore --storage "$RUN/offline" --to "$RUN/typo" \
    --recovery-code - || echo "(exit code $?)"

say "Stop the local vault"
$BV local down --dir "$DEPLOY"
trap - EXIT
